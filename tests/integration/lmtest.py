"""lmtest - a small harness for livemig's integration tests (stdlib only).

Each test file starts real `livemig guest` processes and drives them over
QMP, the way a management layer would.  The harness gives:

  QMP      a client for one unix socket: greeting, qmp_capabilities,
           execute() with id matching, an event queue and wait_event();
  Guest    one `$LIVEMIG guest ...` process with its socket in the test's
           temp dir; always stopped by pid (quit, SIGTERM, SIGKILL, each
           wait bounded), also when a test fails, on exit and by the
           watchdog;
  Runner   "ok - name" / "not ok - name: reason" lines, a closing
           "N passed, N failed" line, exit status 1 when anything failed,
           a per-test watchdog (SIGALRM) and a hard one for the whole file;
           skip_all(reason) exits 77, which ctest shows as skipped;
  helpers  set_caps, set_params, wait_status, migrate, SilentListener (a
           destination that accepts a connection and never answers), ...

Sanitizer builds.  The harness looks at $LIVEMIG itself: a ThreadSanitizer
build runs ~2-10x slower, so every bound the harness applies (per-test
watchdog, file budget, readiness, QMP replies, wait_* helpers, run_cli) is
multiplied by SLOW (2 for TSan, LMTEST_SLOW=<factor> overrides; bounds
written in the tests themselves, such as "cancel took < 2 s", stay as they
are).  Every process started under TSan gets TSAN_OPTIONS with
halt_on_error=1, the suppression file tests/tsan.supp and a log_path in a
directory of this run, so a report from any process (guests, the CLI, the
demo's own children) fails the test that was running, with the report in
its output.  Options already in TSAN_OPTIONS win (halt_on_error=0 to see
every report of a run).  Guest logs and CLI stderr are scanned for
sanitizer reports too, for processes started with an environment of their
own.

Nothing here ever picks a free port up front: destinations listen on
tcp:127.0.0.1:0 and the real port is read back from query-migrate's
"socket-address", so tests cannot race each other for a port.

Timing: a test waits for conditions (a status, an event, a counter that
moves), never for a fixed time, and asserts what happened, not how long it
took.  Every wait for a condition (wait_until, wait_status, wait_runstate,
QMP.wait_event, check_writes_increase) is bounded, and never by less than
WAIT_MIN seconds whatever the caller asks: the bound is only reached when
the condition never comes, and on a loaded 2-CPU machine a few seconds are
not "never".  The per-test watchdog still bounds the whole test.
"""

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque

LIVEMIG = os.path.abspath(os.environ.get("LIVEMIG", "./build/livemig"))

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

FINAL_STATUSES = ("completed", "failed", "cancelled")

# Exit status of a file that skipped itself (ctest: SKIP_RETURN_CODE).
SKIP_EXIT = 77

# The least time any wait for a condition gives it (see the docstring).
WAIT_MIN = 20.0


def _bound(timeout):
    return max(float(timeout), WAIT_MIN)

_libc = None

# ------------------------------------------------------------- sanitizers

# What a sanitizer prints when it finds something (TSan, ASan/LSan, UBSan).
SANITIZER_MARKERS = (b"WARNING: ThreadSanitizer", b"ERROR: AddressSanitizer",
                     b"ERROR: LeakSanitizer", b": runtime error: ")


