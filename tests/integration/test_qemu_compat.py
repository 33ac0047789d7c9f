"""`livemig migrate` against QEMU's behaviours, reproduced by fake_qemu.py
(a QMP peer that behaves as QEMU 7.2 does where it matters to the CLI):
`completed` before total-time/downtime are filled, migrate-start-postcopy
accepted but never taking effect when the migration completes first, the
switch asked early enough to happen, QEMU's default 128 MiB/s limit, and
the single-client monitor.  Each checks the summary, --json and the exit
code.  Real QEMU, when installed: test_qemu_real.py."""

import json
import os
import re
import signal
import subprocess
import sys

from lmtest import (LIVEMIG, QMP, Runner, TestFailure, check, check_eq, log, run_cli, scaled,
                    spawn, stop_pid, wait_until)

R = Runner("qemu-compat", per_test=40, budget=240)

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_qemu.py")


def fake(t, name, *args):
    """A fake QEMU on <tmpdir>/<name>.qmp; stopped by pid at cleanup."""
    sock = os.path.join(t.tmpdir, name + ".qmp")
    p = spawn([sys.executable, FAKE, "--qmp", sock, "--lifetime", str(scaled(60))] +
              list(args), logpath=os.path.join(t.tmpdir, name + ".log"))
    t.closers.append(lambda: stop_pid(p, grace=2))
    wait_until(lambda: os.path.exists(sock) or p.poll() is not None, 10, name + " socket")
    check(p.poll() is None, "%s exited: %s", name, open(os.path.join(t.tmpdir,
                                                                     name + ".log")).read())
    return sock


def pair(t, *src_args, tag=""):
    return fake(t, "src" + tag, *src_args), fake(t, "dst" + tag, "--incoming", "defer")


def migrate_cli(src, dst, *extra, timeout=30):
    rc, out, err = run_cli(["migrate", "--src", src, "--dst", dst, "--uri", "tcp:127.0.0.1:0",
                            "--timeout", "20"] + list(extra), timeout=timeout)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    if err.strip():
        log("stderr: " + err.strip().replace("\n", "\n#   "))
    return rc, out, err


def as_json(out):
    try:
        return json.loads(out)
    except ValueError as e:
        raise TestFailure("--json output is not one JSON document (%s): %r" % (e, out[:500]))


def stats(sock):
    q = QMP(sock)
    try:
        return q.execute("x-fake-stats")
    finally:
        q.close()


def dst_status(sock):
    q = QMP(sock)
    try:
        return q.execute("query-migrate").get("status")
    finally:
        q.close()


def field(out, name):
    m = re.search(r"^  %s\s+(.*)$" % re.escape(name), out, re.M)
    return m.group(1).strip() if m else None


# ------------------------------------------------------ completion figures


@R.test("completed before total-time/downtime are filled: the CLI waits for them")
def t_late_figures(t):
    for js in (False, True):
        src, dst = pair(t, "--late-figures", "3", tag=str(int(js)))
        rc, out, err = migrate_cli(src, dst, *(["--json"] if js else []))
        check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
        st = stats(src)
        # The race was really forced: query-migrates saw the zeros first.
        check(st["queries-after-completed"] > 3, "the CLI stopped polling at %r",
              st["queries-after-completed"])
        if js:
            j = as_json(out)
            check_eq(j.get("status"), "completed", "status")
            check(isinstance(j.get("total-time"), int) and j["total-time"] > 0,
                  "total-time %r", j.get("total-time"))
            check_eq(j.get("downtime"), 3, "downtime (the fake's figure)")
        else:
            check_eq(field(out, "downtime"), "3.0 ms", "downtime line")
            tt = field(out, "total time")
            check(tt and not tt.startswith("0.0") and "not reported" not in tt,
                  "total time line %r", tt)


@R.test("figures never filled: 'not reported' / null, never a made-up 0, exit 0")
def t_never_figures(t):
    src, dst = pair(t, "--late-figures", "never")
    rc, out, err = migrate_cli(src, dst)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check_eq(field(out, "total time"), "not reported by the source", "total time line")
    check_eq(field(out, "downtime"), "not reported by the source", "downtime line")
    check(stats(src)["queries-after-completed"] > 3, "no bounded wait for the figures")
    src2, dst2 = pair(t, "--late-figures", "never", tag="2")
    rc, out, err = migrate_cli(src2, dst2, "--json")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    j = as_json(out)
    for k in ("total-time", "downtime"):
        check(k in j and j[k] is None, "--json %s is %r, want null", k, j.get(k))
    # The source's own reply is kept as it was.
    check_eq(j["source"].get("total-time"), 0, "raw source total-time")


# ---------------------------------------------------------- postcopy switch


