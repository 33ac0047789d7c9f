"""Postcopy recovery from the CLI: `livemig recover` (one recovery of a
paused pair) and `livemig migrate --postcopy --auto-recover[=N]` (the
command recovers the migration it drives by itself).

The pause is forced, never waited for: a cut made with lmproxy, or
migrate-pause on one side, once both sides are postcopy-active with the
background push held to a trickle (max-postcopy-bandwidth), so pages are
still owed whatever the machine's speed.  A recovery the destination
cannot serve is forced too: the new unix path the CLI picks is taken by a
directory.  Each migration then completes with the destination's every
page checked against the source's (x-guest-verify); every process is
bounded and stopped by pid."""

import json
import os
import re
import subprocess

from lmtest import (LIVEMIG, Runner, TestFailure, check, check_eq, log, run_cli, set_caps,
                    set_params, spawn, stop_and_verify, stop_pid, wait_status, wait_until)

R = Runner("recovery-cli", per_test=120, budget=900)

MEM = "128M"
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}
HOLD = 256 * 1000
FAST = 10 * 1000 * 1000 * 1000
CAPS = {"events": True, "postcopy-ram": True}
ACTIVE = ("postcopy-active",)
NOT_PAUSED = ("failed", "completed", "cancelled")
END_BAD = ("failed", "cancelled", "postcopy-paused")


def pair(t, transport="tcp", proxied=True):
    """A source and a listening destination (postcopy-ram on both, the
    push held); with proxied, a proxy in front of the destination.
    Returns (src, dst, uri the source must use, proxy or None)."""
    wl = {"workload": "random", "dirty_rate": "32M"}
    src = t.guest("src", mem=MEM, fill="random", seed=1, **wl)
    dst = t.dest("dst", transport=transport, mem=MEM, seed=2, defer=True, caps=CAPS, **wl)
    set_caps(src, CAPS)
    set_params(src, dict(SLOW, **{"max-postcopy-bandwidth": HOLD}))
    if not proxied:
        return src, dst, dst.listen_uri(), None
    px = t.proxy(dst.listen_uri(), listen=transport)
    return src, dst, px.uri, px


def both_active(src, dst):
    wait_status(src, ACTIVE, 60, fail_on=NOT_PAUSED)
    wait_status(dst, ACTIVE, 60, fail_on=NOT_PAUSED)


