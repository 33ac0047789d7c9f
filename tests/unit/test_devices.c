/*
 * test_devices.c - the device drivers of savevm.c without processes:
 * registration rules; fair round-robin iteration (seed 001 and the fair
 * share of every window); the loader's checks of device sections from a
 * hostile stream; the destination's half of the switchover-ack handshake
 * (what it answers on the return path, and when).
 *
 * Threads: the test thread only (the library's threads are not started:
 * the drivers are called directly on a channel over a socketpair).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

static void nop(void *opaque)
{
    (void)opaque;
}

static const lm_host_ops host_ops = {.stop = nop, .start = nop};

/* ------------------------------------------------------------ a fake device */

typedef struct fake {
    bool empty;      /* nothing to send: iterate returns 1 at once */
    bool ack;        /* switchover_ack_needed */
    unsigned greedy; /* > 1: sends that many times its share */
    unsigned calls;
    uint64_t put_bytes;
    int load_ret; /* what load_state returns (after recording) */
    unsigned loads;
    size_t last_len;
    uint32_t last_version;
} fake;

static int fake_iterate(void *opaque, lm_device_out *out, uint64_t budget, lm_error *err)
{
    fake *f = opaque;
    static uint8_t chunk[4096];
    f->calls++;
    if (f->empty)
        return 1;
    /* Greedy: always more to send, and it uses its whole share. */
    uint64_t sent = 0;
    if (f->greedy > 1 && budget != UINT64_MAX)
        budget *= f->greedy;
    do {
        int ret = lm_device_put(out, chunk, sizeof chunk, err);
        if (ret < 0)
            return ret;
        sent += sizeof chunk;
    } while (sent < budget);
    f->put_bytes += sent;
    return 0;
}

static int fake_load(void *opaque, uint32_t version, const uint8_t *data, size_t len, lm_error *err)
{
    fake *f = opaque;
    f->loads++;
    f->last_len = len;
    f->last_version = version;
    if (len == 4 && !memcmp(data, "FAIL", 4))
        return lm_error_set(err, -EINVAL, "simulated load failure");
    if (len == 4 && !memcmp(data, "DONE", 4))
        return LM_DEVICE_LOAD_READY;
    return f->load_ret;
}

static bool fake_ack(void *opaque)
{
    return ((fake *)opaque)->ack;
}

static int fake_state(void *opaque, lm_device_out *out, lm_error *err)
{
    return lm_device_put(out, "regs", 4, err);
}

static const lm_device_ops iter_ops = {
    .save_iterate = fake_iterate,
    .load_state = fake_load,
    .switchover_ack_needed = fake_ack,
};

static const lm_device_ops state_ops = {
    .save_state = fake_state,
    .load_state = fake_load,
};

/* ------------------------------------------------------------ registration */

static void test_register(void **state)
{
    lm_mig *m = NULL;
    lm_error err = {0};
    fake f = {0};
    assert_int_equal(lm_mig_new(&host_ops, NULL, LM_RUN_RUNNING, &m, &err), 0);
    assert_int_equal(lm_device_register(m, "", 0, 1, &iter_ops, &f, &err), -EINVAL);
    assert_err(&err, -EINVAL, "device name must be 1..63 printable ASCII bytes");
    lm_error_clear(&err);
    assert_int_equal(lm_device_register(m, "bad\nname", 0, 1, &iter_ops, &f, &err), -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_device_register(m, "dev", 0, 0, &iter_ops, &f, &err), -EINVAL);
    assert_err(&err, -EINVAL, "device 'dev': version must be >= 1");
    lm_error_clear(&err);
    static const lm_device_ops no_load = {.save_state = fake_state};
    assert_int_equal(lm_device_register(m, "dev", 0, 1, &no_load, &f, &err), -EINVAL);
    assert_err(&err, -EINVAL, "load_state is required");
    lm_error_clear(&err);
    assert_int_equal(lm_device_register(m, "dev", 0, 1, &iter_ops, &f, &err), 0);
    assert_int_equal(lm_device_register(m, "dev", 1, 1, &iter_ops, &f, &err), 0);
    assert_int_equal(lm_device_register(m, "dev", 1, 1, &iter_ops, &f, &err), -EEXIST);
    assert_err(&err, -EEXIST, "device 'dev' instance 1 is already registered");
    lm_device_info info[4];
    assert_int_equal(lm_mig_query_devices(m, info, 4), 2);
    assert_string_equal(info[1].name, "dev");
    assert_int_equal(info[1].instance, 1);
    assert_true(info[1].iterable);
    assert_string_equal(lm_device_ack_state_name(info[1].ack), "none");
    /* Once a migration started, the table is fixed. */
    pthread_mutex_lock(&m->lock);
    m->ram_frozen = true;
    pthread_mutex_unlock(&m->lock);
    lm_error_clear(&err);
    assert_int_equal(lm_device_register(m, "late", 0, 1, &state_ops, &f, &err), -EBUSY);
    assert_err(&err, -EBUSY, "before the first migration");
    lm_mig_free(m);
}

