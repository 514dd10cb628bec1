"""HTTP/2 clients over mTLS for tests/smuggling.rs (issue 17, finding 4), with the `h2` library.

  h2_stall.py stall  --target H:P --ca CA --cert CRT --key KEY [--connections 4] [--streams 100]
                     [--path /bytes/102400] [--hold SECONDS]
      Opens the connections with an initial stream window of 0, sends every request, never
      grants a byte of window, prints {"ok": true, "streams": N} once all are sent, and holds the
      connections open for --hold seconds (answering PINGs, so they stay up).
  h2_stall.py get    --target H:P --ca CA --cert CRT --key KEY [--path /get] [--timeout S]
      One ordinary request; prints {"ok": true, "status": N, "bytes": N}.
"""

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from common import result


def connect(args, window=None):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    host, _, port = args.target.rpartition(":")
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=args.sni)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if window is not None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    sock.sendall(conn.data_to_send())
    return sock, conn


def headers(args, path):
    return [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "httpbin.foo:8000")]


def stall(args):
    conns = []
    sent = 0
    for _ in range(args.connections):
        sock, conn = connect(args, window=0)
        for _ in range(args.streams):
            sid = conn.get_next_available_stream_id()
            try:
                conn.send_headers(sid, headers(args, args.path), end_stream=True)
            except h2.exceptions.TooManyStreamsError:
                break
            sent += 1
        sock.sendall(conn.data_to_send())
        conns.append((sock, conn))
    print(json.dumps({"ok": True, "streams": sent}), flush=True)  # then hold the connections
    end = time.monotonic() + args.hold
    for sock, _ in conns:
        sock.settimeout(0.05)
    while time.monotonic() < end:
        for sock, conn in conns:
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                continue
            if not data:
                continue
            conn.receive_data(data)  # PINGs are answered; no window is ever granted
            out = conn.data_to_send()
            if out:
                sock.sendall(out)


def get(args):
    sock, conn = connect(args)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers(args, args.path), end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(args.timeout)
    status, body = None, 0
    while True:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the connection closed before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                result({"ok": True, "status": status, "bytes": body})
                return
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                raise RuntimeError(f"the stream was reset ({event.error_code})")
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stall", "get"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sni", default="httpbin.foo")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--path")
    parser.add_argument("--hold", type=float, default=60)
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    if args.mode == "stall":
        args.path = args.path or "/bytes/102400"
        stall(args)
    else:
        args.path = args.path or "/get"
        get(args)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the one JSON line says what failed
        result({"ok": False, "error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
