"""The QMP control server: several clients and their events, malformed
input, unknown commands, capability/parameter round trips, and that every
command answers at once while a migration channel hangs (DESIGN §3)."""

import array
import fcntl
import json
import socket
import termios
import time

from lmtest import (QMP, Runner, check, check_eq, log, migrate, run_cli, set_caps, set_params,
                    stop_and_verify, wait_status, wait_until)

R = Runner("qmp", per_test=40, budget=200)


@R.test("several clients all receive MIGRATION events")
def many_clients(t):
    src = t.guest("src", mem="128M", workload="random", fill="random")
    dst = t.dest("dst", transport="tcp", mem="128M", workload="random")
    clients = [src.qmp, src.client(), src.client()]
    set_caps(clients[1], {"events": True})
    set_params(clients[2], {"max-bandwidth": 0})
    migrate(src, dst)
    for i, c in enumerate(clients):
        ev = c.wait_event("MIGRATION", lambda d: d.get("status") == "completed", 30)
        ts = ev.get("timestamp", {})
        check(isinstance(ts.get("seconds"), int) and isinstance(ts.get("microseconds"), int),
              "client %d: event timestamp %r", i, ts)
        check(abs(ts["seconds"] - time.time()) < 60, "client %d: timestamp %r is not now",
              i, ts)
    for i, c in enumerate(clients):
        sts = c.migration_statuses()
        check("setup" in sts and "active" in sts, "client %d: events before completed: %s",
              i, sts)
    # A client that connects later still works and gets later events.
    late = src.client()
    check_eq(late.execute("query-migrate").get("status"), "completed", "late client status")
    stop_and_verify(dst)


def raw_client(g):
    """A connected socket past the greeting, and its QMP wrapper."""
    q = QMP(g.sock)
    g.clients.append(q)
    return q


def reply_to(q, data, timeout=30.0):
    q.send_raw(data)
    return q.recv_reply(timeout)


def unread_bytes(sock):
    """Bytes we sent on a unix socket that the peer has not read yet."""
    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, n)  # SIOCOUTQ
    return n[0]


@R.test("malformed JSON gets an error and the server keeps serving")
def malformed(t):
    g = t.guest("g", mem="64M")
    q = raw_client(g)
    bad_inputs = [
        b'{"execute": query-status}\n',
        b'[1, 2, 3]\n',
        b'"just a string"\n',
        b'{"execute": 42}\n',
        b'{"arguments": {}}\n',
        b'{"execute": "query-status", "arguments": [1]}\n',
        b'{"execute": "query-status", "bogus-key": 1}\n',
    ]
    for data in bad_inputs:
        r = reply_to(q, data)
        check("error" in r, "input %r: want an error reply, got %r", data, r)
        check(r["error"].get("class") and r["error"].get("desc"),
              "input %r: error without class/desc: %r", data, r)
        # ... and the connection still works, with ids echoed.  A parser
        # that resynchronises may report more than one error for one bad
        # line (QEMU's does); those come first, without an id.
        q.send_raw(b'{"execute": "query-status", "id": {"n": 7}}\n')
        for _ in range(10):
            r = q.recv_reply(30)
            if r.get("id") == {"n": 7} or "error" not in r or "id" in r:
                break
        check_eq(r.get("id"), {"n": 7}, "id echoed after %r" % data)
        check("return" in r, "query-status after %r: %r", data, r)
    # A command split over two writes is one command: the server has read
    # the first half before the second is sent.
    q.send_raw(b'{"execute": "query-')
    wait_until(lambda: unread_bytes(q.sock) == 0, 20, "the server reading the first half")
    r = reply_to(q, b'status", "id": "split"}\n')
    check_eq(r.get("id"), "split", "reply to a split command")
    check("return" in r, "split command: %r", r)
    # Two commands in one write get two replies, in order.
    q.send_raw(b'{"execute": "query-status", "id": 1}{"execute": "query-migrate", "id": 2}\n')
    r1, r2 = q.recv_reply(30), q.recv_reply(30)
    check_eq((r1.get("id"), r2.get("id")), (1, 2), "ids of two pipelined commands")
    # Other clients are unaffected.
    check_eq(g.status(), "running", "another client's query-status")


