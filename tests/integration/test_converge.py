"""Auto-converge and dirty-limit (QEMU's capabilities, digest §3.8): a guest
that dirties memory faster than max-bandwidth lets the migration carry it
does not converge; with either capability the library asks the host
(`livemig guest`'s workload threads are its vCPUs) to throttle, by QEMU's
rule, and the migration completes with memory verified.  The decisions
are asserted: which throttle levels appeared (initial, then +increment,
capped), what the host was told, that the host slept for it, and that a
cancel lifts it.  Never how long anything took."""

from lmtest import (QMPError, Runner, check, check_eq, check_writes_increase, log,
                    migrate, set_caps, set_params, stop_and_verify, wait_status,
                    wait_until)

R = Runner("converge", per_test=120, budget=420)

MEM = "64M"
# 100 MB/s of random writes against 24 MB/s of link: without a throttle the
# dirty set never fits the threshold (24 MB/s x 300 ms ~ 7 MB; a round of
# the 64 MiB set takes seconds and the workload rewrites most of it).
RATE = "100M"
LINK = 24 * 1000 * 1000
AC = {"cpu-throttle-initial": 60, "cpu-throttle-increment": 20, "max-cpu-throttle": 99}


def start(t, caps, params, threads=2):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate=RATE, threads=threads, seed=5)
    dst = t.dest("dst", transport="tcp", mem=MEM, workload="idle")
    set_caps(src, dict(caps, events=True))
    set_params(src, dict(params, **{"max-bandwidth": LINK, "downtime-limit": 300}))
    check_writes_increase(src)
    migrate(src, dst)
    return src, dst


def watch(src, key, until):
    """Polls query-migrate until until(info) or a final status; returns the
    values of `key` seen (in order, without repeats) and the last info."""
    seen = []

    def step():
        info = src.query_migrate()
        v = info.get(key)
        if v is not None and (not seen or seen[-1] != v):
            seen.append(v)
        if info.get("status") in ("completed", "failed", "cancelled") or until(info, seen):
            return info
        return None

    info = wait_until(step, 90, "%s to settle" % key, poll=0.05)
    return seen, info


@R.test("auto-converge: the throttle rises by QEMU's rule until the migration completes")
def auto_converge(t):
    src, dst = start(t, {"auto-converge": True}, AC)
    seen, info = watch(src, "cpu-throttle-percentage", lambda i, s: False)
    log("cpu-throttle-percentage seen: %r; total-time %s ms, downtime %s ms" %
        (seen, info.get("total-time"), info.get("downtime")))
    check_eq(info.get("status"), "completed", "source status")
    check(seen and seen[0] == 60, "first throttle %r, expected cpu-throttle-initial 60", seen)
    check(all(b == min(a + 20, 99) for a, b in zip(seen, seen[1:])),
          "throttle steps %r: expected +20 each, capped at 99", seen)
    check("cpu-throttle-percentage" not in info, "throttle still reported after completion")
    st = src.stats()["throttle"]
    check(st["slept-ns"] > 0, "the workload never slept for the throttle: %r", st)
    check_eq(st["cpu-percent"], 0, "host throttle after completion")
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


@R.test("dirty-limit: the per-vCPU cap is set once, the host sleeps for it, completes")
def dirty_limit(t):
    src, dst = start(t, {"dirty-limit": True},
                     {"vcpu-dirty-limit": 4, "x-vcpu-dirty-limit-period": 200})
    seen, info = watch(src, "x-dirty-limit-mbps", lambda i, s: False)

    check_eq(info.get("status"), "completed", "source status")
    check_eq(seen, [4], "dirty limits seen")
    st = src.stats()["throttle"]
    log("dirty-limit: total-time %s ms, slept %.1f s in all" %
        (info.get("total-time"), st["slept-ns"] / 1e9))
    check(st["slept-ns"] > 0, "the workload never slept for the limit: %r", st)
    check_eq(st["dirty-limit-bps"], 0, "host limit after completion")
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


@R.test("dirty-limit: query-migrate reports the host's throttle time per round")
def dirty_limit_report(t):
    src, dst = start(t, {"dirty-limit": True}, {"vcpu-dirty-limit": 2})
    info = wait_until(lambda: (lambda i: i if i.get("dirty-limit-throttle-time-per-round", 0) > 0
                               or i.get("status") == "completed" else None)(src.query_migrate()),
                      60, "a throttle time per round")
    log("dirty-limit-throttle-time-per-round %s us" %
        info.get("dirty-limit-throttle-time-per-round"))
    if info.get("status") != "completed":
        check(0 < info["dirty-limit-throttle-time-per-round"] <= 1000 * 1000,
              "throttle time per round %r µs (period 1000 ms)", info)
    wait_status(src, "completed", 90)
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


@R.test("auto-converge: cancel lifts the throttle, the source keeps running")
def cancel_lifts(t):
    src, dst = start(t, {"auto-converge": True}, AC)
    seen, info = watch(src, "cpu-throttle-percentage", lambda i, s: bool(s))
    check_eq(info.get("status"), "active", "source status when throttled")
    check_eq(src.stats()["throttle"]["cpu-percent"], seen[-1], "host throttle vs query-migrate")
    src.qmp.execute("migrate_cancel")
    wait_status(src, "cancelled", 30)
    st = src.stats()["throttle"]
    check_eq(st["cpu-percent"], 0, "host throttle after cancel")
    check("cpu-throttle-percentage" not in src.query_migrate(), "throttle reported after cancel")
    check_eq(src.status(), "running", "source run state")
    check_writes_increase(src)
    # The source's memory is intact: verify it (stopped).
    stop_and_verify(src)


@R.test("refusals: conflicting capabilities, parameter ranges")
def refusals(t):
    g = t.guest("g", mem="16M")
    set_caps(g, {"auto-converge": True})
    try:
        set_caps(g, {"dirty-limit": True})
        check(False, "auto-converge + dirty-limit accepted")
    except QMPError as e:
        check("conflicts" in str(e), "error %s", e)
    set_caps(g, {"auto-converge": False})
    for name, bad in (("vcpu-dirty-limit", 0), ("x-vcpu-dirty-limit-period", 0),
                      ("x-vcpu-dirty-limit-period", 1001), ("cpu-throttle-initial", 100),
                      ("max-cpu-throttle", 0), ("throttle-trigger-threshold", 101)):
        try:
            set_params(g, {name: bad})
            check(False, "%s=%s accepted", name, bad)
        except QMPError as e:
            check(name in str(e), "%s=%s: error %s does not name it", name, bad, e)
    set_params(g, {"cpu-throttle-tailslow": True, "vcpu-dirty-limit": 16})
    p = g.qmp.execute("query-migrate-parameters")
    check_eq((p["cpu-throttle-tailslow"], p["vcpu-dirty-limit"],
              p["x-vcpu-dirty-limit-period"]), (True, 16, 1000), "parameters")


if __name__ == "__main__":
    R.main()
