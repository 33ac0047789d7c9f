"""Background snapshot (QEMU's background-snapshot capability): a point-in-
time image of a running guest, streamed to an ordinary incoming destination
while the source keeps running.

How "as of the start" is decided: the source guest's cpu device is saved at
the snapshot's instant (the guest is paused for it) and carries the write
counters at that instant; x-guest-verify on the destination checks every
page against the received ledger and the ledger's versions against those
counters.  So 0 bad pages with cpu ok means the image is the memory of that
instant: a page or ledger entry of a later state fails one of the checks.
That the guest kept writing is shown by its counters: they pass a value
sampled after the pass began (the instant is before it) while the snapshot
is still active, and the image's counters are at most that value; a
stop-and-copy would hold the counters still through the whole stream."""

import os

from lmtest import (Runner, check, check_eq, check_writes_increase, log, migrate, set_caps,
                    set_params, stop_and_verify, wait_runstate, wait_status, wait_until)

R = Runner("background snapshot", per_test=120, budget=420)

MEM = "256M"
SLOW = {"max-bandwidth": 16 * 1000 * 1000}  # a pass of ~16 s: time to watch the guest
FAST = {"max-bandwidth": 0}
WRITES_DURING = 2000  # pages the guest must write while the snapshot is active


def wp_state(g):
    """(fault threads, userfaultfds) of a guest process, from /proc."""
    threads = 0
    for tid in os.listdir("/proc/%d/task" % g.pid):
        try:
            with open("/proc/%d/task/%s/comm" % (g.pid, tid)) as f:
                if f.read().strip() == "lm-wp-fault":
                    threads += 1
        except OSError:
            pass
    uffds = 0
    for fd in os.listdir("/proc/%d/fd" % g.pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (g.pid, fd)) == "anon_inode:[userfaultfd]":
                uffds += 1
        except OSError:
            pass
    return threads, uffds


def start_snapshot(t, transport, extra=()):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="100M", fill="random", seed=3,
                  extra=extra)
    # The destination's own workload is idle: after the load its counters
    # stay those of the image (x-guest-stats "writes").
    dst = t.dest("dst", transport=transport, mem=MEM, workload="idle", extra=extra)
    set_caps(src, {"events": True, "background-snapshot": True})
    set_params(src, SLOW)
    # The workload is under way, so the image holds some of its writes.
    wait_until(lambda: src.stats()["writes"] >= 1000, 20, "1000 workload writes")
    w0 = src.stats()["total-writes"]
    migrate(src, dst)

    def pass_started():
        info = src.query_migrate()
        check(info.get("status") in ("setup", "active"), "status %s (error-desc %r)",
              info.get("status"), info.get("error-desc"))
        return info.get("ram", {}).get("transferred", 0) >= 4 * 1000 * 1000 and info
    info = wait_until(pass_started, 30, "the snapshot's pass to send 4 MB")
    check_eq(info["status"], "active", "status during the pass")
    check_eq(src.status(), "running", "source run state during the snapshot")
    return src, dst, info, w0


