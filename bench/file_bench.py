#!/usr/bin/env python3
"""Snapshots to files (issue 11): save and restore of a stopped guest full of
random data with mapped-ram, against the disk's own limits measured in the
same run.

    python3 bench/file_bench.py --livemig PATH [--dir DIR] [--mem 2G]
                                [--channels 1,2,4] [--json OUT] [--quick]
                                [--reps N]

(a) limits: a raw O_DIRECT write of --mem bytes (8 MiB writes from an
    aligned buffer of random bytes, then fdatasync, as a save ends) and the
    O_DIRECT read of the same file, in --dir (the real disk), by 1, 2 or 4
    parallel streams of 8 MiB or 1 MiB transfers; the best is the limit.
    Printed beside it (a reference, not the limit): the same file read by
    1, 2 or 4 streams into never-touched memory, as a restore reads into a
    fresh guest (the kernel populates every page on the way);
(b) save: `migrate` to file:DIR/snap.lm with mapped-ram, direct-io and
    multifd over each channel count (0 = the migration thread alone):
    guest RAM / total-time of the source, against the raw write;
(c) restore: a fresh `livemig guest --incoming defer` given the file with
    the same settings, from migrate-incoming until `completed`: guest RAM /
    that time, against the raw read; the restored guest is verified
    (x-guest-verify, 0 bad pages) after the clock stops;
(d) the same save and restore through /dev/shm without direct-io (memory
    speed): the engine's own ceiling.

The best channel count is the one whose save and restore are fastest.
Every process is bounded and stopped by its pid (tests/integration/lmtest.py).
"""

import argparse
import json
import mmap
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import lmtest  # noqa: E402
from lmtest import Guest, kill_all_children, set_caps, set_params, wait_status  # noqa: E402

MIB = 1 << 20
CHUNK = 8 * MIB


def log(msg):
    print(msg, flush=True)


