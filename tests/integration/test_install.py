"""The installed library, as an embedder meets it.

Installs the build that $LIVEMIG belongs to twice, inside that build
directory (test-install/):

  stage/    `make install PREFIX=/usr/local DESTDIR=stage` (the top Makefile,
            as a package build does): livemig.pc says /usr/local, files
            land under stage/; used with PKG_CONFIG_SYSROOT_DIR;
  prefix/   `cmake --install BUILD --prefix prefix` (an embedder's own
            prefix): livemig.pc, written at install time, names it.

Then checks the layout, the soname links and that the shared library
exports exactly the LM_API functions of the installed header, each in the
version node cmake/livemig.map puts it in (LIVEMIG_0.1, LIVEMIG_0.2, ...), and builds a copy of
examples/embed outside the source tree (so no relative path can reach the
source's include/) twice: with its Makefile against stage/ and with its
CMakeLists.txt against prefix/, both through pkg-config only.  The two
programs then migrate one to the other over loopback TCP, each running on
the liblivemig.so of its own tree (checked in /proc/PID/maps).

A sanitizer build of livemig installs sanitized libraries: the example is
then built with the same compiler and -fsanitize flags (from CMakeCache.txt).
"""

import atexit
import os
import re
import shutil
import subprocess

from lmtest import (LIVEMIG, Runner, TestFailure, check, check_eq, log, scaled, spawn, stop_pid,
                    wait_until)

R = Runner("install", per_test=120, budget=400)

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.dirname(LIVEMIG)
WORK = os.path.join(BUILD, "test-install")
STAGE = os.path.join(WORK, "stage")
PREFIX = os.path.join(WORK, "prefix")
STAGE_PREFIX = "/usr/local"
STAGED = STAGE + STAGE_PREFIX  # where the DESTDIR install's files are
SONAME = "liblivemig.so.0"


def map_nodes():
    """cmake/livemig.map as {function: version node}, and the nodes in order."""
    with open(os.path.join(SRC, "cmake/livemig.map")) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    where, nodes = {}, []
    for m in re.finditer(r"(LIVEMIG_[\d.]+)\s*\{(.*?)\}", text, re.S):
        nodes.append(m.group(1))
        body = m.group(2).split("local:")[0]
        for fn in re.findall(r"^\s+(lm_\w+);", body, re.M):
            where[fn] = m.group(1)
    return where, nodes
BUILD_S = 120  # bound on one install or build command


def cache_var(name):
    """A variable of BUILD's CMakeCache.txt ("" when absent)."""
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        for line in f:
            m = re.match(r"%s:\w+=(.*)$" % re.escape(name), line.strip())
            if m:
                return m.group(1)
    return ""


def run(argv, what, env=None, cwd=None):
    """Runs a build or install command to completion (bounded); its output
    is the failure message."""
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=scaled(BUILD_S))
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"")[-1500:].decode(errors="replace")
        raise TestFailure("%s: not done within %d s: %s" % (what, scaled(BUILD_S), out))
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        raise TestFailure("%s failed (exit %d): %s" % (what, p.returncode, out[-2500:]))
    return out


_installed = False


def install():
    """The two installs (once per run)."""
    global _installed
    if _installed:
        return
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    atexit.register(shutil.rmtree, WORK, True)
    if os.path.exists(os.path.join(BUILD, "build.ninja")):  # a build of the top Makefile
        run(["make", "-C", SRC, "install", "BUILD=" + BUILD, "PREFIX=" + STAGE_PREFIX,
             "DESTDIR=" + STAGE], "make install PREFIX=%s DESTDIR=%s" % (STAGE_PREFIX, STAGE))
    else:  # what that target runs
        run(["cmake", "--install", BUILD, "--prefix", STAGE_PREFIX], "cmake --install",
            env=dict(os.environ, DESTDIR=STAGE))
    run(["cmake", "--install", BUILD, "--prefix", PREFIX], "cmake --install --prefix")
    _installed = True


