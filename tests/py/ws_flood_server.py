#!/usr/bin/env python3
"""WebSocket server that floods every client with 64 KiB binary messages.

Used by the tcpstall cadence tests (tests/tests/cadence.rs). Each message is

    seq (8 bytes, big endian) | sha256(body) (32 bytes) | body (random bytes)

so a client can tell a lost, reordered or corrupted message apart from a good one. The
server sends as fast as the connection accepts (websockets' own write flow control, then the
kernel's), and reports on stdout, one JSON object per line:

    {"event": "listening", "port": P, "t": T}
    {"event": "connected", "peer": "ip:port", "local": "ip:port", "t": T}
    {"event": "progress", "peer": ..., "sent": N, "t": T}          (at most once a second)
    {"event": "send_error", "peer": ..., "sent": N, "t": T, "error": "ConnectionClosedError",
     "message": ..., "errnos": [103], "chain": ["ConnectionClosedError(...)", ...]}
    {"event": "connection_done", "peer": ..., "sent": N, "t": T}
    {"event": "exit", "reason": ..., "t": T}

`t` is wall-clock time (seconds since the epoch, float). `sent` counts messages whose send()
returned. Keepalive pings are off: a consumer that reads one message a second would see a ping
only after megabytes of queued data, and the ping timeout would close the connection, which is
not what these tests are about.

The server exits by itself after --max-seconds (a bound for test runs), or on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import errno as errno_mod
import hashlib
import json
import os
import signal
import struct
import sys
import time

import websockets
from websockets.asyncio.server import serve

HEADER = struct.Struct("!Q32s")


def emit(**fields):
    fields.setdefault("t", time.time())
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def make_message(seq, size):
    body = os.urandom(size - HEADER.size)
    return HEADER.pack(seq, hashlib.sha256(body).digest()) + body


def exception_chain(exc):
    """The exception, its causes and contexts, without cycles."""
    seen = []
    while exc is not None and all(exc is not s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def fmt_addr(addr):
    if not addr:
        return None
    return f"{addr[0]}:{addr[1]}"


async def flood(ws, size):
    peer = fmt_addr(ws.remote_address)
    local = fmt_addr(ws.local_address)
    emit(event="connected", peer=peer, local=local)
    sent = 0
    last_report = time.monotonic()
    try:
        while True:
            await ws.send(make_message(sent + 1, size))
            sent += 1
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                emit(event="progress", peer=peer, sent=sent)
    except Exception as exc:  # report every way a send can fail, then end the handler
        chain = exception_chain(exc)
        errnos = [e.errno for e in chain if isinstance(e, OSError) and e.errno]
        emit(
            event="send_error",
            peer=peer,
            sent=sent,
            error=type(exc).__name__,
            message=str(exc),
            errnos=errnos,
            errno_names=[errno_mod.errorcode.get(n, str(n)) for n in errnos],
            chain=[repr(e) for e in chain],
        )
    finally:
        emit(event="connection_done", peer=peer, sent=sent)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--message-size", type=int, default=64 * 1024)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    if args.message_size <= HEADER.size:
        parser.error(f"--message-size must exceed {HEADER.size} bytes")

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(
            sig, lambda s=sig: stop.done() or stop.set_result(signal.Signals(s).name)
        )

    async def handler(ws):
        await flood(ws, args.message_size)

    async with serve(
        handler,
        args.host,
        args.port,
        ping_interval=None,
        max_size=None,
        compression=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        emit(event="listening", port=port, websockets=websockets.__version__)
        try:
            reason = await asyncio.wait_for(stop, timeout=args.max_seconds)
        except asyncio.TimeoutError:
            reason = "max_seconds"
        emit(event="exit", reason=reason)
        # Do not wait for a closing handshake with clients that do not read.
        server.close(close_connections=False)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
