"""TLS on every migration channel (issue 12): QEMU's tls-creds-x509 and
tls-creds-psk objects (QMP object-add on one side, `guest --object` on the
other), tls-creds / tls-hostname / tls-authz, over the main channel and
return path, multifd and postcopy's preempt channel; every refusal fails
the migration at setup naming its cause while the source keeps running.
Certificates are made here with certtool (gnutls-bin): a CA, a server
certificate for localhost/127.0.0.1, a client one, one from another CA,
an expired one."""

import os
import shutil
import socket
import subprocess
import tempfile

from lmtest import (Runner, check, check_eq, log, migrate, scaled, set_caps, set_params,
                    stop_and_verify, wait_runstate, wait_status, wait_until)

R = Runner("tls", per_test=30, budget=240)

MEM = "64M"
CLIENT_DN = "CN=livemig-source,O=livemig test"
PSK_KEY = "9d2e4b0f1c6a7e8d5b3c2a1f0e9d8c7b"

_PKI = None


def certtool(args, template=None, workdir=None):
    tf = None
    if template is not None:
        tf = os.path.join(workdir, "tmpl.cfg")
        with open(tf, "w") as f:
            f.write(template)
        args = args + ["--template", tf]
    r = subprocess.run(["certtool"] + args, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("certtool %s: %s" % (args, r.stderr.decode(errors="replace")))


def make_pki():
    """Directories: srv (server creds), cli (client), cli-nocert (CA only),
    srv-badca (server cert from another CA), srv-expired, psk-srv,
    psk-cli, psk-bad (another key).  Made once per run."""
    global _PKI
    if _PKI:
        return _PKI
    d = tempfile.mkdtemp(prefix="lmt-pki-", dir="/tmp")
    k = lambda n: os.path.join(d, n)

    def key(name):
        certtool(["--generate-privkey", "--key-type", "ecdsa", "--outfile", k(name)])

    def ca(name):
        key(name + "-key.pem")
        certtool(["--generate-self-signed", "--load-privkey", k(name + "-key.pem"),
                  "--outfile", k(name + "-cert.pem")],
                 "cn = %s\nca\ncert_signing_key\nexpiration_days = 30\n" % name, d)

    def leaf(name, ca_name, tmpl):
        key(name + "-key.pem")
        certtool(["--generate-certificate", "--load-privkey", k(name + "-key.pem"),
                  "--load-ca-certificate", k(ca_name + "-cert.pem"),
                  "--load-ca-privkey", k(ca_name + "-key.pem"),
                  "--outfile", k(name + "-cert.pem")], tmpl, d)

    ca("ca")
    ca("otherca")
    srv = ("cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n"
           "tls_www_server\nencryption_key\nsigning_key\n")
    leaf("server", "ca", srv + "expiration_days = 30\n")
    leaf("server-badca", "otherca", srv + "expiration_days = 30\n")
    leaf("server-expired", "ca", srv + "activation_date = \"2020-01-01 00:00:00\"\n"
         "expiration_date = \"2020-01-02 00:00:00\"\n")
    leaf("client", "ca", "cn = livemig-source\norganization = livemig test\n"
         "tls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n")

    def creds(name, files):
        p = k(name)
        os.mkdir(p)
        for src, dst in files:
            shutil.copy(k(src), os.path.join(p, dst))
        return p

    pki = {
        "srv": creds("srv", [("ca-cert.pem", "ca-cert.pem"), ("server-cert.pem",
                                                              "server-cert.pem"),
                             ("server-key.pem", "server-key.pem")]),
        "srv-badca": creds("srv-badca", [("ca-cert.pem", "ca-cert.pem"),
                                         ("server-badca-cert.pem", "server-cert.pem"),
                                         ("server-badca-key.pem", "server-key.pem")]),
        "srv-expired": creds("srv-expired", [("ca-cert.pem", "ca-cert.pem"),
                                             ("server-expired-cert.pem", "server-cert.pem"),
                                             ("server-expired-key.pem", "server-key.pem")]),
        "cli": creds("cli", [("ca-cert.pem", "ca-cert.pem"), ("client-cert.pem",
                                                              "client-cert.pem"),
                             ("client-key.pem", "client-key.pem")]),
    }
    for name, line in (("psk-srv", "qemu:%s\nother:00ff\n" % PSK_KEY),
                       ("psk-cli", "qemu:%s\n" % PSK_KEY),
                       ("psk-bad", "qemu:%s\n" % ("11" * 16))):
        p = k(name)
        os.mkdir(p)
        with open(os.path.join(p, "keys.psk"), "w") as f:
            f.write(line)
        pki[name] = p
    pki["root"] = d
    _PKI = pki
    return pki


def esc(s):
    return s.replace(",", ",,")


def x509_server_object(pki, which="srv", verify=True):
    return "tls-creds-x509,id=tls0,endpoint=server,dir=%s,verify-peer=%s" % (
        pki[which], "on" if verify else "off")


def authz_object(dn, policy="allow"):
    return "authz-list,id=auth0,policy=deny,rules.0.match=%s,rules.0.policy=%s" % (esc(dn),
                                                                                   policy)


def dest(t, objects=(), params=None, caps=None, transport="tcp", mem=MEM, **kw):
    """A destination started with --incoming defer, its objects given with
    --object, parameters and capabilities set, then migrate-incoming."""
    extra = []
    for o in objects:
        extra += ["--object", o]
    g = t.guest("dst", mem=mem, incoming="defer", extra=extra, **kw)
    if caps:
        set_caps(g, caps)
    if params:
        set_params(g, params)
    inc = "tcp:127.0.0.1:0" if transport == "tcp" else "unix:" + os.path.join(t.tmpdir,
                                                                                  "dst.mig")
    g.qmp.execute("migrate-incoming", {"uri": inc})
    g.incoming = inc
    return g


def source(t, objects=(), params=None, caps=None, mem=MEM, **kw):
    """A source whose objects come through QMP object-add."""
    g = t.guest("src", mem=mem, **kw)
    for o in objects:
        g.qmp.execute("object-add", o)
    if caps:
        set_caps(g, caps)
    if params:
        set_params(g, params)
    return g


def x509_client(pki, which="cli"):
    return {"qom-type": "tls-creds-x509", "id": "tls0", "endpoint": "client",
            "dir": pki[which], "verify-peer": True}


def finish(src, dst, timeout=30):
    try:
        wait_status(src, "completed", timeout)
    except Exception:
        log("destination: %r" % dst.query_migrate().get("error-desc"))
        raise
    wait_status(dst, "completed", 10)
    wait_runstate(dst, "running", 5)
    sv = src.verify()
    check(sv.get("ok") is True, "source x-guest-verify: %r", sv)
    dv = stop_and_verify(dst)
    check(dv["written-pages"] >= sv["written-pages"], "written pages: destination %r, source %r",
          dv["written-pages"], sv["written-pages"])


@R.test("x509 + authz, multifd 2: main, return path and multifd channels over TLS")
def x509_multifd(t):
    pki = make_pki()
    caps = {"multifd": True, "events": True}
    dst = dest(t, [x509_server_object(pki), authz_object(CLIENT_DN)],
               {"tls-creds": "tls0", "tls-authz": "auth0"}, caps, workload="random",
               dirty_rate="16M")
    src = source(t, [x509_client(pki)], {"tls-creds": "tls0", "multifd-channels": 2}, caps,
                 workload="random", dirty_rate="16M", fill="random", seed=5)
    p = src.qmp.execute("query-migrate-parameters")
    check_eq((p["tls-creds"], p["tls-hostname"], p["tls-authz"]), ("tls0", "", ""),
             "source tls parameters")
    check_eq(dst.qmp.execute("query-migrate-parameters")["tls-authz"], "auth0", "dst tls-authz")
    migrate(src, dst)
    info = wait_status(src, "completed", 30)
    chans = info["ram"].get("x-multifd-channels")
    check(chans and all(c["bytes"] > 0 for c in chans), "multifd channels idle: %r", chans)
    finish(src, dst)


@R.test("x509 over unix: with tls-hostname, postcopy + preempt")
def x509_postcopy_preempt(t):
    pki = make_pki()
    caps = {"events": True, "postcopy-ram": True, "postcopy-preempt": True}
    dst = dest(t, [x509_server_object(pki)], {"tls-creds": "tls0"}, caps, transport="unix",
               workload="random", dirty_rate="32M")
    src = source(t, [x509_client(pki)],
                 {"tls-creds": "tls0", "tls-hostname": "localhost", "max-bandwidth": 20 << 20},
                 caps, workload="random", dirty_rate="32M", fill="random", seed=7)
    migrate(src, dst)
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4 << 20, 20,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    wait_status(src, "postcopy-active", 15)
    set_params(src, {"max-bandwidth": 0})
    finish(src, dst)


@R.test("postcopy recovery over TLS: cut, a resume refused by tls-authz (authenticated "
        "again), then recovered (main, preempt, multifd) and verified", timeout=60)
def x509_recovery(t):
    pki = make_pki()
    caps = {"events": True, "postcopy-ram": True, "postcopy-preempt": True, "multifd": True}
    # A cut is an RST on both sides: no silence bound needed (default 10 s,
    # scaled for sanitizer builds).
    tmo = {"x-postcopy-timeout-ms": int(10000 * scaled(1))}
    dst = dest(t, [x509_server_object(pki), authz_object(CLIENT_DN)],
               dict(tmo, **{"tls-creds": "tls0", "tls-authz": "auth0"}), caps,
               workload="random", dirty_rate="32M", seed=2)
    src = source(t, [x509_client(pki)],
                 dict(tmo, **{"tls-creds": "tls0", "max-bandwidth": 20 * 1000 * 1000,
                              "downtime-limit": 1, "max-postcopy-bandwidth": 256 * 1000}),
                 caps, workload="random", dirty_rate="32M", fill="random", seed=1)
    px = t.proxy(dst.listen_uri(), listen="tcp")
    src.qmp.execute("migrate", {"uri": px.uri})
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4000000, 20,
               "4 MB of precopy sent")
    src.qmp.execute("migrate-start-postcopy")
    for g in (src, dst):
        wait_status(g, "postcopy-active", 20, fail_on=("failed", "completed", "cancelled"))
    px.cut()
    for g in (src, dst):
        wait_status(g, "postcopy-paused", 20, fail_on=("failed", "completed", "cancelled"))
    # The same client, no longer allowed: the resumed channel is
    # authenticated again and refused.
    dst.qmp.execute("object-del", {"id": "auth0"})
    dst.qmp.execute("object-add", {"qom-type": "authz-list", "id": "auth0", "policy": "deny"})
    dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    uri = dst_uri(dst)
    src.qmp.execute("migrate", {"uri": uri, "resume": True})
    si = wait_until(lambda: (lambda i: i if i.get("status") == "postcopy-paused" and
                             "tls-authz" in i.get("error-desc", "") else None)(
                                 src.query_migrate()), 20, "the resume refused")
    log("refused resume: source: %s" % si.get("error-desc"))
    di = wait_until(lambda: (lambda i: i if i.get("status") == "postcopy-paused" and
                             "tls-authz" in i.get("error-desc", "") else None)(
                                 dst.query_migrate()), 20, "the destination refusing it")
    log("refused resume: destination: %s" % di.get("error-desc"))
    dst.qmp.execute("object-del", {"id": "auth0"})
    dst.qmp.execute("object-add", {"qom-type": "authz-list", "id": "auth0", "policy": "deny",
                                   "rules": [{"match": CLIENT_DN, "policy": "allow"}]})
    dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    src.qmp.execute("migrate", {"uri": dst_uri(dst), "resume": True})
    for g in (src, dst):
        wait_status(g, ("postcopy-active", "completed"), 20,
                    fail_on=("failed", "cancelled", "postcopy-paused"))
    set_params(src, {"max-postcopy-bandwidth": 0})
    wait_status(src, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst, "completed", 30, fail_on=("failed", "cancelled", "postcopy-paused"))
    stop_and_verify(dst)


