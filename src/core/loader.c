/*
 * loader.c - the destination's load loop, on "lm-incoming": every record
 * of the main channel, dispatched to its module (RAM, devices, multifd
 * syncs, postcopy's discards and switch), in the order the stream must
 * respect.  No read-ahead: page data after a header lands in place.
 *
 * Postcopy: POSTCOPY_DISCARD drops owed pages, POSTCOPY_RUN registers
 * userfaultfd and starts the guest; from then on pages are placed
 * atomically (the placement interface switches, mem.h) and return-path
 * writes take postcopy's rp_lock (the fault thread writes requests on the
 * same channel without a preempt channel).
 */
#include "core/incoming.h"
#include "util/thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* POSTCOPY_RUN: register RAM with userfaultfd and start the fault thread
 * (a failure here leaves the guest stopped: the source pauses, nothing
 * runs twice), then postcopy-active and start the guest.  The PING that
 * follows RUN is answered by the load loop once this returned. */
static int postcopy_run(lm_incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    if (!in->tmp) {
        in->tmp = malloc((size_t)LM_RAM_MAX_RUN * LM_PAGE_SIZE);
        if (!in->tmp)
            return lm_error_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&m->lock);
    m->pcd.timeout_ms = m->params.x_postcopy_timeout_ms;
    pthread_mutex_unlock(&m->lock);
    int ret = lm_pc_dst_listen(&m->pcd, in->chan, in->blocktime, err);
    if (ret < 0)
        return ret;
    if (!lm_state_set(m, LM_STATUS_ACTIVE, LM_STATUS_POSTCOPY_ACTIVE))
        return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
    in->running = true;
    in->run_ping = true;
    /* With a preempt channel this thread only places the background
     * push: the fault thread and the preempt loader go first (a requested
     * page still in this thread's socket buffers is sent again on the
     * preempt channel, so nothing urgent waits for it).  Without one,
     * requested pages come this way and it keeps its priority. */
    if (in->features & LM_FEAT_PREEMPT) {
        lm_thread_set_background();
        lm_chan_set_io_slice(in->chan, LM_PC_BULK_SLICE);
    }
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    return 0;
}

/* Test knob (never set in production): LIVEMIG_TEST_RECOVERY=hold-ack
 * keeps the first recovery of this process between its received bitmap
 * and its ack, until the main channel fails (or 60 s pass), and says so on
 * stderr: a test cuts the link in the middle of the exchange without a
 * race. */
static void test_hold_ack(lm_chan *c)
{
    static int held;
    const char *e = getenv("LIVEMIG_TEST_RECOVERY");
    if (!e || !strstr(e, "hold-ack") || __atomic_exchange_n(&held, 1, __ATOMIC_RELAXED))
        return;
    fprintf(stderr, "livemig: test knob: recovery held before RP_RESUME_ACK\n");
    lm_chan_wait_readable(c, 60000);
}

/* POSTCOPY_RESUME (recovery, digest §6.5 step 5): what every block still
 * owes goes to the source, which makes those pages dirty again; then
 * postcopy-active, the ack with the owed total (the source checks its maps
 * against it), and the new return path, on which every request still
 * waiting is asked again (one sent on the broken link may be lost). */
static int postcopy_resume(lm_incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    uint64_t owed;
    int ret = lm_pc_dst_send_recv_bitmap(&m->pcd, in->chan, &owed, err);
    if (ret < 0)
        return ret;
    test_hold_ack(in->chan);
    if (lm_chan_get_error(in->chan, err))
        return err->code;
    if (!lm_state_set(m, LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_ACTIVE))
        return lm_error_set(err, -ECANCELED, "recovery interrupted");
    uint8_t p[8];
    lm_fmt_u64_encode(owed, p, sizeof p);
    if (lm_pc_dst_rp_send(&m->pcd, in->chan, LM_REC_RP_RESUME_ACK, p, sizeof p) < 0)
        return lm_chan_get_error(in->chan, err);
    in->resume_wait = false;
    return lm_pc_dst_attach_rp(&m->pcd, in->chan, err);
}

/* Test knob (never set in production): LIVEMIG_TEST_RECOVERY=drop-run-pong
 * withholds the RP_PONG for the PING after POSTCOPY_RUN (the guest runs
 * here, everything else goes on), and says so on stderr: the source stays
 * in postcopy-device, so a test breaks the link between RUN and its
 * confirmation without a race. */
static bool test_drop_run_pong(void)
{
    const char *e = getenv("LIVEMIG_TEST_RECOVERY");
    if (!e || !strstr(e, "drop-run-pong"))
        return false;
    fprintf(stderr, "livemig: test knob: RP_PONG for POSTCOPY_RUN withheld\n");
    return true;
}

