"""XBZRLE (issue 14 item 4, digest §5.8): re-dirtied pages sent as deltas
against the source's cache of what it sent.  A guest that rewrites one
word of every page (`--workload sparse`) is migrated over a rate-limited
link, so that several passes happen: the decisions are asserted (pages
went as deltas, the cache missed and hit, nothing overflowed that should
not) and the destination's memory is verified exactly; never durations.
Also: the cache size changes at once during a migration, the pairs QEMU
refuses are refused in its words, XBZRLE stops at the switch to
postcopy, and a corrupt RAM_XBZRLE record fails the destination naming
the page and what was wrong."""

import re
import socket
import struct

import json
import os

from lmtest import (QMPError, Runner, check, check_eq, check_writes_increase, log, migrate, run_cli,
                    set_caps, set_params, stop_and_verify, wait_runstate, wait_status, wait_until)

R = Runner("xbzrle", per_test=120, budget=400)

MEM = "64M"
# 32 MB/s of page dirtying (8192 pages/s, one 8-byte word each) against a
# 24 MB/s link: every pass finds every page dirty again, so without XBZRLE
# the 64 MiB dirty set never fits the 7 MB threshold; with it the third
# pass is a few hundred KB of deltas.
RATE = "32M"
LINK = 24 * 1000 * 1000
XB_FIELDS = ("cache-size", "bytes", "pages", "cache-miss", "cache-miss-rate", "encoding-rate",
             "overflow")


def sparse_source(t, name="src", rate=RATE):
    return t.guest(name, mem=MEM, workload="sparse", dirty_rate=rate, fill="random", seed=3)


@R.test("sparse workload over a 24 MB/s link: re-dirtied pages go as deltas, memory exact")
def sparse_link(t):
    src = sparse_source(t)
    # The same workload on the destination: it goes on from the migrated
    # versions once it runs.
    dst = t.dest("dst", transport="tcp", mem=MEM, workload="sparse", dirty_rate=RATE, seed=3)
    set_caps(src, {"xbzrle": True, "events": True})
    set_params(src, {"max-bandwidth": LINK, "downtime-limit": 300})
    check_writes_increase(src)
    migrate(src, dst)
    info = wait_status(src, "completed", 90)
    xb = info.get("xbzrle-cache")
    log("xbzrle-cache %r; dirty-sync-count %s, transferred %s, normal %s, total-time %s ms, "
        "downtime %s ms" % (xb, info["ram"]["dirty-sync-count"], info["ram"]["transferred"],
                            info["ram"]["normal"], info.get("total-time"), info.get("downtime")))
    check(isinstance(xb, dict), "query-migrate has no xbzrle-cache: %r", info)
    for f in XB_FIELDS:
        check(f in xb, "xbzrle-cache lacks %s: %r", f, xb)
    check_eq(xb["cache-size"], 64 << 20, "xbzrle-cache cache-size")
    check(info["ram"]["dirty-sync-count"] >= 3, "only %d passes", info["ram"]["dirty-sync-count"])
    check(xb["pages"] > 1000, "only %d pages went as deltas", xb["pages"])
    check(xb["cache-miss"] > 0, "no cache miss: the second pass should fill the cache")
    # A delta of one word: 8 + 16 + 3..10 bytes on the wire.
    per_page = (xb["bytes"] - xb["overflow"] * 4096) / xb["pages"]
    check(per_page <= 34, "%.1f bytes per delta, expected <= 34 for one changed word", per_page)
    # Without XBZRLE every pass is 64 MiB again and the migration never
    # converges; with it, passes 1 and 2 are whole (the cache fills in the
    # second) and the others are deltas.
    check(info["ram"]["transferred"] < 3 * 64 * 2**20,
          "transferred %d bytes: the deltas did not replace whole pages", info["ram"]["transferred"])
    wait_status(dst, "completed", 30)
    wait_runstate(dst, "running", 10)
    check_writes_increase(dst)
    stop_and_verify(dst)
    check("xbzrle-cache" not in dst.query_migrate(), "the destination reports an xbzrle-cache")


