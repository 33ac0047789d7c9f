/*
 * guest_bulk.c - the "bulk" sample device (`--device bulk,...`): a VFIO-like
 * device with its own memory, precopy "initial data" (like VFIO's
 * precopy_init_size) that it asks the destination to load before the
 * switch (switchover-ack), its own dirty tracking, and a stop-copy size
 * from pending_exact.  ack=off plays an older device without ack support.
 *
 * Memory: 4 KiB chunks.  A written chunk starts with {u64 index | BULK_TAG,
 * u64 version} and the rest is a stream derived from both, so a lost,
 * stale or torn chunk shows up in bulk_verify; vers[] is the device's own
 * ledger (sent once, at switchover, in save_state).
 *
 * Wire data (the device's own format, inside section records): every put
 * starts with a 20-byte header {u32 magic "BULK", u32 kind, u32 flags,
 * u32 first, u32 count}:
 *   kind CONFIG   (setup): u64 size, u64 initial; the destination refuses a
 *                 different geometry;
 *   kind CHUNKS   count chunks from `first`, count * 4096 bytes;
 *   kind VERSIONS (save_state): count u64 versions from `first`.
 * flags INIT_DONE: this put completes the initial data (sent only by a
 * device with ack=on: an older device does not know the flag).
 *
 * Threads:
 *  - "guest-bulk": the device's writer (its "DMA"), paced at dirty-rate;
 *    writes a chunk, then its version, then sets its dirty bit (atomic
 *    OR), and looks at stop_req only between such steps;
 *  - the migration thread (source callbacks) clears a dirty bit (atomic
 *    AND) before copying the chunk, so a chunk written meanwhile is sent
 *    again; vers[] is read there only with the writer parked;
 *  - the incoming thread (destination callbacks) with the writer parked.
 * Locks: b->lock guards stop_req (also read atomically), parked, quit.
 * Migration-thread state (init map, cursor) is owned by the source
 * callbacks.
 */
#include "guest_bulk.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cli.h"

#define CHUNK 4096u
#define CWORDS (CHUNK / 8)
#define BULK_MAGIC 0x4b4c5542u /* "BULK" */
#define BULK_TAG (1ull << 62)
#define HDR 20
#define RUN_CHUNKS 64 /* chunks per put: 256 KiB */
#define SLICE_NS 50000000ull
#define MAX_SIZE (1ull << 30)

enum { K_CONFIG = 1, K_CHUNKS = 2, K_VERSIONS = 3 };
enum { F_INIT_DONE = 1 };

struct bulk {
    bulk_cfg cfg;
    uint32_t instance;
    uint64_t nchunks, init_chunks;
    uint8_t *mem;
    uint64_t *vers;  /* the device's ledger */
    uint64_t *dirty; /* atomic bits: written since last sent */
    uint64_t seed;

    /* source migration state (migration thread) */
    uint64_t *init_todo; /* initial chunks not sent yet in this migration */
    uint64_t init_left;
    uint64_t cursor;      /* dirty-map scan position */
    uint64_t init_cursor; /* initial data goes in order */
    uint8_t *buf;         /* one put: header + RUN_CHUNKS chunks */
    bool init_done_sent;

    /* destination (incoming thread; read by x-guest-stats: atomic) */
    bool init_loaded;

    pthread_t thread;
    bool thread_started;
    uint64_t writes; /* relaxed atomic */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    /* --- guarded by lock --- */
    bool stop_req, parked, quit;
};

/* ----------------------------------------------------------- contents */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Device memory is read by the migration thread while the writer writes
 * it, by design (dirty tracking resends what changed): both sides of that
 * race stay out of ThreadSanitizer's view, like guest RAM in guest.c. */
#define DEVICE_MEMORY_ACCESS __attribute__((no_sanitize("thread"), noinline))

static DEVICE_MEMORY_ACCESS void chunk_write(uint8_t *p, uint64_t idx, uint64_t ver)
{
    uint64_t *w = (uint64_t *)p;
    uint64_t s = mix64((idx | BULK_TAG) * 0x9E3779B97F4A7C15ull ^ mix64(ver));
    w[0] = idx | BULK_TAG;
    w[1] = ver;
    for (unsigned k = 2; k < CWORDS; k++)
        w[k] = mix64(s + k * 0x9E3779B97F4A7C15ull);
}

