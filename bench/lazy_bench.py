#!/usr/bin/env python3
"""Lazy restore (issue 11 item 5, capability x-lazy-restore): how soon the
restored guest runs, and how soon the whole image is in memory, against the
disk's raw O_DIRECT read of the same file measured in the same run.

    python3 bench/lazy_bench.py --livemig PATH [--dir DIR] [--mem 2G]
                                [--channels 4] [--no-direct] [--keep-cache]
                                [--json OUT]

(a) save: a stopped guest of --mem random data, `migrate` to
    file:DIR/snap.lm with mapped-ram and multifd (--channels), direct-io;
(b) raw: the saved file read with O_DIRECT by 1, 2 and 4 streams of 8 MiB
    transfers (bench/file_bench.py's reader); the best is the limit;
(c) lazy restore: a fresh `livemig guest --incoming defer` with mapped-ram,
    multifd, x-lazy-restore (direct-io unless --no-direct); the wall clock when
    migrate-incoming is sent, against the timestamps of the destination's
    RESUME event (the guest runs) and of its MIGRATION `completed` event
    (every page placed, userfaultfd unregistered); the guest is verified
    afterwards (x-guest-verify, 0 bad pages).  The page cache is dropped
    before (c) when the bench may (root), so that the restore reads the
    disk as the raw read did.

Targets: the guest runs <= 20 ms after migrate-incoming; the whole image is
placed within 1.2x the raw read time.  Every process is bounded and
stopped by its pid (tests/integration/lmtest.py).
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import lmtest  # noqa: E402
from file_bench import CHUNK, _raw  # noqa: E402
from lmtest import Guest, kill_all_children, set_caps, set_params, wait_status  # noqa: E402

MIB = 1 << 20


def log(msg):
    print(msg, flush=True)


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def ev_time(ev):
    ts = ev["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


def run(args):
    size = lmtest.parse_size(args.mem)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "lm-lazy-bench-%d.lm" % os.getpid())
    res = {"mem": size, "dir": args.dir, "channels": args.channels, "direct": args.direct}
    src = Guest(args.dir, "src", mem=args.mem, fill="random", seed=1,
                ready_timeout=120 + size / (50 * MIB))
    try:
        src.qmp.execute("stop")
        set_caps(src, {"mapped-ram": True, "multifd": True})
        set_params(src, {"direct-io": True, "max-bandwidth": 0,
                         "multifd-channels": args.channels})
        src.qmp.execute("migrate", {"uri": "file:" + path})
        info = wait_status(src, "completed", 600, poll=0.01)
        log("saved %d MiB in %.2f s" % (info["ram"]["total"] // MIB, info["total-time"] / 1000))
    finally:
        src.stop()
    try:
        fsize = os.path.getsize(path) // CHUNK * CHUNK
        raws = {}
        for streams in (1, 2, 4):
            raws[streams] = _raw(path, fsize, streams, False)
            log("raw O_DIRECT read of the file, %d stream(s) of 8 MiB: %.0f MB/s" %
                (streams, raws[streams] / 1e6))
        raw_rate = max(raws.values())
        res["raw_read"] = raw_rate
        res["raw_read_s"] = os.path.getsize(path) / raw_rate
        res["cache_dropped"] = not args.keep_cache and drop_caches()
        dst = Guest(args.dir, "dst", mem=args.mem, seed=2, incoming="defer")
        try:
            set_caps(dst, {"events": True, "mapped-ram": True, "multifd": True,
                           "x-lazy-restore": True, "postcopy-blocktime": True})
            set_params(dst, {"direct-io": args.direct, "multifd-channels": args.channels})
            t0 = time.time()
            dst.qmp.execute("migrate-incoming", {"uri": "file:" + path})
            run_ev = dst.qmp.wait_event("RESUME", timeout=60)
            done_ev = dst.qmp.wait_event("MIGRATION", lambda d: d.get("status") in
                                         ("completed", "failed"), timeout=600)
            info = dst.query_migrate()
            if info["status"] != "completed":
                raise lmtest.TestFailure("lazy restore failed: %r" % info)
            res["to_running_ms"] = (ev_time(run_ev) - t0) * 1000
            res["to_placed_s"] = ev_time(done_ev) - t0
            res["x-postcopy"] = info.get("x-postcopy", {})
            dst.qmp.execute("stop")
            v = dst.verify()
            if not (v.get("ok") and v.get("bad-pages") == 0):
                raise lmtest.TestFailure("restored guest does not verify: %r" % v)
        finally:
            dst.stop()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    res["placed_vs_raw"] = res["to_placed_s"] / res["raw_read_s"]
    log("")
    log("| figure | livemig | raw O_DIRECT read | ratio | target |")
    log("|---|---|---|---|---|")
    log("| lazy restore %s: migrate-incoming to guest running | %.1f ms | | | <= 20 ms |" %
        (args.mem, res["to_running_ms"]))
    log("| lazy restore %s, %d readers%s: to every page placed | %.2f s | %.2f s (%.0f MB/s) "
        "| %.2f | <= 1.20 |" %
        (args.mem, args.channels, ", direct-io" if args.direct else "", res["to_placed_s"],
         res["raw_read_s"], raw_rate / 1e6, res["placed_vs_raw"]))
    log("(page cache dropped before the restore: %s)" % res["cache_dropped"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--livemig", required=True)
    ap.add_argument("--dir", default=os.path.join(HERE, "..", "build", "bench-files"),
                    help="a directory on the real disk (O_DIRECT)")
    ap.add_argument("--mem", default="2G")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--no-direct", dest="direct", action="store_false",
                    help="buffered readers (default: O_DIRECT, direct-io on)")
    ap.add_argument("--keep-cache", action="store_true",
                    help="restore from the page cache (the file just read)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    lmtest.LIVEMIG = os.path.abspath(args.livemig)
    args.dir = os.path.abspath(args.dir)
    lmtest.become_subreaper()
    try:
        res = run(args)
    finally:
        kill_all_children()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
