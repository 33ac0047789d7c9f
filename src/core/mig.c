/*
 * mig.c - the migration object: creation and teardown, registration of RAM
 * and devices, capabilities and parameters, and the commands (migrate,
 * migrate-incoming, cancel, continue, start-postcopy).  Events are in
 * events.c, the run state in runstate.c, query-migrate in query.c.
 *
 * Threads: every public function here may be called from any thread (the
 * host, "lm-qmp"); none blocks on migration I/O: each takes at most
 * m->lock, which nobody holds across I/O (internal.h).
 */
#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static void ram_pass_hook(void *opaque, uint64_t pass)
{
    lm_emit_pass(opaque, pass);
}

static void pc_wake(void *opaque)
{
    lm_mig *m = opaque;
    pthread_mutex_lock(&m->lock);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Postcopy's link is gone (a silent or broken channel, migrate-pause):
 * every channel gets the reason as its error and is shut down, so each
 * thread blocked on one returns and the side pauses (outgoing.c,
 * incoming.c).  Any thread that holds no lock (it takes m->lock, then
 * the channels' leaf locks). */
static void link_down_locked(lm_mig *m, int code, const char *why)
{
    if (m->chan) {
        lm_chan_set_error(m->chan, code, why);
        lm_chan_shutdown(m->chan, why);
    }
    for (unsigned i = 0; i < m->naux_chans; i++) {
        lm_chan_set_error(m->aux_chans[i], code, why);
        lm_chan_shutdown(m->aux_chans[i], why);
    }
    pthread_cond_broadcast(&m->cond);
}

void lm_mig_link_down(lm_mig *m, int code, const char *why)
{
    pthread_mutex_lock(&m->lock);
    link_down_locked(m, code, why);
    pthread_mutex_unlock(&m->lock);
}

static void pc_link_down(void *opaque, int code, const char *why)
{
    lm_mig_link_down(opaque, code, why);
}

/* What the destination's silence watchdog counts (postcopy.h): bytes read
 * on the main channel and on every auxiliary one (preempt, multifd), under
 * m->lock, which keeps them from being freed (finish clears aux_chans
 * before it frees). */
static uint64_t pc_link_bytes(void *opaque)
{
    lm_mig *m = opaque;
    uint64_t n = 0;
    pthread_mutex_lock(&m->lock);
    if (m->chan)
        n += lm_chan_bytes_read(m->chan);
    for (unsigned i = 0; i < m->naux_chans; i++)
        n += lm_chan_bytes_read(m->aux_chans[i]);
    pthread_mutex_unlock(&m->lock);
    return n;
}

int lm_mig_new(const lm_host_ops *ops, void *opaque, lm_runstate initial, lm_mig **out,
               lm_error *err)
{
    if (!ops || !ops->stop || !ops->start)
        return lm_error_set(err, -EINVAL, "host ops need both stop and start hooks");
    if (initial != LM_RUN_RUNNING && initial != LM_RUN_INMIGRATE && initial != LM_RUN_PAUSED)
        return lm_error_set(err, -EINVAL,
                            "initial run state must be running, paused or "
                            "inmigrate");
    lm_mig *m = calloc(1, sizeof *m);
    if (!m)
        return lm_error_set(err, -ENOMEM, "out of memory");
    m->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->cancel_efd < 0) {
        int e = errno;
        free(m);
        return lm_error_set(err, -e, "eventfd: %s", strerror(e));
    }
    m->ops = *ops;
    m->host = opaque;
    m->runstate = initial;
    m->status = LM_STATUS_NONE;
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
    /* The modules, wired to each other and to the core's counters. */
    lm_ram_init(&m->ram, &m->mem, &m->stats.ram);
    m->ram.hooks.pass = ram_pass_hook;
    m->ram.hooks.pass_opaque = m;
    lm_pc_src_init(&m->pcs, &m->ram);
    m->ram.hooks.urgent = lm_pc_src_urgent_hook;
    m->ram.hooks.claimed = lm_pc_src_claimed_hook;
    m->ram.hooks.pc_opaque = &m->pcs;
    m->pcs.requests = &m->stats.postcopy_requests;
    m->pcs.mfd_bytes = &m->stats.mfd.bytes;
    m->pcs.mfd_chans = &m->stats.mfd.channels;
    m->pcs.ctr = &m->stats.out;
    m->pcs.wake = pc_wake;
    m->pcs.wake_opaque = m;
    lm_pc_dst_init(&m->pcd, &m->mem, &m->place);
    m->pcd.link_down = pc_link_down;
    m->pcd.link_bytes = pc_link_bytes;
    m->pcd.link_opaque = m;
    *out = m;
    return 0;
}

bool lm_mig_aux_chan_add(lm_mig *m, lm_chan *c)
{
    pthread_mutex_lock(&m->lock);
    bool ok = !m->cancel_requested && m->naux_chans < LM_MULTIFD_MAX_CHANNELS + 1;
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

/* Under lock: interrupts whatever the migration's threads wait for. */
static void interrupt_locked(lm_mig *m, const char *why)
{
    m->cancel_requested = true;
    uint64_t one = 1;
    if (write(m->cancel_efd, &one, sizeof one) != sizeof one) {
        /* the counter cannot overflow from ones */
    }
    if (m->chan)
        lm_chan_shutdown(m->chan, why);
    for (unsigned i = 0; i < m->naux_chans; i++)
        lm_chan_shutdown(m->aux_chans[i], why);
    if (m->listen_fd >= 0)
        shutdown(m->listen_fd, SHUT_RDWR);
    pthread_cond_broadcast(&m->cond);
}

/* Joins whichever thread runs a migration, after shutting its I/O down. */
static void stop_threads(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    interrupt_locked(m, "migration object freed");
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
    lm_outgoing_free_paused(m);
    lm_incoming_free_paused(m);
    lm_pc_dst_destroy(&m->pcd);
    lm_pc_src_destroy(&m->pcs);
    lm_ram_destroy(&m->ram);
    lm_mem_fini(&m->mem);
    lm_mig_objects_free(m);
    free(m->ev_q);
    close(m->cancel_efd);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->emit_lock);
    pthread_mutex_destroy(&m->run_lock);
    free(m);
}

int lm_ram_add(lm_mig *m, const char *name, void *base, uint64_t len, uint32_t page_size,
               lm_error *err)
{
    int ret;
    pthread_mutex_lock(&m->lock);
    if (m->ram_frozen || lm_status_is_active(m->status))
        ret = lm_error_set(err, -EBUSY,
                           "RAM block '%s': cannot add RAM once a migration "
                           "has started",
                           name ? name : "");
    else
        ret = lm_mem_block_add(&m->mem, name, base, len, page_size, err);
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int lm_device_register(lm_mig *m, const char *name, uint32_t instance, uint32_t version,
                       const lm_device_ops *ops, void *opaque, lm_error *err)
{
    int ret;
    pthread_mutex_lock(&m->lock);
    if (m->ram_frozen)
        ret = lm_error_set(err, -EBUSY,
                           "device '%s': devices can only be registered before "
                           "the first migration",
                           name ? name : "");
    else
        ret = lm_savevm_register(&m->sv, name, instance, version, ops, opaque, err);
    pthread_mutex_unlock(&m->lock);
    return ret;
}

unsigned lm_mig_query_devices(lm_mig *m, lm_device_info *out, unsigned max)
{
    pthread_mutex_lock(&m->lock);
    unsigned n = m->sv.ndevices;
    pthread_mutex_unlock(&m->lock);
    return lm_savevm_query(&m->sv, n, out, max);
}

void lm_mig_set_error(lm_mig *m, const lm_error *err)
{
    pthread_mutex_lock(&m->lock);
    if (!m->error.code && err && err->code)
        m->error = *err;
    pthread_mutex_unlock(&m->lock);
}

bool lm_mig_cap(lm_mig *m, lm_cap cap)
{
    pthread_mutex_lock(&m->lock);
    bool on = m->caps & (1ull << cap);
    pthread_mutex_unlock(&m->lock);
    return on;
}

lm_status lm_mig_status(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    lm_status s = m->status;
    pthread_mutex_unlock(&m->lock);
    return s;
}

/* ------------------------------------------------- capabilities, params */

/* Capabilities may change while no outgoing migration runs (QEMU); a
 * destination still waiting for its stream (setup) may change them. */
static bool caps_frozen_locked(lm_mig *m)
{
    return lm_status_is_active(m->status) &&
           !(m->role == LM_ROLE_DEST && m->status == LM_STATUS_SETUP);
}

int lm_mig_set_capabilities(lm_mig *m, uint64_t mask, uint64_t values, lm_error *err)
{
    pthread_mutex_lock(&m->lock);
    uint64_t before = m->caps;
    pthread_mutex_unlock(&m->lock);
    /* As QEMU (postcopy_ram_supported_by_host): turning postcopy-ram on
     * probes userfaultfd, so a host without it is refused now, not at the
     * switch when the guest is already stopped.  The probe maps memory and
     * opens a descriptor: done before taking the lock. */
    uint64_t want = (before & ~mask) | (values & mask);
    if ((want & (1ull << LM_CAP_POSTCOPY_RAM)) && !(before & (1ull << LM_CAP_POSTCOPY_RAM))) {
        int ret = lm_postcopy_probe(err);
        if (ret < 0)
            return lm_error_prefix(err, "capability 'postcopy-ram'");
    }
    if ((want & (1ull << LM_CAP_X_LAZY_RESTORE)) && !(before & (1ull << LM_CAP_X_LAZY_RESTORE))) {
        int ret = lm_postcopy_probe(err);
        if (ret < 0)
            return lm_error_prefix(err, "capability 'x-lazy-restore'");
    }
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (caps_frozen_locked(m)) {
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
        goto out;
    }
    uint64_t next = (m->caps & ~mask) | (values & mask);
    ret = lm_caps_check(next, err);
    /* As QEMU refuses dirty-limit without a dirty ring: the throttles need
     * the host's hook. */
    static const lm_cap throttles[] = {LM_CAP_AUTO_CONVERGE, LM_CAP_DIRTY_LIMIT};
    for (unsigned i = 0; ret == 0 && !m->thr_fn && i < 2; i++) {
        lm_cap c = throttles[i];
        if ((next & (1ull << c)) && !(m->caps & (1ull << c)))
            ret = lm_error_set(err, -ENOTSUP,
                               "capability '%s' needs a host that can throttle its vCPUs "
                               "(lm_mig_set_throttle); this one cannot",
                               lm_cap_name(c));
    }
    /* The probe above covered the set it saw; another caller may have
     * turned postcopy-ram off and on meanwhile, which only needed the same
     * probe. */
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
#define TAKE(bit, field)                                                                           \
    if (which & (1ull << (bit)))                                                                   \
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
    TAKE(LM_PARAM_X_POSTCOPY_TIMEOUT_MS, x_postcopy_timeout_ms);
    TAKE(LM_PARAM_VCPU_DIRTY_LIMIT, vcpu_dirty_limit);
    TAKE(LM_PARAM_X_VCPU_DIRTY_LIMIT_PERIOD, x_vcpu_dirty_limit_period);
    TAKE(LM_PARAM_X_PRECOPY_TIMEOUT_MS, x_precopy_timeout_ms);
    TAKE(LM_PARAM_DIRECT_IO, direct_io);
#define TAKE_STR(bit, field)                                                                       \
    if (which & (1ull << (bit)))                                                                   \
        snprintf(p->field, sizeof p->field, "%s", in->field);
    TAKE_STR(LM_PARAM_TLS_CREDS, tls_creds);
    TAKE_STR(LM_PARAM_TLS_HOSTNAME, tls_hostname);
    TAKE_STR(LM_PARAM_TLS_AUTHZ, tls_authz);
#undef TAKE_STR
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
    if (!uri)
        return lm_error_set(err, -EINVAL, "migrate: missing 'uri'");
    return resume ? lm_outgoing_resume(m, uri, err) : lm_outgoing_start(m, uri, err);
}

int lm_mig_set_throttle(lm_mig *m, lm_throttle_fn fn, void *opaque, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (lm_status_is_active(m->status))
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
    else if (!fn && (m->caps & ((1ull << LM_CAP_AUTO_CONVERGE) | (1ull << LM_CAP_DIRTY_LIMIT))))
        ret = lm_error_set(err, -EBUSY,
                           "capability 'auto-converge' or 'dirty-limit' is on: turn it "
                           "off before removing the throttle");
    else {
        m->thr_fn = fn;
        m->thr_opaque = opaque;
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

void lm_mig_throttle_report(lm_mig *m, uint64_t slept_us)
{
    LM_ATOMIC_SET(&m->stats.dl_throttle_us, slept_us);
}

int lm_mig_recover(lm_mig *m, const char *uri, lm_error *err)
{
    if (!uri)
        return lm_error_set(err, -EINVAL, "migrate-recover: missing 'uri'");
    return lm_incoming_recover(m, uri, err);
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
        ret = lm_error_set(err, -EBUSY,
                           "Postcopy is already started: cancel is refused "
                           "(use migrate-pause)");
        pthread_mutex_unlock(&m->lock);
        return ret;
    }
    if (!lm_status_is_active(s) || s == LM_STATUS_CANCELLING ||
        (m->role == LM_ROLE_DEST && m->eos_sent)) {
        /* Nothing to cancel (a no-op, like QEMU), or a destination that
         * loaded everything and commits (incoming.c). */
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    /* Once the end of stream went out the destination may already run the
     * guest.  Cancelling then cannot safely resume the source: the channel
     * is shut down, the migration fails and the source stays paused
     * (outgoing.c), so the guest never runs twice. */
    /* From the source's commit point on (switchover.c end_stream) the
     * stream may complete whatever we do: cancelling there would leave a
     * state that only leads to 'cancelled' while the destination runs. */
    bool changed =
        !m->eos_sent && !m->committing && lm_state_set_locked(m, s, LM_STATUS_CANCELLING);
    interrupt_locked(m, "migration cancelled");
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m);
    return 0;
}

/* QEMU's qmp_migrate_pause: only while postcopy is alive (active or
 * recovering; not postcopy-device, where a failure fails and the source
 * resumes), on whichever side this is.  The channels are shut down under
 * the lock, so the state cannot move on between the check and the act. */
int lm_mig_pause(lm_mig *m, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    lm_status s = m->status;
    if (m->role == LM_ROLE_DEST && (m->caps & (1ull << LM_CAP_X_LAZY_RESTORE)))
        ret = lm_error_set(err, -EINVAL,
                           "migrate-pause: a lazy restore has no link to pause (its pages "
                           "come from the file)");
    else if (s == LM_STATUS_POSTCOPY_ACTIVE || s == LM_STATUS_POSTCOPY_RECOVER)
        link_down_locked(m, -ECONNABORTED, "Postcopy migration is paused by the user");
    else
        ret = lm_error_set(err, -EINVAL,
                           "migrate-pause is currently only supported during "
                           "postcopy-active or postcopy-recover state");
    pthread_mutex_unlock(&m->lock);
    return ret;
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
        ret = lm_error_set(err, -EINVAL,
                           "Enable postcopy with migrate_set_capability before "
                           "the start of migration");
    else if (m->role != LM_ROLE_SOURCE ||
             (m->status != LM_STATUS_SETUP && m->status != LM_STATUS_ACTIVE))
        ret = lm_error_set(err, -EINVAL,
                           "Postcopy must be started after migration has been "
                           "started (status '%s')",
                           lm_status_name(m->status));
    else
        m->start_postcopy = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return ret;
}

/* ------------------------------------------------------------ identity */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", QEMU's qemu_uuid_parse(). */
static int uuid_parse(const char *s, uint8_t out[16])
{
    if (strlen(s) != LM_UUID_STR_LEN)
        return -EINVAL;
    unsigned n = 0;
    for (unsigned i = 0; i < LM_UUID_STR_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return -EINVAL;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[n++] = (uint8_t)(hi << 4 | lo);
        i++;
    }
    return 0;
}

int lm_mig_set_identity(lm_mig *m, const char *name, const char *uuid, lm_error *err)
{
    uint8_t u[16] = {0};
    if (name) {
        size_t len = strlen(name);
        if (len < 1 || len > LM_NAME_MAX)
            return lm_error_set(err, -EINVAL, "name: must be 1..%d bytes", LM_NAME_MAX);
        for (size_t i = 0; i < len; i++)
            if (name[i] < 0x20 || name[i] > 0x7e)
                return lm_error_set(err, -EINVAL,
                                    "name: '%s' has a byte that is not printable ASCII", name);
    }
    if (uuid && uuid_parse(uuid, u) < 0)
        return lm_error_set(err, -EINVAL,
                            "UUID '%s': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx "
                            "(hexadecimal digits)",
                            uuid);
    pthread_mutex_lock(&m->lock);
    snprintf(m->name, sizeof m->name, "%s", name ? name : "");
    memcpy(m->uuid, u, sizeof u);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void lm_mig_get_identity(lm_mig *m, char name[LM_NAME_MAX + 1], char uuid[LM_UUID_STR_LEN + 1])
{
    uint8_t u[16];
    pthread_mutex_lock(&m->lock);
    memcpy(name, m->name, LM_NAME_MAX + 1);
    memcpy(u, m->uuid, sizeof u);
    pthread_mutex_unlock(&m->lock);
    snprintf(uuid, LM_UUID_STR_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
}