def _raw(path, size, streams, write, chunk=CHUNK):
    """O_DIRECT transfer of size bytes by `streams` threads, each on its own
    descriptor and its own contiguous share (8 MiB pwrite/preadv from an
    aligned buffer; Python releases the GIL in the syscall) into a file
    sized first; a write ends with fdatasync, as a save does.  Returns
    bytes/s."""
    flags = (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
    share = size // streams // chunk * chunk
    errs = []

    def one(i):
        buf = mmap.mmap(-1, chunk)
        if write:
            buf.write(os.urandom(chunk))
        fd = os.open(path, flags | os.O_DIRECT, 0o600)
        try:
            off = i * share
            while off < (i + 1) * share:
                n = os.pwrite(fd, buf, off) if write else os.preadv(fd, [buf], off)
                if n <= 0:
                    raise OSError("short transfer at %d" % off)
                off += n
        except OSError as e:
            errs.append(e)
        finally:
            os.close(fd)
            buf.close()

    if write:
        # Sized first (sparse), as a mapped-ram file is once its main
        # stream went past the regions: writes inside the file's size are
        # ext4's fast O_DIRECT path, extending ones are serialised on the
        # inode (measured: about half the speed here).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, share * streams)
        os.close(fd)
    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if write:
        fd = os.open(path, os.O_WRONLY)
        os.fdatasync(fd)
        os.close(fd)
    secs = time.monotonic() - t0
    if errs:
        raise errs[0]
    return share * streams / secs


def raw_read_fresh(path, size, streams, chunk=MIB):
    """O_DIRECT read of the whole file by `streams` threads into one
    never-touched anonymous mapping of size bytes (each its contiguous
    share, `chunk` transfers), as a restore reads into a fresh guest: the
    kernel populates (zeroes) every page on the way, which on this VM also
    costs the hypervisor's first touch.  Returns bytes/s."""
    share = size // streams // chunk * chunk
    dest = mmap.mmap(-1, share * streams)
    errs = []

    def one(i):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            off = i * share
            view = memoryview(dest)
            while off < (i + 1) * share:
                n = os.preadv(fd, [view[off:off + chunk]], off)
                if n <= 0:
                    raise OSError("short read at %d" % off)
                off += n
            view.release()
        except OSError as e:
            errs.append(e)
        finally:
            os.close(fd)

    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.monotonic() - t0
    dest.close()
    if errs:
        raise errs[0]
    return share * streams / secs


def raw_limits(path, size):
    """The disk's best of: 1, 2 or 4 streams (a virtual disk may want
    several requests in flight, as the multifd channels give it) of 8 MiB
    or 1 MiB transfers (the engine's multifd batch)."""
    res = {}
    for streams, chunk in ((1, CHUNK), (4, CHUNK), (1, MIB), (2, MIB), (4, MIB)):
        if os.path.exists(path):
            os.unlink(path)
        w = _raw(path, size, streams, True, chunk)
        r = _raw(path, size, streams, False, chunk)
        res["%dx%dMiB" % (streams, chunk // MIB)] = (w, r)
        log("raw O_DIRECT, %d stream%s of %d MiB transfers: write %.0f MB/s, read %.0f MB/s" %
            (streams, "s" if streams > 1 else "", chunk // MIB, w / 1e6, r / 1e6))
    # The same file read into fresh memory: what any restore into a new
    # process pays on top of the disk (printed beside, not the target's
    # limit).
    fresh = {}
    for streams in (1, 2, 4):
        fresh[streams] = raw_read_fresh(path, size, streams)
        log("raw O_DIRECT, %d stream%s of 1 MiB transfers into fresh memory: read %.0f MB/s" %
            (streams, "s" if streams > 1 else "", fresh[streams] / 1e6))
    res["fresh"] = fresh
    os.unlink(path)
    return max(v[0] for k, v in res.items() if k != "fresh"), \
        max(v[1] for k, v in res.items() if k != "fresh"), res


def caps_params(nch, direct):
    caps = {"mapped-ram": True, "multifd": bool(nch)}
    params = {"direct-io": direct, "max-bandwidth": 0}
    if nch:
        params["multifd-channels"] = nch
    return caps, params


def save(src, path, nch, direct):
    caps, params = caps_params(nch, direct)
    set_caps(src, caps)
    set_params(src, params)
    if os.path.exists(path):
        os.unlink(path)
    src.qmp.execute("migrate", {"uri": "file:" + path})
    info = wait_status(src, "completed", 600, poll=0.01)
    return info["ram"]["total"], info["total-time"] / 1000.0


def restore(tmp, path, mem, nch, direct, tag):
    dst = Guest(tmp, "dst-" + tag, mem=mem, seed=2, incoming="defer")
    try:
        caps, params = caps_params(nch, direct)
        set_caps(dst, caps)
        set_params(dst, params)
        t0 = time.monotonic()
        dst.qmp.execute("migrate-incoming", {"uri": "file:" + path})
        wait_status(dst, "completed", 600, poll=0.005)
        secs = time.monotonic() - t0
        dst.qmp.execute("stop")
        v = dst.verify()
        if not (v.get("ok") and v.get("bad-pages") == 0):
            raise lmtest.TestFailure("restored guest does not verify: %r" % v)
        return secs
    finally:
        dst.stop()


def run(args):
    mem = args.mem
    size = lmtest.parse_size(mem)
    chans = [int(c) for c in args.channels.split(",")]
    os.makedirs(args.dir, exist_ok=True)
    res = {"mem": size, "dir": args.dir, "channels": chans, "disk": {}, "shm": {}}

    raw = os.path.join(args.dir, "raw.bin")
    res["raw_write"], res["raw_read"], res["raw_by_streams"] = raw_limits(raw, size)

    src = Guest(args.dir, "src", mem=mem, fill="random", seed=1,
                ready_timeout=120 + size / (50 * MIB))
    try:
        src.qmp.execute("stop")
        for where, d, direct, runs in (("disk", args.dir, True, chans),
                                       ("shm", "/dev/shm", False, chans)):
            path = os.path.join(d, "lm-file-bench-%d.lm" % os.getpid())
            try:
                for nch in runs:
                    # --reps N: the median of N saves and of N restores
                    # (the restores of each save's file, in turn).
                    saves, rests = [], []
                    for k in range(args.reps):
                        total, sv = save(src, path, nch, direct)
                        saves.append(sv)
                        rests.append(restore(args.dir, path, mem, nch, direct,
                                             "%s%d-%d" % (where, nch, k)))
                    save_s = sorted(saves)[len(saves) // 2]
                    rest_s = sorted(rests)[len(rests) // 2]
                    if args.reps > 1:
                        log("%-4s %d ch: saves %s s, restores %s s" %
                            (where, nch, " ".join("%.2f" % x for x in saves),
                             " ".join("%.2f" % x for x in rests)))
                    r = {"save_s": save_s, "restore_s": rest_s,
                         "save_rate": total / save_s, "restore_rate": total / rest_s,
                         "file_bytes": os.path.getsize(path)}
                    res[where][nch] = r
                    log("%-4s %d ch%s: save %.2f s (%.0f MB/s)  restore %.2f s (%.0f MB/s)"
                        "  file %d MiB" %
                        (where, nch, " direct-io" if direct else "", save_s,
                         r["save_rate"] / 1e6, rest_s, r["restore_rate"] / 1e6,
                         r["file_bytes"] // MIB))
            finally:
                if os.path.exists(path):
                    os.unlink(path)
    finally:
        src.stop()

    best_save = max(res["disk"], key=lambda n: res["disk"][n]["save_rate"])
    best_rest = max(res["disk"], key=lambda n: res["disk"][n]["restore_rate"])
    res["save_vs_raw"] = res["disk"][best_save]["save_rate"] / res["raw_write"]
    res["restore_vs_raw"] = res["disk"][best_rest]["restore_rate"] / res["raw_read"]
    log("")
    log("| figure | livemig | raw O_DIRECT | ratio | target |")
    log("|---|---|---|---|---|")
    log("| save %s, best: %d ch, direct-io | %.0f MB/s | write %.0f MB/s | %.2f | >= 0.90 |" %
        (mem, best_save, res["disk"][best_save]["save_rate"] / 1e6, res["raw_write"] / 1e6,
         res["save_vs_raw"]))
    log("| restore %s, best: %d ch, direct-io | %.0f MB/s | read %.0f MB/s | %.2f | >= 0.90 |" %
        (mem, best_rest, res["disk"][best_rest]["restore_rate"] / 1e6, res["raw_read"] / 1e6,
         res["restore_vs_raw"]))
    fresh = max(res["raw_by_streams"]["fresh"].values())
    res["restore_vs_fresh"] = res["disk"][best_rest]["restore_rate"] / fresh
    log("| restore %s vs a read into fresh memory | %.0f MB/s | read %.0f MB/s | %.2f | "
        "(reference) |" % (mem, res["disk"][best_rest]["restore_rate"] / 1e6, fresh / 1e6,
                           res["restore_vs_fresh"]))
    for nch in sorted(res["shm"]):
        r = res["shm"][nch]
        log("| /dev/shm, %d ch, no direct-io | save %.0f MB/s, restore %.0f MB/s | | | ceiling |" %
            (nch, r["save_rate"] / 1e6, r["restore_rate"] / 1e6))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--livemig", required=True)
    ap.add_argument("--dir", default=os.path.join(HERE, "..", "build", "bench-files"),
                    help="a directory on the real disk (O_DIRECT)")
    ap.add_argument("--mem", default="2G")
    ap.add_argument("--channels", default="0,1,2,4")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--quick", action="store_true", help="256M guest, a smoke run")
    ap.add_argument("--reps", type=int, default=1,
                    help="saves and restores per setting; the median is used")
    args = ap.parse_args()
    if args.quick:
        args.mem = "256M"
    lmtest.LIVEMIG = os.path.abspath(args.livemig)
    args.dir = os.path.abspath(args.dir)
    lmtest.become_subreaper()
    try:
        res = run(args)
    finally:
        kill_all_children()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
