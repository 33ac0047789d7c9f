"""Snapshots to files (issue 11): file:PATH[,offset=N] for migrate and
migrate-incoming, the ordinary stream written sequentially; a stopped and a
running guest saved and restored into a fresh destination, memory verified;
the bytes before offset= left untouched; the capabilities that need a
return path refused with a clear error."""

import os
import struct

from lmtest import (Runner, TestFailure, check, check_eq, log, set_caps, set_params,
                    stop_and_verify, wait_status, wait_until)

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


# mapped-ram: (name, multifd channels or 0, direct-io, guest running).
MAPPED = [
    ("stopped", 0, False, False),
    ("stopped/multifd-1", 1, False, False),
    ("stopped/multifd-2", 2, False, False),
    ("stopped/multifd-4", 4, False, False),
    ("running/multifd-2", 2, False, True),
    ("stopped/direct-io", 0, True, False),
    ("stopped/multifd-4/direct-io", 4, True, False),
    ("running/multifd-4/direct-io", 4, True, True),
]


def mapped_caps(nch):
    caps = {"mapped-ram": True}
    params = {}
    if nch:
        caps["multifd"] = True
        params["multifd-channels"] = nch
    return caps, params


def mapped(t, nch, direct, live):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random", dirty_rate="64M")
    if not live:
        src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    caps, params = mapped_caps(nch)
    params["direct-io"] = direct
    uri = save(src, path, caps=caps, params=params)
    total = src.query_migrate()["ram"]["total"]
    size = os.path.getsize(path)
    # Zero pages are holes and a page saved again overwrites its place:
    # the file never grows past the RAM (plus the layout's 1 MiB alignment
    # and the device sections).
    check(size <= total * 1.01 + (2 << 20),
          "file of %d bytes for %d bytes of RAM (more than 1 %% over)", size, total)
    # Restored with another channel count than saved (the readers are the
    # destination's own).
    caps, params = mapped_caps(0 if nch == 0 else 4 - nch if nch < 4 else 1)
    params["direct-io"] = direct
    restore(t, uri, caps=caps, params=params)


for name, nch, direct, live in MAPPED:
    R.add("mapped-ram/" + name, mapped, nch, direct, live)


@R.test("mapped-ram/running guest stays bounded")
def bounded(t):
    """A live save of a guest rewriting its memory fast, several dirty
    rounds: pages overwrite their places, the file stays <= RAM + 1 %."""
    mem = "256M"
    src = t.guest("src", mem=mem, fill="random", seed=1, workload="random", dirty_rate="256M")
    path = os.path.join(t.tmpdir, "snap.lm")
    caps, params = mapped_caps(2)
    # Throttled at first so that several rounds rewrite pages, then let go.
    params.update({"max-bandwidth": 64 << 20, "downtime-limit": 1})
    set_caps(src, dict({"events": True}, **caps))
    set_params(src, params)
    src.qmp.execute("migrate", {"uri": "file:" + path})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("dirty-sync-count", 0) >= 3,
               60, "three dirty rounds")
    set_params(src, {"max-bandwidth": 0, "downtime-limit": 300})
    info = wait_status(src, "completed", 60)
    total = info["ram"]["total"]
    size = os.path.getsize(path)
    log("live save: %d bytes of file for %d of RAM, %d rounds, %d bytes written" %
        (size, total, info["ram"]["dirty-sync-count"], info["ram"]["transferred"]))
    check(info["ram"]["transferred"] > total, "the pages were not saved more than once")
    check(size <= total * 1.01, "file of %d bytes for %d bytes of RAM (more than 1 %% over)",
          size, total)
    caps, params = mapped_caps(4)
    restore(t, "file:" + path, caps=caps, params=params, mem=mem)


