"""TLS throughput (issue 12 targets): a --mem (default 2 GiB) random-filled
idle guest migrated over loopback TCP, unthrottled, three ways in the same
run: plaintext on one channel, TLS 1.3 (x509, AES-128-GCM) on one channel,
TLS with multifd (--channels, default 2).  Targets: TLS one channel >= 50 %
of plaintext; TLS multifd >= 1.5x TLS one channel.  The machine's AES-GCM
speed (`openssl speed -evp aes-128-gcm`) is printed beside it.  Every
destination is verified (x-guest-verify) before its figure counts.

Throughput = RAM bytes transferred / (total-time - setup-time), as MB/s.

Usage:
  python3 bench/tls_bench.py --livemig ./build/livemig [--mem 2G] [--channels 2] [--reps 1]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import lmtest  # noqa: E402
from lmtest import Guest, set_caps, set_params  # noqa: E402


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def aes_speed():
    r = subprocess.run(["openssl", "speed", "-seconds", "1", "-evp", "aes-128-gcm"],
                       capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stdout.splitlines() if ln.lower().startswith(("type", "aes-128-gcm"))]
    return "\n".join(lines)


def once(tmp, name, a, pki, tls, channels):
    dextra, sargs = [], []
    if tls:
        dextra = ["--object", "tls-creds-x509,id=tls0,endpoint=server,dir=%s" % pki["srv"]]
    src = Guest(tmp, "src-" + name, mem=a.mem, fill="random", workload="idle", seed=1)
    dst = Guest(tmp, "dst-" + name, mem=a.mem, incoming="defer", workload="idle", extra=dextra)
    try:
        caps = {"multifd": channels > 1}
        set_caps(src, caps)
        set_caps(dst, caps)
        params = {"max-bandwidth": 0, "downtime-limit": 30000}
        if channels > 1:
            params["multifd-channels"] = channels
        if tls:
            src.qmp.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                                           "endpoint": "client", "dir": pki["cli"]})
            set_params(dst, {"tls-creds": "tls0"})
            params["tls-creds"] = "tls0"
        set_params(src, params)
        if channels > 1:
            set_params(dst, {"multifd-channels": channels})
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        dst.incoming = "tcp:127.0.0.1:0"
        src.qmp.execute("migrate", {"uri": lmtest.dest_uri(dst)})
        info = lmtest.wait_status(src, "completed", 600)
        lmtest.wait_status(dst, "completed", 30)
        dv = lmtest.stop_and_verify(dst)
        ms = info["total-time"] - info.get("setup-time", 0)
        mbs = info["ram"]["transferred"] / 1e6 / (ms / 1000.0)
        log("%s: %.0f MB/s (%d ms, %d bytes; verified %d written pages)" %
            (name, mbs, ms, info["ram"]["transferred"], dv.get("written-pages", 0)))
        return mbs
    finally:
        src.stop()
        dst.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--livemig", default="./build/livemig")
    ap.add_argument("--mem", default="2G")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    lmtest.LIVEMIG = os.path.abspath(a.livemig)
    import test_tls  # certificates made with certtool, as the test does
    pki = test_tls.make_pki()
    tmp = tempfile.mkdtemp(prefix="lmb-tls-", dir="/tmp")
    res = {"plain": [], "tls": [], "tls-mfd": []}
    try:
        for rep in range(a.reps):
            res["plain"].append(once(tmp, "plain%d" % rep, a, pki, False, 1))
            res["tls"].append(once(tmp, "tls%d" % rep, a, pki, True, 1))
            res["tls-mfd"].append(once(tmp, "tls-mfd%d" % rep, a, pki, True, a.channels))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pki["root"], ignore_errors=True)
    best = {k: max(v) for k, v in res.items()}
    r1 = best["tls"] / best["plain"]
    r2 = best["tls-mfd"] / best["tls"]
    print("guest %s random idle, loopback tcp, best of %d" % (a.mem, a.reps))
    print("plaintext, one channel:      %6.0f MB/s" % best["plain"])
    print("TLS 1.3, one channel:        %6.0f MB/s  (%.0f %% of plaintext, target >= 50 %%: %s)" %
          (best["tls"], 100 * r1, "PASS" if r1 >= 0.5 else "FAIL"))
    print("TLS 1.3, multifd %d:          %6.0f MB/s  (%.2fx one-channel TLS, target >= 1.5x: %s)" %
          (a.channels, best["tls-mfd"], r2, "PASS" if r2 >= 1.5 else "FAIL"))
    print("machine AES-GCM (openssl speed -evp aes-128-gcm):")
    print(aes_speed())


if __name__ == "__main__":
    main()
