"""Slow and odd clients over mTLS, for tests/smuggling.rs (issue 17, item 5).

  slow_client.py connect  --target H:P --ca CA --cert CRT --key KEY
      Sends `CONNECT httpbin.foo:443 HTTP/1.1`; prints {"ok": true, "status": N}.
  slow_client.py trickle  --target H:P --ca CA --cert CRT --key KEY [--h2] [--every S]
      POSTs a body of 1 MB announced up front and sends one byte every S seconds (default 1),
      over HTTP/1.1 or (--h2) HTTP/2, until a response comes (at most 60 s); prints
      {"ok": true, "status": N, "sent": BYTES}.
"""

import argparse
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events

from common import result

SIZE = 1_000_000


def connect_tls(args, alpn):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols([alpn])
    host, _, port = args.target.rpartition(":")
    return ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname="httpbin.foo")


def status_of(head):
    line = head.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 else None


def connect(args):
    sock = connect_tls(args, "http/1.1")
    sock.sendall(b"CONNECT httpbin.foo:443 HTTP/1.1\r\nHost: httpbin.foo:443\r\n\r\n")
    sock.settimeout(20)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    result({"ok": True, "status": status_of(data)})


def trickle_h1(args):
    sock = connect_tls(args, "http/1.1")
    sock.sendall(f"POST /post HTTP/1.1\r\nHost: httpbin.foo:8000\r\nContent-Length: {SIZE}\r\n\r\n".encode())
    sock.settimeout(args.every)
    sent, data, end = 0, b"", time.monotonic() + 60
    while time.monotonic() < end:
        try:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\r\n" in data:
                break
        except socket.timeout:
            try:
                sock.sendall(b"x")
                sent += 1
            except OSError:
                break
    result({"ok": True, "status": status_of(data), "sent": sent})


def trickle_h2(args):
    sock = connect_tls(args, "h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":path", "/post"), (":scheme", "https"),
                            (":authority", "httpbin.foo:8000"), ("content-length", str(SIZE))])
    sock.sendall(conn.data_to_send())
    sock.settimeout(args.every)
    start = time.monotonic()
    sent, status, end = 0, None, start + 60
    while status is None and time.monotonic() < end:
        try:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid and status is None:
                    status = f"reset {event.error_code}"
        except socket.timeout:
            try:
                conn.send_data(sid, b"x")
                sent += 1
            except Exception:  # noqa: BLE001 - the stream may be closed already
                break
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    result({"ok": True, "status": status, "sent": sent, "seconds": round(time.monotonic() - start, 1)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["connect", "trickle"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--h2", action="store_true")
    parser.add_argument("--every", type=float, default=1.0)
    args = parser.parse_args()
    if args.mode == "connect":
        connect(args)
    elif args.h2:
        trickle_h2(args)
    else:
        trickle_h1(args)


if __name__ == "__main__":
    main()