/* --------------------------------------------------------------- fairness */

typedef struct sink {
    lm_mig *m;
    lm_chan *chan;
    lm_out o;
} sink;

/* A source whose handlers are the given devices only (no RAM), writing to
 * /dev/null: what is measured is who got how much of each budget. */
static void sink_open(sink *s, fake *f, unsigned n)
{
    lm_error err = {0};
    assert_int_equal(lm_mig_new(&host_ops, NULL, LM_RUN_RUNNING, &s->m, &err), 0);
    for (unsigned i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "dev%u", i);
        assert_int_equal(lm_device_register(s->m, name, 0, 1, &iter_ops, &f[i], &err), 0);
    }
    for (unsigned i = 0; i < n; i++)
        s->m->sv.handlers[i] = (lm_handler){.dev = &s->m->sv.devices[i], .section_id = i};
    s->m->sv.nhandlers = n;
    int fd = open("/dev/null", O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(lm_chan_new(fd, "null", &s->chan, &err), 0);
    s->o = (lm_out){.chan = s->chan, .ctr = &s->m->stats.out};
}

static void sink_close(sink *s)
{
    lm_chan_free(s->chan);
    lm_mig_free(s->m);
}

static void test_fair_share(void **state)
{
    fake f[3] = {{0}};
    sink s;
    sink_open(&s, f, 3);
    lm_error err = {0};
    const uint64_t budget = 120 * 1024;
    for (int k = 0; k < 30; k++) {
        /* Every handler is iterated in every call even though none ever
         * finishes (no "stop at the first unfinished one"). */
        unsigned before[3] = {f[0].calls, f[1].calls, f[2].calls};
        assert_int_equal(lm_savevm_iterate(&s.m->sv, &s.o, budget, false, &err), 0);
        for (int i = 0; i < 3; i++)
            assert_int_equal(f[i].calls, before[i] + 1);
    }
    /* Each got a third of every window (a chunk of slack for rounding). */
    uint64_t third = 30 * budget / 3;
    for (int i = 0; i < 3; i++) {
        uint64_t got = s.m->sv.handlers[i].sent;
        if (got < third * 9 / 10 || got > third * 12 / 10)
            fail_msg("handler %d sent %llu bytes, fair share %llu", i, (unsigned long long)got,
                     (unsigned long long)third);
    }
    sink_close(&s);
}

static void test_fair_share_unused_passes_on(void **state)
{
    /* An idle handler's share goes to the others, whatever the order. */
    fake f[3] = {{.empty = true}, {0}, {0}};
    sink s;
    sink_open(&s, f, 3);
    lm_error err = {0};
    const uint64_t budget = 96 * 1024;
    for (int k = 0; k < 30; k++)
        assert_int_equal(lm_savevm_iterate(&s.m->sv, &s.o, budget, false, &err), 0);
    assert_int_equal(s.m->sv.handlers[0].sent, 0);
    uint64_t half = 30 * budget / 2;
    for (int i = 1; i < 3; i++) {
        uint64_t got = s.m->sv.handlers[i].sent;
        if (got < half * 8 / 10 || got > half * 13 / 10)
            fail_msg("handler %d sent %llu bytes, want about %llu", i, (unsigned long long)got,
                     (unsigned long long)half);
    }
    /* All idle: "all finished" (1). */
    f[1].empty = f[2].empty = true;
    assert_int_equal(lm_savevm_iterate(&s.m->sv, &s.o, budget, false, &err), 1);
    sink_close(&s);
}

