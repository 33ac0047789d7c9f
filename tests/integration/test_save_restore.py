"""`livemig save` and `livemig restore` (issue 11, item 7): a stopped and a
running guest saved and restored through the CLI, with and without
mapped-ram (multifd, offset=), a background snapshot, the restored guest
verified; the capabilities each flag sets; bad flags get exit 2 and an
error naming the flag; a restore into a host that does not wait, or from
a file the host refuses, fails cleanly (exit 1, the server's reason)."""

import json
import os

from lmtest import (Runner, check, check_eq, log, run_cli, stop_and_verify)

R = Runner("save_restore", per_test=90, budget=420)

MEM = "128M"


def caps_of(g):
    return {c["capability"]: c["state"] for c in g.qmp.execute("query-migrate-capabilities")}


def cli_ok(args, what):
    rc, out, err = run_cli(args + ["--timeout", "60"], timeout=70)
    log("%s: stdout: %s" % (what, out.strip().replace("\n", "\n#   ")))
    check_eq(rc, 0, "%s exit code (stderr %r)" % (what, err[-800:]))
    return out


def save_restore(t, live, flags_save, flags_restore, background=False, offset=None):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random", dirty_rate="64M")
    if not live:
        src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    extra = []
    if offset is not None:
        with open(path, "wb") as f:
            f.write(b"\x5a" * offset)
        extra = ["--offset", str(offset)]
    mode = ["--background"] if background else (["--live"] if live else [])
    out = cli_ok(["save", "--src", src.sock, "--file", path] + mode + flags_save + extra, "save")
    check("completed" in out, "save summary lacks 'completed': %r", out[-600:])
    caps = caps_of(src)
    check_eq(caps.get("mapped-ram"), "--mapped-ram" in flags_save, "source mapped-ram")
    check_eq(caps.get("multifd"), "--multifd" in flags_save, "source multifd")
    check_eq(caps.get("background-snapshot"), background, "source background-snapshot")
    check_eq(src.qmp.execute("query-migrate-parameters").get("max-bandwidth"), 0,
             "source max-bandwidth (save sets it unlimited)")
    # A live save leaves the guest paused (QEMU's postmigrate); a
    # background snapshot leaves it running.
    check_eq(src.status(), "running" if background else "postmigrate", "source run state")
    if offset is not None:
        with open(path, "rb") as f:
            check(f.read(offset) == b"\x5a" * offset, "the bytes before --offset changed")
    dst = t.guest("dst", mem=MEM, seed=2, incoming="defer")
    out = cli_ok(["restore", "--dst", "unix:" + dst.sock, "--file", path] + flags_restore + extra,
                 "restore")
    check("restore completed" in out, "restore summary lacks 'restore completed': %r", out)
    check_eq(caps_of(dst).get("mapped-ram"), "--mapped-ram" in flags_restore,
             "destination mapped-ram")
    check_eq(dst.status(), "running", "destination run state after restore")
    stop_and_verify(dst)


@R.test("save/restore: stopped guest, stream")
def stopped_stream(t):
    save_restore(t, False, [], [])


@R.test("save/restore: running guest, live, stream, --offset")
def running_stream(t):
    save_restore(t, True, [], [], offset=8192)


@R.test("save/restore: stopped guest, --mapped-ram --multifd 4")
def stopped_mapped(t):
    save_restore(t, False, ["--mapped-ram", "--multifd", "4"], ["--mapped-ram", "--multifd", "2"])


@R.test("save/restore: running guest, --mapped-ram, restore --lazy")
def running_lazy(t):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random", dirty_rate="64M")
    path = os.path.join(t.tmpdir, "snap.lm")
    cli_ok(["save", "--src", src.sock, "--file", path, "--mapped-ram", "--multifd", "2"], "save")
    dst = t.guest("dst", mem=MEM, seed=2, incoming="defer", workload="random", dirty_rate="16M")
    out = cli_ok(["restore", "--dst", dst.sock, "--file", path, "--mapped-ram", "--multifd", "2",
                  "--lazy"], "restore --lazy")
    check("restore completed" in out, "restore summary lacks 'restore completed': %r", out)
    check_eq(caps_of(dst).get("x-lazy-restore"), True, "destination x-lazy-restore")
    check_eq(dst.query_migrate().get("status"), "completed", "destination status")
    stop_and_verify(dst)


@R.test("save/restore: running guest, --mapped-ram --multifd 2, --json")
def running_mapped(t):
    src = t.guest("src", mem=MEM, fill="random", seed=1, workload="random", dirty_rate="64M")
    path = os.path.join(t.tmpdir, "snap.lm")
    rc, out, err = run_cli(["save", "--src", src.sock, "--file", path, "--mapped-ram",
                            "--multifd", "2", "--json"], timeout=70)
    check_eq(rc, 0, "save exit code (stderr %r)" % err[-800:])
    j = json.loads(out)
    check_eq(j.get("status"), "completed", "--json status")
    check_eq(j.get("uri"), "file:" + path, "--json uri")
    total = src.query_migrate()["ram"]["total"]
    check(os.path.getsize(path) <= total * 1.01 + (2 << 20),
          "mapped-ram file of %d bytes for %d of RAM", os.path.getsize(path), total)
    dst = t.guest("dst", mem=MEM, seed=2, incoming="defer")
    cli_ok(["restore", "--dst", dst.sock, "--file", path, "--mapped-ram", "--multifd", "3"],
           "restore")
    check_eq(caps_of(dst).get("multifd"), True, "destination multifd")
    check_eq(dst.qmp.execute("query-migrate-parameters").get("multifd-channels"), 3,
             "destination multifd-channels")
    stop_and_verify(dst)