def snapshot_scenario(t, transport, extra=()):
    src, dst, info, w0 = start_snapshot(t, transport, extra)
    threads, uffds = wp_state(src)
    check(threads == 1 and uffds >= 1, "during the snapshot: %d lm-wp-fault threads, %d "
          "userfaultfds (want 1 and >= 1)", threads, uffds)
    # The snapshot's instant is behind us (the pass has begun): w1 is at
    # least the image's count.  The guest now writes on while the snapshot
    # is active.
    w1 = src.stats()["total-writes"]

    def wrote_during():
        st = src.query_migrate().get("status")
        check_eq(st, "active", "snapshot status while the guest writes")
        return src.stats()["total-writes"] >= w1 + WRITES_DURING
    wait_until(wrote_during, 30, "%d guest writes during the snapshot" % WRITES_DURING)
    # query-migrate shows the pass going on, as for any migration.
    wait_until(lambda: src.query_migrate()["ram"]["transferred"] > info["ram"]["transferred"]
               and src.query_migrate()["ram"]["remaining"] < info["ram"]["remaining"], 20,
               "query-migrate to show progress beyond %r" % info["ram"])

    set_params(src, FAST)
    done = wait_status(src, "completed", 60)
    wait_status(dst, "completed", 15)
    log("%s: total-time %s ms, downtime %s ms, transferred %s" %
        (transport, done.get("total-time"), done.get("downtime"),
         done["ram"].get("transferred")))
    check_eq(src.status(), "running", "source run state after the snapshot")
    sts = src.qmp.migration_statuses()
    check("device" not in sts and sts[-1] == "completed",
          "MIGRATION events %s: want active -> completed, no device phase", sts)
    check_writes_increase(src)
    check_eq(wp_state(src), (0, 0), "write-protection left after completion (threads, uffds)")

    wait_runstate(dst, "running", 5)
    v = stop_and_verify(dst)
    check(v["cpu"]["ok"] and v["cpu"]["loaded"], "destination cpu state: %r", v["cpu"])
    image = dst.stats()["total-writes"]
    src.qmp.execute("stop")
    final = src.stats()["total-writes"]
    log("%s: image at %d writes; %d before migrate, %d after the pass began; source at %d" %
        (transport, image, w0, w1, final))
    check(w0 <= image <= w1, "the image holds %d writes, not between the %d before the "
          "snapshot and the %d after it began: it is not the memory of the start",
          image, w0, w1)
    check(final >= w1 + WRITES_DURING > image,
          "the source did not keep writing during the snapshot (%d -> %d)", image, final)
    stop_and_verify(src)


@R.test("snapshot over tcp: the image is the start's memory while the guest kept writing")
def snapshot_tcp(t):
    snapshot_scenario(t, "tcp")


@R.test("snapshot over unix, shared memory (memfd)")
def snapshot_unix_memfd(t):
    snapshot_scenario(t, "unix", extra=("--mem-backend", "memfd"))


@R.test("cancel during a snapshot: the source runs on, write-protection gone")
def cancel(t):
    src, dst, _, _ = start_snapshot(t, "tcp")
    check_eq(wp_state(src)[0], 1, "fault threads during the snapshot")
    src.qmp.execute("migrate_cancel")
    info = wait_status(src, "cancelled", 20)
    check("error-desc" not in info or "cancel" in info["error-desc"],
          "error-desc %r", info.get("error-desc"))
    check_eq(src.status(), "running", "source run state after cancel")
    # No fault thread and no userfaultfd left: no page can be protected.
    check_eq(wp_state(src), (0, 0), "write-protection left after cancel (threads, uffds)")
    check_writes_increase(src)
    stop_and_verify(src)


@R.test("conflicting capabilities are refused by name")
def conflicts(t):
    src = t.guest("src", mem="64M")
    for other in ("postcopy-ram", "multifd", "return-path", "pause-before-switchover",
                  "postcopy-blocktime", "late-block-activate", "mapped-ram"):
        e = src.qmp.expect_error("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": True},
            {"capability": other, "state": True}]})
        desc = e.desc
        check("Background-snapshot is not compatible with %s" % other in desc,
              "with %s: %r", other, desc)
    # Either order: the one set first is named when the other comes.
    set_caps(src, {"multifd": True})
    e = src.qmp.expect_error("migrate-set-capabilities", {"capabilities": [
        {"capability": "background-snapshot", "state": True}]})
    check("not compatible with multifd" in e.desc, "%r", e)
    set_caps(src, {"multifd": False, "background-snapshot": True})
    e = src.qmp.expect_error("migrate-set-capabilities", {"capabilities": [
        {"capability": "postcopy-ram", "state": True}]})
    check("not compatible with postcopy-ram" in e.desc, "%r", e)


if __name__ == "__main__":
    R.main()