@R.test("--postcopy=after-pass:1 on an idle QEMU guest: accepted, completes in precopy, said so")
def t_postcopy_too_late(t):
    src, dst = pair(t)
    rc, out, err = migrate_cli(src, dst, "--postcopy=after-pass:1")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    st = stats(src)
    check_eq(st["postcopy-requests-at"], ["active"], "migrate-start-postcopy accepted while")
    check("postcopy-active" not in st["statuses"], "the fake switched: %r", st["statuses"])
    check("postcopy requested: 1 pass done" in out, "no request line: %r", out[-800:])
    check("switched to postcopy" not in out, "claims a switch: %r", out[-800:])
    check_eq(field(out, "switch"), "completed in precopy before the switch took effect "
             "(requested: 1 pass done)", "switch line")
    check_eq(field(out, "statuses"), "setup active completed", "statuses line")

    src, dst = pair(t, tag="2")
    rc, out, err = migrate_cli(src, dst, "--postcopy=after-pass:1", "--json")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    pc = as_json(out).get("postcopy")
    check(isinstance(pc, dict), "--json has no postcopy object: %r", out[:800])
    check_eq((pc.get("requested"), pc.get("switched")), (True, False), "requested, switched")
    check_eq(pc.get("outcome"), "completed in precopy before the switch took effect", "outcome")
    check_eq(pc.get("statuses"), ["setup", "active", "completed"], "statuses")


@R.test("--postcopy on QEMU asks as soon as the migration starts: switches, said so")
def t_postcopy_asap(t):
    src, dst = pair(t)
    rc, out, err = migrate_cli(src, dst, "--postcopy")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    st = stats(src)
    check(len(st["postcopy-requests-at"]) == 1 and
          st["postcopy-requests-at"][0] in ("setup", "active"),
          "requests arrived at %r", st["postcopy-requests-at"])
    check("postcopy-active" in st["statuses"], "the fake did not switch: %r", st["statuses"])
    check("postcopy requested: as soon as the migration started" in out, "request line: %r",
          out[-800:])
    check(re.search(r"^switched to postcopy$", out, re.M), "no live switch line: %r", out[-800:])
    check(field(out, "switch").startswith("switched to postcopy"), "switch line %r",
          field(out, "switch"))
    check_eq(dst_status(dst), "completed", "destination status")

    src, dst = pair(t, tag="2")
    rc, out, err = migrate_cli(src, dst, "--postcopy=asap", "--json")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    pc = as_json(out).get("postcopy") or {}
    check_eq((pc.get("requested"), pc.get("switched")), (True, True), "requested, switched")
    check("postcopy-active" in pc.get("statuses", []), "statuses %r", pc.get("statuses"))


# ----------------------------------------------------------- bandwidth hint


@R.test("QEMU's default max-bandwidth: a hint when the run sat at it, none when lifted")
def t_bandwidth_hint(t):
    src, dst = pair(t)
    rc, out, err = migrate_cli(src, dst)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check("QEMU's default of 128 MiB/s" in err and "--param max-bandwidth=0" in err,
          "no hint on stderr: %r", err[-800:])
    src, dst = pair(t, tag="2")
    rc, out, err = migrate_cli(src, dst, "--param", "max-bandwidth=0", "--json")
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check("hint" not in err, "hint with the limit lifted: %r", err)
    as_json(out)  # stdout stays one JSON document


# ---------------------------------------------------------- one QMP client


@R.test("QEMU's monitor serves one client: status fails while migrate drives it, says why")
def t_single_client(t):
    # 64 MiB at 1 MiB/s: 640 polls, far more than this test needs.
    sf = os.path.join(t.tmpdir, "src.status")
    src = fake(t, "src", "--status-file", sf)
    dst = fake(t, "dst", "--incoming", "defer")
    p = subprocess.Popen([LIVEMIG, "migrate", "--src", src, "--dst", dst, "--uri",
                          "tcp:127.0.0.1:0", "--param", "max-bandwidth=1M", "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    t.closers.append(lambda: stop_pid(p, grace=2))
    wait_until(lambda: os.path.exists(sf) and open(sf).read() == "active", 20,
               "the source active")
    for sock in (src, dst):
        rc, out, err = run_cli(["status", sock], timeout=20)
        check_eq(rc, 1, "status exit code while migrate holds %s (stdout %r)" % (sock, out))
        check("one client at a time" in err, "stderr does not say why: %r", err)
    # Ctrl-C: the CLI cancels and exits 1; then the monitor is free again.
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=scaled(20))
    except subprocess.TimeoutExpired:
        raise TestFailure("migrate did not end after SIGINT")
    check_eq(p.returncode, 1, "migrate exit code after SIGINT")
    rc, out, err = run_cli(["status", src], timeout=20)
    check_eq(rc, 0, "status once the monitor is free (stderr %r)" % err)
    check("cancelled" in out, "status after the cancel: %r", out)


if __name__ == "__main__":
    R.main()
