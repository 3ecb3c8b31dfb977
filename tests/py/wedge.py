#!/usr/bin/env python3
"""One wedged connection, for the packaging tests (tests/tests/packaging.rs).

A server on 127.0.0.1:PORT (in whatever network namespace this process runs in: start it
under `ip netns exec` or `unshare -n`) accepts one client of its own that never reads, and
writes to it until send() fails. Run it as any user: the agent has to find this process's
namespace.

Reports on stdout, one JSON object per line:

    {"event": "ready", "pid": PID, "uid": UID, "netns": INODE, "port": PORT}
    {"event": "send_failed", "errno": N, "error": "ECONNABORTED", "sent": BYTES}

Exits 0 after send_failed, or when --timeout seconds pass first (exit 3).
"""

import argparse
import errno
import json
import os
import socket
import sys
import threading


def say(**kv):
    sys.stdout.write(json.dumps(kv) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(1)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    cli.connect(("127.0.0.1", args.port))
    conn, _ = srv.accept()
    say(event="ready", pid=os.getpid(), uid=os.getuid(),
        netns=os.stat("/proc/self/ns/net").st_ino, port=args.port)

    # A watchdog ends the process if nothing resets the connection in time.
    def expire():
        os._exit(3)

    timer = threading.Timer(args.timeout, expire)
    timer.daemon = True
    timer.start()
    sent = 0
    chunk = b"x" * 65536
    try:
        while True:
            sent += conn.send(chunk)
    except OSError as e:
        say(event="send_failed", errno=e.errno, error=errno.errorcode.get(e.errno, str(e.errno)),
            sent=sent)
    timer.cancel()
    cli.close()


if __name__ == "__main__":
    main()
