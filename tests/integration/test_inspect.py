"""`livemig inspect` on real migration streams (docs/format.md).

Each migration goes through lmproxy with record=DIR, which captures every
connection as `socat` in the middle would (chan-N.to-dst: the source's
bytes, chan-N.to-src: the destination's).  inspect must find every capture
valid, and its counts must be the source's own figures from query-migrate:
pages sent with data (ram.normal), zero pages (ram.duplicate) and bytes
(ram.transferred); with the guest stopped, every page of every block is
sent exactly once.  Scenarios: a stopped guest, a running guest with the
bulk device and switchover-ack, multifd with zstd compression (one file
per channel, read together; the compressed data decoded, and found bad
when a byte of it is flipped), a mapped-ram file (its layout and bitmaps).  Then damaged copies of a real capture: cut
short (mid-record and on a record boundary), bytes flipped in the HELLO
and in record headers, an empty file, a foreign file and a QEMU stream,
each refused with exit code 1 and an error naming what and at which
offset (in the text and in --json)."""

import json
import os
import re

from lmtest import (LIVEMIG, Runner, check, check_eq, dest_uri, log, run_cli, set_caps,
                    set_params, wait_status, wait_until)

R = Runner("inspect", per_test=90, budget=400)

MEM = "32M"
BULK = ("--device", "bulk,size=4M,initial=2M,dirty-rate=1M,ack=on")


def capture(t, caps=None, params=None, stop=False, workload="random", extra=(), pattern=None):
    """Migrates a fresh source to a fresh destination through a recording
    proxy; returns (capture dir, the source's final query-migrate)."""
    ex = tuple(extra) + (("--pattern", pattern) if pattern else ())
    src = t.guest("src", mem=MEM, workload=workload, dirty_rate="8M", seed=5, extra=ex)
    dst = t.dest("dst", defer=True, caps=caps, mem=MEM, extra=ex)
    if caps:
        set_caps(src, caps)
    if params:
        set_params(src, params)
        set_params(dst, params)
    # Some pages written, some never touched (sent as zero).
    wait_until(lambda: src.stats()["writes"] >= 500, 20, "500 workload writes")
    if stop:
        src.qmp.execute("stop")
    rec = os.path.join(t.tmpdir, "cap")
    os.mkdir(rec)
    px = t.proxy(dest_uri(dst), record=rec)
    src.qmp.execute("migrate", {"uri": px.uri})
    info = wait_status(src, "completed", 60)
    wait_status(dst, "completed", 20)
    px.close()  # every capture file flushed and closed
    log("source ram: %r" % info["ram"])
    return rec, info


def files(rec, direction="to-dst"):
    return sorted(os.path.join(rec, f) for f in os.listdir(rec) if f.endswith(direction))


def inspect_json(paths, want_rc=0):
    rc, out, err = run_cli(["inspect", "--json"] + list(paths))
    check_eq(rc, want_rc, "inspect exit code (stderr: %s)" % err.strip())
    return json.loads(out), err


def check_counts(j, info, multifd_channels=0):
    """inspect's totals are the source's query-migrate figures.  The source
    counts the main channel's HELLO in ram.transferred but not those of its
    multifd channels (multifd-bytes are their records): 48 bytes each."""
    ram = info["ram"]
    tot = j["totals"]
    check_eq(tot["data_pages"], ram["normal"], "data pages (query-migrate ram.normal)")
    check_eq(tot["zero_pages"], ram["duplicate"], "zero pages (query-migrate ram.duplicate)")
    check_eq(tot["bytes"], ram["transferred"] + 48 * multifd_channels,
             "bytes (query-migrate ram.transferred, + 48 per multifd HELLO)")
    main = j["files"][0]
    check_eq(sum(b["length"] for b in main["blocks"]), ram["total"], "RAM size (ram.total)")
    check_eq([b["name"] for b in main["blocks"]], ["ram0", "ram1", "ledger"], "block names")
    check(all(b["page_size"] == 4096 for b in main["blocks"]), "page sizes: %r", main["blocks"])


