/*
 * qmp_internal.h - pieces of the QMP module shared by the server, the
 * built-in commands, the client and the fuzz target.  Not installed.
 *
 * The input side is split in two so that it can be fuzzed without sockets:
 *  - lm_qmp_scan(): a pure, incremental JSON *framer*.  It finds where one
 *    top-level JSON value ends in a byte stream that arrives in arbitrary
 *    pieces, and where malformed input ends, so that the stream can be
 *    resynchronised (QEMU's json-lexer/json-streamer rules, digest §2.5 and
 *    docs/interop/qmp-spec.rst).  Each byte is looked at once, however the
 *    stream is split, so a client dripping bytes costs linear time.
 *  - jansson then parses exactly the framed bytes, and
 *    lm_qmp_request_check() validates the request's shape.
 */
#ifndef LM_QMP_INTERNAL_H
#define LM_QMP_INTERNAL_H

#include "livemig.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* jansson integers are signed 64-bit; saturate instead of wrapping. */
/* jsonu64.c: uint64 values above INT64_MAX, exactly (jansson's integers
 * are int64).  The loaders take such a number as a marker string that
 * lm_qmp_json_u64() reads back and lm_qmp_json_dumps() writes as the bare
 * number again; lm_qmp_ju64() makes one.  Every QMP text in or out of
 * the library goes through these. */
json_t *lm_qmp_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *je);
json_t *lm_qmp_json_loads(const char *s, size_t flags, json_error_t *je);
char *lm_qmp_json_dumps(const json_t *v, size_t flags);
/* An integer >= 0 or a marker: true and *out; anything else: false. */
bool lm_qmp_json_u64(const json_t *v, uint64_t *out);
json_t *lm_qmp_ju64(uint64_t v);

/* json_object_set_new that tolerates a NULL value from a failed
 * allocation (the reply is then just smaller, never a crash). */
static inline void lm_qmp_put(json_t *o, const char *key, json_t *v)
{
    if (v)
        json_object_set_new(o, key, v);
}

/* QEMU's json-streamer limit on nesting. */
#define LM_QMP_MAX_DEPTH 1024
/* Largest request the server accepts (one JSON value). */
#define LM_QMP_MAX_REQUEST (1u << 20)

/* ------------------------------------------------------------ the framer */

enum {
    LM_QMP_SCAN_MORE = 0,   /* no complete value yet */
    LM_QMP_SCAN_VALUE = 1,  /* buf[*vstart, *consumed) is one JSON value */
    LM_QMP_SCAN_ERROR = -1, /* buf[0, *consumed) was malformed (err says why) */
};

typedef struct lm_qmp_scanner {
    size_t off;      /* bytes of the pending value already scanned */
    bool in_value;   /* a top-level value has started at offset 0 */
    bool recovering; /* skipping garbage after an error */
    uint32_t skip;   /* > 0: depth of a malformed value being skipped */
    bool skip_str;   /* ... and inside one of its strings */
    bool skip_esc;   /* ... right after a backslash there */
    uint8_t expect;  /* syntactic expectation (scan.c) */
    uint8_t lex;     /* lexical state: string, escape, number, literal */
    uint8_t sub;     /* number sub-state, literal index or \u digit count */
    bool key;        /* the string being scanned is an object key */
    const char *lit; /* literal being matched ("true", "false", "null") */
    uint32_t depth;
    uint8_t stack[LM_QMP_MAX_DEPTH / 8]; /* bit set: object, clear: array */
} lm_qmp_scanner;

void lm_qmp_scanner_init(lm_qmp_scanner *s);

/* Scans buf[0, len), the caller's unconsumed input; the first s->off bytes
 * were already scanned by earlier calls (the scanner keeps its state across
 * calls).  In every case the caller must drop buf[0, *consumed) before the
 * next call:
 *  - LM_QMP_SCAN_VALUE: buf[*vstart, *consumed) is one complete top-level
 *    JSON value (syntactically checked; jansson does the real parse);
 *  - LM_QMP_SCAN_ERROR: buf[0, *consumed) is dropped as malformed, and
 *    err holds "JSON parse error, ..."; at least one byte is consumed;
 *  - LM_QMP_SCAN_MORE: buf[0, *consumed) was whitespace or garbage being
 *    skipped; the rest is the start of a value, to be kept.
 * Pure: no allocation, no I/O. */