static DEVICE_MEMORY_ACCESS void chunk_copy(uint8_t *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
}

static bool chunk_ok(const uint8_t *p, uint64_t idx, uint64_t ver)
{
    const uint64_t *w = (const uint64_t *)p;
    if (ver == 0) {
        uint64_t acc = 0;
        for (unsigned k = 0; k < CWORDS; k++)
            acc |= w[k];
        return acc == 0;
    }
    if (w[0] != (idx | BULK_TAG) || w[1] != ver)
        return false;
    uint64_t s = mix64((idx | BULK_TAG) * 0x9E3779B97F4A7C15ull ^ mix64(ver)), diff = 0;
    for (unsigned k = 2; k < CWORDS; k++)
        diff |= w[k] ^ mix64(s + k * 0x9E3779B97F4A7C15ull);
    return diff == 0;
}

static bool bit_test(const uint64_t *b, uint64_t i)
{
    return (__atomic_load_n(&b[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

static void bit_set(uint64_t *b, uint64_t i)
{
    __atomic_fetch_or(&b[i / 64], 1ull << (i % 64), __ATOMIC_RELEASE);
}

/* Returns whether the bit was set. */
static bool bit_take(uint64_t *b, uint64_t i)
{
    uint64_t m = 1ull << (i % 64);
    return __atomic_fetch_and(&b[i / 64], ~m, __ATOMIC_ACQUIRE) & m;
}

static uint64_t bits_count(const uint64_t *b, uint64_t n)
{
    uint64_t c = 0;
    for (uint64_t i = 0; i < (n + 63) / 64; i++)
        c += (uint64_t)__builtin_popcountll(__atomic_load_n(&b[i], __ATOMIC_RELAXED));
    return c;
}

/* ------------------------------------------------------------- parsing */

bool bulk_parse(const char *spec, bulk_cfg *cfg, lm_error *err)
{
    *cfg = (bulk_cfg){
        .size = 64u << 20, .initial = 16u << 20, .dirty_rate = 1u << 20, .ack = true, .version = 1};
    char buf[512];
    if (strlen(spec) >= sizeof buf) {
        lm_error_set(err, -EINVAL, "bulk: option list too long");
        return false;
    }
    snprintf(buf, sizeof buf, "%s", spec);
    bool have_initial = false;
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *v = strchr(kv, '=');
        if (!v) {
            lm_error_set(err, -EINVAL, "bulk: '%s' is not KEY=VALUE", kv);
            return false;
        }
        *v++ = 0;
        uint64_t n;
        if (!strcmp(kv, "size") && cli_parse_size(v, &n)) {
            cfg->size = n;
        } else if (!strcmp(kv, "initial") && cli_parse_size(v, &n)) {
            cfg->initial = n;
            have_initial = true;
        } else if (!strcmp(kv, "dirty-rate") && cli_parse_size(v, &n)) {
            cfg->dirty_rate = n;
        } else if (!strcmp(kv, "ack") && (!strcmp(v, "on") || !strcmp(v, "off"))) {
            cfg->ack = !strcmp(v, "on");
        } else if (!strcmp(kv, "version") && cli_parse_u64(v, &n) && n >= 1 && n <= UINT32_MAX) {
            cfg->version = (uint32_t)n;
        } else {
            lm_error_set(err, -EINVAL,
                         "bulk: bad option '%s=%s' (size=SIZE, initial=SIZE, "
                         "dirty-rate=RATE, ack=on|off, version=N>=1)",
                         kv, v);
            return false;
        }
    }
    if (cfg->size < CHUNK || cfg->size > MAX_SIZE || cfg->size % CHUNK) {
        lm_error_set(err, -EINVAL,
                     "bulk: size %" PRIu64 " must be a multiple of 4K in "
                     "4K..1G",
                     cfg->size);
        return false;
    }
    if (!have_initial && cfg->initial > cfg->size)
        cfg->initial = cfg->size;
    if (cfg->initial > cfg->size || cfg->initial % CHUNK) {
        lm_error_set(err, -EINVAL,
                     "bulk: initial %" PRIu64 " must be a multiple of 4K and "
                     "at most size (%" PRIu64 ")",
                     cfg->initial, cfg->size);
        return false;
    }
    return true;
}

/* -------------------------------------------------------------- writer */

static void *writer_run(void *arg)
{
    bulk *b = arg;
    pthread_setname_np(pthread_self(), "guest-bulk");
    uint64_t rng = mix64(b->seed ^ 0xB01C) | 1;
    double cps = (double)b->cfg.dirty_rate / CHUNK;
    uint64_t batch = (uint64_t)(cps / 1000);
    if (batch < 1)
        batch = 1;
    uint64_t period_ns = cps > 0 ? (uint64_t)((double)batch * 1e9 / cps) : 0;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    uint64_t left = batch;

    pthread_mutex_lock(&b->lock);
    for (;;) {
        /* Park while stopped, or forever when the device does not write. */
        while (!b->quit && (b->stop_req || !period_ns)) {
            b->parked = true;
            pthread_cond_broadcast(&b->cond);
            pthread_cond_wait(&b->cond, &b->lock);
            clock_gettime(CLOCK_MONOTONIC, &deadline);
            left = batch;
        }
        b->parked = false;
        if (b->quit)
            break;
        pthread_mutex_unlock(&b->lock);
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        uint64_t c = (rng * 0x2545F4914F6CDD1Dull) % b->nchunks;
        uint64_t ver = b->vers[c] + 1;
        chunk_write(b->mem + c * CHUNK, c, ver);
        /* Atomic: save_setup reads the table while the writer runs. */
        __atomic_store_n(&b->vers[c], ver, __ATOMIC_RELAXED);
        bit_set(b->dirty, c);
        __atomic_fetch_add(&b->writes, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&b->lock);
        if (--left == 0) {
            left = batch;
            deadline.tv_nsec += (long)period_ns;
            while (deadline.tv_nsec >= 1000000000) {
                deadline.tv_nsec -= 1000000000;
                deadline.tv_sec++;
            }
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - deadline.tv_sec > 0)
                deadline = now; /* far behind: do not burst */
            /* A sleeping writer is not writing: it counts as parked. */
            b->parked = true;
            pthread_cond_broadcast(&b->cond);
            while (!b->quit && !b->stop_req &&
                   pthread_cond_timedwait(&b->cond, &b->lock, &deadline) != ETIMEDOUT)
                ;
        }
    }
    b->parked = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

void bulk_stop(bulk *b)
{
    pthread_mutex_lock(&b->lock);
    b->stop_req = true;
    pthread_cond_broadcast(&b->cond);
    while (b->thread_started && !b->parked)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
}

void bulk_start(bulk *b)
{
    pthread_mutex_lock(&b->lock);
    b->stop_req = false;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

/* ------------------------------------------------------ source callbacks */

static void put_hdr(uint8_t *p, uint32_t kind, uint32_t flags, uint32_t first, uint32_t count)
{
    uint32_t v[5] = {BULK_MAGIC, kind, flags, first, count};
    memcpy(p, v, sizeof v); /* little-endian hosts only, like the rest of livemig */
}

static int save_setup(void *opaque, lm_device_out *out, lm_error *err)
{
    bulk *b = opaque;
    size_t words = (b->nchunks + 63) / 64;
    b->init_todo = calloc(words, 8);
    b->buf = malloc(HDR + RUN_CHUNKS * CHUNK);
    if (!b->init_todo || !b->buf)
        return lm_error_set(err, -ENOMEM, "bulk: out of memory");
    for (uint64_t i = 0; i < b->init_chunks; i++)
        b->init_todo[i / 64] |= 1ull << (i % 64);
    b->init_left = b->init_chunks;
    b->cursor = 0;
    b->init_cursor = 0;
    b->init_done_sent = false;
    /* Everything the device holds must reach the destination: written
     * chunks outside the initial data are dirty from the start.  The
     * writer may run meanwhile; it only ever adds bits. */
    for (uint64_t i = b->init_chunks; i < b->nchunks; i++)
        if (__atomic_load_n(&b->vers[i], __ATOMIC_RELAXED))
            bit_set(b->dirty, i);
    uint8_t p[HDR + 16];
    uint32_t flags = 0;
    if (b->cfg.ack && b->init_left == 0) {
        flags |= F_INIT_DONE;
        b->init_done_sent = true;
    }
    put_hdr(p, K_CONFIG, flags, 0, 0);
    memcpy(p + HDR, &b->cfg.size, 8);
    memcpy(p + HDR + 8, &b->cfg.initial, 8);
    return lm_device_put(out, p, sizeof p, err);
}

/* Sends one run of chunks starting at c taken from `map` (the initial-data
 * map or the dirty map).  Returns bytes put, or < 0. */
static int64_t send_run(bulk *b, lm_device_out *out, uint64_t *map, bool initial, uint64_t c,
                        lm_error *err)
{
    uint64_t n = 0;
    while (c + n < b->nchunks && n < RUN_CHUNKS && bit_test(map, c + n)) {
        if (initial) {
            map[(c + n) / 64] &= ~(1ull << ((c + n) % 64));
            b->init_left--;
            bit_take(b->dirty, c + n); /* sent now: no need to send it again */
        } else {
            bit_take(map, c + n);
        }
        chunk_copy(b->buf + HDR + n * CHUNK, b->mem + (c + n) * CHUNK, CHUNK);
        n++;
    }
    uint32_t flags = 0;
    if (initial && b->init_left == 0 && b->cfg.ack && !b->init_done_sent) {
        flags |= F_INIT_DONE;
        b->init_done_sent = true;
    }
    put_hdr(b->buf, K_CHUNKS, flags, (uint32_t)c, (uint32_t)n);
    int ret = lm_device_put(out, b->buf, HDR + n * CHUNK, err);
    return ret < 0 ? ret : (int64_t)(HDR + n * CHUNK);
}

/* Initial data first, in order (what the destination must load before
 * the switch), then whatever the writer dirtied, one pass at most. */
static int send_some(bulk *b, lm_device_out *out, uint64_t budget, bool timed, lm_error *err)
{
    uint64_t sent = 0, t0 = cli_now_ms();
    while (b->init_left && sent < budget) {
        while (b->init_cursor < b->init_chunks && !bit_test(b->init_todo, b->init_cursor))
            b->init_cursor++;
        int64_t r = send_run(b, out, b->init_todo, true, b->init_cursor, err);
        if (r < 0)
            return (int)r;
        sent += (uint64_t)r;
        b->init_cursor += ((uint64_t)r - HDR) / CHUNK;
        if (timed && (cli_now_ms() - t0) * 1000000ull > SLICE_NS)
            return 0;
    }
    for (uint64_t scanned = 0; scanned < b->nchunks && sent < budget;) {
        uint64_t c = b->cursor;
        if (!bit_test(b->dirty, c)) {
            b->cursor = (c + 1) % b->nchunks;
            scanned++;
            continue;
        }
        int64_t r = send_run(b, out, b->dirty, false, c, err);
        if (r < 0)
            return (int)r;
        sent += (uint64_t)r;
        uint64_t n = ((uint64_t)r - HDR) / CHUNK;
        b->cursor = (c + n) % b->nchunks;
        scanned += n;
        if (timed && (cli_now_ms() - t0) * 1000000ull > SLICE_NS)
            break;
    }
    return b->init_left == 0 && bits_count(b->dirty, b->nchunks) == 0;
}

static int save_iterate(void *opaque, lm_device_out *out, uint64_t budget, lm_error *err)
{
    /* Even a tiny share sends one run: progress under any bandwidth. */
    return send_some(opaque, out, budget ? budget : 1, true, err);
}

static void pending_estimate(void *opaque, uint64_t *must, uint64_t *can)
{
    bulk *b = opaque;
    (void)can;
    *must += (b->init_left + bits_count(b->dirty, b->nchunks)) * CHUNK;
}

/* The stop-copy size (VFIO asks the kernel): what is left plus the
 * version table that save_state sends. */
static int pending_exact(void *opaque, uint64_t *must, uint64_t *can, lm_error *err)
{
    bulk *b = opaque;
    (void)can;
    (void)err;
    *must += (b->init_left + bits_count(b->dirty, b->nchunks)) * CHUNK + HDR + b->nchunks * 8;
    return 0;
}

static int save_complete(void *opaque, lm_device_out *out, lm_error *err)
{
    bulk *b = opaque;
    for (;;) {
        int r = send_some(b, out, UINT64_MAX, false, err);
        if (r < 0)
            return r;
        if (r == 1)
            return 0;
    }
}

/* The device's ledger, once, with the device stopped. */
static int save_state(void *opaque, lm_device_out *out, lm_error *err)
{
    bulk *b = opaque;
    size_t len = HDR + b->nchunks * 8;
    uint8_t *p = malloc(len);
    if (!p)
        return lm_error_set(err, -ENOMEM, "bulk: out of memory");
    put_hdr(p, K_VERSIONS, 0, 0, (uint32_t)b->nchunks);
    memcpy(p + HDR, b->vers, b->nchunks * 8);
    int ret = lm_device_put(out, p, len, err);
    free(p);
    return ret;
}

static void save_cleanup(void *opaque)
{
    bulk *b = opaque;
    free(b->init_todo);
    free(b->buf);
    b->init_todo = NULL;
    b->buf = NULL;
}

static bool ack_needed(void *opaque)
{
    return ((bulk *)opaque)->cfg.ack;
}

/* ------------------------------------------------- destination callbacks */

static int load_setup(void *opaque, lm_error *err)
{
    bulk *b = opaque;
    (void)err;
    /* A previous, failed stream may have left chunks behind. */
    memset(b->mem, 0, b->cfg.size);
    memset(b->vers, 0, b->nchunks * 8);
    __atomic_store_n(&b->init_loaded, false, __ATOMIC_RELAXED);
    return 0;
}

static int load_state(void *opaque, uint32_t version, const uint8_t *d, size_t len, lm_error *err)
{
    bulk *b = opaque;
    (void)version; /* versions 1..N share this format */
    uint32_t h[5];
    if (len < HDR)
        return lm_error_set(err, -EPROTO, "bulk: record of %zu bytes, header needs %d", len, HDR);
    memcpy(h, d, HDR);
    if (h[0] != BULK_MAGIC)
        return lm_error_set(err, -EPROTO, "bulk: bad magic 0x%08x", h[0]);
    if (h[2] & ~(uint32_t)F_INIT_DONE)
        return lm_error_set(err, -EPROTO, "bulk: unknown flags 0x%x", h[2]);
    uint64_t first = h[3], count = h[4];
    d += HDR;
    len -= HDR;
    switch (h[1]) {
    case K_CONFIG: {
        uint64_t size, initial;
        if (len != 16)
            return lm_error_set(err, -EPROTO, "bulk: CONFIG of %zu bytes", len);
        memcpy(&size, d, 8);
        memcpy(&initial, d + 8, 8);
        if (size != b->cfg.size)
            return lm_error_set(err, -EINVAL,
                                "the source device has %" PRIu64
                                " bytes of memory, this one %" PRIu64,
                                size, b->cfg.size);
        break;
    }
    case K_CHUNKS:
        if (first > b->nchunks || count > b->nchunks - first)
            return lm_error_set(err, -EPROTO,
                                "bulk: chunks %" PRIu64 "+%" PRIu64 " past the end (%" PRIu64
                                " chunks)",
                                first, count, b->nchunks);
        if (len != count * CHUNK)
            return lm_error_set(err, -EPROTO, "bulk: %" PRIu64 " chunks in %zu bytes", count, len);
        memcpy(b->mem + first * CHUNK, d, len);
        break;
    case K_VERSIONS:
        if (first != 0 || count != b->nchunks || len != count * 8)
            return lm_error_set(err, -EPROTO,
                                "bulk: version table %" PRIu64 "+%" PRIu64
                                " in %zu bytes, want %" PRIu64 " entries",
                                first, count, len, b->nchunks);
        memcpy(b->vers, d, len);
        break;
    default:
        return lm_error_set(err, -EPROTO, "bulk: unknown record kind %u", h[1]);
    }
    /* An older destination device (ack=off) does not know the flag and
     * never approves: its peer falls back (docs/devices.md). */
    if ((h[2] & F_INIT_DONE) && b->cfg.ack) {
        __atomic_store_n(&b->init_loaded, true, __ATOMIC_RELAXED);
        return LM_DEVICE_LOAD_READY;
    }
    return 0;
}

static const lm_device_ops bulk_ops = {
    .save_setup = save_setup,
    .save_iterate = save_iterate,
    .pending_estimate = pending_estimate,
    .pending_exact = pending_exact,
    .save_complete = save_complete,
    .save_state = save_state,
    .save_cleanup = save_cleanup,
    .load_setup = load_setup,
    .load_state = load_state,
    .switchover_ack_needed = ack_needed,
};

/* ----------------------------------------------------------- lifecycle */

int bulk_new(const bulk_cfg *cfg, uint32_t instance, bool incoming, uint64_t seed, bulk **out,
             lm_error *err)
{
    bulk *b = calloc(1, sizeof *b);
    if (!b)
        return lm_error_set(err, -ENOMEM, "bulk: out of memory");
    b->cfg = *cfg;
    b->instance = instance;
    b->seed = seed ^ (uint64_t)instance * 0x9E3779B97F4A7C15ull;
    b->nchunks = cfg->size / CHUNK;
    b->init_chunks = cfg->initial / CHUNK;
    b->mem = mmap(NULL, cfg->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    b->vers = calloc(b->nchunks, 8);
    b->dirty = calloc((b->nchunks + 63) / 64, 8);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (b->mem == MAP_FAILED) {
        b->mem = NULL;
        bulk_free(b);
        return lm_error_set(err, -ENOMEM, "bulk: cannot map %" PRIu64 " bytes", cfg->size);
    }
    if (!b->vers || !b->dirty) {
        bulk_free(b);
        return lm_error_set(err, -ENOMEM, "bulk: out of memory");
    }
    if (!incoming) {
        for (uint64_t i = 0; i < b->init_chunks; i++) {
            chunk_write(b->mem + i * CHUNK, i, 1);
            b->vers[i] = 1;
        }
    }
    b->stop_req = incoming;
    int e = pthread_create(&b->thread, NULL, writer_run, b);
    if (e) {
        bulk_free(b);
        return lm_error_set(err, -e, "bulk: cannot start its thread");
    }
    b->thread_started = true;
    *out = b;
    return 0;
}

int bulk_register(bulk *b, lm_mig *m, lm_error *err)
{
    return lm_device_register(m, "bulk", b->instance, b->cfg.version, &bulk_ops, b, err);
}

void bulk_free(bulk *b)
{
    if (!b)
        return;
    if (b->thread_started) {
        pthread_mutex_lock(&b->lock);
        b->quit = true;
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->lock);
        pthread_join(b->thread, NULL);
    }
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    if (b->mem)
        munmap(b->mem, b->cfg.size);
    free(b->vers);
    free(b->dirty);
    free(b->init_todo);
    free(b->buf);
    free(b);
}

bool bulk_verify(bulk *b, uint64_t *bad, int64_t *first_bad)
{
    *bad = 0;
    *first_bad = -1;
    pthread_mutex_lock(&b->lock); /* orders us after the parked writer */
    for (uint64_t i = 0; i < b->nchunks; i++)
        if (!chunk_ok(b->mem + i * CHUNK, i, b->vers[i])) {
            if (!*bad)
                *first_bad = (int64_t)i;
            (*bad)++;
        }
    pthread_mutex_unlock(&b->lock);
    return *bad == 0;
}

uint64_t bulk_writes(bulk *b)
{
    return __atomic_load_n(&b->writes, __ATOMIC_RELAXED);
}

bool bulk_initial_loaded(bulk *b)
{
    return __atomic_load_n(&b->init_loaded, __ATOMIC_RELAXED);
}

const bulk_cfg *bulk_config(bulk *b)
{
    return &b->cfg;
}
