"""Postcopy end to end with real processes and real userfaultfd: the switch
(migrate-start-postcopy, taken per seed 000), page requests on the return
path (with and without the preempt channel), atomic placement, completion
only once nothing is owed, the guest verified on the destination, the
workload progressing there during postcopy, and both sides pausing when the
connection is cut.  Scenarios are data; nothing asserts on timing."""

import signal
import time

from lmtest import (Runner, check, check_eq, log, migrate, set_caps, set_params,
                    stop_and_verify, wait_runstate, wait_status, wait_until)

R = Runner("postcopy", per_test=60, budget=300)

MEM = "128M"
# Throttled so that precopy is still running (and owes most pages) when the
# switch happens; postcopy itself is unlimited (max-postcopy-bandwidth 0).
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}

# name, workload, extra guest args, caps beyond postcopy-ram, src_fill
SCENARIOS = [
    {"name": "idle", "workload": "idle", "fill": "random", "caps": {}},
    {"name": "random", "workload": "random", "dirty_rate": "64M", "fill": "random",
     "caps": {}},
    # hot: a small set written as fast as possible never converges in
    # precopy; postcopy must finish it.
    {"name": "hot", "workload": "hot", "hot_size": "8M", "fill": "random", "caps": {}},
    {"name": "random+preempt", "workload": "random", "dirty_rate": "64M", "fill": "random",
     "caps": {"postcopy-preempt": True}},
    {"name": "hot+preempt+blocktime", "workload": "hot", "hot_size": "8M", "fill": "random",
     "caps": {"postcopy-preempt": True, "postcopy-blocktime": True}},
]


def guests(t, sc, transport="tcp"):
    wl = {"workload": sc["workload"]}
    for k in ("dirty_rate", "hot_size"):
        if sc.get(k):
            wl[k] = sc[k]
    caps = {"events": True, "postcopy-ram": True}
    caps.update(sc["caps"])
    src = t.guest("src", mem=MEM, fill=sc["fill"], seed=1, **wl)
    dst = t.dest("dst", transport=transport, mem=MEM, seed=2, defer=True, caps=caps, **wl)
    set_caps(src, caps)
    set_params(src, SLOW)
    return src, dst


