"""The `livemig` command line: migrate (text and --json), a dead
destination, status --json, cancel, bad flags (exit 2 naming the flag) and
a bad guest size."""

import json
import os
import re
import time

import signal
import subprocess

from lmtest import (LIVEMIG, Runner, TestFailure, check, check_eq, log, migrate, run_cli,
                    set_params, spawn, stop_pid, stop_and_verify, wait_status, wait_until)

R = Runner("cli", per_test=45, budget=200)

MEM = "128M"


def pair(t, dst_incoming="defer"):
    src = t.guest("src", mem=MEM, workload="random", fill="random", seed=5)
    dst = t.guest("dst", mem=MEM, workload="random", incoming=dst_incoming)
    return src, dst


@R.test("migrate: exit 0, summary printed")
def cli_migrate_text(t):
    src, dst = pair(t)
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", "unix:" + dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--param", "max-bandwidth=0",
                            "--timeout", "30"], timeout=40)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check(re.search(r"\bcompleted\b", out), "summary lacks 'completed': %r", out[-800:])
    check(re.search(r"downtime", out, re.I), "summary lacks the downtime: %r", out[-800:])
    check_eq(src.query_migrate().get("status"), "completed", "source status")
    check_eq(dst.query_migrate().get("status"), "completed", "destination status")
    # --param goes to the source (where max-bandwidth matters).
    check_eq(src.qmp.execute("query-migrate-parameters").get("max-bandwidth"), 0,
             "max-bandwidth set by --param")
    stop_and_verify(dst)


@R.test("migrate --json: parses, status completed")
def cli_migrate_json(t):
    src, dst = pair(t)
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", dst.sock,
                            "--uri", "unix:" + os.path.join(t.tmpdir, "m.sock"),
                            "--param", "max-bandwidth=0",
                            "--cap", "pause-before-switchover=off", "--json",
                            "--timeout", "30"], timeout=40)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    try:
        j = json.loads(out)
    except ValueError as e:
        raise TestFailure("--json output is not one JSON document (%s): %r" % (e, out[:500]))
    check(isinstance(j, dict), "--json output is not an object: %r", j)
    check_eq(j.get("status"), "completed", "status in --json")
    log("--json keys: %s" % sorted(j))
    for k in ("total-time", "downtime"):
        check(isinstance(j.get(k), int), "--json %s is %r", k, j.get(k))
    stop_and_verify(dst)


@R.test("migrate --multifd 3 --compress lz4: both sides get the settings, 3 channels carry")
def cli_migrate_multifd(t):
    src, dst = pair(t)
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--multifd", "3", "--compress", "lz4",
                            "--param", "max-bandwidth=0", "--json", "--timeout", "30"],
                           timeout=40)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    j = json.loads(out)
    chans = j.get("source", {}).get("ram", {}).get("x-multifd-channels")
    check(isinstance(chans, list) and len(chans) == 3, "x-multifd-channels %r", chans)
    for g in (src, dst):
        caps = {c["capability"]: c["state"]
                for c in g.qmp.execute("query-migrate-capabilities")}
        check(caps.get("multifd") is True, "%s: multifd capability %r", g.name,
              caps.get("multifd"))
    p = src.qmp.execute("query-migrate-parameters")
    check_eq(p.get("multifd-channels"), 3, "multifd-channels set by --multifd")
    check_eq(p.get("multifd-compression"), "lz4", "multifd-compression set by --compress")
    stop_and_verify(dst)
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--compress", "snappy"], timeout=10)
    check_eq(rc, 2, "exit code of --compress snappy")
    check("--compress" in err and "snappy" in err, "error %r names the flag and value", err)


@R.test("migrate to a destination started with --incoming tcp:127.0.0.1:0")
def cli_migrate_listening_dst(t):
    # `livemig migrate --help`: "DST must be waiting for a migration
    # (--incoming URI, or --incoming defer ...)"; with a port 0 the real
    # port is read from the destination's socket-address.
    src, dst = pair(t, dst_incoming="tcp:127.0.0.1:0")
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", "unix:" + dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--param", "max-bandwidth=0",
                            "--timeout", "30"], timeout=40)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check_eq(dst.query_migrate().get("status"), "completed", "destination status")
    stop_and_verify(dst)