static void test_greedy_first_cannot_starve(void **state)
{
    /* Seed 001's case: a dirtier that would take everything (it ignores
     * its share and sends 4x the budget) sits first in the list.  The
     * rotating start still gives the other handler a turn at the head of
     * the window in every other call, with a real share. */
    fake f[2] = {{.greedy = 4}, {0}};
    sink s;
    sink_open(&s, f, 2);
    lm_error err = {0};
    const uint64_t budget = 64 * 1024;
    for (int k = 0; k < 20; k++)
        assert_int_equal(lm_savevm_iterate(&s.m->sv, &s.o, budget, false, &err), 0);
    if (f[1].put_bytes < 10 * budget / 2)
        fail_msg("the second handler got %llu bytes in 20 windows of %llu",
                 (unsigned long long)f[1].put_bytes, (unsigned long long)budget);
    sink_close(&s);
}

/* ---------------------------------------------------------------- loader */

typedef struct dst {
    lm_mig *m;
    lm_chan *chan; /* the destination's end */
    int peer;      /* the source's end */
    lm_loadvm lv;
    fake f[3];
} dst;

/* Devices: "it" (iterable, version 2, ack per f[0].ack), "regs"
 * (non-iterable, version 1), "it2" (iterable, version 1). */
static void dst_open(dst *d, bool ack_feature)
{
    lm_error err = {0};
    memset(d, 0, sizeof *d);
    assert_int_equal(lm_mig_new(&host_ops, NULL, LM_RUN_INMIGRATE, &d->m, &err), 0);
    assert_int_equal(lm_device_register(d->m, "it", 0, 2, &iter_ops, &d->f[0], &err), 0);
    assert_int_equal(lm_device_register(d->m, "regs", 0, 1, &state_ops, &d->f[1], &err), 0);
    assert_int_equal(lm_device_register(d->m, "it2", 0, 1, &iter_ops, &d->f[2], &err), 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "dst", &d->chan, &err), 0);
    d->peer = sv[1];
    d->lv.ack_feature = ack_feature;
    d->lv.sv = &d->m->sv;
    assert_int_equal(lm_loadvm_setup(&d->lv, &err), 0);
}

static void dst_close(dst *d)
{
    lm_loadvm_cleanup(&d->lv);
    lm_chan_free(d->chan);
    close(d->peer);
    lm_mig_free(d->m);
}

/* The source writes one record; the destination reads its header and
 * hands it to the driver, as incoming.c's loop does. */
static int feed(dst *d, uint8_t type, const void *payload, uint32_t len, lm_error *err)
{
    uint8_t h[LM_REC_HDR_SIZE];
    assert_int_equal(lm_fmt_rec_hdr_encode(type, len, h, sizeof h), LM_REC_HDR_SIZE);
    assert_int_equal(write(d->peer, h, sizeof h), (ssize_t)sizeof h);
    if (len)
        assert_int_equal(write(d->peer, payload, len), (ssize_t)len);
    uint8_t hb[LM_REC_HDR_SIZE];
    lm_rec_hdr rh;
    assert_int_equal(lm_chan_read_full(d->chan, hb, sizeof hb), 0);
    assert_int_equal(lm_fmt_rec_hdr_decode(hb, sizeof hb, &rh, NULL), LM_REC_HDR_SIZE);
    if (type == LM_REC_ACK_DEVICES)
        return lm_loadvm_ack_devices(&d->lv, d->chan, &rh, err);
    return lm_loadvm_section(&d->lv, d->chan, &rh, err);
}