@R.test("malformed JSON gets exactly one error: later id-less replies stay in step")
def one_error_per_malformed_value(t):
    g = t.guest("g", mem="64M")
    q = raw_client(g)
    for bad in (b'{"execute" 1}', b'{"execute": "query-status", "arguments": {"x": [1 2]}}',
                b'{"execute":\n "query-status"\n "bogus": "}"}'):
        # One write: the bad value, then a good command without id.
        q.send_raw(bad + b'\n{"execute": "query-status"}\n')
        r = q.recv_reply(30)
        check("error" in r and "JSON parse error" in r["error"].get("desc", ""),
              "input %r: want one JSON parse error first, got %r", bad, r)
        r = q.recv_reply(30)
        check("return" in r and r["return"].get("status") == "running",
              "input %r: the next reply must be query-status's, got %r", bad, r)


@R.test("commands before qmp_capabilities are refused")
def before_caps(t):
    g = t.guest("g", mem="64M")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(g.sock)
    try:
        f = s.makefile("rb")
        greeting = json.loads(f.readline())
        check("QMP" in greeting and "version" in greeting["QMP"],
              "greeting %r lacks QMP.version", greeting)
        check("capabilities" in greeting["QMP"], "greeting %r lacks QMP.capabilities",
              greeting)
        s.sendall(b'{"execute": "query-status", "id": 1}\n')
        r = json.loads(f.readline())
        check("error" in r, "query-status before negotiation answered %r", r)
        s.sendall(b'{"execute": "qmp_capabilities", "id": 2}\n')
        r = json.loads(f.readline())
        check_eq(r, {"return": {}, "id": 2}, "qmp_capabilities reply")
        s.sendall(b'{"execute": "query-status", "id": 3}\n')
        r = json.loads(f.readline())
        check("return" in r and r["return"].get("status") == "running", "query-status: %r", r)
    finally:
        s.close()


@R.test("unknown command -> CommandNotFound")
def unknown_command(t):
    g = t.guest("g", mem="64M")
    e = g.qmp.expect_error("no-such-command")
    check_eq(e.cls, "CommandNotFound", "error class")
    check("no-such-command" in e.desc, "desc %r does not name the command", e.desc)
    check_eq(g.status(), "running", "run state afterwards")


@R.test("capabilities and parameters round trip")
def caps_params(t):
    g = t.guest("g", mem="64M")
    caps = {c["capability"]: c["state"] for c in
            g.qmp.execute("query-migrate-capabilities")}
    for name in ("events", "return-path", "pause-before-switchover", "late-block-activate",
                 "postcopy-ram", "multifd"):
        check(name in caps, "query-migrate-capabilities lacks %s: %r", name, caps)
    check(not any(caps.values()), "capabilities not all off by default: %r", caps)
    set_caps(g, {"events": True, "pause-before-switchover": True})
    caps = {c["capability"]: c["state"] for c in
            g.qmp.execute("query-migrate-capabilities")}
    check(caps["events"] and caps["pause-before-switchover"] and not caps["return-path"],
          "capabilities after set: %r", caps)
    p = g.qmp.execute("query-migrate-parameters")
    check_eq(p.get("downtime-limit"), 300, "default downtime-limit")
    check_eq(p.get("max-bandwidth"), 128 << 20, "default max-bandwidth")
    set_params(g, {"downtime-limit": 42, "max-bandwidth": 12345678})
    p = g.qmp.execute("query-migrate-parameters")
    check_eq((p.get("downtime-limit"), p.get("max-bandwidth")), (42, 12345678),
             "parameters after set")
    # All or nothing: one bad value leaves the others unchanged.
    g.qmp.expect_error("migrate-set-parameters", {"downtime-limit": 7,
                                                  "max-bandwidth": -1})
    p = g.qmp.execute("query-migrate-parameters")
    check_eq(p.get("downtime-limit"), 42, "downtime-limit after a refused set")


# Parameters the engine stores but does not act on (self-announce):
# a value but the default is refused, naming
# the parameter; the default itself is accepted, as management software
# sets it routinely.  (name, non-default value, default)
DEFAULT_ONLY = [
    ("announce-initial", 60, 50),
    ("announce-max", 600, 550),
    ("announce-rounds", 7, 5),
    ("announce-step", 200, 100),
]