def switch(src, dst, uri):
    """QMP migrate (the recover tests drive the migration themselves) and
    the switch once some precopy went."""
    src.qmp.execute("migrate", {"uri": uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 30,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    both_active(src, dst)


def paused_both(src, dst):
    for g in (src, dst):
        wait_status(g, "postcopy-paused", 40, fail_on=NOT_PAUSED)


def complete(src, dst):
    set_params(src, {"max-postcopy-bandwidth": FAST})
    wait_status(src, "completed", 120, fail_on=END_BAD)
    wait_status(dst, "completed", 120, fail_on=END_BAD)
    stop_and_verify(dst)


def qsock(g):
    return "unix:" + g.sock


# ---------------------------------------------------------- livemig recover


def recover(t, transport, how):
    src, dst, uri, px = pair(t, transport, proxied=(how == "cut"))
    switch(src, dst, uri)
    if how == "cut":
        px.cut()
    else:
        dst.qmp.execute("migrate-pause")
    paused_both(src, dst)
    if transport == "tcp":
        new = "tcp:127.0.0.1:0"
    else:
        new = "unix:" + os.path.join(t.tmpdir, "recovered.sock")
    rc, out, err = run_cli(["recover", "--src", qsock(src), "--dst", dst.sock, "--uri", new,
                            "--timeout", "60"], timeout=90)
    log("recover: rc %d, out %r, err %r" % (rc, out, err))
    check_eq(rc, 0, "livemig recover exit code")
    m = re.search(r"destination listening on (\S+)", out)
    check(m, "no 'destination listening on' line: %r", out)
    if transport == "tcp":
        check(re.fullmatch(r"tcp:127\.0\.0\.1:[1-9]\d*", m.group(1)),
              "port 0 not resolved: %r", m.group(1))
    else:
        check_eq(m.group(1), new, "unix URI")
    check("source resuming via %s" % m.group(1) in out, "no resume line: %r", out)
    check(re.search(r"recovered: source (postcopy-active|completed) again", out),
          "no 'recovered' line: %r", out)
    check_eq(src.query_migrate().get("status") in ("postcopy-active", "completed"), True,
             "source recovered")
    complete(src, dst)


R.add("livemig recover after a proxy cut (tcp port 0 resolved): completes and verifies", recover,
      "tcp", "cut")
R.add("livemig recover after migrate-pause on the destination (unix): completes and verifies",
      recover, "unix", "pause")


@R.test("livemig recover is refused, naming the side and its status, when a side is not paused")
def t_recover_refused(t):
    src, dst, uri, _ = pair(t, "tcp", proxied=False)
    other = t.guest("other", mem="64M", incoming="defer")
    argv = ["recover", "--src", qsock(src), "--dst", qsock(dst), "--uri", "tcp:127.0.0.1:0"]
    rc, out, err = run_cli(argv, timeout=30)
    check_eq(rc, 1, "exit code with nothing migrating")
    check("source is not paused (status 'none')" in err, "stderr %r", err)
    switch(src, dst, uri)
    rc, out, err = run_cli(argv, timeout=30)
    check_eq(rc, 1, "exit code while postcopy-active")
    check("source is not paused (status 'postcopy-active')" in err, "stderr %r", err)
    # Nothing was done: neither side was asked to recover.
    both_active(src, dst)
    src.qmp.execute("migrate-pause")
    paused_both(src, dst)
    # The source paused, the destination given is another host, idle.
    rc, out, err = run_cli(["recover", "--src", qsock(src), "--dst", qsock(other), "--uri",
                            "tcp:127.0.0.1:0"], timeout=30)
    check_eq(rc, 1, "exit code with an idle destination")
    check("destination is not paused (status 'none')" in err, "stderr %r", err)
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "the real destination")
    # Usage errors.
    rc, out, err = run_cli(["recover", "--src", qsock(src), "--dst", qsock(dst)], timeout=10)
    check_eq(rc, 2, "exit code without --uri")
    check("missing --uri" in err, "stderr %r", err)
    rc, out, err = run_cli(["recover", "--help"], timeout=10)
    check_eq(rc, 0, "recover --help")
    check("usage: livemig recover" in out, "help %r", out)
    # And then it recovers.
    rc, out, err = run_cli(argv, timeout=90)
    check_eq(rc, 0, "livemig recover exit code: %s" % err)
    complete(src, dst)


# ------------------------------------------------- migrate --auto-recover


def start_cli(t, src, dst, uri, extra, name):
    logpath = os.path.join(t.tmpdir, name + ".out")
    p = spawn([LIVEMIG, "migrate", "--src", qsock(src), "--dst", qsock(dst), "--uri", uri,
               "--postcopy=asap", "--timeout", "200"] + extra, logpath)
    return p, logpath


def finish_cli(p, logpath, bound=200):
    try:
        rc = p.wait(bound)
    except subprocess.TimeoutExpired:
        raise TestFailure("`livemig migrate` still runs after %d s" % bound)
    finally:
        stop_pid(p, grace=2)
    with open(logpath, errors="replace") as f:
        text = f.read()
    log("livemig migrate: rc %s, output tail %r" % (rc, text[-1500:]))
    return rc, text


def wait_recovered(src):
    """After the fault: the source paused, then postcopy-active again (the
    CLI's recovery), seen in its MIGRATION events."""
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-paused", timeout=40)
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-recover", timeout=60)
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-active", timeout=60)


@R.test("migrate --postcopy --auto-recover: migrate-pause on the destination is recovered by "
        "the command (plain lines and summary), completes and verifies")
def t_auto_pause(t):
    src, dst, uri, _ = pair(t, "tcp", proxied=False)
    p, logpath = start_cli(t, src, dst, uri, ["--auto-recover"], "cli")
    try:
        both_active(src, dst)
        src.qmp.drain_events()
        dst.qmp.execute("migrate-pause")
        wait_recovered(src)
        complete(src, dst)
    finally:
        rc, text = finish_cli(p, logpath)
    check_eq(rc, 0, "exit code")
    m = re.search(r"postcopy paused: (.+); recovery attempt 1 of 3 via (tcp:127\.0\.0\.1:\d+)",
                  text)
    check(m, "no attempt line in %r", text[-2000:])
    # The source's error-desc: the destination's pause closed the link.
    check("postcopy paused" in m.group(1), "error-desc in the attempt line: %r", m.group(1))
    check(m.group(2) != uri, "the attempt reused the original URI %s", uri)
    check(re.search(r"recovered: source postcopy-active again \(attempt 1 of 3\)", text),
          "no 'recovered' line: %r", text[-2000:])
    check(re.search(r"recovery\s+attempt 1 of 3 via %s: recovered" % re.escape(m.group(2)),
                    text), "summary has no recovery line: %r", text[-1000:])
    check("migration completed" in text, "summary: %r", text[-1000:])


@R.test("migrate --postcopy --auto-recover=2 --json: a proxy cut is recovered, the attempt is "
        "in the JSON, completes and verifies")
def t_auto_cut_json(t):
    src, dst, uri, px = pair(t, "tcp", proxied=True)
    p, logpath = start_cli(t, src, dst, uri, ["--auto-recover=2", "--json"], "cli")
    try:
        both_active(src, dst)
        src.qmp.drain_events()
        px.cut()
        wait_recovered(src)
        complete(src, dst)
    finally:
        rc, text = finish_cli(p, logpath)
    check_eq(rc, 0, "exit code")
    j = json.loads(text[text.index("{"):])
    check_eq(j.get("status"), "completed", "json status")
    rec = j.get("recovery") or {}
    check_eq(rec.get("max-attempts"), 2, "max-attempts")
    att = rec.get("attempts") or []
    check_eq(len(att), 1, "attempts %r" % att)
    check_eq(att[0].get("outcome"), "recovered", "attempt outcome")
    check(re.fullmatch(r"tcp:127\.0\.0\.1:[1-9]\d*", att[0].get("uri", "")), "attempt uri %r",
          att[0].get("uri"))
    check(att[0]["uri"] != uri, "the attempt went through the proxy again")
    check("recovery attempt" not in text[:text.index("{")], "--json printed progress lines")


@R.test("migrate --auto-recover=1 whose destination cannot listen on the new unix path: "
        "exit 1 with the destination's error, attempt listed as failed")
def t_auto_fails(t):
    src, dst, uri, _ = pair(t, "unix", proxied=False)
    # The path the CLI will pick for attempt 1, taken (a directory is
    # neither a socket the CLI may remove nor a path bind can use).
    check(uri.startswith("unix:"), "uri %r", uri)
    blocked = uri[5:] + ".recover1"
    os.mkdir(blocked)
    p, logpath = start_cli(t, src, dst, uri, ["--auto-recover=1"], "cli")
    try:
        both_active(src, dst)
        src.qmp.execute("migrate-pause")
        paused_both(src, dst)
    finally:
        rc, text = finish_cli(p, logpath)
    check_eq(rc, 1, "exit code")
    check(re.search(r"postcopy paused: .*paused by the user.*; recovery attempt 1 of 1 failed: "
                    r"destination: migrate-recover: .*%s" % re.escape(blocked), text),
          "no failed-attempt line: %r", text[-2000:])
    check(re.search(r"recovery\s+attempt 1 of 1 via -: failed: destination: migrate-recover",
                    text), "summary: %r", text[-1000:])
    check("migration postcopy-paused" in text, "summary status: %r", text[-1000:])
    check(os.path.isdir(blocked), "the CLI removed what was at %s" % blocked)
    # Both sides are still paused: recoverable by hand.
    check_eq(dst.query_migrate().get("status"), "postcopy-paused", "destination after the CLI")
    rc, out, err = run_cli(["recover", "--src", qsock(src), "--dst", qsock(dst), "--uri",
                            "unix:" + os.path.join(t.tmpdir, "byhand.sock")], timeout=90)
    check_eq(rc, 0, "livemig recover after the failed auto-recovery: %s" % err)
    complete(src, dst)


@R.test("migrate --auto-recover (3 attempts) with the first new unix path taken: attempt 1 "
        "fails, attempt 2 recovers, completes and verifies")
def t_auto_second(t):
    src, dst, uri, px = pair(t, "unix", proxied=True)
    os.mkdir(uri[5:] + ".recover1")
    p, logpath = start_cli(t, src, dst, uri, ["--auto-recover"], "cli")
    try:
        both_active(src, dst)
        src.qmp.drain_events()
        px.cut()
        wait_recovered(src)
        complete(src, dst)
    finally:
        rc, text = finish_cli(p, logpath)
    check_eq(rc, 0, "exit code")
    check(re.search(r"recovery attempt 1 of 3 failed: destination: ", text),
          "no failed attempt 1: %r", text[-2000:])
    second = uri + ".recover2"
    check("; recovery attempt 2 of 3 via %s\n" % second in text, "no attempt 2 line: %r",
          text[-2000:])
    check(re.search(r"recovery\s+attempt 1 of 3 via -: failed: ", text) and
          re.search(r"recovery\s+attempt 2 of 3 via %s: recovered" % re.escape(second), text),
          "summary: %r", text[-1000:])


@R.test("migrate --auto-recover: bad uses are refused")
def t_auto_usage(t):
    base = ["migrate", "--src", "unix:/nonexistent/a", "--dst", "unix:/nonexistent/b"]
    for extra, want in (
        (["--uri", "tcp:127.0.0.1:0", "--auto-recover"], "needs --postcopy"),
        (["--uri", "tcp:127.0.0.1:0", "--postcopy", "--auto-recover=0"], "1..20"),
        (["--uri", "tcp:127.0.0.1:0", "--postcopy", "--auto-recover=x"], "1..20"),
        (["--uri", "fd:3", "--postcopy", "--auto-recover"], "tcp: or unix:"),
    ):
        rc, out, err = run_cli(base + extra, timeout=10)
        check_eq(rc, 2, "exit code of %r" % extra)
        check(want in err, "%r: stderr %r", extra, err)


if __name__ == "__main__":
    R.main()