def takes_o_direct(path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    return True


@R.test("mapped-ram/direct-io on tmpfs")
def direct_tmpfs(t):
    """tmpfs refused O_DIRECT until Linux 6.6 (it takes it since): where it
    refuses, the save fails with an error naming tmpfs; where it takes it,
    the save works (the refusal's message is unit-tested on procfs)."""
    if not os.path.isdir("/dev/shm"):
        return
    src = t.guest("src", mem="16M", fill="random", seed=1)
    src.qmp.execute("stop")
    path = "/dev/shm/lmt-%d-snap.lm" % os.getpid()
    try:
        caps, params = mapped_caps(2)
        params["direct-io"] = True
        set_caps(src, caps)
        set_params(src, params)
        if takes_o_direct(path):
            log("tmpfs takes O_DIRECT on this kernel: the save must work")
            save(src, path, caps=caps, params=params)
            restore(t, "file:" + path, caps=caps, params=params, mem="16M")
            return
        src.qmp.execute("migrate", {"uri": "file:" + path})
        info = wait_status(src, "failed", 30, fail_on=())
        desc = info.get("error-desc", "")
        check("tmpfs" in desc and "O_DIRECT" in desc and path in desc,
              "error-desc does not name tmpfs, O_DIRECT and the file: %r", desc)
        check_eq(src.status(), "paused", "source run state after the failed save")
    finally:
        if os.path.exists(path):
            os.unlink(path)


@R.test("mapped-ram/capability checks")
def mapped_checks(t):
    src = t.guest("src", mem="16M", fill="random", seed=1)
    set_caps(src, {"mapped-ram": True})
    e = src.qmp.expect_error("migrate", {"uri": "tcp:127.0.0.1:1"})
    check("mapped-ram" in str(e) and "file:" in str(e), "mapped-ram over tcp: %s", e)
    e = src.qmp.expect_error("migrate-set-capabilities", {"capabilities": [
        {"capability": "postcopy-ram", "state": True}]})
    check("postcopy" in str(e), "mapped-ram with postcopy: %s", e)
    set_caps(src, {"mapped-ram": False, "multifd": True})
    e = src.qmp.expect_error("migrate", {"uri": "file:" + os.path.join(t.tmpdir, "x")})
    check("mapped-ram" in str(e), "multifd on a file without mapped-ram: %s", e)
    set_caps(src, {"multifd": False})
    set_params(src, {"direct-io": True})
    e = src.qmp.expect_error("migrate", {"uri": "file:" + os.path.join(t.tmpdir, "x")})
    check("direct-io" in str(e) and "mapped-ram" in str(e), "direct-io alone: %s", e)
    check_eq(src.status(), "running", "source still runs after the refusals")


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


# ------------------------------------------------------------ bad input

def find_layout(data):
    """Offset of the MAPPED_RAM payload in a saved file, and its fields."""
    off = 48  # HELLO
    while off + 8 <= len(data):
        typ, ln = data[off], struct.unpack_from("<I", data, off + 4)[0]
        if typ == 0x14:
            p = off + 8
            ver, n, rend, resume = struct.unpack_from("<IIQQ", data, p)
            blocks = [struct.unpack_from("<IIQQQ", data, p + 24 + 32 * i) for i in range(n)]
            return p, {"n": n, "record_end": rend, "resume": resume, "blocks": blocks}
        off += 8 + ln
    raise TestFailure("no MAPPED_RAM record in the saved file")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return "file:" + path


@R.test("bad input/each named, destination stays up", timeout=180)
def bad_input(t):
    src = t.guest("src", mem="16M", fill="random", seed=1)
    src.qmp.execute("stop")
    good = os.path.join(t.tmpdir, "good.lm")
    caps, params = mapped_caps(2)
    save(src, good, caps=caps, params=params)
    with open(good, "rb") as f:
        data = bytearray(f.read())
    lp, lay = find_layout(data)
    d = t.tmpdir
    cases = []
    # truncated inside the page regions, and inside the device sections
    cases.append(("truncated regions", write(os.path.join(d, "t1"), data[:lay["resume"] - 4096]),
                  "truncated"))
    cases.append(("truncated stream", write(os.path.join(d, "t2"), data[:len(data) - 3]),
                  "truncated"))
    # a corrupt header: the record says it ends elsewhere
    bad = bytearray(data)
    struct.pack_into("<Q", bad, lp + 8, lay["record_end"] - 8)
    cases.append(("corrupt header", write(os.path.join(d, "h"), bad), "corrupt header"))
    # offsets past the end: the regions claim more than the file holds
    bad = bytearray(data)
    struct.pack_into("<Q", bad, lp + 16, len(data) + (64 << 20))
    cases.append(("offsets past the end", write(os.path.join(d, "o"), bad),
                  "past the end of the file"))
    # a page region that is not 1 MiB-aligned
    bad = bytearray(data)
    struct.pack_into("<Q", bad, lp + 24 + 24, lay["blocks"][0][4] + 4096)
    cases.append(("misaligned pages", write(os.path.join(d, "a"), bad), "not a multiple of 1 MiB"))
    # a corrupt bitmap: one bit flipped
    bad = bytearray(data)
    bad[lay["blocks"][0][3] + 5] ^= 0x10
    cases.append(("corrupt bitmap", write(os.path.join(d, "b"), bad), "corrupt bitmap"))
    # other versions: the stream's and the layout's
    bad = bytearray(data)
    struct.pack_into("<H", bad, 4, 9)
    cases.append(("stream version", write(os.path.join(d, "v1"), bad), "version 9 not supported"))
    bad = bytearray(data)
    struct.pack_into("<I", bad, lp, 7)
    cases.append(("layout version", write(os.path.join(d, "v2"), bad), "version 7 not supported"))
    # not ours at all
    cases.append(("not ours", write(os.path.join(d, "n"), os.urandom(1 << 20)),
                  "not a livemig migration stream"))
    cases.append(("too short", write(os.path.join(d, "s"), b"LMIG"), "too short"))

    dst = t.guest("dst", mem="16M", seed=2, incoming="defer")
    set_caps(dst, dict({"events": True}, **caps))
    set_params(dst, params)
    for name, uri, needle in cases:
        dst.qmp.execute("migrate-incoming", {"uri": uri})
        info = wait_status(dst, "failed", 30, fail_on=("completed",))
        desc = info.get("error-desc", "")
        log("%s: %s" % (name, desc))
        check(needle in desc and uri[5:] in desc, "%s: error-desc %r lacks %r or the file", name,
              desc, needle)
        check_eq(dst.status(), "inmigrate", "destination run state after a bad file")
    # an offset past the end is refused at once
    e = dst.qmp.expect_error("migrate-incoming", {"uri": "file:%s,offset=%d" % (good, 1 << 40)})
    check("past the end" in str(e), "offset past the end: %s", e)
    # a file saved without mapped-ram, to a destination that wants it
    plain = os.path.join(d, "plain.lm")
    src2 = t.guest("src2", mem="16M", fill="random", seed=1)
    save(src2, plain)
    dst.qmp.execute("migrate-incoming", {"uri": "file:" + plain})
    info = wait_status(dst, "failed", 30, fail_on=("completed",))
    check("mapped-ram" in info.get("error-desc", ""), "capability mismatch: %r",
          info.get("error-desc"))
    # and the destination still takes a good file
    dst.qmp.execute("migrate-incoming", {"uri": "file:" + good})
    wait_status(dst, "completed", 60)
    stop_and_verify(dst)


@R.test("bad input/block table not matching the guest")
def bad_table(t):
    src = t.guest("src", mem="16M", fill="random", seed=1)
    src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    caps, params = mapped_caps(0)
    save(src, path, caps=caps)
    dst = t.guest("dst", mem="32M", seed=2, incoming="defer")
    set_caps(dst, dict({"events": True}, **caps))
    dst.qmp.execute("migrate-incoming", {"uri": "file:" + path})
    info = wait_status(dst, "failed", 30, fail_on=("completed",))
    desc = info.get("error-desc", "")
    log("block table: %s" % desc)
    check("ram" in desc.lower() and path in desc, "block table mismatch: %r", desc)
    check_eq(dst.status(), "inmigrate", "destination run state after a bad file")


if __name__ == "__main__":
    R.main()
