#!/usr/bin/env python3
"""WebSocket client that consumes one message a second, like a slow but alive consumer.

Used by the tcpstall cadence tests (tests/tests/cadence.rs) against ws_flood_server.py. It
connects with websockets' DEFAULT max_queue (16 frames, low-water mark 4), then loops
`await recv(); sleep(--read-interval)` and verifies each message's sequence number and
checksum. With websockets' read-side flow control the socket is read in bursts: reading pauses
when 16 frames are buffered and resumes at 4, so the kernel sees long pauses between bursts.

With --die-after N it stops calling recv() after N seconds but keeps the connection open (a
consumer wedged for good). It exits after --duration seconds (or on SIGTERM/SIGINT).

Reports on stdout, one JSON object per line (`t` = wall-clock seconds since the epoch):

    {"event": "connected", "local": "ip:port", "t": T}
    {"event": "burst", "t": T, "gap_s": G, "prev_end": T0}  the socket was read again after a
                                                            pause of G >= --burst-gap seconds
    {"event": "stopped_reading", "t": T, "messages_ok": N, "last_data_t": T1}
    {"event": "corrupt", "t": T, "seq": S, "expected": E, "reason": ...}
    {"event": "closed", "t": T, "error": ..., "message": ...}
    {"event": "summary", "t": T, "messages_ok": N, "corrupt": C, "closed": bool,
     "bursts": B, "gaps_s": [...], "last_data_t": T1}

The burst/gap measurement hooks the connection's data_received(), i.e. it records when
asyncio actually read bytes from the kernel socket.
"""

import argparse
import asyncio
import hashlib
import json
import signal
import struct
import sys
import time

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HEADER = struct.Struct("!Q32s")


def emit(**fields):
    fields.setdefault("t", time.time())
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


class Reads:
    """When the socket was read, grouped into bursts separated by pauses."""

    def __init__(self, burst_gap):
        self.burst_gap = burst_gap
        self.last_data_t = None
        self.bursts = 0
        self.gaps = []
        self.bytes = 0

    def on_data(self, n):
        now = time.time()
        self.bytes += n
        if self.last_data_t is None:
            self.bursts = 1
        elif now - self.last_data_t >= self.burst_gap:
            gap = now - self.last_data_t
            self.bursts += 1
            self.gaps.append(gap)
            emit(event="burst", t=now, gap_s=gap, prev_end=self.last_data_t, bytes=self.bytes)
        self.last_data_t = now


def connection_class(reads):
    class TimedConnection(ClientConnection):
        def data_received(self, data):
            reads.on_data(len(data))
            super().data_received(data)

    return TimedConnection


def check(message, expected):
    if not isinstance(message, bytes):
        return f"text frame, expected binary (seq {expected})"
    if len(message) < HEADER.size:
        return f"{len(message)} bytes, shorter than the {HEADER.size}-byte header"
    seq, digest = HEADER.unpack_from(message)
    if seq != expected:
        return f"sequence {seq}, expected {expected}"
    if hashlib.sha256(message[HEADER.size:]).digest() != digest:
        return f"checksum mismatch in message {seq}"
    return None


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:8765")
    parser.add_argument("--duration", type=float, required=True, help="seconds to run")
    parser.add_argument("--die-after", type=float, default=None,
                        help="stop calling recv() after this many seconds, keep the socket")
    parser.add_argument("--read-interval", type=float, default=1.0)
    parser.add_argument("--burst-gap", type=float, default=0.5,
                        help="a pause this long (s) between socket reads starts a new burst")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    reads = Reads(args.burst_gap)
    ok = 0
    corrupt = 0
    closed = False
    start = time.monotonic()
    deadline = start + args.duration
    die_at = None if args.die_after is None else start + args.die_after

    async with connect(
        args.url,
        create_connection=connection_class(reads),
        ping_interval=None,
        max_size=None,
        compression=None,
        close_timeout=0.5,
    ) as ws:
        local = ws.local_address
        emit(event="connected", local=f"{local[0]}:{local[1]}")
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= deadline or (die_at is not None and now >= die_at):
                    break
                recv_timeout = min(deadline, die_at or deadline) - now
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=recv_timeout)
                except asyncio.TimeoutError:
                    break
                problem = check(message, ok + corrupt + 1)
                if problem:
                    corrupt += 1
                    emit(event="corrupt", seq=ok + corrupt, reason=problem)
                else:
                    ok += 1
                try:
                    await asyncio.wait_for(stop.wait(), timeout=args.read_interval)
                except asyncio.TimeoutError:
                    pass
        except ConnectionClosed as exc:
            closed = True
            emit(event="closed", error=type(exc).__name__, message=str(exc))

        if die_at is not None and not closed and not stop.is_set():
            emit(event="stopped_reading", messages_ok=ok, last_data_t=reads.last_data_t)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass

        emit(
            event="summary",
            messages_ok=ok,
            corrupt=corrupt,
            closed=closed,
            bursts=reads.bursts,
            gaps_s=reads.gaps,
            last_data_t=reads.last_data_t,
            bytes=reads.bytes,
        )
        sys.stdout.flush()
        # Leave without a closing handshake: the peer may be flooding a socket we do not read.
        ws.transport.abort()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
