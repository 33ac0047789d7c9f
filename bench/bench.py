#!/usr/bin/env python3
"""livemig benchmark: figures measured against this machine's own limits in
the same run (DESIGN §9).  See docs/benchmarks.md for what each figure means
and the targets.

    python3 bench/bench.py --livemig PATH [--quick] [--json OUT] [--reps N]
                           [--only GROUP,...] [--mem-backend anon|memfd]
                           [--charts DIR]

(a) limits: raw loopback TCP throughput between two processes moving a
    1 GiB region (THP on both sides, like the guests' RAM; the best of a
    few send/receive patterns, one of them the engine's own, so that the
    engine cannot beat its limit; with the precopy group measured again
    after its runs, the higher counts), and the zero-page check speed
    (bench/netbw.c, compiled here with cc -O2, median of several
    repetitions); and raw loopback TCP again while a `hot` guest (the
    workload of the hot postcopy figure) writes its hot set at full speed
    on the same cores: the link limit of that figure, whose destination
    runs such a workload while pages arrive;
(b) a 2 GiB idle guest full of random data migrated precopy over tcp
    loopback with max-bandwidth 0: transferred bytes / total-time and guest
    RAM / total-time, and their ratio to the TCP limit;
(c) an all-zero (never touched) 2 GiB guest: total time;
(d) downtime of an idle guest (the run of (b), default downtime-limit) and
    under a 100 MB/s random workload (1 GiB guest, --fill random), with
    expected-downtime from the final query-migrate beside it;
(e) multifd: the guest of (b) over 2 channels against raw TCP over 2
    connections; a 2 GiB guest whose every page was written with zeros;
    and at max-bandwidth 125 MB/s (a 1 Gbit/s link) a guest of compressible
    pages (--pattern text) with no compression, zlib, zstd and lz4, with the
    source's CPU time per GB of guest RAM;
(f) postcopy, switched on at once (so nearly every page is still at the
    source): a 1 GiB guest whose workload writes random pages as fast as
    it can, with and without postcopy-preempt: the destination's
    remote-fault latency (postcopy-blocktime: fault read to page placed,
    p50/p99/max) beside the machine's floor measured in the same run
    (bench/faultlat.c: a local userfaultfd round trip plus a 16 B -> 4 KiB
    loopback TCP round trip); and a `hot` workload (64 MiB hot set written
    as fast as it can, which precopy does not finish) with preempt, once
    with anonymous and once with memfd guest RAM: the downtime of the
    switch and the total time against guest RAM / the TCP limit beside a
    hot workload.  Every postcopy destination is preallocated (--prealloc);
    a postcopy run that fails is recorded with its error, not fatal.

(g) postcopy recovery (bench/recovery_bench.py): a 4 GiB postcopy through
    the fault-injection proxy with ten cuts against the same without a cut
    (total minus the time paused), the time from the new connection to
    postcopy-active, and the detection of a black hole at the default and a
    1 s x-postcopy-timeout-ms.

--only runs some figure groups (limits, precopy, multifd, compression,
postcopy, recovery); a figure whose limit was not measured in the run is not judged.

Every process is bounded and stopped by its pid (the harness of
tests/integration/lmtest.py).  Stdlib only, but for --charts (bench/charts.py,
matplotlib).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import lmtest  # noqa: E402
import recovery_bench  # noqa: E402 (bench/recovery_bench.py: group "recovery")
from lmtest import Guest, TestFailure, dest_uri, kill_all_children, set_params  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20

# Targets (docs/benchmarks.md).
T_PC_P50_US = 100              # postcopy + preempt remote fault latency p50
T_PC_P99_US = 1000             # ... p99
T_PC_DOWNTIME_MS = 20          # postcopy switch downtime, hot workload
T_PC_HOT_TOTAL_RATIO = 1.2     # ... total time <= 1.2x guest RAM / TCP beside a hot workload
T_THROUGHPUT_RATIO = 0.80      # 2 GiB random idle: >= 80 % of raw loopback TCP
T_IDLE_DOWNTIME_MS = 10        # idle downtime
T_ZERO_TOTAL_S = 0.3           # all-zero 2 GiB total time
T_EXPECTED_REL = 0.20          # downtime within 20 % ...
T_EXPECTED_ABS_MS = 5          # ... or 5 ms of expected-downtime
T_MFD_RATIO = 0.85             # 2 GiB random idle, 2 multifd channels: >= 85 % of 2-conn TCP
T_MFD_ZERO_S = 0.25            # 2 GiB written with zeros, multifd
T_COMP_SPEEDUP = 2.0           # zstd and lz4 at 125 MB/s: >= 2x faster than none
LINK_1GBIT = 125 * 1000 * 1000


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------ machine limits


def build_netbw(tmp):
    src = os.path.join(HERE, "netbw.c")
    out = os.path.join(tmp, "netbw")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-Wall", "-o", out, src, "-lpthread"], check=True, timeout=120)
    return out


def run_netbw(binary, mode, size_mib, reps, thp, conns=1):
    argv = [binary, mode, "--size", str(size_mib), "--reps", str(reps)]
    if thp:
        argv.append("--thp")
    if conns > 1:
        argv += ["--conns", str(conns)]
    p = subprocess.run(argv, capture_output=True, timeout=600, preexec_fn=lmtest._child_setup)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), p.stderr.decode(errors="replace")))
    return json.loads(p.stdout)


def build_faultlat(tmp):
    out = os.path.join(tmp, "faultlat")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", out,
                    os.path.join(HERE, "faultlat.c")], check=True, timeout=120)
    return out


def run_faultlat(binary, mode, n):
    argv = [binary, mode, "--pages" if mode == "uffd" else "--n", str(n)]
    p = subprocess.run(argv, capture_output=True, timeout=300, preexec_fn=lmtest._child_setup)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), p.stderr.decode(errors="replace")))
    return json.loads(p.stdout)


def netbw_beside_hot(tmp, binary, mem, hot, size_mib, reps):
    """Raw loopback TCP measured while a `livemig guest --workload hot`
    writes its hot set of `hot` bytes as fast as it can on this machine:
    the link limit of the hot postcopy figure, whose destination runs that
    workload (one core and memory bandwidth) while the pages arrive.
    Returns netbw's result with the guest's write rate over the run."""
    g = None
    try:
        g = Guest(tmp, "hot-limit", mem=mem, workload="hot", hot_size=hot)
        time.sleep(1.0)  # the hot set is being written at full speed
        w0, t0 = g.stats()["writes"], time.monotonic()
        res = run_netbw(binary, "tcp", size_mib, reps, thp=True)
        w1, t1 = g.stats()["writes"], time.monotonic()
        if not g.alive():
            raise TestFailure("hot guest exited during netbw: %s" % g.log_tail())
        res["guest-write-Bps"] = (w1 - w0) * 4096 / (t1 - t0)
        res["guest"] = {"mem": mem, "hot-size": hot}
        return res
    finally:
        if g is not None:
            g.stop()


# ---------------------------------------------------------------- migrations


# What a postcopy run may end with when it fails: the bench records the text
# and goes on (a backend the engine does not serve yet must not cost the rest
# of the figures).  WatchdogTimeout and KeyboardInterrupt still end the run.
RUN_FAILURES = (TestFailure, lmtest.QMPError, lmtest.QMPTimeout, OSError)


def postcopy_once(tmp, tag, mem, hot, preempt, timeout, backend="anon", after_pass=0):
    """A guest migrated with postcopy switched on at once (or, with
    after_pass N, once N precopy passes are done, as `livemig migrate
    --postcopy` does with its default after-pass:1): a `hot`
    workload with a hot set of `hot` bytes, or (hot None) random pages
    written as fast as one thread can.  Both guests map their RAM with
    --mem-backend `backend`; the destination is preallocated (--prealloc,
    QEMU's -mem-prealloc: docs/benchmarks.md).  Returns both final
    query-migrates, or on failure {"error": text, "query-migrate": each
    live side's state then, "logs": the tails of both guests' logs}."""
    src = dst = None
    caps = {"events": True, "postcopy-ram": True, "postcopy-blocktime": True,
            "postcopy-preempt": preempt}
    wl = {"workload": "hot", "hot_size": hot} if hot else {"workload": "random", "dirty_rate": "0"}
    be = ("--mem-backend", backend)
    failure = None
    try:
        src = Guest(tmp, "src-" + tag, mem=mem, fill="random", extra=be, **wl)
        dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="defer", extra=be + ("--prealloc",),
                    **wl)
        lmtest.set_caps(src, caps)
        lmtest.set_caps(dst, caps)
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        dst.incoming = "tcp:127.0.0.1:0"
        set_params(src, {"max-bandwidth": 0})
        time.sleep(1.2)  # the hot set is being written at full speed
        src.qmp.execute("migrate", {"uri": dest_uri(dst)})
        if after_pass:
            # dirty-sync-count is 1 after setup, N + 1 once pass N is done.
            lmtest.wait_until(lambda: src.query_migrate().get("ram", {}).get(
                "dirty-sync-count", 0) > after_pass or None, timeout,
                "precopy pass %d" % after_pass, poll=0.005)
        src.qmp.execute("migrate-start-postcopy")
        info = lmtest.wait_status(src, "completed", timeout,
                                  fail_on=("failed", "cancelled", "postcopy-paused"))
        dinfo = lmtest.wait_status(dst, "completed", 30,
                                   fail_on=("failed", "cancelled", "postcopy-paused"))
        v = lmtest.stop_and_verify(dst)
        return {"source": info, "destination": dinfo, "verify": v, "backend": backend}
    except RUN_FAILURES as e:
        failure = "%s: %s" % (type(e).__name__, e)
        # Where each side stood when it failed (bounded QMP; a dead guest
        # answers nothing).
        last = {}
        for g in (src, dst):
            try:
                if g is not None and g.alive():
                    last[g.name] = g.qmp.execute("query-migrate", timeout=5)
            except RUN_FAILURES:
                pass
    finally:
        for g in (src, dst):
            if g is not None:
                g.stop()
    log("%s: FAILED: %s" % (tag, failure))
    return {"error": failure, "backend": backend, "query-migrate": last,
            "logs": {g.name: g.log_tail(1500) for g in (src, dst) if g is not None}}


def cpu_seconds(pid):
    """user + system CPU time of a process so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def migrate_once(tmp, tag, mem, src_kw, dst_kw, params, timeout, caps=None):
    """One precopy migration over tcp loopback between two fresh guests.
    Returns the final query-migrate of both sides and a few extras (the
    CPU time each side spent during the migration)."""
    src = dst = None
    try:
        src = Guest(tmp, "src-" + tag, mem=mem, **src_kw)
        dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="tcp:127.0.0.1:0", **dst_kw)
        if caps:
            lmtest.set_caps(src, caps)
            lmtest.set_caps(dst, caps)
        set_params(src, params)
        src_stats = src.stats()
        if src_kw.get("workload", "idle") != "idle":
            time.sleep(1.2)  # let the rate sample window fill
            src_stats = src.stats()
        uri = dest_uri(dst)
        cpu0 = (cpu_seconds(src.pid), cpu_seconds(dst.pid))
        t0 = time.monotonic()
        src.qmp.execute("migrate", {"uri": uri})
        last_active = None
        while True:
            info = src.query_migrate()
            st = info.get("status")
            if st == "active":
                last_active = info
            if st in lmtest.FINAL_STATUSES:
                break
            if time.monotonic() - t0 > timeout:
                src.qmp.execute("migrate_cancel")
                raise TestFailure("%s: not completed within %d s (status %s)" % (tag, timeout, st))
            time.sleep(0.02)
        wall = time.monotonic() - t0
        cpu = (cpu_seconds(src.pid) - cpu0[0], cpu_seconds(dst.pid) - cpu0[1])
        if info.get("status") != "completed":
            raise TestFailure("%s: migration %s: %s" % (tag, info.get("status"),
                                                      info.get("error-desc")))
        dinfo = lmtest.wait_status(dst, "completed", 10)
        # Honest numbers only: the destination must hold the right memory.
        v = lmtest.stop_and_verify(dst)
        return {"source": info, "destination": dinfo, "last-active": last_active,
                "wall-s": wall, "verify": v, "src-stats": src_stats,
                "src-cpu-s": cpu[0], "dst-cpu-s": cpu[1]}
    finally:
        for g in (src, dst):
            if g is not None:
                g.stop()