def check_main(f, features=()):
    check(f["valid"] and f["error"] is None, "main channel invalid: %r", f["error"])
    h = f["hello"]
    check_eq((h["version"], h["kind"], h["role"], h["direction"]),
             (1, "REQUEST", "main", "to-destination"), "main channel HELLO")
    check_eq(h["feature_names"], list(features), "HELLO features")
    check(f["switchover_offset"] is not None, "no SWITCHOVER_START")
    check_eq(f["eos_offset"], f["size"] - 8, "EOS is the last record")
    check_eq(f["ram_blocks_records"], 1, "RAM_BLOCKS records")
    cpu = [s for s in f["sections"] if s["name"] == "cpu"]
    check(len(cpu) == 1 and cpu[0]["kind"] == "full" and cpu[0]["records"] >= 1,
          "cpu device section: %r", f["sections"])


def check_return_path(rec):
    j, _ = inspect_json(files(rec, "to-src"))
    for f in j["files"]:
        check(f["valid"], "return path %s invalid: %r", f["file"], f["error"])
        check_eq(f["hello"]["direction"], "to-source", "return path direction")
    check_eq(j["files"][0]["hello"]["kind"], "ACCEPT", "destination's HELLO")
    check_eq(j["files"][0]["shut_status"], 0, "RP_SHUT status")


@R.test("precopy of a stopped guest: every page once, counts = query-migrate")
def stopped(t):
    rec, info = capture(t, stop=True)
    paths = files(rec)
    check_eq(len(paths), 1, "connections")
    j, _ = inspect_json(paths)
    check(j["valid"], "capture invalid: %r", j)
    check_main(j["files"][0])
    check_counts(j, info)
    for b in j["files"][0]["blocks"]:
        check_eq(b["data_pages"] + b["zero_pages"], b["pages"],
                 "block %s: pages sent (data + zero) with the guest stopped" % b["name"])
    check(j["totals"]["data_pages"] > 0 and j["totals"]["zero_pages"] > 0,
          "both data and zero pages: %r", j["totals"])
    check_return_path(rec)
    # the text form says the same
    rc, out, err = run_cli(["inspect"] + paths)
    check_eq(rc, 0, "text inspect exit code")
    for want in ("HELLO      version 1, REQUEST, main channel", "ram0", "ledger", "cpu",
                 "SWITCHOVER_START at offset", "EOS at offset", "valid      every byte"):
        check(want in out, "text output lacks %r:\n%s", want, out)


@R.test("precopy of a running guest with a device and switchover-ack")
def running(t):
    caps = {"return-path": True, "switchover-ack": True}
    rec, info = capture(t, caps=caps, extra=BULK)
    j, _ = inspect_json(files(rec))
    f = j["files"][0]
    check_main(f, ("switchover-ack",))
    check_counts(j, info)
    bulk = [s for s in f["sections"] if s["name"] == "bulk"]
    check(len(bulk) == 1 and bulk[0]["kind"] == "iterable" and bulk[0]["ended"],
          "bulk device section: %r", f["sections"])
    check(bulk[0]["data_bytes"] >= 2 << 20, "bulk initial data: %r", bulk[0])
    check_eq(f["records"]["ACK_DEVICES"]["count"], 1, "ACK_DEVICES records")
    check(info["ram"]["dirty-sync-count"] >= 2, "more than one pass: %r", info["ram"])
    check_return_path(rec)