static int load_u64(lm_chan *c, const lm_rec_hdr *h, uint64_t *v, lm_error *err)
{
    uint8_t p[8];
    int ret = lm_rec_read_payload(c, h, p, sizeof p, NULL, err);
    if (ret == 0 && lm_fmt_u64_decode(p, h->len, v, err) <= 0)
        ret = err && err->code ? err->code : -EPROTO;
    return ret;
}

/* Records that may come between the first POSTCOPY_DISCARD and RUN: a
 * page written now would be taken for a final one. */
static bool allowed_while_discarding(uint8_t type)
{
    return type == LM_REC_POSTCOPY_DISCARD || type == LM_REC_POSTCOPY_RUN ||
           type == LM_REC_SECTION_FULL || type == LM_REC_SECTION_END || type == LM_REC_ERROR;
}

/* One record; 1 at the end of stream, 0 to go on, < 0 on error. */
static int load_one(lm_incoming *in, const lm_rec_hdr *h, lm_error *err)
{
    lm_mig *m = in->m;
    lm_chan *c = in->chan;
    int ret;
    switch (h->type) {
    case LM_REC_RAM_BLOCKS:
    case LM_REC_RAM_PAGES:
    case LM_REC_RAM_ZERO:
    case LM_REC_RAM_PASS:
    case LM_REC_RAM_XBZRLE:
        if (in->running && h->type == LM_REC_RAM_BLOCKS)
            return lm_error_set(err, -EPROTO, "RAM_BLOCKS after POSTCOPY_RUN");
        if ((in->features & LM_FEAT_MAPPED_RAM) &&
            (h->type == LM_REC_RAM_PAGES || h->type == LM_REC_RAM_ZERO))
            return lm_error_set(err, -EPROTO,
                                "%s record in a mapped-ram stream (its pages are in the "
                                "file's page regions)",
                                lm_rec_type_name(h->type));
        /* The source never combines XBZRLE with multifd (QEMU refuses the
         * pair): a delta on the main channel could overtake, or be
         * overtaken by, the page's full copy on a multifd channel. */
        if (h->type == LM_REC_RAM_XBZRLE && (in->mfd || (in->features & LM_FEAT_MAPPED_RAM)))
            return lm_error_set(err, -EPROTO, "RAM_XBZRLE record in a migration with %s",
                                in->mfd ? "multifd channels" : "mapped-ram");
        ret = lm_ram_load_record(&m->mem, &m->place, c, h, in->tmp, err);
        if (ret < 0)
            return in->running ? lm_error_prefix(err, "postcopy") : ret;
        if (h->type == LM_REC_RAM_BLOCKS && in->mfd)
            lm_mfd_recv_blocks_ready(in->mfd);
        return 0;
    case LM_REC_POSTCOPY_DISCARD:
        if (!(in->features & LM_FEAT_POSTCOPY) || in->running)
            return lm_error_set(err, -EPROTO, "POSTCOPY_DISCARD %s",
                                in->running ? "after POSTCOPY_RUN"
                                            : "without the postcopy feature");
        in->discarding = true;
        return lm_pc_dst_load_discard(&m->pcd, c, h, in->blocktime, err);
    case LM_REC_POSTCOPY_RESUME:
        if (!in->resume_wait)
            return lm_error_set(err, -EPROTO, "POSTCOPY_RESUME outside a postcopy recovery");
        return postcopy_resume(in, err);
    case LM_REC_POSTCOPY_RUN:
        if (!(in->features & LM_FEAT_POSTCOPY) || in->running)
            return lm_error_set(err, -EPROTO, "POSTCOPY_RUN %s",
                                in->running ? "received twice" : "without the postcopy feature");
        if (!m->mem.smap.ready && m->mem.nblocks)
            return lm_error_set(err, -EPROTO, "POSTCOPY_RUN before the RAM block table");
        /* Device sections are complete (checked: the guest runs from now
         * on, it must not run on a state that never came). */
        if ((ret = lm_loadvm_check_complete(&in->lv, LM_LOADVM_AT_RUN, err)) < 0)
            return ret;
        lm_loadvm_cleanup(&in->lv);
        return postcopy_run(in, err);
    case LM_REC_MULTIFD_FLUSH: {
        uint64_t seq;
        if ((ret = load_u64(c, h, &seq, err)) < 0)
            return ret;
        if (!in->mfd)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_FLUSH in a migration without multifd "
                                "channels");
        return lm_mfd_recv_sync(in->mfd, seq, err);
    }
    case LM_REC_PING: {
        uint8_t p[4];
        uint32_t v;
        if ((ret = lm_rec_read_payload(c, h, p, sizeof p, NULL, err)) < 0)
            return ret;
        if (lm_fmt_u32_decode(p, h->len, &v, err) <= 0)
            return err && err->code ? err->code : -EPROTO;
        bool run_ping = in->run_ping;
        in->run_ping = false;
        if (run_ping && test_drop_run_pong())
            return 0;
        lm_fmt_u32_encode(v, p, sizeof p);
        if (lm_pc_dst_rp_send(&m->pcd, c, LM_REC_RP_PONG, p, sizeof p) < 0)
            return lm_chan_get_error(c, err);
        return 0;
    }
    case LM_REC_SWITCHOVER_START:
        if (in->running)
            return lm_error_set(err, -EPROTO, "SWITCHOVER_START after POSTCOPY_RUN");
        return lm_loadvm_switchover(&in->lv, err);
    case LM_REC_MAPPED_RAM:
        return lm_in_file_mapped(in, h, err);
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
    case LM_REC_SECTION_FULL:
        return lm_loadvm_section(&in->lv, c, h, err);
    case LM_REC_ACK_DEVICES:
        return lm_loadvm_ack_devices(&in->lv, c, h, err);
    case LM_REC_EOS:
        if (!m->mem.smap.ready && m->mem.nblocks)
            return lm_error_set(err, -EPROTO, "end of stream before the RAM block table");
        if ((in->features & LM_FEAT_MAPPED_RAM) && !in->mapped_done)
            return lm_error_set(err, -EPROTO,
                                "end of stream before the MAPPED_RAM record: the file says "
                                "where no page is");
        if (in->discarding && !in->running)
            return lm_error_set(err, -EPROTO,
                                "end of stream between POSTCOPY_DISCARD and "
                                "POSTCOPY_RUN");
        /* Every multifd channel ends too (after its last sync), then the
         * device sections are checked complete (in postcopy they were at
         * RUN) and every owed page is placed. */
        if (in->mfd && (ret = lm_mfd_recv_finish(in->mfd, err)) < 0)
            return ret;
        if (in->running) {
            ret = lm_loadvm_check_complete(&in->lv, LM_LOADVM_AT_POSTCOPY_EOS, err);
            if (ret == 0)
                ret = lm_pc_dst_wait_placed(&m->pcd, err);
        } else if (in->lazy) {
            /* Lazy restore: the guest runs now, its pages on demand. */
            ret = lm_loadvm_check_complete(&in->lv, LM_LOADVM_AT_EOS, err);
            if (ret == 0)
                ret = lm_in_lazy_run(in, err);
        } else {
            ret = lm_loadvm_check_complete(&in->lv, LM_LOADVM_AT_EOS, err);
        }
        return ret < 0 ? ret : 1;
    case LM_REC_ERROR: {
        uint8_t p[6 + LM_ERROR_MSG_MAX];
        lm_status_msg sm;
        if ((ret = lm_rec_read_payload(c, h, p, sizeof p, NULL, err)) < 0)
            return ret;
        if (lm_fmt_status_msg_decode(p, h->len, &sm, err) <= 0)
            return err && err->code ? err->code : -EPROTO;
        return lm_error_set(err, sm.status ? sm.status : -EIO, "source: %s", sm.msg);
    }
    default:
        return lm_error_set(err, -EPROTO, "unexpected %s record in the migration stream",
                            lm_rec_type_name(h->type));
    }
}

static int load_loop(lm_incoming *in, lm_error *err)
{
    int ret = 0;
    for (; ret == 0;) {
        lm_rec_hdr h;
        if ((ret = lm_rec_read_hdr(in->chan, true, &h, err)) < 0)
            break;
        if (in->discarding && !in->running && !allowed_while_discarding(h.type))
            return lm_error_set(err, -EPROTO, "%s between POSTCOPY_DISCARD and POSTCOPY_RUN",
                                lm_rec_type_name(h.type));
        if (in->resume_wait && h.type != LM_REC_POSTCOPY_RESUME && h.type != LM_REC_PING &&
            h.type != LM_REC_ERROR)
            return lm_error_set(err, -EPROTO, "%s before POSTCOPY_RESUME in a recovery",
                                lm_rec_type_name(h.type));
        ret = load_one(in, &h, err);
    }
    return ret < 0 ? ret : 0;
}

int lm_incoming_load(lm_incoming *in, lm_error *err)
{
    int ret = lm_loadvm_setup(&in->lv, err);
    return ret < 0 ? ret : load_loop(in, err);
}

int lm_incoming_load_resumed(lm_incoming *in, lm_error *err)
{
    in->resume_wait = true;
    return load_loop(in, err);
}
