"""Postcopy recovery: a broken link is detected and both sides pause;
nothing is lost while paused; migrate-recover on the destination and
migrate resume=true on the source reconnect them, the received bitmap
makes the source send again what was lost, and the migration completes
with every page verified (x-guest-verify), after any number of cuts.

Every migration here goes through lmproxy (one pair of sockets per
channel), which cuts the link (an RST, or EOF on a unix socket) or turns
it into a black hole (nothing forwarded, nothing closed) while postcopy
pushes in the background.  Both sides must reach postcopy-paused (with
the MIGRATION event), a black hole within x-postcopy-timeout-ms (set on
both sides); the destination's guest keeps running, its threads that
touch owed pages block (no page is filled with zero or stale data: the
owed count never drops while paused), nothing crashes, and each process
is stopped by pid.  Then migrate-pause on either side, and its refusal
outside postcopy.  Last, the window between POSTCOPY_RUN and its
confirmation (the source's postcopy-device): a destination whose device
load fails there makes the source fail and run again; a cut or a black
hole there pauses both sides, and they recover.  Recovery itself is cut
too: a resume into a black hole is back in postcopy-paused within
x-postcopy-timeout-ms (the error-desc names the bound), and an RST in
postcopy-recover-setup (the destination's HELLO answer held by the proxy)
pauses both sides again; each time the next recovery completes.

Nothing waits for a time: the background push is held to a trickle
(max-postcopy-bandwidth) so that pages are still owed when the fault is
injected, and every wait is for a state, an event or a counter."""

import os
import signal
import time

from lmtest import (Runner, TestFailure, check, check_eq, check_writes_increase, log, scaled,
                    set_caps, set_params, stop_and_verify, wait_runstate, wait_status,
                    wait_until, writes_increase)

R = Runner("recovery", per_test=120, budget=1500)

MEM = "128M"
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}
HOLD = 256 * 1000
# The silence bound of these tests (both sides); sanitizer builds are slower.
TIMEOUT_MS = int(1000 * scaled(1))
ACTIVE = ("postcopy-active",)
NOT_PAUSED = ("failed", "completed", "cancelled")


def pair(t, transport="tcp", caps=None, workload="random", backend=None, env=None):
    """A source and a destination behind a proxy on `transport`, postcopy
    on, the push held; returns (src, dst, proxy).  env: the destination's
    environment."""
    c = {"events": True, "postcopy-ram": True}
    c.update(caps or {})
    wl = {"workload": workload, "dirty_rate": "32M"}
    if backend:
        wl["extra"] = ("--mem-backend", backend)
    src = t.guest("src", mem=MEM, fill="random", seed=1, **wl)
    dst = t.dest("dst", transport=transport, mem=MEM, seed=2, defer=True, caps=c, env=env, **wl)
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


# ---------------------------------------------------------------- recovery

FAST = 10 * 1000 * 1000 * 1000  # max-postcopy-bandwidth once a test lets it finish


def recover_listen(t, dst, transport, n):
    """migrate-recover on the destination with a new URI; returns the URI
    it listens on (a tcp port 0 resolved)."""
    if transport == "unix":
        uri = "unix:%s/recover%d.sock" % (t.tmpdir, n)
        dst.qmp.execute("migrate-recover", {"uri": uri})
        return uri
    dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    return dest_uri_of(dst)


def dest_uri_of(dst):
    sa = dst.query_migrate().get("socket-address") or []
    check(sa and sa[0].get("type") == "inet", "destination socket-address %r", sa)
    return "tcp:%s:%s" % (sa[0].get("host", "127.0.0.1"), sa[0].get("port"))