int lm_qmp_scan(lm_qmp_scanner *s, const char *buf, size_t len, size_t *vstart, size_t *consumed,
                lm_error *err);

/* ------------------------------------------------------------ the reader */

/* A bounded input buffer in front of the scanner: bytes come in with
 * feed(), JSON values come out of next(). */
typedef struct lm_qmp_reader {
    lm_qmp_scanner sc;
    char *buf;
    size_t head, len, cap; /* unconsumed input is buf[head, len) */
    size_t max;            /* largest value accepted */
} lm_qmp_reader;

void lm_qmp_reader_init(lm_qmp_reader *r, size_t max);
void lm_qmp_reader_fini(lm_qmp_reader *r);
/* Appends n bytes; -EMSGSIZE when more than 2 * max bytes would be held
 * (the caller must drain with next() between feeds). */
int lm_qmp_reader_feed(lm_qmp_reader *r, const void *data, size_t n, lm_error *err);

enum {
    LM_QMP_READ_MORE = 0,      /* need more input */
    LM_QMP_READ_VALUE = 1,     /* *out is a parsed value, owned by the caller */
    LM_QMP_READ_BAD = -1,      /* malformed input was dropped; err says why; go on */
    LM_QMP_READ_OVERFLOW = -2, /* one value is larger than max: fatal */
};
int lm_qmp_reader_next(lm_qmp_reader *r, json_t **out, lm_error *err);

/* ------------------------------------------------------------ requests */

typedef struct lm_qmp_request {
    json_t *root;        /* owned; NULL after a JSON syntax error */
    const char *execute; /* borrowed from root; NULL when invalid */
    json_t *args;        /* borrowed "arguments" object, or NULL when absent */
    json_t *id;          /* borrowed "id", or NULL */
    /* set when the request is invalid: reply with this error */
    const char *err_class; /* "GenericError", ... or NULL */
    char err_desc[LM_ERROR_MSG_MAX];
} lm_qmp_request;

/* Checks the shape of a parsed request (QEMU's qmp_dispatch_check_obj):
 * takes ownership of root.  Returns 0 when valid, -EINVAL with
 * req->err_class/err_desc set otherwise (req->id is still filled when the
 * input was an object with an "id"). */
int lm_qmp_request_check(json_t *root, lm_qmp_request *req);
void lm_qmp_request_fini(lm_qmp_request *req);

/* For the fuzz target: frames one JSON value off buf (fresh scanner),
 * parses and checks it.  Returns 1 when a request (valid or not: see
 * req->err_class) was taken, 0 when more input is needed; *consumed bytes
 * are to be dropped in both cases.  req must be finished by the caller when
 * 1 is returned. */
int lm_qmp_parse_request(const char *buf, size_t len, size_t *consumed, lm_qmp_request *req);

/* --------------------------------------------------------- the commands */

/* How an argument's JSON type is checked before a command runs. */
enum lm_qmp_atype {
    LM_QMP_T_STR,
    LM_QMP_T_BOOL,
    LM_QMP_T_INT,
    LM_QMP_T_NUM,
    LM_QMP_T_ARRAY,
    LM_QMP_T_OBJ,
    LM_QMP_T_ANY
};

/* One argument of a command.  schema: its type in query-qmp-schema
 * ("MigrationStatus", "[MigrationCapabilityStatus]"...), NULL for the
 * plain type that matches `type` ("str", "bool", "int", "number",
 * "[any]", "any"). */
typedef struct lm_qmp_arg {
    const char *name;
    enum lm_qmp_atype type;
    bool required;
    const char *schema;
} lm_qmp_arg;

/* A built-in command's row (commands.c), the one table that both the
 * dispatch and query-qmp-schema (schema.c) read, so they cannot drift:
 * name, handler, argument list (terminated by a {NULL} entry), and the
 * schema name of its return type. */
