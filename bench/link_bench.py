"""Migrations over a shaped link between two network namespaces (issue 14).

    python3 bench/link_bench.py --livemig build/livemig [--baseline OLD]
                                [--mem 1G] [--rates 1gbit,10gbit] [--reps 2]

Two "hosts" on one machine: tests/integration/lmnetns.py's two namespaces
joined by a veth pair, each end shaped with `tc qdisc ... tbf` (netem is
not available here) to the rate of the profile.  The source guest runs in
namespace a, the destination in b, and the migration crosses the veth.

For each rate it first measures the shaped link itself in the same run: one
TCP connection from a to b, a Python sender writing 1 MiB buffers for about
3 s, the receiver timing from its first byte to the last.  Then an idle
guest (--fill random --pattern text: pages that must all cross, and that
zstd compresses ~4x) is migrated with each profile (plain, multifd 2,
multifd 2 + zstd), max-bandwidth 0, downtime-limit 300, and the figures
are printed beside the link's: total time, downtime, expected-downtime,
bytes on the wire, and the total time against (bytes / link rate).  Every
migration is verified on the destination.  --baseline runs the same
profiles with another livemig binary (e.g. an older build) interleaved
with ours, for a before/after.

Judged (issue 14's targets): downtime <= 10 ms; expected-downtime within
20 % or 5 ms of the downtime; plain precopy's total time <= 1.05x the bytes
that crossed over the link rate."""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import lmnetns  # noqa: E402
import lmtest  # noqa: E402
from lmtest import Guest  # noqa: E402

PROFILES = [
    ("plain", {}, {}),
    ("multifd 2", {"multifd": True}, {"multifd-channels": 2}),
    ("multifd 2 zstd", {"multifd": True}, {"multifd-channels": 2, "multifd-compression": "zstd"}),
]
TBF_LATENCY = "50ms"
FAILURES = (lmtest.TestFailure, lmtest.QMPError, lmtest.QMPTimeout, OSError,
            lmnetns.NetnsError)

RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(30)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.settimeout(30)
n = 0; t0 = None; buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    if t0 is None:
        t0 = time.monotonic()
    n += k
print(n, time.monotonic() - t0, flush=True)
"""

SENDER = r"""
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
data = os.urandom(1 << 20); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(data)
c.close()
"""


def tbf_burst(rate_bps):
    """A bucket that holds ~4 ms of the rate (at least 256 KiB): the
    kernel's timer granularity must not cap the rate."""
    return max(256 << 10, rate_bps // 8 // 250)


def parse_rate(text):
    units = {"gbit": 10 ** 9, "mbit": 10 ** 6, "kbit": 10 ** 3}
    for u, f in units.items():
        if text.endswith(u):
            return int(float(text[:-len(u)]) * f)
    raise SystemExit("rate %r: use e.g. 1gbit, 10gbit, 500mbit" % text)


def shape(ns, rate):
    bps = parse_rate(rate)
    for end in ("a", "b"):
        lmnetns._ip("-n", ns.ns(end), "link", "set", "dev", ns.dev[end], "up")
        argv = ns.exec_prefix(end) + ["tc", "qdisc", "replace", "dev", ns.dev[end], "root", "tbf",
                                      "rate", rate, "burst", str(tbf_burst(bps)),
                                      "latency", TBF_LATENCY]
        subprocess.run(argv, check=True, timeout=lmnetns.COMMAND_TIMEOUT,
                       capture_output=True)


def link_rate(ns, seconds=3.0):
    """Bytes/s one TCP connection moves from a to b over the shaped veth."""
    rx = subprocess.Popen(ns.exec_prefix("b") + [sys.executable, "-c", RECEIVER, ns.b_addr],
                          stdout=subprocess.PIPE, text=True)
    try:
        port = rx.stdout.readline().strip()
        subprocess.run(ns.exec_prefix("a") + [sys.executable, "-c", SENDER, ns.b_addr, port,
                                              str(seconds)], check=True, timeout=seconds + 30)
        n, dt = rx.stdout.readline().split()
        rx.wait(timeout=30)
        return int(n) / float(dt)
    finally:
        lmtest.stop_pid(rx, grace=1)


def migrate_once(tmp, ns, binary, mem, caps, params, tag):
    old = lmtest.LIVEMIG
    lmtest.LIVEMIG = binary
    src = dst = None
    try:
        src = Guest(tmp, "src-" + tag, mem=mem, fill="random", workload="idle",
                    extra=("--pattern", "text"), wrap=ns.exec_prefix("a"))
        dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="defer", workload="idle",
                    extra=("--pattern", "text"), wrap=ns.exec_prefix("b"))
        for g in (src, dst):
            lmtest.set_caps(g, dict(caps, events=True))
            lmtest.set_params(g, params)
        lmtest.set_params(src, {"max-bandwidth": 0, "downtime-limit": 300})
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:%s:0" % ns.b_addr})
        port = dst.query_migrate()["socket-address"][0]["port"]
        src.qmp.execute("migrate", {"uri": "tcp:%s:%s" % (ns.b_addr, port)})
        timeout = 60 + lmtest.parse_size(mem) / (50 << 20)
        info = lmtest.wait_status(src, "completed", timeout, fail_on=("failed", "cancelled"))
        lmtest.wait_status(dst, "completed", 30, fail_on=("failed", "cancelled"))
        v = lmtest.stop_and_verify(dst)
        return {"total": info.get("total-time"), "downtime": info.get("downtime"),
                "downtime_us": info.get("x-downtime-us"),
                "expected": info.get("expected-downtime"),
                "bytes": info.get("ram", {}).get("transferred"),
                "queued": info.get("x-switchover-queued-bytes"),
                "verified": v.get("pages")}
    finally:
        for g in (src, dst):
            if g:
                g.stop()
        lmtest.LIVEMIG = old


