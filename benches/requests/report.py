#!/usr/bin/env python3
"""Summarises benches/requests.sh's records (one JSON line per load run): the median over rounds
of every figure, a markdown report (stdout and results.md / requests.md), the JSON and an SVG
chart.

    report.py RECORDS.jsonl OUT_DIR key=value...
"""
import datetime
import json
import os
import statistics
import sys
from html import escape

ROWS = ["direct", "signet-http", "signet-tcp", "nginx", "haproxy", "haproxy-h2"]
# Rows that carry HTTP/2 only: no HTTP/1.1 lines for them.
H2_ONLY = {"haproxy-h2"}
LABEL = {
    "direct": "direct (no proxies)",
    "signet-http": "Signet `http` pair",
    "signet-tcp": "Signet `tcp` pair",
    "nginx": "nginx pair",
    "haproxy": "haproxy pair",
    "haproxy-h2": "haproxy pair, h2 end to end",
}


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def f(v, fmt="{:.2f}", none="n/a"):
    return none if v is None else fmt.format(v)


def summarise(records):
    groups = {}
    for r in records:
        groups.setdefault((r["row"], r["proto"], r["load"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        s = {"rounds": len(rs), "errors": sum(r.get("errors") or 0 for r in rs)}
        for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "cli_cores", "srv_cores"):
            s[k] = med(r.get(k) for r in rs)
        s["max_ms_worst"] = max((r.get("max_ms") or 0 for r in rs), default=None)
        s["p99_ms_per_round"] = [r.get("p99_ms") for r in rs]
        for side in ("cli", "srv"):
            # CPU-seconds per 1,000 requests = vCPU used at 1,000 requests/s.
            s[f"{side}_vcpu_per_k"] = med(
                r[f"{side}_cpu_s"] / r["requests"] * 1000.0
                for r in rs
                if r.get(f"{side}_cpu_s") is not None and r.get("requests")
            )
            s[f"{side}_rss_kib"] = med(r.get(f"{side}_rss_kib") for r in rs)
            s[f"{side}_rss_kib_max"] = max((r.get(f"{side}_rss_kib") or 0 for r in rs), default=None)
        if s["cli_cores"] is not None and s["srv_cores"] is not None:
            cores = s["cli_cores"] + s["srv_cores"]
            s["proxy_cores"] = cores
            s["rps_per_proxy_core"] = med(
                r["rps"] / (r["cli_cores"] + r["srv_cores"])
                for r in rs
                if r.get("rps") and (r.get("cli_cores") or 0) + (r.get("srv_cores") or 0) > 0
            )
        out[key] = s
    return out


def mib(kib):
    return None if kib is None else kib / 1024.0


def markdown(summary, meta):
    rows = [r for r in ROWS if any(k[0] == r for k in summary)]
    md = []
    md.append(f"### Request path through a sidecar pair, {meta['date']}\n")
    md.append(
        f"{meta['cpus']} vCPUs ({meta['cpu']}); "
        + (
            "both proxies of a pair pinned to CPU 1 (one worker each), load generator and app pinned to CPU 0. "
            if meta.get("pinned", "1") == "1"
            else "nothing pinned (--unpinned: proxies, load generator and app share every CPU; one worker per proxy). "
        )
        + f"App: `signet httpbin` GET {meta['path']} "
        f"({meta['body']}-byte body), Host `app.foo:8000`; kept-alive connections; TLS 1.3 mTLS "
        f"(ECDSA P-256, signer foo) between the proxies. {meta['rounds']} interleaved round(s) of "
        f"{meta['secs']} s per phase; every figure is the median over rounds. "
        f"nginx {meta.get('nginx', '?')}, HAProxy {meta.get('haproxy', '?')}, wrk {meta.get('wrk', '?')}, "
        f"h2load {meta.get('h2load', '?')}, oha {meta.get('oha', '?')}.\n"
    )
    for load, what in (("saturation", f"{meta['path']}, {meta['body']} bytes"), ("sat64k", "/bytes/65536, 64 KiB")):
        if not any(k[2] == load for k in summary):
            continue
        nginx_pc = {
            p: (summary.get(("nginx", p, load)) or {}).get("rps_per_proxy_core") for p in ("h1", "h2")
        }
        md.append(
            f"**Saturation, {what}** (HTTP/1.1: `wrk -t1 -c16`; HTTP/2: `h2load -c16 -m1`, h2c prior knowledge):\n"
        )
        md.append(
            "| pair | protocol | requests/s | proxy CPU (client + server) | **requests/s per proxy-core** | vs nginx | peak RSS client / server |"
        )
        md.append("|---|---|---:|---:|---:|---:|---:|")
        for row in rows:
            for proto in ("h1", "h2"):
                s = summary.get((row, proto, load))
                if s is None:
                    if (row != "direct" or proto == "h1") and not (row in H2_ONLY and proto == "h1"):
                        md.append(f"| {LABEL[row]} | {proto} | n/a | | | | |")
                    continue
                pc = s.get("rps_per_proxy_core")
                vs = pc / nginx_pc[proto] if pc and nginx_pc.get(proto) else None
                cores = (
                    f"{s['cli_cores']:.2f} + {s['srv_cores']:.2f} = {s['cli_cores'] + s['srv_cores']:.2f}"
                    if s.get("cli_cores") is not None
                    else "–"
                )
                rss = (
                    f"{mib(s['cli_rss_kib']):.1f} / {mib(s['srv_rss_kib']):.1f} MiB"
                    if s.get("cli_rss_kib") is not None and s.get("srv_rss_kib") is not None
                    else "–"
                )
                err = f" ({s['errors']} errors)" if s["errors"] else ""
                md.append(
                    f"| {LABEL[row]} | {proto} | {f(s['rps'], '{:,.0f}')}{err} | {cores} | **{f(pc, '{:,.0f}', '–')}** | {f(vs, '{:.2f}×', '–')} | {rss} |"
                )
        md.append("")
    md.append(
        "**Fixed rates** (`oha -q RATE --latency-correction`: latency from each request's scheduled "
        "start; HTTP/1.1 over 32 connections, HTTP/2 over 4 connections × 8 streams). vCPU per 1,000 "
        "requests/s = the proxy's CPU-seconds (utime + stime of its processes, /proc) per 1,000 "
        "requests. Added latency = the pair's percentile minus direct's, same protocol and rate.\n"
    )
    md.append(
        "| pair | protocol | rate/s | vCPU per 1,000 req/s (client + server = pair) | peak RSS client / server | p50 / p90 / p99 / p99.9 ms | **added p50 / p90 / p99 / p99.9 ms** |"
    )
    md.append("|---|---|---:|---:|---:|---:|---:|")
    for rate in (1000, 5000):
        for proto in ("h1", "h2"):
            base = summary.get(("direct", proto, f"rate{rate}"))
            for row in rows:
                s = summary.get((row, proto, f"rate{rate}"))
                if s is None:
                    if row != "direct" and not (row in H2_ONLY and proto == "h1"):
                        md.append(f"| {LABEL[row]} | {proto} | {rate:,} | n/a | | | |")
                    continue
                pcts = " / ".join(f(s[k], "{:.3f}") for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"))
                if row == "direct":
                    vcpu, rss, added = "–", "–", "(baseline)"
                else:
                    c, v = s.get("cli_vcpu_per_k"), s.get("srv_vcpu_per_k")
                    vcpu = f"{c:.3f} + {v:.3f} = **{c + v:.3f}**" if c is not None and v is not None else "n/a"
                    rss = (
                        f"{mib(s['cli_rss_kib']):.1f} / {mib(s['srv_rss_kib']):.1f} MiB"
                        if s.get("cli_rss_kib") is not None and s.get("srv_rss_kib") is not None
                        else "n/a"
                    )
                    added = (
                        " / ".join(
                            f(s[k] - base[k], "{:+.3f}") if s[k] is not None and base[k] is not None else "n/a"
                            for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms")
                        )
                        if base
                        else "n/a"
                    )
                    added = f"**{added}**"
                achieved = s.get("rps")
                short = f" (achieved {achieved:,.0f}/s)" if achieved and achieved < rate * 0.97 else ""
                err = f" ({s['errors']} errors)" if s["errors"] else ""
                md.append(f"| {LABEL[row]} | {proto} | {rate:,}{short}{err} | {vcpu} | {rss} | {pcts} | {added} |")
    if any(k[2] == "burst1000" for k in summary):
        md.append("")
        md.append(
            "**Bursty** (HTTP/1.1, `oha --burst-delay 10ms --burst-rate 10`: 10 requests at once every "
            "10 ms = 1,000/s; oha cannot correct for coordinated omission in this mode, so latency is "
            "from each send). p99 per round shows whether a stall happened in any round:\n"
        )
        md.append("| pair | p50 / p90 / p99 / p99.9 ms | max ms (worst round) | p99 per round ms | added p99 ms |")
        md.append("|---|---:|---:|---:|---:|")
        base = summary.get(("direct", "h1", "burst1000"))
        for row in rows:
            s = summary.get((row, "h1", "burst1000"))
            if s is None:
                continue
            pcts = " / ".join(f(s[k], "{:.3f}") for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"))
            per = ", ".join(f(x, "{:.2f}") for x in s["p99_ms_per_round"])
            add = (
                f(s["p99_ms"] - base["p99_ms"], "{:+.3f}")
                if base and row != "direct" and s["p99_ms"] is not None
                else "–"
            )
            md.append(f"| {LABEL[row]} | {pcts} | {f(s['max_ms_worst'], '{:.1f}')} | {per} | {add} |")
    md.append("")
    md.append("Notes:")
    if meta.get("pinned", "1") == "1":
        md.append(
            f"- {meta['cpus']} vCPUs: at saturation the two proxies share CPU 1 while wrk/h2load and the app share "
            "CPU 0; when the proxy CPU column is well under 1.00 the generator side (CPU 0), not the proxies, was "
            "the limit, and requests/s per proxy-core is still comparable but requests/s is not."
        )
    else:
        md.append(
            f"- {meta['cpus']} vCPUs, nothing pinned: the generator, the app and both proxies take turns on every "
            "CPU, so each percentile includes waiting for one; CPU per request is the steadier measure."
        )
    md.append(
        "- HTTP/2 is h2c prior knowledge from the generator to the client-side proxy (direct: to the app); "
        "between the proxies each pair uses what it does by default (nginx and haproxy here: HTTP/1.1 over "
        "mTLS; the Signet `tcp` pair tunnels the client's h2 bytes to the app)."
    )
    if any(k[0] == "haproxy-h2" for k in summary):
        md.append(
            "- The Signet `http` pair keeps an h2 request HTTP/2 on every hop (to the peer sidecar and on to the app), "
            "so gRPC's streams and trailers get through; the nginx and haproxy rows turn it into HTTP/1.1 at the "
            "client-side proxy, which gRPC cannot cross. The haproxy `h2 end to end` row does the Signet `http` "
            "pair's job: h2 over mTLS between the proxies and h2c to the app."
        )
    return "\n".join(md) + "\n"


def svg_chart(summary):
    rows = [r for r in ROWS if r != "direct" and any(k[0] == r for k in summary)]
    W, H = 1080, 420
    panels = [
        ("requests/s per proxy-core at saturation", "higher is better",
         [("h1", lambda r: (summary.get((r, "h1", "saturation")) or {}).get("rps_per_proxy_core")),
          ("h2", lambda r: (summary.get((r, "h2", "saturation")) or {}).get("rps_per_proxy_core"))]),
        ("vCPU per 1,000 req/s (pair) at 1,000/s", "lower is better",
         [("h1", lambda r: _sum(summary.get((r, "h1", "rate1000")), "cli_vcpu_per_k", "srv_vcpu_per_k")),
          ("h2", lambda r: _sum(summary.get((r, "h2", "rate1000")), "cli_vcpu_per_k", "srv_vcpu_per_k"))]),
        ("added p99 ms at 1,000/s", "lower is better",
         [("h1", lambda r: _added(summary, r, "h1", "rate1000", "p99_ms")),
          ("h2", lambda r: _added(summary, r, "h2", "rate1000", "p99_ms"))]),
    ]
    colors = {"h1": "#3465a4", "h2": "#f57900"}
    pw = W / len(panels)
    top, bottom = 60, 80
    ph = H - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" font-size="16" text-anchor="middle">Request path through a sidecar pair (proxies on one core; median of rounds)</text>',
        f'<rect x="{W - 170}" y="32" width="12" height="12" fill="{colors["h1"]}"/><text x="{W - 153}" y="43" font-size="12">HTTP/1.1</text>',
        f'<rect x="{W - 90}" y="32" width="12" height="12" fill="{colors["h2"]}"/><text x="{W - 73}" y="43" font-size="12">HTTP/2</text>',
    ]
    for i, (title, hint, series) in enumerate(panels):
        x0 = i * pw + 50
        width = pw - 70
        vals = [abs(fn(r) or 0) for r in rows for _, fn in series]
        vmax = max(vals + [1e-9]) * 1.15
        parts.append(f'<text x="{x0 + width / 2}" y="{top - 8}" font-size="13" text-anchor="middle">{escape(title)} ({hint})</text>')
        parts.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + width}" y2="{top + ph}" stroke="black"/>')
        parts.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="black"/>')
        slot = width / max(len(rows), 1)
        bw = slot * 0.36
        for j, r in enumerate(rows):
            cx = x0 + j * slot + slot * 0.1
            for k, (proto, fn) in enumerate(series):
                v = fn(r)
                if v is None:
                    parts.append(f'<text x="{cx + k * bw + bw / 2}" y="{top + ph - 4}" font-size="10" text-anchor="middle">n/a</text>')
                    continue
                h = abs(v) / vmax * ph
                y = top + ph - h
                parts.append(f'<rect x="{cx + k * bw:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{colors[proto]}"/>')
                label = f"{v:,.0f}" if abs(v) >= 100 else (f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}")
                parts.append(f'<text x="{cx + k * bw + bw / 2:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle">{label}</text>')
            parts.append(
                f'<text x="{x0 + j * slot + slot / 2:.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">{escape(r)}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _sum(s, a, b):
    if not s or s.get(a) is None or s.get(b) is None:
        return None
    return s[a] + s[b]


def _added(summary, row, proto, load, key):
    s, base = summary.get((row, proto, load)), summary.get(("direct", proto, load))
    if not s or not base or s.get(key) is None or base.get(key) is None:
        return None
    return s[key] - base[key]


def main():
    records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    out = sys.argv[2]
    meta = dict(a.split("=", 1) for a in sys.argv[3:])
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    write = meta.pop("write", "0") == "1"
    summary = summarise(records)
    md = markdown(summary, meta)
    print(md)
    names = ("requests.md", "requests.json", "requests.svg") if write else ("results.md", "results.json", "chart.svg")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, names[0]), "w") as fh:
        fh.write(md)
    doc = {
        "meta": meta,
        "summary": [dict(row=k[0], proto=k[1], load=k[2], **v) for k, v in sorted(summary.items())],
        "records": records,
    }
    with open(os.path.join(out, names[1]), "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(out, names[2]), "w") as fh:
        fh.write(svg_chart(summary))
    print(f"wrote {out}/{names[0]}, {names[1]}, {names[2]}", file=sys.stderr)
    if not write:
        print("(benches/results is unchanged; pass --write-results to write requests.{md,json,svg} there)", file=sys.stderr)


if __name__ == "__main__":
    main()