@R.test("parameters the engine does not act on: refused unless at their default")
def default_only_params(t):
    g = t.guest("g", mem="64M")
    before = g.qmp.execute("query-migrate-parameters")
    for name, other, default in DEFAULT_ONLY:
        check_eq(before.get(name), default, "default of %s" % name)
        e = g.qmp.expect_error("migrate-set-parameters", {"max-bandwidth": 5, name: other})
        check_eq(e.cls, "GenericError", "error class for %s" % name)
        want = "Parameter '%s' is not supported (only its default, %s, is accepted)" % (
            name, json.dumps(default))
        check_eq(e.desc, want, "refusal of %s=%r" % (name, other))
    check_eq(g.qmp.execute("query-migrate-parameters"), before,
             "parameters after refused sets (all or nothing)")
    set_params(g, dict((name, default) for name, _, default in DEFAULT_ONLY))
    check_eq(g.qmp.execute("query-migrate-parameters"), before, "parameters after defaults")


@R.test("a listening destination accepts migrate-set-capabilities (as QEMU does)")
def dst_caps_while_listening(t):
    # QEMU refuses capability changes only while an *outgoing* migration
    # runs (qmp_migrate_set_capabilities checks the outgoing state); a
    # destination started with -incoming tcp:... can still get "events".
    dst = t.dest("dst", transport="tcp", mem="64M")
    check_eq(dst.query_migrate().get("status"), "setup", "listening destination status")
    set_caps(dst, {"events": True})
    caps = {c["capability"]: c["state"] for c in
            dst.qmp.execute("query-migrate-capabilities")}
    check(caps["events"], "events not on after set: %r", caps)


@R.test("commands answer while the migration channel hangs")
def responsive_while_hung(t):
    # The silent destination never answers the HELLO, so the migration
    # channel hangs until the source gives up on it (its HELLO timeout,
    # 10 s) and fails.  A command stuck behind the channel would be
    # answered only then, or not at all: every command answered while the
    # source is still in setup after the last one is the decision checked.
    # How long each answer took is logged, not judged (it is scheduling);
    # the 75 answers take milliseconds, the 10 s hang is the margin.
    answer_s = 20
    src = t.guest("src", mem="128M", workload="random", fill="random")
    silent = t.silent()
    set_caps(src, {"events": True})
    migrate(src, None, silent.uri)
    check(silent.accepted.wait(20), "the silent destination saw no connection")
    wait_until(lambda: len(silent.received) >= 4, 20, "the source's HELLO")
    check_eq(src.query_migrate().get("status"), "setup", "status with a silent destination")
    other = src.client()
    worst = {}
    for i in range(15):
        for name, fn in (
            ("query-migrate", lambda: src.qmp.execute("query-migrate", timeout=answer_s)),
            ("query-status", lambda: src.qmp.execute("query-status", timeout=answer_s)),
            ("migrate-set-parameters",
             lambda: src.qmp.execute("migrate-set-parameters",
                                     {"max-bandwidth": (i + 1) << 20}, timeout=answer_s)),
            ("x-guest-stats", lambda: other.execute("x-guest-stats", timeout=answer_s)),
            ("query-migrate (2nd client)",
             lambda: other.execute("query-migrate", timeout=answer_s)),
        ):
            t0 = time.monotonic()
            fn()
            dt = time.monotonic() - t0
            worst[name] = max(worst.get(name, 0), dt)
    log("worst latencies (ms): %s" % {k: round(v * 1000, 1) for k, v in worst.items()})
    check_eq(src.query_migrate().get("status"), "setup",
             "status after the commands (the channel still hangs)")
    check_eq(src.qmp.execute("query-migrate-parameters").get("max-bandwidth"), 15 << 20,
             "max-bandwidth set while hung")
    t0 = time.monotonic()
    src.qmp.execute("migrate_cancel", timeout=answer_s)
    log("migrate_cancel answered after %.1f ms" % ((time.monotonic() - t0) * 1000))
    wait_status(src, "cancelled", 20, fail_on=("completed", "failed"))


# ------------------------------------------------- migrate-incoming, identity

NOT_INCOMING = "'-incoming' was not specified on the command line"
ALREADY = "The incoming migration has already been started"