def judge(r, link_bps, plain):
    notes = []
    dt = r["downtime"]
    notes.append("downtime %s" % ("PASS" if dt <= 10 else "MISS"))
    exp = r["expected"]
    if exp is not None:
        ok = abs(exp - dt) <= max(5, 0.2 * dt)
        notes.append("prediction %s" % ("PASS" if ok else "MISS"))
    if plain:
        ideal_ms = r["bytes"] / link_bps * 1000
        notes.append("total/ideal %.3f %s" % (r["total"] / ideal_ms,
                                              "PASS" if r["total"] <= 1.05 * ideal_ms else "MISS"))
    return ", ".join(notes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--livemig", default=lmtest.LIVEMIG)
    ap.add_argument("--baseline", help="another livemig binary, run interleaved")
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--rates", default="1gbit,10gbit")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    why = lmnetns.unavailable()
    if why:
        raise SystemExit("link_bench: %s" % why)
    binaries = [("livemig", os.path.abspath(a.livemig))]
    if a.baseline:
        binaries.append(("baseline", os.path.abspath(a.baseline)))
    tmp = tempfile.mkdtemp(prefix="lm-link-")
    print("# link bench: %s guest, idle, --fill random --pattern text; load %s" %
          (a.mem, open("/proc/loadavg").read().split()[:3]))
    for rate in a.rates.split(","):
        ns = lmnetns.NetNS()
        try:
            shape(ns, rate)
            link = link_rate(ns)
            print("\n## %s (tbf): one TCP connection a->b moves %.1f MB/s (%.3f Gbit/s)" %
                  (rate, link / 1e6, link * 8 / 1e9))
            print("| binary | profile | total ms | downtime ms (µs) | expected ms | MB on wire "
                  "| switchover queued | judged |")
            print("|---|---|---|---|---|---|---|---|")
            for rep in range(a.reps):
                for name, caps, params in PROFILES:
                    for bname, binary in binaries:
                        tag = "%s-%d-%s" % (bname, rep, name.replace(" ", "_"))
                        try:
                            r = migrate_once(tmp, ns, binary, a.mem, caps, params, tag)
                        except FAILURES as e:
                            print("| %s | %s | failed: %s |" % (bname, name, e))
                            continue
                        print("| %s | %s | %d | %d (%d) | %s | %.1f | %s | %s |" %
                              (bname, name, r["total"], r["downtime"], r["downtime_us"] or 0,
                               r["expected"], r["bytes"] / 1e6, r["queued"],
                               judge(r, link, name == "plain")), flush=True)
        finally:
            ns.close()


if __name__ == "__main__":
    main()
