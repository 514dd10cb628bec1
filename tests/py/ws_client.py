"""A WebSocket client (the real `websockets` package): opens URL, exchanges text and binary
messages (one of 1 MiB) and a ping, checks every echo, and asks the echo server for the
handshake request it saw. Prints one JSON line:

  {"ok": true, "failures": [], "messages": 7, "bytes": ..., "ping": true,
   "status": 101, "response_headers": {...}, "request": {"path": "/echo", "headers": {...}}}

How it reaches the server:
  --sock HOST:PORT   open a TCP connection to HOST:PORT (the client sidecar's outbound HTTP
                     proxy) and speak WebSocket on it: an origin-form request whose Host is the
                     URL's (what an app behind an explicit proxy does when it routes by Host)
  --proxy URL        websockets' own proxy support: CONNECT through an HTTP proxy
  (neither)          straight to the URL's host and port, no proxy (a captured pod)

    python ws_client.py --url ws://echo.foo:8000/echo [--sock A | --proxy http://A]
"""

import argparse
import json
import os
import socket
import sys

from websockets.sync.client import connect

sys.dont_write_bytecode = True  # no __pycache__ left in tests/py
import common  # noqa: E402

MAX_SIZE = 16 * 1024 * 1024


def messages():
    # Deterministic payloads: text (ASCII and not), binary with every byte value, and big ones.
    big = os.urandom(1024 * 1024)
    return [
        "hello",
        "héllo wörld ✓ 🚀",
        bytes(range(256)),
        b"",
        "x" * 70000,
        big,
        bytes(reversed(big[: 300 * 1024])),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--sock", help="HOST:PORT to open a TCP connection to and speak WebSocket on")
    how.add_argument("--proxy", help="an HTTP proxy URL for websockets' proxy= (CONNECT)")
    parser.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()

    kwargs = dict(max_size=MAX_SIZE, compression=None, open_timeout=args.timeout,
                  ping_interval=None, close_timeout=5)
    if args.sock:
        host, port = args.sock.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=args.timeout)
        sock.settimeout(None)  # as websockets leaves the sockets it opens itself
        kwargs["sock"] = sock
        kwargs["proxy"] = None
    elif args.proxy:
        kwargs["proxy"] = args.proxy
    else:
        kwargs["proxy"] = None

    failures = []
    out = {"failures": failures}
    with connect(args.url, **kwargs) as ws:
        out["status"] = ws.response.status_code
        out["response_headers"] = {k.lower(): v for k, v in ws.response.headers.raw_items()}
        total = 0
        sent = messages()
        for i, message in enumerate(sent):
            ws.send(message)
            echo = ws.recv(timeout=args.timeout)
            if type(echo) is not type(message):
                failures.append(f"message {i}: sent {type(message).__name__}, got {type(echo).__name__}")
            elif echo != message:
                failures.append(f"message {i}: echo differs ({len(message)} sent, {len(echo)} back)")
            total += len(message)
        out["messages"] = len(sent)
        out["bytes"] = total
        pong = ws.ping(b"signet")
        out["ping"] = pong.wait(args.timeout)
        if not out["ping"]:
            failures.append("no pong")
        ws.send("__request__")
        out["request"] = json.loads(ws.recv(timeout=args.timeout))
    return out


if __name__ == "__main__":
    common.run_client(main)
