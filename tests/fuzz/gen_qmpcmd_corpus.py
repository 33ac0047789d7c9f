#!/usr/bin/env python3
"""gen_qmpcmd_corpus.py - writes the seed corpus of fuzz_qmpcmd: for every
built-in command (query-qmp-schema lists them; commands.c's table) a
session with valid arguments and one with invalid ones, the two host
commands the target registers, malformed requests, and a few longer
sessions.  Usage: gen_qmpcmd_corpus.py DIR   (files seed-NNN)."""

import json
import os
import sys

CAPS = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram",
        "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd",
        "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
        "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
        "switchover-ack", "dirty-limit", "mapped-ram"]
PARAMS = {"max-bandwidth": 134217728, "avail-switchover-bandwidth": 0, "downtime-limit": 300,
          "max-postcopy-bandwidth": 0, "multifd-channels": 2, "multifd-compression": "zstd",
          "multifd-zlib-level": 1, "multifd-zstd-level": 1, "zero-page-detection": "multifd",
          "xbzrle-cache-size": 67108864, "throttle-trigger-threshold": 50,
          "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
          "cpu-throttle-tailslow": False, "max-cpu-throttle": 99, "announce-initial": 50,
          "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
          "x-postcopy-timeout-ms": 10000, "vcpu-dirty-limit": 1,
          "x-vcpu-dirty-limit-period": 1000, "x-precopy-timeout-ms": 10000,
          "direct-io": False, "tls-creds": "", "tls-hostname": "", "tls-authz": "",
          "mode": "normal", "block-incremental": False}
NOARGS = ["query-commands", "query-qmp-schema", "query-version", "query-name", "query-uuid",
          "query-status", "stop", "cont", "migrate_cancel", "migrate-start-postcopy",
          "migrate-pause", "query-migrate-capabilities", "query-migrate-parameters",
          "query-migrate", "query-fdsets"]
URIS = ["tcp:127.0.0.1:4444", "tcp:[::1]:0", "unix:/tmp/lm-fuzz.sock", "exec:cat",
        "file:/tmp/lm-fuzz.img,offset=0x1000", "fd:3", "fd:named", "bogus:x", "tcp:", ""]

# (prefix, [(command, arguments or None)]) per file.
S = []
for c in NOARGS:
    S.append(("", [(c, None)]))
    S.append(("", [(c, {"bogus": [1, 2]})]))
S += [("R", [("qmp_capabilities", None), ("query-status", None)]),
      ("R", [("qmp_capabilities", {"enable": ["oob"]})]),
      ("R", [("qmp_capabilities", {"enable": [1, "x"]}), ("qmp_capabilities", {"x": 1})]),
      ("R", [("query-status", None), ("qmp_capabilities", {}), ("qmp_capabilities", {})])]
for u in URIS:
    S.append(("", [("migrate", {"uri": u})]))
    S.append(("i", [("migrate-incoming", {"uri": u})]))
    S.append(("i", [("migrate-recover", {"uri": u})]))
