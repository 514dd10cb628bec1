"""An app that writes bytes no request asked for, for tests/smuggling.rs (issue 17, finding 3).

Each connection: every request read is answered `HTTP/1.1 200 OK` with `Content-Length: 5` and
`hello`; --late seconds after the first answer, the connection also gets a whole second response
(`Content-Length: 4`, `evil`), as a buggy or hostile app might write. Every request line read is
appended to --log. A proxy that reuses the connection without noticing gives `evil` to its next
client.

  late_app.py [--host H] [--port P] [--ready-file F] --log FILE [--late SECONDS]
"""

import argparse
import socket
import threading
import time

from common import announce, server_args


def serve(conn, args, lock):
    buf = b""
    wrote_late = False
    conn.settimeout(0.05)
    first_answer = None
    try:
        while True:
            if first_answer and not wrote_late and time.monotonic() - first_answer >= args.late:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
                wrote_late = True
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                with lock, open(args.log, "a") as f:
                    f.write(head.split(b"\r\n")[0].decode("latin-1") + "\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                first_answer = first_answer or time.monotonic()
    except OSError:
        pass
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    server_args(parser)
    parser.add_argument("--log", required=True)
    parser.add_argument("--late", type=float, default=0.3)
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(64)
    announce(sock.getsockname()[1], args.ready_file)
    lock = threading.Lock()
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn, args, lock), daemon=True).start()


if __name__ == "__main__":
    main()