@R.test("multifd with zstd: one file per channel, read together")
def multifd_zstd(t):
    caps = {"multifd": True}
    params = {"multifd-channels": 2, "multifd-compression": "zstd"}
    rec, info = capture(t, caps=caps, params=params, pattern="text")
    paths = files(rec)
    check_eq(len(paths), 3, "connections (main + 2 multifd)")
    j, _ = inspect_json(paths)
    check(j["valid"], "capture invalid: %r", [f["error"] for f in j["files"]])
    roles = sorted(f["hello"]["role"] for f in j["files"])
    check_eq(roles, ["main", "multifd", "multifd"], "channel roles")
    main = [f for f in j["files"] if f["hello"]["role"] == "main"]
    j["files"].remove(main[0])
    j["files"].insert(0, main[0])
    check_main(main[0], ("multifd",))
    check_counts(j, info, multifd_channels=2)
    check_eq(main[0]["size"], info["ram"]["transferred"] - info["ram"]["multifd-bytes"],
             "main channel bytes (transferred - multifd-bytes)")
    mfd = [f for f in j["files"] if f["hello"]["role"] == "multifd"]
    check_eq(sorted(f["hello"]["chan_index"] for f in mfd), [0, 1], "multifd channel indexes")
    sessions = {f["hello"]["session"] for f in j["files"]}
    check_eq(len(sessions), 1, "one session over all channels")
    for f in mfd:
        check_eq(f["multifd"]["compression"], ["zstd"], "%s compression" % f["file"])
        check(f["multifd"]["packets"] > 0, "%s: no MULTIFD_PAGES", f["file"])
        check_eq(f["eos_offset"], f["size"] - 8, "%s ends with EOS" % f["file"])
    comp = j["totals"]["compressed_pages"]
    check(comp > 0, "no compressed pages: %r", j["totals"])
    check(j["totals"]["compressed_bytes"] < comp * 4096,
          "zstd did not shrink text pages: %r", j["totals"])
    # --records lists every record; the first packet with data holds the
    # start of the channel's zstd frame: a flipped byte there is found by
    # decoding it (a destination's check), at that record's offset.
    jr, _ = inspect_json(["--records", mfd[0]["file"], main[0]["file"]])
    lst = jr["files"][0]["record_list"]
    check_eq(len(lst), jr["files"][0]["record_count"], "--records: records listed")
    check_eq(lst[-1]["type"], "EOS", "--records: last record")
    pk = [r for r in lst if r["type"] == "MULTIFD_PAGES" and
          int(re.search(r"(\d+) data bytes", r["detail"]).group(1)) > 0][0]
    dlen = int(re.search(r"(\d+) data bytes", pk["detail"]).group(1))
    blob = pk["offset"] + 8 + pk["len"] - dlen
    p = damaged(t, mfd[0]["file"], "zstd-flip", lambda d: d[:blob] + bytes([d[blob] ^ 0xff]) +
                d[blob + 1:])
    rc, out, err = run_cli(["inspect", "--json", p, main[0]["file"]])
    e = json.loads(out)["files"][0]["error"]
    check(rc == 1 and e and e["offset"] == pk["offset"] and
          "MULTIFD_PAGES packet" in e["message"], "corrupt zstd data: %d %r", rc, e)
    log("zstd-flip: %s" % e["message"])
    # Alone, a multifd channel has no block table: still valid, counted.
    j1, _ = inspect_json([mfd[0]["file"]])
    check(j1["valid"] and j1["files"][0]["multifd"]["data_pages"] ==
          mfd[0]["multifd"]["data_pages"], "multifd channel alone: %r", j1["files"][0])


