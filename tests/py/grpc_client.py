"""A gRPC client (the real `grpcio` package) for grpc_server.py: a unary call, a server stream
of 100 messages, a bidi stream (one message of 1 MiB among them) and a call that fails; checks
every answer, the trailing metadata and the failure's status. Prints one JSON line:

  {"ok": true, "failures": [], "unary": {"echo": ..., "metadata": {...}},
   "trailers": {"unary": "trailer-value", "stream": ..., "bidi": ..., "fail": ...},
   "stream_messages": 100, "bidi_messages": 5, "error": {"code": "RESOURCE_EXHAUSTED", "details": "quota"}}

How it reaches the server:
  --target HOST:PORT    where to connect (cleartext h2c); with --authority the :authority
                        names the service (grpc.default_authority), e.g. the client sidecar's
                        outbound address with --authority grpc.foo:50051
  --proxy http://A      through an HTTP proxy with CONNECT (grpc.http_proxy); --target is then
                        the service's name, e.g. grpc.foo:50051
grpc's own proxy lookup (environment) is off unless --proxy is given.

    python grpc_client.py --target ADDR [--authority HOST:PORT] [--proxy http://A]
"""

import argparse
import json
import os
import sys

import grpc

sys.dont_write_bytecode = True  # no __pycache__ left in tests/py
import common  # noqa: E402

SERVICE = "/signet.test.Echo/"
TRAILER = "x-signet-test"
MAX_MESSAGE = 16 * 1024 * 1024


def trailer(call):
    return dict(call.trailing_metadata() or ()).get(TRAILER)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--authority")
    parser.add_argument("--proxy")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--count", type=int, default=100, help="messages in the server stream")
    args = parser.parse_args()

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    if args.proxy:
        options.append(("grpc.http_proxy", args.proxy))
    else:
        options.append(("grpc.enable_http_proxy", 0))

    failures = []
    out = {"failures": failures, "trailers": {}}
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            raise ConnectionError(f"the channel to {args.target} was not ready within {args.timeout} s") from None

        # Unary.
        response, call = channel.unary_unary(SERVICE + "Unary").with_call(
            b"ping from grpc_client", timeout=args.timeout, metadata=(("x-caller", "grpc_client"),))
        out["unary"] = json.loads(response)
        out["trailers"]["unary"] = trailer(call)
        if out["unary"]["echo"] != "ping from grpc_client":
            failures.append(f"unary echo: {out['unary']['echo']!r}")
        if out["unary"]["metadata"].get("x-caller") != "grpc_client":
            failures.append("unary: the server did not see the request metadata x-caller")

        # Server streaming.
        size = 1000
        call = channel.unary_stream(SERVICE + "ServerStream")(
            json.dumps({"count": args.count, "size": size}).encode(), timeout=args.timeout)
        got = list(call)
        out["stream_messages"] = len(got)
        out["trailers"]["stream"] = trailer(call)
        for i, message in enumerate(got):
            if message != f"{i}:".encode() + bytes([i % 256]) * size:
                failures.append(f"stream message {i} differs")
                break
        if len(got) != args.count:
            failures.append(f"stream: {len(got)} messages, expected {args.count}")

        # Bidi streaming.
        sent = [b"one", b"", os.urandom(1024 * 1024), b"four", "fünf".encode()]
        call = channel.stream_stream(SERVICE + "Bidi")(iter(sent), timeout=args.timeout)
        back = list(call)
        out["bidi_messages"] = len(back)
        out["trailers"]["bidi"] = trailer(call)
        if back != [b"echo:" + m for m in sent]:
            failures.append(f"bidi: {len(back)} messages back, not the {len(sent)} echoes")

        # A failing call: the status and details come back in the trailers.
        try:
            channel.unary_unary(SERVICE + "Fail")(b"too much", timeout=args.timeout)
            failures.append("Fail succeeded")
        except grpc.RpcError as e:
            out["error"] = {"code": e.code().name, "details": e.details()}
            out["trailers"]["fail"] = dict(e.trailing_metadata() or ()).get(TRAILER)
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or e.details() != "quota":
                failures.append(f"Fail: {e.code().name} {e.details()!r}")

    for name, value in out["trailers"].items():
        if value != "trailer-value":
            failures.append(f"{name}: trailer {TRAILER} is {value!r}")
    return out


if __name__ == "__main__":
    common.run_client(main)
