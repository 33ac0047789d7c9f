"""Precopy end to end: idle and random workloads over tcp and unix, at least
two dirty passes forced with QEMU's technique (digest §11.1: start with
non-converging settings, wait until pages were sent and re-dirtied, then
switch to converging ones), then memory verified on the destination.
Also a non-live migration (source stopped first)."""

import time

from lmtest import (Runner, check, check_eq, check_writes_increase, log, migrate,
                    set_caps, set_params, stop_and_verify, wait_runstate, wait_status,
                    wait_until)

R = Runner("precopy", per_test=50, budget=200)

MEM = "256M"
NON_CONVERGE = {"max-bandwidth": 30 * 1000 * 1000, "downtime-limit": 1}
CONVERGE = {"max-bandwidth": 0, "downtime-limit": 300}

# name, transport, workload, fill, wait_syncs, defer: a random workload on an
# unfilled guest finishes its first pass quickly (untouched pages are
# zero), so the test can wait for the second dirty sync while still
# throttled; a filled guest needs ~9 s at 30 MB/s for its first pass, so
# there the switch happens after the first MBs and the completion itself
# must take the extra sync.  defer: the destination is started with
# --incoming defer, gets the events capability, then migrate-incoming (the
# QEMU/libvirt flow); otherwise --incoming URI on its command line.
# dst_extra: more flags for the destination (--prealloc: memory populated,
# zero, before the stream arrives).
SCENARIOS = [
    {"name": "idle/tcp", "transport": "tcp", "workload": "idle", "fill": "random",
     "wait_syncs": 0, "defer": False},
    {"name": "idle/unix", "transport": "unix", "workload": "idle", "fill": "random",
     "wait_syncs": 0, "defer": True, "dst_extra": ("--prealloc",)},
    {"name": "random/tcp", "transport": "tcp", "workload": "random", "fill": "none",
     "wait_syncs": 2, "defer": True},
    {"name": "random/unix", "transport": "unix", "workload": "random", "fill": "none",
     "wait_syncs": 2, "defer": False},
    {"name": "random-filled/tcp", "transport": "tcp", "workload": "random",
     "fill": "random", "wait_syncs": 0, "defer": True},
]
# 128 MB/s: at 30 MB/s a throttled round of threshold-sized data (the
# threshold uses the unthrottled wire speed, ~2.7 MB at 1 ms) takes ~90 ms,
# in which this rate dirties ~11 MB, so phase 1 cannot converge by chance;
# at 32 MB/s it sometimes did.
RATE = "128M"