static int section(dst *d, uint8_t type, uint32_t id, const char *name, uint32_t version,
                   const char *data, lm_error *err)
{
    lm_section_hdr s = {.section_id = id, .instance = 0, .version = version};
    if (name) {
        s.name_len = (uint8_t)strlen(name);
        memcpy(s.name, name, s.name_len + 1);
    }
    uint8_t p[512];
    int n = lm_fmt_section_hdr_encode(type, &s, p, sizeof p);
    assert_true(n > 0);
    size_t dl = data ? strlen(data) : 0;
    if (dl)
        memcpy(p + n, data, dl);
    return feed(d, type, p, (uint32_t)(n + dl), err);
}

static int ack_devices(dst *d, const uint32_t *ids, uint32_t n, lm_error *err)
{
    uint8_t p[64];
    int len = lm_fmt_ack_devices_encode(ids, n, p, sizeof p);
    assert_true(len > 0);
    return feed(d, LM_REC_ACK_DEVICES, p, (uint32_t)len, err);
}

/* Reads the next return-path record the destination wrote, if any. */
static bool rp_next(dst *d, uint8_t *type, uint32_t *id, uint8_t *st)
{
    uint8_t b[LM_REC_HDR_SIZE + LM_DEVICE_ACK_SIZE];
    ssize_t n = recv(d->peer, b, LM_REC_HDR_SIZE, MSG_DONTWAIT);
    if (n <= 0)
        return false;
    assert_int_equal(n, LM_REC_HDR_SIZE);
    lm_rec_hdr h;
    assert_int_equal(lm_fmt_rec_hdr_decode(b, LM_REC_HDR_SIZE, &h, NULL), LM_REC_HDR_SIZE);
    *type = h.type;
    if (h.len) {
        assert_int_equal(recv(d->peer, b + LM_REC_HDR_SIZE, h.len, 0), (ssize_t)h.len);
        assert_int_equal(lm_fmt_device_ack_decode(b + LM_REC_HDR_SIZE, h.len, id, st, NULL), 8);
    }
    return true;
}

static void test_load_sections(void **state)
{
    dst d;
    lm_error err = {0};
    dst_open(&d, false);
    /* A stream of an older version of "it" loads; data reaches the device. */
    assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 1, NULL, &err), 0);
    assert_int_equal(d.f[0].loads, 0); /* START is a marker */
    assert_int_equal(section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "hello", &err), 0);
    assert_int_equal(d.f[0].loads, 1);
    assert_int_equal(d.f[0].last_len, 5);
    assert_int_equal(d.f[0].last_version, 1);
    assert_int_equal(section(&d, LM_REC_SECTION_END, 0, NULL, 0, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_FULL, 1, "regs", 1, "abcd", &err), 0);
    assert_int_equal(d.f[1].loads, 1);
    assert_int_equal(section(&d, LM_REC_SECTION_START, 2, "it2", 1, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_END, 2, NULL, 0, NULL, &err), 0);
    assert_int_equal(lm_loadvm_switchover(&d.lv, &err), 0);
    assert_int_equal(lm_loadvm_check_complete(&d.lv, LM_LOADVM_AT_EOS, &err), 0);
    lm_device_info info[3];
    lm_mig_query_devices(d.m, info, 3);
    assert_true(info[0].bytes > 5);
    dst_close(&d);
}

