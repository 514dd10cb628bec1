#!/usr/bin/env python3
"""One load run's output (wrk, h2load or oha --output-format json) plus the proxies' CPU and RSS
figures, as one JSON line. Used by benches/requests.sh.

    parse.py OUTPUT_FILE TOOL key=value...
"""
import json
import re
import sys

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else None
    for p, key in (("50", "p50_ms"), ("75", "p75_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        r[key] = ms(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


def parse_h2load(out):
    r = {}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        r["requests"] = int(m.group(3))
        r["errors"] = int(m.group(4)) + int(m.group(5))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] = r.get("errors", 0) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["min_ms"], r["max_ms"], r["mean_ms"] = ms(m.group(1)), ms(m.group(2)), ms(m.group(3))
    return r


def parse_oha(out):
    r = {}
    try:
        j = json.loads(out[out.index("{"):])
    except (ValueError, json.JSONDecodeError):
        return {"rps": None, "errors": None, "parse_error": out[-400:]}
    s = j.get("summary", {})
    r["rps"] = s.get("requestsPerSec")
    p = j.get("latencyPercentiles", {})
    for key, name in (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")):
        v = p.get(key)
        r[name] = v * 1000.0 if v is not None else None
    r["max_ms"] = s.get("slowest") * 1000.0 if s.get("slowest") is not None else None
    r["mean_ms"] = s.get("average") * 1000.0 if s.get("average") is not None else None
    codes = j.get("statusCodeDistribution", {})
    r["requests"] = sum(codes.values())
    # Requests still in flight when -z ends are "aborted due to deadline": not failures.
    errs = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    r["errors"] = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errs.values())
    if errs or any(not k.startswith("2") for k in codes):
        r["error_kinds"] = dict(errs, **{f"status {k}": v for k, v in codes.items() if not k.startswith("2")})
    return r


def main():
    out = open(sys.argv[1], encoding="utf-8", errors="replace").read()
    tool = sys.argv[2].rsplit("/", 1)[-1]
    kv = dict(a.split("=", 1) for a in sys.argv[3:])
    rec = {"round": int(kv["round"]), "row": kv["row"], "proto": kv["proto"], "load": kv["load"], "tool": tool}
    rec.update({"wrk": parse_wrk, "h2load": parse_h2load, "oha": parse_oha}[tool](out))
    wall = float(kv["wall"])
    hz = float(kv["hz"])
    rec["wall_s"] = wall
    for side in ("cli", "srv"):
        ticks = int(kv[f"{side}_ticks"])
        rss = kv.get(f"{side}_rss") or ""
        if rec["row"] == "direct":
            rec[f"{side}_cores"] = None
            rec[f"{side}_rss_kib"] = None
        else:
            rec[f"{side}_cpu_s"] = ticks / hz
            rec[f"{side}_cores"] = ticks / hz / wall  # CPU-seconds per second
            rec[f"{side}_rss_kib"] = int(rss) if rss.strip() else None
    print(json.dumps(rec))
    lat = (
        "p50 %.3f  p99 %.3f  p99.9 %s ms" % (rec["p50_ms"], rec["p99_ms"], "%.3f" % rec["p999_ms"] if rec.get("p999_ms") is not None else "-")
        if rec.get("p50_ms") is not None and rec.get("p99_ms") is not None
        else "mean %s  max %s ms" % (rec.get("mean_ms"), rec.get("max_ms"))
    )
    cores = "" if rec["row"] == "direct" else "  proxies %.2f + %.2f cores" % (rec["cli_cores"] or 0, rec["srv_cores"] or 0)
    errs = "  %d errors %s" % (rec["errors"], rec.get("error_kinds", "")) if rec.get("errors") else ""
    print("    %-11s %s %-10s %9.0f req/s  %s%s%s" % (rec["row"], rec["proto"], rec["load"], rec.get("rps") or 0, lat, cores, errs), file=sys.stderr)


if __name__ == "__main__":
    main()
