"""query-qmp-schema against the server it describes.

The schema (QEMU's SchemaInfo list, qapi/introspect.json) is what a
management tool reads before it uses a command, an argument, an event or an
enum value.  These tests hold every part of it to what the server does:
- it is well formed: unique names, every type it names is described;
- every command of query-commands is in it and nothing else is;
- each handler takes exactly the arguments the schema lists: an argument
  not in the schema is refused with QEMU's "Parameter 'x' is unexpected", a
  required one missing is refused naming it, and each listed argument is
  recognised (a value of the wrong type is refused naming the argument,
  never as unexpected) — all without running a command;
- the replies of the query commands, before and after a real migration on
  both sides, fit their return types;
- every event the engine emits (a migration with events, return-path and
  switchover-ack on, stop and cont) is in it and its data fits;
- every capability of the enum is in query-migrate-capabilities, every
  parameter migrate-set-parameters takes is in query-migrate-parameters;
- the format is QEMU's: our entries fit QEMU's own description of
  SchemaInfo, and our description of it is QEMU's."""

import json
import os

from lmtest import (Runner, TestFailure, check, check_eq, log, migrate, set_caps,
                    stop_and_verify, wait_status)

R = Runner("schema", per_test=60, budget=200)

MEM = "64M"
CAPS = {"events": True, "return-path": True, "switchover-ack": True}


# ----------------------------------------------------------------- the schema

def load(q):
    schema = q.execute("query-qmp-schema")
    check(isinstance(schema, list) and schema, "query-qmp-schema returned %r", schema)
    idx = {}
    for e in schema:
        check(isinstance(e, dict) and isinstance(e.get("name"), str) and
              e.get("meta-type") in ("builtin", "enum", "array", "object", "alternate",
                                     "command", "event"),
              "malformed SchemaInfo entry %r", e)
        check(e["name"] not in idx, "schema entry %r appears twice", e["name"])
        idx[e["name"]] = e
    return idx


def named_types(e):
    """The type names one entry refers to."""
    mt = e["meta-type"]
    if mt in ("command", "event"):
        return [e["arg-type"]] + ([e["ret-type"]] if mt == "command" else [])
    if mt == "array":
        return [e["element-type"]]
    if mt == "object":
        return [m["type"] for m in e["members"]] + [v["type"] for v in e.get("variants", [])]
    if mt == "alternate":
        return [m["type"] for m in e["members"]]
    return []


def members(idx, e, value=None):
    """An object's members by name, with the variant's when value picks one."""
    ms = {m["name"]: m for m in e["members"]}
    if e.get("tag") and isinstance(value, dict):
        for v in e.get("variants", []):
            if v["case"] == value.get(e["tag"]):
                ms.update(members(idx, idx[v["type"]], value))
    return ms


def validate(idx, tname, v, path):
    """Raises TestFailure where value v does not fit type tname."""
    e = idx.get(tname)
    if e is None:
        raise TestFailure("%s: type %r is not in the schema" % (path, tname))
    mt = e["meta-type"]

    def fail(why):
        raise TestFailure("%s: %s does not fit %s (%s)" % (path, json.dumps(v)[:200], tname,
                                                           why))
    if mt == "builtin":
        jt = e["json-type"]
        ok = {"string": isinstance(v, str),
              "int": isinstance(v, int) and not isinstance(v, bool),
              "number": isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": isinstance(v, bool), "null": v is None,
              "object": isinstance(v, dict), "array": isinstance(v, list),
              "value": True}[jt]
        if not ok:
            fail("not a JSON " + jt)
    elif mt == "enum":
        if v not in e["values"] or v not in [m["name"] for m in e["members"]]:
            fail("not one of %s" % e["values"])
    elif mt == "array":
        if not isinstance(v, list):
            fail("not an array")
        for i, x in enumerate(v):
            validate(idx, e["element-type"], x, "%s[%d]" % (path, i))
    elif mt == "object":
        if not isinstance(v, dict):
            fail("not an object")
        ms = members(idx, e, v)
        for name, m in ms.items():
            if "default" not in m and name not in v:
                fail("required member %r missing" % name)
        for k, x in v.items():
            if k not in ms:
                fail("member %r is not in the schema" % k)
            validate(idx, ms[k]["type"], x, "%s.%s" % (path, k))
    elif mt == "alternate":
        for m in e["members"]:
            try:
                validate(idx, m["type"], v, path)
                return
            except TestFailure:
                pass
        fail("fits no alternative")
    else:
        fail("a %s is not a type" % mt)


def valid_value(idx, tname):
    e = idx[tname]
    mt = e["meta-type"]
    if mt == "builtin":
        return {"string": "x", "int": 0, "number": 0, "boolean": False, "null": None,
                "object": {}, "array": [], "value": 0}[e["json-type"]]
    if mt == "enum":
        return e["values"][0]
    if mt == "array":
        return []
    if mt == "alternate":
        return valid_value(idx, e["members"][0]["type"])
    return {m["name"]: valid_value(idx, m["type"]) for m in e["members"] if "default" not in m}