def median_of(runs, fn):
    vals = [fn(r) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ms_of(info, key):
    v = info.get(key)
    return v if isinstance(v, (int, float)) else None


# --------------------------------------------------------------------- main


def fmt_rate(v):
    return "-" if v is None else "%.3f GB/s" % (v / 1e9)


def fmt_ms(v):
    return "-" if v is None else ("%.3f ms" % v if v < 10 else "%.1f ms" % v)


def fmt_s(v):
    return "-" if v is None else "%.3f s" % v


def fmt_ratio(v):
    return "-" if v is None else "%.2f" % v


def fmt_n(v):
    return "-" if v is None else str(v)


def fmt_tcp(res):
    """A raw TCP limit: netbw's best pattern's median, with the pattern
    named and the engine's own pattern beside it (how far the engine's
    socket use is from the best the machine does)."""
    text = fmt_rate(res["median"] * 1e9)
    pats = res.get("patterns", {})
    if "pattern" in res:
        text += " (%s" % res["pattern"]
        if res["pattern"] != "engine" and "engine" in pats:
            text += "; engine's pattern %.3f" % statistics.median(pats["engine"])
        text += ")"
    return text


# Figure groups for --only, in the order they run.  A group's own floors
# stay with it (2-connection TCP with multifd, the fault floor with
# postcopy); "limits" holds the limits that several groups are judged by.
# A figure whose limit was not measured in this run shows "-" for its ratio
# and its verdict: a limit from another run would not be this machine's
# limit now.
GROUPS = {
    "limits": "raw loopback TCP, zero-page check, raw TCP beside a hot workload",
    "precopy": "(b) random idle and cold destination, (c) all-zero, (d) 100 MB/s downtime",
    "multifd": "(e) TCP over 2 connections, 2 channels random idle and zero-written",
    "compression": "(e) compressible guest at 125 MB/s, none/zlib/zstd/lz4",
    "postcopy": "(f) fault floor, fault latency, hot workload with anon and memfd RAM",
    "recovery": "(g) postcopy recovery: ten cuts vs none, recovery time, black hole detection",
}


def parse_groups(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in GROUPS]
    if bad or not names:
        raise argparse.ArgumentTypeError("unknown figure group %s (groups: %s)" %
                                         (", ".join(bad) or "''", ", ".join(GROUPS)))
    return [g for g in GROUPS if g in names]


def ratio(a, b):
    return a / b if a is not None and b else None


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="figure groups (--only): " + "; ".join("%s = %s" % kv for kv in GROUPS.items()))
    ap.add_argument("--livemig", required=True, help="path of the livemig binary")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--reps", type=int, default=1,
                    help="repetitions of each migration (median reported; default 1)")
    ap.add_argument("--only", metavar="GROUP[,GROUP...]", type=parse_groups,
                    default=list(GROUPS),
                    help="run only these figure groups (default: all): " + ", ".join(GROUPS))
    ap.add_argument("--charts", metavar="DIR",
                    help="write SVG charts of the figures against their limits to DIR "
                    "(bench/charts.py; needs python3-matplotlib, which `make bench` installs)")
    ap.add_argument("--mem-backend", choices=("anon", "memfd"), default="anon",
                    help="guest RAM of the postcopy fault-latency runs, source and "
                    "destination (default anon); the hot postcopy figure runs both")
    args = ap.parse_args()

    livemig = os.path.abspath(args.livemig)
    if not os.access(livemig, os.X_OK):
        ap.error("--livemig %s is not an executable" % args.livemig)
    charts = None
    if args.charts:
        # Before minutes of measuring, not after.
        try:
            import charts  # noqa: F811 (bench/charts.py)
        except ImportError as e:
            ap.error("--charts: %s (install python3-matplotlib; `make bench` does)" % e)
    lmtest.LIVEMIG = livemig
    reps = max(1, min(args.reps, 9))
    want = set(args.only)

    if args.quick:
        lim_mib, lim_reps = 256, 3
        big, dirty_mem, comp_mem, pc_hot = "256M", "256M", "128M", "32M"
    else:
        lim_mib, lim_reps = 1024, 5
        big, dirty_mem, comp_mem, pc_hot = "2G", "1G", "512M", "64M"
    big_bytes = lmtest.parse_size(big)
    pc_mem = dirty_mem  # the postcopy guests' RAM
    pc_bytes = lmtest.parse_size(pc_mem)
    pc_mib = pc_bytes // MIB
    # The hot figure runs with both backends; its verdict is memfd's: shared
    # memory is what a postcopy destination should be placing into (QEMU's
    # memory-backend-memfd, pages placed with UFFDIO_CONTINUE, no copy).
    hot_backends = ("anon", "memfd")
    hot_judged = "memfd"

    tmp = tempfile.mkdtemp(prefix="lmbench-", dir="/tmp")
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick,
               "livemig": livemig, "host": platform.node(), "kernel": platform.release(),
               "cpus": os.cpu_count(), "loadavg-start": os.getloadavg(), "runs": {},
               "groups": args.only, "mem-backend": args.mem_backend}
    runs = results["runs"]
    t_start = time.monotonic()
    try:
        netbw = build_netbw(tmp) if want & {"limits", "multifd"} else None
        # (a) limits
        if "limits" in want:
            log("limits: raw loopback TCP, %d MiB x %d" % (lim_mib, lim_reps))
            # THP regions: the guests' RAM is THP-backed (tools/guest.c), and
            # the kernel's copies into 4 KiB regions are slower here
            # (netbw.c), so without it the engine could beat its limit.
            runs["netbw-tcp"] = run_netbw(netbw, "tcp", lim_mib, lim_reps, thp=True)
            log("limits: zero check, %d MiB x %d" % (lim_mib, lim_reps))
            runs["netbw-zerocheck"] = run_netbw(netbw, "zerocheck", lim_mib, lim_reps,
                                                thp=False)
            # The link limit of the hot postcopy figure: the same wire while
            # a hot workload like its destination's takes a core and memory
            # bandwidth (on 2 cores 1.35 GB/s against 2.1-2.6 GB/s quiet).
            log("limits: raw loopback TCP beside a hot %s workload, %d MiB x %d" %
                (pc_hot, pc_mib, lim_reps))
            runs["netbw-tcp-beside-hot"] = netbw_beside_hot(tmp, netbw, pc_mem, pc_hot, pc_mib,
                                                            lim_reps)

        if "precopy" in want:
            # (b) + idle downtime: random-filled idle guest, unlimited
            # bandwidth, default downtime-limit.  The destination is
            # preallocated (--prealloc, QEMU's -mem-prealloc), as netbw's
            # receiver region is pre-faulted: the same job as the limit.
            runs_b = []
            for i in range(reps):
                log("(b) %s idle guest full of random data, run %d/%d" % (big, i + 1, reps))
                runs_b.append(migrate_once(tmp, "b%d" % i, big,
                                           {"workload": "idle", "fill": "random"},
                                           {"workload": "idle", "extra": ("--prealloc",)},
                                           {"max-bandwidth": 0}, timeout=120))
            runs["random-idle"] = runs_b
            # (b') the same into a cold destination started just before: its
            # pages are populated (kernel zeroing, on this VM paced by the
            # host backing fresh memory) while the stream arrives.
            runs_bc = []
            for i in range(reps):
                log("(b') %s idle random guest, cold destination, run %d/%d" %
                    (big, i + 1, reps))
                runs_bc.append(migrate_once(tmp, "bc%d" % i, big,
                                            {"workload": "idle", "fill": "random"},
                                            {"workload": "idle"}, {"max-bandwidth": 0},
                                            timeout=120))
            runs["random-idle-cold"] = runs_bc

            # (c) all-zero guest (never touched).
            runs_c = []
            for i in range(reps):
                log("(c) %s all-zero guest, run %d/%d" % (big, i + 1, reps))
                runs_c.append(migrate_once(tmp, "c%d" % i, big,
                                           {"workload": "idle", "fill": "none"},
                                           {"workload": "idle"}, {"max-bandwidth": 0},
                                           timeout=120))
            runs["all-zero"] = runs_c

            # (d) 100 MB/s random workload.
            runs_d = []
            for i in range(reps):
                log("(d) %s guest, random workload at 100 MB/s, run %d/%d" %
                    (dirty_mem, i + 1, reps))
                runs_d.append(migrate_once(tmp, "d%d" % i, dirty_mem,
                                           {"workload": "random", "dirty_rate": "100000000",
                                            "fill": "random", "threads": 1},
                                           {"workload": "random", "dirty_rate": "100000000"},
                                           {"max-bandwidth": 0}, timeout=180))
            runs["random-100MBps"] = runs_d
            if "limits" in want:
                # The limit again: other work on these two cores comes and
                # goes within a run, and a limit measured while it ran is
                # not one for migrations that ran without it.  The higher
                # of the two is the limit (tcp_limit).
                log("limits: raw loopback TCP again, after the precopy runs, %d MiB x %d" %
                    (lim_mib, lim_reps))
                runs["netbw-tcp-after"] = run_netbw(netbw, "tcp", lim_mib, lim_reps, thp=True)

        mfd = {"multifd": True}
        if "multifd" in want:
            # (e) multifd.
            log("limits: raw loopback TCP over 2 connections, %d MiB x %d" %
                (lim_mib, lim_reps))
            runs["netbw-tcp-2conns"] = run_netbw(netbw, "tcp", lim_mib, lim_reps, thp=True,
                                                 conns=2)
            runs_mfd = []
            for i in range(reps):
                log("(e) %s idle random guest, multifd 2 channels, run %d/%d" %
                    (big, i + 1, reps))
                runs_mfd.append(migrate_once(tmp, "e%d" % i, big,
                                             {"workload": "idle", "fill": "random"},
                                             {"workload": "idle", "extra": ("--prealloc",)},
                                             {"max-bandwidth": 0, "multifd-channels": 2},
                                             timeout=120, caps=mfd))
            runs["multifd-random-idle"] = runs_mfd
            runs_z = []
            for i in range(reps):
                log("(e) %s guest written with zeros, multifd 2 channels, run %d/%d" %
                    (big, i + 1, reps))
                runs_z.append(migrate_once(tmp, "z%d" % i, big,
                                           {"workload": "idle", "fill": "zero"},
                                           {"workload": "idle"},
                                           {"max-bandwidth": 0, "multifd-channels": 2},
                                           timeout=120, caps=mfd))
            runs["multifd-zero-written"] = runs_z

        if "compression" in want:
            runs_c2 = {}
            for method in ("none", "zlib", "zstd", "lz4"):
                runs_c2[method] = []
                for i in range(reps):
                    log("(e) %s compressible guest at 125 MB/s, %s, run %d/%d" %
                        (comp_mem, method, i + 1, reps))
                    runs_c2[method].append(migrate_once(
                        tmp, "c%s%d" % (method, i), comp_mem,
                        {"workload": "idle", "fill": "random", "extra": ("--pattern", "text")},
                        {"workload": "idle", "extra": ("--pattern", "text", "--prealloc")},
                        {"max-bandwidth": LINK_1GBIT, "multifd-channels": 2,
                         "multifd-compression": method}, timeout=180, caps=mfd))
            runs["multifd-compression"] = runs_c2

        if "postcopy" in want:
            # (f) postcopy fault latency, with its floor measured now.  A
            # failing postcopy run is recorded, not fatal (postcopy_once).
            fl = build_faultlat(tmp)
            log("limits: userfaultfd round trip and 16 B -> 4 KiB TCP round trip")
            runs["faultlat-uffd"] = run_faultlat(fl, "uffd", 20000)
            runs["faultlat-pingpong"] = run_faultlat(fl, "pingpong", 20000)
            plan = [("postcopy-preempt", None, True, args.mem_backend, 0),
                    ("postcopy", None, False, args.mem_backend, 0)]
            plan += [("postcopy-hot-" + b, pc_hot, True, b, 0) for b in hot_backends]
            plan += [("postcopy-hot-pass1", pc_hot, True, "memfd", 1)]
            for name, hot, preempt, backend, after_pass in plan:
                runs_e = []
                for i in range(reps):
                    log("(f) %s guest, %s (%s), run %d/%d" %
                        (pc_mem, name, backend, i + 1, reps))
                    runs_e.append(postcopy_once(tmp, "%s%d" % (name, i), pc_mem, hot, preempt,
                                                timeout=120, backend=backend,
                                                after_pass=after_pass))
                runs[name] = runs_e

        if "recovery" in want:
            # (g) postcopy recovery through the fault-injection proxy.
            def pingpong():
                if "faultlat-pingpong" in runs:
                    return runs["faultlat-pingpong"]
                return run_faultlat(build_faultlat(tmp), "pingpong", 20000)
            runs.update(recovery_bench.run(tmp, args.quick, pingpong))
    finally:
        kill_all_children()
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg-end"] = os.getloadavg()
    results["bench-seconds"] = round(time.monotonic() - t_start, 1)

    # ------------------------------------------------------------ figures
    def src(r):
        return r["source"]

    def tput(r):
        tt = ms_of(src(r), "total-time")
        return src(r)["ram"]["transferred"] / (tt / 1000.0) if tt else None

    def ram_rate(r):
        tt = ms_of(src(r), "total-time")
        return src(r)["ram"]["total"] / (tt / 1000.0) if tt else None

    def expected(r):
        """expected-downtime of the final query-migrate; else the last one
        seen while active."""
        e = ms_of(src(r), "expected-downtime")
        if e is None and r["last-active"]:
            e = ms_of(r["last-active"], "expected-downtime")
        return e

    fig = {}
    tcp_bps = zero_bps = hot_tcp_bps = None
    tcp_res = None
    if "limits" in want:
        tcp_res = max((r for r in (runs["netbw-tcp"], runs.get("netbw-tcp-after")) if r),
                      key=lambda r: r["median"])
        tcp_bps = tcp_res["median"] * 1e9
        zero_bps = runs["netbw-zerocheck"]["median"] * 1e9
        hot_tcp_bps = runs["netbw-tcp-beside-hot"]["median"] * 1e9
        fig["tcp-limit-Bps"] = tcp_bps
        fig["zerocheck-Bps"] = zero_bps
        fig["tcp-beside-hot-limit-Bps"] = hot_tcp_bps
        fig["tcp-beside-hot-guest-write-Bps"] = runs["netbw-tcp-beside-hot"]["guest-write-Bps"]
    zero_target = T_ZERO_TOTAL_S * big_bytes / (2 * GIB)
    fig["zero-ideal-s"] = big_bytes / zero_bps if zero_bps else None

    def close_to(measured, exp):
        if measured is None or exp is None:
            return False
        return abs(measured - exp) <= max(T_EXPECTED_ABS_MS, T_EXPECTED_REL * exp)

    def judged(limit, ok):
        """A verdict that needs a limit of this run: None (not judged) without it."""
        return None if limit is None else bool(ok)

    verdicts = {}
    if "precopy" in want:
        runs_b, runs_bc = runs["random-idle"], runs["random-idle-cold"]
        runs_c, runs_d = runs["all-zero"], runs["random-100MBps"]
        fig["random-idle-transferred-Bps"] = median_of(runs_b, tput)
        fig["random-idle-ram-Bps"] = median_of(runs_b, ram_rate)
        fig["random-idle-total-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "total-time"))
        fig["random-idle-setup-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "setup-time"))
        fig["random-idle-transferred-ratio"] = ratio(fig["random-idle-transferred-Bps"], tcp_bps)
        fig["random-idle-ram-ratio"] = ratio(fig["random-idle-ram-Bps"], tcp_bps)
        fig["cold-transferred-Bps"] = median_of(runs_bc, tput)
        fig["cold-transferred-ratio"] = ratio(fig["cold-transferred-Bps"], tcp_bps)
        fig["cold-total-ms"] = median_of(runs_bc, lambda r: ms_of(src(r), "total-time"))
        fig["cold-downtime-ms"] = median_of(runs_bc, lambda r: ms_of(src(r), "downtime"))
        fig["idle-downtime-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "downtime"))
        fig["idle-downtime-us"] = median_of(runs_b, lambda r: ms_of(src(r), "x-downtime-us"))
        fig["idle-expected-downtime-ms"] = median_of(runs_b, expected)
        fig["zero-total-s"] = median_of(runs_c, lambda r: ms_of(src(r), "total-time") / 1000.0)
        fig["zero-ratio"] = ratio(fig["zero-ideal-s"], fig["zero-total-s"])
        fig["zero-transferred"] = median_of(runs_c, lambda r: src(r)["ram"]["transferred"])
        fig["dirty-rate-Bps"] = median_of(runs_d, lambda r: r["src-stats"].get("rate"))
        fig["dirty-downtime-ms"] = median_of(runs_d, lambda r: ms_of(src(r), "downtime"))
        fig["dirty-downtime-us"] = median_of(runs_d, lambda r: ms_of(src(r), "x-downtime-us"))
        fig["dirty-expected-downtime-ms"] = median_of(runs_d, expected)
        fig["dirty-expected-from-final"] = all(ms_of(src(r), "expected-downtime") is not None
                                               for r in runs_d)
        fig["dirty-total-ms"] = median_of(runs_d, lambda r: ms_of(src(r), "total-time"))
        fig["dirty-passes"] = median_of(runs_d, lambda r: src(r)["ram"].get("dirty-sync-count"))
        fig["downtime-limit-ms"] = 300
        verdicts["throughput"] = judged(tcp_bps, fig["random-idle-transferred-ratio"] is not None
                                        and fig["random-idle-transferred-ratio"]
                                        >= T_THROUGHPUT_RATIO)
        verdicts["idle-downtime"] = (fig["idle-downtime-ms"] is not None and
                                     fig["idle-downtime-ms"] <= T_IDLE_DOWNTIME_MS)
        verdicts["all-zero"] = (fig["zero-total-s"] is not None and
                                fig["zero-total-s"] <= zero_target)
        verdicts["dirty-downtime"] = (
            fig["dirty-downtime-ms"] is not None and
            fig["dirty-downtime-ms"] <= fig["downtime-limit-ms"] and
            close_to(fig["dirty-downtime-ms"], fig["dirty-expected-downtime-ms"]))
    if "multifd" in want:
        runs_mfd, runs_z = runs["multifd-random-idle"], runs["multifd-zero-written"]
        tcp2_bps = runs["netbw-tcp-2conns"]["median"] * 1e9
        fig["tcp2-limit-Bps"] = tcp2_bps
        fig["mfd-transferred-Bps"] = median_of(runs_mfd, tput)
        fig["mfd-ratio"] = fig["mfd-transferred-Bps"] / tcp2_bps
        fig["mfd-total-ms"] = median_of(runs_mfd, lambda r: ms_of(src(r), "total-time"))
        fig["mfd-downtime-ms"] = median_of(runs_mfd, lambda r: ms_of(src(r), "downtime"))
        fig["mfd-zero-total-s"] = median_of(runs_z,
                                            lambda r: ms_of(src(r), "total-time") / 1000.0)
        fig["mfd-zero-duplicate"] = median_of(runs_z, lambda r: src(r)["ram"]["duplicate"])
        verdicts["multifd-throughput"] = fig["mfd-ratio"] >= T_MFD_RATIO
        verdicts["multifd-zero"] = (fig["mfd-zero-total-s"] <=
                                    T_MFD_ZERO_S * big_bytes / (2 * GIB))
    if "compression" in want:
        comp_gb = lmtest.parse_size(comp_mem) / 1e9
        for method, runs_m in runs["multifd-compression"].items():
            fig["comp-%s-total-s" % method] = median_of(
                runs_m, lambda r: ms_of(src(r), "total-time") / 1000.0)
            fig["comp-%s-wire-bytes" % method] = median_of(
                runs_m, lambda r: src(r)["ram"]["transferred"])
            fig["comp-%s-src-cpu-s-per-gb" % method] = median_of(
                runs_m, lambda r: r["src-cpu-s"] / comp_gb)
            fig["comp-%s-dst-cpu-s-per-gb" % method] = median_of(
                runs_m, lambda r: r["dst-cpu-s"] / comp_gb)
        for method in ("zstd", "lz4"):
            verdicts["compression-" + method] = (
                fig["comp-%s-total-s" % method] * T_COMP_SPEEDUP <= fig["comp-none-total-s"])
    hot_names = ["postcopy-hot-" + b for b in hot_backends] + ["postcopy-hot-pass1"]
    reference = {}
    if "postcopy" in want:
        fu, fp = runs["faultlat-uffd"], runs["faultlat-pingpong"]
        fig["floor-uffd-p50-us"], fig["floor-uffd-p99-us"] = fu["p50_us"], fu["p99_us"]
        fig["floor-tcp-p50-us"], fig["floor-tcp-p99-us"] = fp["p50_us"], fp["p99_us"]
        fig["floor-p50-us"] = fu["p50_us"] + fp["p50_us"]
        fig["floor-p99-us"] = fu["p99_us"] + fp["p99_us"]
        # guest RAM / link limit: the least total time the link allows.
        fig["postcopy-hot-ideal-s"] = pc_bytes / hot_tcp_bps if hot_tcp_bps else None
        fig["postcopy-hot-quiet-ideal-s"] = pc_bytes / tcp_bps if tcp_bps else None
        for name in ["postcopy-preempt", "postcopy"] + hot_names:
            runs_e = [r for r in runs[name] if "error" not in r]

            def pcs(r):
                return r["destination"].get("x-postcopy", {})
            fig[name + "-failed"] = len(runs[name]) - len(runs_e)
            fig[name + "-error"] = next((r["error"] for r in runs[name] if "error" in r), None)
            fig[name + "-p50-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-p50-us"))
            fig[name + "-p99-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-p99-us"))
            fig[name + "-max-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-max-us"))
            fig[name + "-faults"] = median_of(runs_e, lambda r: pcs(r).get("latency-count"))
            fig[name + "-downtime-us"] = median_of(runs_e,
                                                   lambda r: ms_of(src(r), "x-downtime-us"))
            fig[name + "-pause-us"] = median_of(runs_e,
                                                lambda r: ms_of(src(r), "x-postcopy-pause-us"))
            fig[name + "-total-ms"] = median_of(runs_e, lambda r: ms_of(src(r), "total-time"))
            fig[name + "-postcopy-bytes"] = median_of(
                runs_e, lambda r: src(r)["ram"].get("postcopy-bytes"))
            fig[name + "-precopy-bytes"] = median_of(
                runs_e, lambda r: src(r)["ram"].get("precopy-bytes"))
            if name in hot_names:
                total_s = ratio(fig[name + "-total-ms"], 1000.0)
                fig[name + "-total-ratio"] = ratio(total_s, fig["postcopy-hot-ideal-s"])
                fig[name + "-quiet-ratio"] = ratio(total_s, fig["postcopy-hot-quiet-ideal-s"])
        pn = "postcopy-preempt"
        verdicts["postcopy-latency"] = (fig[pn + "-failed"] == 0 and
                                        fig[pn + "-p50-us"] is not None and
                                        fig[pn + "-p50-us"] <= T_PC_P50_US and
                                        fig[pn + "-p99-us"] <= T_PC_P99_US)
        # Hot workload: every run completes, the switch is short, and the
        # whole guest arrives within 1.2x of what the contended link allows.
        for b in hot_backends:
            n = "postcopy-hot-" + b
            down = (fig[n + "-failed"] == 0 and fig[n + "-downtime-us"] is not None and
                    fig[n + "-downtime-us"] <= T_PC_DOWNTIME_MS * 1000)
            total = judged(hot_tcp_bps, fig[n + "-failed"] == 0 and
                           fig[n + "-total-ratio"] is not None and
                           fig[n + "-total-ratio"] <= T_PC_HOT_TOTAL_RATIO)
            if b == hot_judged:
                verdicts["postcopy-downtime"], verdicts["postcopy-hot-total"] = down, total
            else:
                reference["postcopy-downtime-" + b] = down
                reference["postcopy-hot-total-" + b] = total
    # (g): its verdicts before the summary, its rows after the others.
    rec_rows = recovery_bench.figures(runs, tcp_bps, fig, verdicts) if "recovery" in want else []
    results["figures"] = fig
    results["verdicts"] = verdicts
    # Reported beside the judged ones, not counted: the hot figure with the
    # backend the verdict is not taken from.
    results["reference-verdicts"] = reference
    judged_v = [x for x in verdicts.values() if x is not None]
    results["summary"] = {"pass": sum(judged_v), "miss": len(judged_v) - sum(judged_v),
                          "not-judged": len(verdicts) - len(judged_v)}

    def word(x):
        return "-" if x is None else ("PASS" if x else "MISS")

    def v(name):
        return word(verdicts.get(name))

    def ref(name):
        return "(%s)" % word(reference.get(name))

    size = big.replace("G", " GiB").replace("M", " MiB")
    pc_size = pc_mem.replace("G", " GiB").replace("M", " MiB")

    def failed_row(name):
        """A free line under a figure some of whose runs failed."""
        n, err = fig[name + "-failed"], fig[name + "-error"]
        if not n:
            return []
        return ["  %d of %d runs failed, first: %s" % (n, len(runs[name]), err)]

    def pc_value(name, text):
        return "FAILED" if fig[name + "-failed"] == len(runs[name]) else text

    zero_ideal = ("-" if fig["zero-ideal-s"] is None
                  else "%s at zero-check speed" % fmt_s(fig["zero-ideal-s"]))
    rows = []
    if "limits" in want:
        rows += [
            ("raw loopback TCP, %d MiB regions" % lim_mib, fmt_tcp(tcp_res), "(limit)",
             "1.00", "", ""),
        ]
        if "netbw-tcp-after" in runs:
            rows.append(("  before / after the precopy runs (the higher counts)",
                         "%s / %s" % (fmt_rate(runs["netbw-tcp"]["median"] * 1e9),
                                      fmt_rate(runs["netbw-tcp-after"]["median"] * 1e9)),
                         "", "", "", ""))
        rows += [
            ("zero-page check", fmt_rate(zero_bps), "(limit)", "1.00", "", ""),
            ("raw loopback TCP beside a hot %s workload, %d MiB" % (pc_hot, pc_mib),
             "%s (guest writes %s)" % (fmt_rate(hot_tcp_bps),
                                       fmt_rate(fig["tcp-beside-hot-guest-write-Bps"])),
             "(limit)", "1.00", "", ""),
        ]
    if "precopy" in want:
        rows += [
            ("%s random idle: transferred/total-time" % size,
             fmt_rate(fig["random-idle-transferred-Bps"]), fmt_rate(tcp_bps),
             fmt_ratio(fig["random-idle-transferred-ratio"]),
             ">= %.2f" % T_THROUGHPUT_RATIO, v("throughput")),
            ("%s random idle: guest RAM/total-time" % size, fmt_rate(fig["random-idle-ram-Bps"]),
             fmt_rate(tcp_bps), fmt_ratio(fig["random-idle-ram-ratio"]), "", ""),
            ("%s random idle: total-time (setup)" % size,
             "%s (%s)" % (fmt_ms(fig["random-idle-total-ms"]),
                          fmt_ms(fig["random-idle-setup-ms"])),
             "", "", "", ""),
            ("%s random idle, cold destination" % size,
             fmt_rate(fig["cold-transferred-Bps"]), fmt_rate(tcp_bps),
             fmt_ratio(fig["cold-transferred-ratio"]), "", ""),
            ("  total-time / downtime (cold destination)",
             "%s / %s" % (fmt_ms(fig["cold-total-ms"]), fmt_ms(fig["cold-downtime-ms"])),
             "", "", "", ""),
            ("%s all-zero: total-time" % size, fmt_s(fig["zero-total-s"]),
             zero_ideal, fmt_ratio(fig["zero-ratio"]),
             "<= %.2f s" % zero_target, v("all-zero")),
            ("idle downtime (x-downtime-us)",
             "%s (%s us)" % (fmt_ms(fig["idle-downtime-ms"]), fig["idle-downtime-us"]),
             "limit 300 ms", fmt_ratio((fig["idle-downtime-ms"] or 0) / 300.0),
             "<= %d ms" % T_IDLE_DOWNTIME_MS, v("idle-downtime")),
            ("idle expected-downtime", fmt_ms(fig["idle-expected-downtime-ms"]), "", "", "", ""),
            ("%s 100 MB/s random: downtime (x-downtime-us)" % dirty_mem.replace(
                "G", " GiB").replace("M", " MiB"),
             "%s (%s us)" % (fmt_ms(fig["dirty-downtime-ms"]), fig["dirty-downtime-us"]),
             "limit 300 ms", fmt_ratio((fig["dirty-downtime-ms"] or 0) / 300.0),
             "<= limit, ~expected", v("dirty-downtime")),
            ("  expected-downtime (%s)" % ("final query-migrate"
                                           if fig["dirty-expected-from-final"]
                                           else "last active sample"),
             fmt_ms(fig["dirty-expected-downtime-ms"]), "", "", "within 20 %/5 ms", ""),
            ("  workload rate / total-time / passes",
             "%s / %s / %s" % (fmt_rate(fig["dirty-rate-Bps"]), fmt_ms(fig["dirty-total-ms"]),
                               fig["dirty-passes"]), "", "", "", ""),
        ]
    if "postcopy" in want:
        be = "" if args.mem_backend == "anon" else " (%s)" % args.mem_backend
        rows += [
            ("remote fault floor p50 (uffd + TCP 4K rtt)",
             "%.0f us (%.0f + %.0f)" % (fig["floor-p50-us"], fig["floor-uffd-p50-us"],
                                         fig["floor-tcp-p50-us"]), "(limit)", "1.00", "", ""),
            ("remote fault floor p99 (uffd + TCP 4K rtt)",
             "%.0f us (%.0f + %.0f)" % (fig["floor-p99-us"], fig["floor-uffd-p99-us"],
                                         fig["floor-tcp-p99-us"]), "(limit)", "1.00", "", ""),
            ("%s random, postcopy+preempt%s: fault p50 / p99" % (pc_size, be),
             pc_value("postcopy-preempt", "%s / %s us" % (fig["postcopy-preempt-p50-us"],
                                                          fig["postcopy-preempt-p99-us"])),
             "%.0f / %.0f us" % (fig["floor-p50-us"], fig["floor-p99-us"]),
             "%s / %s" % (fmt_ratio(ratio(fig["postcopy-preempt-p50-us"], fig["floor-p50-us"])),
                          fmt_ratio(ratio(fig["postcopy-preempt-p99-us"], fig["floor-p99-us"]))),
             "<= %d / %d us" % (T_PC_P50_US, T_PC_P99_US), v("postcopy-latency")),
        ]
        rows += failed_row("postcopy-preempt")
        rows += [
            ("  max / faults / switch downtime (x-downtime-us)",
             "%s us / %s / %s us" % (fig["postcopy-preempt-max-us"],
                                     fig["postcopy-preempt-faults"],
                                     fig["postcopy-preempt-downtime-us"]), "", "", "", ""),
            ("%s random, postcopy without preempt%s: p50 / p99" % (pc_size, be),
             pc_value("postcopy", "%s / %s us" % (fig["postcopy-p50-us"],
                                                  fig["postcopy-p99-us"])),
             "%.0f / %.0f us" % (fig["floor-p50-us"], fig["floor-p99-us"]),
             "%s / %s" % (fmt_ratio(ratio(fig["postcopy-p50-us"], fig["floor-p50-us"])),
                          fmt_ratio(ratio(fig["postcopy-p99-us"], fig["floor-p99-us"]))),
             "", ""),
        ]
        rows += failed_row("postcopy")
        rows += [
            ("  max / faults / switch downtime (x-downtime-us)",
             "%s us / %s / %s us" % (fig["postcopy-max-us"], fig["postcopy-faults"],
                                     fig["postcopy-downtime-us"]), "", "", "", ""),
        ]
        ideal, quiet = fig["postcopy-hot-ideal-s"], fig["postcopy-hot-quiet-ideal-s"]
        for b in hot_backends:
            n = "postcopy-hot-" + b
            counted = b == hot_judged
            rows.append(("%s hot %s, postcopy+preempt (%s): switch downtime" % (pc_size, pc_hot, b),
                         pc_value(n, "%s us" % fig[n + "-downtime-us"]), "", "",
                         "<= %d ms" % T_PC_DOWNTIME_MS,
                         v("postcopy-downtime") if counted else ref("postcopy-downtime-" + b)))
            rows += failed_row(n)
            rows += [
                ("  guest paused until the destination ran",
                 "%s us (x-postcopy-pause-us)" % fmt_n(fig[n + "-pause-us"]), "", "", "", ""),
                ("  total-time / fault p50 / p99 / faults",
                 "%s / %s / %s us / %s" % (fmt_ms(fig[n + "-total-ms"]), fmt_n(fig[n + "-p50-us"]),
                                           fmt_n(fig[n + "-p99-us"]), fmt_n(fig[n + "-faults"])),
                 "", "", "", ""),
                ("  total-time vs guest RAM / TCP beside hot",
                 fmt_ms(fig[n + "-total-ms"]),
                 "-" if ideal is None else "%s (%s / %s)" % (fmt_s(ideal), pc_size,
                                                             fmt_rate(hot_tcp_bps)),
                 fmt_ratio(fig[n + "-total-ratio"]), "<= %.1fx" % T_PC_HOT_TOTAL_RATIO,
                 v("postcopy-hot-total") if counted else ref("postcopy-hot-total-" + b)),
                ("  total-time vs guest RAM / quiet raw TCP",
                 fmt_ms(fig[n + "-total-ms"]),
                 "-" if quiet is None else "%s (%s / %s)" % (fmt_s(quiet), pc_size,
                                                             fmt_rate(tcp_bps)),
                 fmt_ratio(fig[n + "-quiet-ratio"]), "", ""),
            ]
        # The same hot guest switched as `livemig migrate --postcopy` does by
        # default, after the first precopy pass: reported, not judged.
        n = "postcopy-hot-pass1"
        rows.append(("%s hot %s, postcopy after pass 1 (memfd): total-time" % (pc_size, pc_hot),
                     pc_value(n, fmt_ms(fig[n + "-total-ms"])),
                     "-" if ideal is None else "%s (%s / %s)" % (fmt_s(ideal), pc_size,
                                                                 fmt_rate(hot_tcp_bps)),
                     fmt_ratio(fig[n + "-total-ratio"]), "", ""))
        rows += failed_row(n)
        rows += [
            ("  precopy / postcopy bytes, downtime / pause",
             "%s / %s MB, %s / %s us" % (
                 fmt_n(None if fig[n + "-precopy-bytes"] is None
                       else round(fig[n + "-precopy-bytes"] / 1e6)),
                 fmt_n(None if fig[n + "-postcopy-bytes"] is None
                       else round(fig[n + "-postcopy-bytes"] / 1e6)),
                 fmt_n(fig[n + "-downtime-us"]), fmt_n(fig[n + "-pause-us"])),
             "", "", "", ""),
        ]
    if "multifd" in want:
        rows += [
            ("raw loopback TCP, 2 connections", fmt_tcp(runs["netbw-tcp-2conns"]), "(limit)",
             "1.00", "", ""),
            ("%s random idle, multifd 2 channels" % size, fmt_rate(fig["mfd-transferred-Bps"]),
             fmt_rate(tcp2_bps), fmt_ratio(fig["mfd-ratio"]), ">= %.2f" % T_MFD_RATIO,
             v("multifd-throughput")),
            ("  total-time / downtime", "%s / %s" % (fmt_ms(fig["mfd-total-ms"]),
                                                   fmt_ms(fig["mfd-downtime-ms"])),
             "", "", "", ""),
            ("%s written with zeros, multifd 2: total" % size, fmt_s(fig["mfd-zero-total-s"]),
             zero_ideal,
             fmt_ratio(ratio(fig["zero-ideal-s"], fig["mfd-zero-total-s"])),
             "<= %.2f s" % (T_MFD_ZERO_S * big_bytes / (2 * GIB)), v("multifd-zero")),
        ]
    if "compression" in want:
        none_s = fig["comp-none-total-s"]
        for method in ("none", "zlib", "zstd", "lz4"):
            t_s = fig["comp-%s-total-s" % method]
            rows.append((
                "%s text pages @125 MB/s, %s" % (comp_mem.replace("M", " MiB"), method),
                "%s, %.0f MB on the wire" % (fmt_s(t_s), fig["comp-%s-wire-bytes" % method] / 1e6),
                "cpu s/GB src %.2f dst %.2f" % (fig["comp-%s-src-cpu-s-per-gb" % method],
                                                fig["comp-%s-dst-cpu-s-per-gb" % method]),
                fmt_ratio(ratio(none_s, t_s)),
                ">= %.1fx faster" % T_COMP_SPEEDUP if method in ("zstd", "lz4") else "",
                v("compression-" + method) if method in ("zstd", "lz4") else ""))
    rows += rec_rows
    # Free lines (a failure's text) are printed as they are, outside the columns.
    head = ("figure", "value", "limit", "ratio", "target", "verdict")
    cols = [r for r in rows if not isinstance(r, str)]
    widths = [max(len(str(r[i])) for r in cols + [head]) for i in range(len(head))]
    line = "  ".join("%-*s" % (widths[i], head[i]) for i in range(len(head)))
    print(line)
    print("-" * len(line))
    for r in rows:
        if isinstance(r, str):
            print(r)
        else:
            print("  ".join("%-*s" % (widths[i], r[i]) for i in range(len(head))))
    sm = results["summary"]
    print("verdicts: %d PASS, %d MISS%s (groups: %s)%s" %
          (sm["pass"], sm["miss"], ", %d not judged (no limit measured)" % sm["not-judged"]
           if sm["not-judged"] else "", ",".join(args.only),
           "; in parentheses: reported, not counted" if reference else ""))
    print("load average: start %.2f, end %.2f (%d CPUs); %s; %s s" %
          (results["loadavg-start"][0], results["loadavg-end"][0], results["cpus"],
           results["date"], results["bench-seconds"]))
    if charts:
        when = "%s, %d CPUs, load %.1f-%.1f" % (results["date"][:16], results["cpus"],
                                               results["loadavg-start"][0],
                                               results["loadavg-end"][0])
        sub = {"when": when, "big": size, "dirty_mem": dirty_mem.replace("G", " GiB").replace(
            "M", " MiB"), "pc_size": pc_size, "comp_mem": comp_mem.replace("M", " MiB"),
            "t_throughput": T_THROUGHPUT_RATIO, "t_mfd": T_MFD_RATIO,
            "t_pc_hot_total": T_PC_HOT_TOTAL_RATIO, "t_idle_downtime": T_IDLE_DOWNTIME_MS,
            "t_pc_downtime": T_PC_DOWNTIME_MS, "t_pc_p50": T_PC_P50_US,
            "t_pc_p99": T_PC_P99_US, "t_comp_speedup": T_COMP_SPEEDUP}
        results["charts"] = charts.write(args.charts, fig, sub)
        for path in results["charts"]:
            log("chart written to %s" % path)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
            f.write("\n")
        log("results written to %s" % args.json)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TestFailure, RuntimeError, subprocess.SubprocessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        kill_all_children()
        sys.exit(1)
