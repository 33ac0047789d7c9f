"""The fault-injection proxy (lmproxy.py) proven on its own before the
recovery tests rely on it: it forwards each connection as a pair (TCP and
unix), cut() resets both peers, blackhole() holds everything without an
error or EOF on either side, resume() delivers what was held.  The far end
is an echo server of this process; no livemig process is involved."""

import os
import socket
import threading

from lmtest import Runner, check, check_eq, wait_until

R = Runner("proxy", per_test=60, budget=240)


class Echo:
    """An echo server on tcp or unix; records what each connection got and
    how it ended ("eof", "reset")."""

    def __init__(self, t, kind):
        if kind == "tcp":
            self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.lsock.bind(("127.0.0.1", 0))
            self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
        else:
            path = os.path.join(t.tmpdir, "echo.sock")
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(path)
            self.uri = "unix:" + path
        self.lsock.listen(8)
        self.lsock.settimeout(0.2)
        self.got = []    # bytes received per connection
        self.ended = []  # how each connection ended
        self._stop = threading.Event()
        self._threads = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()
        t.closers.append(self.close)

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            i = len(self.got)
            self.got.append(b"")
            self.ended.append(None)
            th = threading.Thread(target=self._serve, args=(c, i), daemon=True)
            th.start()
            self._threads.append(th)

    def _serve(self, c, i):
        c.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    self.ended[i] = "eof"
                    return
                self.got[i] += d
                c.sendall(d)
        except ConnectionResetError:
            self.ended[i] = "reset"
        except OSError as e:
            self.ended[i] = "error %s" % e
        finally:
            c.close()

    def close(self):
        self._stop.set()
        self._t.join(2)
        for th in self._threads:
            th.join(2)
        self.lsock.close()


def connect(uri):
    if uri.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uri[5:])
    else:
        host, port = uri[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(10)
    return s


def recv_n(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            break
        out += d
    return out


def forward(t, kind):
    echo = Echo(t, kind)
    px = t.proxy(echo.uri, listen=kind)
    check(px.uri.startswith(kind + ":"), "proxy URI %s", px.uri)
    a, b = connect(px.uri), connect(px.uri)
    wait_until(lambda: px.pairs == 2, 10, "two pairs forwarded")
    payload = os.urandom(1 << 20)
    a.sendall(payload)
    check_eq(recv_n(a, len(payload)), payload, "1 MiB echoed through the proxy")
    b.sendall(b"second")
    check_eq(recv_n(b, 6), b"second", "the second connection is its own pair")
    check_eq(sorted(len(g) for g in echo.got), [6, 1 << 20], "bytes per connection at the target")
    up, down = px.forwarded()
    check(up == down == (1 << 20) + 6, "forwarded counts %d/%d", up, down)
    a.close()
    wait_until(lambda: "eof" in echo.ended, 10, "EOF passed on to the target")
    b.close()


def blackhole(t, kind):
    echo = Echo(t, kind)
    px = t.proxy(echo.uri, listen=kind)
    a = connect(px.uri)
    a.sendall(b"ping")
    check_eq(recv_n(a, 4), b"ping", "echo before the black hole")
    px.blackhole()
    a.sendall(b"held")
    # Nothing passes and nothing ends: the client sees neither data, EOF
    # nor an error within an observation window, the target gets nothing.
    a.settimeout(0.5)
    try:
        d = a.recv(16)
        raise AssertionError("data or EOF through a black hole: %r" % d)
    except socket.timeout:
        pass
    check_eq(echo.got[0], b"ping", "the target got nothing more during the black hole")
    check_eq(echo.ended[0], None, "the target's connection is still open")
    # A new connection waits in the backlog: not forwarded yet.
    c = connect(px.uri)
    c.sendall(b"late")
    check_eq(len(echo.got), 1, "no new pair during the black hole")
    px.resume()
    a.settimeout(10)
    check_eq(recv_n(a, 4), b"held", "held data delivered after resume")
    check_eq(recv_n(c, 4), b"late", "the waiting connection is forwarded after resume")
    a.close()
    c.close()


def cut(t, kind):
    echo = Echo(t, kind)
    px = t.proxy(echo.uri, listen=kind)
    a = connect(px.uri)
    a.sendall(b"ping")
    check_eq(recv_n(a, 4), b"ping", "echo before the cut")
    px.cut()
    # TCP: an RST.  A unix socket has none: the peer sees the end at once
    # (EOF on a read, EPIPE on a write), which is what a livemig channel
    # on a unix socket gets when its link goes.
    want = "reset" if kind == "tcp" else "eof"
    try:
        d = a.recv(16)
        check(kind == "unix" and d == b"", "expected a reset, got %r", d)
    except ConnectionResetError:
        check(kind == "tcp", "a reset on a unix socket")
    wait_until(lambda: echo.ended[0] == want, 10, "the target sees the %s" % want)
    check_eq(px.pairs, 0, "pairs after the cut")
    # New connections still go through.
    b = connect(px.uri)
    b.sendall(b"again")
    check_eq(recv_n(b, 5), b"again", "a new connection after the cut is forwarded")
    b.close()
    a.close()


for kind in ("tcp", "unix"):
    R.add("forwards each connection as a pair (%s)" % kind, forward, kind)
    R.add("blackhole holds both directions without an error, resume delivers (%s)" % kind,
          blackhole, kind)
    R.add("cut resets both peers; new connections still pass (%s)" % kind, cut, kind)

if __name__ == "__main__":
    R.main()