@R.test("migrate to a dead destination: exit 1 with the error")
def cli_dead_dst(t):
    src = t.guest("src", mem="64M", workload="random")
    dst = t.guest("dst", mem="64M", incoming="defer")
    dst.kill()  # SIGKILL: the socket file stays behind, nobody listens on it
    check(os.path.exists(dst.sock), "the dead destination's socket file is gone")
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", "unix:" + dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--timeout", "20"], timeout=30)
    log("dead dst: rc %d stderr %r" % (rc, err.strip()[-300:]))
    check_eq(rc, 1, "exit code")
    check(dst.sock in err or re.search("refused|connect", err, re.I),
          "stderr does not say what failed: %r", err[-500:])
    check_eq(src.status(), "running", "source run state")
    # And a destination socket that never existed.
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst",
                            "unix:" + os.path.join(t.tmpdir, "nope.qmp"), "--uri",
                            "tcp:127.0.0.1:0", "--timeout", "20"], timeout=30)
    check_eq(rc, 1, "exit code for a missing destination socket")
    check("nope.qmp" in err, "stderr does not name the socket: %r", err[-500:])


@R.test("migrate with a refused --param: error names it, nothing migrates")
def cli_bad_param(t):
    src = t.guest("src", mem="64M", workload="random", fill="random")
    dst = t.guest("dst", mem="64M", incoming="defer")
    rc, out, err = run_cli(["migrate", "--src", "unix:" + src.sock, "--dst", "unix:" + dst.sock,
                            "--uri", "unix:" + os.path.join(t.tmpdir, "m.sock"), "--param",
                            "downtime-limit=notanumber", "--timeout", "20"], timeout=30)
    log("bad param: rc %d stderr %r" % (rc, err.strip()[-300:]))
    check(rc in (1, 2), "exit code %d for a refused parameter", rc)
    check("downtime-limit" in err, "stderr does not name the parameter: %r", err[-500:])
    check(src.query_migrate().get("status") in (None, "none"),
          "source migrated although a parameter was refused: %r", src.query_migrate())


@R.test("migrate whose destination dies mid-way: exit 1, error shown")
def cli_migration_fails(t):
    src = t.guest("src", mem=MEM, workload="random", fill="random")
    dst = t.guest("dst", mem=MEM, incoming="defer")
    logpath = os.path.join(t.tmpdir, "cli.log")
    p = spawn([LIVEMIG, "migrate", "--src", "unix:" + src.sock, "--dst", "unix:" + dst.sock,
               "--uri", "tcp:127.0.0.1:0", "--param", "max-bandwidth=5000000",
               "--timeout", "30"], logpath)
    try:
        wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 1e6,
                   15, "1 MB transferred")
        dst.kill()
        try:
            rc = p.wait(20)
        except subprocess.TimeoutExpired:
            raise TestFailure("`livemig migrate` still runs 20 s after the destination died")
    finally:
        stop_pid(p, grace=2)
    with open(logpath, errors="replace") as f:
        text = f.read()
    log("dst died: rc %s, output tail %r" % (rc, text.strip()[-300:]))
    check_eq(rc, 1, "exit code")
    check(re.search(r"\bfailed\b", text), "output does not say failed: %r", text[-600:])
    check_eq(src.status(), "running", "source run state")


@R.test("status SOCK --json")
def cli_status(t):
    src = t.guest("src", mem="64M", workload="random")
    rc, out, err = run_cli(["status", src.sock, "--json"], timeout=10)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-300:])
    j = json.loads(out.strip().splitlines()[-1])
    check(isinstance(j, dict), "status --json is not an object: %r", j)
    check(j.get("status", "none") == "none", "status of an idle host: %r", j)
    dst = t.dest("dst", mem="64M")
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    wait_status(src, "completed", 20)
    rc, out, err = run_cli(["status", "unix:" + src.sock, "--json"], timeout=10)
    check_eq(rc, 0, "exit code")
    j = json.loads(out.strip().splitlines()[-1])
    check_eq(j.get("status"), "completed", "status --json after a migration")
    check(isinstance(j.get("ram"), dict) and j["ram"].get("transferred", 0) > 0,
          "status --json has no ram stats: %r", j)
    rc, out, err = run_cli(["status", src.sock], timeout=10)
    check_eq(rc, 0, "exit code of plain status")
    check("completed" in out, "plain status lacks 'completed': %r", out)
    rc, out, err = run_cli(["status", os.path.join(t.tmpdir, "nope.qmp")], timeout=10)
    check_eq(rc, 1, "exit code of status on a missing socket")
    check("nope.qmp" in err, "error does not name the socket: %r", err)


