"""XBZRLE on and off over a shaped link (issue 14 item 4: "keep it only if
it wins on some profile; measure and report").

    python3 bench/xbzrle_bench.py --livemig build/livemig [--mem 1G]
                                  [--rate 1gbit] [--reps 1] [--limit 90]

The link is bench/link_bench.py's: two network namespaces joined by a veth
pair shaped with tbf, measured in the same run (one TCP connection a->b).
Two workloads, each migrated with xbzrle off and on (max-bandwidth 0,
downtime-limit 300, xbzrle-cache-size = the guest's RAM):

  sparse  `--workload sparse --dirty-rate 256M`: every page rewritten in
          one 8-byte word, 65536 pages/s, faster than a 1 Gbit/s link can
          resend whole pages;
  random  `--workload random --dirty-rate 50M`: whole pages rewritten with
          new random data, below the link's rate.

Printed per run: total time, downtime, bytes on the wire, passes, and
XBZRLE's figures (pages as deltas, cache misses, overflows, QEMU's
last-period cache-miss-rate and encoding-rate, and the whole migration's
encoding rate: page bytes per delta byte).  A run that has not completed
after --limit seconds is cancelled and reported as "did not converge".
Every completed migration is verified on the destination."""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)

import link_bench  # noqa: E402
import lmnetns  # noqa: E402
import lmtest  # noqa: E402
from lmtest import Guest  # noqa: E402

WORKLOADS = [
    ("sparse", {"workload": "sparse", "dirty_rate": "256M"}),
    ("random", {"workload": "random", "dirty_rate": "50M"}),
]


def migrate_once(tmp, ns, mem, wl, xbzrle, limit, tag):
    src = dst = None
    try:
        src = Guest(tmp, "src-" + tag, mem=mem, fill="random", seed=7, wrap=ns.exec_prefix("a"),
                    **wl)
        dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="defer", workload="idle",
                    wrap=ns.exec_prefix("b"))
        lmtest.set_caps(src, {"events": True, "xbzrle": xbzrle})
        lmtest.set_params(src, {"max-bandwidth": 0, "downtime-limit": 300,
                                "xbzrle-cache-size": lmtest.parse_size(mem)})
        lmtest.check_writes_increase(src)
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:%s:0" % ns.b_addr})
        port = dst.query_migrate()["socket-address"][0]["port"]
        src.qmp.execute("migrate", {"uri": "tcp:%s:%s" % (ns.b_addr, port)})
        deadline = time.monotonic() + limit
        while True:
            info = src.query_migrate()
            st = info.get("status")
            if st in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                src.qmp.execute("migrate_cancel")
                lmtest.wait_status(src, ("cancelled", "failed"), 30,
                                   fail_on=("completed",))
                return {"converged": False, "info": info}
            time.sleep(0.1)
        if st != "completed":
            raise lmtest.TestFailure("migration %s: %r" % (st, info.get("error-desc")))
        lmtest.wait_status(dst, "completed", 30, fail_on=("failed", "cancelled"))
        v = lmtest.stop_and_verify(dst)
        return {"converged": True, "info": info, "verified": v.get("pages")}
    finally:
        for g in (src, dst):
            if g:
                g.stop()


def row(name, xbzrle, r, limit):
    info = r["info"]
    ram = info.get("ram", {})
    xb = info.get("xbzrle-cache") or {}
    mb = ram.get("transferred", 0) / 1e6
    if not r["converged"]:
        head = "| %s | %s | did not converge in %d s | — | %.0f MB so far | %s |" % (
            name, "on" if xbzrle else "off", limit, mb, ram.get("dirty-sync-count"))
    else:
        head = "| %s | %s | %d | %d | %.1f | %s |" % (
            name, "on" if xbzrle else "off", info.get("total-time"), info.get("downtime"), mb,
            ram.get("dirty-sync-count"))
    if not xbzrle:
        return head + " — | — | — | — | — |"
    pages, ovf = xb.get("pages", 0), xb.get("overflow", 0)
    delta_bytes = xb.get("bytes", 0) - ovf * 4096
    whole = pages * 4096 / delta_bytes if delta_bytes > 0 else 0
    return head + " %d / %d / %d | %.3f | %.1f | %.1f |" % (
        pages, xb.get("cache-miss", 0), ovf, xb.get("cache-miss-rate", 0),
        xb.get("encoding-rate", 0), whole)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--livemig", default=lmtest.LIVEMIG)
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--limit", type=int, default=90, help="seconds before a run is cancelled")
    a = ap.parse_args()
    why = lmnetns.unavailable()
    if why:
        raise SystemExit("xbzrle_bench: %s" % why)
    lmtest.LIVEMIG = os.path.abspath(a.livemig)
    tmp = tempfile.mkdtemp(prefix="lm-xbzrle-")
    ns = lmnetns.NetNS()
    try:
        link_bench.shape(ns, a.rate)
        link = link_bench.link_rate(ns)
        print("# xbzrle bench: %s guest, link %s (tbf) moves %.1f MB/s; load %s" %
              (a.mem, a.rate, link / 1e6, open("/proc/loadavg").read().split()[:3]))
        print("| workload | xbzrle | total ms | downtime ms | MB on wire | passes "
              "| delta pages / misses / overflows | cache-miss-rate | encoding-rate "
              "| page bytes per delta byte (whole run) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for rep in range(a.reps):
            for name, wl in WORKLOADS:
                for xbzrle in (False, True):
                    tag = "%d-%s-%s" % (rep, name, "on" if xbzrle else "off")
                    try:
                        r = migrate_once(tmp, ns, a.mem, wl, xbzrle, a.limit, tag)
                    except link_bench.FAILURES as e:
                        print("| %s | %s | failed: %s |" % (name, xbzrle, e), flush=True)
                        continue
                    print(row(name, xbzrle, r, a.limit), flush=True)
    finally:
        ns.close()


if __name__ == "__main__":
    main()