@R.test("postcopy with a preempt channel: the switch, discards and requests")
def postcopy(t):
    caps = {"postcopy-ram": True, "postcopy-preempt": True}
    src = t.guest("src", mem="64M", workload="hot", hot_size="8M", fill="random", seed=1)
    dst = t.dest("dst", defer=True, caps=caps, mem="64M", workload="hot", hot_size="8M", seed=2)
    set_caps(src, caps)
    set_params(src, {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1})
    rec = os.path.join(t.tmpdir, "cap")
    os.mkdir(rec)
    px = t.proxy(dest_uri(dst), record=rec)
    src.qmp.execute("migrate", {"uri": px.uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    info = wait_status(src, "completed", 60)
    wait_status(dst, "completed", 20)
    px.close()
    log("source ram: %r" % info["ram"])
    paths = files(rec)
    check_eq(len(paths), 2, "connections (main + preempt)")
    j, _ = inspect_json(paths)
    check(j["valid"], "capture invalid: %r", [f["error"] for f in j["files"]])
    main = j["files"][0]
    check_main(main, ("postcopy-ram", "postcopy-preempt"))
    check_counts(j, info)
    check(main["postcopy_run_offset"] is not None and
          main["switchover_offset"] < main["postcopy_run_offset"], "POSTCOPY_RUN: %r", main)
    discarded = sum(b["discarded_pages"] for b in main["blocks"])
    check(discarded > 0, "no POSTCOPY_DISCARD pages")
    check_eq(j["files"][1]["hello"]["role"], "preempt", "second channel's role")
    # the destination's requests: on the preempt channel's other direction
    jr, _ = inspect_json(files(rec, "to-src"))
    check(jr["valid"], "return paths invalid: %r", [f["error"] for f in jr["files"]])
    reqs = sum(f["records"].get("RP_REQ_PAGES", {}).get("count", 0) for f in jr["files"])
    # Every request the source counted went through the proxy; none the
    # destination did not send (a last one may cross the source's end).
    sent = dst.query_migrate().get("x-postcopy", {}).get("requests")
    check(info["ram"]["postcopy-requests"] <= reqs <= sent,
          "RP_REQ_PAGES records %d: source counted %d, destination sent %s", reqs,
          info["ram"]["postcopy-requests"], sent)


@R.test("a mapped-ram file: layout, bitmaps checked, regions jumped over")
def mapped_ram(t):
    """A stopped guest saved with mapped-ram and multifd: per block the
    pages present (bits set) and the holes, which together are the block;
    the present pages are the source's normal pages (the guest was stopped:
    each page is saved once); the stream goes on after the regions (device
    sections, EOS).  A flipped bitmap bit and a cut page region are
    refused with what and where."""
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="8M", seed=5)
    src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    set_caps(src, {"mapped-ram": True, "multifd": True})
    set_params(src, {"multifd-channels": 2, "max-bandwidth": 0})
    src.qmp.execute("migrate", {"uri": "file:" + path})
    info = wait_status(src, "completed", 60)
    j, _ = inspect_json([path])
    f = j["files"][0]
    check_main(f, ("multifd", "mapped-ram"))
    m = f["mapped_ram"]
    check(m["record_end"] < m["resume"] <= f["size"] and m["stream_base"] == 0,
          "mapped_ram layout %r (size %d)", m, f["size"])
    present = 0
    for b in f["blocks"]:
        mr = b["mapped_ram"]
        check_eq(mr["present_pages"] + mr["zero_pages"], b["pages"],
                 "block %s: present + holes" % b["name"])
        check(mr["pages_offset"] % (1 << 20) == 0, "block %s pages at %d", b["name"],
              mr["pages_offset"])
        present += mr["present_pages"]
    check_eq(present, info["ram"]["normal"], "present pages (query-migrate ram.normal)")
    check(0 < present < sum(b["pages"] for b in f["blocks"]), "present pages %d", present)
    rc, out, err = run_cli(["inspect", path])
    check_eq(rc, 0, "text inspect exit code")
    for want in ("mapped-ram", "pages present", "CRC ok",
                 "jumped over; the stream goes on there", "EOS at offset"):
        check(want in out, "text output lacks %r:\n%s", want, out)
    b0 = f["blocks"][0]["mapped_ram"]
    bad = damaged(t, path, "bitmap.lm", lambda d: d[:b0["bitmap_offset"]] +
                  bytes([d[b0["bitmap_offset"]] ^ 1]) + d[b0["bitmap_offset"] + 1:])
    expect_bad(bad, b0["bitmap_offset"], "block 0 (\"ram0\")", "corrupt bitmap")
    cut = damaged(t, path, "cut.lm", lambda d: d[:m["resume"] - 4096])
    expect_bad(cut, m["offset"], "MAPPED_RAM", "past the end of the file")


def damaged(t, src_path, name, mutate):
    with open(src_path, "rb") as f:
        data = bytearray(f.read())
    data = mutate(data)
    p = os.path.join(t.tmpdir, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def expect_bad(path, offset, *words):
    """inspect refuses path: exit 1, an error with the offset and words, in
    the text form (stderr) and in --json."""
    rc, out, err = run_cli(["inspect", path])
    check_eq(rc, 1, "exit code for %s (stdout %s)" % (os.path.basename(path), out[-500:]))
    msg = err.strip()
    where = "offset %d:" % offset
    check(where in msg, "%s: error lacks %r: %s", path, where, msg)
    for w in words:
        check(w in msg, "%s: error lacks %r: %s", path, w, msg)
    j, _ = inspect_json([path], want_rc=1)
    e = j["files"][0]["error"]
    check(not j["valid"] and e["offset"] == offset, "%s: JSON error %r", path, e)
    log("%s: %s" % (os.path.basename(path), msg))


@R.test("damaged captures are refused with what and where")
def damaged_captures(t):
    rec, info = capture(t, stop=True)
    main = files(rec)[0]
    j, _ = inspect_json([main])
    f = j["files"][0]
    size, sw = f["size"], f["switchover_offset"]
    first = 48  # the first record, after the HELLO

    # cut short, on a record boundary: the EOS is missing
    p = damaged(t, main, "no-eos", lambda d: d[:-8])
    expect_bad(p, size - 8, "without EOS")
    # cut in the middle of a record: the bytes it announced are missing
    p = damaged(t, main, "cut", lambda d: d[:size // 2])
    rc, out, err = run_cli(["inspect", "--json", p])
    e = json.loads(out)["files"][0]["error"]
    check(rc == 1 and "truncated" in e["message"] and e["offset"] <= size // 2,
          "cut capture: %r", e)
    expect_bad(p, e["offset"], "truncated", "in the file")
    # cut inside a record header
    p = damaged(t, main, "cut-hdr", lambda d: d[:first + 3])
    expect_bad(p, first, "record header truncated: 3 of 8 bytes")
    # cut inside the HELLO
    p = damaged(t, main, "cut-hello", lambda d: d[:20])
    expect_bad(p, 0, "HELLO truncated: 20 of 48 bytes")

    def flip(off, val):
        def m(d):
            d[off] = val
            return d
        return m
    # the HELLO: magic, version, reserved bytes
    expect_bad(damaged(t, main, "magic", flip(1, 0x00)), 0, "not a livemig stream")
    expect_bad(damaged(t, main, "version", flip(4, 9)), 0, "HELLO", "version 9")
    expect_bad(damaged(t, main, "hello-reserved", flip(44, 1)), 0, "HELLO", "reserved")
    # record headers: the first record's type and flags; SWITCHOVER_START's
    # length (it has no payload); SWITCHOVER_START turned into EOS
    expect_bad(damaged(t, main, "type", flip(first, 0x77)), first, "record type 0x77 unknown")
    expect_bad(damaged(t, main, "flags", flip(first + 1, 0x01)), first, "flags")
    expect_bad(damaged(t, main, "sw-len", flip(sw + 4, 0x10)), sw, "SWITCHOVER_START")
    expect_bad(damaged(t, main, "sw-eos", flip(sw, 0x30)), sw + 8, "after EOS")

    # not a stream at all
    p = os.path.join(t.tmpdir, "empty")
    open(p, "wb").close()
    expect_bad(p, 0, "empty file")
    expect_bad(LIVEMIG, 0, "not a livemig stream", "7f 45 4c 46")
    p = os.path.join(t.tmpdir, "qemu")
    with open(p, "wb") as fq:
        fq.write(b"QEVM\0\0\0\x03" + b"\0" * 64)
    expect_bad(p, 0, "QEMU migration stream")


@R.test("inspect's command line: usage and unreadable files")
def cli(t):
    rc, out, err = run_cli(["inspect"])
    check(rc == 2 and "no FILE" in err, "no file: %d %s", rc, err)
    rc, out, err = run_cli(["inspect", "--bogus", "x"])
    check_eq(rc, 2, "unknown option exit code")
    rc, out, err = run_cli(["inspect", os.path.join(t.tmpdir, "missing")])
    check(rc == 1 and "No such file" in err, "missing file: %d %s", rc, err)
    rc, out, err = run_cli(["inspect", t.tmpdir])
    check(rc == 1 and "directory" in err, "directory: %d %s", rc, err)
    rc, out, err = run_cli(["inspect", "--help"])
    check(rc == 0 and "usage: livemig inspect" in out, "help: %s", out)


if __name__ == "__main__":
    R.main()