static void test_load_errors(void **state)
{
    static const struct {
        const char *what;
        const char *want;
    } cases[] = {
        {"unknown", "SECTION_START: unknown device 'nope' instance 0"},
        {"newer", "device 'it' instance 0: the stream has version 3, newer than this "
                  "destination's version 2"},
        {"part-first", "SECTION_PART: section id 7 was never started"},
        {"after-end", "SECTION_PART for device 'it' after its SECTION_END"},
        {"twice", "second SECTION_START for device 'it'"},
        {"not-iterable", "SECTION_START for device 'regs', which is not iterable here"},
        {"id-clash", "section id 0 of device 'it2' is already bound to device 'it'"},
        {"eos", "device 'it': end of stream before its SECTION_END"},
        /* issue 12, defect 2: a stream that never carried the switchover
         * or a device's state is not complete */
        {"eos-no-switchover", "end of stream without SWITCHOVER_START"},
        {"eos-no-full", "device 'regs' instance 0: end of stream, and its state never came (no "
                        "SECTION_FULL)"},
        {"eos-no-start", "device 'it2' instance 0: end of stream, and its state never came (no "
                         "SECTION_START)"},
        {"run-no-full", "device 'regs' instance 0: POSTCOPY_RUN, and its state never came"},
        {"switchover-twice", "second SWITCHOVER_START record"},
        {"load-fails", "device 'it' instance 0: simulated load failure"},
        {"ack-no-feature", "ACK_DEVICES without the switchover-ack feature"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dst d;
        lm_error err = {0};
        const char *w = cases[i].what;
        dst_open(&d, false);
        int ret = 0;
        if (!strcmp(w, "unknown")) {
            ret = section(&d, LM_REC_SECTION_START, 0, "nope", 1, NULL, &err);
        } else if (!strcmp(w, "newer")) {
            ret = section(&d, LM_REC_SECTION_START, 0, "it", 3, NULL, &err);
        } else if (!strcmp(w, "part-first")) {
            ret = section(&d, LM_REC_SECTION_PART, 7, NULL, 0, "x", &err);
        } else {
            if (strcmp(w, "not-iterable"))
                assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err), 0);
            if (!strcmp(w, "after-end")) {
                assert_int_equal(section(&d, LM_REC_SECTION_END, 0, NULL, 0, NULL, &err), 0);
                ret = section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "x", &err);
            } else if (!strcmp(w, "twice")) {
                ret = section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err);
            } else if (!strcmp(w, "not-iterable")) {
                ret = section(&d, LM_REC_SECTION_START, 0, "regs", 1, NULL, &err);
            } else if (!strcmp(w, "id-clash")) {
                ret = section(&d, LM_REC_SECTION_START, 0, "it2", 1, NULL, &err);
            } else if (!strcmp(w, "eos")) {
                assert_int_equal(lm_loadvm_switchover(&d.lv, &err), 0);
                ret = lm_loadvm_check_complete(&d.lv, LM_LOADVM_AT_EOS, &err);
            } else if (!strncmp(w, "eos-", 4) || !strcmp(w, "run-no-full")) {
                /* "it" complete; "regs" and "it2" as the case says */
                assert_int_equal(section(&d, LM_REC_SECTION_END, 0, NULL, 0, NULL, &err), 0);
                if (strcmp(w, "eos-no-full") && strcmp(w, "run-no-full"))
                    assert_int_equal(section(&d, LM_REC_SECTION_FULL, 1, "regs", 1, "abcd", &err),
                                     0);
                if (strcmp(w, "eos-no-start")) {
                    assert_int_equal(section(&d, LM_REC_SECTION_START, 2, "it2", 1, NULL, &err), 0);
                    assert_int_equal(section(&d, LM_REC_SECTION_END, 2, NULL, 0, NULL, &err), 0);
                }
                if (strcmp(w, "eos-no-switchover"))
                    assert_int_equal(lm_loadvm_switchover(&d.lv, &err), 0);
                ret = lm_loadvm_check_complete(
                    &d.lv, strcmp(w, "run-no-full") ? LM_LOADVM_AT_EOS : LM_LOADVM_AT_RUN, &err);
            } else if (!strcmp(w, "switchover-twice")) {
                assert_int_equal(lm_loadvm_switchover(&d.lv, &err), 0);
                ret = lm_loadvm_switchover(&d.lv, &err);
            } else if (!strcmp(w, "load-fails")) {
                ret = section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "FAIL", &err);
            } else if (!strcmp(w, "ack-no-feature")) {
                uint32_t id = 0;
                ret = ack_devices(&d, &id, 1, &err);
            }
        }
        if (ret >= 0 || !strstr(err.msg, cases[i].want))
            fail_msg("case %s: ret %d, message \"%s\", want \"%s\"", w, ret, err.msg,
                     cases[i].want);
        dst_close(&d);
    }
}