def wrong_value(idx, tname):
    """A value of the wrong JSON type for tname (None: every value fits)."""
    e = idx[tname]
    mt = e["meta-type"]
    if mt == "builtin":
        return {"string": 12345, "int": "x", "number": "x", "boolean": "x", "null": 1,
                "object": "x", "array": "x", "value": None}[e["json-type"]]
    if mt in ("enum", "alternate"):
        return 12345
    return "x"


# ---------------------------------------------------------------------- tests

@R.test("the schema is well formed and lists exactly the commands we serve")
def well_formed(t):
    g = t.guest("g", mem=MEM)
    idx = load(g.qmp)
    for e in idx.values():
        for tn in named_types(e):
            check(tn in idx, "%s %r names type %r, which the schema does not describe",
                  e["meta-type"], e["name"], tn)
        if e["meta-type"] == "enum":
            check_eq([m["name"] for m in e["members"]], e["values"], "enum %s" % e["name"])
    served = sorted(c["name"] for c in g.qmp.execute("query-commands"))
    described = sorted(n for n, e in idx.items() if e["meta-type"] == "command")
    check_eq(described, served, "commands in the schema vs query-commands")
    for must in ("qmp_capabilities", "query-commands", "query-qmp-schema", "query-name",
                 "query-uuid", "query-version", "migrate", "migrate-incoming", "quit",
                 "x-guest-verify"):
        check(must in served, "%s is not served", must)
    events = sorted(n for n, e in idx.items() if e["meta-type"] == "event")
    for must in ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "X_MIGRATION_SWITCHOVER_ACK"):
        check(must in events, "event %s is not in the schema (%s)", must, events)
    log("%d entries, %d commands, %d events" % (len(idx), len(served), len(events)))


def arg_object(idx, cmd):
    at = idx[cmd]["arg-type"]
    e = idx[at]
    return None if e["meta-type"] != "object" else e


@R.test("every handler takes exactly the arguments its schema lists")
def handlers_match(t):
    # A destination: nothing here may start anything, and if a check let a
    # command through, a destination is where it would do least.
    g = t.guest("g", mem=MEM, incoming="defer")
    q = g.qmp
    idx = load(q)
    checked = 0
    for c in q.execute("query-commands"):
        name = c["name"]
        obj = arg_object(idx, name)
        # A host command registered without its arguments: they are its own
        # ("any").  The guest's own (quit, x-guest-*) declare theirs.
        if obj is None:
            check_eq(idx[name]["arg-type"], "any", "%s: arg-type" % name)
            continue
        ms = members(idx, obj)
        required = {n: valid_value(idx, m["type"]) for n, m in ms.items() if "default" not in m}
        # An argument the schema does not list.
        args = dict(required, **{"x-not-in-schema": 1})
        e = q.expect_error(name, args)
        check_eq(e.desc, "Parameter 'x-not-in-schema' is unexpected", "%s %r" % (name, args))
        # Each required one, missing.
        for n in required:
            args = {k: v for k, v in required.items() if k != n}
            e = q.expect_error(name, args)
            check_eq(e.desc, "Parameter '%s' is missing" % n, "%s without %s" % (name, n))
        # Each listed one is recognised: a wrong-typed value is refused
        # naming it, never as unexpected.
        for n, m in ms.items():
            bad = wrong_value(idx, m["type"])
            if bad is None:
                continue
            args = dict(required, **{n: bad})
            e = q.expect_error(name, args)
            check("'%s'" % n in e.desc and "unexpected" not in e.desc,
                  "%s: %s=%r refused with %r", name, n, bad, e.desc)
        checked += 1
    check_eq(q.execute("query-migrate").get("status"), "none", "status after all that")
    check_eq(g.status(), "inmigrate", "run state after all that")
    log("%d commands checked" % checked)


@R.test("capabilities and parameters: the queries list all that the setters take")
def caps_and_params(t):
    g = t.guest("g", mem=MEM)
    idx = load(g.qmp)
    caps = g.qmp.execute("query-migrate-capabilities")
    validate(idx, idx["query-migrate-capabilities"]["ret-type"], caps,
             "query-migrate-capabilities")
    listed = [c["capability"] for c in caps]
    check_eq(sorted(listed), sorted(idx["MigrationCapability"]["values"]),
             "query-migrate-capabilities vs the MigrationCapability enum")
    # Every one of them is a name migrate-set-capabilities takes (it may
    # refuse to turn it on, never as an unknown value).
    for cap in listed:
        e = g.qmp.execute_raw("migrate-set-capabilities",
                              {"capabilities": [{"capability": cap, "state": False}]})
        check("error" not in e, "turning %s off: %r", cap, e)
    params = g.qmp.execute("query-migrate-parameters")
    validate(idx, idx["query-migrate-parameters"]["ret-type"], params, "query-migrate-parameters")
    settable = members(idx, idx[idx["migrate-set-parameters"]["arg-type"]])
    check_eq(sorted(params), sorted(settable),
             "query-migrate-parameters vs migrate-set-parameters' arguments")
    # Setting each to what the query reports is accepted (a round trip).
    for n, v in params.items():
        g.qmp.execute("migrate-set-parameters", {n: v})
    check_eq(g.qmp.execute("query-migrate-parameters"), params, "parameters after the round trip")