@R.test("migrate-incoming on a guest not started as a destination is refused")
def incoming_needs_incoming(t):
    # A paused source used to turn into a destination here.
    g = t.guest("g", mem="64M", workload="random")
    e = g.qmp.expect_error("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    check_eq((e.cls, e.desc), ("GenericError", NOT_INCOMING), "running guest")
    g.qmp.execute("stop")
    for uri in ("tcp:127.0.0.1:0", "unix:" + g.sock + ".mig", "bogus:1"):
        e = g.qmp.expect_error("migrate-incoming", {"uri": uri})
        check_eq((e.cls, e.desc), ("GenericError", NOT_INCOMING), "paused guest, %s" % uri)
    check_eq(g.query_migrate(), {"status": "none"}, "query-migrate after the refusals")
    check_eq(g.status(), "paused", "run state after the refusals")
    g.qmp.execute("cont")
    check_eq(g.status(), "running", "run state after cont")


@R.test("a second migrate-incoming: already started; after a failure: accepted")
def incoming_once(t):
    dst = t.guest("dst", mem="64M", incoming="defer")
    # A bad URI starts nothing: the next one is still the first.
    dst.qmp.expect_error("migrate-incoming", {"uri": "tcp:127.0.0.1"})
    dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    uri = dst.listen_uri()
    for again in ("tcp:127.0.0.1:0", uri):
        e = dst.qmp.expect_error("migrate-incoming", {"uri": again})
        check_eq((e.cls, e.desc), ("GenericError", ALREADY), "second migrate-incoming")
    check_eq(dst.listen_uri(), uri, "the first listener still listens")
    # A source whose stream is refused fails the destination, which may
    # then take another (QEMU would have exited).
    src = t.guest("src", mem="32M", workload="random")
    migrate(src, dst)
    wait_status(dst, "failed", 20, fail_on=("completed",))
    wait_status(src, "failed", 20, fail_on=("completed",))
    dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    check_eq(dst.query_migrate().get("status"), "setup", "destination after a retry")
    # A destination started with --incoming URI has started it already.
    d2 = t.dest("d2", transport="tcp", mem="64M")
    e = d2.qmp.expect_error("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    check_eq(e.desc, ALREADY, "migrate-incoming after --incoming URI")


@R.test("after a completed incoming migration: already started")
def incoming_after_completed(t):
    src = t.guest("src", mem="64M", workload="random", fill="random")
    dst = t.dest("dst", transport="tcp", defer=True, mem="64M", workload="random")
    set_params(src, {"max-bandwidth": 0})
    migrate(src, dst)
    wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    e = dst.qmp.expect_error("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    check_eq(e.desc, ALREADY, "destination after completion")
    # The source is postmigrate, never a destination.
    e = src.qmp.expect_error("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    check_eq(e.desc, NOT_INCOMING, "source after completion")
    stop_and_verify(dst)


@R.test("query-name, query-uuid, query-version")
def identity(t):
    g = t.guest("g", mem="64M")
    check_eq(g.qmp.execute("query-name"), {}, "query-name without --name (QEMU: {})")
    check_eq(g.qmp.execute("query-uuid"), {"UUID": "00000000-0000-0000-0000-000000000000"},
             "query-uuid without --uuid (QEMU's default)")
    v = g.qmp.execute("query-version")
    rc, out, _ = run_cli(["--version"])
    check_eq(rc, 0, "livemig --version exit code")
    want = out.split()[-1]  # "livemig 0.1.0"
    major, minor, micro = (int(x) for x in want.split("."))
    check_eq(v, {"qemu": {"major": major, "minor": minor, "micro": micro},
                 "package": "livemig " + want}, "query-version")
    check_eq(g.qmp.greeting["QMP"]["version"], v, "greeting version vs query-version")
    n = t.guest("n", mem="64M", extra=("--name", "web-1", "--uuid",
                                        "5D4E1A7C-0F3B-4C2D-9E8F-1A2B3C4D5E6F"))
    check_eq(n.qmp.execute("query-name"), {"name": "web-1"}, "query-name")
    check_eq(n.qmp.execute("query-uuid"), {"UUID": "5d4e1a7c-0f3b-4c2d-9e8f-1a2b3c4d5e6f"},
             "query-uuid")
    for bad in ("5d4e1a7c-0f3b-4c2d-9e8f", "5d4e1a7c-0f3b-4c2d-9e8f-1a2b3c4d5e6g",
                "5d4e1a7c00f3b-4c2d-9e8f-1a2b3c4d5e6f"):
        rc, _, err = run_cli(["guest", "--mem", "4M", "--qmp",
                              "unix:" + n.sock + ".bad", "--uuid", bad], timeout=20)
        check(rc != 0 and bad in err, "--uuid %s: exit %d, stderr %r", bad, rc, err)


if __name__ == "__main__":
    R.main()