@R.test("xbzrle-cache-size set during a migration takes effect at once")
def resize_live(t):
    src = sparse_source(t)
    dst = t.dest("dst", transport="tcp", mem=MEM, workload="idle")
    set_caps(src, {"xbzrle": True})
    set_params(src, {"max-bandwidth": 4 * 1000 * 1000})
    migrate(src, dst)
    wait_status(src, "active", 20)
    set_params(src, {"xbzrle-cache-size": 1 << 20})
    check_eq(src.qmp.execute("query-migrate-parameters")["xbzrle-cache-size"], 1 << 20,
             "xbzrle-cache-size")
    info = wait_until(lambda: (lambda i: i if (i.get("xbzrle-cache") or {}).get("cache-size") ==
                               1 << 20 else None)(src.query_migrate()), 20,
                      "the cache to be 1 MiB")
    check_eq(info["status"], "active", "status while resized")
    # A size that is not a power of two is refused, as QEMU does.
    e = src.qmp.expect_error("migrate-set-parameters", {"xbzrle-cache-size": 3 << 20})
    check("power of two" in e.desc, "refusal %r", e.desc)
    set_params(src, {"max-bandwidth": 0})
    info = wait_status(src, "completed", 90)
    log("after the resize: %r" % info.get("xbzrle-cache"))
    check_eq(info["xbzrle-cache"]["cache-size"], 1 << 20, "cache-size at completion")
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


@R.test("the pairs QEMU refuses are refused in its words; postcopy-ram is accepted")
def refusals(t):
    g = t.guest("g", mem="16M")
    for other, msg in (("multifd", "Multifd is not compatible with xbzrle"),
                       ("mapped-ram", "Mapped-ram migration is incompatible with xbzrle"),
                       ("background-snapshot", "Background-snapshot is not compatible with xbzrle")):
        e = g.qmp.expect_error("migrate-set-capabilities", {"capabilities": [
            {"capability": "xbzrle", "state": True}, {"capability": other, "state": True}]})
        check_eq(e.desc, msg, "xbzrle with %s" % other)
    set_caps(g, {"xbzrle": True, "postcopy-ram": True})
    e = g.qmp.expect_error("migrate-set-capabilities",
                           {"capabilities": [{"capability": "multifd", "state": True}]})
    check_eq(e.desc, "Multifd is not compatible with xbzrle", "multifd after xbzrle")


@R.test("postcopy after XBZRLE passes: deltas stop at the switch, memory exact")
def postcopy_after(t):
    # downtime-limit 0: precopy cannot converge while the guest writes (the
    # threshold is 0 bytes), unless a sync finds nothing dirty; then the
    # attempt is repeated with fresh guests, at most 5 times.  Once the
    # switch is asked for, the little left may go in postcopy within
    # milliseconds, before a poll sees postcopy-active: postcopy-bytes > 0
    # is what says the switch happened.  No delta after it: the
    # destination refuses RAM_XBZRLE after POSTCOPY_RUN (it would fail),
    # and when postcopy-active was seen, the count stays as it was.
    for attempt in range(1, 6):
        src = sparse_source(t, "src%d" % attempt, rate="0")
        dst = t.dest("dst%d" % attempt, transport="tcp", mem=MEM, workload="idle", defer=True,
                      caps={"postcopy-ram": True, "events": True})
        set_caps(src, {"xbzrle": True, "postcopy-ram": True, "events": True})
        set_params(src, {"max-bandwidth": LINK, "downtime-limit": 0})
        migrate(src, dst)

        def deltas():
            info = src.query_migrate()
            if info.get("status") == "completed":
                return True
            check(info.get("status") in ("setup", "active"), "source status %s before the switch",
                  info.get("status"))
            return (info.get("xbzrle-cache") or {}).get("pages", 0) > 100

        wait_until(deltas, 90, "XBZRLE pages before the switch")
        pages_at_switch = None
        if src.query_migrate().get("status") != "completed":
            try:
                src.qmp.execute("migrate-start-postcopy")
            except QMPError:
                pass  # completed meanwhile: postcopy-bytes below says how
            info = wait_status(src, ("postcopy-active", "completed"), 30,
                               fail_on=("failed", "cancelled"))
            if info.get("status") == "postcopy-active":
                pages_at_switch = info["xbzrle-cache"]["pages"]
        info = wait_status(src, "completed", 90)
        if info["ram"]["postcopy-bytes"] > 0:
            break
        log("attempt %d: precopy completed before the switch (a sync found nothing dirty)" %
            attempt)
    else:
        check(False, "precopy completed before the switch in 5 attempts")
    log("postcopy: %r, postcopy-bytes %s" % (info.get("xbzrle-cache"),
                                             info["ram"]["postcopy-bytes"]))
    check(info["xbzrle-cache"]["pages"] > 100, "XBZRLE pages before the switch")
    if pages_at_switch is not None:
        check_eq(info["xbzrle-cache"]["pages"], pages_at_switch, "XBZRLE pages after the switch")
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


REC_RAM_BLOCKS, REC_RAM_PAGES, REC_RAM_XBZRLE = 0x10, 0x11, 0x15