def recover(t, src, dst, transport, n):
    """Recovers a paused pair through a new proxy; returns it once both
    sides are postcopy-active again (with the events of QEMU's states)."""
    uri = recover_listen(t, dst, transport, n)
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "destination listening")
    px = t.proxy(uri, listen=transport)
    src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
    for st in ("postcopy-recover-setup", "postcopy-recover", "postcopy-active"):
        src.qmp.wait_event("MIGRATION", lambda d, st=st: d.get("status") == st, timeout=30)
    for st in ("postcopy-recover", "postcopy-active"):
        dst.qmp.wait_event("MIGRATION", lambda d, st=st: d.get("status") == st, timeout=30)
    wait_status(src, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
    return px


def complete(src, dst):
    """Lifts the hold; both sides complete and every page of the
    destination is the source's."""
    set_params(src, {"max-postcopy-bandwidth": FAST})
    try:
        wait_status(src, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    except TestFailure as e:
        # The destination's side of it, for whoever reads the failure.
        di = dst.query_migrate()
        raise TestFailure("%s; destination: status %s, error-desc %r" %
                          (e, di.get("status"), di.get("error-desc")))
    wait_status(dst, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst)


def recovery(t, transport, how, caps=None, backend=None):
    src, dst, px = pair(t, transport, caps, backend=backend)
    switch(src, dst, px)
    if how == "pause-source":
        src.qmp.execute("migrate-pause")
    elif how == "pause-destination":
        dst.qmp.execute("migrate-pause")
    elif how == "blackhole":
        px.blackhole()
    else:
        px.cut()
    paused_both(src, dst, how)
    check_held(src, dst)
    recover(t, src, dst, transport, 1)
    mfd0 = src.query_migrate().get("ram", {}).get("multifd-bytes", 0)
    reqs0 = src.query_migrate().get("ram", {}).get("postcopy-requests", 0)
    complete(src, dst)
    ram = src.query_migrate().get("ram", {})
    if (caps or {}).get("multifd"):
        check(ram.get("multifd-bytes", 0) > mfd0 + (1 << 20),
              "the push after recovery went on the multifd channels: %r -> %r", mfd0,
              ram.get("multifd-bytes"))
    # Page requests are served on the new channels.
    check(ram.get("postcopy-requests", 0) > reqs0, "no request served after the recovery")


for transport in ("tcp", "unix"):
    R.add("cut during the background push, recovered, completes and verifies (%s)" % transport,
          recovery, transport, "cut")
R.add("black hole during the background push, recovered, completes and verifies (unix)",
      recovery, "unix", "blackhole")
for side in ("source", "destination"):
    R.add("migrate-pause on the %s, recovered, completes and verifies" % side, recovery, "tcp",
          "pause-" + side)
# postcopy-preempt: its channel comes back too (requests travel there).
R.add("cut with postcopy-preempt, recovered (main and preempt channels), completes and "
      "verifies", recovery, "tcp", "cut", {"postcopy-preempt": True})
R.add("cut with postcopy-preempt on unix sockets, shared memory (memfd), recovered, completes "
      "and verifies", recovery, "unix", "cut", {"postcopy-preempt": True}, "memfd")
# multifd: its channels come back too, with a new sender and new receivers.
R.add("cut with multifd carrying the push, recovered (main and multifd channels), completes "
      "and verifies", recovery, "tcp", "cut", {"multifd": True})
R.add("black hole with preempt and multifd, recovered (every channel), completes and verifies",
      recovery, "tcp", "blackhole", {"postcopy-preempt": True, "multifd": True})


@R.test("two cuts in one migration, each recovered: completes and verifies")
def t_two_cuts(t):
    src, dst, px = pair(t)
    switch(src, dst, px)
    for n in (1, 2):
        px.cut()
        paused_both(src, dst, "cut %d" % n)
        check_held(src, dst)
        px = recover(t, src, dst, "tcp", n)
        # The workload runs again: its blocked threads got their pages.
        wait_until(lambda: writes_increase(dst, 1.0), 40, "the workload runs after recovery %d" % n)
        owed = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
        check(owed > 0, "nothing owed after recovery %d: the next cut tests nothing", n)
    complete(src, dst)


@R.test("a black hole, recovered, then another: both sides pause again within the timeout "
        "(the watchdogs start over on the new channel), recovered again, completes")
def t_blackhole_after_recovery(t):
    src, dst, px = pair(t)
    switch(src, dst, px)
    for n in (1, 2):
        # Each side's watchdog fires on each black hole: the first one
        # fired already when the second comes.
        px.blackhole()
        si, di = paused_both(src, dst, "black hole %d" % n)
        for name, info in (("source", si), ("destination", di)):
            desc = info.get("error-desc", "")
            check("no data from the" in desc and "x-postcopy-timeout-ms" in desc,
                  "%s: black hole %d is named as silence: %r", name, n, desc)
        check_held(src, dst)
        px = recover(t, src, dst, "tcp", n)
    complete(src, dst)


def resume_blackhole(t, transport, caps=None):
    """A resume into a black hole (connected, the HELLO never answered)
    is back in postcopy-paused within x-postcopy-timeout-ms, not after the
    10 s of each connect and HELLO: the error-desc names that bound."""
    src, dst, px = pair(t, transport, caps)
    switch(src, dst, px)
    px.cut()
    paused_both(src, dst, "cut")
    uri = recover_listen(t, dst, transport, 1)
    hole = t.proxy(uri, listen=transport)
    hole.blackhole()  # connects, then nothing: the HELLO is never answered
    sts = []
    src.qmp.drain_events()
    src.qmp.execute("migrate", {"uri": hole.uri, "resume": True})
    wait_until(lambda: sts.extend(src.qmp.migration_statuses()) or "postcopy-paused" in sts, 40,
               "the source back in postcopy-paused")
    check_eq(sts, ["postcopy-recover-setup", "postcopy-paused"], "source MIGRATION events")
    info = wait_status(src, "postcopy-paused", 30, fail_on=NOT_PAUSED)
    desc = info.get("error-desc", "")
    log("resume into a black hole: %s" % desc)
    check("postcopy recovery" in desc and "HELLO" in desc and
          "within x-postcopy-timeout-ms (%d ms)" % TIMEOUT_MS in desc, "error-desc %r", desc)
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "destination meanwhile")
    # The destination still listens from its migrate-recover.
    px = t.proxy(uri, listen=transport)
    src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
    for st in ("postcopy-recover-setup", "postcopy-recover", "postcopy-active"):
        src.qmp.wait_event("MIGRATION", lambda d, st=st: d.get("status") == st, timeout=30)
    complete(src, dst)


for transport in ("tcp", "unix"):
    R.add("migrate resume through a black hole (stuck in postcopy-recover-setup): back to "
          "postcopy-paused within x-postcopy-timeout-ms, with error-desc; the next attempt "
          "completes (%s)" % transport, resume_blackhole, transport)
R.add("migrate resume through a black hole with preempt and multifd channels: back to "
      "postcopy-paused within x-postcopy-timeout-ms; the next attempt completes",
      resume_blackhole, "tcp", {"postcopy-preempt": True, "multifd": True})


@R.test("a cut during postcopy-recover-setup (the destination answered the HELLO, the source "
        "has not heard it): both sides pause again, the next recovery completes and verifies")
def t_cut_in_setup(t):
    src, dst, px = pair(t)
    # Only the cuts pause the sides here: a watchdog on the held answer
    # would end the attempt by itself (the test above).
    set_params(src, {"x-postcopy-timeout-ms": 0})
    set_params(dst, {"x-postcopy-timeout-ms": 0})
    switch(src, dst, px)
    px.cut()
    paused_both(src, dst, "cut")
    uri = recover_listen(t, dst, "tcp", 1)
    px = t.proxy(uri)
    px.hold_return()
    src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-recover-setup",
                       timeout=30)
    # The destination took the HELLO RESUME and answered it; the answer is
    # held, so the source is still setting up.
    dst.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-recover", timeout=30)
    check_eq(src.query_migrate().get("status"), "postcopy-recover-setup",
             "source while the HELLO answer is held")
    px.cut()
    si, di = paused_both(src, dst, "cut during postcopy-recover-setup")
    desc = si.get("error-desc", "")
    check("postcopy recovery" in desc and "HELLO" in desc and "did not answer" not in desc,
          "source error-desc: the cut, not a timeout: %r", desc)
    check_held(src, dst)
    set_params(src, {"x-postcopy-timeout-ms": TIMEOUT_MS})
    recover(t, src, dst, "tcp", 2)
    complete(src, dst)


