"""The postcopy recovery figures of bench.py (issue 10; group "recovery").

(g) recovery, every migration through tests/integration/lmproxy.py (the
    fault-injection proxy, one thread of this process, between the sides):
    - a 4 GiB guest (--fill random, --workload random --dirty-rate 32M on
      both sides, destination --prealloc) switched to postcopy at once,
      migrated five times in the same run: once without a fault as a
      warm-up (not judged: the first large migration of a run is the slow
      one, fresh memory on both sides), then twice without a fault and
      twice with ten cuts, alternating (no cut, cuts, no cut, cuts), so
      load that comes and goes hits both kinds alike.  A cut is an RST on
      every channel, the n-th injected when the source's postcopy-bytes
      passed n/11 of guest RAM and the destination still owed pages, each
      recovered at once (migrate-recover to a new port on the
      destination, a new proxy, migrate resume=true on the source).  Total
      time is the source's total-time; the time spent paused is, per cut,
      from the source's postcopy-paused event to its postcopy-active event
      (the events' own timestamps); judged: the mean of (total - paused)
      over the runs with cuts <= 1.2x the mean total of the runs without.
    - the recovery time of those twenty recoveries, on the events' own
      timestamps (one host, one clock): from the destination's
      postcopy-recover (set once the new connection is accepted and the
      resume HELLO read, src/core/recover.c) to the later of both sides'
      postcopy-active (the received bitmaps applied, the resume
      acknowledged): the median judged against 50 ms, the max shown; the
      source's postcopy-recover-setup -> postcopy-active beside it.
      Limit: the bitmaps (4 GiB / 4 KiB pages / 8 = 128 KiB) at raw TCP
      speed plus a loopback round trip (faultlat pingpong), both measured
      in this run.
    - detection of a black hole (the proxy stops forwarding, sockets stay
      open) with x-postcopy-timeout-ms at its default (10 s) and at 1 s on
      both sides: a 256 MiB guest in postcopy with its push held
      (max-postcopy-bandwidth 256 KB/s), from the black hole to each side's
      postcopy-paused event; judged: the later side <= timeout + 1 s.

Every migration is verified on the destination (x-guest-verify); a run that
fails is recorded with its error, not fatal."""

import statistics
import sys
import time

import lmproxy
import lmtest
from lmtest import Guest, set_caps, set_params

T_RECOVERY_MS = 50              # accepted -> postcopy-active, 4 GiB guest
T_CUTS_RATIO = 1.2              # (total - paused) / total without cuts
T_DETECT_SLACK_S = 1.0          # black hole paused within timeout + 1 s
CUTS = 10
PAIRS = 2                       # runs without and with cuts, alternating
HOLD = 256 * 1000
DEFAULT_TIMEOUT_MS = 10000      # include/livemig.h LM_POSTCOPY_TIMEOUT_DEFAULT_MS
SHORT_TIMEOUT_MS = 1000
FAILURES = (lmtest.TestFailure, lmtest.QMPError, lmtest.QMPTimeout, OSError, RuntimeError)


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def Proxy(target, lifetime):
    """A proxy in front of `target` (lmproxy sets TCP_NODELAY on its
    sockets, as the engine does on its own)."""
    return lmproxy.Proxy(target, lifetime=lifetime)


def ev_time(ev):
    ts = ev.get("timestamp", {})
    return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6


class Events:
    """The MIGRATION events of one guest, kept with their timestamps."""

    def __init__(self, g):
        self.g = g
        self.seen = []

    def poll(self):
        for ev in self.g.qmp.drain_events():
            if ev.get("event") == "MIGRATION":
                self.seen.append((ev["data"]["status"], ev_time(ev)))

    def wait(self, status, after, timeout=60):
        """The timestamp of the first `status` event at index >= after."""
        def found():
            self.poll()
            for st, ts in self.seen[after:]:
                if st == status:
                    return ts
            return None
        lmtest.wait_until(lambda: found() is not None, timeout,
                          "%s: MIGRATION %s" % (self.g.name, status), poll=0.002)
        return found()


def pair(tmp, tag, mem, workload, timeout_ms, prealloc=True):
    caps = {"events": True, "postcopy-ram": True}
    src = Guest(tmp, "src-" + tag, mem=mem, fill="random", seed=1, **workload)
    dst = Guest(tmp, "dst-" + tag, mem=mem, incoming="defer", seed=2,
                extra=("--prealloc",) if prealloc else (), **workload)
    set_caps(src, caps)
    set_caps(dst, caps)
    dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    dst.incoming = "tcp:127.0.0.1:0"
    set_params(src, {"max-bandwidth": 0, "x-postcopy-timeout-ms": timeout_ms})
    set_params(dst, {"x-postcopy-timeout-ms": timeout_ms})
    return src, dst