def validate_queries(g, idx, when):
    for name, e in idx.items():
        if e["meta-type"] != "command" or not name.startswith("query-"):
            continue
        obj = arg_object(idx, name)
        if obj is None or any("default" not in m for m in obj["members"]):
            continue
        validate(idx, e["ret-type"], g.qmp.execute(name), "%s %s (%s)" % (g.name, name, when))


@R.test("replies fit their return types, events fit theirs, before and after a migration")
def replies_and_events(t):
    src = t.guest("src", mem=MEM, workload="random", fill="random",
                  extra=("--name", "schema-src"))
    dst = t.dest("dst", transport="tcp", defer=True, caps=CAPS, mem=MEM, workload="random")
    idx = load(src.qmp)
    validate_queries(src, idx, "before")
    validate_queries(dst, idx, "listening")
    set_caps(src, CAPS)
    src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 0})
    migrate(src, dst)
    wait_status(src, "completed", 30)
    wait_status(dst, "completed", 10)
    validate_queries(src, idx, "after")
    validate_queries(dst, idx, "after")
    dst.qmp.execute("stop")
    dst.qmp.execute("cont")
    stop_and_verify(dst)
    seen = set()
    for g in (src, dst):
        g.qmp.execute("query-status")  # read whatever is in flight
        for ev in g.qmp.drain_events():
            name = ev.get("event")
            check(idx.get(name, {}).get("meta-type") == "event",
                  "%s emitted %r, which the schema does not list", g.name, name)
            validate(idx, idx[name]["arg-type"], ev.get("data", {}),
                     "%s event %s" % (g.name, name))
            seen.add(name)
    described = {n for n, e in idx.items() if e["meta-type"] == "event"}
    check_eq(sorted(seen), sorted(described), "events seen vs events in the schema")


# The part of QEMU 7.2's query-qmp-schema that describes SchemaInfo itself
# (the types reachable from query-qmp-schema's ret-type, names masked as
# QEMU sends them), taken from `qemu-system-x86_64 -machine none` of Debian
# 12 (1:7.2+dfsg-7+deb12u18).
QEMU_SCHEMAINFO = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "qemu-7.2-schemainfo.json")


def same_type(a, at, b, bt, path, done):
    """Type at of schema a and type bt of schema b have the same structure."""
    if (at, bt) in done:
        return
    done.add((at, bt))
    ea, eb = a[at], b[bt]
    check_eq(ea["meta-type"], eb["meta-type"], "%s: meta-type" % path)
    mt = ea["meta-type"]
    if mt == "builtin":
        check_eq(ea["json-type"], eb["json-type"], "%s: json-type" % path)
    elif mt == "enum":
        check_eq(ea["values"], eb["values"], "%s: enum values" % path)
    elif mt == "array":
        same_type(a, ea["element-type"], b, eb["element-type"], path + "[]", done)
    elif mt == "object":
        ma = {m["name"]: m for m in ea["members"]}
        mb = {m["name"]: m for m in eb["members"]}
        check_eq(sorted(ma), sorted(mb), "%s: members" % path)
        for n in ma:
            check_eq("default" in ma[n], "default" in mb[n], "%s.%s: optional" % (path, n))
            same_type(a, ma[n]["type"], b, mb[n]["type"], "%s.%s" % (path, n), done)
        check_eq(ea.get("tag"), eb.get("tag"), "%s: tag" % path)
        va = {v["case"]: v["type"] for v in ea.get("variants", [])}
        vb = {v["case"]: v["type"] for v in eb.get("variants", [])}
        check_eq(sorted(va), sorted(vb), "%s: variants" % path)
        for c in va:
            same_type(a, va[c], b, vb[c], "%s<%s>" % (path, c), done)


@R.test("the format is QEMU's: QEMU 7.2's SchemaInfo takes our entries, ours is QEMU's")
def qemu_format(t):
    g = t.guest("g", mem=MEM)
    ours = load(g.qmp)
    with open(QEMU_SCHEMAINFO) as f:
        qemu_list = json.load(f)
    qemu = {e["name"]: e for e in qemu_list}
    qroot = qemu["query-qmp-schema"]["ret-type"]
    validate(qemu, qroot, list(ours.values()), "our schema, as QEMU 7.2 describes SchemaInfo")
    validate(ours, ours["query-qmp-schema"]["ret-type"], qemu_list,
             "QEMU 7.2's entries, as we describe SchemaInfo")
    same_type(ours, ours["query-qmp-schema"]["ret-type"], qemu, qroot, "SchemaInfo", set())


R.main()
