"""An https app (Python's ssl, TLS 1.2+): GET answers JSON {"path": ..., "headers": {...},
"tls": "TLSv1.3"}, what the app saw of the request, so a test can check that the client's TLS
reached the app itself (through a CONNECT tunnel) and that no sidecar added headers.

    python https_app.py --cert-dir DIR [--host H] [--port P] [--ready-file F]

DIR holds tls.crt (leaf first) and tls.key, as `signet cert issue --out DIR` writes them.
"""

import argparse
import json
import os
import socketserver
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.dont_write_bytecode = True  # no __pycache__ left in tests/py
import common  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = (json.dumps({
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "tls": self.connection.version(),
        }) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.server_args(parser)
    parser.add_argument("--cert-dir", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.path.join(args.cert_dir, "tls.crt"), os.path.join(args.cert_dir, "tls.key"))
    server = Server((args.host, args.port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    common.announce(server.server_address[1], args.ready_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