@R.test("cancel SOCK")
def cli_cancel(t):
    src = t.guest("src", mem=MEM, workload="random", fill="random")
    dst = t.dest("dst", mem=MEM, workload="random")
    set_params(src, {"max-bandwidth": 5 * 1000 * 1000})
    migrate(src, dst)
    wait_status(src, "active", 10)
    rc, out, err = run_cli(["cancel", "unix:" + src.sock], timeout=10)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-300:])
    wait_status(src, "cancelled", 5, fail_on=("completed", "failed"))
    check_eq(src.status(), "running", "source run state after cancel")


# argv, flag the error must name
BAD_FLAGS = [
    (["migrate", "--bogus"], "--bogus"),
    (["migrate", "--src", "unix:/x", "--dst", "unix:/y", "--uri", "tcp:1.2.3.4:5",
      "--frob", "1"], "--frob"),
    (["migrate", "--src"], "--src"),
    (["migrate", "--src", "unix:/x", "--dst", "unix:/y", "--uri", "tcp:127.0.0.1:1",
      "--cap", "events"], "--cap"),
    (["migrate", "--src", "unix:/x", "--dst", "unix:/y", "--uri", "tcp:127.0.0.1:1",
      "--param", "noequals"], "--param"),
    (["migrate", "--src", "unix:/x", "--dst", "unix:/y", "--uri", "tcp:127.0.0.1:1",
      "--timeout", "soon"], "--timeout"),
    (["migrate", "--dst", "unix:/y", "--uri", "tcp:127.0.0.1:1"], "--src"),
    (["status", "--nope", "x"], "--nope"),
    (["cancel", "--what", "x"], "--what"),
    (["guest", "--frobnicate", "--qmp", "unix:/tmp/x"], "--frobnicate"),
    (["guest", "--qmp", "unix:/tmp/x", "--workload", "busy"], "--workload"),
    (["guest", "--qmp", "unix:/tmp/x", "--threads", "0"], "--threads"),
    (["guest", "--qmp", "unix:/tmp/x", "--mem-backend", "hugetlb"], "--mem-backend"),
    (["demo", "--mem", "lots"], "--mem"),
    (["no-such-subcommand"], "no-such-subcommand"),
]


@R.test("bad flags: exit 2, error names the flag")
def cli_bad_flags(t):
    problems = []
    for argv, flag in BAD_FLAGS:
        rc, out, err = run_cli(argv, timeout=10)
        if rc != 2 or flag not in err:
            problems.append("`livemig %s`: exit %d, stderr %r" % (" ".join(argv), rc,
                                                                  err.strip()[-200:]))
    check(not problems, "%d of %d: %s", len(problems), len(BAD_FLAGS), "; ".join(problems))


@R.test("guest --mem 12Q: clear error")
def cli_bad_mem(t):
    sock = os.path.join(t.tmpdir, "g.qmp")
    for mem in ("12Q", "-5M", "0", "1K", "99999999999T"):
        rc, out, err = run_cli(["guest", "--mem", mem, "--qmp", "unix:" + sock], timeout=10)
        check_eq(rc, 2, "exit code for --mem %s (stderr %r)" % (mem, err[-200:]))
        check("--mem" in err and (mem in err or "bytes" in err),
              "--mem %s: error %r is not clear", mem, err.strip())
        check(not os.path.exists(sock), "a socket was created for --mem %s" % mem)


@R.test("help and version")
def cli_help(t):
    rc, out, err = run_cli(["--help"], timeout=10)
    check_eq(rc, 0, "livemig --help exit code")
    for sub in ("guest", "migrate", "status", "cancel", "demo"):
        check(sub in out, "--help does not list %s", sub)
        rc, out2, err2 = run_cli([sub, "--help"], timeout=10)
        check_eq(rc, 0, "livemig %s --help exit code" % sub)
        check("usage" in out2.lower(), "livemig %s --help has no usage: %r", sub, out2[:200])
    rc, out, err = run_cli(["--version"], timeout=10)
    check_eq(rc, 0, "--version exit code")
    check(re.search(r"\d+\.\d+", out), "--version prints no version: %r", out)


if __name__ == "__main__":
    R.main()
