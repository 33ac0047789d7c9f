"""Postcopy recovery across a real link: the source runs in one network
namespace, the destination in another, over tcp across a veth pair
(lmnetns.py), and the link is set down (`ip link set dev X down`) while
postcopy pushes in the background: no proxy, no RST, the kernel drops
what is sent.  Both sides must pause (the x-postcopy-timeout-ms watchdog:
nothing moves), hold the pages they owe, and once the link is up again
recover (migrate-recover + migrate resume=true), complete and verify.
A resume while the link is still down falls back to postcopy-paused by
itself (with the event and error-desc); once the link is up a resume
completes (an attempt right after the link came back may fail as the
first one did, and is retried: each failure must be a clean fallback).

Needs root and `ip netns` (iproute2): without them the file is skipped
(exit 77).  Nothing waits for a time: the push is held to a trickle
(max-postcopy-bandwidth) so pages are owed when the link goes down, and
every wait is for a state, an event or a counter."""

import os
import time

import lmnetns
from lmtest import (LIVEMIG, QMPError, Runner, TestFailure, check, check_eq, log, scaled, set_caps,
                    set_params, stop_and_verify, wait_status, wait_until, writes_increase)

R = Runner("recovery across a veth link between network namespaces", per_test=120, budget=600)

MEM = "128M"
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}
HOLD = 256 * 1000
FAST = 10 * 1000 * 1000 * 1000
TIMEOUT_MS = int(1000 * scaled(1))
# How long past x-postcopy-timeout-ms a pause may come before the test
# calls it missing: a bound on a wait, not a measure (the bench measures).
PAUSE_BOUND_S = 30
RESUME_ATTEMPTS = 5
ACTIVE = ("postcopy-active",)
NOT_PAUSED = ("failed", "completed", "cancelled")
CAPS = {"events": True, "postcopy-ram": True}


def setup(t):
    """Two namespaces, the source in a, the destination in b listening on
    b's address; returns (ns, src, dst)."""
    ns = lmnetns.NetNS()
    t.closers.append(ns.close)
    wl = {"workload": "random", "dirty_rate": "32M"}
    src = t.guest("src", mem=MEM, fill="random", seed=1, wrap=ns.exec_prefix("a"), **wl)
    dst = t.guest("dst", mem=MEM, incoming="defer", seed=2, wrap=ns.exec_prefix("b"), **wl)
    for g in (src, dst):
        # The pid held is the guest itself (ip execs it in place), so it is
        # stopped by that pid.
        exe = os.readlink("/proc/%d/exe" % g.pid)
        check_eq(exe, os.path.realpath(LIVEMIG), "%s: the process behind pid %d" % (g.name, g.pid))
        set_caps(g, CAPS)
    set_params(src, dict(SLOW, **{"max-postcopy-bandwidth": HOLD,
                                  "x-postcopy-timeout-ms": TIMEOUT_MS}))
    set_params(dst, {"x-postcopy-timeout-ms": TIMEOUT_MS})
    dst.qmp.execute("migrate-incoming", {"uri": "tcp:%s:0" % ns.b_addr})
    return ns, src, dst


def dest_uri(dst, ns):
    sa = dst.query_migrate().get("socket-address") or []
    check(sa and sa[0].get("type") == "inet" and sa[0].get("host") == ns.b_addr,
          "destination socket-address %r (want %s)", sa, ns.b_addr)
    return "tcp:%s:%s" % (ns.b_addr, sa[0]["port"])


