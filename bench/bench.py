#!/usr/bin/env python3
"""livemig benchmark: figures measured against this machine's own limits in
the same run (DESIGN §9).  See docs/benchmarks.md for what each figure means
and the targets.

    python3 bench/bench.py --livemig PATH [--quick] [--json OUT] [--reps N]

(a) limits: raw loopback TCP throughput between two processes moving a
    1 GiB region, and the zero-page check speed (bench/netbw.c, compiled
    here with cc -O2, median of several repetitions);
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
    as fast as it can, which precopy does not finish) with preempt: the
    downtime of the switch and the completion.

Every process is bounded and stopped by its pid (the harness of
tests/integration/lmtest.py).  Stdlib only.
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
from lmtest import Guest, TestFailure, dest_uri, kill_all_children, set_params  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20

# Targets (docs/benchmarks.md).
T_PC_P50_US = 100              # postcopy + preempt remote fault latency p50
T_PC_P99_US = 1000             # ... p99
T_PC_DOWNTIME_MS = 20          # postcopy switch downtime, hot workload
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


# ---------------------------------------------------------------- migrations


def postcopy_once(tmp, tag, mem, hot, preempt, timeout):
    """A guest migrated with postcopy switched on at once: a `hot`
    workload with a hot set of `hot` bytes, or (hot None) random pages
    written as fast as one thread can.  Returns both final query-migrates."""
    src = dst = None
    caps = {"events": True, "postcopy-ram": True, "postcopy-blocktime": True,
            "postcopy-preempt": preempt}
    wl = {"workload": "hot", "hot_size": hot} if hot else {"workload": "random", "dirty_rate": "0"}
    try:
        src = Guest(tmp, "src-" + tag, mem=mem, fill="random", **wl)
        dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="defer", **wl)
        lmtest.set_caps(src, caps)
        lmtest.set_caps(dst, caps)
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        dst.incoming = "tcp:127.0.0.1:0"
        set_params(src, {"max-bandwidth": 0})
        time.sleep(1.2)  # the hot set is being written at full speed
        src.qmp.execute("migrate", {"uri": dest_uri(dst)})
        src.qmp.execute("migrate-start-postcopy")
        info = lmtest.wait_status(src, "completed", timeout,
                                  fail_on=("failed", "cancelled", "postcopy-paused"))
        dinfo = lmtest.wait_status(dst, "completed", 30,
                                   fail_on=("failed", "cancelled", "postcopy-paused"))
        v = lmtest.stop_and_verify(dst)
        return {"source": info, "destination": dinfo, "verify": v}
    finally:
        for g in (src, dst):
            if g is not None:
                g.stop()



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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--livemig", required=True, help="path of the livemig binary")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--reps", type=int, default=1,
                    help="repetitions of each migration (median reported; default 1)")
    args = ap.parse_args()

    livemig = os.path.abspath(args.livemig)
    if not os.access(livemig, os.X_OK):
        ap.error("--livemig %s is not an executable" % args.livemig)
    lmtest.LIVEMIG = livemig
    reps = max(1, min(args.reps, 9))

    if args.quick:
        lim_mib, lim_reps = 256, 3
        big, dirty_mem, comp_mem, pc_hot = "256M", "256M", "128M", "32M"
    else:
        lim_mib, lim_reps = 1024, 5
        big, dirty_mem, comp_mem, pc_hot = "2G", "1G", "512M", "64M"
    big_bytes = lmtest.parse_size(big)

    tmp = tempfile.mkdtemp(prefix="lmbench-", dir="/tmp")
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick,
               "livemig": livemig, "host": platform.node(), "kernel": platform.release(),
               "cpus": os.cpu_count(), "loadavg-start": os.getloadavg(), "runs": {}}
    t_start = time.monotonic()
    try:
        # (a) limits
        netbw = build_netbw(tmp)
        log("limits: raw loopback TCP, %d MiB x %d" % (lim_mib, lim_reps))
        tcp = run_netbw(netbw, "tcp", lim_mib, lim_reps, thp=False)
        log("limits: zero check, %d MiB x %d" % (lim_mib, lim_reps))
        zero = run_netbw(netbw, "zerocheck", lim_mib, lim_reps, thp=False)
        results["runs"]["netbw-tcp"] = tcp
        results["runs"]["netbw-zerocheck"] = zero
        tcp_bps = tcp["median"] * 1e9
        zero_bps = zero["median"] * 1e9

        # (b) + idle downtime: random-filled idle guest, unlimited bandwidth,
        # default downtime-limit.  The destination is preallocated
        # (--prealloc, QEMU's -mem-prealloc), as netbw's receiver region
        # is pre-faulted: the same job as the limit.
        runs_b = []
        for i in range(reps):
            log("(b) %s idle guest full of random data, run %d/%d" % (big, i + 1, reps))
            runs_b.append(migrate_once(tmp, "b%d" % i, big,
                                       {"workload": "idle", "fill": "random"},
                                       {"workload": "idle", "extra": ("--prealloc",)},
                                       {"max-bandwidth": 0}, timeout=120))
        results["runs"]["random-idle"] = runs_b
        # (b') the same into a cold destination started just before: its
        # pages are populated (kernel zeroing, on this VM paced by the host
        # backing fresh memory) while the stream arrives.
        runs_bc = []
        for i in range(reps):
            log("(b') %s idle random guest, cold destination, run %d/%d" % (big, i + 1, reps))
            runs_bc.append(migrate_once(tmp, "bc%d" % i, big,
                                        {"workload": "idle", "fill": "random"},
                                        {"workload": "idle"}, {"max-bandwidth": 0},
                                        timeout=120))
        results["runs"]["random-idle-cold"] = runs_bc

        # (c) all-zero guest (never touched).
        runs_c = []
        for i in range(reps):
            log("(c) %s all-zero guest, run %d/%d" % (big, i + 1, reps))
            runs_c.append(migrate_once(tmp, "c%d" % i, big, {"workload": "idle", "fill": "none"},
                                       {"workload": "idle"}, {"max-bandwidth": 0},
                                       timeout=120))
        results["runs"]["all-zero"] = runs_c

        # (d) 100 MB/s random workload.
        runs_d = []
        for i in range(reps):
            log("(d) %s guest, random workload at 100 MB/s, run %d/%d" % (dirty_mem, i + 1, reps))
            runs_d.append(migrate_once(tmp, "d%d" % i, dirty_mem,
                                       {"workload": "random", "dirty_rate": "100000000",
                                        "fill": "random", "threads": 1},
                                       {"workload": "random", "dirty_rate": "100000000"},
                                       {"max-bandwidth": 0}, timeout=180))
        results["runs"]["random-100MBps"] = runs_d

        # (e) multifd.
        log("limits: raw loopback TCP over 2 connections, %d MiB x %d" % (lim_mib, lim_reps))
        tcp2 = run_netbw(netbw, "tcp", lim_mib, lim_reps, thp=False, conns=2)
        results["runs"]["netbw-tcp-2conns"] = tcp2
        mfd = {"multifd": True}
        runs_mfd = []
        for i in range(reps):
            log("(e) %s idle random guest, multifd 2 channels, run %d/%d" % (big, i + 1, reps))
            runs_mfd.append(migrate_once(tmp, "e%d" % i, big,
                                       {"workload": "idle", "fill": "random"},
                                       {"workload": "idle", "extra": ("--prealloc",)},
                                       {"max-bandwidth": 0, "multifd-channels": 2},
                                       timeout=120, caps=mfd))
        results["runs"]["multifd-random-idle"] = runs_mfd
        runs_z = []
        for i in range(reps):
            log("(e) %s guest written with zeros, multifd 2 channels, run %d/%d" %
                (big, i + 1, reps))
            runs_z.append(migrate_once(tmp, "z%d" % i, big, {"workload": "idle", "fill": "zero"},
                                       {"workload": "idle"},
                                       {"max-bandwidth": 0, "multifd-channels": 2},
                                       timeout=120, caps=mfd))
        results["runs"]["multifd-zero-written"] = runs_z
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
        results["runs"]["multifd-compression"] = runs_c2
        # (f) postcopy fault latency, with its floor measured now.
        fl = build_faultlat(tmp)
        log("limits: userfaultfd round trip and 16 B -> 4 KiB TCP round trip")
        results["runs"]["faultlat-uffd"] = run_faultlat(fl, "uffd", 20000)
        results["runs"]["faultlat-pingpong"] = run_faultlat(fl, "pingpong", 20000)
        for name, hot, preempt in (("postcopy-preempt", None, True), ("postcopy", None, False),
                                   ("postcopy-hot", pc_hot, True)):
            runs_e = []
            for i in range(reps):
                log("(f) %s guest, %s, run %d/%d" % (dirty_mem, name, i + 1, reps))
                runs_e.append(postcopy_once(tmp, "%s%d" % (name, i), dirty_mem, hot, preempt,
                                            timeout=120))
            results["runs"][name] = runs_e
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
    fig["tcp-limit-Bps"] = tcp_bps
    fig["zerocheck-Bps"] = zero_bps
    fig["random-idle-transferred-Bps"] = median_of(runs_b, tput)
    fig["random-idle-ram-Bps"] = median_of(runs_b, ram_rate)
    fig["random-idle-total-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "total-time"))
    fig["random-idle-setup-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "setup-time"))
    fig["random-idle-transferred-ratio"] = fig["random-idle-transferred-Bps"] / tcp_bps
    fig["random-idle-ram-ratio"] = fig["random-idle-ram-Bps"] / tcp_bps
    fig["cold-transferred-Bps"] = median_of(runs_bc, tput)
    fig["cold-transferred-ratio"] = fig["cold-transferred-Bps"] / tcp_bps
    fig["cold-total-ms"] = median_of(runs_bc, lambda r: ms_of(src(r), "total-time"))
    fig["cold-downtime-ms"] = median_of(runs_bc, lambda r: ms_of(src(r), "downtime"))
    fig["idle-downtime-ms"] = median_of(runs_b, lambda r: ms_of(src(r), "downtime"))
    fig["idle-downtime-us"] = median_of(runs_b, lambda r: ms_of(src(r), "x-downtime-us"))
    fig["idle-expected-downtime-ms"] = median_of(runs_b, expected)
    fig["zero-total-s"] = median_of(runs_c, lambda r: ms_of(src(r), "total-time") / 1000.0)
    fig["zero-ideal-s"] = big_bytes / zero_bps
    fig["zero-ratio"] = fig["zero-ideal-s"] / fig["zero-total-s"] if fig["zero-total-s"] else None
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
    tcp2_bps = tcp2["median"] * 1e9
    fig["tcp2-limit-Bps"] = tcp2_bps
    fig["mfd-transferred-Bps"] = median_of(runs_mfd, tput)
    fig["mfd-ratio"] = fig["mfd-transferred-Bps"] / tcp2_bps
    fig["mfd-total-ms"] = median_of(runs_mfd, lambda r: ms_of(src(r), "total-time"))
    fig["mfd-downtime-ms"] = median_of(runs_mfd, lambda r: ms_of(src(r), "downtime"))
    fig["mfd-zero-total-s"] = median_of(runs_z, lambda r: ms_of(src(r), "total-time") / 1000.0)
    fig["mfd-zero-duplicate"] = median_of(runs_z, lambda r: src(r)["ram"]["duplicate"])
    comp_gb = lmtest.parse_size(comp_mem) / 1e9
    for method, runs in runs_c2.items():
        fig["comp-%s-total-s" % method] = median_of(
            runs, lambda r: ms_of(src(r), "total-time") / 1000.0)
        fig["comp-%s-wire-bytes" % method] = median_of(
            runs, lambda r: src(r)["ram"]["transferred"])
        fig["comp-%s-src-cpu-s-per-gb" % method] = median_of(
            runs, lambda r: r["src-cpu-s"] / comp_gb)
        fig["comp-%s-dst-cpu-s-per-gb" % method] = median_of(
            runs, lambda r: r["dst-cpu-s"] / comp_gb)
    fu, fp = results["runs"]["faultlat-uffd"], results["runs"]["faultlat-pingpong"]
    fig["floor-uffd-p50-us"], fig["floor-uffd-p99-us"] = fu["p50_us"], fu["p99_us"]
    fig["floor-tcp-p50-us"], fig["floor-tcp-p99-us"] = fp["p50_us"], fp["p99_us"]
    fig["floor-p50-us"] = fu["p50_us"] + fp["p50_us"]
    fig["floor-p99-us"] = fu["p99_us"] + fp["p99_us"]
    for name in ("postcopy-preempt", "postcopy", "postcopy-hot"):
        runs_e = results["runs"][name]

        def pcs(r):
            return r["destination"].get("x-postcopy", {})
        fig[name + "-p50-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-p50-us"))
        fig[name + "-p99-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-p99-us"))
        fig[name + "-max-us"] = median_of(runs_e, lambda r: pcs(r).get("latency-max-us"))
        fig[name + "-faults"] = median_of(runs_e, lambda r: pcs(r).get("latency-count"))
        fig[name + "-downtime-us"] = median_of(runs_e, lambda r: ms_of(src(r), "x-downtime-us"))
        fig[name + "-total-ms"] = median_of(runs_e, lambda r: ms_of(src(r), "total-time"))
        fig[name + "-postcopy-bytes"] = median_of(
            runs_e, lambda r: src(r)["ram"].get("postcopy-bytes"))
    results["figures"] = fig

    zero_target = T_ZERO_TOTAL_S * big_bytes / (2 * GIB)

    def close_to(measured, exp):
        if measured is None or exp is None:
            return False
        return abs(measured - exp) <= max(T_EXPECTED_ABS_MS, T_EXPECTED_REL * exp)

    verdicts = {
        "throughput": fig["random-idle-transferred-ratio"] >= T_THROUGHPUT_RATIO,
        "idle-downtime": fig["idle-downtime-ms"] is not None and
        fig["idle-downtime-ms"] <= T_IDLE_DOWNTIME_MS,
        "all-zero": fig["zero-total-s"] is not None and fig["zero-total-s"] <= zero_target,
        "dirty-downtime": fig["dirty-downtime-ms"] is not None and
        fig["dirty-downtime-ms"] <= fig["downtime-limit-ms"] and
        close_to(fig["dirty-downtime-ms"], fig["dirty-expected-downtime-ms"]),
        "postcopy-latency": fig["postcopy-preempt-p50-us"] is not None and
        fig["postcopy-preempt-p50-us"] <= T_PC_P50_US and
        fig["postcopy-preempt-p99-us"] <= T_PC_P99_US,
        "postcopy-downtime": fig["postcopy-hot-downtime-us"] is not None and
        fig["postcopy-hot-downtime-us"] <= T_PC_DOWNTIME_MS * 1000,
    }
    none_s = fig["comp-none-total-s"]
    verdicts["multifd-throughput"] = fig["mfd-ratio"] >= T_MFD_RATIO
    verdicts["multifd-zero"] = fig["mfd-zero-total-s"] <= T_MFD_ZERO_S * big_bytes / (2 * GIB)
    for method in ("zstd", "lz4"):
        verdicts["compression-" + method] = (
            fig["comp-%s-total-s" % method] * T_COMP_SPEEDUP <= none_s)
    results["verdicts"] = verdicts

    def v(name):
        return "PASS" if verdicts[name] else "MISS"

    size = big.replace("G", " GiB").replace("M", " MiB")
    pc_size = dirty_mem.replace("G", " GiB").replace("M", " MiB")

    def ratio(a, b):
        return a / b if a is not None and b else None
    rows = [
        ("raw loopback TCP, %d MiB regions" % lim_mib, fmt_rate(tcp_bps), "(limit)", "1.00",
         "", ""),
        ("zero-page check", fmt_rate(zero_bps), "(limit)", "1.00", "", ""),
        ("%s random idle: transferred/total-time" % size,
         fmt_rate(fig["random-idle-transferred-Bps"]), fmt_rate(tcp_bps),
         fmt_ratio(fig["random-idle-transferred-ratio"]),
         ">= %.2f" % T_THROUGHPUT_RATIO, v("throughput")),
        ("%s random idle: guest RAM/total-time" % size, fmt_rate(fig["random-idle-ram-Bps"]),
         fmt_rate(tcp_bps), fmt_ratio(fig["random-idle-ram-ratio"]), "", ""),
        ("%s random idle: total-time (setup)" % size,
         "%s (%s)" % (fmt_ms(fig["random-idle-total-ms"]), fmt_ms(fig["random-idle-setup-ms"])),
         "", "", "", ""),
        ("%s random idle, cold destination" % size,
         fmt_rate(fig["cold-transferred-Bps"]), fmt_rate(tcp_bps),
         fmt_ratio(fig["cold-transferred-ratio"]), "", ""),
        ("  total-time / downtime (cold destination)",
         "%s / %s" % (fmt_ms(fig["cold-total-ms"]), fmt_ms(fig["cold-downtime-ms"])),
         "", "", "", ""),
        ("%s all-zero: total-time" % size, fmt_s(fig["zero-total-s"]),
         "%s at zero-check speed" % fmt_s(fig["zero-ideal-s"]), fmt_ratio(fig["zero-ratio"]),
         "<= %.2f s" % zero_target, v("all-zero")),
        ("idle downtime (x-downtime-us)",
         "%s (%s us)" % (fmt_ms(fig["idle-downtime-ms"]), fig["idle-downtime-us"]),
         "limit 300 ms", fmt_ratio((fig["idle-downtime-ms"] or 0) / 300.0),
         "<= %d ms" % T_IDLE_DOWNTIME_MS, v("idle-downtime")),
        ("idle expected-downtime", fmt_ms(fig["idle-expected-downtime-ms"]), "", "", "", ""),
        ("%s 100 MB/s random: downtime (x-downtime-us)" % dirty_mem.replace("G", " GiB").replace(
            "M", " MiB"),
         "%s (%s us)" % (fmt_ms(fig["dirty-downtime-ms"]), fig["dirty-downtime-us"]),
         "limit 300 ms", fmt_ratio((fig["dirty-downtime-ms"] or 0) / 300.0),
         "<= limit, ~expected", v("dirty-downtime")),
        ("  expected-downtime (%s)" % ("final query-migrate" if fig["dirty-expected-from-final"]
                                       else "last active sample"),
         fmt_ms(fig["dirty-expected-downtime-ms"]), "", "", "within 20 %/5 ms", ""),
        ("  workload rate / total-time / passes",
         "%s / %s / %s" % (fmt_rate(fig["dirty-rate-Bps"]), fmt_ms(fig["dirty-total-ms"]),
                           fig["dirty-passes"]), "", "", "", ""),
        ("remote fault floor p50 (uffd + TCP 4K rtt)",
         "%.0f us (%.0f + %.0f)" % (fig["floor-p50-us"], fig["floor-uffd-p50-us"],
                                     fig["floor-tcp-p50-us"]), "(limit)", "1.00", "", ""),
        ("remote fault floor p99 (uffd + TCP 4K rtt)",
         "%.0f us (%.0f + %.0f)" % (fig["floor-p99-us"], fig["floor-uffd-p99-us"],
                                     fig["floor-tcp-p99-us"]), "(limit)", "1.00", "", ""),
        ("%s random, postcopy+preempt: fault p50 / p99" % pc_size,
         "%s / %s us" % (fig["postcopy-preempt-p50-us"], fig["postcopy-preempt-p99-us"]),
         "%.0f / %.0f us" % (fig["floor-p50-us"], fig["floor-p99-us"]),
         "%s / %s" % (fmt_ratio(ratio(fig["postcopy-preempt-p50-us"], fig["floor-p50-us"])),
                      fmt_ratio(ratio(fig["postcopy-preempt-p99-us"], fig["floor-p99-us"]))),
         "<= %d / %d us" % (T_PC_P50_US, T_PC_P99_US), v("postcopy-latency")),
        ("  max / faults / switch downtime (x-downtime-us)",
         "%s us / %s / %s us" % (fig["postcopy-preempt-max-us"], fig["postcopy-preempt-faults"],
                                 fig["postcopy-preempt-downtime-us"]), "", "", "", ""),
        ("%s random, postcopy without preempt: p50 / p99" % pc_size,
         "%s / %s us" % (fig["postcopy-p50-us"], fig["postcopy-p99-us"]),
         "%.0f / %.0f us" % (fig["floor-p50-us"], fig["floor-p99-us"]),
         "%s / %s" % (fmt_ratio(ratio(fig["postcopy-p50-us"], fig["floor-p50-us"])),
                      fmt_ratio(ratio(fig["postcopy-p99-us"], fig["floor-p99-us"]))), "", ""),
        ("  max / faults / switch downtime (x-downtime-us)",
         "%s us / %s / %s us" % (fig["postcopy-max-us"], fig["postcopy-faults"],
                                 fig["postcopy-downtime-us"]), "", "", "", ""),
        ("%s hot %s, postcopy+preempt: switch downtime" % (pc_size, pc_hot),
         "%s us" % fig["postcopy-hot-downtime-us"], "", "",
         "<= %d ms" % T_PC_DOWNTIME_MS, v("postcopy-downtime")),
        ("  total-time / fault p50 / p99 / faults",
         "%s / %s / %s us / %s" % (fmt_ms(fig["postcopy-hot-total-ms"]),
                                   fig["postcopy-hot-p50-us"], fig["postcopy-hot-p99-us"],
                                   fig["postcopy-hot-faults"]), "", "", "", ""),
    ]
    rows += [
        ("raw loopback TCP, 2 connections", fmt_rate(tcp2_bps), "(limit)", "1.00", "", ""),
        ("%s random idle, multifd 2 channels" % size, fmt_rate(fig["mfd-transferred-Bps"]),
         fmt_rate(tcp2_bps), fmt_ratio(fig["mfd-ratio"]), ">= %.2f" % T_MFD_RATIO,
         v("multifd-throughput")),
        ("  total-time / downtime", "%s / %s" % (fmt_ms(fig["mfd-total-ms"]),
                                               fmt_ms(fig["mfd-downtime-ms"])), "", "", "", ""),
        ("%s written with zeros, multifd 2: total" % size, fmt_s(fig["mfd-zero-total-s"]),
         "%s at zero-check speed" % fmt_s(fig["zero-ideal-s"]),
         fmt_ratio(fig["zero-ideal-s"] / fig["mfd-zero-total-s"]
                   if fig["mfd-zero-total-s"] else None),
         "<= %.2f s" % (T_MFD_ZERO_S * big_bytes / (2 * GIB)), v("multifd-zero")),
    ]
    for method in ("none", "zlib", "zstd", "lz4"):
        t_s = fig["comp-%s-total-s" % method]
        rows.append((
            "%s text pages @125 MB/s, %s" % (comp_mem.replace("M", " MiB"), method),
            "%s, %.0f MB on the wire" % (fmt_s(t_s), fig["comp-%s-wire-bytes" % method] / 1e6),
            "cpu s/GB src %.2f dst %.2f" % (fig["comp-%s-src-cpu-s-per-gb" % method],
                                            fig["comp-%s-dst-cpu-s-per-gb" % method]),
            fmt_ratio(none_s / t_s if t_s else None),
            ">= %.1fx faster" % T_COMP_SPEEDUP if method in ("zstd", "lz4") else "",
            v("compression-" + method) if method in ("zstd", "lz4") else ""))
    head = ("figure", "value", "limit", "ratio", "target", "verdict")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = "  ".join("%-*s" % (widths[i], head[i]) for i in range(len(head)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join("%-*s" % (widths[i], r[i]) for i in range(len(head))))
    print("load average: start %.2f, end %.2f (%d CPUs); %s; %s s" %
          (results["loadavg-start"][0], results["loadavg-end"][0], results["cpus"],
           results["date"], results["bench-seconds"]))
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