def dst_uri(dst):
    sa = dst.query_migrate().get("socket-address") or []
    check(sa and sa[0].get("type") == "inet", "destination socket-address %r", sa)
    return "tcp:%s:%s" % (sa[0].get("host", "127.0.0.1"), sa[0].get("port"))


@R.test("strangers that never finish a TLS handshake do not hold the real source out")
def strangers(t):
    pki = make_pki()
    dst = dest(t, [x509_server_object(pki)], {"tls-creds": "tls0"}, {"events": True})
    host, port = dst_uri(dst)[4:].rsplit(":", 1)
    socks = []
    for first in (b"", b"\x16\x03\x01", b"\x16\x03\x01\x00\x10" + b"\x01" * 3):
        s = socket.create_connection((host, int(port)), timeout=5)
        if first:
            s.sendall(first)
        socks.append(s)
        t.closers.append(s.close)
    src = source(t, [x509_client(pki)], {"tls-creds": "tls0"}, fill="random", seed=4)
    migrate(src, dst)
    # Held out, the source would fail: "did not answer HELLO within 10 s".
    finish(src, dst)


@R.test("cancel during the TLS handshake (a destination that never answers its ClientHello)")
def cancel_in_handshake(t):
    pki = make_pki()
    src = source(t, [x509_client(pki)], {"tls-creds": "tls0", "tls-hostname": "localhost"})
    silent = t.silent()
    src.qmp.execute("migrate", {"uri": silent.uri})
    # The ClientHello went out (a TLS handshake record), then nothing.
    wait_until(lambda: len(silent.received) >= 5, 20, "the source's ClientHello")
    check_eq(silent.received[:1], b"\x16", "first byte: a TLS handshake record")
    check_eq(src.query_migrate().get("status"), "setup", "source status before cancel")
    src.qmp.execute("migrate_cancel")
    info = wait_status(src, "cancelled", 10, fail_on=("failed", "completed"))
    log("cancelled: %r" % info.get("error-desc"))
    check_eq(src.status(), "running", "source run state")


