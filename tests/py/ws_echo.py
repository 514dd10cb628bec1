"""A WebSocket echo server (the real `websockets` package), the app behind a server sidecar.

Path /echo: every message comes back as it came (text as text, binary as binary). The text
message "__request__" is answered with the handshake request the server saw, as JSON
{"path": ..., "headers": {lower-case name: value}}, so a test can tell whether a sidecar
forwarded the upgrade as HTTP (it adds x-forwarded-client-cert) or tunnelled bytes (it cannot).
Other paths are refused with 404 during the handshake.

    python ws_echo.py [--host H] [--port P] [--ready-file F]
"""

import argparse
import json
import sys

from websockets.sync.server import serve
from websockets.http11 import Response
from websockets.datastructures import Headers

sys.dont_write_bytecode = True  # no __pycache__ left in tests/py
import common  # noqa: E402

MAX_SIZE = 16 * 1024 * 1024


def process_request(connection, request):
    if request.path.split("?")[0] != "/echo":
        return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]), b"no such path\n")
    return None


def handler(ws):
    request = ws.request
    seen = {
        "path": request.path,
        "headers": {k.lower(): v for k, v in request.headers.raw_items()},
    }
    for message in ws:
        if message == "__request__":
            ws.send(json.dumps(seen))
        else:
            ws.send(message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.server_args(parser)
    args = parser.parse_args()
    with serve(handler, args.host, args.port, max_size=MAX_SIZE, compression=None,
               process_request=process_request, ping_interval=None) as server:
        common.announce(server.socket.getsockname()[1], args.ready_file)
        server.serve_forever()


if __name__ == "__main__":
    main()