static void test_ack_handshake(void **state)
{
    dst d;
    lm_error err = {0};
    uint8_t type, st;
    uint32_t id;

    /* Both devices take part: the ack waits for both approvals. */
    dst_open(&d, true);
    d.f[0].ack = d.f[2].ack = true;
    assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_START, 1, "it2", 1, NULL, &err), 0);
    /* "it2" approves before the list arrives. */
    assert_int_equal(section(&d, LM_REC_SECTION_PART, 1, NULL, 0, "DONE", &err), 0);
    assert_false(rp_next(&d, &type, &id, &st));
    uint32_t ids[2] = {0, 1};
    assert_int_equal(ack_devices(&d, ids, 2, &err), 0);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_DEVICE_ACK);
    assert_int_equal(id, 1);
    assert_int_equal(st, LM_DEV_ACK_READY);
    assert_false(rp_next(&d, &type, &id, &st)); /* "it" still loading */
    assert_int_equal(section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "more", &err), 0);
    assert_false(rp_next(&d, &type, &id, &st));
    assert_int_equal(section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "DONE", &err), 0);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_DEVICE_ACK);
    assert_int_equal(id, 0);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_SWITCHOVER_ACK);
    assert_false(rp_next(&d, &type, &id, &st)); /* once */
    assert_int_equal(section(&d, LM_REC_SECTION_PART, 0, NULL, 0, "DONE", &err), 0);
    assert_false(rp_next(&d, &type, &id, &st));
    /* A second list is a protocol error. */
    assert_true(ack_devices(&d, ids, 2, &err) < 0);
    assert_err(&err, -EPROTO, "second ACK_DEVICES record");
    dst_close(&d);

    /* Only the source's device supports it: declined, ack at once. */
    dst_open(&d, true);
    assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err), 0);
    assert_int_equal(ack_devices(&d, ids, 1, &err), 0);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_DEVICE_ACK);
    assert_int_equal(st, LM_DEV_ACK_DECLINED);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_SWITCHOVER_ACK);
    lm_device_info info[3];
    lm_mig_query_devices(d.m, info, 3);
    assert_int_equal(info[0].ack, LM_DEVICE_ACK_FALLBACK);
    dst_close(&d);

    /* Only the destination's device supports it: not listed, so not
     * waited for; an empty list acks at once. */
    dst_open(&d, true);
    d.f[0].ack = true;
    assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err), 0);
    assert_int_equal(ack_devices(&d, NULL, 0, &err), 0);
    assert_true(rp_next(&d, &type, &id, &st));
    assert_int_equal(type, LM_REC_RP_SWITCHOVER_ACK);
    lm_mig_query_devices(d.m, info, 3);
    assert_int_equal(info[0].ack, LM_DEVICE_ACK_FALLBACK);
    /* A listed id that was never started is refused. */
    dst_close(&d);
    dst_open(&d, true);
    uint32_t ghost = 9;
    lm_error_clear(&err);
    assert_true(ack_devices(&d, &ghost, 1, &err) < 0);
    assert_err(&err, -EPROTO, "ACK_DEVICES: section id 9 was never started");
    dst_close(&d);

    /* Feature on but no list before EOS (everything else complete). */
    lm_error_clear(&err);
    dst_open(&d, true);
    assert_int_equal(section(&d, LM_REC_SECTION_START, 0, "it", 2, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_END, 0, NULL, 0, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_FULL, 1, "regs", 1, "abcd", &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_START, 2, "it2", 1, NULL, &err), 0);
    assert_int_equal(section(&d, LM_REC_SECTION_END, 2, NULL, 0, NULL, &err), 0);
    assert_int_equal(lm_loadvm_switchover(&d.lv, &err), 0);
    assert_true(lm_loadvm_check_complete(&d.lv, LM_LOADVM_AT_EOS, &err) < 0);
    assert_err(&err, -EPROTO, "without ACK_DEVICES");
    dst_close(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_fair_share),
        cmocka_unit_test(test_fair_share_unused_passes_on),
        cmocka_unit_test(test_greedy_first_cannot_starve),
        cmocka_unit_test(test_load_sections),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_ack_handshake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
