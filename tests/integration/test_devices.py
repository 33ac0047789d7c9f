"""Devices and switchover-ack (docs/devices.md; seeds 001 and 003).

Real source and destination guests with the non-iterable "cpu" device and
the VFIO-like "bulk" device:
- the switch waits for the destination's ack while the guest runs (event
  order and timestamps), and the ack comes at once when no device takes part;
- seed 003's traps: the capability on one side only fails at setup with a
  message naming the capability; a device that supports the ack on one side
  only falls back and the migration completes;
- seed 001: RAM dirtying faster than a low max-bandwidth does not starve the
  bulk device, whose initial data gets through and is acked; raising the
  bandwidth then lets the migration converge;
- a device that fails to load, and a device state newer than the
  destination's, fail the migration with the device named while the source
  keeps running.
Every completed migration is verified on the destination: RAM, cpu state
and bulk device memory."""

from lmtest import (Runner, check, check_eq, check_writes_increase, log, migrate, set_caps,
                    set_params, stop_and_verify, wait_converged, wait_runstate, wait_status,
                    wait_until)

R = Runner("devices", per_test=45, budget=240)

MEM = "64M"
ACK_CAPS = {"events": True, "return-path": True, "switchover-ack": True}
NO_ACK_CAPS = {"events": True}


def bulk(size="8M", initial="4M", rate="1M", ack="on", version=1):
    return ("--device", "bulk,size=%s,initial=%s,dirty-rate=%s,ack=%s,version=%d" %
            (size, initial, rate, ack, version))


def pair(t, src_extra=(), dst_extra=(), src_caps=ACK_CAPS, dst_caps=ACK_CAPS,
         dirty_rate="8M", threads=1):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate=dirty_rate, threads=threads,
                  fill="random", seed=21, extra=src_extra)
    dst = t.dest("dst", transport="tcp", defer=True, caps=dst_caps, mem=MEM,
                 workload="random", dirty_rate=dirty_rate, threads=threads, extra=dst_extra)
    set_caps(src, src_caps)
    return src, dst


def events(g):
    return g.qmp.drain_events()


def ts(ev):
    t = ev["timestamp"]
    return t["seconds"] + t["microseconds"] / 1e6


def first(evs, name, status=None):
    for i, e in enumerate(evs):
        if e.get("event") == name and (status is None or e["data"].get("status") == status):
            return i, e
    return None, None


def devices(info):
    return {d["name"]: d for d in info.get("x-devices", [])}


def verify_dest(src, dst):
    """After completion: source paused for good, destination runs; all of
    the destination's state checks out, cpu state loaded."""
    check_eq(src.status(), "postmigrate", "source run state")
    wait_runstate(dst, "running", 5)
    check_writes_increase(dst)
    v = stop_and_verify(dst)
    check(v["cpu"]["ok"] and v["cpu"]["loaded"], "destination cpu state: %r", v["cpu"])
    for d in v["devices"]:
        check(d["ok"], "destination bulk device %d: %r", d["instance"], d)
    return v


def check_source_survives(src, want_in_error):
    info = wait_status(src, "failed", 20, fail_on=("completed", "cancelled"))
    err = info.get("error-desc", "")
    log("source error: %s" % err)
    for w in want_in_error:
        check(w in err, "source error-desc %r does not mention %r", err, w)
    wait_runstate(src, "running", 5)
    check_writes_increase(src)
    # The source's own state is intact after the failed attempt.
    src.qmp.execute("stop")
    v = src.verify()
    check(v.get("ok") is True, "source x-guest-verify after the failure: %r", v)
    src.qmp.execute("cont")
    return err


@R.test("switchover waits for the ack while the guest runs")
def ack_gates_switchover(t):
    # 16 MiB of initial device data at half of 10 MB/s takes ~3 s to
    # arrive, while avail-switchover-bandwidth makes the switchover
    # threshold huge: without the ack gate the source would switch within
    # its few adaptive extra rounds (~1 s), before the ack.
    src, dst = pair(t, bulk("16M", "16M", "256K"), bulk("16M", "16M", "256K"))
    set_params(src, {"max-bandwidth": 10 * 1000 * 1000, "downtime-limit": 2000,
                     "avail-switchover-bandwidth": 10 * 1000 * 1000 * 1000})
    migrate(src, dst)
    wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    sev, dev_ = events(src), events(dst)
    i_ack, ack = first(sev, "X_MIGRATION_SWITCHOVER_ACK")
    i_dev, device = first(sev, "MIGRATION", "device")
    i_stop, stop = first(sev, "STOP")
    check(ack is not None, "source: no X_MIGRATION_SWITCHOVER_ACK (events %s)",
          [e["event"] for e in sev])
    check(device is not None and stop is not None, "source: no device status / STOP event")
    check(i_ack < i_dev and i_ack < i_stop,
          "source events out of order: ack #%s, device #%s, STOP #%s", i_ack, i_dev, i_stop)
    check(ts(ack) <= ts(stop), "ack at %.6f after STOP at %.6f", ts(ack), ts(stop))
    _, dack = first(dev_, "X_MIGRATION_SWITCHOVER_ACK")
    check(dack is not None, "destination: no X_MIGRATION_SWITCHOVER_ACK event")
    check(ts(dack) <= ts(stop), "destination acked at %.6f, after the source stopped at %.6f",
          ts(dack), ts(stop))
    log("ack %.3f s before the stop" % (ts(stop) - ts(ack)))
    sd = devices(src.query_migrate())
    check_eq(sd["bulk"]["ack"], "acked", "source x-devices bulk ack")
    check(sd["bulk"]["bytes"] >= 16 << 20, "bulk sent only %d bytes", sd["bulk"]["bytes"])
    check_eq(sd["cpu"]["ack"], "none", "source x-devices cpu ack")
    check_eq(devices(dst.query_migrate())["bulk"]["ack"], "acked", "destination bulk ack")
    check(dst.stats()["devices"][0]["initial-loaded"], "destination: initial data not loaded")
    verify_dest(src, dst)