def start_and_switch(src, dst):
    w0 = src.stats()["writes"]
    migrate(src, dst)

    def sent_some():
        info = src.query_migrate()
        st = info.get("status")
        check(st in ("setup", "active"), "source status %s before the switch (%r)", st,
              info.get("error-desc"))
        return info if info.get("ram", {}).get("transferred", 0) > 4 * 1000 * 1000 else None

    wait_until(sent_some, 30, "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    return w0


@R.test("postcopy refuses without the capability, and cancel is refused after the switch")
def t_refusals(t):
    src = t.guest("src", mem="32M", workload="idle")
    e = src.qmp.expect_error("migrate-start-postcopy")
    check("migrate_set_capability" in e.desc, "unexpected error: %s", e.desc)
    set_caps(src, {"postcopy-ram": True})
    e = src.qmp.expect_error("migrate-start-postcopy")
    check("after migration has been started" in e.desc, "unexpected error: %s", e.desc)
    # postcopy-preempt needs postcopy-ram (QEMU's rule)
    set_caps(src, {"postcopy-ram": False})
    e = src.qmp.expect_error("migrate-set-capabilities",
                             {"capabilities": [{"capability": "postcopy-preempt",
                                                "state": True}]})
    check("postcopy-ram" in e.desc, "unexpected error: %s", e.desc)


@R.test("capability on one side only fails at HELLO with both values, source keeps running")
def t_mismatch(t):
    src = t.guest("src", mem="32M", workload="idle", fill="random")
    dst = t.dest("dst", mem="32M", defer=True, caps={"events": True})
    set_caps(src, {"postcopy-ram": True})
    migrate(src, dst)
    info = wait_status(src, "failed", 20, fail_on=("completed", "cancelled"))
    desc = info.get("error-desc", "")
    check("features differ" in desc and "postcopy-ram" in desc, "error-desc %r", desc)
    check_eq(src.status(), "running", "source run state after the failed migration")


def postcopy_run(t, sc):
    src, dst = guests(t, sc)
    start_and_switch(src, dst)
    # The destination runs as soon as it processed POSTCOPY_RUN.
    wait_status(dst, ("postcopy-active", "completed"), 30)
    wait_runstate(dst, "running", 10)
    info = wait_status(src, "completed", 60, fail_on=("failed", "cancelled", "postcopy-paused"))
    dinfo = wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    ram = info.get("ram", {})
    pc = dinfo.get("x-postcopy", {})
    log("%s: downtime %s ms (x-downtime-us %s), postcopy-bytes %s, requests src %s dst %s, "
        "remote faults %s, local faults %s, latency p50 %s p99 %s max %s us" %
        (sc["name"], info.get("downtime"), info.get("x-downtime-us"),
         ram.get("postcopy-bytes"), ram.get("postcopy-requests"), pc.get("requests"),
         pc.get("remote-faults"), pc.get("local-faults"), pc.get("latency-p50-us"),
         pc.get("latency-p99-us"), pc.get("latency-max-us")))
    evs = [e["data"]["status"] for e in src.qmp.drain_events() if e.get("event") == "MIGRATION"]
    for want in ("active", "device", "postcopy-device", "postcopy-active", "completed"):
        check(want in evs, "source MIGRATION events %s lack %s", evs, want)
    check(evs.index("postcopy-device") < evs.index("postcopy-active") < evs.index("completed"),
          "source events out of order: %s", evs)
    check(ram.get("postcopy-bytes", 0) > 0, "no postcopy-bytes: %r", ram)
    check_eq(ram.get("remaining"), 0, "remaining once completed")
    check(pc, "destination query-migrate lacks x-postcopy: %r", dinfo)
    check_eq(pc.get("owed-pages"), 0, "pages still owed on the destination")
    # Every request the destination sent reached the source once.
    check_eq(ram.get("postcopy-requests"), pc.get("requests"), "requests sent vs received")
    if sc["caps"].get("postcopy-blocktime"):
        check(pc.get("latency-count", 0) >= 1 and len(pc.get("latency-histogram-log2-us", []))
              == 24, "blocktime statistics missing: %r", pc)
        check(pc["latency-count"] == sum(pc["latency-histogram-log2-us"]),
              "histogram does not add up: %r", pc)
    if sc["workload"] != "idle":
        check(pc.get("remote-faults", 0) >= 1, "a %s workload never faulted: %r",
              sc["workload"], pc)
    check_eq(src.status(), "postmigrate", "source run state after completion")
    wait_runstate(dst, "running", 5)
    stop_and_verify(dst)


for sc in SCENARIOS:
    R.add("postcopy %s completes and verifies" % sc["name"], postcopy_run, sc)


@R.test("the workload progresses on the destination during postcopy")
def t_progress(t):
    # Unthrottled precopy would finish first: hold the background push
    # back with max-postcopy-bandwidth so postcopy lasts.
    sc = {"name": "progress", "workload": "random", "dirty_rate": "32M", "fill": "random",
          "caps": {"postcopy-preempt": True}}
    src, dst = guests(t, sc)
    set_params(src, {"max-postcopy-bandwidth": 8 * 1000 * 1000})
    start_and_switch(src, dst)
    wait_status(dst, "postcopy-active", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_runstate(dst, "running", 10)
    w0 = dst.stats()["writes"]

    def progressed():
        check_eq(dst.query_migrate().get("status"), "postcopy-active",
                 "destination status while waiting for progress")
        return dst.stats()["writes"] > w0 + 10 or None

    wait_until(progressed, 30, "destination workload writes during postcopy")
    check_eq(src.query_migrate().get("status"), "postcopy-active", "source status")
    set_params(src, {"max-postcopy-bandwidth": 0})
    wait_status(src, "completed", 60, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst)


def cut(t, how):
    sc = {"name": "cut", "workload": "random", "dirty_rate": "32M", "fill": "random",
          "caps": {}}
    src, dst = guests(t, sc)
    set_params(src, {"max-postcopy-bandwidth": 4 * 1000 * 1000})
    start_and_switch(src, dst)
    wait_status(src, "postcopy-active", 30, fail_on=("failed", "cancelled", "completed"))
    if how == "kill-dst":
        dst.kill(signal.SIGKILL)
    else:
        # The source's own view breaks: a kill of the destination's socket
        # from outside is what a network cut looks like; here the source
        # loses the connection because the destination process stops
        # reading and writing (SIGSTOP) and the test cuts it with
        # migrate-pause-less means: kill the source instead.
        src.kill(signal.SIGKILL)
    if how == "kill-dst":
        info = wait_status(src, "postcopy-paused", 40, fail_on=("failed", "completed"))
        check("postcopy paused" in info.get("error-desc", ""), "source error-desc %r",
              info.get("error-desc"))
        # The source keeps the guest stopped (the destination may run).
        check_eq(src.status(), "finish-migrate", "source run state when paused")
        e = src.qmp.expect_error("cont")
        check("migrated" in e.desc or "switchover" in e.desc, "cont error %s", e.desc)
        e = src.qmp.expect_error("migrate_cancel")
        check("Postcopy" in e.desc, "cancel error %s", e.desc)
    else:
        info = wait_status(dst, "postcopy-paused", 40, fail_on=("failed", "completed"))
        check("postcopy paused" in info.get("error-desc", ""), "dest error-desc %r",
              info.get("error-desc"))
        check_eq(dst.status(), "running", "destination run state when paused")
        evs = [e["data"]["status"] for e in dst.qmp.drain_events()
               if e.get("event") == "MIGRATION"]
        check("postcopy-paused" in evs, "destination events %s lack postcopy-paused", evs)


R.add("destination killed in postcopy: the source pauses and keeps the guest", cut, "kill-dst")
R.add("source killed in postcopy: the destination pauses and keeps running", cut, "kill-src")

if __name__ == "__main__":
    R.main()