def _sanitizer_of(path):
    """"thread", "address" or "": what $LIVEMIG was built with (the
    runtime's init symbol is in every sanitized binary)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    if b"__tsan_init" in data:
        return "thread"
    if b"__asan_init" in data:
        return "address"
    return ""


SANITIZER = _sanitizer_of(LIVEMIG)
SLOW = float(os.environ.get("LMTEST_SLOW") or (2 if SANITIZER == "thread" else 1))
TSAN_SUPP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "tsan.supp"))
_report_dir = None  # log_path directory of the sanitizer runtime (TSan builds)


def scaled(seconds):
    """A time bound for this build: seconds * SLOW."""
    return seconds * SLOW


def _setup_sanitizer_env():
    """Points every child's sanitizer runtime at a report directory of ours
    (inherited through os.environ, also by the demo's guests)."""
    global _report_dir
    if SANITIZER != "thread":
        return
    _report_dir = tempfile.mkdtemp(prefix="lmt-tsan-", dir="/tmp")
    atexit.register(shutil.rmtree, _report_dir, True)
    opts = [o for o in os.environ.get("TSAN_OPTIONS", "").replace(" ", ":").split(":") if o]
    have = {o.split("=", 1)[0] for o in opts}
    for k, v in (("halt_on_error", "1"), ("second_deadlock_stack", "1"),
                 ("suppressions", TSAN_SUPP)):
        if k not in have:
            opts.append("%s=%s" % (k, v))
    # Ours always: the reports must land where take_sanitizer_reports looks.
    opts = [o for o in opts if not o.startswith("log_path=")]
    opts.append("log_path=" + os.path.join(_report_dir, "tsan"))
    os.environ["TSAN_OPTIONS"] = ":".join(opts)


def take_sanitizer_reports():
    """Reports written since the last call (TSan's log_path files, one per
    process), as text; the files are removed."""
    if not _report_dir:
        return ""
    out = []
    for name in sorted(os.listdir(_report_dir)):
        path = os.path.join(_report_dir, name)
        try:
            with open(path, "rb") as f:
                out.append(f.read().decode(errors="replace"))
            os.unlink(path)
        except OSError:
            pass
    return "".join(out)


_FRAME = re.compile(r"^\s+#\d+ (\S+) (/\S+?):(\d+)")


def sanitizer_summary(text):
    """One line per report: its kind and, for each of its stacks, the first
    frame in a source file (interceptors have none), e.g. "data race:
    fail send.c:92 / lm_mfd_send_free send.c:513"."""
    out = []
    for rep in re.split(r"^=+$", text, flags=re.M):
        m = re.search(r"(?:WARNING: ThreadSanitizer|ERROR: \w+Sanitizer): ([^(\n]+)", rep)
        if not m:
            continue
        frames, want = [], False
        for line in rep.splitlines():
            if re.match(r"^\s+(Read|Write|Previous|Atomic|Mutex \S+ acquired|Cycle)", line):
                want = True
            f = _FRAME.match(line)
            if want and f:
                frames.append("%s %s:%s" % (f.group(1), os.path.basename(f.group(2)),
                                            f.group(3)))
                want = False
        out.append("%s: %s" % (m.group(1).strip(), " / ".join(frames[:2]) or "?"))
    if not out:
        out = [l.strip() for l in text.splitlines()
               if any(mk.decode() in l for mk in SANITIZER_MARKERS)]
    return "; ".join(out[:3]) or text.strip()[:300]


def has_sanitizer_report(data):
    if isinstance(data, str):
        data = data.encode(errors="replace")
    return any(m in data for m in SANITIZER_MARKERS)


_setup_sanitizer_env()


def _prctl(option, arg):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def _child_setup():
    # Runs in the child between fork and exec: die with the test process,
    # so a test killed from outside (ctest's timeout) leaves no guest behind.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper():
    """Orphans of our children are re-parented to us (not to init), so a
    test can see processes a `livemig demo` left behind."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


# ------------------------------------------------------------------ errors


class TestFailure(Exception):
    pass


class QMPError(Exception):
    """A QMP {"error": {...}} reply."""

    def __init__(self, cmd, cls, desc):
        super().__init__("%s: %s: %s" % (cmd, cls, desc))
        self.cmd = cmd
        self.cls = cls
        self.desc = desc


class QMPTimeout(Exception):
    pass


class WatchdogTimeout(BaseException):
    """Raised in the main thread by SIGALRM.  A BaseException so that a
    test's `except Exception` cannot swallow it."""


def check(cond, msg, *args):
    if not cond:
        raise TestFailure(msg % args if args else msg)


def check_eq(got, want, what):
    if got != want:
        raise TestFailure("%s: got %r, want %r" % (what, got, want))


def log(msg):
    print("# " + msg, flush=True)


# ------------------------------------------------- process bookkeeping

# Every process any test started and has not reaped yet, by pid.  Used by
# atexit and the watchdog to kill whatever is left.
_live_procs = {}
_live_lock = threading.Lock()


def _register(proc):
    with _live_lock:
        _live_procs[proc.pid] = proc


def _unregister(proc):
    with _live_lock:
        _live_procs.pop(proc.pid, None)


def stop_pid(proc, grace=5.0, how=("term",)):
    """Bounded stop of a Popen by its pid: SIGTERM then SIGKILL."""
    if proc.poll() is None and "term" in how:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    _unregister(proc)


def kill_all_children():
    with _live_lock:
        procs = list(_live_procs.values())
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _unregister(p)


atexit.register(kill_all_children)


def spawn(argv, logpath=None, **kw):
    """Starts a bounded helper process (registered for cleanup)."""
    out = open(logpath, "ab") if logpath else subprocess.DEVNULL
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             preexec_fn=_child_setup, **kw)
    finally:
        if logpath:
            out.close()
    _register(p)
    return p