@R.test("a cut during the bitmap exchange (the destination held before its ack): both "
        "sides pause again, the next recovery completes and verifies")
def t_cut_in_exchange(t):
    src, dst, px = pair(t, env=dict(os.environ, LIVEMIG_TEST_RECOVERY="hold-ack"))
    # The source's watchdog would pause on the held destination's silence
    # by itself: this test cuts instead.
    set_params(src, {"x-postcopy-timeout-ms": 0})
    switch(src, dst, px)
    px.cut()
    paused_both(src, dst, "cut")
    uri = recover_listen(t, dst, "tcp", 1)
    px = t.proxy(uri)
    src.qmp.execute("migrate", {"uri": px.uri, "resume": True})
    for st in ("postcopy-recover-setup", "postcopy-recover"):
        src.qmp.wait_event("MIGRATION", lambda d, st=st: d.get("status") == st, timeout=30)
    dst.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-recover", timeout=30)
    wait_until(lambda: "recovery held before RP_RESUME_ACK" in dst.log_tail(20000), 30,
               "the destination held in the exchange")
    for g in (src, dst):
        check_eq(g.query_migrate().get("status"), "postcopy-recover", "%s when held" % g.name)
    px.cut()
    paused_both(src, dst, "cut during the bitmap exchange")
    set_params(src, {"x-postcopy-timeout-ms": TIMEOUT_MS})
    recover(t, src, dst, "tcp", 2)
    complete(src, dst)