@R.test("psk (tls-creds-psk, username default 'qemu'), authz on the username")
def psk_ok(t):
    pki = make_pki()
    dst = dest(t, ["tls-creds-psk,id=tls0,endpoint=server,dir=%s" % pki["psk-srv"],
                   "authz-list,id=auth0,policy=deny,rules.0.match=qe*,rules.0.policy=allow,"
                   "rules.0.format=glob"],
               {"tls-creds": "tls0", "tls-authz": "auth0"}, {"events": True})
    src = source(t, [{"qom-type": "tls-creds-psk", "id": "tls0", "endpoint": "client",
                      "dir": pki["psk-cli"]}], {"tls-creds": "tls0"}, fill="random", seed=3)
    migrate(src, dst)
    finish(src, dst)


def refused(t, dst_objects, dst_params, src_objects, src_params, src_re, dst_re=None):
    """The migration fails at setup: the source names src_re and still
    runs; the destination (if dst_re) names dst_re."""
    dst = dest(t, dst_objects, dst_params, {"events": True})
    src = source(t, src_objects, src_params, fill="random", seed=9)
    migrate(src, dst)
    info = wait_status(src, "failed", 20, fail_on=("completed",))
    desc = info.get("error-desc", "")
    log("source: %s" % desc)
    check(__import__("re").search(src_re, desc), "source error %r does not match %r", desc,
          src_re)
    check_eq(src.status(), "running", "source run state")
    if dst_re:
        d = wait_status(dst, "failed", 15, fail_on=("completed",))
        log("destination: %s" % d.get("error-desc"))
        check(__import__("re").search(dst_re, d.get("error-desc", "")),
              "destination error %r does not match %r", d.get("error-desc"), dst_re)
    sv = stop_and_verify(src)
    check(sv.get("ok") is True, "source x-guest-verify: %r", sv)


