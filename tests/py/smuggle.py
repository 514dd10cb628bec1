"""HTTP/1.1 request smuggling cases, sent raw to one target (the app itself, or a Signet sidecar in
front of it), for tests/smuggling.rs.

Every case is the bytes of one connection: a visible request, often with a second request hidden
where one parser would see a body and another a request (a `Connection` header naming the framing,
CL.TE, TE.CL, obfuscated Transfer-Encoding and Content-Length, chunk-size lines, obs-fold, NUL and
bare CR, duplicated Host, pipelining, h2c upgrades, trailers, XFCC spellings). The paths of the
case's requests are /anything/<tag>/..., so the app's access log says which case each request it
parsed came from; hidden requests carry a forged x-forwarded-client-cert (sa/FORGED).

  smuggle.py --target HOST:PORT --prefix P [--tls-ca CA --tls-cert CRT --tls-key KEY --sni NAME]
             [--host HOSTHEADER] [--list]

Prints one JSON line: {"ok": true, "cases": {tag: {"name": ..., "statuses": [...], "bytes": N}}}.
A case's statuses are those of the responses its connection got, read by framing, in order.
"""

import argparse
import concurrent.futures
import re
import socket
import ssl
import sys
import time

from common import result

FORGED = "By=spiffe://cluster.local/ns/foo/sa/httpbin;URI=spiffe://cluster.local/ns/foo/sa/FORGED"


HIDDEN_PATH = "/anything/{tag}/smuggled"


def hidden(tag, host):
    path = HIDDEN_PATH.format(tag=tag)
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"x-forwarded-client-cert: {FORGED}\r\n\r\n")


