/*
 * bgsnap.c - a background snapshot on the source's migration thread
 * (QEMU's background-snapshot capability, bg_migration_thread; digest §9):
 * a point-in-time image of a running guest.  After setup:
 *
 *   pause the guest -> device state into a buffer (every device completes
 *   now, so it is as of this instant) -> write-protect RAM
 *   (ram/bgsnap.c, mem/wp.c) -> resume the guest -> one pass over RAM
 *   while it runs (no dirty tracking, no sync: a page the guest writes is
 *   copied before the write) -> remove the protection -> the buffered
 *   device state -> EOS and the destination's verdict.
 *
 * The stream is an ordinary precopy stream: the destination loads it as
 * any other.  The guest is paused only for its device state and the
 * write-protection (downtime); at the end it is left running, and the
 * migration goes active -> completed, as in QEMU.
 *
 * Threads: the migration thread only (it also drains the fault thread's
 * copies, ram/bgsnap.c).  Waits take only m->lock.
 */
#include "core/outgoing.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define COPY_CHUNK (64u << 10)

/* The device state, written while the guest is paused, into a memfd
 * channel: the records the destination will read after RAM. */
static int save_devices(lm_outgoing *g, lm_chan *buf, lm_error *err)
{
    lm_out d = g->o;
    d.chan = buf;
    d.mfd = NULL;
    d.last_stage = true; /* downtime bytes: produced during the pause */
    int ret = lm_rec_write(buf, LM_REC_SWITCHOVER_START, NULL, 0);
    if (ret == 0)
        ret = lm_savevm_complete(&g->m->sv, &d, LM_COMPLETE_DEVICES, err);
    if (ret == 0)
        ret = lm_chan_flush(buf);
    if (ret < 0) {
        lm_chan_get_error(buf, err);
        return lm_error_set(err, ret, "background-snapshot: saving the device state failed");
    }
    return 0;
}

/* Appends the buffered device state to the main channel. */
static int put_devices(lm_outgoing *g, int fd, lm_error *err)
{
    int ret = 0;
    uint8_t *chunk = malloc(COPY_CHUNK);
    if (!chunk)
        return lm_error_set(err, -ENOMEM, "out of memory");
    for (off_t off = 0;;) {
        ssize_t n = pread(fd, chunk, COPY_CHUNK, off);
        if (n < 0) {
            ret = lm_error_set(err, -errno,
                               "background-snapshot: reading the device state "
                               "buffer: %s",
                               strerror(errno));
            break;
        }
        if (n == 0)
            break;
        ret = lm_chan_write_ref(g->chan, NULL, 0, chunk, (size_t)n);
        if (ret < 0) {
            lm_chan_get_error(g->chan, err);
            lm_error_set(err, ret, "sending the device state failed");
            break;
        }
        off += n;
    }
    free(chunk);
    return ret;
}

/* The one pass: RAM only (the devices completed at the pause), obeying
 * max-bandwidth, until every page is sent or the migration ends. */
static int pass(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        lm_status s = m->status;
        bool rp_gone = m->shut_received, verdict = m->verdict;
        lm_status_msg v = m->shut;
        pthread_mutex_unlock(&m->lock);
        if (s != LM_STATUS_ACTIVE)
            return lm_error_set(err, -ECANCELED, "migration cancelled");
        if (rp_gone)
            return lm_error_set(err, v.status ? v.status : -EPROTO, "%s%s",
                                verdict ? "destination: " : "",
                                v.status ? v.msg : "destination ended the migration early");
        if (lm_chan_get_error(g->chan, err))
            return err->code;
        lm_sw_reload_params(g);
        uint64_t now = lm_now_ns();
        lm_rl_tick(&g->rl, now);
        lm_sw_account_rl(g);
        lm_sw_update_counters(g, now);
        if (lm_rl_exceeded(&g->rl)) {
            lm_sw_wait_until(g, now + lm_rl_wait_ns(&g->rl, now));
            continue;
        }
        int ret = lm_ram_handler_ops.save_iterate(&m->ram, &g->o, lm_rl_budget(&g->rl), err);
        lm_sw_account_rl(g);
        if (ret < 0)
            return ret;
        if (ret == 1)
            return 0;
    }
}

int lm_og_bgsnap(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    lm_chan *buf = NULL;
    int ret = 0;
    int fd = memfd_create("livemig-bgsnap-devices", MFD_CLOEXEC);
    if (fd < 0)
        return lm_error_set(err, -errno, "background-snapshot: memfd_create: %s", strerror(errno));
    ret = lm_chan_new(fd, "device state buffer", &buf, err);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    int rfd = dup(lm_chan_fd(buf)); /* read back after the channel is freed */

    /* The snapshot's instant: the guest stands still while its devices
     * are saved and its RAM is write-protected. */
    lm_runstate before = lm_vm_runstate(m);
    uint64_t t0 = lm_now_ns();
    g->was_running = lm_vm_stop_for_migration(m, LM_RUN_PAUSED);
    g->stopped_vm = true;
    ret = save_devices(g, buf, err);
    if (ret == 0)
        ret = lm_ram_bgsnap_start(&m->ram, err);
    lm_chan_free(buf);
    if (ret < 0)
        goto out; /* finish() restarts the guest (stopped_vm) */
    lm_vm_start_after_migration(m, g->was_running ? LM_RUN_RUNNING : before);
    g->stopped_vm = false;
    LM_ATOMIC_SET(&m->stats.downtime_us, (lm_now_ns() - t0) / 1000);

    ret = pass(g, err);
    /* Every page is on the wire: the guest writes freely again before the
     * device state and the destination's verdict. */
    lm_ram_bgsnap_stop(&m->ram);
    if (ret == 0)
        ret = put_devices(g, rfd, err);
    if (ret == 0)
        ret = lm_sw_end_stream(g, "sending the device state failed", err);
out:
    if (rfd >= 0)
        close(rfd);
    return ret;
}
