"""fake_qemu - a stand-in for a QEMU 7.2 process as `livemig migrate` sees
it over QMP (stdlib only; run as its own process by test_qemu_compat.py).

It reproduces, exactly as they matter to the CLI, three behaviours of QEMU
7.2 (migration/migration.c, monitor/, chardev/char-socket.c):

  late figures   migration_completion() sets COMPLETED (and emits the
                 MIGRATION event) before migration_calculate_complete()
                 fills total_time and downtime; a query-migrate in between
                 reports both as 0.  --late-figures N keeps them 0 for the
                 N query-migrates that follow `completed` ("never": always);
  postcopy flag  migrate-start-postcopy only sets s->start_postcopy (no
                 error once the migration ran, even after it completed:
                 "that would be racy"); migration_iteration_run() reads it
                 only while pending >= threshold, so a migration whose
                 pending drops under the threshold completes in precopy
                 with the flag set.  The guest here is idle (paused, as with
                 -S): the first pass is the whole RAM, the second finds
                 nothing dirty and completes;
  one client     the QMP chardev accepts one client at a time: a second
                 connection sits in the listen backlog with no greeting
                 until the first one closes.

The migration is simulated one step per query-migrate of the source (a
poll is what the CLI would see between two of QEMU's iterations), so a
test is decided by the order of the CLI's requests, never by timing.  A
step is 100 ms of simulated time at min(max-bandwidth, 1 GiB/s).  The
source really connects to the destination's migration listener and tells
it each status change, so the destination's own status is true too.

  fake_qemu.py --qmp PATH [--incoming defer] [--mem BYTES]
               [--late-figures N|never] [--lifetime SECONDS]
               [--status-file PATH]   (each status written there, for a test
                                       that cannot ask: the monitor is busy)

x-fake-stats (a command of this fake only) returns what the source saw:
the status when each migrate-start-postcopy arrived, the query-migrate
count after `completed`, the statuses it went through.
"""

import argparse
import json
import os
import select
import socket
import sys
import time

VERSION = {"qemu": {"micro": 22, "minor": 2, "major": 7},
           "package": "Debian 1:7.2+dfsg-7+deb12u18"}
CAPS = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
        "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
        "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
        "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
        "zero-copy-send", "postcopy-preempt"]
DEFAULT_PARAMS = {"max-bandwidth": 134217728, "downtime-limit": 300,
                  "max-postcopy-bandwidth": 0, "multifd-channels": 2,
                  "multifd-compression": "none", "announce-initial": 50}
STEP_MS = 100
PAGE = 4096


