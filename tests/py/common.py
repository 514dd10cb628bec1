"""Shared bits of the Python helpers the Rust end-to-end tests run (with target/venv/bin/python).

Servers bind --host/--port (127.0.0.1 and port 0 unless told), print one JSON line
{"port": N} and, with --ready-file, write the same JSON there atomically (write, then rename),
which the tests wait for. Clients print exactly one JSON line of results; a client that fails
prints {"ok": false, "error": "..."} and exits 1.
"""

import json
import os
import sys
import traceback

# Whatever the environment says, these helpers never go through a proxy by accident: a test
# that wants a proxy passes it explicitly.
for _var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
             "grpc_proxy", "no_proxy", "NO_PROXY"):
    os.environ.pop(_var, None)


def server_args(parser, default_port=0):
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help="port to bind (default: any)")
    parser.add_argument("--ready-file", help="write {\"port\": N} here once listening")


def announce(port, ready_file=None, **extra):
    """Prints (and writes to ready_file) the bound port once the server accepts connections."""
    line = json.dumps(dict(port=port, **extra))
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.rename(tmp, ready_file)
    print(line, flush=True)


def result(obj):
    """Prints the one JSON result line; exits 1 unless obj["ok"]."""
    print(json.dumps(obj), flush=True)
    sys.exit(0 if obj.get("ok") else 1)


def run_client(main):
    """Runs main() -> dict; any exception becomes {"ok": false, "error": ...}."""
    try:
        out = main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the test wants every failure as one JSON line
        result({
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        })
    out.setdefault("ok", not out.get("failures"))
    result(out)