def files_under(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def api_functions(header):
    """Names of the functions a header marks LM_API; fails on a function
    declared at the start of a line without it."""
    with open(header) as f:
        text = f.read()
    bare = re.findall(r"^(?!LM_API\b|typedef\b|#|\s|/\*|\*)[^;(]*\b(lm_\w+)\s*\(", text, re.M)
    check(not bare, "%s declares functions without LM_API: %s", header, bare)
    return sorted(set(re.findall(r"^LM_API\b[^;(]*?\b(lm_\w+)\s*\(", text, re.M)))


@R.test("make install PREFIX DESTDIR / cmake --install --prefix: files, soname links, livemig.pc")
def layout(t):
    install()
    want = ["bin/livemig", "include/livemig.h", "lib/liblivemig.a", "lib/liblivemig.so",
            "lib/%s" % SONAME, "lib/pkgconfig/livemig.pc"]
    for root in (STAGED, PREFIX):
        got = files_under(root)
        version = [f for f in got if re.match(r"lib/liblivemig\.so\.0\.\d+\.\d+$", f)]
        check(len(version) == 1, "%s: no lib/liblivemig.so.0.MINOR.MICRO (%s)", root, got)
        check_eq(got, sorted(want + version), "files installed under %s" % root)
        lib = os.path.join(root, "lib")
        check_eq(os.readlink(os.path.join(lib, "liblivemig.so")), SONAME, "liblivemig.so link")
        check_eq(os.readlink(os.path.join(lib, SONAME)), os.path.basename(version[0]),
                 "%s link" % SONAME)
        dyn = run(["readelf", "-d", os.path.join(root, version[0])], "readelf -d")
        check("Library soname: [%s]" % SONAME in dyn, "soname is not %s: %s", SONAME, dyn)
        with open(os.path.join(root, "include/livemig.h")) as f, \
                open(os.path.join(SRC, "include/livemig.h")) as g:
            check(f.read() == g.read(), "installed livemig.h differs from include/livemig.h")
        rc = subprocess.run([os.path.join(root, "bin/livemig"), "--help"], timeout=30,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        check_eq(rc, 0, "installed livemig --help exit status")
    everything = files_under(STAGE)
    check(all(f.startswith(STAGE_PREFIX.lstrip("/") + "/") for f in everything),
          "DESTDIR install put files outside %s: %s", STAGE_PREFIX, everything)
    for root, prefix in ((STAGED, STAGE_PREFIX), (PREFIX, PREFIX)):
        with open(os.path.join(root, "lib/pkgconfig/livemig.pc")) as f:
            pc = f.read()
        check(re.search(r"^prefix=%s$" % re.escape(prefix), pc, re.M),
              "livemig.pc under %s does not say prefix=%s: %s", root, prefix, pc)
        check(re.search(r"^Requires\.private:.*\bjansson\b.*\blibzstd\b.*\bzlib\b.*\bliblz4\b",
                        pc, re.M), "livemig.pc lacks Requires.private: %s", pc)
        check(re.search(r"^Libs\.private:.*-lpthread", pc, re.M),
              "livemig.pc lacks Libs.private: %s", pc)


@R.test("liblivemig.so exports exactly the LM_API functions of livemig.h, in their version nodes")
def exports(t):
    install()
    api = api_functions(os.path.join(PREFIX, "include/livemig.h"))
    check(len(api) > 40, "found only %d LM_API functions in livemig.h: %s", len(api), api)
    where, map_order = map_nodes()
    check_eq(sorted(where), api, "functions in cmake/livemig.map vs LM_API in livemig.h")
    out = run(["nm", "-D", "--defined-only", "--format=posix",
               os.path.join(PREFIX, "lib", SONAME)], "nm -D")
    exported, misplaced, nodes, compat = [], [], [], []
    for line in out.splitlines():
        name, kind = line.split()[:2]
        if kind == "A":  # a version node's own symbol
            nodes.append(name)
            continue
        if "@@" not in name:  # an older version kept for old programs (abi_compat.c)
            compat.append(name)
            continue
        base, _, ver = name.partition("@@")
        exported.append(base)
        if ver != where.get(base):
            misplaced.append("%s (want %s)" % (name, where.get(base)))
    check_eq(sorted(nodes), sorted(map_order), "version nodes")
    check_eq(sorted(exported), api, "exported symbols vs LM_API functions")
    check(not misplaced, "exports not in their map's node: %s", misplaced)
    for name in compat:
        base, _, ver = name.partition("@")
        check(base in api and map_order.index(ver) < map_order.index(where[base]),
              "%s: not an older version of an LM_API function", name)
    log("%d exported functions, all LM_API, in nodes %s; older versions kept: %s" %
        (len(exported), ", ".join(map_order), ", ".join(sorted(compat))))


# A program built against an older header (0.1, 0.2): it allocated that
# release's sizes of lm_params and lm_info (up to the first field the next
# release added) and is bound to the @LIVEMIG_<old> versions, which must
# write no byte past that.  The .symver references give this program
# exactly what an old binary's would.
OLD_PROGRAM = r"""
#include <livemig.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
__asm__(".symver old_params_default, lm_params_default@LIVEMIG_@VER@");
__asm__(".symver old_get_params, lm_mig_get_params@LIVEMIG_@VER@");
__asm__(".symver old_query, lm_mig_query@LIVEMIG_@VER@");
void old_params_default(void *p);
void old_get_params(lm_mig *m, void *p);
void old_query(lm_mig *m, void *p);
static void nop(void *o) { (void)o; }
static int intact(const unsigned char *b, size_t from, size_t to, const char *what)
{
    for (size_t i = from; i < to; i++)
        if (b[i] != 0xA5) {
            printf("%s wrote byte %zu, past the @VER@ size %zu\n", what, i, from);
            return 0;
        }
    return 1;
}
int main(void)
{
    static unsigned char p[sizeof(lm_params) + 64], q[sizeof(lm_info) + 64];
    size_t psz = offsetof(lm_params, @PFIELD@), isz = offsetof(lm_info, @IFIELD@);
    lm_host_ops ops = {.stop = nop, .start = nop};
    lm_mig *m;
    lm_error err = {0};
    if (lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, &err) < 0) {
        printf("lm_mig_new: %s\n", err.msg);
        return 1;
    }
    memset(p, 0xA5, sizeof p);
    old_params_default(p);
    if (!intact(p, psz, sizeof p, "lm_params_default@LIVEMIG_@VER@") ||
        ((lm_params *)p)->downtime_limit != 300)
        return 1;
    memset(p, 0xA5, sizeof p);
    old_get_params(m, p);
    if (!intact(p, psz, sizeof p, "lm_mig_get_params@LIVEMIG_@VER@"))
        return 1;
    memset(q, 0xA5, sizeof q);
    old_query(m, q);
    if (!intact(q, isz, sizeof q, "lm_mig_query@LIVEMIG_@VER@") ||
        ((lm_info *)q)->status != LM_STATUS_NONE)
        return 1;
    lm_mig_free(m);
    puts("@VER@ layout kept");
    return 0;
}
"""

# Each older release: the first lm_params and lm_info fields the release
# after it added.
OLD_RELEASES = (("0.1", "vcpu_dirty_limit", "queued_bytes"),
                ("0.2", "tls_creds", "has_xbzrle"))


@R.test("programs bound to the LIVEMIG_0.1 and _0.2 versions get their struct sizes")
def old_program(t):
    install()
    cc, flags = toolchain()
    for ver, pfield, ifield in OLD_RELEASES:
        tag = "old" + ver.replace(".", "")
        src = os.path.join(WORK, tag + ".c")
        exe = os.path.join(WORK, tag)
        with open(src, "w") as f:
            f.write(OLD_PROGRAM.replace("@VER@", ver).replace("@PFIELD@", pfield)
                    .replace("@IFIELD@", ifield))
        run([cc, "-O2", "-Wall", "-Werror", "-I", os.path.join(PREFIX, "include"), src, "-o",
             exe, "-L", os.path.join(PREFIX, "lib"), "-llivemig"] + flags.split(),
            "building %s.c" % tag)
        p = subprocess.run([exe],
                           env=dict(os.environ, LD_LIBRARY_PATH=os.path.join(PREFIX, "lib")),
                           capture_output=True, timeout=scaled(30))
        out = (p.stdout + p.stderr).decode(errors="replace")
        check(p.returncode == 0 and ver + " layout kept" in out, "%s: exit %d: %s", tag,
              p.returncode, out)
        log("%s: %s" % (tag, out.strip()))


def toolchain():
    """(CC, extra compile+link flags) matching BUILD (its sanitizers)."""
    cc = cache_var("CMAKE_C_COMPILER") or "cc"
    san = cache_var("LM_SANITIZE")
    flags = "-fsanitize=%s -fno-omit-frame-pointer" % san if san and san != "OFF" else ""
    return cc, flags


def example_copy(dest):
    """examples/embed's sources in dest: outside the source tree."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for name in ("embed.c", "Makefile", "CMakeLists.txt"):
        shutil.copy(os.path.join(SRC, "examples/embed", name), dest)
    return dest


def included_header(depfile):
    """The livemig.h a compiler's dependency file names."""
    with open(depfile) as f:
        deps = f.read().replace("\\\n", " ").split()
    hs = [d for d in deps if d.endswith("livemig.h")]
    check(len(hs) == 1, "%s names %d livemig.h: %s", depfile, len(hs), hs)
    return os.path.realpath(hs[0])


_built = None


def build_examples():
    """Builds embed with make against STAGE and with CMake against PREFIX
    (once per run).  Returns [(binary, the lib dir it must run on)]."""
    global _built
    if _built:
        return _built
    install()
    cc, flags = toolchain()
    log("building examples/embed with %s %s" % (cc, flags))
    mk = example_copy(os.path.join(WORK, "embed-make"))
    env = dict(os.environ, PKG_CONFIG_SYSROOT_DIR=STAGE,
               PKG_CONFIG_PATH=os.path.join(STAGED, "lib/pkgconfig"))
    env.pop("PKG_CONFIG_LIBDIR", None)
    run(["make", "-C", mk, "CC=" + cc, "CPPFLAGS=-MMD", "CFLAGS=-O2 -g -Wall -Wextra -Werror " +
         flags, "LDFLAGS=" + flags], "make (examples/embed against %s)" % STAGE, env=env)
    check_eq(included_header(os.path.join(mk, "embed.d")),
             os.path.join(STAGED, "include/livemig.h"), "header the make build included")

    cm = example_copy(os.path.join(WORK, "embed-cmake"))
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(PREFIX, "lib/pkgconfig"))
    env.pop("PKG_CONFIG_LIBDIR", None)
    env.pop("PKG_CONFIG_SYSROOT_DIR", None)
    run(["cmake", "-S", cm, "-B", os.path.join(cm, "build"),
         "-DCMAKE_C_COMPILER=" + cc, "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror " + flags,
         "-DCMAKE_EXE_LINKER_FLAGS=" + flags], "cmake (examples/embed against %s)" % PREFIX,
        env=env)
    run(["cmake", "--build", os.path.join(cm, "build")], "cmake --build (examples/embed)",
        env=env)
    check_eq(included_header(os.path.join(cm, "build/CMakeFiles/embed.dir/embed.c.o.d")),
             os.path.join(PREFIX, "include/livemig.h"), "header the CMake build included")
    bins = [(os.path.join(mk, "embed"), os.path.join(STAGED, "lib")),
            (os.path.join(cm, "build/embed"), os.path.join(PREFIX, "lib"))]
    for exe, _ in bins:
        dyn = run(["readelf", "-d", exe], "readelf -d")
        check("Shared library: [%s]" % SONAME in dyn, "%s does not need %s: %s", exe, SONAME,
              dyn)
    _built = bins
    return bins


def start_embed(t, name, exe, libdir, args):
    logpath = os.path.join(t.tmpdir, name + ".log")
    env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    p = spawn([exe] + args, logpath, env=env)
    t.closers.append(lambda: stop_pid(p, grace=3))
    return p, logpath


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def mapped_livemig(pid):
    """The liblivemig file(s) process pid has mapped."""
    with open("/proc/%d/maps" % pid) as f:
        return sorted({os.path.realpath(l.split()[-1]) for l in f if "liblivemig" in l})


def finish(p, logpath, what):
    try:
        return p.wait(scaled(150))
    except subprocess.TimeoutExpired:
        raise TestFailure("%s did not exit within %d s: %s" %
                          (what, scaled(150), read(logpath)[-1500:]))


@R.test("examples/embed, built from the installed trees, migrates itself over loopback TCP",
        timeout=300)
def embed_migrates(t):
    (src_exe, src_lib), (dst_exe, dst_lib) = build_examples()
    dst, dlog = start_embed(t, "dst", dst_exe, dst_lib, ["--listen", "tcp:127.0.0.1:0"])
    m = wait_until(lambda: re.search(r"^listening on (tcp:\S+)$", read(dlog), re.M) or
                   dst.poll() is not None, 30, "the destination's 'listening on' line")
    check(dst.poll() is None, "destination exited before listening: %s", read(dlog))
    check_eq(mapped_livemig(dst.pid), [os.path.realpath(os.path.join(dst_lib, SONAME))],
             "liblivemig the destination runs on")
    src, slog = start_embed(t, "src", src_exe, src_lib, ["--migrate", m.group(1)])
    src_rc = finish(src, slog, "the source")
    dst_rc = finish(dst, dlog, "the destination")
    sout, dout = read(slog), read(dlog)
    log("source output: %s" % sout.strip().replace("\n", "\n#   "))
    log("destination output: %s" % dout.strip().replace("\n", "\n#   "))
    check_eq(src_rc, 0, "source exit status")
    check_eq(dst_rc, 0, "destination exit status")
    sm = re.search(r"^source: completed at write (\d+)", sout, re.M)
    check(sm, "no 'source: completed' line: %s", sout)
    dm = re.search(r"^destination: ok, arrived at write (\d+), (\d+) pages verified at write "
                   r"(\d+) and again at write (\d+)$", dout, re.M)
    check(dm, "no 'destination: ok' line: %s", dout)
    check_eq(dm.group(1), sm.group(1), "write counter at arrival vs the source's last")
    check_eq(int(dm.group(2)), 64 << 8, "pages verified (64 MiB)")
    check(int(dm.group(4)) > int(dm.group(3)), "the destination's workload did not continue")


@R.test("examples/embed with different memory sizes: both sides exit 1 naming the RAM block")
def embed_mismatch(t):
    (src_exe, src_lib), (dst_exe, dst_lib) = build_examples()
    dst, dlog = start_embed(t, "dst", dst_exe, dst_lib,
                            ["--listen", "tcp:127.0.0.1:0", "--mem", "32"])
    m = wait_until(lambda: re.search(r"^listening on (tcp:\S+)$", read(dlog), re.M) or
                   dst.poll() is not None, 30, "the destination's 'listening on' line")
    check(dst.poll() is None, "destination exited before listening: %s", read(dlog))
    src, slog = start_embed(t, "src", src_exe, src_lib, ["--migrate", m.group(1), "--mem", "16"])
    check_eq(finish(src, slog, "the source"), 1, "source exit status")
    check_eq(finish(dst, dlog, "the destination"), 1, "destination exit status")
    for who, path in (("source", slog), ("destination", dlog)):
        out = read(path)
        check(re.search(r"migration failed: .*RAM block 'mem'", out),
              "the %s does not name the RAM block: %s", who, out)


if __name__ == "__main__":
    R.main()