class Fake:
    def __init__(self, args):
        self.a = args
        self.incoming = args.incoming == "defer"
        self.caps = {c: False for c in CAPS}
        self.params = dict(DEFAULT_PARAMS)
        self.status = "none"
        self.client = None
        self.buf = b""
        self.mig_listener = None   # destination: migration listener
        self.mig_conn = None       # either side: the migration connection
        self.mig_buf = b""
        self.socket_address = None
        self.error_desc = None
        self.total = args.mem
        self.remaining = 0
        self.transferred = 0
        self.postcopy_bytes = 0
        self.sync = 0
        self.sim_ms = 0
        self.start_postcopy = False
        self.figures = False       # total-time/downtime filled in
        self.after_completed = 0   # query-migrates since `completed`
        self.stats = {"postcopy-requests-at": [], "statuses": [],
                      "queries-after-completed": 0}

    # -------------------------------------------------------------- QMP
    def send(self, obj):
        if self.client:
            try:
                self.client.sendall(json.dumps(obj).encode() + b"\r\n")
            except OSError:
                self.drop_client()

    def event(self, name, data):
        now = time.time()
        self.send({"event": name, "data": data,
                   "timestamp": {"seconds": int(now), "microseconds": int(now * 1e6) % 1000000}})

    def set_status(self, st):
        self.status = st
        self.stats["statuses"].append(st)
        if self.a.status_file:
            with open(self.a.status_file + ".tmp", "w") as f:
                f.write(st)
            os.rename(self.a.status_file + ".tmp", self.a.status_file)
        if self.caps["events"]:
            self.event("MIGRATION", {"status": st})

    def drop_client(self):
        try:
            self.client.close()
        except OSError:
            pass
        self.client = None
        self.buf = b""

    def error(self, cls, desc, rid):
        r = {"error": {"class": cls, "desc": desc}}
        if rid is not None:
            r["id"] = rid
        self.send(r)

    def handle(self, msg):
        rid = msg.get("id")
        cmd = msg.get("execute")
        args = msg.get("arguments") or {}
        fn = getattr(self, "cmd_" + str(cmd).replace("-", "_"), None)
        if fn is None:
            return self.error("CommandNotFound", "The command %s has not been found" % cmd, rid)
        try:
            ret = fn(args)
        except QMPErr as e:
            return self.error("GenericError", str(e), rid)
        r = {"return": {} if ret is None else ret}
        if rid is not None:
            r["id"] = rid
        self.send(r)

    # ---------------------------------------------------------- commands
    def cmd_qmp_capabilities(self, a):
        return None

    def cmd_query_version(self, a):
        return VERSION

    def cmd_query_status(self, a):
        if self.incoming and self.status != "completed":
            st = "inmigrate"
        elif self.status in ("completed",) and not self.incoming:
            st = "postmigrate"
        else:
            st = "prelaunch" if not self.incoming else "paused"
        return {"status": st, "singlestep": False, "running": False}

    def cmd_query_migrate_capabilities(self, a):
        return [{"capability": c, "state": s} for c, s in self.caps.items()]

    def cmd_query_migrate_parameters(self, a):
        return dict(self.params)

    def cmd_migrate_set_capabilities(self, a):
        if self.status in ("setup", "active", "postcopy-active"):
            raise QMPErr("There's a migration process in progress")
        for c in a.get("capabilities", []):
            if c["capability"] not in self.caps:
                raise QMPErr("Parameter 'capability' does not accept value '%s'" %
                             c["capability"])
            self.caps[c["capability"]] = bool(c["state"])

    def cmd_migrate_set_parameters(self, a):
        for k, v in a.items():
            if k not in self.params:
                raise QMPErr("Parameter '%s' is unexpected" % k)
            self.params[k] = v

    def cmd_migrate_incoming(self, a):
        if not self.incoming:
            raise QMPErr("'-incoming' was not specified on the command line")
        if self.mig_listener:
            raise QMPErr("The incoming migration has already been started")
        uri = a.get("uri", "")
        if not uri.startswith("tcp:127.0.0.1:"):
            raise QMPErr("fake_qemu: only tcp:127.0.0.1:PORT is served")
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", int(uri.rsplit(":", 1)[1])))
        ls.listen(1)
        self.mig_listener = ls
        port = ls.getsockname()[1]
        # QEMU 7.2 reports no status while it listens, only the address.
        self.socket_address = [{"type": "inet", "host": "127.0.0.1", "port": str(port)}]

    def cmd_migrate(self, a):
        if self.incoming:
            raise QMPErr("Guest is waiting for an incoming migration")
        if self.status in ("setup", "active", "postcopy-active"):
            raise QMPErr("There's a migration process in progress")
        uri = a.get("uri", "")
        host, port = uri[4:].rsplit(":", 1) if uri.startswith("tcp:") else ("", "0")
        self.remaining, self.transferred, self.postcopy_bytes = self.total, 0, 0
        self.sync, self.sim_ms, self.figures = 0, 0, False
        self.start_postcopy = False
        self.set_status("setup")
        try:
            self.mig_conn = socket.create_connection((host, int(port)), timeout=5)
        except (OSError, ValueError) as e:
            self.error_desc = "Failed to connect to '%s': %s" % (uri, e)
            self.set_status("failed")

    def cmd_migrate_start_postcopy(self, a):
        if not self.caps["postcopy-ram"]:
            raise QMPErr("Enable postcopy with migrate_set_capability before the start "
                         "of migration")
        if self.status == "none":
            raise QMPErr("Postcopy must be started after migration has been started")
        # "we don't error if migration has finished since that would be
        # racy with issuing this command."
        self.stats["postcopy-requests-at"].append(self.status)
        self.start_postcopy = True

    def cmd_migrate_cancel(self, a):
        if self.status in ("setup", "active", "postcopy-active"):
            self.set_status("cancelling")
            self.set_status("cancelled")
            self.tell("cancelled")

    def cmd_x_fake_stats(self, a):
        return self.stats

    def cmd_quit(self, a):
        self.send({"return": {}})
        sys.exit(0)

    # ------------------------------------------------- the source's steps
    def tell(self, st):
        if self.mig_conn:
            try:
                self.mig_conn.sendall(st.encode() + b"\n")
            except OSError:
                pass

    def rate(self):
        bw = self.params["max-bandwidth"]
        return min(bw, 1 << 30) if bw > 0 else 1 << 30

    def step(self):
        """One iteration of QEMU's migration thread, in QEMU's order:
        pending under the threshold completes (after the exact dirty
        sync) before start_postcopy is even looked at.  QEMU syncs and
        completes in one iteration; here the sync is reported first, so
        the CLI sees pass 2 and may ask for postcopy before the
        completion: the best chance a request after pass 1 can get."""
        if self.status == "setup":
            self.sync = 1  # the bitmap sync at the start of the first pass
            self.set_status("active")
            self.tell("active")
            return
        if self.status not in ("active", "postcopy-active"):
            return
        self.sim_ms += STEP_MS
        if self.status == "postcopy-active":
            bw = self.params["max-postcopy-bandwidth"]
            chunk = min(self.remaining, (min(bw, 1 << 30) if bw else 1 << 30) * STEP_MS // 1000)
            self.remaining -= chunk
            self.transferred += chunk
            self.postcopy_bytes += chunk
            if not self.remaining:
                self.complete()
            return
        threshold = self.rate() * self.params["downtime-limit"] // 1000
        if self.remaining < threshold:
            if self.sync >= 2:
                return self.complete()  # the rest goes in the pause
            self.sync += 1  # the exact sync: an idle guest dirtied nothing
            return
        if self.start_postcopy:
            self.set_status("postcopy-active")
            self.tell("postcopy-active")
            return
        chunk = min(self.remaining, self.rate() * STEP_MS // 1000)
        self.remaining -= chunk
        self.transferred += chunk

    def complete(self):
        self.transferred += self.remaining
        self.remaining = 0
        self.downtime = 3
        self.set_status("completed")
        self.tell("completed")
        self.after_completed = 0
        self.figures = self.a.late_figures == 0

    def query_migrate(self):
        if not self.incoming:
            if self.status == "completed":
                self.after_completed += 1
                self.stats["queries-after-completed"] = self.after_completed
                late = self.a.late_figures
                if late >= 0 and self.after_completed > late:
                    self.figures = True
            self.step()
        r = {}
        if self.status != "none":
            r["status"] = self.status
        if self.socket_address and self.status in ("none", "setup", "active"):
            r["socket-address"] = self.socket_address
        if self.incoming or self.status == "none":
            return r
        r["setup-time"] = 1
        if self.status == "completed":
            r["total-time"] = self.sim_ms + 1 if self.figures else 0
            r["downtime"] = self.downtime if self.figures else 0
        else:
            r["total-time"] = self.sim_ms
            r["expected-downtime"] = 300
        ms = max(self.sim_ms, 1)
        r["ram"] = {"transferred": self.transferred, "remaining": self.remaining,
                    "total": self.total, "duplicate": 0,
                    "normal": self.transferred // PAGE, "normal-bytes": self.transferred,
                    "dirty-pages-rate": 0, "mbps": self.transferred * 8 / ms / 1000.0,
                    "dirty-sync-count": self.sync, "postcopy-requests": 0,
                    "page-size": PAGE, "multifd-bytes": 0, "pages-per-second": 0,
                    "precopy-bytes": self.transferred - self.postcopy_bytes,
                    "downtime-bytes": 0, "postcopy-bytes": self.postcopy_bytes,
                    "dirty-sync-missed-zero-copy": 0, "skipped": 0}
        if self.error_desc:
            r["error-desc"] = self.error_desc
        return r

    def cmd_query_migrate(self, a):
        return self.query_migrate()

    # ------------------------------------------------- the destination
    def on_mig_line(self, line):
        # The destination's statuses follow the source's (QEMU's do too,
        # with the events capability emitting them here as well).
        if line in ("active", "postcopy-active", "completed", "failed", "cancelled"):
            if line == "cancelled":
                line = "failed"
            self.set_status(line)

    # ------------------------------------------------------------- loop
    def run(self):
        path = self.a.qmp[5:] if self.a.qmp.startswith("unix:") else self.a.qmp
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)  # as QEMU's socket chardev does
        ls.bind(path)
        ls.listen(4)  # later clients wait here, with no greeting
        deadline = time.monotonic() + self.a.lifetime
        while time.monotonic() < deadline:
            rd = [self.client if self.client else ls]
            if self.mig_listener:
                rd.append(self.mig_listener)
            if self.mig_conn and self.incoming:
                rd.append(self.mig_conn)
            r, _, _ = select.select(rd, [], [], 0.2)
            for s in r:
                if s is ls:
                    self.client, _ = ls.accept()
                    self.send({"QMP": {"version": VERSION, "capabilities": ["oob"]}})
                elif s is self.mig_listener:
                    self.mig_conn, _ = s.accept()
                    s.close()
                    self.mig_listener = None
                    self.set_status("setup")
                elif s is self.mig_conn:
                    d = s.recv(4096)
                    if not d:
                        self.mig_conn.close()
                        self.mig_conn = None
                        continue
                    self.mig_buf += d
                    while b"\n" in self.mig_buf:
                        line, self.mig_buf = self.mig_buf.split(b"\n", 1)
                        self.on_mig_line(line.decode())
                elif s is self.client:
                    try:
                        d = s.recv(65536)
                    except OSError:
                        d = b""
                    if not d:
                        self.drop_client()
                        continue
                    self.buf += d
                    self.parse()
        sys.exit(0)

    def parse(self):
        dec = json.JSONDecoder()
        while True:
            text = self.buf.decode(errors="replace").lstrip()
            if not text:
                self.buf = b""
                return
            try:
                obj, end = dec.raw_decode(text)
            except ValueError:
                return  # incomplete
            self.buf = text[end:].encode()
            if isinstance(obj, dict):
                self.handle(obj)
            if not self.client:
                return


class QMPErr(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--incoming")
    ap.add_argument("--mem", type=int, default=64 << 20)
    ap.add_argument("--late-figures", default="0")
    ap.add_argument("--lifetime", type=float, default=120.0)
    ap.add_argument("--status-file")
    a = ap.parse_args()
    a.late_figures = -1 if a.late_figures == "never" else int(a.late_figures)
    Fake(a).run()


if __name__ == "__main__":
    main()
