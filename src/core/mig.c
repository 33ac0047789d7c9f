/*
 * mig.c - the migration object: creation, RAM registration, capabilities
 * and parameters, events, run state, query-migrate, cancel.
 *
 * Threads: every public function here may be called from any thread (the
 * host, "lm-qmp"); none blocks on migration I/O.  Locking is described in
 * core/internal.h: m->lock for the shared fields, m->run_lock around the
 * host's stop/start hooks.
 */
#include "core/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- bitmaps */

uint64_t lm_bitmap_next_set(const uint64_t *b, uint64_t nbits, uint64_t from)
{
    if (from >= nbits)
        return nbits;
    uint64_t w = from / 64;
    uint64_t word = b[w] & (~0ull << (from % 64));
    uint64_t nw = lm_bitmap_words(nbits);
    for (;;) {
        if (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            return i < nbits ? i : nbits;
        }
        if (++w >= nw)
            return nbits;
        word = b[w];
    }
}

uint64_t lm_bitmap_next_clear(const uint64_t *b, uint64_t nbits, uint64_t from)
{
    if (from >= nbits)
        return nbits;
    uint64_t w = from / 64;
    uint64_t word = ~b[w] & (~0ull << (from % 64));
    uint64_t nw = lm_bitmap_words(nbits);
    for (;;) {
        if (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            return i < nbits ? i : nbits;
        }
        if (++w >= nw)
            return nbits;
        word = ~b[w];
    }
}

uint64_t lm_bitmap_count(const uint64_t *b, uint64_t nbits)
{
    uint64_t n = 0, nw = nbits / 64;
    for (uint64_t w = 0; w < nw; w++)
        n += (uint64_t)__builtin_popcountll(b[w]);
    if (nbits % 64)
        n += (uint64_t)__builtin_popcountll(b[nw] & ((1ull << (nbits % 64)) - 1));
    return n;
}

/* ----------------------------------------------------------------- object */

int lm_mig_new(const lm_host_ops *ops, void *opaque, lm_runstate initial, lm_mig **out,
               lm_error *err)
{
    if (!ops || !ops->stop || !ops->start)
        return lm_error_set(err, -EINVAL, "host ops need both stop and start hooks");
    if (initial != LM_RUN_RUNNING && initial != LM_RUN_INMIGRATE && initial != LM_RUN_PAUSED)
        return lm_error_set(err, -EINVAL, "initial run state must be running, paused or "
                                          "inmigrate");
    lm_mig *m = calloc(1, sizeof *m);
    if (!m)
        return lm_error_set(err, -ENOMEM, "out of memory");
    m->ops = *ops;
    m->host = opaque;
    m->runstate = initial;
    m->status = LM_STATUS_NONE;
    m->connect_fd = -1;
    m->listen_fd = -1;
    lm_params_default(&m->params);
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->emit_lock, NULL);
    pthread_mutex_init(&m->run_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&m->ram_lock, NULL);
    lm_postcopy_init(m);
    *out = m;
    return 0;
}

bool lm_mig_aux_chan_add(lm_mig *m, lm_chan *c)
{
    pthread_mutex_lock(&m->lock);
    bool ok = !m->cancel_requested && m->naux_chans < LM_MULTIFD_MAX_CHANNELS;
    if (ok)
        m->aux_chans[m->naux_chans++] = c;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

void lm_mig_aux_chans_clear(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    m->naux_chans = 0;
    pthread_mutex_unlock(&m->lock);
}

/* Joins whichever thread runs a migration, after shutting its I/O down. */
static void stop_threads(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    m->cancel_requested = true;
    if (m->chan)
        lm_chan_shutdown(m->chan, "migration object freed");
    for (unsigned i = 0; i < m->naux_chans; i++)
        lm_chan_shutdown(m->aux_chans[i], "migration object freed");
    if (m->connect_fd >= 0)
        shutdown(m->connect_fd, SHUT_RDWR);
    if (m->listen_fd >= 0)
        shutdown(m->listen_fd, SHUT_RDWR);
    pthread_cond_broadcast(&m->cond);
    bool running = m->thread_running;
    pthread_t t = m->thread;
    m->thread_running = false;
    pthread_mutex_unlock(&m->lock);
    if (running)
        pthread_join(t, NULL);
}

void lm_mig_free(lm_mig *m)
{
    if (!m)
        return;
    stop_threads(m);
    lm_postcopy_destroy(m);
    lm_ram_prefault_stop(m);
    lm_ram_save_cleanup(m);
    for (unsigned i = 0; i < m->nblocks; i++) {
        free(m->blocks[i].received);
        free(m->blocks[i].prefaulted);
    }
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->emit_lock);
    pthread_mutex_destroy(&m->run_lock);
    pthread_mutex_destroy(&m->ram_lock);
    free(m);
}