typedef int (*lm_qmp_cmd)(lm_mig *m, json_t *args, json_t **ret, lm_error *err);
typedef struct lm_qmp_builtin {
    const char *name;
    lm_qmp_cmd fn; /* NULL: answered by the server (needs its state) */
    /* NULL: no arguments.  lm_qmp_args_decoded: the handler decodes its
     * own (migrate-set-parameters); the schema then takes the type named
     * by arg_type. */
    const lm_qmp_arg *args;
    const char *ret;      /* NULL: returns {} ("q_empty") */
    const char *arg_type; /* only with lm_qmp_args_decoded */
} lm_qmp_builtin;

extern const lm_qmp_arg lm_qmp_args_decoded[];

/* The table: *n rows. */
const lm_qmp_builtin *lm_qmp_builtins(size_t *n);
const lm_qmp_builtin *lm_qmp_builtin_find(const char *name);

/* Checks args against a built-in command's argument list with QEMU's
 * wording and order (declared members: missing, wrong type; then any
 * other key: "Parameter 'x' is unexpected").  0 when they fit or when the
 * command decodes its own arguments. */
int lm_qmp_builtin_check(const lm_qmp_builtin *b, json_t *args, lm_error *err);
/* The same check against any argument list (ending with a NULL name):
 * the host's commands registered with their arguments (hostcmd.c). */
int lm_qmp_args_check(json_t *args, const lm_qmp_arg *spec, lm_error *err);

/* Runs a built-in command (commands.c).  Returns 1 when name is not a
 * built-in command run here, 0 on success (*ret set, a new reference), < 0
 * on failure (*err_class and err set).  qmp_capabilities, query-commands
 * and query-qmp-schema are built in but answered by the server (they need
 * its state).  Runs on the QMP thread; never blocks on migration I/O. */
int lm_qmp_builtin_run(lm_mig *m, const char *name, json_t *args, json_t **ret,
                       const char **err_class, lm_error *err);
/* Whether name is a built-in command (including the server's own). */
bool lm_qmp_builtin_exists(const char *name);
/* Appends {"name": ...} of every built-in command to list. */
void lm_qmp_builtin_list(json_t *list);

/* migrate-set-parameters' arguments and query-migrate-parameters' members
 * (params.c's table): the i-th name and its schema type in the one (set)
 * or the other, for i < lm_qmp_param_count(); NULL past the end. */
size_t lm_qmp_param_count(void);
const char *lm_qmp_param_schema(size_t i, bool set, const char **type);
/* The two commands (params.c). */
int lm_qmp_cmd_set_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err);
int lm_qmp_cmd_query_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err);
/* objects.c: object-add (decodes its own arguments) and object-del. */
int lm_qmp_cmd_object_add(lm_mig *m, json_t *args, json_t **ret, lm_error *err);
int lm_qmp_cmd_object_del(lm_mig *m, json_t *args, json_t **ret, lm_error *err);

/* The events the library emits (json.c): the QMP name of each
 * lm_event_type and the schema type of its "data" ("q_empty": none). */
const char *lm_qmp_event_name(lm_event_type t, const char **arg_type);

/* query-qmp-schema (schema.c): every built-in command, the host's
 * commands (host_cmds[0..nhost): their arguments are host_args[i], a list
 * ending with a NULL name, or "any" when host_args is NULL or host_args[i]
 * is; they return "any"), every event and every type they name, in QEMU's
 * SchemaInfo format with readable (unmasked) type names.  NULL with err
 * set if the tables name a type that is not described (a bug the unit test
 * catches). */
json_t *lm_qmp_schema_json(const char *const *host_cmds, const lm_qmp_arg *const *host_args,
                           size_t nhost, lm_error *err);

/* Pure decoders behind the commands, fuzzed directly. */
/* migrate-set-parameters: fills the fields of *out named in args and sets
 * their bits in *which; type errors name the parameter like QEMU. */
int lm_qmp_decode_params(json_t *args, lm_params *out, uint64_t *which, lm_error *err);
/* migrate-set-capabilities: bits to change and their new values. */
int lm_qmp_decode_caps(json_t *args, uint64_t *mask, uint64_t *values, lm_error *err);
/* query-migrate's reply for info (new reference). */
json_t *lm_qmp_info_json(const lm_info *info);
/* A library event as a QMP event object (new reference). */
json_t *lm_qmp_event_json(const lm_event *ev);

#endif /* LM_QMP_INTERNAL_H */
