"""Postcopy end to end with real processes and real userfaultfd: the switch
(migrate-start-postcopy, taken per seed 000), page requests on the return
path (with and without the preempt channel), atomic placement, completion
only once nothing is owed, the guest verified on the destination, the
workload progressing there during postcopy, and both sides pausing when the
connection is cut.  Scenarios are data; nothing asserts on timing."""

import os
import re
import signal
import socket
import struct
import threading
import time

from lmtest import (Runner, TestFailure, check, check_eq, dest_uri, log, migrate, run_cli,
                    set_caps,
                    set_params, stop_and_verify, wait_runstate, wait_status, wait_until)

R = Runner("postcopy", per_test=60, budget=300)

MEM = "128M"
# Throttled so that precopy is still running (and owes most pages) when the
# switch happens; postcopy itself is unlimited (max-postcopy-bandwidth 0).
SLOW = {"max-bandwidth": 20 * 1000 * 1000, "downtime-limit": 1}

# name, workload, extra guest args, caps beyond postcopy-ram, src_fill
SCENARIOS = [
    {"name": "idle", "workload": "idle", "fill": "random", "caps": {}},
    {"name": "random", "workload": "random", "dirty_rate": "64M", "fill": "random",
     "caps": {}},
    # hot: a small set written as fast as possible never converges in
    # precopy; postcopy must finish it.
    {"name": "hot", "workload": "hot", "hot_size": "8M", "fill": "random", "caps": {}},
    {"name": "random+preempt", "workload": "random", "dirty_rate": "64M", "fill": "random",
     "caps": {"postcopy-preempt": True}},
    {"name": "hot+preempt+blocktime", "workload": "hot", "hot_size": "8M", "fill": "random",
     "caps": {"postcopy-preempt": True, "postcopy-blocktime": True}},
    # multifd carries the precopy passes (2 channels, the default), then is
    # fenced at the switch; postcopy goes on the main / preempt channels.
    {"name": "random+multifd", "workload": "random", "dirty_rate": "64M", "fill": "random",
     "caps": {"multifd": True}},
    {"name": "hot+preempt+multifd", "workload": "hot", "hot_size": "8M", "fill": "random",
     "caps": {"postcopy-preempt": True, "multifd": True}},
    # Shared memory (memfd) on both sides: minor faults, data received into
    # the page cache and mapped with UFFDIO_CONTINUE; then the same without
    # minor faults on the destination (drop by MADV_REMOVE, UFFDIO_COPY).
    {"name": "random+preempt memfd", "workload": "random", "dirty_rate": "64M",
     "fill": "random", "caps": {"postcopy-preempt": True}, "backend": "memfd"},
    {"name": "hot+blocktime memfd", "workload": "hot", "hot_size": "8M", "fill": "random",
     "caps": {"postcopy-blocktime": True}, "backend": "memfd"},
    {"name": "random+preempt memfd without minor faults", "workload": "random",
     "dirty_rate": "64M", "fill": "random", "caps": {"postcopy-preempt": True},
     "backend": "memfd", "dst_env": {"LIVEMIG_TEST_POSTCOPY": "no-minor"}},
]


def guests(t, sc, transport="tcp"):
    wl = {"workload": sc["workload"]}
    for k in ("dirty_rate", "hot_size"):
        if sc.get(k):
            wl[k] = sc[k]
    caps = {"events": True, "postcopy-ram": True}
    caps.update(sc["caps"])
    extra = ("--mem-backend", sc["backend"]) if sc.get("backend") else ()
    src = t.guest("src", mem=MEM, fill=sc["fill"], seed=1, extra=extra, **wl)
    env = None
    if sc.get("dst_env"):
        env = dict(os.environ)
        env.update(sc["dst_env"])
    dst = t.dest("dst", transport=transport, mem=MEM, seed=2, defer=True, caps=caps,
                 extra=extra, env=env, **wl)
    set_caps(src, caps)
    set_params(src, SLOW)
    return src, dst


