"""`livemig demo`: the end-to-end job.  It must succeed and print a good
verification, and -- completed or interrupted -- leave no process and no
temp dir behind.  This test process becomes a child subreaper, so any
process the demo leaves behind is re-parented here and can be seen; the
demo runs with TMPDIR pointing at a private dir that must end up empty."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from lmtest import (LIVEMIG, Runner, TestFailure, become_subreaper, check, check_eq, log,
                    pid_alive, spawn, stop_pid, wait_until)

R = Runner("demo", per_test=90, budget=240)

LEFT_S = 20  # bound for the demo's processes and files to be gone


def proc_table():
    """{pid: (ppid, cmdline)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if rest[0] == "Z":
            continue
        out[int(d)] = (int(rest[1]), cmd)
    return out


class Watcher:
    """Records the demo's descendants while it runs (by polling /proc)."""

    def __init__(self, root):
        self.root = root
        self.seen = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="demo-watch", daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            tab = proc_table()
            family = {self.root}
            changed = True
            while changed:
                changed = False
                for pid, (ppid, cmd) in tab.items():
                    if ppid in family and pid not in family:
                        family.add(pid)
                        changed = True
                        # Updated on every pass: between fork and exec a
                        # child still shows the demo's command line.
                        self.seen[pid] = cmd
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def reap_orphans():
    """Reaps zombies re-parented to us (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def find_leftovers(watcher, tmpdir):
    """{pid: cmdline} of the demo's processes still alive."""
    reap_orphans()
    leftovers = {}
    for pid, cmd in watcher.seen.items():
        if pid_alive(pid):
            leftovers[pid] = cmd
    tab = proc_table()
    for pid, (ppid, cmd) in tab.items():
        # pgrep -f equivalent: anything whose command line names the
        # demo's dir; and orphans re-parented to us.
        if pid != os.getpid() and (tmpdir in cmd or (ppid == os.getpid() and LIVEMIG in cmd)):
            leftovers[pid] = cmd
    return leftovers


def check_nothing_left(t, watcher, tmpdir):
    # A guest the demo stopped may still be on its way out when the demo
    # has exited: give processes and files LEFT_S to go (polled).  What is
    # left behind for good stays, and is found.
    deadline = time.monotonic() + LEFT_S
    while True:
        leftovers = find_leftovers(watcher, tmpdir)
        if (not leftovers and not os.listdir(tmpdir)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in leftovers:  # by pid, so later tests are not disturbed
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    reap_orphans()
    leftovers = ["pid %d (%s)" % (pid, cmd.strip()[:100]) for pid, cmd in leftovers.items()]
    check(not leftovers, "processes left behind: %s", "; ".join(leftovers))
    left_files = os.listdir(tmpdir)
    check(not left_files, "files left in the demo's TMPDIR: %s", left_files)
    guests = [c for c in watcher.seen.values() if "guest" in c]
    check(guests, "never saw the demo's guest processes (seen: %s)",
          list(watcher.seen.values()))
    check(all(tmpdir in c for c in guests),
          "the demo's guests did not use TMPDIR %s: %s", tmpdir, guests)


def start_demo(t, args, new_session=False):
    # Short: the demo ignores a TMPDIR longer than 60 bytes (unix socket
    # paths are limited), and then this check would look at the wrong dir.
    tmpdir = tempfile.mkdtemp(prefix="lmd-", dir="/tmp")
    t.closers.append(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    env = dict(os.environ, TMPDIR=tmpdir)
    logpath = os.path.join(t.tmpdir, "demo.out")
    p = spawn([LIVEMIG, "demo"] + args, logpath, env=env, start_new_session=new_session)
    return p, Watcher(p.pid), tmpdir, logpath


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


@R.test("demo --mem 256M: exit 0, verification ok, nothing left behind")
def demo_ok(t):
    p, w, tmpdir, logpath = start_demo(t, ["--mem", "256M"])
    try:
        rc = p.wait(75)
    except subprocess.TimeoutExpired:
        raise TestFailure("demo did not finish within 75 s: %s" % read(logpath)[-800:])
    finally:
        w.stop()
        stop_pid(p, grace=3)
    out = read(logpath)
    log("demo output:\n#   " + out.strip().replace("\n", "\n#   ")[-2500:])
    check_eq(rc, 0, "demo exit code")
    check(re.search(r"verif\w*\s+destination:\s+ok", out, re.I),
          "no 'verify destination: ok' line in the output")
    check(re.search(r"\bcompleted\b", out), "output does not say the migration completed")
    check(re.search(r"demo: ok", out), "no final 'demo: ok'")
    check_nothing_left(t, w, tmpdir)


def demo_interrupted(t, to_group, when):
    """Interrupts a 2 GiB demo at a defined point: when == "migrating" (the
    migration is active: its first "[...] active pass" progress line is
    out) or "starting" (its guests exist but are still filling their
    memory)."""
    p, w, tmpdir, logpath = start_demo(t, ["--mem", "2G"], new_session=to_group)
    try:
        if when == "migrating":
            # Mid-migration: the migration is active (its first progress
            # line), far from done (2 GiB).
            wait_until(lambda: re.search(r"\] active ", read(logpath)) or p.poll() is not None,
                       60, "the demo's first 'active' progress line")
        else:
            wait_until(lambda: any("guest" in c for c in w.seen.values()) or
                       p.poll() is not None, 20, "the demo's guest processes")
        out = read(logpath)
        check(p.poll() is None, "demo ended before the interrupt: %s" % out[-500:])
        check(not re.search(r"migration completed|verify", out),
              "demo got too far before the interrupt (test precondition): %s" % out[-500:])
        if to_group:
            os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            os.kill(p.pid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            rc = p.wait(20)
        except subprocess.TimeoutExpired:
            raise TestFailure("demo still running 20 s after SIGINT: %s" %
                              read(logpath)[-800:])
        log("demo exited %d, %.2f s after SIGINT" % (rc, time.monotonic() - t0))
    finally:
        w.stop()
        stop_pid(p, grace=3)
    out = read(logpath)
    log("demo output tail:\n#   " + out.strip().replace("\n", "\n#   ")[-1200:])
    check(rc != 0, "demo exit code is 0 after SIGINT")
    check(rc > 0, "demo died of a signal (%d) instead of exiting" % rc)
    check(re.search(r"interrupt", out, re.I), "output does not say it was interrupted")
    check_nothing_left(t, w, tmpdir)


R.add("demo interrupted by SIGINT mid-migration: non-zero, nothing left behind",
      demo_interrupted, False, "migrating")
R.add("demo interrupted by Ctrl-C (SIGINT to the process group) while its guests start: "
      "nothing left behind", demo_interrupted, True, "starting")


if __name__ == "__main__":
    become_subreaper()
    R.main()