ERRORS = [
    ("unknown CA", "srv-badca", {}, r"unknown CA", None),
    ("expired certificate", "srv-expired", {}, r"certificate expired", None),
    ("hostname mismatch", "srv", {"tls-hostname": "migration.example"},
     r"hostname mismatch \(the certificate is not for 'migration.example'\)", None),
]


def x509_error(t, which, src_params, src_re, dst_re):
    pki = make_pki()
    refused(t, [x509_server_object(pki, which)], {"tls-creds": "tls0"}, [x509_client(pki)],
            dict({"tls-creds": "tls0"}, **src_params), src_re, dst_re)


for name, which, params, src_re, dst_re in ERRORS:
    R.add("refused: %s" % name, x509_error, which, params, src_re, dst_re)


@R.test("refused: client not authorised by tls-authz")
def authz_denied(t):
    pki = make_pki()
    refused(t, [x509_server_object(pki), authz_object("CN=someone-else")],
            {"tls-creds": "tls0", "tls-authz": "auth0"}, [x509_client(pki)],
            {"tls-creds": "tls0"}, r"not authorised by its tls-authz",
            r"client 'CN=livemig-source,O=livemig test' is not authorised by tls-authz")


@R.test("refused: source without TLS, destination with it")
def src_plain(t):
    pki = make_pki()
    refused(t, [x509_server_object(pki)], {"tls-creds": "tls0"}, [], {},
            r"peer did not start TLS", r"peer did not start TLS")