static bool name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > LM_RAM_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 0x21 || name[i] > 0x7e)
            return false;
    return true;
}

int lm_ram_add(lm_mig *m, const char *name, void *base, uint64_t len, uint32_t page_size,
               lm_error *err)
{
    if (!name_ok(name))
        return lm_error_set(err, -EINVAL, "RAM block name must be 1..%d printable characters",
                            LM_RAM_NAME_MAX);
    if (page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EINVAL, "RAM block '%s': page size %u not supported (4096)",
                            name, page_size);
    if (!base || ((uintptr_t)base % page_size) || !len || (len % page_size))
        return lm_error_set(err, -EINVAL, "RAM block '%s': base and length must be non-zero "
                                          "multiples of the page size",
                            name);
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (m->ram_frozen || lm_status_is_active(m->status)) {
        ret = lm_error_set(err, -EBUSY, "RAM block '%s': cannot add RAM once a migration "
                                        "has started",
                           name);
        goto out;
    }
    if (m->nblocks >= LM_RAM_MAX_BLOCKS) {
        ret = lm_error_set(err, -ENOSPC, "too many RAM blocks (max %d)", LM_RAM_MAX_BLOCKS);
        goto out;
    }
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        if (strcmp(b->name, name) == 0) {
            ret = lm_error_set(err, -EEXIST, "RAM block '%s' already registered", name);
            goto out;
        }
        uint8_t *p = base;
        if (p < b->base + b->len && b->base < p + len) {
            ret = lm_error_set(err, -EINVAL, "RAM block '%s' overlaps block '%s'", name,
                               b->name);
            goto out;
        }
    }
    lm_ram_block *b = &m->blocks[m->nblocks];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->base = base;
    b->len = len;
    b->page_size = page_size;
    b->npages = len / page_size;
    m->nblocks++;