def dest_port(dst):
    sa = dst.query_migrate().get("socket-address") or []
    if not sa or sa[0].get("type") != "inet":
        raise lmtest.TestFailure("destination socket-address %r" % sa)
    return sa[0]["port"]


def stop_all(gs, proxies):
    for g in gs:
        if g is not None:
            g.stop()
    for p in proxies:
        p.close()


def cuts_once(tmp, tag, mem, cuts, timeout):
    """One postcopy migration of `mem` switched at once, with `cuts` cuts
    spread over the push; returns the figures of the run or {"error"}."""
    src = dst = None
    proxies = []
    try:
        src, dst = pair(tmp, tag, mem, {"workload": "random", "dirty_rate": "32M"},
                        DEFAULT_TIMEOUT_MS)
        px = Proxy("tcp:127.0.0.1:%s" % dest_port(dst), lifetime=timeout)
        proxies.append(px)
        se, de = Events(src), Events(dst)
        total = lmtest.parse_size(mem)
        src.qmp.execute("migrate", {"uri": px.uri})
        src.qmp.execute("migrate-start-postcopy")
        recs = []
        t0 = time.monotonic()
        for n in range(1, cuts + 1):
            # The next cut once the push passed n/(cuts+1) of guest RAM.
            mark = total * n // (cuts + 1)
            lmtest.wait_until(lambda: src.query_migrate().get("ram", {}).get(
                "postcopy-bytes", 0) >= mark, timeout, "postcopy-bytes >= %d" % mark, poll=0.005)
            owed = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
            if src.query_migrate().get("status") != "postcopy-active" or not owed:
                raise lmtest.TestFailure("cut %d: nothing owed any more (%s)" %
                                         (n, src.query_migrate().get("status")))
            se.poll()
            de.poll()
            s0, d0 = len(se.seen), len(de.seen)
            px.cut()
            t_paused = se.wait("postcopy-paused", s0)
            de.wait("postcopy-paused", d0)
            lmtest.wait_status(dst, "postcopy-paused", 30)
            dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
            px = Proxy("tcp:127.0.0.1:%s" % dest_port(dst), lifetime=timeout)
            proxies.append(px)
            src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
            t_setup = se.wait("postcopy-recover-setup", s0)
            t_active = se.wait("postcopy-active", s0)
            d_recover = de.wait("postcopy-recover", d0)
            d_active = de.wait("postcopy-active", d0)
            log("%s: recovery %d: accepted -> dst active %.1f ms, -> src active %.1f ms" %
                (tag, n, (d_active - d_recover) * 1000, (t_active - d_recover) * 1000))
            recs.append({"owed-pages": owed, "paused-s": t_active - t_paused,
                         "src-setup-to-active-ms": (t_active - t_setup) * 1000,
                         "dst-recover-to-active-ms": (d_active - d_recover) * 1000,
                         # Where the source's time goes (one clock: one host).
                         "src-setup-to-dst-recover-ms": (d_recover - t_setup) * 1000,
                         "dst-active-to-src-active-ms": (t_active - d_active) * 1000})
        info = lmtest.wait_status(src, "completed", timeout,
                                  fail_on=("failed", "cancelled", "postcopy-paused"))
        lmtest.wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
        v = lmtest.stop_and_verify(dst)
        log("%s: completed, total-time %s ms, %d cuts, %.1f s" %
            (tag, info.get("total-time"), cuts, time.monotonic() - t0))
        return {"total-s": info["total-time"] / 1000.0, "cuts": recs, "verify": v,
                "postcopy-bytes": info.get("ram", {}).get("postcopy-bytes")}
    except FAILURES as e:
        log("%s: FAILED: %s: %s" % (tag, type(e).__name__, e))
        return {"error": "%s: %s" % (type(e).__name__, e),
                "logs": {g.name: g.log_tail(1500) for g in (src, dst) if g is not None}}
    finally:
        stop_all((src, dst), proxies)