@R.test("migrate resume to a URI nobody listens on: recover-setup, then paused with "
        "error-desc; a second attempt completes")
def t_resume_nobody(t):
    src, dst, px = pair(t)
    switch(src, dst, px)
    px.cut()
    paused_both(src, dst, "cut")
    nobody = "unix:%s/nobody.sock" % t.tmpdir
    src.qmp.execute("migrate", {"uri": nobody, "resume": True})
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-recover-setup",
                       timeout=30)
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-paused", timeout=30)
    info = wait_status(src, "postcopy-paused", 30, fail_on=NOT_PAUSED)
    desc = info.get("error-desc", "")
    check("postcopy recovery" in desc and "nobody.sock" in desc, "error-desc %r", desc)
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "destination meanwhile")
    recover(t, src, dst, "tcp", 1)
    complete(src, dst)


@R.test("migrate resume and migrate-recover are refused outside postcopy-paused, with "
        "QEMU's messages; a non-resuming source is refused by a recovering destination")
def t_recover_refused(t):
    src, dst, px = pair(t)
    e = src.qmp.expect_error("migrate", {"uri": px.uri, "resume": True})
    check_eq(e.desc, "Cannot resume if there is no paused migration", "resume with nothing")
    e = dst.qmp.expect_error("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    check_eq(e.desc, "Migrate recover can only be run when postcopy is paused.",
             "recover with nothing paused")
    switch(src, dst, px)
    e = src.qmp.expect_error("migrate", {"uri": px.uri, "resume": True})
    check_eq(e.desc, "Cannot resume if there is no paused migration", "resume while active")
    px.cut()
    paused_both(src, dst, "cut")
    uri = recover_listen(t, dst, "tcp", 1)
    e = dst.qmp.expect_error("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    check_eq(e.desc, "Migrate recovery is triggered already", "a second migrate-recover")
    # A third process, a new source, tries a fresh migration to it: refused,
    # and the destination stays paused with the reason.
    other = t.guest("other", mem=MEM, fill="random", seed=3)
    set_caps(other, {"events": True, "postcopy-ram": True})
    other.qmp.execute("migrate", {"uri": uri})
    oi = wait_status(other, "failed", 30, fail_on=("completed", "cancelled"))
    check("recovers a paused postcopy migration" in oi.get("error-desc", ""),
          "the new source hears why: %r", oi.get("error-desc"))
    di = wait_status(dst, "postcopy-paused", 30, fail_on=NOT_PAUSED)
    check("recovers a paused postcopy migration" in di.get("error-desc", ""),
          "destination error-desc %r", di.get("error-desc"))
    recover(t, src, dst, "tcp", 2)
    complete(src, dst)


# ------------------------------------------------ before RUN is confirmed
# Between POSTCOPY_RUN and the destination's RP_PONG for the PING after it,
# the source is in postcopy-device (QEMU 10.2).  The destination's ERROR
# (not RP_SHUT) says it failed without ever running the guest: the source
# fails and runs the guest again.  A broken link in that window says
# nothing of the kind (the destination may run): both sides pause.


def start_postcopy(src, px):
    src.qmp.execute("migrate", {"uri": px.uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")


@R.test("a device load failure on the destination in the postcopy switch: the source goes "
        "postcopy-device -> failed and runs again with its memory intact; the destination "
        "never ran")
def t_fail_before_run(t):
    src, dst, px = pair(t, env=dict(os.environ, LIVEMIG_TEST_CPU_LOAD="fail"))
    check_eq(dst.status(), "inmigrate", "destination before the migration")
    w0 = dst.stats()["writes"]
    start_postcopy(src, px)
    info = wait_status(src, "failed", 30, fail_on=("completed", "cancelled", "postcopy-paused"))
    desc = info.get("error-desc", "")
    log("source: %s" % desc)
    check("before the destination ran the guest" in desc and "LIVEMIG_TEST_CPU_LOAD" in desc,
          "source error-desc %r", desc)
    # The source was past POSTCOPY_RUN (postcopy-device) and went from there
    # to failed, never to postcopy-active or postcopy-paused.
    sts = src.qmp.migration_statuses()
    check(sts[-2:] == ["postcopy-device", "failed"], "source statuses %r", sts)
    check("postcopy-active" not in sts and "postcopy-paused" not in sts, "source statuses %r",
          sts)
    # The source runs its guest again, and its memory is intact.
    wait_runstate(src, "running", 10)
    check_writes_increase(src)
    src.qmp.execute("stop")
    v = src.verify()
    check(v.get("ok") is True and v.get("bad-pages") == 0, "source x-guest-verify: %r", v)
    src.qmp.execute("cont")
    check_writes_increase(src)
    # The destination failed without running: still inmigrate, no
    # postcopy state, its workload never wrote.
    di = wait_status(dst, "failed", 30, fail_on=("completed", "postcopy-paused"))
    check("LIVEMIG_TEST_CPU_LOAD" in di.get("error-desc", ""), "destination error-desc %r",
          di.get("error-desc"))
    dsts = dst.qmp.migration_statuses()
    check(not any(s.startswith("postcopy") for s in dsts), "destination statuses %r", dsts)
    check_eq(dst.status(), "inmigrate", "destination run state")
    check_eq(dst.stats()["writes"], w0, "destination workload writes")
    for g in (src, dst):
        check(g.alive(), "%s died", g.name)
    # The source can migrate again: postcopy to a sound destination
    # completes, and every page there is the source's.
    c = {"events": True, "postcopy-ram": True}
    dst2 = t.dest("dst2", transport="tcp", mem=MEM, seed=3, defer=True, caps=c,
                  workload="random", dirty_rate="32M")
    set_params(src, {"max-postcopy-bandwidth": FAST})
    src.qmp.execute("migrate", {"uri": dst2.listen_uri()})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    wait_status(src, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst2, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst2)


def before_run_confirmed(t, how):
    src, dst, px = pair(t, env=dict(os.environ, LIVEMIG_TEST_RECOVERY="drop-run-pong"))
    start_postcopy(src, px)
    # The destination runs (postcopy-active, faults served), the source
    # never hears it: postcopy-device until the link breaks.
    wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_until(lambda: "RP_PONG for POSTCOPY_RUN withheld" in dst.log_tail(20000), 30,
               "the destination withheld its RP_PONG for RUN")
    wait_until(lambda: dst.query_migrate().get("x-postcopy", {}).get("remote-faults", 0) > 0, 30,
               "a remote fault on the destination")
    check_eq(src.query_migrate().get("status"), "postcopy-device", "source before the fault")
    sts = src.qmp.migration_statuses()
    check(sts[-1:] == ["postcopy-device"], "source statuses %r", sts)
    if how == "cut":
        px.cut()
    else:
        px.blackhole()
    si, _ = paused_both(src, dst, "%s before RUN was confirmed" % how)
    check("postcopy paused" in si.get("error-desc", ""), "source error-desc %r",
          si.get("error-desc"))
    check_held(src, dst)
    recover(t, src, dst, "tcp", 1)
    complete(src, dst)


R.add("cut right after the switch, before the destination confirmed RUN: both pause (no "
      "ERROR from the destination), recovered, completes and verifies", before_run_confirmed,
      "cut")
R.add("black hole right after the switch, before the destination confirmed RUN: both pause "
      "within the timeout, recovered, completes and verifies", before_run_confirmed, "blackhole")


if __name__ == "__main__":
    R.main()
