"""Background snapshot: the guest's write rate during the snapshot as a share
of its rate before (issue 11 target: >= 50 %).

A guest of --mem (default 1 GiB, --fill random) runs the random workload at
--dirty-rate (default 100 MB/s, one thread) and is snapshotted
(background-snapshot on, max-bandwidth --max-bandwidth, default 0 =
unlimited) to a destination `livemig guest` on loopback TCP.  The rate
before is the guest's total-writes over --window seconds right before
`migrate`; the rate during is its total-writes from the source's
`active` (sampled at once) to `completed`, over that time.  The image is
verified on the destination (x-guest-verify, 0 bad pages, cpu ok) before
a figure is printed.

Usage:
  python3 bench/bgsnap_bench.py --livemig ./build/livemig [--mem 1G]
      [--dirty-rate 100M] [--max-bandwidth 0] [--reps 3] [--mem-backend anon|memfd]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import lmtest  # noqa: E402
from lmtest import Guest, parse_size, set_caps, set_params  # noqa: E402

TARGET = 0.5


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def writes(g):
    return g.stats()["total-writes"]


def once(tmp, rep, a):
    extra = ("--mem-backend", a.mem_backend)
    src = Guest(tmp, "src%d" % rep, mem=a.mem, fill="random", workload="random",
                dirty_rate=a.dirty_rate, seed=rep + 1, extra=extra)
    dst = Guest(tmp, "dst%d" % rep, mem=a.mem, incoming="tcp:127.0.0.1:0", workload="idle",
                extra=extra)
    try:
        set_caps(src, {"background-snapshot": True})
        set_params(src, {"max-bandwidth": a.max_bandwidth})
        # Rate before: the workload at its pace, well after the fill.
        time.sleep(1.0)
        w0, t0 = writes(src), time.monotonic()
        time.sleep(a.window)
        w1, t1 = writes(src), time.monotonic()
        before = (w1 - w0) / (t1 - t0)
        src.qmp.execute("migrate", {"uri": lmtest.dest_uri(dst)})
        while src.query_migrate().get("status") in ("none", "setup"):
            time.sleep(0.001)
        wa, ta = writes(src), time.monotonic()
        while True:
            st = src.query_migrate()
            if st.get("status") not in ("active",):
                break
            time.sleep(0.005)
        wc, tc = writes(src), time.monotonic()
        if st.get("status") != "completed":
            raise RuntimeError("snapshot ended %s: %s" % (st.get("status"), st.get("error-desc")))
        during = (wc - wa) / (tc - ta)
        lmtest.wait_status(dst, "completed", 30)
        dst.qmp.execute("stop")
        v = dst.verify()
        if not (v.get("ok") and v.get("bad-pages") == 0 and v["cpu"]["ok"]):
            raise RuntimeError("destination verify failed: %r" % v)
        res = {"before_pages_s": before, "during_pages_s": during, "share": during / before,
               "snapshot_s": tc - ta, "total_time_ms": st.get("total-time"),
               "downtime_ms": st.get("downtime"), "transferred": st["ram"]["transferred"]}
        log("rep %d: before %.0f pages/s (%.1f MB/s), during %.0f pages/s over %.2f s: %.0f %%; "
            "downtime %s ms" % (rep, before, before * 4096 / 1e6, during, tc - ta,
                                100 * during / before, st.get("downtime")))
        return res
    finally:
        src.stop()
        dst.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--livemig", default="./build/livemig")
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--dirty-rate", default="100M")
    ap.add_argument("--max-bandwidth", type=int, default=0)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem-backend", default="anon", choices=("anon", "memfd"))
    a = ap.parse_args()
    lmtest.LIVEMIG = os.path.abspath(a.livemig)
    parse_size(a.mem)
    tmp = tempfile.mkdtemp(prefix="lm-bgsnap-bench-", dir="/tmp")
    load0 = os.getloadavg()[0]
    runs = []
    try:
        for rep in range(a.reps):
            runs.append(once(tmp, rep, a))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    share = statistics.median(r["share"] for r in runs)
    before = statistics.median(r["before_pages_s"] for r in runs)
    during = statistics.median(r["during_pages_s"] for r in runs)
    snap = statistics.median(r["snapshot_s"] for r in runs)
    print("background snapshot, %s guest, random workload at %s/s, %s, max-bandwidth %s" %
          (a.mem, a.dirty_rate, a.mem_backend, a.max_bandwidth or "unlimited"))
    print("  write rate before     %8.1f MB/s (median of %d)" % (before * 4096 / 1e6, len(runs)))
    print("  write rate during     %8.1f MB/s (snapshot %.2f s)" % (during * 4096 / 1e6, snap))
    print("  share                 %8.0f %%   target >= %.0f %%  %s" %
          (100 * share, 100 * TARGET, "PASS" if share >= TARGET else "MISS"))
    print("  runs: %s" % ", ".join("%.0f %%" % (100 * r["share"]) for r in runs))
    print("  downtime (pause for device state + write-protect): %s ms" %
          " / ".join(str(r["downtime_ms"]) for r in runs))
    print("  load average: start %.2f, end %.2f (%d CPUs)" % (load0, os.getloadavg()[0],
                                                             os.cpu_count()))


if __name__ == "__main__":
    main()