def blackhole_once(tmp, tag, timeout_ms):
    """A 256 MiB guest in postcopy, its push held; a black hole; returns
    how long each side took to reach postcopy-paused."""
    src = dst = None
    proxies = []
    try:
        src, dst = pair(tmp, tag, "256M", {"workload": "random", "dirty_rate": "32M"},
                        timeout_ms, prealloc=False)
        set_params(src, {"max-postcopy-bandwidth": HOLD})
        px = Proxy("tcp:127.0.0.1:%s" % dest_port(dst), lifetime=120)
        proxies.append(px)
        se, de = Events(src), Events(dst)
        src.qmp.execute("migrate", {"uri": px.uri})
        lmtest.wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) >
                          4000000, 30, "4 MB of precopy sent")
        src.qmp.execute("migrate-start-postcopy")
        lmtest.wait_status(src, "postcopy-active", 30)
        lmtest.wait_status(dst, "postcopy-active", 30)
        se.poll()
        de.poll()
        s0, d0 = len(se.seen), len(de.seen)
        owed = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
        if not owed:
            raise lmtest.TestFailure("nothing owed at the black hole")
        t0 = time.time()
        px.blackhole()
        wait = timeout_ms / 1000.0 + 30
        s = se.wait("postcopy-paused", s0, wait) - t0
        d = de.wait("postcopy-paused", d0, wait) - t0
        log("%s: black hole, x-postcopy-timeout-ms %d: source paused after %.3f s, "
            "destination after %.3f s" % (tag, timeout_ms, s, d))
        return {"timeout-ms": timeout_ms, "src-s": s, "dst-s": d, "owed-pages": owed}
    except FAILURES as e:
        log("%s: FAILED: %s: %s" % (tag, type(e).__name__, e))
        return {"error": "%s: %s" % (type(e).__name__, e), "timeout-ms": timeout_ms,
                "logs": {g.name: g.log_tail(1500) for g in (src, dst) if g is not None}}
    finally:
        stop_all((src, dst), proxies)


def run(tmp, quick, pingpong):
    """Runs the group; pingpong() measures the loopback round trip
    (bench/faultlat.c) when the postcopy group did not.  A warm-up
    migration without cuts goes first and is not judged (the first large
    migration of a run is the slow one: fresh memory), then PAIRS runs
    without and with cuts, alternating, so that load coming and going hits
    both kinds alike."""
    mem = "512M" if quick else "4G"
    runs = {"recovery-mem": mem, "recovery-nocut": [], "recovery-cuts": []}
    log("(g) %s postcopy through the proxy, no cut: warm-up (not judged)" % mem)
    runs["recovery-warmup"] = cuts_once(tmp, "rec-warmup", mem, 0, 300)
    for i in range(1, PAIRS + 1):
        log("(g) %s postcopy through the proxy, no cut (%d/%d)" % (mem, i, PAIRS))
        runs["recovery-nocut"].append(cuts_once(tmp, "rec-nocut%d" % i, mem, 0, 300))
        log("(g) %s postcopy through the proxy, %d cuts (%d/%d)" % (mem, CUTS, i, PAIRS))
        runs["recovery-cuts"].append(cuts_once(tmp, "rec-cuts%d" % i, mem, CUTS, 300))
    for ms in (SHORT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS):
        log("(g) black hole detection, x-postcopy-timeout-ms %d" % ms)
        runs["recovery-blackhole-%d" % ms] = blackhole_once(tmp, "rec-bh%d" % ms, ms)
    runs["recovery-pingpong"] = pingpong()
    return runs