def rec(typ, payload=b""):
    return struct.pack("<BBHI", typ, 0, 0, len(payload)) + payload


def hello():
    return (struct.pack("<IHBBHHI", 0x47494D4C, 1, 1, 0, 0, 0, 4096) + b"\x11" * 16 +
            struct.pack("<QQ", 0, 0))


def blocks(mem_bytes):
    npages = mem_bytes // 4096
    r0 = npages * 3 // 4

    def blk(name, length):
        return bytes([len(name)]) + name + struct.pack("<IQ", 4096, length)

    return rec(REC_RAM_BLOCKS, struct.pack("<I", 3) + blk(b"ram0", r0 * 4096) +
               blk(b"ram1", (npages - r0) * 4096) +
               blk(b"ledger", (npages * 8 + 4095) // 4096 * 4096))


# name, encoding of page 5 of ram1 (after a whole copy of it), error-desc
CORRUPT = [
    ("past the page", bytes([0x81, 0x20, 1, 9]),
     r"RAM_XBZRLE: block 'ram1' page 5: xbzrle: unchanged run of 4097 bytes at page offset 0 "
     r"goes past the page"),
    ("truncated changed run", bytes([5, 4, 1, 2]),
     r"RAM_XBZRLE: block 'ram1' page 5: xbzrle: changed run of 4 bytes at byte 2, only 2 bytes"),
    ("changed run of 0", bytes([5, 0, 1]),
     r"RAM_XBZRLE: block 'ram1' page 5: xbzrle: changed run of 0 bytes"),
]


def corrupt_case(t, name, enc, pattern):
    d = t.dest("dst", transport="tcp", mem="16M", defer=True, caps={"events": True})
    m = re.match(r"tcp:([\d.]+):(\d+)$", d.listen_uri())
    check(m, "listening URI %r", d.listen_uri())
    with socket.create_connection((m.group(1), int(m.group(2))), timeout=10) as s:
        s.sendall(hello())
        answer = s.recv(48, socket.MSG_WAITALL)
        check(len(answer) == 48 and answer[7] == 1, "HELLO answer %r, want an ACCEPT", answer)
        page = rec(REC_RAM_PAGES, struct.pack("<IIQ", 1, 1, 5) + bytes(range(256)) * 16)
        delta = rec(REC_RAM_XBZRLE, struct.pack("<IHHQ", 1, len(enc), 0, 5) + enc)
        s.sendall(blocks(16 << 20) + page + delta)
        info = wait_status(d, "failed", 20, fail_on=("completed", "cancelled"))
    desc = info.get("error-desc") or ""
    log("%s: destination error-desc %r" % (name, desc))
    check(re.search(pattern, desc), "error-desc %r does not match /%s/", desc, pattern)
    check_eq(d.status(), "inmigrate", "destination run state after the refused stream")


for _name, _enc, _pat in CORRUPT:
    R.add("a corrupt RAM_XBZRLE record fails the destination: %s" % _name, corrupt_case, _name,
          _enc, _pat)

@R.test("livemig inspect counts RAM_XBZRLE pages and names a corrupt one with its offset")
def inspect_stream(t):
    page = rec(REC_RAM_PAGES, struct.pack("<IIQ", 1, 1, 5) + bytes(4096))
    enc = bytes([8, 8]) + bytes(range(1, 9))
    good = rec(REC_RAM_XBZRLE, struct.pack("<IHHQ", 1, len(enc), 0, 5) + enc)
    path = os.path.join(t.tmpdir, "x.stream")
    with open(path, "wb") as f:
        f.write(hello() + blocks(16 << 20) + page + good + good + rec(0x30))
    rc, out, err = run_cli(["inspect", "--json", path])
    check_eq(rc, 0, "inspect exit code (stderr %r)" % err)
    b = json.loads(out)["files"][0]["blocks"][1]
    check_eq((b["xbzrle_pages"], b["xbzrle_bytes"]), (2, 20), "ram1's XBZRLE pages and bytes")
    bad = rec(REC_RAM_XBZRLE, struct.pack("<IHHQ", 1, 4, 0, 5) + bytes([0x81, 0x20, 1, 9]))
    with open(path, "wb") as f:
        f.write(hello() + blocks(16 << 20) + page + bad + rec(0x30))
    rc, out, err = run_cli(["inspect", path])
    log("inspect: %r" % (out + err).strip().splitlines()[-1:])
    check_eq(rc, 1, "inspect exit code on a corrupt delta")
    check("unchanged run of 4097 bytes" in out + err and "offset" in out + err,
          "inspect output %r does not name the corrupt delta and its offset", out + err)


if __name__ == "__main__":
    R.main()
