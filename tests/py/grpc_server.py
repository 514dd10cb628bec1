"""A gRPC server (the real `grpcio` package), insecure (cleartext h2c), the app behind a
server sidecar. No protoc: generic handlers with bytes in and out, service signet.test.Echo:

  Unary(bytes) -> JSON {"echo": <request as text>, "metadata": {name: value}}: the request
      metadata the app saw (x-forwarded-client-cert tells an HTTP-proxied call from a tunnel)
  ServerStream(JSON {"count": N, "size": S}) -> N messages b"<i>:" + S bytes
  Bidi(stream) -> each message back, prefixed b"echo:"
  Fail(bytes) -> aborts with RESOURCE_EXHAUSTED, details "quota"

Every method sets the trailing metadata x-signet-test: trailer-value (Fail too, before it
aborts), so a test can prove trailers cross the sidecars.

    python grpc_server.py [--host H] [--port P] [--ready-file F]
"""

import argparse
import json
import sys
from concurrent import futures

import grpc

sys.dont_write_bytecode = True  # no __pycache__ left in tests/py
import common  # noqa: E402

SERVICE = "signet.test.Echo"
TRAILER = ("x-signet-test", "trailer-value")
MAX_MESSAGE = 16 * 1024 * 1024


def unary(request, context):
    context.set_trailing_metadata((TRAILER,))
    metadata = {}
    for key, value in context.invocation_metadata():
        metadata[key] = value if isinstance(value, str) else value.hex()
    return json.dumps({"echo": request.decode("utf-8", "replace"), "metadata": metadata}).encode()


def server_stream(request, context):
    ask = json.loads(request)
    context.set_trailing_metadata((TRAILER,))
    for i in range(ask["count"]):
        yield f"{i}:".encode() + bytes([i % 256]) * ask.get("size", 0)


def bidi(requests, context):
    context.set_trailing_metadata((TRAILER,))
    for message in requests:
        yield b"echo:" + message


def fail(request, context):
    context.set_trailing_metadata((TRAILER,))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.server_args(parser)
    args = parser.parse_args()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }),))
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = server.add_insecure_port(f"{host}:{args.port}")
    if port == 0:
        raise SystemExit(f"grpc_server: cannot bind {host}:{args.port}")
    server.start()
    common.announce(port, args.ready_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