def figures(runs, tcp_bps, fig, verdicts):
    """Fills fig and verdicts; returns the rows of the table (bench.py's
    columns: figure, value, limit, ratio, target, verdict; a str is a free
    line)."""
    mem = runs["recovery-mem"]
    size = mem.replace("G", " GiB").replace("M", " MiB")
    nocuts, cuts = runs["recovery-nocut"], runs["recovery-cuts"]
    rows = []
    bad = [("no cut", r) for r in nocuts if "error" in r] + \
          [("cuts", r) for r in cuts if "error" in r]
    bitmap = lmtest.parse_size(mem) // 4096 // 8
    rtt_us = runs["recovery-pingpong"]["p50_us"]
    limit_ms = (bitmap / tcp_bps * 1000 if tcp_bps else None)
    limit_ms = None if limit_ms is None else limit_ms + rtt_us / 1000.0
    fig["recovery-limit-ms"] = limit_ms

    def secs(rs, key):
        return " / ".join("%.2f" % key(r) for r in rs) + " s"

    warm = runs.get("recovery-warmup") or {}
    if not bad:
        recs = [c for r in cuts for c in r["cuts"]]
        busy = [r["total-s"] - sum(c["paused-s"] for c in r["cuts"]) for r in cuts]
        nocut_mean = statistics.mean(r["total-s"] for r in nocuts)
        fig["recovery-nocut-total-s"] = [r["total-s"] for r in nocuts]
        fig["recovery-cuts-total-s"] = [r["total-s"] for r in cuts]
        fig["recovery-cuts-busy-s"] = busy
        fig["recovery-warmup-total-s"] = warm.get("total-s")
        # Judged: the mean of the runs with cuts (total - paused) against
        # the mean of the runs without, measured alternately.
        fig["recovery-cuts-ratio"] = statistics.mean(busy) / nocut_mean
        verdicts["recovery-cuts"] = fig["recovery-cuts-ratio"] <= T_CUTS_RATIO
        # Accepted (the destination's postcopy-recover) to both sides
        # postcopy-active: the later of the two, on the host's one clock.
        dms = [r["dst-recover-to-active-ms"] + max(0.0, r["dst-active-to-src-active-ms"])
               for r in recs]
        sms = [r["src-setup-to-active-ms"] for r in recs]
        fig["recovery-dst-p50-ms"], fig["recovery-dst-max-ms"] = statistics.median(dms), max(dms)
        fig["recovery-src-p50-ms"], fig["recovery-src-max-ms"] = statistics.median(sms), max(sms)
        verdicts["recovery-time"] = fig["recovery-dst-p50-ms"] <= T_RECOVERY_MS
        ideal = lmtest.parse_size(mem) / tcp_bps if tcp_bps else None
        rows += [
            ("%s postcopy via proxy, warm-up (not judged)" % size,
             "%.2f s" % warm["total-s"] if "total-s" in warm else
             "FAILED: %s" % warm.get("error"), "", "", "", ""),
            ("%s postcopy via proxy, no cut: total, mean" % size,
             "%.2f s (runs: %s)" % (nocut_mean, secs(nocuts, lambda r: r["total-s"])),
             "-" if ideal is None else "%.2f s at raw TCP" % ideal,
             "-" if ideal is None else "%.2f" % (nocut_mean / ideal), "", ""),
            ("%s postcopy via proxy, %d cuts: total - paused, mean" % (size, CUTS),
             "%.2f s (runs: %s)" % (statistics.mean(busy), " / ".join(
                 "%.2f - %.2f" % (r["total-s"], r["total-s"] - b) for r, b in zip(cuts, busy))),
             "%.2f s (no cut)" % nocut_mean, "%.2f" % fig["recovery-cuts-ratio"],
             "<= %.1fx" % T_CUTS_RATIO, "PASS" if verdicts["recovery-cuts"] else "MISS"),
            ("%s: accepted -> both active p50 / max (%d)" % (size, len(recs)),
             "%.1f / %.1f ms" % (fig["recovery-dst-p50-ms"], fig["recovery-dst-max-ms"]),
             "-" if limit_ms is None else "%.2f ms" % limit_ms,
             "-" if limit_ms is None else "%.1f" % (fig["recovery-dst-p50-ms"] / limit_ms),
             "<= %d ms" % T_RECOVERY_MS, "PASS" if verdicts["recovery-time"] else "MISS"),
            ("  recover-setup -> active (src) p50 / max",
             "%.1f / %.1f ms" % (fig["recovery-src-p50-ms"], fig["recovery-src-max-ms"]),
             "", "", "", ""),
        ]
    else:
        verdicts["recovery-cuts"] = verdicts["recovery-time"] = False
        for name, r in bad:
            rows.append("  %s postcopy via proxy, %s: FAILED: %s" % (size, name, r["error"]))
    for ms in (SHORT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS):
        r = runs["recovery-blackhole-%d" % ms]
        name = "recovery-blackhole-%d" % ms
        if "error" in r:
            verdicts[name] = False
            rows.append("  black hole, timeout %d ms: FAILED: %s" % (ms, r["error"]))
            continue
        worst = max(r["src-s"], r["dst-s"])
        fig[name + "-src-s"], fig[name + "-dst-s"] = r["src-s"], r["dst-s"]
        verdicts[name] = worst <= ms / 1000.0 + T_DETECT_SLACK_S
        rows.append(("black hole paused, src / dst (timeout %d ms)" % ms,
                     "%.2f / %.2f s" % (r["src-s"], r["dst-s"]), "%.2f s (timeout)" % (ms / 1e3),
                     "%.2f" % (worst / (ms / 1e3)), "<= timeout + %.0f s" % T_DETECT_SLACK_S,
                     "PASS" if verdicts[name] else "MISS"))
    return rows
