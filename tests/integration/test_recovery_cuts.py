"""Ten link faults during one postcopy migration of a 2 GiB guest with a
random workload (issue 10): each one pauses both sides, is recovered to a
new URI through a new proxy, and the migration still completes with every
page of the destination verified (x-guest-verify, 0 bad pages).

Postcopy is switched on once the first precopy pass is done (as
`livemig migrate --postcopy` does); the pages the workload dirtied during
that pass are then owed to the destination, and the background push is
held to a trickle (max-postcopy-bandwidth) so that pages are certainly
still owed at every fault: the owed count is checked before each one.
Faults 5 and 10 are black holes (nothing forwarded, nothing closed:
detected by x-postcopy-timeout-ms on both sides), the others are cuts
(RST).  Every wait is for a state, an event or a counter; the times are
logged, never asserted.

Not in .ci/run's TSan list (test_recovery.py runs these paths under
TSan with a smaller guest); a TSan build skips this file."""

import time

import lmtest
from lmtest import (Runner, check, check_eq, log, scaled, set_caps, set_params,
                    stop_and_verify, wait_status, wait_until)

R = Runner("recovery-cuts", per_test=300, budget=400)

MEM = "2G"
HOLD = 256 * 1000           # max-postcopy-bandwidth while faults are injected
FAST = 10 * 1000 * 1000 * 1000
TIMEOUT_MS = int(3000 * scaled(1))
CUTS = 10
BLACKHOLES = (5, 10)
ACTIVE = ("postcopy-active",)
NOT_PAUSED = ("failed", "completed", "cancelled")


def owed(g):
    return g.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)


def events_until(g, last, what):
    """The MIGRATION event statuses of `g` from now (the queue drained
    before) up to and including one whose status is `last`."""
    got = []

    def step():
        got.extend(g.qmp.migration_statuses())
        return last in got

    wait_until(step, 40, "%s: MIGRATION %s (%s)" % (g.name, last, what))
    return got


@R.test("ten cuts and black holes during one postcopy migration of a 2 GiB guest with a "
        "random workload: each pauses both sides and is recovered; completes, 0 bad pages")
def t_ten_cuts(t):
    caps = {"events": True, "postcopy-ram": True}
    wl = {"workload": "random", "dirty_rate": "64M"}
    t0 = time.monotonic()
    src = t.guest("src", mem=MEM, fill="random", seed=1, **wl)
    dst = t.dest("dst", mem=MEM, seed=2, defer=True, caps=caps, **wl)
    set_caps(src, caps)
    set_params(src, {"max-bandwidth": 0, "downtime-limit": 1, "max-postcopy-bandwidth": HOLD,
                     "x-postcopy-timeout-ms": TIMEOUT_MS})
    set_params(dst, {"x-postcopy-timeout-ms": TIMEOUT_MS})
    px = t.proxy(dst.listen_uri(), lifetime=300)
    log("guests ready in %.1f s" % (time.monotonic() - t0))

    t0 = time.monotonic()
    src.qmp.execute("migrate", {"uri": px.uri})
    # dirty-sync-count is 1 after setup, 2 once the first pass is done.
    wait_until(lambda: src.query_migrate().get("ram", {}).get("dirty-sync-count", 0) > 1, 120,
               "the first precopy pass", poll=0.01)
    src.qmp.execute("migrate-start-postcopy")
    wait_status(src, ACTIVE, 60, fail_on=NOT_PAUSED)
    wait_status(dst, ACTIVE, 60, fail_on=NOT_PAUSED)
    log("first pass and switch in %.1f s; %d pages owed" % (time.monotonic() - t0, owed(dst)))

    paused_s = 0.0
    for n in range(1, CUTS + 1):
        how = "blackhole" if n in BLACKHOLES else "cut"
        left = owed(dst)
        check(left > 0, "fault %d: nothing owed any more, the %s would test nothing", n, how)
        check_eq(src.query_migrate().get("status"), "postcopy-active", "source before fault %d" % n)
        for g in (src, dst):
            g.qmp.migration_statuses()  # drained: what follows is this fault's
        tf = time.monotonic()
        if how == "cut":
            px.cut()
        else:
            px.blackhole()
        infos = [wait_status(g, "postcopy-paused", 40, fail_on=NOT_PAUSED) for g in (src, dst)]
        for g in (src, dst):
            check_eq(events_until(g, "postcopy-paused", "fault %d" % n), ["postcopy-paused"],
                     "%s events of fault %d" % (g.name, n))
        tp = time.monotonic()
        for g, info in zip((src, dst), infos):
            desc = info.get("error-desc", "")
            check("postcopy paused" in desc, "fault %d: %s error-desc %r", n, g.name, desc)
            if how == "blackhole":
                check("no data from the" in desc and "x-postcopy-timeout-ms" in desc,
                      "fault %d: %s: a black hole is named as silence: %r", n, g.name, desc)
        check_eq(src.status(), "finish-migrate", "source run state when paused (fault %d)" % n)
        check_eq(dst.status(), "running", "destination run state when paused (fault %d)" % n)
        # Recovery to a new URI on the destination, through a new proxy.
        dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
        sa = dst.query_migrate().get("socket-address") or []
        check(sa and sa[0].get("type") == "inet", "destination socket-address %r", sa)
        px = t.proxy("tcp:127.0.0.1:%s" % sa[0].get("port"), lifetime=300)
        src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
        # The events in QEMU's order, each exactly once for this recovery.
        check_eq(events_until(src, "postcopy-active", "recovery %d" % n),
                 ["postcopy-recover-setup", "postcopy-recover", "postcopy-active"],
                 "source events of recovery %d" % n)
        check_eq(events_until(dst, "postcopy-active", "recovery %d" % n),
                 ["postcopy-recover", "postcopy-active"],
                 "destination events of recovery %d" % n)
        wait_status(src, ACTIVE, 30, fail_on=NOT_PAUSED)
        wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
        tr = time.monotonic()
        paused_s += tr - tf
        log("fault %d (%s, %d pages owed): both paused after %.2f s, active again %.2f s "
            "later" % (n, how, left, tp - tf, tr - tp))

    log("%d faults in %.1f s of postcopy; %d pages still owed" %
        (CUTS, time.monotonic() - t0, owed(dst)))
    tc = time.monotonic()
    set_params(src, {"max-postcopy-bandwidth": FAST})
    info = wait_status(src, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    log("completed %.1f s after the hold was lifted (total-time %s ms)" %
        (time.monotonic() - tc, info.get("total-time")))
    check(info.get("ram", {}).get("postcopy-requests", 0) > 0, "no page request served")
    v = stop_and_verify(dst)
    log("verify: %r" % (v,))


if __name__ == "__main__":
    if lmtest.SANITIZER == "thread":
        R.skip_all("a 2 GiB guest ten times recovered is too slow under TSan; test_recovery.py "
                   "covers these paths there")
    R.main()