@R.test("immediate ack when no device takes part")
def immediate_ack(t):
    src, dst = pair(t)
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    sev = events(src)
    i_ack, ack = first(sev, "X_MIGRATION_SWITCHOVER_ACK")
    i_dev, _ = first(sev, "MIGRATION", "device")
    check(ack is not None and i_ack < i_dev, "source events %s: want the ack before device",
          [e["event"] for e in sev])
    sd = devices(src.query_migrate())
    check_eq(sd["cpu"]["ack"], "none", "cpu ack")
    check(sd["cpu"]["bytes"] > 0, "cpu state not sent: %r", sd["cpu"])
    verify_dest(src, dst)


CAP_MISMATCH = [
    {"name": "source only", "src": ACK_CAPS, "dst": NO_ACK_CAPS,
     "want": ["switchover-ack", "is on on the source but off on the destination"]},
    {"name": "destination only", "src": NO_ACK_CAPS, "dst": ACK_CAPS,
     "want": ["switchover-ack", "is off on the source but on on the destination"]},
]


def cap_mismatch(t, sc):
    src, dst = pair(t, bulk(), bulk(), src_caps=sc["src"], dst_caps=sc["dst"])
    migrate(src, dst)
    check_source_survives(src, sc["want"])
    dinfo = wait_status(dst, "failed", 10, fail_on=("completed",))
    check("switchover-ack" in dinfo.get("error-desc", ""),
          "destination error-desc %r", dinfo.get("error-desc"))
    check(dst.alive(), "destination exited")


for sc in CAP_MISMATCH:
    R.add("switchover-ack capability on the %s fails at setup" % sc["name"], cap_mismatch, sc)


DEVICE_SKEW = [
    # An older source device: the destination must not wait for it.
    {"name": "destination only", "src": "off", "dst": "on", "src_ack": "none",
     "dst_ack": "fallback"},
    # An older destination device: it declines, the source stops waiting.
    {"name": "source only", "src": "on", "dst": "off", "src_ack": "fallback",
     "dst_ack": "fallback"},
]


def device_skew(t, sc):
    src, dst = pair(t, bulk(ack=sc["src"]), bulk(ack=sc["dst"]))
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    _, ack = first(events(src), "X_MIGRATION_SWITCHOVER_ACK")
    check(ack is not None, "no switchover ack on the source")
    check_eq(devices(src.query_migrate())["bulk"]["ack"], sc["src_ack"], "source bulk ack")
    check_eq(devices(dst.query_migrate())["bulk"]["ack"], sc["dst_ack"],
             "destination bulk ack")
    verify_dest(src, dst)


for sc in DEVICE_SKEW:
    R.add("device ack support on the %s falls back" % sc["name"], device_skew, sc)


@R.test("seed 001: fast RAM under a low max-bandwidth does not starve the device")
def no_starvation(t):
    # RAM dirties 32 MB/s, the link is held to 2 MB/s: RAM never finishes a
    # pass.  The device's 1 MiB of initial data still gets its share of
    # every window, so the destination acks while the migration stays
    # active; raising the bandwidth then lets it converge.
    src, dst = pair(t, bulk("4M", "1M", "64K"), bulk("4M", "1M", "64K"), dirty_rate="32M")
    set_params(src, {"max-bandwidth": 2 * 1000 * 1000, "downtime-limit": 300})
    migrate(src, dst)
    src.qmp.wait_event("X_MIGRATION_SWITCHOVER_ACK", timeout=25)
    info = src.query_migrate()
    check_eq(info.get("status"), "active", "status when the ack arrived")
    check(info["ram"]["remaining"] > 1 << 20, "RAM is nearly done (%d left): the scenario "
          "did not make RAM the fast dirtier", info["ram"]["remaining"])
    sd = devices(info)
    check_eq(sd["bulk"]["ack"], "acked", "bulk ack")
    log("at the ack: RAM sent %d, bulk sent %d" % (info["ram"]["transferred"],
                                                   sd["bulk"]["bytes"]))
    set_params(src, {"max-bandwidth": 0})
    wait_converged(src, "no-starvation")
    wait_status(dst, "completed", 10)
    verify_dest(src, dst)


LOAD_REFUSED = [
    {"name": "device load failure", "src": bulk("8M"), "dst": bulk("4M"),
     "want": ["device 'bulk' instance 0", "bytes of memory"]},
    {"name": "newer device version", "src": bulk(version=2), "dst": bulk(version=1),
     "want": ["device 'bulk' instance 0", "version 2", "newer than this destination's "
              "version 1"]},
]


def load_refused(t, sc):
    src, dst = pair(t, sc["src"], sc["dst"])
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    check_source_survives(src, sc["want"])
    dinfo = wait_status(dst, "failed", 10, fail_on=("completed",))
    check(sc["want"][0] in dinfo.get("error-desc", ""),
          "destination error-desc %r", dinfo.get("error-desc"))
    check(dst.alive() and dst.status() != "running", "destination state after the failure")


for sc in LOAD_REFUSED:
    R.add("%s fails the migration, source keeps running" % sc["name"], load_refused, sc)


if __name__ == "__main__":
    R.main()
