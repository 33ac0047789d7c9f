"""Snapshots to files (issue 11): file:PATH[,offset=N] for migrate and
migrate-incoming, the ordinary stream written sequentially; a stopped and a
running guest saved and restored into a fresh destination, memory verified;
the bytes before offset= left untouched; the capabilities that need a
return path refused with a clear error."""

import os

from lmtest import (Runner, check, check_eq, log, set_caps, set_params, stop_and_verify,
                    wait_status)

R = Runner("file", per_test=90, budget=600)

MEM = "128M"


def save(src, path, offset=None, caps=None, params=None):
    uri = "file:" + path + ("" if offset is None else ",offset=%d" % offset)
    set_caps(src, dict({"events": True}, **(caps or {})))
    set_params(src, dict({"max-bandwidth": 0}, **(params or {})))
    src.qmp.execute("migrate", {"uri": uri})
    info = wait_status(src, "completed", 60)
    log("saved to %s: %d bytes on disk (%d apparent), transferred %d" %
        (uri, os.stat(path).st_blocks * 512, os.path.getsize(path),
         info.get("ram", {}).get("transferred", 0)))
    check_eq(src.status(), "postmigrate", "source run state after saving")
    return uri


def restore(t, uri, name="dst", caps=None, params=None, mem=MEM):
    dst = t.guest(name, mem=mem, seed=2, incoming="defer")
    set_caps(dst, dict({"events": True}, **(caps or {})))
    if params:
        set_params(dst, params)
    dst.qmp.execute("migrate-incoming", {"uri": uri})
    wait_status(dst, "completed", 60)
    check_eq(dst.status(), "running", "destination run state after restoring")
    stop_and_verify(dst)
    return dst


@R.test("file/stopped guest")
def stopped(t):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random",
                  dirty_rate="64M")
    src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    uri = save(src, path)
    restore(t, uri)


@R.test("file/running guest")
def running(t):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random",
                  dirty_rate="64M")
    path = os.path.join(t.tmpdir, "snap.lm")
    uri = save(src, path)
    restore(t, uri)


@R.test("file/offset")
def offset(t):
    """QEMU's file_check_offset_region: the bytes before the offset stay as
    they were; the stream restores from there; a longer old file is cut."""
    path = os.path.join(t.tmpdir, "snap.lm")
    head = bytes((i * 7) & 0xff for i in range(8192))
    with open(path, "wb") as f:
        f.write(head + b"\xee" * (64 << 20))  # an old, longer tail
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random",
                  dirty_rate="64M")
    uri = save(src, path, offset=len(head))
    with open(path, "rb") as f:
        check(f.read(len(head)) == head, "the bytes before offset= changed")
        nxt = f.read(4)
    check(nxt != b"\xee" * 4, "the stream does not start at the offset")
    restore(t, uri)


@R.test("file/return-path capabilities refused")
def refused(t):
    src = t.guest("src", mem="16M", fill="random", seed=1)
    path = os.path.join(t.tmpdir, "snap.lm")
    for cap in ("postcopy-ram", "switchover-ack", "return-path"):
        caps = {cap: True}
        if cap == "switchover-ack":
            caps["return-path"] = True
        set_caps(src, caps)
        e = src.qmp.expect_error("migrate", {"uri": "file:" + path})
        check("return path" in str(e) and "file:" in str(e) and cap in str(e),
              "%s with a file: URI: %s", cap, e)
        set_caps(src, {c: False for c in caps})
    check_eq(src.status(), "running", "source still runs after the refusals")


if __name__ == "__main__":
    R.main()