out:
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int lm_mig_add_listener(lm_mig *m, lm_event_fn fn, void *opaque, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (m->nlisteners >= LM_MAX_LISTENERS) {
        ret = lm_error_set(err, -ENOSPC, "too many event listeners");
    } else {
        m->listeners[m->nlisteners].fn = fn;
        m->listeners[m->nlisteners].opaque = opaque;
        m->nlisteners++;
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int lm_mig_remove_listener(lm_mig *m, lm_event_fn fn, void *opaque)
{
    int ret = -ENOENT;
    /* Under emit_lock: no call of this listener is in flight afterwards. */
    pthread_mutex_lock(&m->emit_lock);
    pthread_mutex_lock(&m->lock);
    for (unsigned i = 0; i < m->nlisteners; i++) {
        if (m->listeners[i].fn == fn && m->listeners[i].opaque == opaque) {
            memmove(&m->listeners[i], &m->listeners[i + 1],
                    (m->nlisteners - i - 1) * sizeof m->listeners[0]);
            m->nlisteners--;
            ret = 0;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&m->emit_lock);
    return ret;
}

/* ----------------------------------------------------------------- events */

/* Calls the listeners; emit_lock held by the caller. */
static void deliver(lm_mig *m, const lm_event *ev_in)
{
    lm_event ev = *ev_in;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    ev.ts_sec = tv.tv_sec;
    ev.ts_usec = tv.tv_usec;
    /* Copy the listener list so callbacks run without m->lock. */
    struct {
        lm_event_fn fn;
        void *opaque;
    } l[LM_MAX_LISTENERS];
    pthread_mutex_lock(&m->lock);
    unsigned n = m->nlisteners;
    memcpy(l, m->listeners, sizeof l);
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < n; i++)
        l[i].fn(l[i].opaque, &ev);
}

/* Delivers queued MIGRATION events in order; emit_lock held. */
static void drain_status(lm_mig *m)
{
    for (;;) {
        pthread_mutex_lock(&m->lock);
        bool have = m->ev_head != m->ev_tail;
        lm_status s = have ? m->ev_ring[m->ev_head++ % 32] : LM_STATUS_NONE;
        pthread_mutex_unlock(&m->lock);
        if (!have)
            return;
        lm_event ev = {.type = LM_EVENT_MIGRATION, .status = s};
        deliver(m, &ev);
    }
}

void lm_emit(lm_mig *m, const lm_event *ev)
{
    pthread_mutex_lock(&m->emit_lock);
    drain_status(m); /* status changes that happened before come first */
    deliver(m, ev);
    pthread_mutex_unlock(&m->emit_lock);
}

static bool events_on(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    bool on = m->caps & (1ull << LM_CAP_EVENTS);
    pthread_mutex_unlock(&m->lock);
    return on;
}

void lm_emit_status(lm_mig *m, lm_status s)
{
    (void)s; /* the queue holds the statuses, in the order they were set */
    pthread_mutex_lock(&m->emit_lock);
    drain_status(m);
    pthread_mutex_unlock(&m->emit_lock);
}

void lm_emit_pass(lm_mig *m, uint64_t pass)
{
    if (!events_on(m))
        return;
    lm_event ev = {.type = LM_EVENT_MIGRATION_PASS, .pass = pass};
    lm_emit(m, &ev);
}

void lm_mig_set_error(lm_mig *m, const lm_error *err)
{
    pthread_mutex_lock(&m->lock);
    if (!m->error.code && err && err->code)
        m->error = *err;
    pthread_mutex_unlock(&m->lock);
}

/* ---------------------------------------------------------- run state */

void lm_runstate_set(lm_mig *m, lm_runstate r)
{
    __atomic_store_n(&m->runstate, r, __ATOMIC_RELEASE);
}

lm_runstate lm_vm_runstate(lm_mig *m)
{
    return __atomic_load_n(&m->runstate, __ATOMIC_ACQUIRE);
}

bool lm_vm_stop_for_migration(lm_mig *m, lm_runstate to)
{
    pthread_mutex_lock(&m->run_lock);
    bool was_running = lm_vm_runstate(m) == LM_RUN_RUNNING;
    if (was_running)
        m->ops.stop(m->host);
    lm_runstate_set(m, to);
    pthread_mutex_unlock(&m->run_lock);
    if (was_running) {
        lm_event ev = {.type = LM_EVENT_STOP};
        lm_emit(m, &ev);
    }
    return was_running;
}

void lm_vm_start_after_migration(lm_mig *m, lm_runstate to)
{
    pthread_mutex_lock(&m->run_lock);
    bool start = to == LM_RUN_RUNNING && lm_vm_runstate(m) != LM_RUN_RUNNING;
    if (start)
        m->ops.start(m->host);
    lm_runstate_set(m, to);
    pthread_mutex_unlock(&m->run_lock);
    if (start) {
        lm_event ev = {.type = LM_EVENT_RESUME};
        lm_emit(m, &ev);
    }
}

int lm_vm_stop(lm_mig *m, lm_error *err)
{
    pthread_mutex_lock(&m->run_lock);
    lm_runstate r = lm_vm_runstate(m);
    bool stop = r == LM_RUN_RUNNING;
    if (stop) {
        m->ops.stop(m->host);
        lm_runstate_set(m, LM_RUN_PAUSED);
    }
    pthread_mutex_unlock(&m->run_lock);
    if (stop) {
        lm_event ev = {.type = LM_EVENT_STOP};
        lm_emit(m, &ev);
    }
    return 0;
}

int lm_vm_cont(lm_mig *m, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->run_lock);
    lm_runstate r = lm_vm_runstate(m);
    if (r == LM_RUN_INMIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is waiting for an incoming migration");
    } else if (r == LM_RUN_FINISH_MIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is being migrated (switchover in progress)");
    } else if (r != LM_RUN_RUNNING) {
        m->ops.start(m->host);
        lm_runstate_set(m, LM_RUN_RUNNING);
    } else {
        r = LM_RUN_RUNNING; /* already running: no event */
    }
    pthread_mutex_unlock(&m->run_lock);
    if (!ret && r != LM_RUN_RUNNING) {
        lm_event ev = {.type = LM_EVENT_RESUME};
        lm_emit(m, &ev);
    }
    return ret;
}

/* ------------------------------------------------- capabilities, params */

int lm_mig_set_capabilities(lm_mig *m, uint64_t mask, uint64_t values, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    /* As QEMU: refused while an outgoing migration runs; a destination that
     * is still waiting for its stream (setup) may change them. */
    if (lm_status_is_active(m->status) &&
        !(m->role == LM_ROLE_DEST && m->status == LM_STATUS_SETUP)) {
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
        goto out;
    }
    uint64_t next = (m->caps & ~mask) | (values & mask);
    ret = lm_caps_check(next, err);
    /* As QEMU (postcopy_ram_supported_by_host): turning postcopy-ram on
     * probes userfaultfd, so a host without it is refused now, not at the
     * switch when the guest is already stopped. */
    if (ret == 0 && (next & (1ull << LM_CAP_POSTCOPY_RAM)) &&
        !(m->caps & (1ull << LM_CAP_POSTCOPY_RAM))) {
        ret = lm_postcopy_probe(err);
        if (ret < 0)
            lm_error_prefix(err, "capability 'postcopy-ram'");
    }
    if (ret == 0)
        m->caps = next;
out:
    pthread_mutex_unlock(&m->lock);
    return ret;
}

uint64_t lm_mig_get_capabilities(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t c = m->caps;
    pthread_mutex_unlock(&m->lock);
    return c;
}

int lm_mig_set_params(lm_mig *m, const lm_params *in, uint64_t which, lm_error *err)
{
    int ret = lm_params_check(in, which, err);
    if (ret)
        return ret;
    pthread_mutex_lock(&m->lock);
    lm_params *p = &m->params;
#define TAKE(bit, field)                                                                       \
    if (which & (1ull << (bit)))                                                               \
        p->field = in->field;
    TAKE(LM_PARAM_MAX_BANDWIDTH, max_bandwidth);
    TAKE(LM_PARAM_AVAIL_SWITCHOVER_BANDWIDTH, avail_switchover_bandwidth);
    TAKE(LM_PARAM_DOWNTIME_LIMIT, downtime_limit);
    TAKE(LM_PARAM_MAX_POSTCOPY_BANDWIDTH, max_postcopy_bandwidth);
    TAKE(LM_PARAM_MULTIFD_CHANNELS, multifd_channels);
    TAKE(LM_PARAM_MULTIFD_COMPRESSION, multifd_compression);
    TAKE(LM_PARAM_MULTIFD_ZLIB_LEVEL, multifd_zlib_level);
    TAKE(LM_PARAM_MULTIFD_ZSTD_LEVEL, multifd_zstd_level);
    TAKE(LM_PARAM_ZERO_PAGE_DETECTION, zero_page_detection);
    TAKE(LM_PARAM_XBZRLE_CACHE_SIZE, xbzrle_cache_size);
    TAKE(LM_PARAM_THROTTLE_TRIGGER_THRESHOLD, throttle_trigger_threshold);
    TAKE(LM_PARAM_CPU_THROTTLE_INITIAL, cpu_throttle_initial);
    TAKE(LM_PARAM_CPU_THROTTLE_INCREMENT, cpu_throttle_increment);
    TAKE(LM_PARAM_CPU_THROTTLE_TAILSLOW, cpu_throttle_tailslow);
    TAKE(LM_PARAM_MAX_CPU_THROTTLE, max_cpu_throttle);
    TAKE(LM_PARAM_ANNOUNCE_INITIAL, announce_initial);
    TAKE(LM_PARAM_ANNOUNCE_MAX, announce_max);
    TAKE(LM_PARAM_ANNOUNCE_ROUNDS, announce_rounds);
    TAKE(LM_PARAM_ANNOUNCE_STEP, announce_step);
#undef TAKE
    /* A running migration thread picks these up at once (it waits on
     * cond between rate windows). */
    m->params_gen++;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void lm_mig_get_params(lm_mig *m, lm_params *out)
{
    pthread_mutex_lock(&m->lock);
    *out = m->params;
    pthread_mutex_unlock(&m->lock);
}

/* ---------------------------------------------------------- commands */

int lm_mig_start(lm_mig *m, const char *uri, bool resume, lm_error *err)
{
    if (resume)
        return lm_error_set(err, -ENOTSUP, "migrate: 'resume' (postcopy recovery) is not "
                                           "supported yet");
    if (!uri)
        return lm_error_set(err, -EINVAL, "migrate: missing 'uri'");
    return lm_outgoing_start(m, uri, err);
}

int lm_mig_incoming(lm_mig *m, const char *uri, lm_error *err)
{
    if (!uri)
        return lm_error_set(err, -EINVAL, "migrate-incoming: missing 'uri'");
    return lm_incoming_start(m, uri, err);
}

int lm_mig_cancel(lm_mig *m, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    lm_status s = m->status;
    if (lm_status_is_postcopy(s)) {
        ret = lm_error_set(err, -EBUSY, "Postcopy is already started: cancel is refused "
                                        "(use migrate-pause)");
        pthread_mutex_unlock(&m->lock);
        return ret;
    }
    if (!lm_status_is_active(s) || s == LM_STATUS_CANCELLING) {
        pthread_mutex_unlock(&m->lock);
        return 0; /* nothing to cancel: a no-op, like QEMU */
    }
    m->cancel_requested = true;
    /* Once the end of stream went out the destination may already run the
     * guest.  Cancelling then cannot safely resume the source: the channel
     * is shut down, the migration fails and the source stays paused
     * (outgoing.c), so the guest never runs twice. */
    bool changed = !m->eos_sent && lm_state_set_locked(m, s, LM_STATUS_CANCELLING);
    if (m->chan)
        lm_chan_shutdown(m->chan, "migration cancelled");
    for (unsigned i = 0; i < m->naux_chans; i++)
        lm_chan_shutdown(m->aux_chans[i], "migration cancelled");
    if (m->connect_fd >= 0)
        shutdown(m->connect_fd, SHUT_RDWR);
    if (m->listen_fd >= 0)
        shutdown(m->listen_fd, SHUT_RDWR);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m, LM_STATUS_CANCELLING);
    return 0;
}

int lm_mig_continue(lm_mig *m, lm_status state, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (m->status != state) {
        ret = lm_error_set(err, -EINVAL, "Migration not in expected state: %s",
                           lm_status_name(m->status));
    } else if (state != LM_STATUS_PRE_SWITCHOVER) {
        ret = lm_error_set(err, -EINVAL, "migrate-continue: cannot continue from state '%s'",
                           lm_status_name(state));
    } else {
        m->continue_requested = true;
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int lm_mig_start_postcopy(lm_mig *m, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (!(m->caps & (1ull << LM_CAP_POSTCOPY_RAM)))
        ret = lm_error_set(err, -EINVAL, "Enable postcopy with migrate_set_capability before "
                                         "the start of migration");
    else if (m->role != LM_ROLE_SOURCE || (m->status != LM_STATUS_SETUP &&
                                           m->status != LM_STATUS_ACTIVE))
        ret = lm_error_set(err, -EINVAL, "Postcopy must be started after migration has been "
                                         "started (status '%s')", lm_status_name(m->status));
    else
        m->start_postcopy = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return ret;
}

/* ------------------------------------------------------------- query */

void lm_mig_query(lm_mig *m, lm_info *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&m->lock);
    out->status = m->status;
    lm_role role = m->role;
    snprintf(out->error_desc, sizeof out->error_desc, "%s", m->error.code ? m->error.msg : "");
    snprintf(out->socket_address, sizeof out->socket_address, "%s", m->socket_address);
    uint64_t total = 0;
    for (unsigned i = 0; i < m->nblocks; i++)
        total += m->blocks[i].len;
    pthread_mutex_unlock(&m->lock);

    lm_stats *st = &m->stats;
    uint64_t start = LM_ATOMIC_GET(&st->start_ns), end = LM_ATOMIC_GET(&st->end_ns);
    out->total_time = -1;
    if (out->status != LM_STATUS_NONE && start)
        out->total_time = (int64_t)(((end ? end : lm_now_ns()) - start) / 1000000);
    out->setup_time = (int64_t)LM_ATOMIC_GET(&st->setup_time_ms);
    out->downtime = -1;
    out->expected_downtime = -1;
    out->page_size = LM_PAGE_SIZE;
    out->total = total;
    if (role == LM_ROLE_DEST)
        lm_postcopy_query(m, out);
    if (role != LM_ROLE_SOURCE)
        return;
    out->has_ram = out->status != LM_STATUS_NONE;
    out->transferred = LM_ATOMIC_GET(&st->transferred);
    out->remaining = LM_ATOMIC_GET(&st->remaining);
    out->duplicate = LM_ATOMIC_GET(&st->duplicate);
    out->normal = LM_ATOMIC_GET(&st->normal);
    out->normal_bytes = out->normal * LM_PAGE_SIZE;
    out->dirty_pages_rate = LM_ATOMIC_GET(&st->dirty_pages_rate);
    out->mbps = (double)LM_ATOMIC_GET(&st->mbps_x1000) / 1000.0;
    out->dirty_sync_count = LM_ATOMIC_GET(&st->dirty_sync_count);
    out->postcopy_requests = LM_ATOMIC_GET(&st->postcopy_requests);
    out->pages_per_second = LM_ATOMIC_GET(&st->pages_per_second);
    out->precopy_bytes = LM_ATOMIC_GET(&st->precopy_bytes);
    out->downtime_bytes = LM_ATOMIC_GET(&st->downtime_bytes);
    out->postcopy_bytes = LM_ATOMIC_GET(&st->postcopy_bytes);
    out->bandwidth = LM_ATOMIC_GET(&st->bandwidth);
    out->multifd_bytes = LM_ATOMIC_GET(&st->multifd_bytes);
    out->multifd_channels = LM_ATOMIC_GET(&st->mfd_channels);
    for (unsigned i = 0; i < out->multifd_channels && i < LM_MULTIFD_MAX_CHANNELS; i++) {
        out->multifd_chan[i].bytes = LM_ATOMIC_GET(&st->mfd_chan[i].bytes);
        out->multifd_chan[i].normal = LM_ATOMIC_GET(&st->mfd_chan[i].normal);
        out->multifd_chan[i].zero = LM_ATOMIC_GET(&st->mfd_chan[i].zero);
    }
    uint64_t dt = LM_ATOMIC_GET(&st->downtime_us);
    /* Unlike QEMU, the last expected-downtime stays visible once completed:
     * it is the prediction made at the switchover decision, to be compared
     * with the downtime that actually happened. */
    if (out->status == LM_STATUS_COMPLETED) {
        out->downtime = (int64_t)((dt + 500) / 1000);
        out->downtime_us = dt;
    }
    out->switch_pause_us = LM_ATOMIC_GET(&st->switch_pause_us);
    if (out->status != LM_STATUS_SETUP)
        out->expected_downtime = LM_ATOMIC_GET(&st->expected_downtime_ms);
}
