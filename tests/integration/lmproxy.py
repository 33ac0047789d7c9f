"""lmproxy - a fault-injection proxy between a migration's source and its
destination (stdlib only; used by test_recovery.py through lmtest.Ctx.proxy).

The test points the source at the proxy's own listening address (`uri`,
tcp:127.0.0.1:<ephemeral> or unix:<path>); every connection the proxy
accepts is forwarded to the real destination as one pair of sockets.  In
livemig a channel is one connection in both directions: the main channel
carries the return path on its other direction, and the preempt and
multifd channels are connections of their own, so each channel is exactly
one pair here and `pairs` counts them.

On command, from the test's thread:
  cut()        every pair is reset on both sides (SO_LINGER 0, then close:
               an RST on TCP, as a link that drops the connection; a unix
               socket has no RST, its peer sees EOF / EPIPE at once); new
               connections are still accepted and forwarded;
  blackhole()  nothing is forwarded any more, in either direction, and
               nothing is read (the peers' writes fill the socket buffers
               and then block); the sockets stay open, so no side sees an
               error or EOF; new connections wait in the listen backlog;
  hold_return()  one way only: what the source sends still goes through
               (new connections are accepted and forwarded), what the
               destination sends is neither read nor forwarded: the
               destination answered, the source waits for the answer (a
               test puts a recovery in postcopy-recover-setup that way,
               then cuts it);
  resume()     forwarding starts again (what the black hole held is then
               delivered), and waiting connections are accepted.

With record=DIR, the proxy also writes what it forwards: connection N
(from 0, in accept order) to DIR/chan-N.to-dst (the source's bytes) and
DIR/chan-N.to-src (the destination's), as `socat` or `nc` in the middle
would capture a migration for `livemig inspect`.

Both sockets of a pair have TCP_NODELAY, as the engine sets on its own:
with Nagle on, the forwarding of the return path's small records waited
for the peer's delayed ACK (~40 ms per recovery, measured by the bench).

The proxy is one thread of the test process, bounded by `lifetime` seconds
and stopped by close() (Ctx cleanup calls it); it never touches a process.
"""

import errno
import os
import selectors
import socket
import struct
import threading
import time

CHUNK = 256 * 1024