def start_and_switch(src, dst):
    w0 = src.stats()["writes"]
    migrate(src, dst)

    def sent_some():
        info = src.query_migrate()
        st = info.get("status")
        check(st in ("setup", "active"), "source status %s before the switch (%r)", st,
              info.get("error-desc"))
        return info if info.get("ram", {}).get("transferred", 0) > 4 * 1000 * 1000 else None

    wait_until(sent_some, 30, "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    return w0


@R.test("migrate-start-postcopy refuses without the capability or a migration")
def t_refusals(t):
    src = t.guest("src", mem="32M", workload="idle")
    e = src.qmp.expect_error("migrate-start-postcopy")
    check("migrate_set_capability" in e.desc, "unexpected error: %s", e.desc)
    set_caps(src, {"postcopy-ram": True})
    e = src.qmp.expect_error("migrate-start-postcopy")
    check("after migration has been started" in e.desc, "unexpected error: %s", e.desc)
    # postcopy-preempt needs postcopy-ram (QEMU's rule)
    set_caps(src, {"postcopy-ram": False})
    e = src.qmp.expect_error("migrate-set-capabilities",
                             {"capabilities": [{"capability": "postcopy-preempt",
                                                "state": True}]})
    check("postcopy-ram" in e.desc, "unexpected error: %s", e.desc)


@R.test("capability on one side only fails at HELLO with both values, source keeps running")
def t_mismatch(t):
    src = t.guest("src", mem="32M", workload="idle", fill="random")
    dst = t.dest("dst", mem="32M", defer=True, caps={"events": True})
    set_caps(src, {"postcopy-ram": True})
    migrate(src, dst)
    info = wait_status(src, "failed", 20, fail_on=("completed", "cancelled"))
    desc = info.get("error-desc", "")
    check("features differ" in desc and "postcopy-ram" in desc, "error-desc %r", desc)
    check_eq(src.status(), "running", "source run state after the failed migration")


@R.test("postcopy-ram on both sides but never switched: an ordinary precopy")
def t_no_switch(t):
    sc = {"name": "no-switch", "workload": "random", "dirty_rate": "16M", "fill": "random",
          "caps": {}}
    src, dst = guests(t, sc)
    set_params(src, {"max-bandwidth": 0, "downtime-limit": 300})
    migrate(src, dst)
    info = wait_status(src, "completed", 60)
    wait_status(dst, "completed", 30)
    check_eq(info.get("ram", {}).get("postcopy-bytes"), 0, "postcopy-bytes without a switch")
    check("x-postcopy" not in dst.query_migrate(), "destination reports a postcopy phase")
    stop_and_verify(dst)


def postcopy_run(t, sc):
    src, dst = guests(t, sc)
    start_and_switch(src, dst)
    # The destination runs as soon as it processed POSTCOPY_RUN.
    wait_status(dst, ("postcopy-active", "completed"), 30)
    wait_runstate(dst, "running", 10)
    info = wait_status(src, "completed", 60, fail_on=("failed", "cancelled", "postcopy-paused"))
    dinfo = wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    ram = info.get("ram", {})
    pc = dinfo.get("x-postcopy", {})
    log("%s: downtime %s ms (x-downtime-us %s), postcopy-bytes %s, requests src %s dst %s, "
        "remote faults %s, local faults %s, latency p50 %s p99 %s max %s us" %
        (sc["name"], info.get("downtime"), info.get("x-downtime-us"),
         ram.get("postcopy-bytes"), ram.get("postcopy-requests"), pc.get("requests"),
         pc.get("remote-faults"), pc.get("local-faults"), pc.get("latency-p50-us"),
         pc.get("latency-p99-us"), pc.get("latency-max-us")))
    # The MIGRATION event follows the status a query sees: wait for it.
    src.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "completed", timeout=5)
    evs = [e["data"]["status"] for e in src.qmp.drain_events() if e.get("event") == "MIGRATION"]
    evs.append("completed")
    for want in ("active", "device", "postcopy-device", "postcopy-active", "completed"):
        check(want in evs, "source MIGRATION events %s lack %s", evs, want)
    check(evs.index("postcopy-device") < evs.index("postcopy-active") < evs.index("completed"),
          "source events out of order: %s", evs)
    check(ram.get("postcopy-bytes", 0) > 0, "no postcopy-bytes: %r", ram)
    check_eq(ram.get("remaining"), 0, "remaining once completed")
    check(pc, "destination query-migrate lacks x-postcopy: %r", dinfo)
    check_eq(pc.get("owed-pages"), 0, "pages still owed on the destination")
    # The guest's 3 blocks are placed the way its memory asks for.
    minor = sc.get("backend") == "memfd" and not sc.get("dst_env")
    check_eq((pc.get("x-blocks-minor"), pc.get("x-blocks-copy")), (3, 0) if minor else (0, 3),
             "blocks placed by UFFDIO_CONTINUE / UFFDIO_COPY")
    # Every request the destination sent reached the source once.
    check_eq(ram.get("postcopy-requests"), pc.get("requests"), "requests sent vs received")
    if sc["caps"].get("postcopy-blocktime"):
        check(pc.get("latency-count", 0) >= 1 and len(pc.get("latency-histogram-log2-us", []))
              == 24, "blocktime statistics missing: %r", pc)
        check(pc["latency-count"] == sum(pc["latency-histogram-log2-us"]),
              "histogram does not add up: %r", pc)
    if sc["workload"] != "idle":
        check(pc.get("remote-faults", 0) >= 1, "a %s workload never faulted: %r",
              sc["workload"], pc)
    if sc["caps"].get("multifd"):
        chans = ram.get("x-multifd-channels") or []
        check(len(chans) == 2 and ram.get("multifd-bytes", 0) > 0,
              "multifd carried nothing before the switch: %r", chans)
    check_eq(src.status(), "postmigrate", "source run state after completion")
    wait_runstate(dst, "running", 5)
    stop_and_verify(dst)