def precopy_live(t, sc):
    wl = {"workload": sc["workload"]}
    if sc["workload"] == "random":
        wl["dirty_rate"] = RATE
    src = t.guest("src", mem=MEM, fill=sc["fill"], seed=1, **wl)
    dst = t.dest("dst", transport=sc["transport"], mem=MEM, seed=2, defer=sc["defer"],
                 caps={"events": True} if sc["defer"] else None,
                 extra=sc.get("dst_extra", ()), **wl)
    check_eq(dst.status(), "inmigrate", "destination run state before migrating")
    check_eq(src.status(), "running", "source run state before migrating")

    set_caps(src, {"events": True})
    set_params(src, NON_CONVERGE)
    p = src.qmp.execute("query-migrate-parameters")
    check_eq(p.get("downtime-limit"), 1, "downtime-limit read back")
    check_eq(p.get("max-bandwidth"), NON_CONVERGE["max-bandwidth"], "max-bandwidth read back")

    w0 = src.stats()["writes"]
    uri = migrate(src, dst)
    log("%s: migrating to %s" % (sc["name"], uri))

    # Phase 1: pages sent, the workload re-dirtied some since, and (where
    # cheap) the second dirty sync has happened.
    def phase1():
        info = src.query_migrate()
        st = info.get("status")
        check(st in ("setup", "active"), "source status %s during phase 1 (error-desc %r)",
              st, info.get("error-desc"))
        ram = info.get("ram", {})
        if ram.get("transferred", 0) < 8 * 1000 * 1000:
            return None
        if sc["workload"] == "random" and src.stats()["writes"] <= w0:
            return None
        if ram.get("dirty-sync-count", 0) < sc["wait_syncs"]:
            return None
        return info

    info = wait_until(phase1, 30, "phase 1 (8 MB sent, pages re-dirtied, syncs)")
    check_eq(info["status"], "active", "source status in phase 1")
    set_params(src, CONVERGE)

    info = wait_status(src, "completed", 40)
    dinfo = wait_status(dst, "completed", 10)
    ram = info.get("ram", {})
    log("%s: total-time %s ms, downtime %s ms (x-downtime-us %s), expected %s, syncs %s, "
        "transferred %s" % (sc["name"], info.get("total-time"), info.get("downtime"),
                             info.get("x-downtime-us"), info.get("expected-downtime"),
                             ram.get("dirty-sync-count"), ram.get("transferred")))

    check_eq(src.status(), "postmigrate", "source run state after completed")
    wait_runstate(dst, "running", 5)
    check(ram.get("dirty-sync-count", 0) >= 2, "dirty-sync-count %r < 2",
          ram.get("dirty-sync-count"))
    check(ram.get("total", 0) >= 256 << 20, "ram.total %r < guest RAM", ram.get("total"))
    check_eq(ram.get("remaining"), 0, "ram.remaining once completed")
    check(ram.get("transferred", 0) > 0, "ram.transferred is %r", ram.get("transferred"))
    # The switchover decision is logic: what it predicted must fit the
    # limit.  The pause it measured is timing (a loaded CI machine can
    # stretch it), reported above and judged by the benchmark.
    dt, exp = info.get("downtime"), info.get("expected-downtime")
    check(isinstance(dt, int) and dt >= 0, "downtime %r", dt)
    check(isinstance(exp, int) and 0 <= exp <= CONVERGE["downtime-limit"],
          "expected-downtime %r ms not within downtime-limit %d", exp,
          CONVERGE["downtime-limit"])
    if sc["fill"] == "random":
        # Every page was non-zero: they all went as normal pages.
        check(ram.get("normal", 0) >= (256 << 20) // 4096,
              "ram.normal %r < number of filled pages", ram.get("normal"))

    # Events: status changes in order, and a MIGRATION_PASS per dirty sync.
    evs = src.qmp.drain_events()
    sts = [e["data"]["status"] for e in evs if e.get("event") == "MIGRATION"]
    passes = [e["data"]["pass"] for e in evs if e.get("event") == "MIGRATION_PASS"]
    for want in ("setup", "active", "completed"):
        check(want in sts, "source MIGRATION events %s lack %s", sts, want)
    check(sts.index("setup") < sts.index("active") < sts.index("completed"),
          "source MIGRATION events out of order: %s", sts)
    check(passes and max(passes) == ram["dirty-sync-count"],
          "MIGRATION_PASS events %s do not reach dirty-sync-count %s", passes,
          ram["dirty-sync-count"])
    if sc["defer"]:
        dsts = dst.qmp.migration_statuses()
        check("completed" in dsts, "destination MIGRATION events %s lack completed", dsts)

    if sc["workload"] == "random":
        # The workload goes on on the destination, from the migrated ledger.
        check_writes_increase(dst)

    # The source is stopped (postmigrate): its own memory is consistent too.
    sv = src.verify()
    check(sv.get("ok") is True, "source x-guest-verify: %r", sv)
    dv = stop_and_verify(dst)
    # The destination continued from the source's pages: every page the
    # source had written is written there too (a lost page would be zero).
    check(dv["written-pages"] >= sv["written-pages"] > 0,
          "written pages: destination %r, source %r", dv["written-pages"],
          sv["written-pages"])
    check_eq(dv["pages"], sv["pages"], "pages (source vs destination)")


for sc in SCENARIOS:
    R.add("precopy live %s" % sc["name"], precopy_live, sc)


@R.test("precopy non-live tcp (source stopped first)")
def nonlive(t):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="64M", seed=3)
    # Idle destination: nothing writes there after the load, so its memory
    # must be exactly the source's.
    dst = t.dest("dst", transport="tcp", mem=MEM, workload="idle")
    time.sleep(1.0)  # let the workload touch a part of the pages
    src.qmp.execute("stop")
    wait_runstate(src, "paused", 5)
    sv = src.verify()
    check(sv.get("ok") is True and sv["written-pages"] > 0, "source verify %r", sv)
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    info = wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    log("non-live: total-time %s ms, downtime %s ms, syncs %s, dest run state %s" %
        (info.get("total-time"), info.get("downtime"),
         info.get("ram", {}).get("dirty-sync-count"), dst.status()))
    check_eq(src.status(), "postmigrate", "source run state")
    check(dst.status() in ("running", "paused"), "destination run state %s", dst.status())
    dv = stop_and_verify(dst)
    check_eq(dv["written-pages"], sv["written-pages"], "written-pages destination vs source")
    check_eq(dv["pages"], sv["pages"], "pages destination vs source")
    # The source must not have written anything while stopped.
    sv2 = src.verify()
    check_eq(sv2["written-pages"], sv["written-pages"], "source written-pages after migrating")


if __name__ == "__main__":
    R.main()
