"""Postcopy recovery, first phase: a broken link is detected and both sides
pause; nothing is lost while paused.

Every migration here goes through lmproxy (one pair of sockets per
channel), which cuts the link (an RST, or EOF on a unix socket) or turns
it into a black hole (nothing forwarded, nothing closed) while postcopy
pushes in the background.  Both sides must reach postcopy-paused (with
the MIGRATION event), a black hole within x-postcopy-timeout-ms (set on
both sides); the destination's guest keeps running, its threads that
touch owed pages block (no page is filled with zero or stale data: the
owed count never drops while paused), nothing crashes, and each process
is stopped by pid.  Then migrate-pause on either side, and its refusal
outside postcopy.

Nothing waits for a time: the background push is held to a trickle
(max-postcopy-bandwidth) so that pages are still owed when the fault is
injected, and every wait is for a state, an event or a counter."""

import signal
import time

from lmtest import (Runner, check, check_eq, log, scaled, set_caps, set_params, wait_status,
                    wait_until, writes_increase)

R = Runner("recovery", per_test=90, budget=600)

MEM = "128M"
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}
HOLD = 256 * 1000
# The silence bound of these tests (both sides); sanitizer builds are slower.
TIMEOUT_MS = int(1000 * scaled(1))
ACTIVE = ("postcopy-active",)
NOT_PAUSED = ("failed", "completed", "cancelled")


def pair(t, transport="tcp", caps=None, workload="random", backend=None):
    """A source and a destination behind a proxy on `transport`, postcopy
    on, the push held; returns (src, dst, proxy)."""
    c = {"events": True, "postcopy-ram": True}
    c.update(caps or {})
    wl = {"workload": workload, "dirty_rate": "32M"}
    if backend:
        wl["extra"] = ("--mem-backend", backend)
    src = t.guest("src", mem=MEM, fill="random", seed=1, **wl)
    dst = t.dest("dst", transport=transport, mem=MEM, seed=2, defer=True, caps=c, **wl)
    set_caps(src, c)
    p = dict(SLOW, **{"max-postcopy-bandwidth": HOLD, "x-postcopy-timeout-ms": TIMEOUT_MS})
    set_params(src, p)
    set_params(dst, {"x-postcopy-timeout-ms": TIMEOUT_MS})
    px = t.proxy(dst.listen_uri(), listen=transport)
    return src, dst, px