for sc in SCENARIOS:
    R.add("postcopy %s completes and verifies" % sc["name"], postcopy_run, sc)


@R.test("the workload progresses on the destination during postcopy")
def t_progress(t):
    # Unthrottled precopy would finish first: hold the background push
    # back with max-postcopy-bandwidth so postcopy lasts.
    sc = {"name": "progress", "workload": "random", "dirty_rate": "32M", "fill": "random",
          "caps": {"postcopy-preempt": True}}
    src, dst = guests(t, sc)
    set_params(src, {"max-postcopy-bandwidth": 8 * 1000 * 1000})
    start_and_switch(src, dst)
    wait_status(dst, "postcopy-active", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_runstate(dst, "running", 10)
    w0 = dst.stats()["writes"]

    def progressed():
        check_eq(dst.query_migrate().get("status"), "postcopy-active",
                 "destination status while waiting for progress")
        return dst.stats()["writes"] > w0 + 10 or None

    wait_until(progressed, 30, "destination workload writes during postcopy")
    check_eq(src.query_migrate().get("status"), "postcopy-active", "source status")
    set_params(src, {"max-postcopy-bandwidth": 0})
    wait_status(src, "completed", 60, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst)


def cut(t, how):
    sc = {"name": "cut", "workload": "random", "dirty_rate": "32M", "fill": "random",
          "caps": {}}
    src, dst = guests(t, sc)
    set_params(src, {"max-postcopy-bandwidth": 4 * 1000 * 1000})
    start_and_switch(src, dst)
    wait_status(src, "postcopy-active", 30, fail_on=("failed", "cancelled", "completed"))
    # A peer killed mid-postcopy: the connection breaks under the other side
    # as a network cut would (migrate-pause, the polite cut, is the
    # recovery issue's).
    if how == "kill-dst":
        dst.kill(signal.SIGKILL)
    else:
        src.kill(signal.SIGKILL)
    if how == "kill-dst":
        info = wait_status(src, "postcopy-paused", 40, fail_on=("failed", "completed"))
        check("postcopy paused" in info.get("error-desc", ""), "source error-desc %r",
              info.get("error-desc"))
        # The source keeps the guest stopped (the destination may run).
        check_eq(src.status(), "finish-migrate", "source run state when paused")
        e = src.qmp.expect_error("cont")
        check("migrated" in e.desc or "switchover" in e.desc, "cont error %s", e.desc)
        e = src.qmp.expect_error("migrate_cancel")
        check("Postcopy" in e.desc, "cancel error %s", e.desc)
    else:
        info = wait_status(dst, "postcopy-paused", 40, fail_on=("failed", "completed"))
        check("postcopy paused" in info.get("error-desc", ""), "dest error-desc %r",
              info.get("error-desc"))
        check_eq(dst.status(), "running", "destination run state when paused")
        dst.qmp.wait_event("MIGRATION", lambda d: d.get("status") == "postcopy-paused",
                           timeout=5)


R.add("destination killed in postcopy: the source pauses and keeps the guest", cut, "kill-dst")
R.add("source killed in postcopy: the destination pauses and keeps running", cut, "kill-src")


# ------------------------------------------------------------- CLI policies


@R.test("livemig migrate --auto-postcopy finishes a hot workload precopy cannot")
def t_cli_auto(t):
    # At 20 MB/s a round over the 8 MB hot set takes 0.4 s, in which the
    # hot set is written all over again: remaining never finds a new low.
    src = t.guest("src", mem="32M", workload="hot", hot_size="8M", fill="random", seed=3)
    dst = t.guest("dst", mem="32M", workload="hot", hot_size="8M", incoming="defer")
    rc, out, err = run_cli(["migrate", "--src", src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--auto-postcopy=1",
                            "--param", "downtime-limit=1", "--param", "max-bandwidth=20M",
                            "--timeout", "40"], timeout=50)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check("switching to postcopy: precopy stopped converging" in out,
          "no auto switch in the output: %r", out[-800:])
    check(re.search(r"postcopy\s+\S+", out), "summary lacks postcopy figures: %r", out[-800:])
    check_eq(dst.query_migrate().get("status"), "completed", "destination status")
    stop_and_verify(dst)


@R.test("livemig migrate --postcopy (after pass 1), and livemig postcopy SOCK by hand")
def t_cli_postcopy(t):
    src = t.guest("src", mem="32M", workload="random", dirty_rate="32M", fill="random",
                  seed=4)
    dst = t.guest("dst", mem="32M", workload="random", incoming="defer")
    rc, out, err = run_cli(["migrate", "--src", src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--postcopy",
                            "--param", "downtime-limit=1", "--param", "max-bandwidth=20M",
                            "--timeout", "40"], timeout=50)
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check("switching to postcopy: 1 pass done" in out, "no switch after pass 1: %r",
          out[-800:])
    stop_and_verify(dst)

    # By hand: QMP starts the migration, the CLI verb switches it.
    src = t.guest("src2", mem="32M", workload="random", dirty_rate="32M", fill="random")
    dst = t.dest("dst2", mem="32M", workload="random", defer=True,
                 caps={"postcopy-ram": True})
    set_caps(src, {"postcopy-ram": True})
    set_params(src, {"max-bandwidth": 4 * 1000 * 1000, "downtime-limit": 1})
    migrate(src, dst)
    rc, out, err = run_cli(["postcopy", src.sock], timeout=10)
    check_eq(rc, 0, "livemig postcopy exit code (stderr %r)" % err)
    # Unlimited after the switch, 32M may be done before a query sees
    # postcopy-active: what went after the switch proves it happened.
    info = wait_status(src, "completed", 60, fail_on=("failed", "cancelled", "postcopy-paused"))
    check(info.get("ram", {}).get("postcopy-bytes", 0) > 0, "no postcopy-bytes: %r", info)
    wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst)
    # A source without the capability: the verb fails and says why.
    g = t.guest("plain", mem="32M")
    rc, out, err = run_cli(["postcopy", g.sock], timeout=10)
    check(rc == 1 and "migrate_set_capability" in err, "exit %d, stderr %r", rc, err)


