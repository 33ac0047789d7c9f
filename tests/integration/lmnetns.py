"""lmnetns - the namespace variant of the fault-injection harness (issue
10 item 6; stdlib only; used by test_recovery_netns.py).

Two network namespaces of this process's own (named lmns-<pid>-<n>-a and
-b), joined by a veth pair (lmva in a, lmvb in b) with the two addresses of
a private /30 (10.199.<n>.1 and .2; 10.199.0.0/16 exists only inside these
namespaces, never on the host).  A process is put in one with `ip netns
exec NS ...`, which enters the namespace and execs the command in the same
process (no fork), so the pid a test holds is the real process's and it is
stopped by that pid as any other.  QMP sockets are unix sockets in the
file system, so the test reaches them from the host namespace.

  link_down(ends)  sets the veth down (`ip -n NS link set dev X down`):
                   "b" (the default) pulls the cable at b: a's end loses
                   its carrier but keeps its route, so what a sends is
                   dropped silently (a black hole, for connects too); b's
                   end has no route any more.  "a" is the mirror image,
                   "ab" both;
  link_up()        both ends up again (the addresses stay on a link that
                   goes down; their routes come back with it);
  pids()           the processes still in either namespace;
  close()          kills by pid whatever is still inside (and says so:
                   the test's own stop left it behind), then deletes both
                   namespaces, which takes the veth pair with them.

Teardown is certain: close() is idempotent and also runs at exit and on
SIGTERM/SIGHUP (then the signal's default action is taken); namespaces of
an earlier run whose process is gone (SIGKILL allows no cleanup) are
deleted when the next one starts.  Every `ip` command is bounded
(COMMAND_TIMEOUT) and its failure is an error naming the command.
"""

import atexit
import os
import re
import signal
import subprocess
import threading

COMMAND_TIMEOUT = 10.0
PREFIX = "lmns-"
_NAME = re.compile(r"^lmns-(\d+)-(\d+)-[ab]$")

_live = []          # NetNS objects not closed yet
_lock = threading.Lock()
_counter = [0]
_hooked = [False]


class NetnsError(Exception):
    pass


def _ip(*args, check=True):
    """Runs `ip ARGS` bounded; returns its stdout.  check: a failure (or
    a timeout) raises NetnsError with the command and its stderr."""
    argv = ["ip"] + list(args)
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NetnsError("`%s` did not finish within %.0f s" % (" ".join(argv),
                                                                COMMAND_TIMEOUT))
    except OSError as e:
        raise NetnsError("`%s`: %s" % (" ".join(argv), e))
    if check and r.returncode != 0:
        raise NetnsError("`%s` failed (exit %d): %s" %
                         (" ".join(argv), r.returncode, r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode(errors="replace")


def unavailable():
    """Why namespaces cannot be made here (a reason for a skip), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (euid %d)" % os.geteuid()
    probe = "%s%d-0-a" % (PREFIX, os.getpid())  # swept like the others if left
    try:
        _ip("netns", "add", probe)
    except NetnsError as e:
        return "`ip netns` is not usable here: %s" % e
    try:
        _ip("netns", "del", probe)
    except NetnsError as e:
        return "`ip netns` is not usable here: %s" % e
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale():
    """Deletes lmns-* namespaces whose creating process is gone (a run
    killed by SIGKILL could not delete its own)."""
    try:
        out = _ip("netns", "list", check=False)
    except NetnsError:
        return
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            # Only the name goes: a process left inside is not ours to end
            # (a guest had PDEATHSIG and died with its test); the namespace
            # itself goes with its last process.
            _ip("netns", "del", name, check=False)


def _ns_pids(name):
    try:
        out = _ip("netns", "pids", name, check=False)
    except NetnsError:
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_inside(name):
    """SIGKILLs, by pid, every process in namespace `name`; returns them."""
    pids = _ns_pids(name)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _close_all():
    with _lock:
        live = list(_live)
    for ns in live:
        try:
            ns.close()
        except Exception:  # at exit: delete the others anyway
            pass


def _on_signal(signum, frame):
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _hook():
    if _hooked[0]:
        return
    _hooked[0] = True
    atexit.register(_close_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


class NetNS:
    """Two namespaces and a veth pair between them (see the module's
    docstring).  a_addr / b_addr: the addresses (no prefix length)."""

    def __init__(self):
        sweep_stale()
        _hook()
        with _lock:
            _counter[0] += 1
            n = _counter[0]
        pid = os.getpid()
        self.a = "%s%d-%d-a" % (PREFIX, pid, n)
        self.b = "%s%d-%d-b" % (PREFIX, pid, n)
        self.dev = {"a": "lmva", "b": "lmvb"}
        net = "10.199.%d" % (n % 256)
        self.a_addr, self.b_addr = net + ".1", net + ".2"
        self.closed = False
        self.leaked = []  # pids close() had to kill
        self._made = []
        with _lock:
            _live.append(self)
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "dev", "lo", "up")
            _ip("-n", self.a, "link", "add", self.dev["a"], "type", "veth", "peer", "name",
                self.dev["b"], "netns", self.b)
            _ip("-n", self.a, "addr", "add", self.a_addr + "/30", "dev", self.dev["a"])
            _ip("-n", self.b, "addr", "add", self.b_addr + "/30", "dev", self.dev["b"])
            self.link_up()
        except BaseException:
            self.close()
            raise

    def ns(self, end):
        return self.a if end == "a" else self.b

    def exec_prefix(self, end):
        """argv prefix that runs a command in namespace `end` ("a"/"b")
        as the same process (ip execs it)."""
        return ["ip", "netns", "exec", self.ns(end)]

    def _set(self, ends, state):
        for end in ends:
            _ip("-n", self.ns(end), "link", "set", "dev", self.dev[end], state)

    def link_down(self, ends="b"):
        """Sets the veth down at `ends` ("a", "b" or "ab")."""
        self._set(ends, "down")

    def link_up(self):
        self._set("ab", "up")

    def link_state(self, end):
        """The kernel's operstate of that end ("UP", "DOWN", "LOWERLAYERDOWN")."""
        out = _ip("-n", self.ns(end), "-o", "link", "show", "dev", self.dev[end])
        m = re.search(r"state (\S+)", out)
        return m.group(1) if m else "?"

    def pids(self):
        """Processes in either namespace now."""
        return _ns_pids(self.a) + _ns_pids(self.b)

    def close(self):
        """Kills what is left inside (recorded in self.leaked), deletes
        both namespaces.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        errors = []
        for ns in self._made:
            self.leaked += _kill_inside(ns)
        for ns in self._made:
            try:
                _ip("netns", "del", ns)
            except NetnsError as e:
                errors.append(str(e))
        with _lock:
            if self in _live:
                _live.remove(self)
        if errors:
            raise NetnsError("; ".join(errors))
