"""lmptrace - holds one thread of a running `livemig guest` at a system call
(ptrace, Linux x86_64, stdlib only), so that a test can force an
interleaving between that thread and the process's other threads, which
keep running: "stop the migration thread right after it flushed a PING,
make the return path do X, then let the migration thread go on".

Only the calling Python thread may use a ThreadTracer (ptrace's tracer is
a thread).  Every wait is bounded; detach() (also run by close() and the
context manager) leaves the thread running.  A tracer that dies detaches
by itself (the kernel does it), so a failed test never leaves a thread
stopped.
"""

import ctypes
import errno
import os
import platform
import signal
import struct
import time

PTRACE_SYSCALL = 24
PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
WALL = 0x40000000

# x86_64 system call numbers
SYS_WRITE, SYS_WRITEV, SYS_SENDTO, SYS_SENDMSG, SYS_FUTEX = 1, 20, 44, 46, 202

# struct user_regs_struct (x86_64): 27 unsigned longs
_REGS = struct.Struct("27Q")
_RAX, _RDX, _RSI, _RDI, _ORIG_RAX = 10, 12, 13, 14, 15
_ENOSYS_RET = (1 << 64) - errno.ENOSYS  # rax at a syscall-entry stop

_libc = None


class PtraceError(Exception):
    pass


def supported():
    """ptrace-based holds work here (x86_64 Linux)."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ptrace.restype = ctypes.c_long
        _libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return _libc


def _ptrace(req, tid, addr=0, data=0):
    r = _lib().ptrace(req, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1:
        e = ctypes.get_errno()
        raise PtraceError("ptrace(%d, %d): %s" % (req, tid, os.strerror(e)))
    return r


def thread_ids(pid, name):
    """Thread ids of pid whose name (comm) is name."""
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == name:
                    out.append(int(tid))
        except OSError:
            pass
    return out


def thread_syscall(pid, tid):
    """The system call a thread is in, from /proc: its number, or None when
    it runs in user space (or is gone)."""
    try:
        with open("/proc/%d/task/%d/syscall" % (pid, tid)) as f:
            first = f.read().split()
    except OSError:
        return None
    if not first or first[0] == "running" or first[0].startswith("-"):
        return None
    return int(first[0])


def socket_fd(pid, local_port, remote_port):
    """The fd of pid's TCP socket 127.0.0.1:local_port -> :remote_port."""
    want = None
    for table in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for ln in lines:
            fields = ln.split()
            lport = int(fields[1].rsplit(":", 1)[1], 16)
            rport = int(fields[2].rsplit(":", 1)[1], 16)
            if lport == local_port and rport == remote_port:
                want = "socket:[%s]" % fields[9]
                break
        if want:
            break
    if not want:
        return None
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == want:
                return int(fd)
        except OSError:
            pass
    return None


class Syscall:
    """A syscall-entry stop: number, first three arguments, and for the
    writes on a socket the fd and the total length of the data."""

    def __init__(self, nr, args, fd=None, length=None):
        self.nr = nr
        self.args = args
        self.fd = fd
        self.length = length

    def __repr__(self):
        return "Syscall(%d, fd=%r, len=%r)" % (self.nr, self.fd, self.length)


class ThreadTracer:
    """Seizes thread tid of process pid and runs it from one syscall-entry
    stop to the next (other threads of the process are not touched)."""

    def __init__(self, pid, tid):
        if not supported():
            raise PtraceError("ptrace holds need Linux x86_64 (this is %s %s)" %
                              (platform.system(), platform.machine()))
        self.pid = pid
        self.tid = tid
        self.attached = False
        self.stopped = False
        self.mem = None
        _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD)
        self.attached = True
        _ptrace(PTRACE_INTERRUPT, tid)
        self._wait_stop(5.0)
        self.mem = os.open("/proc/%d/mem" % pid, os.O_RDONLY)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wait_stop(self, timeout):
        """Waits (bounded) until the thread is in a ptrace stop; returns the
        wait status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                wpid, status = os.waitpid(self.tid, os.WNOHANG | WALL)
            except ChildProcessError:
                raise PtraceError("thread %d is gone" % self.tid)
            if wpid == self.tid:
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.attached = False
                    raise PtraceError("thread %d exited" % self.tid)
                if os.WIFSTOPPED(status):
                    self.stopped = True
                    return status
            if time.monotonic() > deadline:
                raise TimeoutError("thread %d: no ptrace stop within %.1f s" %
                                   (self.tid, timeout))
            time.sleep(0.0005)

    def _regs(self):
        buf = ctypes.create_string_buffer(_REGS.size)
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(buf))
        return _REGS.unpack(buf.raw)

    def _read(self, addr, n):
        return os.pread(self.mem, n, addr)

    def _describe(self, regs):
        nr = regs[_ORIG_RAX]
        args = (regs[_RDI], regs[_RSI], regs[_RDX])
        sc = Syscall(nr, args)
        try:
            if nr in (SYS_WRITE, SYS_SENDTO):
                sc.fd, sc.length = args[0], args[2]
            elif nr == SYS_SENDMSG:
                iov, iovlen = struct.unpack("<QQ", self._read(args[1] + 16, 16))
                raw = self._read(iov, 16 * min(iovlen, 1024)) if iovlen else b""
                sc.fd = args[0]
                sc.length = sum(struct.unpack_from("<QQ", raw, 16 * i)[1]
                                for i in range(len(raw) // 16))
            elif nr == SYS_WRITEV:
                raw = self._read(args[1], 16 * min(args[2], 1024)) if args[2] else b""
                sc.fd = args[0]
                sc.length = sum(struct.unpack_from("<QQ", raw, 16 * i)[1]
                                for i in range(len(raw) // 16))
        except OSError:
            pass
        return sc

    def next_entry(self, timeout):
        """Lets the thread run to its next syscall-entry stop (bounded) and
        returns it as a Syscall; the thread stays stopped there."""
        deadline = time.monotonic() + timeout
        sig = 0
        while True:
            _ptrace(PTRACE_SYSCALL, self.tid, 0, sig)
            self.stopped = False
            sig = 0
            status = self._wait_stop(max(0.01, deadline - time.monotonic()))
            stopsig = os.WSTOPSIG(status)
            if stopsig == (signal.SIGTRAP | 0x80):
                regs = self._regs()
                if regs[_RAX] == _ENOSYS_RET:
                    return self._describe(regs)
                continue  # a syscall-exit stop
            if (status >> 16) == PTRACE_EVENT_STOP:
                continue  # an interrupt or group stop: go on
            sig = stopsig  # a signal for the thread: deliver it
            if time.monotonic() > deadline:
                raise TimeoutError("thread %d: no syscall within the time" % self.tid)

    def detach(self):
        """Lets the thread go (it continues from where it is stopped)."""
        if not self.attached:
            return
        if not self.stopped:
            try:
                _ptrace(PTRACE_INTERRUPT, self.tid)
                self._wait_stop(5.0)
            except (PtraceError, TimeoutError):
                pass
        try:
            _ptrace(PTRACE_DETACH, self.tid)
        except PtraceError:
            pass
        self.attached = False
        self.stopped = False

    def close(self):
        self.detach()
        if self.mem is not None:
            os.close(self.mem)
            self.mem = None
