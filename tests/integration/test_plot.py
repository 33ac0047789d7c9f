"""Pictures and progress of the CLI: `livemig migrate --plot` on real
precopy and postcopy migrations (the SVG parses, has the size asked, every
series has points, one pass boundary per dirty sync, the switchover and the
downtime are marked), `status --watch --plot` to a PNG, a --plot path that
cannot be written (refused before anything migrates), and the terminal
display kept to one screen (a pty: the block is redrawn in place)."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
import xml.etree.ElementTree as ET

from lmtest import (LIVEMIG, Runner, TestFailure, _child_setup, _register, _unregister, check, check_eq,
                    log, migrate, run_cli, scaled, set_caps, set_params, stop_and_verify,
                    stop_pid, wait_status)

R = Runner("plot", per_test=60, budget=280)

SVG = "{http://www.w3.org/2000/svg}"
MEM = "64M"


def groups(root):
    """id -> <g> for the groups the CLI names (direct children of <svg>)."""
    return {g.get("id"): g for g in root.findall(SVG + "g") if g.get("id")}


def parse_svg(path, width, height):
    check(os.path.getsize(path) > 0, "%s is empty", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise TestFailure("%s does not parse as XML: %s" % (path, e))
    check_eq(root.tag, SVG + "svg", "root element")
    check_eq((root.get("width"), root.get("height")), (str(width), str(height)), "SVG size")
    return root


def check_series(gs, names):
    for name in names:
        g = gs.get(name)
        check(g is not None, "no <g id=%r> in the SVG (groups: %s)", name, sorted(gs))
        check_eq(g.get("class"), "series", "class of %s" % name)
        n = int(g.get("data-points", "0"))
        check(n > 0, "series %s has no points", name)
        # the points are drawn: a path (line) or filled paths (dots) inside
        check(len(list(g.iter(SVG + "path"))) > 0, "series %s draws nothing", name)
        log("%s: %d points" % (name, n))


def check_passes(root, passes):
    marks = [g for g in root.findall(SVG + "g") if g.get("class") == "pass"]
    check_eq(len(marks), passes, "pass boundaries drawn (dirty-sync-count %d)" % passes)
    ids = sorted(int(g.get("id").split("-")[1]) for g in marks)
    check_eq(ids, list(range(1, passes + 1)), "pass boundary ids")


@R.test("migrate --plot: precopy timeline, every series, one boundary per dirty sync")
def t_precopy(t):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="32M", fill="random", seed=7)
    dst = t.guest("dst", mem=MEM, workload="random", incoming="defer")
    out_svg = os.path.join(t.tmpdir, "pre.svg")
    rc, out, err = run_cli(["migrate", "--src", src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--param", "max-bandwidth=64M",
                            "--plot", out_svg, "--plot-size", "900x640", "--timeout", "40"],
                           timeout=50)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    check("plot written to %s" % out_svg in out, "no 'plot written' line: %r", out[-400:])
    info = src.query_migrate()
    passes = info["ram"]["dirty-sync-count"]
    root = parse_svg(out_svg, 900, 640)
    gs = groups(root)
    check_series(gs, ("remaining", "throughput", "dirty-rate"))
    check("faults" not in gs, "a precopy picture has a postcopy panel")
    check_passes(root, passes)
    for name in ("switchover", "downtime", "frame", "legend"):
        check(name in gs, "no <g id=%r> (groups: %s)", name, sorted(gs))
    title = root.find(SVG + "title").text
    check("completed" in title and "downtime %d ms" % info["downtime"] in title,
          "title %r does not give the status and downtime %r", title, info.get("downtime"))
    stop_and_verify(dst)


@R.test("migrate --plot: postcopy timeline with the destination's faults and latency")
def t_postcopy(t):
    # Pass 1 at 32 MB/s, then the rest at 8 MB/s after the switch: the
    # postcopy phase lasts seconds, many polls, while the destination's
    # workload faults on pages not yet there.
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="0", fill="random", seed=8)
    dst = t.guest("dst", mem=MEM, workload="random", dirty_rate="0", incoming="defer")
    out_svg = os.path.join(t.tmpdir, "post.svg")
    rc, out, err = run_cli(["migrate", "--src", src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--postcopy",
                            "--cap", "postcopy-blocktime=on", "--cap", "postcopy-preempt=on",
                            "--param", "max-bandwidth=32M",
                            "--param", "max-postcopy-bandwidth=8M",
                            "--plot", out_svg, "--timeout", "50"], timeout=60)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    # The request and the switch the source reported, each once, live
    # (the postcopy phase is seconds long at 8 MB/s), and the summary's word.
    check_eq(len(re.findall(r"^postcopy requested: 1 pass done$", out, re.M)), 1,
             "request lines in %r" % out[-800:])
    check_eq(len(re.findall(r"^switched to postcopy$", out, re.M)), 1,
             "live switch lines in %r" % out[-800:])
    check(re.search(r"^  switch\s+switched to postcopy", out, re.M),
          "the summary does not say it switched: %r", out[-800:])
    info = src.query_migrate()
    check(info["ram"]["postcopy-bytes"] > 0, "nothing went after the switch: %r", info)
    root = parse_svg(out_svg, 1000, 720)
    gs = groups(root)
    check_series(gs, ("remaining", "throughput", "faults", "latency-p50", "latency-p99"))
    check_passes(root, info["ram"]["dirty-sync-count"])
    check("switchover" in gs, "no switchover mark (groups: %s)", sorted(gs))
    stop_and_verify(dst)


@R.test("--plot to a path that cannot be written fails at once, naming it; nothing migrates; "
        "a watch of no migration draws nothing")
def t_unwritable(t):
    src = t.guest("src", mem="16M", workload="random")
    dst = t.guest("dst", mem="16M", incoming="defer")
    bad = os.path.join(t.tmpdir, "no-such-dir", "x.svg")
    rc, out, err = run_cli(["migrate", "--src", src.sock, "--dst", dst.sock,
                            "--uri", "tcp:127.0.0.1:0", "--plot", bad], timeout=20)
    check_eq(rc, 1, "exit code")
    check(bad in err and "No such file" in err, "error does not name %s: %r", bad, err)
    check_eq(src.query_migrate().get("status", "none"), "none", "source status")
    check_eq(dst.status(), "inmigrate", "destination run state")
    # a watch that sees no migration draws nothing and leaves no file
    empty = os.path.join(t.tmpdir, "empty.svg")
    rc, out, err = run_cli(["status", dst.sock, "--watch", "--plot", empty], timeout=20)
    check_eq(rc, 1, "exit code of a watch with nothing to draw")
    check(empty in err and "nothing drawn" in err, "error does not say so: %r", err)
    check(not os.path.exists(empty), "%s was left behind", empty)
    # bad sizes and a plot without --watch are usage errors
    for args in (["migrate", "--src", src.sock, "--dst", dst.sock, "--uri", "tcp:127.0.0.1:0",
                  "--plot", "x.svg", "--plot-size", "10x10"],
                 ["status", src.sock, "--plot", os.path.join(t.tmpdir, "s.svg")]):
        rc, out, err = run_cli(args, timeout=10)
        check_eq(rc, 2, "exit code of %s" % " ".join(args[3:]))
        check("--plot" in err, "error does not name the flag: %r", err)


@R.test("status --watch --plot FILE.png: a PNG of the size asked; plain lines with the percentage")
def t_status_png(t):
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="16M", fill="random", seed=9)
    dst = t.dest("dst", mem=MEM, workload="random", defer=True)
    set_caps(src, {"events": True})
    set_params(src, {"max-bandwidth": 40 << 20})
    png = os.path.join(t.tmpdir, "watch.png")
    migrate(src, dst)
    rc, out, err = run_cli(["status", src.sock, "--watch", "--plot", png,
                            "--plot-size", "640x480"], timeout=40)
    log("stdout: " + out.strip().replace("\n", "\n#   "))
    check_eq(rc, 0, "exit code (stderr %r)" % err[-500:])
    with open(png, "rb") as f:
        head = f.read(24)
    check(head[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG: %r", png, head[:8])
    check_eq(struct.unpack(">II", head[16:24]), (640, 480), "PNG size")
    # Off a terminal: one plain line a second, "pass N P%" with P in 0..100
    # and, within a pass, never going back.
    seen = {}
    for m in re.finditer(r"active pass (\d+) (\d+)%", out):
        n, p = int(m.group(1)), int(m.group(2))
        check(0 <= p <= 100, "percentage %d", p)
        check(p >= seen.get(n, 0), "pass %d went back from %d%% to %d%%", n, seen.get(n, 0), p)
        seen[n] = p
    check(seen, "no progress line with a percentage: %r", out[:600])
    wait_status(dst, "completed", 30)
    stop_and_verify(dst)


def run_in_pty(args, timeout, cols=100, rows=40):
    """Runs livemig on a pseudo-terminal of cols x rows; returns (rc, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    p = subprocess.Popen([LIVEMIG] + args, stdin=subprocess.DEVNULL, stdout=slave,
                         stderr=slave, preexec_fn=_child_setup)
    _register(p)
    os.close(slave)
    buf = b""
    deadline = time.monotonic() + scaled(timeout)
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not chunk:
                    break
                buf += chunk
            elif p.poll() is not None:
                break
        rc = p.wait(timeout=5) if p.poll() is None and time.monotonic() < deadline else p.poll()
        if rc is None:
            stop_pid(p, grace=2)
            raise TestFailure("`livemig %s` on a pty did not finish" % " ".join(args))
    finally:
        _unregister(p)
        os.close(master)
    return rc, buf.decode(errors="replace")


@R.test("on a terminal the display is a block redrawn in place, never scrolling")
def t_tty(t):
    # With a switch to postcopy: its notes ("postcopy requested: ...",
    # "switched to postcopy") take one line each above the block.
    src = t.guest("src", mem=MEM, workload="random", dirty_rate="16M", fill="random", seed=10)
    dst = t.guest("dst", mem=MEM, workload="random", incoming="defer")
    rc, out = run_in_pty(["migrate", "--src", src.sock, "--dst", dst.sock,
                          "--uri", "tcp:127.0.0.1:0", "--param", "max-bandwidth=32M",
                          "--param", "max-postcopy-bandwidth=16M", "--postcopy",
                          "--timeout", "40"], timeout=50)
    check_eq(rc, 0, "exit code (output %r)" % out[-500:])
    body = out.split("migration completed")[0]
    # Follow the cursor: a line feed moves it down, ESC[nA up.  The block
    # is 5 lines; it must be drawn over and over in the same 5.
    row, lowest, redraws = 0, 0, 0
    for m in re.finditer(r"\n|\x1b\[(\d+)A", body):
        if m.group(0) == "\n":
            row += 1
        else:
            row -= int(m.group(1))
            redraws += 1
        lowest = max(lowest, row)
    log("redraws %d, rows used %d" % (redraws, lowest))
    check(redraws >= 2, "the block was not redrawn (%d times): %r", redraws, body[-300:])
    check(body.count("postcopy requested: 1 pass done") == 1,
          "the request note is not there once: %r", body[-800:])
    # The live switch line needs a poll that sees postcopy-active; the
    # summary says it in any case.
    switched = body.count("switched to postcopy")
    check(switched <= 1, "the switch note is there %d times: %r", switched, body[-800:])
    check(re.search(r"^  switch\s+switched to postcopy", out.replace("\r", ""), re.M),
          "the summary does not say it switched: %r", out[-800:])
    notes = 1 + switched
    check(lowest <= 5 + notes, "the display took %d rows, not one block of 5 and %d notes",
          lowest, notes)
    check(re.search(r"pass \d+\s+\[[#.]+\]\s+\d+%", body), "no progress bar: %r", body[-600:])
    for line in body.replace("\r", "\n").split("\n"):
        check(len(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)) < 100,
              "a line wider than the terminal: %r", line)
    stop_and_verify(dst)


if __name__ == "__main__":
    R.main()