def switch(src, dst, uri):
    src.qmp.execute("migrate", {"uri": uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    wait_status(src, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
    wait_until(lambda: dst.query_migrate().get("x-postcopy", {}).get("remote-faults", 0) > 0, 30,
               "a remote fault on the destination")


def paused_both(src, dst, what):
    bound = TIMEOUT_MS / 1000.0 + PAUSE_BOUND_S
    si = wait_status(src, "postcopy-paused", bound, fail_on=NOT_PAUSED)
    di = wait_status(dst, "postcopy-paused", bound, fail_on=NOT_PAUSED)
    for g in (src, dst):
        g.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-paused", timeout=10)
    log("%s: source: %s | destination: %s" % (what, si.get("error-desc"), di.get("error-desc")))
    for name, info in (("source", si), ("destination", di)):
        check("postcopy paused" in info.get("error-desc", ""), "%s error-desc %r", name,
              info.get("error-desc"))
    return si, di


def held(src, dst):
    """Paused: the source's guest stays stopped; the destination's runs,
    owes pages and fills none of them (its workload blocks on them)."""
    check_eq(src.status(), "finish-migrate", "source run state when paused")
    check_eq(dst.status(), "running", "destination run state when paused")
    owed = dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0)
    check(owed > 0, "paused with nothing owed")
    wait_until(lambda: not writes_increase(dst, 1.0), 40, "the workload blocked on owed pages")
    check_eq(dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0), owed,
             "owed pages while paused (none filled)")


def link_down(ns, ends):
    ns.link_down(ends)
    for end in ends:
        check_eq(ns.link_state(end), "DOWN", "veth end %s after link down" % end)


def link_up(ns):
    ns.link_up()
    for end in "ab":
        # UP once both ends are (a carrier needs the peer up).
        wait_until(lambda end=end: ns.link_state(end) == "UP", 20, "veth end %s up" % end)


def listen_recover(dst, ns, uri=None):
    """migrate-recover on b's address, unless the destination still
    listens from an earlier one (an attempt whose connects never reached
    it); returns the URI it listens on."""
    try:
        dst.qmp.execute("migrate-recover", {"uri": "tcp:%s:0" % ns.b_addr})
    except QMPError as e:
        check(uri and "triggered already" in e.desc, "migrate-recover: %s", e.desc)
        return uri
    return dest_uri(dst, ns)


def attempt(src, uri):
    """One migrate resume; returns the source's MIGRATION statuses up to
    postcopy-active or back to postcopy-paused, and its error-desc."""
    sts = []
    src.qmp.drain_events()
    src.qmp.execute("migrate", {"uri": uri, "resume": True})
    wait_until(lambda: sts.extend(src.qmp.migration_statuses()) or
               "postcopy-active" in sts or "postcopy-paused" in sts,
               TIMEOUT_MS / 1000.0 + PAUSE_BOUND_S, "the end of the resume attempt")
    return sts, src.query_migrate().get("error-desc", "")


def resume(src, dst, ns, uri=None):
    """Recovers once the link is up: migrate-recover on b's address,
    migrate resume on the source, until both are postcopy-active.  The
    first connect after the link came back often fails at once with "No
    route to host" (a's neighbour entry for b failed while the link was
    down, and the kernel reports that before it resolves b again), or
    loses its SYN (TCP resends it after 1 s, the source's whole setup
    bound here): such an attempt must fall back to postcopy-paused with
    the event and error-desc, and the next one is made (bounded)."""
    for n in range(1, RESUME_ATTEMPTS + 1):
        uri = listen_recover(dst, ns, uri)
        sts, desc = attempt(src, uri)
        if "postcopy-active" in sts:
            check_eq(sts, ["postcopy-recover-setup", "postcopy-recover", "postcopy-active"],
                     "source MIGRATION events of resume attempt %d" % n)
            wait_status(src, ACTIVE, 30, fail_on=NOT_PAUSED)
            wait_status(dst, ACTIVE, 30, fail_on=NOT_PAUSED)
            return uri
        check_eq(sts, ["postcopy-recover-setup", "postcopy-paused"],
                 "source MIGRATION events of failed resume attempt %d" % n)
        check("postcopy recovery" in desc, "error-desc of failed attempt %d: %r", n, desc)
        log("resume attempt %d fell back to postcopy-paused: %s" % (n, desc))
        wait_status(dst, "postcopy-paused", 30, fail_on=NOT_PAUSED)
    raise TestFailure("no recovery in %d attempts over a link that is up" % RESUME_ATTEMPTS)


def finish(t, ns, src, dst):
    """Lifts the hold; both complete, every destination page verified;
    then both stopped by pid and nothing left in the namespaces."""
    reqs0 = src.query_migrate().get("ram", {}).get("postcopy-requests", 0)
    set_params(src, {"max-postcopy-bandwidth": FAST})
    try:
        wait_status(src, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    except TestFailure as e:
        di = dst.query_migrate()
        raise TestFailure("%s; destination: status %s, error-desc %r" %
                          (e, di.get("status"), di.get("error-desc")))
    wait_status(dst, "completed", 120, fail_on=("failed", "cancelled", "postcopy-paused"))
    check(src.query_migrate().get("ram", {}).get("postcopy-requests", 0) > reqs0,
          "no page request served after the recovery")
    stop_and_verify(dst)
    for g in (src, dst):
        g.stop()
        check(not g.alive(), "%s still runs after its stop", g.name)
    left = ns.pids()
    check(not left, "processes left in the namespaces: %r", left)


@R.test("veth link down during the background push (tcp between namespaces): both sides "
        "pause, owed pages held; link up, recovered, completes and verifies")
def t_link_down(t):
    ns, src, dst = setup(t)
    switch(src, dst, dest_uri(dst, ns))
    t0 = time.monotonic()
    link_down(ns, "b")
    paused_both(src, dst, "veth link down")
    log("both sides paused %.2f s after the link went down (x-postcopy-timeout-ms %d)" %
        (time.monotonic() - t0, TIMEOUT_MS))
    held(src, dst)
    link_up(ns)
    resume(src, dst, ns)
    finish(t, ns, src, dst)


@R.test("veth link down at both ends, twice in one migration: each time both sides pause "
        "and recover; completes and verifies")
def t_link_down_twice(t):
    ns, src, dst = setup(t)
    switch(src, dst, dest_uri(dst, ns))
    for n in (1, 2):
        link_down(ns, "ab")
        paused_both(src, dst, "veth link down %d" % n)
        held(src, dst)
        link_up(ns)
        resume(src, dst, ns)
        wait_until(lambda: writes_increase(dst, 1.0), 40, "the workload runs after recovery %d" % n)
        check(dst.query_migrate().get("x-postcopy", {}).get("owed-pages", 0) > 0,
              "nothing owed after recovery %d: the next fault tests nothing", n)
    finish(t, ns, src, dst)


@R.test("migrate resume while the link is still down: recover-setup, then postcopy-paused "
        "again with error-desc; link up, a later attempt completes and verifies")
def t_resume_link_down(t):
    ns, src, dst = setup(t)
    switch(src, dst, dest_uri(dst, ns))
    link_down(ns, "b")
    paused_both(src, dst, "veth link down")
    # The destination listens on b's address (the address stays on a link
    # that is down); the source's SYNs are dropped on the way (or a's
    # neighbour entry for b fails first: "No route to host").
    uri = listen_recover(dst, ns)
    sts, desc = attempt(src, uri)
    log("resume over a link that is down: %s" % desc)
    check_eq(sts, ["postcopy-recover-setup", "postcopy-paused"], "source MIGRATION events")
    check("postcopy recovery" in desc and ns.b_addr in desc, "error-desc %r", desc)
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "destination meanwhile")
    held(src, dst)
    link_up(ns)
    # The destination still listens from its migrate-recover.
    resume(src, dst, ns, uri)
    finish(t, ns, src, dst)


if __name__ == "__main__":
    why = lmnetns.unavailable()
    if why:
        R.skip_all(why)
    R.main()