def switch(src, dst, px):
    """Migrates through the proxy and switches to postcopy once some
    precopy went; returns when both sides are postcopy-active and the
    destination's workload faulted on an owed page."""
    src.qmp.execute("migrate", {"uri": px.uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    wait_status(src, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_until(lambda: dst.query_migrate().get("x-postcopy", {}).get("remote-faults", 0) > 0, 30,
               "a remote fault on the destination")
    check(px.pairs >= 1, "no channel through the proxy")


def paused_both(src, dst, what):
    """Both sides in postcopy-paused, with the event; returns their
    error-descs."""
    si = wait_status(src, "postcopy-paused", 40, fail_on=NOT_PAUSED)
    di = wait_status(dst, "postcopy-paused", 40, fail_on=NOT_PAUSED)
    for g in (src, dst):
        g.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-paused", timeout=10)
    log("%s: source: %s | destination: %s" % (what, si.get("error-desc"), di.get("error-desc")))
    return si, di


def check_held(src, dst):
    """While paused: the source keeps the guest stopped; the destination
    runs, owes pages, fills none of them, and its workload blocks on
    them."""
    check_eq(src.status(), "finish-migrate", "source run state when paused")
    check_eq(dst.status(), "running", "destination run state when paused")
    owed = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
    check(owed > 0, "paused with nothing owed")
    # The workload touches pages at random: every thread soon waits on an
    # owed page, and stays there (writes stop).
    wait_until(lambda: not writes_increase(dst, 1.0), 40, "the workload blocked on owed pages")
    after = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
    check_eq(after, owed, "owed pages while paused (none filled)")
    return owed


def fault(t, how, transport, caps=None, backend=None):
    src, dst, px = pair(t, transport, caps, backend=backend)
    switch(src, dst, px)
    t0 = time.monotonic()
    if how == "cut":
        px.cut()
    else:
        px.blackhole()
    si, di = paused_both(src, dst, "%s on %s" % (how, transport))
    # A measure for the log, not an assertion: both sides paused by then.
    log("both sides paused %.2f s after the %s (x-postcopy-timeout-ms %d)" %
        (time.monotonic() - t0, how, TIMEOUT_MS))
    for name, info in (("source", si), ("destination", di)):
        desc = info.get("error-desc", "")
        check("postcopy paused" in desc, "%s error-desc %r", name, desc)
        if how == "blackhole":
            check("no data from the" in desc and "x-postcopy-timeout-ms" in desc,
                  "%s: a black hole is named as silence: %r", name, desc)
    check_held(src, dst)
    e = src.qmp.expect_error("migrate_cancel")
    check("Postcopy" in e.desc, "cancel while paused: %s", e.desc)
    for g in (src, dst):
        check(g.alive(), "%s died while paused", g.name)


for transport in ("tcp", "unix"):
    R.add("cut during the background push pauses both sides (%s)" % transport, fault, "cut",
          transport)
    R.add("black hole during the background push pauses both sides within the timeout (%s)" %
          transport, fault, "blackhole", transport)
R.add("cut with preempt and multifd channels pauses both sides", fault, "cut", "tcp",
      {"postcopy-preempt": True, "multifd": True})
R.add("black hole with preempt and multifd channels pauses both sides", fault, "blackhole",
      "tcp", {"postcopy-preempt": True, "multifd": True})
# Shared memory: owed pages are unmapped page cache (minor faults); they
# must stay blocked, never be mapped stale.
R.add("black hole with preempt, shared memory (memfd): both sides pause, owed pages held",
      fault, "blackhole", "unix", {"postcopy-preempt": True}, "memfd")


@R.test("a paused destination quits cleanly: its blocked threads never read owed pages")
def t_quit_paused(t):
    src, dst, px = pair(t)
    switch(src, dst, px)
    px.cut()
    paused_both(src, dst, "cut")
    check_held(src, dst)
    dst.qmp.execute("quit")
    rc = dst.proc.wait(scaled(20))
    check_eq(rc, 0, "destination exit status")
    check("exiting without stopping the workload" in dst.log_tail(4000),
          "the destination did not say why it left its workload: %s", dst.log_tail(500))
    src.kill(signal.SIGTERM)
    src.proc.wait(scaled(20))


PAUSE_REFUSAL = ("migrate-pause is currently only supported during postcopy-active or "
                 "postcopy-recover state")


@R.test("migrate-pause is refused outside postcopy, with QEMU's message, on both sides")
def t_pause_refused(t):
    src, dst, px = pair(t)
    for g in (src, dst):  # nothing running
        e = g.qmp.expect_error("migrate-pause")
        check_eq(e.desc, PAUSE_REFUSAL, "%s: refusal with no migration" % g.name)
    src.qmp.execute("migrate", {"uri": px.uri})
    wait_status(src, "active", 30, fail_on=NOT_PAUSED)
    wait_status(dst, "active", 30, fail_on=NOT_PAUSED)
    for g in (src, dst):  # precopy
        e = g.qmp.expect_error("migrate-pause")
        check_eq(e.desc, PAUSE_REFUSAL, "%s: refusal in precopy" % g.name)
    # The refusal did nothing: precopy goes on.
    check_eq(src.query_migrate().get("status"), "active", "source after the refusal")
    src.qmp.execute("migrate_cancel")
    wait_status(src, "cancelled", 30, fail_on=("failed", "completed"))


def pause(t, side, transport):
    src, dst, px = pair(t, transport)
    switch(src, dst, px)
    g = src if side == "source" else dst
    g.qmp.execute("migrate-pause")
    si, di = paused_both(src, dst, "migrate-pause on the %s" % side)
    desc = (si if side == "source" else di).get("error-desc", "")
    check("Postcopy migration is paused by the user" in desc, "%s error-desc %r", side, desc)
    check_held(src, dst)
    # Paused already: a second migrate-pause is refused.
    for h in (src, dst):
        e = h.qmp.expect_error("migrate-pause")
        check_eq(e.desc, PAUSE_REFUSAL, "%s: refusal when paused" % h.name)


for side in ("source", "destination"):
    R.add("migrate-pause on the %s pauses both sides (tcp)" % side, pause, side, "tcp")
R.add("migrate-pause on the destination pauses both sides (unix)", pause, "destination", "unix")


if __name__ == "__main__":
    R.main()