def _rst_close(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class _Pair:
    def __init__(self, down, up):
        self.down = down  # accepted from the source
        self.up = up      # connected to the destination
        self.rec = {}     # socket -> file of what was read from it (record=DIR)
        self.buf = {down: b"", up: b""}  # bytes waiting to be written TO that socket
        self.bytes = {down: 0, up: 0}    # bytes forwarded from that socket

    def peer(self, s):
        return self.up if s is self.down else self.down


class Proxy:
    def __init__(self, target, listen="tcp", tmpdir=None, lifetime=120.0, record=None):
        """target: the destination's URI (tcp:HOST:PORT or unix:PATH).
        listen: "tcp" (127.0.0.1, ephemeral port) or "unix" (a socket
        in tmpdir).  record: a directory to capture every connection in."""
        self.target = target
        self.record = record
        if listen == "tcp":
            self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.lsock.bind(("127.0.0.1", 0))
            self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
            # Accepted sockets inherit it.
            self.lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            path = os.path.join(tmpdir or "/tmp", "proxy-%d-%d.sock" % (os.getpid(), id(self)))
            if os.path.exists(path):
                os.unlink(path)
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(path)
            self.path = path
            self.uri = "unix:" + path
        self.lsock.listen(16)
        self.lsock.setblocking(False)
        self.mode = "forward"
        self.pairs_total = 0   # connections accepted and forwarded, ever
        self.errors = []       # connect failures to the target
        self._pairs = []
        self._lock = threading.Lock()
        self._cmds = []
        self._done = threading.Event()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._t = threading.Thread(target=self._run, name="lmproxy", daemon=True)
        self._t.start()

    # ------------------------------------------------------------ commands

    def _command(self, cmd, timeout=10.0):
        ev = threading.Event()
        with self._lock:
            self._cmds.append((cmd, ev))
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if not ev.wait(timeout):
            raise RuntimeError("lmproxy: %s not done within %.0f s" % (cmd, timeout))

    def cut(self):
        """Resets every connection (RST to both peers)."""
        self._command("cut")

    def blackhole(self):
        """Stops forwarding and reading; sockets stay open."""
        self._command("blackhole")

    def hold_return(self):
        """Forwards source -> destination only (and accepts); holds what
        the destination sends."""
        self._command("hold-return")

    def resume(self):
        """Forwards again and accepts waiting connections."""
        self._command("resume")

    @property
    def pairs(self):
        """Connections currently forwarded."""
        with self._lock:
            return len(self._pairs)

    def forwarded(self):
        """(bytes source->destination, bytes destination->source) over the
        pairs that are up."""
        with self._lock:
            return (sum(p.bytes[p.down] for p in self._pairs),
                    sum(p.bytes[p.up] for p in self._pairs))

    def close(self):
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._t.join(5)

    # ------------------------------------------------------------ the thread

    def _connect_target(self):
        t = self.target
        if t.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(t[5:])
        else:
            host, port = t[4:].rsplit(":", 1)
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        return s

    def _register(self, sel):
        """(Re)registers every socket for what the mode allows."""
        for key in list(sel.get_map().values()):
            if key.fileobj not in (self._wake_r,):
                sel.unregister(key.fileobj)
        if self.mode in ("forward", "hold-return"):
            sel.register(self.lsock, selectors.EVENT_READ, None)
            for p in self._pairs:
                for s in (p.down, p.up):
                    # hold-return: nothing read from the destination's side,
                    # nothing written to the source's.
                    held = self.mode == "hold-return"
                    ev = 0 if held and s is p.up else selectors.EVENT_READ
                    if p.buf[s] and not (held and s is p.down):
                        ev |= selectors.EVENT_WRITE
                    if ev:
                        sel.register(s, ev, p)

    def _drop(self, p, rst=False):
        with self._lock:
            if p in self._pairs:
                self._pairs.remove(p)
        for f in p.rec.values():
            f.close()
        for s in (p.down, p.up):
            if rst:
                _rst_close(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            c.setblocking(False)
            try:
                up = self._connect_target()
            except OSError as e:
                self.errors.append(str(e))
                _rst_close(c)
                continue
            p = _Pair(c, up)
            if self.record:
                n = self.pairs_total
                p.rec[c] = open(os.path.join(self.record, "chan-%d.to-dst" % n), "wb")
                p.rec[up] = open(os.path.join(self.record, "chan-%d.to-src" % n), "wb")
            with self._lock:
                self._pairs.append(p)
                self.pairs_total += 1

    def _pump(self, p, s, events):
        """Moves bytes for socket s of pair p; False when the pair ended."""
        other = p.peer(s)
        if events & selectors.EVENT_WRITE and p.buf[s]:
            try:
                n = s.send(p.buf[s])
                p.buf[s] = p.buf[s][n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return False
        if events & selectors.EVENT_READ and len(p.buf[other]) < 4 * CHUNK:
            try:
                d = s.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                if e.errno == errno.ECONNRESET:
                    _rst_close(other)
                    p.other_reset = True
                return False
            if not d:
                # EOF: pass the half-close on once what is buffered went.
                try:
                    if p.buf[other]:
                        other.setblocking(True)
                        other.sendall(p.buf[other])
                        p.buf[other] = b""
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return False
            p.bytes[s] += len(d)
            p.buf[other] += d
            if s in p.rec:
                p.rec[s].write(d)
        return True

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._register(sel)
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                changed = False
                for key, events in sel.select(timeout=0.2):
                    if key.fileobj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif key.fileobj is self.lsock:
                        self._accept()
                        changed = True
                    elif self.mode in ("forward", "hold-return"):
                        p = key.data
                        with self._lock:
                            live = p in self._pairs
                        if live and not self._pump(p, key.fileobj, events):
                            self._drop(p)
                            changed = True
                        elif live:
                            changed = True  # write interest may change
                with self._lock:
                    cmds, self._cmds = self._cmds, []
                for cmd, ev in cmds:
                    if cmd == "cut":
                        with self._lock:
                            pairs = list(self._pairs)
                        for p in pairs:
                            self._drop(p, rst=True)
                    elif cmd == "blackhole":
                        self.mode = "blackhole"
                    elif cmd == "hold-return":
                        self.mode = "hold-return"
                    elif cmd == "resume":
                        self.mode = "forward"
                    changed = True
                    ev.set()
                if changed:
                    self._register(sel)
        finally:
            sel.close()
            with self._lock:
                pairs, self._pairs = self._pairs, []
                cmds, self._cmds = self._cmds, []
            for p in pairs:
                for s in (p.down, p.up):
                    try:
                        s.close()
                    except OSError:
                        pass
                for f in p.rec.values():
                    f.close()
            for _, ev in cmds:
                ev.set()
            try:
                self.lsock.close()
            except OSError:
                pass
            if getattr(self, "path", None):
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            self._wake_r.close()
            self._wake_w.close()
            self._done.set()