def run_cli(args, timeout=60, env=None, input_bytes=None):
    """Runs `$LIVEMIG args...` to completion (bounded: timeout * SLOW).
    Returns (exit code, stdout text, stderr text); a sanitizer report in
    its stderr fails the test."""
    timeout = scaled(timeout)
    p = subprocess.Popen([LIVEMIG] + list(args), stdin=subprocess.PIPE if input_bytes
                         else subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=_child_setup, env=env)
    _register(p)
    try:
        out, err = p.communicate(input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_pid(p, grace=2)
        out, err = p.communicate()
        raise TestFailure("`livemig %s` did not finish within %s s; stderr: %s" %
                          (" ".join(args), timeout, err.decode(errors="replace")[-2000:]))
    finally:
        _unregister(p)
    if has_sanitizer_report(err):
        raise TestFailure("`livemig %s`: sanitizer report: %s" %
                          (" ".join(args), err.decode(errors="replace")[-4000:]))
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    # state is the field after the ")" of comm; a zombie is dead.
    return st[st.rindex(")") + 2] != "Z"


def sigstop_and_wait(pid, timeout=10.0):
    """SIGSTOP pid and return once every one of its threads is stopped
    (state T in /proc/PID/task/*/stat).  kill(2) only queues the signal: a
    thread the loaded machine has not run since is not stopped yet and may
    still answer, which a test of a dead peer must not allow."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + scaled(timeout)
    while True:
        running = []
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    st = f.read()
            except OSError:
                continue  # the thread ended
            if st[st.rindex(")") + 2] not in "Tt":
                running.append(tid)
        if not running:
            return
        if time.monotonic() > deadline:
            raise TestFailure("pid %d: threads %s not stopped %.0f s after SIGSTOP" %
                              (pid, ",".join(running), timeout))
        time.sleep(0.005)


# --------------------------------------------------------------------- QMP


class QMP:
    """A QMP client on a unix socket.  Not thread-safe: one thread per
    client (open several clients for concurrency)."""

    _next_id = 0

    def __init__(self, path, timeout=15.0):
        timeout = scaled(timeout)
        self.path = path
        self.buf = b""
        self.events = deque()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            deadline = time.monotonic() + timeout
            self.greeting = self._recv(deadline)
            if "QMP" not in self.greeting:
                raise TestFailure("QMP %s: bad greeting %r" % (path, self.greeting))
            self.execute("qmp_capabilities", timeout=timeout / SLOW)
        except BaseException:
            self.sock.close()
            raise

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- low level

    def send_raw(self, data, fds=None):
        """Sends data; fds (descriptors) go with its first bytes as
        SCM_RIGHTS, as QEMU's getfd/add-fd expect."""
        if fds:
            n = socket.send_fds(self.sock, [data], list(fds))
            data = data[n:]
        if data:
            self.sock.sendall(data)

    def _parse_one(self):
        s = self.buf.lstrip()
        if not s:
            self.buf = b""
            return None
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:
            text = s.decode("utf-8", errors="replace")
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            if len(s) > (8 << 20):
                raise TestFailure("QMP %s: unparsable reply %r" % (self.path, s[:200]))
            self.buf = s
            return None
        self.buf = text[end:].encode("utf-8")
        return obj

    def _recv(self, deadline):
        """Next message (reply or event), waiting until deadline."""
        while True:
            obj = self._parse_one()
            if obj is not None:
                return obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout("QMP %s: no message in time (buffer %r)" %
                                 (self.path, self.buf[:200]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("QMP %s: connection closed by the server" % self.path)
            self.buf += data

    def _poll(self):
        """Reads whatever is already available, queueing events."""
        self.sock.settimeout(0)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buf += data
        except (BlockingIOError, socket.timeout):
            pass
        while True:
            obj = self._parse_one()
            if obj is None:
                return
            if "event" in obj:
                self.events.append(obj)

    def recv_reply(self, timeout=30.0, want_id=None):
        """Next non-event message; events are queued meanwhile.  With
        want_id, replies carrying another id are skipped.  Waits at most
        timeout * SLOW."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            obj = self._recv(deadline)
            if "event" in obj:
                self.events.append(obj)
                continue
            if want_id is not None and "id" in obj and obj["id"] != want_id:
                continue
            return obj

    # -- commands

    def execute_raw(self, cmd, args=None, timeout=30.0, fds=None):
        QMP._next_id += 1
        cid = "lmtest-%d" % QMP._next_id
        msg = {"execute": cmd, "id": cid}
        if args is not None:
            msg["arguments"] = args
        self.sock.settimeout(scaled(timeout))
        self.send_raw(json.dumps(msg).encode() + b"\n", fds)
        resp = self.recv_reply(timeout, want_id=cid)
        if resp.get("id") != cid:
            raise TestFailure("QMP %s: reply to %s has id %r, want %r: %r" %
                              (self.path, cmd, resp.get("id"), cid, resp))
        return resp

    def execute(self, cmd, args=None, timeout=30.0, fds=None):
        """Runs cmd; fds: descriptors passed with it (the caller keeps
        its own copies)."""
        resp = self.execute_raw(cmd, args, timeout, fds)
        if "error" in resp:
            e = resp["error"]
            raise QMPError(cmd, e.get("class"), e.get("desc"))
        if "return" not in resp:
            raise TestFailure("QMP %s: reply to %s has neither return nor error: %r" %
                              (self.path, cmd, resp))
        return resp["return"]

    def expect_error(self, cmd, args=None, timeout=30.0, fds=None):
        """Runs cmd, which must fail; returns the QMPError."""
        try:
            ret = self.execute(cmd, args, timeout, fds)
        except QMPError as e:
            return e
        raise TestFailure("%s %s: expected a QMP error, got return %r" %
                          (cmd, json.dumps(args), ret))

    # -- events

    def wait_event(self, name, pred=None, timeout=10.0):
        """Waits for an event called name (and pred(data) true); events
        before it stay queued.  timeout: at least WAIT_MIN, times SLOW."""
        timeout = scaled(_bound(timeout))
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and (pred is None or pred(ev.get("data", {}))):
                    del self.events[i]
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("QMP %s: no %s event within %.1f s (queued: %s)" %
                                  (self.path, name, timeout,
                                   [e.get("event") for e in self.events]))
            try:
                obj = self._recv(deadline)
            except QMPTimeout:
                continue
            if "event" in obj:
                self.events.append(obj)

    def drain_events(self):
        self._poll()
        evs = list(self.events)
        self.events.clear()
        return evs

    def migration_statuses(self):
        """The MIGRATION statuses received so far, in order (drains)."""
        return [e["data"]["status"] for e in self.drain_events()
                if e.get("event") == "MIGRATION"]


# ------------------------------------------------------------------- guest


class Guest:
    """One `livemig guest` process."""

    def __init__(self, tmpdir, name, mem="256M", incoming=None, workload=None,
                 dirty_rate=None, threads=None, seed=None, fill=None, hot_size=None,
                 extra=(), ready_timeout=None, env=None, wrap=()):
        """wrap: an argv prefix that execs the guest in place (same pid),
        e.g. `ip netns exec NS` (lmnetns.NetNS.exec_prefix)."""
        self.name = name
        self.tmpdir = tmpdir
        self.sock = os.path.join(tmpdir, name + ".qmp")
        self.logpath = os.path.join(tmpdir, name + ".log")
        self.incoming = incoming
        self.clients = []
        self._qmp = None
        argv = [LIVEMIG, "guest", "--mem", str(mem), "--qmp", "unix:" + self.sock]
        for flag, val in (("--incoming", incoming), ("--workload", workload),
                          ("--dirty-rate", dirty_rate), ("--threads", threads),
                          ("--seed", seed), ("--fill", fill), ("--hot-size", hot_size)):
            if val is not None:
                argv += [flag, str(val)]
        argv = list(wrap) + argv + list(extra)
        self.argv = argv
        self.proc = spawn(argv, self.logpath, env=env)
        self.pid = self.proc.pid
        if ready_timeout is None:
            # A random fill writes every page once (a few hundred MB/s in the
            # worst case: first-touch faults without huge pages).
            ready_timeout = 15 + parse_size(mem) / (100 << 20)
        ready_timeout = scaled(ready_timeout)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        """Ready = the "livemig guest: ready" line is in its log (printed
        once QMP serves and --incoming listens) and QMP connects."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TestFailure("guest %s exited with %s before it was ready: %s" %
                                  (self.name, self.proc.returncode, self.log_tail()))
            if "livemig guest: ready" in self.log_tail(100000) and os.path.exists(self.sock):
                try:
                    self._qmp = QMP(self.sock, timeout=5)
                    self.clients.append(self._qmp)
                    return
                except (OSError, ConnectionError, QMPTimeout):
                    pass
            if time.monotonic() > deadline:
                raise TestFailure("guest %s: not ready within %.0f s: %s" %
                                  (self.name, timeout, self.log_tail()))
            time.sleep(0.02)

    @property
    def qmp(self):
        return self._qmp

    def client(self):
        """Opens one more QMP client on this guest (closed by stop())."""
        c = QMP(self.sock)
        self.clients.append(c)
        return c

    def log_tail(self, n=2000):
        try:
            with open(self.logpath, "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self):
        """quit over QMP, then SIGTERM, then SIGKILL; every wait bounded."""
        if self.proc.poll() is None and self._qmp is not None:
            try:
                self._qmp.execute("quit", timeout=2)
            except (QMPError, QMPTimeout, OSError, ConnectionError, TestFailure):
                pass
            try:
                self.proc.wait(scaled(5))
            except subprocess.TimeoutExpired:
                pass
        stop_pid(self.proc, grace=5)
        for c in self.clients:
            c.close()
        self.clients = []

    # -- convenience

    def stats(self):
        return self.qmp.execute("x-guest-stats")

    def status(self):
        return self.qmp.execute("query-status")["status"]

    def query_migrate(self):
        return self.qmp.execute("query-migrate")

    def verify(self):
        return self.qmp.execute("x-guest-verify", timeout=60)

    def listen_uri(self):
        """The URI a source must use to reach this destination."""
        return dest_uri(self)


# ---------------------------------------------------------------- helpers


def parse_size(s):
    s = str(s).strip().upper()
    m = re.fullmatch(r"(\d+)([KMGT]?)(I?B)?", s)
    if not m:
        return 0
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]
    return int(m.group(1)) * mult


def set_caps(g_or_q, caps):
    """caps: {"events": True, ...}"""
    q = g_or_q.qmp if isinstance(g_or_q, Guest) else g_or_q
    return q.execute("migrate-set-capabilities",
                     {"capabilities": [{"capability": k, "state": bool(v)}
                                       for k, v in caps.items()]})


def set_params(g_or_q, params):
    """params: {"max-bandwidth": 0, "downtime-limit": 300} (or with '_')."""
    q = g_or_q.qmp if isinstance(g_or_q, Guest) else g_or_q
    return q.execute("migrate-set-parameters",
                     {k.replace("_", "-"): v for k, v in params.items()})


def wait_status(g_or_q, statuses, timeout=30.0, poll=0.02, fail_on=FINAL_STATUSES):
    """Polls query-migrate until its status is one of statuses.  A final
    status that is not wanted fails at once (with its error-desc).
    timeout: at least WAIT_MIN, times SLOW."""
    timeout = _bound(timeout)
    q = g_or_q.qmp if isinstance(g_or_q, Guest) else g_or_q
    timeout = scaled(timeout)
    if isinstance(statuses, str):
        statuses = (statuses,)
    deadline = time.monotonic() + timeout
    info = {}
    while True:
        info = q.execute("query-migrate")
        st = info.get("status")
        if st in statuses:
            return info
        if st in fail_on:
            raise TestFailure("migration ended %s (wanted %s): error-desc %r" %
                              (st, "/".join(statuses), info.get("error-desc")))
        if time.monotonic() > deadline:
            raise TestFailure("status %s not reached within %.1f s (last: %s, ram %s)" %
                              ("/".join(statuses), timeout, st,
                               json.dumps(info.get("ram", {}))[:300]))
        time.sleep(poll)


# QEMU's own tests make a migration converge with a 30 s downtime-limit
# (migration-test.c, migrate_ensure_converge).
CONVERGE_SURE_MS = 30000


def wait_converged(src, what, try_s=20.0, timeout=40.0):
    """Waits for the source's migration to complete under the parameters in
    force; if it is still active after try_s (this machine moves pages
    slower than the workload dirties them: seen on a CI machine at 55 MB/s
    against 128 MB/s of writes), raises downtime-limit to QEMU's converge
    value, logs it, and waits timeout more.  Returns (query-migrate when
    completed, the downtime-limit in force at the end)."""
    limit = src.qmp.execute("query-migrate-parameters").get("downtime-limit")
    try:
        return wait_status(src, "completed", try_s), limit
    except TestFailure:
        info = src.query_migrate()
        if info.get("status") != "active":
            raise
    ram = info.get("ram", {})
    log("%s: not converged at downtime-limit %s ms within %.0f s (mbps %s, "
        "dirty-pages-rate %s): downtime-limit %d ms, as QEMU's tests converge" %
        (what, limit, scaled(_bound(try_s)), ram.get("mbps"), ram.get("dirty-pages-rate"),
         CONVERGE_SURE_MS))
    set_params(src, {"downtime-limit": CONVERGE_SURE_MS})
    return wait_status(src, "completed", timeout), CONVERGE_SURE_MS


def wait_until(fn, timeout, what, poll=0.05):
    """Waits until fn() returns a true value (returned).  timeout: at least
    WAIT_MIN, times SLOW."""
    timeout = scaled(_bound(timeout))
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TestFailure("%s: not within %.1f s" % (what, timeout))
        time.sleep(poll)


def wait_runstate(g, states, timeout=10.0):
    """Polls query-status until the run state is one of states (returned).
    timeout: at least WAIT_MIN."""
    if isinstance(states, str):
        states = (states,)
    return wait_until(lambda: g.status() in states and g.status(), timeout,
                      "run state %s of %s (last %s)" % ("/".join(states), g.name, g.status()))


def dest_uri(dst):
    """Reads the real listening address of a destination back from its
    query-migrate "socket-address" (the port of tcp:...:0 resolved)."""
    if dst.incoming and dst.incoming.startswith("unix:"):
        return dst.incoming
    info = dst.query_migrate()
    sa = info.get("socket-address")
    if isinstance(sa, list) and sa:
        a = sa[0]
        if isinstance(a, dict):
            if a.get("type") == "inet":
                host = a.get("host", "127.0.0.1")
                if ":" in host:
                    host = "[" + host + "]"
                return "tcp:%s:%s" % (host, a.get("port"))
            if a.get("type") == "unix":
                return "unix:" + a.get("path", "")
        if isinstance(a, str):
            return a
    if isinstance(sa, str) and sa:
        return sa
    raise TestFailure("destination %s: query-migrate has no usable socket-address: %r" %
                      (dst.name, info))


def migrate(src, dst, uri=None):
    """Starts src -> dst (QMP migrate); returns the URI used."""
    if uri is None:
        uri = dest_uri(dst)
    src.qmp.execute("migrate", {"uri": uri})
    return uri


def writes_increase(g, wait=0.5):
    """True when the guest's workload writes go on (x-guest-stats): polled
    until they increase, False if they did not within `wait` seconds (an
    observation window: only a test that wants them to stay still may
    rely on False)."""
    a = g.stats()["writes"]
    deadline = time.monotonic() + wait
    while True:
        if g.stats()["writes"] > a:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def check_writes_increase(g, timeout=WAIT_MIN):
    """The guest's workload runs: its write count goes up (polled; fails if
    it does not within timeout, at least WAIT_MIN).  Returns the increase."""
    a = g.stats()["writes"]
    deadline = time.monotonic() + _bound(timeout)
    while True:
        time.sleep(0.02)
        b = g.stats()["writes"]
        if b > a:
            return b - a
        if time.monotonic() > deadline:
            raise TestFailure("%s: workload writes do not increase (%d -> %d), run state %s" %
                              (g.name, a, b, g.status()))


def stop_and_verify(g):
    """Stops the guest (QMP stop) and runs x-guest-verify, which must be ok."""
    if g.status() == "running":
        g.qmp.execute("stop")
    v = g.verify()
    check(v.get("ok") is True and v.get("pages", 0) > 0 and v.get("bad-pages") == 0,
          "%s: x-guest-verify failed: %r", g.name, v)
    return v


class SilentListener:
    """A fake destination on 127.0.0.1:<ephemeral>: accepts connections and
    never writes a byte (reads and keeps what it gets).  Lives at most
    `lifetime` seconds."""

    def __init__(self, lifetime=60.0):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.uri = "tcp:127.0.0.1:%d" % self.port
        self.conns = []
        self.received = b""
        self.accepted = threading.Event()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._t = threading.Thread(target=self._run, name="silent-dst", daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                c, _ = self.lsock.accept()
                c.setblocking(False)
                self.conns.append(c)
                self.accepted.set()
            except socket.timeout:
                pass
            except OSError:
                break
            for c in list(self.conns):
                try:
                    d = c.recv(65536)
                    if d and len(self.received) < (1 << 20):
                        self.received += d
                except (BlockingIOError, OSError):
                    pass
        self._close()

    def _close(self):
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        try:
            self.lsock.close()
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self._t.join(2)


def time_scale():
    """Factor for the few latency bounds tests assert (e.g. "cancel answers
    within 1 s"): LMTEST_TIME_SCALE when set, else 5 when LIVEMIG is a
    sanitizer build (a path under build-asan/ or build-tsan/), else 1."""
    env = os.environ.get("LMTEST_TIME_SCALE")
    if env:
        try:
            return max(1.0, float(env))
        except ValueError:
            pass
    parts = LIVEMIG.split(os.sep)
    return 5.0 if any(p.startswith(("build-asan", "build-tsan")) for p in parts) else 1.0


def refused_port():
    """A loopback port nobody listens on (bound, then closed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------ runner


class Ctx:
    """Per-test context: a temp dir and everything started in it."""

    def __init__(self, name):
        safe = re.sub(r"[^A-Za-z0-9]+", "-", name)[:40]
        # Short base: unix socket paths are limited to 107 bytes.
        self.tmpdir = tempfile.mkdtemp(prefix="lmt-%s-" % safe, dir="/tmp")
        self.guests = []
        self.closers = []
        self.sanitizer_reports = []  # (file name, text) found by cleanup

    def guest(self, name, **kw):
        g = Guest(self.tmpdir, name, **kw)
        self.guests.append(g)
        return g

    def dest(self, name="dst", transport="tcp", defer=False, caps=None, **kw):
        """A destination listening on tcp:127.0.0.1:0 or unix:<tmpdir>/...

        defer: QEMU's/libvirt's flow: start with --incoming defer, set
        caps (e.g. {"events": True}), then migrate-incoming URI.  Without
        defer the guest gets --incoming URI on its command line."""
        if transport == "tcp":
            inc = "tcp:127.0.0.1:0"
        elif transport == "unix":
            inc = "unix:" + os.path.join(self.tmpdir, name + ".mig")
        else:
            inc = transport
        if not defer:
            g = self.guest(name, incoming=inc, **kw)
            if caps:
                set_caps(g, caps)
            return g
        g = self.guest(name, incoming="defer", **kw)
        if caps:
            set_caps(g, caps)
        g.qmp.execute("migrate-incoming", {"uri": inc})
        g.incoming = inc
        return g

    def silent(self, lifetime=60.0):
        s = SilentListener(lifetime)
        self.closers.append(s.close)
        return s

    def proxy(self, target, listen="tcp", lifetime=120.0, record=None):
        """A fault-injection proxy (lmproxy.Proxy) in front of `target` (a
        destination's URI), listening on tcp or unix; closed by cleanup
        after the guests are stopped.  record: a directory where it captures
        each connection (lmproxy's chan-N.to-dst / chan-N.to-src)."""
        import lmproxy
        p = lmproxy.Proxy(target, listen=listen, tmpdir=self.tmpdir, lifetime=scaled(lifetime),
                          record=record)
        self.closers.append(p.close)
        return p

    def cleanup(self):
        for g in self.guests:
            try:
                g.stop()
            except Exception as e:  # keep cleaning up the others
                log("cleanup of %s: %s" % (g.name, e))
        for c in self.closers:
            try:
                c()
            except Exception as e:
                log("cleanup: %s" % e)
        self._scan_logs()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _scan_logs(self):
        """Sanitizer reports in the logs of this test's processes (those
        whose runtime did not write to our log_path)."""
        for name in sorted(os.listdir(self.tmpdir)):
            path = os.path.join(self.tmpdir, name)
            if not os.path.isfile(path) or path.endswith((".qmp", ".mig")):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read(64 << 20)
            except OSError:
                continue
            if has_sanitizer_report(data):
                self.sanitizer_reports.append((name, data.decode(errors="replace")))


class Runner:
    """Runs the tests of one file in order.

    per_test: seconds a single test may take before it is failed (SIGALRM
    raises WatchdogTimeout in it; its cleanup still runs).
    budget: seconds for the whole file; past it the remaining tests are
    failed without running, and a hard alarm kills everything."""

    def __init__(self, title, per_test=60, budget=240):
        self.title = title
        self.per_test = per_test
        self.budget = budget
        self.tests = []
        self.passed = 0
        self.failed = 0
        self.current = None

    def test(self, name, *args, timeout=None):
        def deco(fn):
            self.tests.append((name, fn, args, timeout))
            return fn
        return deco

    def add(self, name, fn, *args, timeout=None):
        self.tests.append((name, fn, args, timeout))

    def _soft_alarm(self, signum, frame):
        raise WatchdogTimeout("watchdog: test %r exceeded its time" % self.current)

    def _hard_alarm(self, signum, frame):
        print("not ok - %s: hard watchdog: cleanup hung; killing children" % self.current,
              flush=True)
        kill_all_children()
        self.failed += 1
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        os._exit(1)

    def main(self):
        if not os.access(LIVEMIG, os.X_OK):
            print("not ok - setup: LIVEMIG=%s is not an executable (build it first)" % LIVEMIG)
            print("0 passed, 1 failed")
            sys.exit(1)
        log("%s: %d tests, livemig %s%s" % (self.title, len(self.tests), LIVEMIG,
                                           " (%s sanitizer, time bounds x%g)" %
                                           (SANITIZER, SLOW) if SANITIZER else ""))
        start = time.monotonic()
        take_sanitizer_reports()
        only = os.environ.get("LMTEST_ONLY")  # a substring: run just those tests
        for name, fn, args, timeout in self.tests:
            if only and only not in name:
                continue
            self.current = name
            if time.monotonic() - start > scaled(self.budget):
                self._report(name, False, "not run: file budget of %d s used up" %
                             scaled(self.budget), 0)
                continue
            limit = scaled(timeout or self.per_test)
            ctx = Ctx(name)
            t0 = time.monotonic()
            ok, reason = True, ""
            signal.signal(signal.SIGALRM, self._soft_alarm)
            signal.alarm(int(limit))
            try:
                fn(ctx, *args)
            except WatchdogTimeout as e:
                ok, reason = False, "%s (%d s)" % (e, limit)
            except TestFailure as e:
                ok, reason = False, str(e)
            except QMPError as e:
                ok, reason = False, "unexpected QMP error: %s" % e
            except Exception as e:
                ok, reason = False, "%s: %s" % (type(e).__name__, e)
                traceback.print_exc(file=sys.stdout)
            finally:
                signal.alarm(0)
                # Cleanup is bounded by its own waits; the hard alarm is for
                # a cleanup that hangs anyway.
                signal.signal(signal.SIGALRM, self._hard_alarm)
                signal.alarm(int(scaled(60)))
                try:
                    ctx.cleanup()
                except WatchdogTimeout:
                    pass
                signal.alarm(0)
            reports = [(n, txt) for n, txt in ctx.sanitizer_reports]
            tsan = take_sanitizer_reports()
            if tsan:
                reports.append(("TSan log_path", tsan))
            if reports:
                # A report fails the test even when the scenario passed:
                # the race happened during it, whichever process saw it.
                summary = "; ".join("%s: %s" % (n, sanitizer_summary(txt)) for n, txt in reports)
                reason = (reason + "; " if not ok else "") + "sanitizer report: " + summary
                ok = False
                for n, txt in reports:
                    log("sanitizer report (%s):\n#   %s" % (n, txt.strip().replace("\n", "\n#   ")))
            if not ok:
                for g in ctx.guests:
                    tail = g.log_tail(600)
                    if tail:
                        log("%s log: %s" % (g.name, tail.replace("\n", "\n#   ")))
            self._report(name, ok, reason, time.monotonic() - t0)
        kill_all_children()
        late = take_sanitizer_reports()
        if late:
            log("sanitizer report after the last test:\n#   %s" %
                late.strip().replace("\n", "\n#   "))
            self._report("sanitizer reports after the last test", False,
                         sanitizer_summary(late), 0)
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)

    def skip_all(self, reason):
        """Skips the whole file (nothing it needs is here, e.g. QEMU): exit
        status 77, which ctest reports as skipped (SKIP_RETURN_CODE), never
        as passed."""
        print("# SKIP %s: %s" % (self.title, reason), flush=True)
        print("0 passed, 0 failed, %d skipped" % len(self.tests), flush=True)
        sys.exit(SKIP_EXIT)

    def _report(self, name, ok, reason, secs):
        if ok:
            self.passed += 1
            print("ok - %s (%.1f s)" % (name, secs), flush=True)
        else:
            self.failed += 1
            reason = " ".join(str(reason).split())
            print("not ok - %s: %s" % (name, reason), flush=True)