# ------------------------------------------------------ hostile / fake peers

HELLO = struct.Struct("<IHBBHHI16sQ8s")
MAGIC = 0x47494d4c
FEAT_POSTCOPY = 1 << 1
REC = struct.Struct("<BBHI")
T_RAM_BLOCKS, T_RAM_PAGES, T_RAM_ZERO, T_RAM_PASS = 0x10, 0x11, 0x12, 0x13
T_PING, T_SWITCHOVER_START, T_DISCARD, T_RUN, T_EOS = 0x20, 0x21, 0x22, 0x23, 0x30
T_ERROR, T_RP_SHUT, T_RP_PONG, T_RP_REQ_PAGES = 0x7F, 0x81, 0x82, 0x83


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise TestFailure("peer closed the connection (%d of %d bytes)" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def rec(t, payload=b""):
    return REC.pack(t, 0, 0, len(payload)) + payload


def status_msg(status, msg):
    m = msg.encode()
    return struct.pack("<iH", status, len(m)) + m


class FakeDest:
    """Speaks the destination side of docs/format.md over one TCP
    connection: ACCEPTs the HELLO (postcopy feature), records every RAM
    record after POSTCOPY_RUN, answers PINGs, and lets the test send
    return-path records.  Bounded: every socket operation times out."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(2)
        self.lsock.settimeout(30)
        self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.blocks = []          # (name, page_size, length)
        self.discard = []         # (block, first, count)
        self.after_run = []       # (type, block, first, count)
        self.run = threading.Event()
        self.eos = threading.Event()
        self.error = None
        self.wlock = threading.Lock()
        self.sock = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, data):
        with self.wlock:
            self.sock.sendall(data)

    def _run(self):
        try:
            self.sock, _ = self.lsock.accept()
            self.sock.settimeout(60)
            h = HELLO.unpack(recv_exact(self.sock, 48))
            check_eq(h[0], MAGIC, "HELLO magic")
            self.send(HELLO.pack(MAGIC, 1, 1, 1, 0, 0, 4096, h[7], FEAT_POSTCOPY, bytes(8)))
            running = False
            while True:
                typ, _, _, n = REC.unpack(recv_exact(self.sock, 8))
                if typ == T_RAM_PAGES:
                    blk, cnt, first = struct.unpack("<IIQ", recv_exact(self.sock, 16))
                    recv_exact(self.sock, n - 16)
                    if running:
                        self.after_run.append((typ, blk, first, cnt))
                    continue
                p = recv_exact(self.sock, n)
                if typ == T_RAM_BLOCKS:
                    cnt, off = struct.unpack_from("<I", p)[0], 4
                    for _ in range(cnt):
                        ln = p[off]
                        name = p[off + 1:off + 1 + ln].decode()
                        ps, length = struct.unpack_from("<IQ", p, off + 1 + ln)
                        self.blocks.append((name, ps, length))
                        off += 1 + ln + 12
                elif typ == T_RAM_ZERO and running:
                    blk, _, first, cnt = struct.unpack("<IIQQ", p)
                    self.after_run.append((typ, blk, first, cnt))
                elif typ == T_DISCARD:
                    blk, _, first, cnt = struct.unpack("<IIQQ", p)
                    self.discard.append((blk, first, cnt))
                elif typ == T_RUN:
                    running = True
                elif typ == T_PING:
                    self.send(rec(T_RP_PONG, p))
                    if running:
                        self.run.set()
                elif typ == T_EOS:
                    self.eos.set()
                    self.send(rec(T_RP_SHUT, status_msg(0, "loaded")))
                    return
        except BaseException as e:  # reported by the test
            self.error = e
            self.run.set()
            self.eos.set()

    def close(self):
        for s in (self.sock, self.lsock):
            try:
                if s:
                    s.close()
            except OSError:
                pass


@R.test("a page requested twice is sent once (fake destination)")
def t_dup_request(t):
    src = t.guest("src", mem="32M", workload="idle", fill="random", seed=6)
    set_caps(src, {"events": True, "postcopy-ram": True})
    set_params(src, {"max-bandwidth": 4 * 1000 * 1000, "downtime-limit": 1,
                     "max-postcopy-bandwidth": 1000 * 1000})
    fd = FakeDest()
    t.closers.append(fd.close)
    src.qmp.execute("migrate", {"uri": fd.uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 1 << 20,
               30, "1 MB of precopy")
    src.qmp.execute("migrate-start-postcopy")
    check(fd.run.wait(30), "no POSTCOPY_RUN + PING")
    if fd.error:
        raise TestFailure("fake destination: %s" % fd.error)
    check(fd.discard, "no POSTCOPY_DISCARD before RUN")
    # The last owed page of block 0: far ahead of the slow background push.
    blk, first, cnt = max((d for d in fd.discard if d[0] == 0), key=lambda d: d[1] + d[2])
    page = first + cnt - 1
    req = rec(T_RP_REQ_PAGES, struct.pack("<IIQ", 0, 1, page))
    fd.send(req)
    fd.send(req)
    wait_until(lambda: src.query_migrate().get("ram", {}).get("postcopy-requests") == 2 or None,
               20, "both requests counted")
    set_params(src, {"max-postcopy-bandwidth": 0})
    check(fd.eos.wait(60), "no EOS from the source")
    if fd.error:
        raise TestFailure("fake destination: %s" % fd.error)
    wait_status(src, "completed", 20, fail_on=("failed", "postcopy-paused"))
    sent = [r for r in fd.after_run if r[1] == 0 and r[2] <= page < r[2] + r[3]]
    check_eq(len(sent), 1, "times page %d was sent after the switch (%r)" % (page, sent))
    # The requested page went before the background push reached it: it is
    # sent alone, as the answer to the request.
    check(sent[0][3] == 1, "page %d came in a background run %r, not as the answer", page,
          sent[0])
    # Every owed page came exactly once after the switch.
    owed = set((b, p) for b, f, c in fd.discard for p in range(f, f + c))
    got = [(b, p) for _, b, f, c in fd.after_run for p in range(f, f + c)]
    check_eq(len(got), len(set(got)), "pages sent more than once after the switch")
    check_eq(set(got), owed, "pages sent after the switch vs owed pages")


def fake_source(uri, blocks, records):
    """Connects to a destination, says HELLO with the postcopy feature and
    sends records; returns the destination's return-path bytes (bounded)."""
    host, port = uri[4:].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(HELLO.pack(MAGIC, 1, 1, 0, 0, 0, 4096, os.urandom(16), FEAT_POSTCOPY,
                             bytes(8)))
        reply = HELLO.unpack(recv_exact(s, 48))
        check_eq(reply[3], 1, "destination's HELLO kind (ACCEPT)")
        tab = struct.pack("<I", len(blocks))
        for name, ps, length in blocks:
            tab += bytes([len(name)]) + name.encode() + struct.pack("<IQ", ps, length)
        s.sendall(rec(T_RAM_BLOCKS, tab) + b"".join(records))
        got = b""
        s.settimeout(10)
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                got += c
        except socket.timeout:
            pass
        return got
    finally:
        s.close()


@R.test("postcopy: a page outside guest RAM is rejected, the destination pauses")
def t_bad_page(t):
    dst = t.dest("dst", mem="32M", defer=True, caps={"events": True, "postcopy-ram": True})
    # The blocks of a 32M guest (tools/guest.c): ram0 3/4, ram1 1/4, ledger.
    pages = (32 << 20) // 4096
    ledger = (pages * 8 + 4095) // 4096 * 4096
    blocks = [("ram0", 4096, pages * 3 // 4 * 4096), ("ram1", 4096, pages // 4 * 4096),
              ("ledger", 4096, ledger)]
    ram1_pages = blocks[1][2] // 4096
    recs = [rec(T_SWITCHOVER_START),
            rec(T_DISCARD, struct.pack("<IIQQ", 1, 0, 0, ram1_pages)),
            rec(T_RUN), rec(T_PING, struct.pack("<I", 0x80000001)),
            # one page past the end of ram1
            rec(T_RAM_PAGES, struct.pack("<IIQ", 1, 1, ram1_pages) + bytes(4096))]
    rp = fake_source(dest_uri(dst), blocks, recs)
    info = wait_status(dst, "postcopy-paused", 20, fail_on=("completed",))
    desc = info.get("error-desc", "")
    check("past the end of block" in desc and "ram1" in desc, "error-desc %r", desc)
    check(b"past the end of block" in rp, "the source was not told why: %r", rp[-300:])
    # The guest runs on; its owed pages wait (nothing was placed).
    check_eq(dst.status(), "running", "destination run state")
    check_eq(info.get("x-postcopy", {}).get("owed-pages"), ram1_pages, "owed pages")


if __name__ == "__main__":
    R.main()