S += [("", [("migrate", {"uri": "tcp:127.0.0.1:1", "resume": True, "detach": True})]),
      ("", [("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True, "inc": False})]),
      ("", [("migrate", {"channels": [{"channel-type": "main"}]})]),
      ("", [("migrate", {"uri": "x", "channels": []})]),
      ("", [("migrate", {})]), ("", [("migrate", {"uri": 5})]),
      ("i", [("migrate-incoming", {"uri": "tcp:0:0", "exit-on-error": False})]),
      ("i", [("migrate-incoming", {"channels": []})]), ("r", [("migrate-incoming", {"uri": "tcp:0:0"})]),
      ("", [("migrate-continue", {"state": "pre-switchover"})]),
      ("", [("migrate-continue", {"state": "no-such-state"})]),
      ("", [("migrate-continue", {"state": 1})]), ("", [("migrate-continue", None)]),
      ("", [("migrate-recover", None)]),
      ("", [("migrate-set-capabilities",
             {"capabilities": [{"capability": c, "state": True} for c in CAPS]})]),
      ("", [("migrate-set-capabilities",
             {"capabilities": [{"capability": "multifd", "state": True},
                               {"capability": "postcopy-ram", "state": True},
                               {"capability": "postcopy-preempt", "state": True}]}),
            ("query-migrate-capabilities", None)]),
      ("", [("migrate-set-capabilities", {"capabilities": [{"capability": "x", "state": 1}]})]),
      ("", [("migrate-set-capabilities", {"capabilities": [1, {"state": True}]})]),
      ("", [("migrate-set-capabilities", {"capabilities": {}})]),
      ("", [("migrate-set-parameters", PARAMS), ("query-migrate-parameters", None)]),
      ("", [("migrate-set-parameters", {"max-bandwidth": 18446744073709551615})]),
      ("", [("migrate-set-parameters", {"downtime-limit": 2000001, "multifd-channels": 0})]),
      ("", [("migrate-set-parameters", {"multifd-compression": "lz4", "tls-creds": 5})]),
      ("", [("migrate-set-parameters", {"no-such-parameter": 1})]),
      ("", [("migrate_set_speed", {"value": 1000000}), ("migrate_set_speed", {"value": -1})]),
      ("", [("migrate_set_speed", {"value": "x"})]),
      ("", [("migrate_set_downtime", {"value": 0.5}), ("migrate_set_downtime", {"value": 3000})]),
      ("", [("migrate_set_downtime", {"value": True})]),
      ("", [("getfd", {"fdname": "a"}), ("closefd", {"fdname": "a"})]),
      ("", [("getfd", {"fdname": "3"}), ("getfd", None)]),
      ("", [("add-fd", {"fdset-id": 1, "opaque": "x"}), ("add-fd", None),
            ("remove-fd", {"fdset-id": 1}), ("remove-fd", {"fdset-id": 1, "fd": 3}),
            ("query-fdsets", None)]),
      ("", [("x-fuzz-echo", {"name": "a", "count": 1, "on": True, "ratio": 1.5, "list": [1],
                             "obj": {"k": "v"}, "any": None})]),
      ("", [("x-fuzz-echo", {"name": 1}), ("x-fuzz-echo", {}),
            ("x-fuzz-echo", {"name": "a", "extra": 1})]),
      ("", [("x-fuzz-raw", {"anything": [1, {"b": None}]}), ("x-fuzz-raw", None)]),
      ("", [("no-such-command", None), ("quit", {"bogus": [1, 2]})]),
      ("p", [("cont", None), ("query-status", None), ("stop", None), ("query-status", None)]),
      ("i", [("stop", None), ("cont", None), ("migrate_cancel", None), ("migrate-pause", None),
             ("migrate-start-postcopy", None), ("query-migrate", None)])]

RAW = [b'{"execute": 1}\n', b'[]\n', b'{"arguments": {}}\n', b'{"execute": "stop", "x": 1}\n',
       b'{"execute": "query-status", "id": {"a": [1, "b"]}}\n',
       b'{"execute": "query-status", "arguments": [1]}\n', b'{"execute": "cont"', b'}}}\n',
       b'{"exec-oob": "migrate-pause"}\n', b'{"execute": "query-name", "id": 18446744073709551615}\n',
       b'\xff\xfe{"execute": "stop"}\n']


def line(cmd, args, n):
    r = {"execute": cmd, "id": n}
    if args is not None:
        r["arguments"] = args
    return json.dumps(r).encode() + b"\n"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = [p.encode() + b"".join(line(c, a, i) for i, (c, a) in enumerate(reqs))
             for p, reqs in S] + RAW
    for i, data in enumerate(files):
        with open(os.path.join(out, "seed-%03d" % i), "wb") as f:
            f.write(data)
    print("%d files in %s" % (len(files), out))


if __name__ == "__main__":
    main()