@R.test("refused: source with TLS, destination without it")
def dst_plain(t):
    pki = make_pki()
    refused(t, [], {}, [x509_client(pki)], {"tls-creds": "tls0"},
            r"closed the connection during the handshake \(does it have tls-creds set\?\)",
            r"the source started TLS, but tls-creds is not set here")


@R.test("refused: wrong PSK")
def psk_wrong(t):
    pki = make_pki()
    refused(t, ["tls-creds-psk,id=tls0,endpoint=server,dir=%s" % pki["psk-srv"]],
            {"tls-creds": "tls0"},
            [{"qom-type": "tls-creds-psk", "id": "tls0", "endpoint": "client",
              "dir": pki["psk-bad"]}], {"tls-creds": "tls0"}, r"wrong PSK", r"wrong PSK")


@R.test("objects and parameters: errors name the cause; file: with TLS refused")
def objects_errors(t):
    pki = make_pki()
    g = t.guest("src", mem="16M")
    q = g.qmp
    for args, pat in (
            ({"qom-type": "tls-creds-x509", "id": "a", "endpoint": "client", "dir": "/nonexist"},
             r"cannot load CA certificate /nonexist/ca-cert.pem"),
            ({"qom-type": "tls-creds-x509", "id": "a", "endpoint": "sideways", "dir": pki["cli"]},
             r"'endpoint' does not accept value 'sideways'"),
            ({"qom-type": "tls-creds-x509", "id": "a", "dir": pki["cli"], "bogus": 1},
             r"Parameter 'bogus' is unexpected"),
            ({"qom-type": "memory-backend-ram", "id": "a"}, r"qom-type"),
            ({"qom-type": "authz-list", "id": "a", "rules": [{"policy": "allow"}]},
             r"rule 0 has no 'match'")):
        e = q.expect_error("object-add", args)
        check(__import__("re").search(pat, str(e)), "object-add %r: %r, want %r", args, e, pat)
    q.execute("object-add", x509_client(pki))
    e = q.expect_error("object-add", x509_client(pki))
    check("duplicate" in str(e), "duplicate id: %r", e)
    set_params(g, {"tls-creds": "nope"})
    e = q.expect_error("migrate", {"uri": "tcp:127.0.0.1:1"})
    check("no tls-creds-x509 or tls-creds-psk object" in str(e), "unknown creds: %r", e)
    q.execute("object-add", {"qom-type": "tls-creds-x509", "id": "srv", "endpoint": "server",
                             "dir": pki["srv"]})
    set_params(g, {"tls-creds": "srv"})
    e = q.expect_error("migrate", {"uri": "tcp:127.0.0.1:1"})
    check("needs endpoint=client" in str(e), "server creds on a source: %r", e)
    set_params(g, {"tls-creds": "tls0"})
    e = q.expect_error("migrate", {"uri": "unix:" + os.path.join(t.tmpdir, "none.sock")})
    check("tls-hostname is needed with a unix: or fd: URI" in str(e), "unix: no name: %r", e)
    e = q.expect_error("migrate", {"uri": "file:" + os.path.join(t.tmpdir, "x.img")})
    check("cannot be used with a file: URI" in str(e), "file: with TLS: %r", e)
    q.execute("object-del", {"id": "srv"})
    e = q.expect_error("object-del", {"id": "srv"})
    check("not found" in str(e), "object-del twice: %r", e)
    q.execute("migrate-set-parameters", {"tls-creds": None})
    check_eq(q.execute("query-migrate-parameters")["tls-creds"], "", "tls-creds after null")
    check_eq(g.status(), "running", "run state")


if __name__ == "__main__":
    try:
        R.main()
    finally:
        if _PKI:
            shutil.rmtree(_PKI["root"], ignore_errors=True)
