"""File descriptors passed over QMP (SCM_RIGHTS), QEMU's way: getfd/closefd
per client, add-fd/remove-fd/query-fdsets per server, and migrate /
migrate-incoming with fd:NAME, which is how libvirt hands its migration
socket over.  Every descriptor the server received is accounted for: the
tests read /proc/PID/fd of the guest, and use pipes whose write end the
test keeps (writing gets EPIPE once the server closed the read end)."""

import errno
import os
import socket

from lmtest import (QMP, Runner, check, check_eq, check_writes_increase, log, set_caps,
                    set_params, stop_and_verify, wait_converged, wait_runstate, wait_status,
                    wait_until)

R = Runner("fds", per_test=90, budget=300)

# At most this many descriptors per client (src/qmp/server.h CLIENT_FDS).
CLIENT_FDS = 32


def tcp_pair():
    """Two connected TCP sockets on 127.0.0.1 (a listener accepts one)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        a = socket.create_connection(ls.getsockname(), timeout=10)
        ls.settimeout(10)
        b, _ = ls.accept()
    finally:
        ls.close()
    return a, b


def fd_links(pid):
    """What each open descriptor of pid is, by number."""
    out = {}
    d = "/proc/%d/fd" % pid
    for name in os.listdir(d):
        try:
            out[int(name)] = os.readlink(os.path.join(d, name))
        except OSError:
            pass  # closed meanwhile
    return out


class Probe:
    """A pipe whose read end is passed to the guest and closed here: writing
    to the write end (kept here) gets EPIPE once the guest closed its copy."""

    def __init__(self, t):
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        self.link = os.readlink("/proc/self/fd/%d" % self.r)
        t.closers.append(self.close)

    def send(self, q, cmd, args=None):
        """Runs cmd with the read end; returns the reply (return or error)."""
        try:
            return q.execute_raw(cmd, args, fds=[self.r])
        finally:
            os.close(self.r)
            self.r = -1

    def held(self):
        """Whether the guest still holds the read end."""
        try:
            os.write(self.w, b"x")
            return True
        except BrokenPipeError:
            return False

    def close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


def expect_desc(q, cmd, args, want, fds=None):
    e = q.expect_error(cmd, args, fds=fds)
    check_eq(e.desc, want, "%s %r error" % (cmd, args))
    check_eq(e.cls, "GenericError", "%s %r error class" % (cmd, args))


def desc_of(reply):
    check("error" in reply, "want an error, got %r", reply)
    return reply["error"]["desc"]


@R.test("migrate over descriptors passed with getfd (fd:NAME on both sides)")
def migrate_over_fds(t):
    src = t.guest("src", mem="256M", workload="random", dirty_rate="64M", fill="random", seed=1)
    dst = t.guest("dst", mem="256M", incoming="defer", workload="random", dirty_rate="64M",
                  seed=2)
    set_caps(dst, {"events": True})
    set_caps(src, {"events": True})
    a, b = tcp_pair()
    ino = {src.pid: os.fstat(a.fileno()).st_ino, dst.pid: os.fstat(b.fileno()).st_ino}
    try:
        src.qmp.execute("getfd", {"fdname": "migration"}, fds=[a.fileno()])
        dst.qmp.execute("getfd", {"fdname": "migration"}, fds=[b.fileno()])
    finally:
        # The processes hold the only copies from now on.
        a.close()
        b.close()
    for g in (src, dst):
        check("socket:[%d]" % ino[g.pid] in fd_links(g.pid).values(),
              "%s: the passed socket is not among its descriptors", g.name)
    dst.qmp.execute("migrate-incoming", {"uri": "fd:migration"})
    set_params(src, {"max-bandwidth": 0, "downtime-limit": 300})
    src.qmp.execute("migrate", {"uri": "fd:migration"})
    info, _ = wait_converged(src, "fd:migration")
    wait_status(dst, "completed", 10)
    wait_runstate(dst, "running", 5)
    ram = info.get("ram", {})
    log("fd: migration: transferred %s, syncs %s, downtime %s ms" %
        (ram.get("transferred"), ram.get("dirty-sync-count"), info.get("downtime")))
    check(ram.get("normal", 0) >= (256 << 20) // 4096, "ram.normal %r < filled pages",
          ram.get("normal"))
    check_writes_increase(dst)
    # The command took the name (QEMU's monitor_get_fd), and the migration
    # closed the descriptor when it was done with it.
    for g in (src, dst):
        expect_desc(g.qmp, "closefd", {"fdname": "migration"},
                    "File descriptor named 'migration' not found")
        wait_until(lambda: "socket:[%d]" % ino[g.pid] not in fd_links(g.pid).values(), 10,
                   "%s closing the migration socket" % g.name)
    sv = src.verify()
    check(sv.get("ok") is True, "source x-guest-verify: %r", sv)
    dv = stop_and_verify(dst)
    check(dv["written-pages"] >= sv["written-pages"] > 0,
          "written pages: destination %r, source %r", dv["written-pages"], sv["written-pages"])


@R.test("getfd/closefd semantics and QEMU's error texts")
def getfd_closefd(t):
    g = t.guest("g", mem="64M")
    q = g.qmp
    expect_desc(q, "getfd", {"fdname": "a"}, "No file descriptor supplied via SCM_RIGHTS")
    expect_desc(q, "getfd", {}, "Parameter 'fdname' is missing")
    expect_desc(q, "getfd", {"fdname": 1}, "Invalid parameter type for 'fdname', expected: string")
    p = Probe(t)
    check_eq(desc_of(p.send(q, "getfd", {"fdname": "1a"})),
             "Parameter 'fdname' expects a name not starting with a digit", "getfd 1a")
    check(not p.held(), "a descriptor refused by getfd must be closed")

    p1, p2 = Probe(t), Probe(t)
    check("return" in p1.send(q, "getfd", {"fdname": "a"}), "getfd a")
    check(p1.held(), "getfd must keep the descriptor")
    check(p1.link in fd_links(g.pid).values(), "the guest holds %s", p1.link)
    # Same name again: the new one replaces the old one, which is closed.
    check("return" in p2.send(q, "getfd", {"fdname": "a"}), "getfd a again")
    check(not p1.held(), "getfd of a used name must close the old descriptor")
    check(p2.held(), "getfd must keep the new descriptor")
    # Names are per client connection (QEMU: per monitor).
    other = g.client()
    expect_desc(other, "closefd", {"fdname": "a"}, "File descriptor named 'a' not found")
    expect_desc(other, "migrate", {"uri": "fd:a"}, "File descriptor named 'a' has not been found")
    expect_desc(q, "migrate-incoming", {"uri": "fd:nope"},
                "File descriptor named 'nope' has not been found")
    # A migrate refused before it starts leaves the name alone.
    expect_desc(q, "migrate", {"uri": "fd:a", "blk": True},
                "Block migration ('blk', 'inc') is not supported; use blockdev-mirror with "
                "NBD instead")
    check(p2.held(), "a refused migrate must not take the descriptor")
    q.execute("closefd", {"fdname": "a"})
    check(not p2.held(), "closefd must close the descriptor")
    expect_desc(q, "closefd", {"fdname": "a"}, "File descriptor named 'a' not found")
    # A descriptor sent with a command that does not take one is closed
    # once that command ran, and a later getfd does not see it.
    p3 = Probe(t)
    check_eq(p3.send(q, "query-status").get("return", {}).get("status"), "running",
             "query-status")
    check(not p3.held(), "an unclaimed descriptor must be closed after its command")
    expect_desc(q, "getfd", {"fdname": "b"}, "No file descriptor supplied via SCM_RIGHTS")
    # Also when it came with malformed JSON.
    p4 = Probe(t)
    q.send_raw(b'{"execute" "getfd", "arguments": {"fdname": "c"}}\n', fds=[p4.r])
    os.close(p4.r)
    p4.r = -1
    r = q.recv_reply(30)
    check("error" in r and "JSON parse error" in r["error"]["desc"], "malformed: %r", r)
    expect_desc(q, "getfd", {"fdname": "c"}, "No file descriptor supplied via SCM_RIGHTS")
    check(not p4.held(), "a descriptor sent with malformed JSON must be closed")


@R.test("add-fd, remove-fd and query-fdsets round trips")
def fdsets(t):
    g = t.guest("g", mem="64M")
    q = g.qmp
    check_eq(q.execute("query-fdsets"), [], "no fd sets at start")
    expect_desc(q, "add-fd", {}, "No file descriptor supplied via SCM_RIGHTS")
    p0 = Probe(t)
    check_eq(desc_of(p0.send(q, "add-fd", {"fdset-id": -1})),
             "Parameter 'fdset-id' expects a non-negative value", "add-fd -1")
    check(not p0.held(), "a refused add-fd must close the descriptor")
    expect_desc(q, "add-fd", {"fdset-id": "x"},
                "Invalid parameter type for 'fdset-id', expected: integer")
    pa, pb, pc = Probe(t), Probe(t), Probe(t)
    a = pa.send(q, "add-fd", {"opaque": "first"})["return"]
    b = pb.send(q, "add-fd", {"fdset-id": a["fdset-id"]})["return"]
    c = pc.send(q, "add-fd", {"fdset-id": 7, "opaque": "seven"})["return"]
    check_eq(a["fdset-id"], 0, "add-fd without fdset-id takes the lowest free id")
    check_eq(b["fdset-id"], 0, "add-fd to set 0")
    check_eq(c["fdset-id"], 7, "add-fd to set 7")
    links = fd_links(g.pid)
    for info, p in ((a, pa), (b, pb), (c, pc)):
        check_eq(links.get(info["fd"]), p.link, "descriptor %d of the guest" % info["fd"])
    want = [{"fdset-id": 7, "fds": [{"fd": c["fd"], "opaque": "seven"}]},
            {"fdset-id": 0, "fds": [{"fd": a["fd"], "opaque": "first"}, {"fd": b["fd"]}]}]
    check_eq(q.execute("query-fdsets"), want, "query-fdsets")
    # Sets belong to the server: another client sees them.
    check_eq(g.client().execute("query-fdsets"), want, "query-fdsets from another client")
    pn = Probe(t)
    check_eq(pn.send(q, "add-fd")["return"]["fdset-id"], 1, "the next free id")
    q.execute("remove-fd", {"fdset-id": 1})
    check(not pn.held(), "remove-fd of set 1")

    expect_desc(q, "remove-fd", {"fdset-id": 0, "fd": 9999},
                "File descriptor named 'fdset-id:0, fd:9999' not found")
    expect_desc(q, "remove-fd", {"fdset-id": 3}, "File descriptor named 'fdset-id:3' not found")
    expect_desc(q, "remove-fd", {}, "Parameter 'fdset-id' is missing")
    q.execute("remove-fd", {"fdset-id": 0, "fd": a["fd"]})
    check(not pa.held(), "remove-fd must close the descriptor")
    check(pb.held() and pc.held(), "remove-fd must leave the others")
    check_eq(q.execute("query-fdsets"),
             [want[0], {"fdset-id": 0, "fds": [{"fd": b["fd"]}]}], "after remove-fd of one fd")
    q.execute("remove-fd", {"fdset-id": 7})
    q.execute("remove-fd", {"fdset-id": 0})
    check(not pb.held() and not pc.held(), "remove-fd of a set must close its descriptors")
    check_eq(q.execute("query-fdsets"), [], "no fd sets at the end")
    expect_desc(q, "query-fdsets", {"x": 1}, "Parameter 'x' is unexpected")


@R.test("the per-client cap, and no descriptor leaks when clients go")
def cap_and_leaks(t):
    g = t.guest("g", mem="64M")
    base = len(fd_links(g.pid))
    q = g.client()
    r, w = os.pipe()
    t.closers.append(lambda: (os.close(r), os.close(w)))
    for i in range(CLIENT_FDS):
        q.execute("getfd", {"fdname": "n%d" % i}, fds=[r])
    check_eq(len(fd_links(g.pid)), base + 1 + CLIENT_FDS,
             "descriptors with %d named" % CLIENT_FDS)
    e = q.expect_error("getfd", {"fdname": "over"}, fds=[r])
    check(e.desc.startswith("Too many file descriptors held by this QMP connection (at most "
                            "%d" % CLIENT_FDS), "getfd over the cap: %r" % e.desc)
    q.execute("closefd", {"fdname": "n0"})
    q.execute("getfd", {"fdname": "over"}, fds=[r])
    for i in (1, 2, 3):
        q.execute("closefd", {"fdname": "n%d" % i})
    # More descriptors in one message than a message may bring (16): the
    # kernel drops the rest, the server closes what its command left.
    check_eq(q.execute("query-status", fds=[r] * 20)["status"], "running", "query-status")
    held = base + 1 + CLIENT_FDS - 3
    check_eq(len(fd_links(g.pid)), held, "descriptors after 20 unclaimed")
    # A client that goes away mid-command, with descriptors pending.
    q.send_raw(b'{"execute": "getfd", "arguments": {"fdname": "late"', fds=[r, r, r])
    wait_until(lambda: len(fd_links(g.pid)) == held + 3, 10,
               "the server receiving the last 3 descriptors")
    q.close()
    g.clients.remove(q)
    wait_until(lambda: len(fd_links(g.pid)) == base, 10,
               "descriptors back to %d after the client left" % base)

    # fd sets outlive a client but not the last one (QEMU closes unused
    # sets when its last monitor disconnects).
    p = Probe(t)
    q2 = g.client()
    p.send(q2, "add-fd", {"fdset-id": 1})
    q2.close()
    g.clients.remove(q2)
    check(p.held(), "a fd set must outlive a client while another is connected")
    g.qmp.close()
    wait_until(lambda: not p.held(), 10, "fd sets closed after the last client left")
    wait_until(lambda: len(fd_links(g.pid)) == base - 1, 10,
               "descriptors with no client at all back to %d" % (base - 1))
    g._qmp = QMP(g.sock)  # for the cleanup's quit


@R.test("numeric fd:N keeps meaning descriptor N (here one add-fd put in a set)")
def numeric_fd(t):
    src = t.guest("src", mem="64M", workload="random", dirty_rate="16M", fill="random", seed=3)
    dst = t.guest("dst", mem="64M", incoming="defer", seed=4)
    e = dst.qmp.expect_error("migrate-incoming", {"uri": "fd:999"})
    check("fd:999 is not open" in e.desc, "migrate-incoming fd:999: %r" % e.desc)
    a, b = tcp_pair()
    try:
        n = dst.qmp.execute("add-fd", {"opaque": "migration"}, fds=[b.fileno()])["fd"]
        src.qmp.execute("getfd", {"fdname": "m"}, fds=[a.fileno()])
    finally:
        a.close()
        b.close()
    dst.qmp.execute("migrate-incoming", {"uri": "fd:%d" % n})
    set_params(src, {"max-bandwidth": 0})
    src.qmp.execute("migrate", {"uri": "fd:m"})
    wait_status(src, "completed", 60)
    wait_status(dst, "completed", 10)
    # fd:N borrows: the set still holds descriptor N.
    check_eq(dst.qmp.execute("query-fdsets"),
             [{"fdset-id": 0, "fds": [{"fd": n, "opaque": "migration"}]}], "query-fdsets")
    dst.qmp.execute("remove-fd", {"fdset-id": 0})
    stop_and_verify(dst)


if __name__ == "__main__":
    R.main()