@R.test("save/restore: running guest, --background")
def background(t):
    save_restore(t, True, [], [], background=True)


BAD_SAVE = [
    (["--live", "--background"], "--live and --background"),
    (["--background", "--multifd", "2"], "--background excludes --multifd"),
    (["--background", "--mapped-ram"], "--background excludes --mapped-ram"),
    (["--direct-io"], "--direct-io needs --mapped-ram"),
    (["--multifd", "0"], "--multifd: '0'"),
    (["--multifd", "x"], "--multifd: 'x'"),
    (["--offset", "-3"], "--offset: '-3'"),
    (["--timeout", "0"], "--timeout: '0'"),
    (["--cap", "mapped-ram"], "--cap: 'mapped-ram'"),
    (["--lazy"], "--lazy"),  # a restore flag
    (["--frobnicate"], "--frobnicate"),
    (["extra"], "'extra'"),
]


@R.test("save/restore: bad flags exit 2 naming the flag")
def bad_flags(t):
    for args, want in BAD_SAVE:
        rc, out, err = run_cli(["save", "--src", "/nonexistent.sock", "--file", "/tmp/x.lm"] +
                               args, timeout=10)
        check_eq(rc, 2, "save %s exit code (stderr %r)" % (args, err))
        check(want in err, "save %s: stderr %r does not say %r", args, err, want)
    for args, want in [([], "missing --file"), (["--file", "/tmp/x,y"], "--file: '/tmp/x,y'")]:
        rc, out, err = run_cli(["save", "--src", "/nonexistent.sock"] + args, timeout=10)
        check_eq(rc, 2, "save %s exit code" % args)
        check(want in err, "save %s: stderr %r does not say %r", args, err, want)
    for args, want in [(["--file", "/tmp/x.lm"], "missing --dst"),
                       (["--dst", "d", "--file", "/tmp/x.lm", "--background"], "--background"),
                       (["--dst", "d", "--file", "/tmp/x.lm", "--src", "s"], "--src")]:
        rc, out, err = run_cli(["restore"] + args, timeout=10)
        check_eq(rc, 2, "restore %s exit code (stderr %r)" % (args, err))
        check(want in err, "restore %s: stderr %r does not say %r", args, err, want)
    rc, out, err = run_cli(["help", "save"], timeout=10)
    check(rc == 0 and "background-snapshot" in out, "help save: %r", out)
    rc, out, err = run_cli(["restore", "--help"], timeout=10)
    check(rc == 0 and "x-lazy-restore" in out, "restore --help: %r", out)


@R.test("save/restore: refused restores fail cleanly, the host stays usable")
def refused(t):
    src = t.guest("src", mem="16M", fill="random", seed=1)
    src.qmp.execute("stop")
    path = os.path.join(t.tmpdir, "snap.lm")
    cli_ok(["save", "--src", src.sock, "--file", path, "--mapped-ram"], "save")
    # A running host does not wait for a migration.
    rc, out, err = run_cli(["restore", "--dst", src.sock, "--file", path], timeout=20)
    check_eq(rc, 1, "restore into a running host: exit code")
    check("not waiting for a migration" in err and "--incoming defer" in err,
          "restore into a running host: stderr %r", err)
    dst = t.guest("dst", mem="16M", seed=2, incoming="defer")
    # A file that does not exist: the server's reason, naming it.
    missing = os.path.join(t.tmpdir, "missing.lm")
    rc, out, err = run_cli(["restore", "--dst", dst.sock, "--file", missing], timeout=20)
    check_eq(rc, 1, "restore of a missing file: exit code (stderr %r)" % err)
    check(missing in err, "restore of a missing file: stderr %r does not name it", err)
    # mapped-ram off against a mapped-ram file: refused with the reason.
    dst2 = t.guest("dst2", mem="16M", seed=2, incoming="defer")
    rc, out, err = run_cli(["restore", "--dst", dst2.sock, "--file", path], timeout=20)
    check_eq(rc, 1, "restore without --mapped-ram of a mapped-ram file: exit code")
    check("mapped-ram" in err, "stderr %r does not name mapped-ram", err)
    # The same host, still waiting, takes the file with the right flags.
    check_eq(dst2.status(), "inmigrate", "run state after a refused restore")
    cli_ok(["restore", "--dst", dst2.sock, "--file", path, "--mapped-ram"], "restore")
    stop_and_verify(dst2)


if __name__ == "__main__":
    R.main()