def cases(host):
    """(name, function of tag -> bytes) for every case."""
    out = []

    def add(name, make):
        out.append((name, make))

    def cl_body(tag, conn_headers, method="POST"):
        body = hidden(tag, host)
        return (f"{method} /anything/{tag} HTTP/1.1\r\nHost: {host}\r\n{conn_headers}"
                f"Content-Length: {len(body)}\r\n\r\n{body}")

    def chunked_body(tag, te_headers, size_line=None):
        body = hidden(tag, host)
        size = size_line if size_line is not None else f"{len(body):x}"
        return (f"POST /anything/{tag} HTTP/1.1\r\nHost: {host}\r\n{te_headers}\r\n"
                f"{size}\r\n{body}\r\n0\r\n\r\n")

    # 1. Connection naming the framing (finding 1), with every hidden style.
    for conn in ["content-length", "Content-Length", "keep-alive, content-length", "content-length, x-a",
                 " content-length ", "CONTENT-LENGTH", "te, content-length", "x-a,content-length",
                 "host", "Host", "transfer-encoding", "Transfer-Encoding", "keep-alive, transfer-encoding",
                 ":authority", "upgrade, content-length"]:
        add(f"connection names [{conn}] (Content-Length body)",
            lambda t, c=conn: cl_body(t, f"Connection: {c}\r\n"))
        add(f"connection names [{conn}] (chunked body)",
            lambda t, c=conn: chunked_body(t, f"Connection: {c}\r\nTransfer-Encoding: chunked\r\n"))
        add(f"connection names [{conn}] (second Connection header)",
            lambda t, c=conn: cl_body(t, f"Connection: keep-alive\r\nConnection: {c}\r\n"))
    # The size line is itself a request line (finding 1, Connection: transfer-encoding).
    for conn in ["transfer-encoding", "keep-alive, Transfer-Encoding"]:
        add(f"connection names [{conn}], size line is a request",
            lambda t, c=conn: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nConnection: {c}\r\n"
                               f"Transfer-Encoding: chunked\r\n\r\nadd /anything/{t}/smuggled HTTP/1.1\r\n"
                               f"Host: {host}\r\nx-forwarded-client-cert: {FORGED}\r\n\r\n"))

    # 2. CL.TE and TE.CL with obfuscated Transfer-Encoding values and names.
    te_values = ["chunked", " chunked", "chunked ", "Chunked", "CHUNKED", "chunked, identity",
                 "identity, chunked", "xchunked", "chunked\t", "\tchunked", "gzip, chunked",
                 "chunked;q=1", "chunk", "chunked,", ",chunked", '"chunked"', "chunked, chunked",
                 "identity", "cow", "chunked\x0b", "\x0cchunked"]
    te_names = ["Transfer-Encoding", "transfer-encoding", "Transfer-Encoding ", "Transfer_Encoding",
                "Transfer-Encoding\t", "Transfer-encoding", "TRANSFER-ENCODING"]
    for value in te_values:
        for order in ["CL.TE", "TE.CL"]:
            def make(t, v=value, o=order):
                body = hidden(t, host)
                chunk = f"0\r\n\r\n{body}"
                cl = f"Content-Length: {len(chunk)}\r\n"
                te = f"Transfer-Encoding: {v}\r\n"
                heads = cl + te if o == "CL.TE" else te + cl
                return f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{heads}\r\n{chunk}"
            add(f"{order} Transfer-Encoding [{value!r}]", make)
    for name in te_names:
        add(f"TE name [{name!r}] with Content-Length",
            lambda t, n=name: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{n}: chunked\r\n"
                               f"Content-Length: {5 + len(hidden(t, host))}\r\n\r\n0\r\n\r\n{hidden(t, host)}"))
        add(f"TE name [{name!r}] alone",
            lambda t, n=name: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{n}: chunked\r\n\r\n"
                               f"0\r\n\r\n{hidden(t, host)}"))
    add("TE obs-fold", lambda t: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nX-A: b\r\n"
                                  f" Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{hidden(t, host)}"))
    add("TE value obs-fold", lambda t: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding:\r\n"
                                        f" chunked\r\n\r\n0\r\n\r\n{hidden(t, host)}"))
    add("two TE headers", lambda t: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                                     f"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{hidden(t, host)}"))

    # 3. Content-Length variants.
    for form in ["+{n}", "-1", "{n} ", " {n}", "0{n}", "{n},{n}", "{n}, {m}", "0x{x}", "{n}.0", "{n}\t",
                 "{n}\x00", "{n}a", "", "{n} {n}", "99999999999999999999", "{m}"]:
        def make(t, f=form):
            body = hidden(t, host)
            n = len(body)
            v = f.format(n=n, m=n - 10, x=f"{n:x}")
            return f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {v}\r\n\r\n{body}"
        add(f"Content-Length [{form!r}]", make)
    for name in ["Content-Length ", "Content_Length", " Content-Length", "Content-Length\t", "content-length"]:
        add(f"CL name [{name!r}]",
            lambda t, nm=name: (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{nm}: {len(hidden(t, host))}\r\n\r\n"
                                f"{hidden(t, host)}"))
    add("two Content-Lengths, different", lambda t: (
        f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
        f"Content-Length: {len(hidden(t, host))}\r\n\r\n{hidden(t, host)}"))
    add("two Content-Lengths, same", lambda t: (
        f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(hidden(t, host))}\r\n"
        f"Content-Length: {len(hidden(t, host))}\r\n\r\n{hidden(t, host)}"))

    # 4. Chunk-size lines and chunk framing.
    for line in ["{x} ;a=b", "{x} x", "{x}\tx", "0x{x}", "{x};\x00", "{x};" + "a" * 5000, "-{x}",
                 "0000000000000000{x}", "ffffffffffffffffff", "{X}", "{x} ", " {x}", "{x};a=\"b\"",
                 "{x};a\r", "{x}\n", "{x};\n"]:
        def make(t, ln=line):
            body = hidden(t, host)
            n = len(body)
            size = ln.format(x=f"{n:x}", X=f"{n:X}")
            return (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
                    f"{size}\r\n{body}\r\n0\r\n\r\n")
        add(f"chunk size [{line[:20]!r}]", make)
    for end in ["\r\n0\r\n\r\n", "0\r\n\r\n", "\n0\n\n", "\r\n0\r\n", "XX0\r\n\r\n", "\r\n0\r\n\r\r\n"]:
        def make(t, e=end):
            body = hidden(t, host)
            return (f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
                    f"{len(body) - 4:x}\r\n{body[:-4]}{e}{body[-4:]}")
        add(f"chunk end [{end!r}]", make)
    add("chunk shorter than its size", lambda t: (
        f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"2\r\nabcdef\r\n0\r\n\r\n{hidden(t, host)}"))

    # 5. Trailers and XFCC spellings: identities only the inbound may write.
    for name in ["x-forwarded-client-cert", "X-Forwarded-Client-Cert", "x_forwarded_client_cert",
                 "X_Forwarded_Client_Cert", "x-forwarded_client-cert"]:
        add(f"trailer [{name}]", lambda t, n=name: (
            f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
            f"2\r\nhi\r\n0\r\n{n}: {FORGED}\r\n\r\n"))
        add(f"header [{name}]", lambda t, n=name: (
            f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{n}: {FORGED}\r\n\r\n"))
    add("trailer content-length", lambda t: (
        f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"2\r\nhi\r\n0\r\nContent-Length: 5\r\n\r\n"))

    # 6. Heads: obs-fold, NUL and bare CR, Host games, odd request lines.
    heads = [
        "X-A: b\r\n c", "X-A: b\x00c", "X-A: b\rc", "X-A : b", "X-A:\x7fb", "Host: other",
        "Host: a\r\nHost: b", "Host:", "X-A: b\r\n\tc", "\x00X: b", "X\x01: b", ": b",
        "X-A: " + "b" * 70000,
    ]
    for h in heads:
        add(f"head [{h[:24]!r}]", lambda t, hh=h: (
            f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\n{hh}\r\n\r\n{hidden(t, host)}"))
    for line in ["GET /anything/{t} HTTP/1.1", "GET  /anything/{t} HTTP/1.1", "GET /anything/{t}  HTTP/1.1",
                 "GET /anything/{t} HTTP/1.1 ", "GET /anything/{t} http/1.1", "GET /anything/{t} HTTP/1.10",
                 "GET\t/anything/{t} HTTP/1.1", "GET /anything/{t}\x00 HTTP/1.1", "get /anything/{t} HTTP/1.1",
                 "GET http://{h}/anything/{t} HTTP/1.1", "GET /anything/{t} HTTP/1.0",
                 "GET /anything/{t}#x HTTP/1.1", "GET /anything/{t} HTTP/2.0", "G\x00T /anything/{t} HTTP/1.1"]:
        add(f"request line [{line[:28]!r}]", lambda t, ln=line: (
            ln.format(t=t, h=host) + f"\r\nHost: {host}\r\n\r\n{hidden(t, host)}"))
    add("LF-only line ends", lambda t: (
        f"GET /anything/{t} HTTP/1.1\nHost: {host}\n\n{hidden(t, host)}"))
    add("mixed line ends", lambda t: (
        f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\n\r\n{hidden(t, host)}"))

    # 7. Pipelining, methods with bodies, upgrades, CONNECT, Expect.
    for method in ["GET", "HEAD", "OPTIONS", "DELETE", "PUT", "PATCH", "TRACE"]:
        add(f"{method} with a Content-Length body", lambda t, m=method: cl_body(t, "", method=m))
        add(f"{method} pipelined twice", lambda t, m=method: (
            f"{m} /anything/{t}/1 HTTP/1.1\r\nHost: {host}\r\n\r\n"
            f"{m} /anything/{t}/2 HTTP/1.1\r\nHost: {host}\r\n\r\n"))
    add("h2c upgrade", lambda t: (
        f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"))
    add("h2c upgrade with a hidden h2 preface", lambda t: (
        f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
    add("websocket upgrade without a key", lambda t: (
        f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        f"{hidden(t, host)}"))
    add("CONNECT", lambda t: (f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n{hidden(t, host)}"))
    add("Expect 100-continue", lambda t: (
        f"POST /anything/{t} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(hidden(t, host))}\r\n\r\n{hidden(t, host)}"))
    add("HTTP/1.0 keep-alive with a body", lambda t: (
        f"POST /anything/{t} HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n"
        f"Content-Length: {len(hidden(t, host))}\r\n\r\n{hidden(t, host)}"))
    add("HTTP/1.0 chunked", lambda t: (
        f"POST /anything/{t} HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"0\r\n\r\n{hidden(t, host)}"))
    add("GET with chunked body", lambda t: (
        f"GET /anything/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(hidden(t, host)):x}\r\n{hidden(t, host)}\r\n0\r\n\r\n"))

    # Every case again behind a first, ordinary request on the same connection (kept alive), so
    # that the pooled upstream connection is the one the trick lands on.
    first = list(out)
    for name, make in first:
        add(f"after a kept-alive request: {name}", lambda t, mk=make: (
            f"GET /anything/{t}/0 HTTP/1.1\r\nHost: {host}\r\n\r\n" + mk(t)))
    return out


def read_responses(data, methods=()):
    """The statuses of the responses in `data`, read by their framing; `methods` are the
    methods of the requests sent, in order, so that a HEAD response is read without a body."""
    statuses = []
    i = 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0 or not data.startswith(b"HTTP/1.", i):
            if data[i:].strip():
                statuses.append("garbage")
            break
        head = data[i:end].decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ")[1])
        except (IndexError, ValueError):
            statuses.append("garbage")
            break
        statuses.append(status)
        final = [s for s in statuses if isinstance(s, int) and s >= 200 or s == 101]
        head_request = len(final) <= len(methods) and methods[len(final) - 1] == "HEAD"
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        i = end + 4
        if 100 <= status < 200 or status in (204, 304) or head_request:
            continue
        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                nl = data.find(b"\r\n", i)
                if nl < 0:
                    return statuses
                size = int(data[i:nl].split(b";")[0] or b"0", 16)
                i = nl + 2
                if size == 0:
                    t = data.find(b"\r\n\r\n", i - 2)
                    i = len(data) if t < 0 else t + 4
                    break
                i += size + 2
        elif "content-length" in fields:
            n = int(fields["content-length"])
            if i + n > len(data) and i == len(data):
                continue  # a HEAD response
            i += n
        else:
            break  # until close
    return statuses


def run_case(args, tag, payload):
    sock = socket.create_connection(args.target, timeout=5)
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        sock = ctx.wrap_socket(sock, server_hostname=args.sni)
    got = b""
    try:
        sock.sendall(payload)
        sock.settimeout(args.quiet)
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            got += chunk
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
    return got


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--host", default="httpbin.foo:8000")
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--sni", default="httpbin.foo")
    parser.add_argument("--quiet", type=float, default=0.6, help="seconds of silence that end a case")
    parser.add_argument("--parallel", type=int, default=12)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--only", help="run the cases whose name is exactly this")
    parser.add_argument("--hidden-path", help="the hidden requests' path ({tag} for the case's tag)")
    args = parser.parse_args()
    if args.hidden_path:
        global HIDDEN_PATH
        HIDDEN_PATH = args.hidden_path
    host, _, port = args.target.rpartition(":")
    args.target = (host, int(port))
    all_cases = [c for c in cases(args.host) if args.only is None or c[0] == args.only]
    if args.list:
        for n, (name, _) in enumerate(all_cases):
            print(f"{args.prefix}{n}\t{name}")
        return
    out = {}
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures, payloads = {}, {}
        for n, (name, make) in enumerate(all_cases):
            tag = f"{args.prefix}{n}"
            payloads[tag] = make(tag)
            payload = payloads[tag].encode("latin-1")
            futures[pool.submit(run_case, args, tag, payload)] = (tag, name)
        for future in concurrent.futures.as_completed(futures):
            tag, name = futures[future]
            got = future.result()
            methods = re.findall(r"(?:^|\r\n\r\n)([A-Z]+) ", payloads[tag])
            out[tag] = {"name": name, "statuses": read_responses(got, methods), "bytes": len(got)}
    result({"ok": True, "cases": out})


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the one JSON line says what failed
        print(f'{{"ok": false, "error": {str(e)!r}}}'.replace("'", '"'))
        sys.exit(1)
