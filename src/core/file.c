/*
 * file.c - the destination of a file: URI (incoming.h): the file is the
 * main channel, read from its offset to the end of stream; nothing is
 * ever written back (no return path, no verdict: digest §5.10).  Runs on
 * "lm-incoming".  A bad file fails this incoming migration with a reason
 * that names the file and what is wrong; the destination stays inmigrate
 * and takes another migrate-incoming.
 */
#include "core/incoming.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lm_in_file_open(lm_incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    lm_chan *c = NULL;
    char name[64];
    snprintf(name, sizeof name, "file '%.40s'", in->file_path);
    int ret = lm_chan_new(in->lfd, name, &c, err);
    in->lfd = -1; /* the channel's now, on every path */
    if (ret < 0)
        return ret;
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello h;
    if (lm_chan_read_full(c, buf, sizeof buf) < 0) {
        lm_error tmp = {0};
        ret = lm_chan_get_error(c, &tmp);
        lm_chan_free(c);
        if (ret == -EPIPE)
            return lm_error_set(err, -EPROTO,
                                "file '%s': too short for a migration stream (it ends inside "
                                "the %u-byte HELLO)",
                                in->file_path, (unsigned)LM_HELLO_SIZE);
        return lm_error_set(err, ret ? ret : -EIO, "file '%s': %s", in->file_path, tmp.msg);
    }
    ret = lm_fmt_hello_decode(buf, sizeof buf, &h, err) > 0 ? 0 : -EPROTO;
    if (ret < 0 && err && err->code)
        ret = err->code;
    if (ret == -EBADMSG) {
        lm_error_clear(err);
        ret = lm_error_set(err, -EBADMSG,
                           "file '%s': not a livemig migration stream (no livemig HELLO at "
                           "its offset)",
                           in->file_path);
    } else if (ret == 0 && (h.role != LM_ROLE_MAIN || h.chan_index != 0)) {
        ret = lm_error_set(err, -EPROTO,
                           "file '%s': its HELLO is not a main channel's (role %u): not the "
                           "start of a saved stream",
                           in->file_path, h.role);
    } else if (ret == 0) {
        ret = lm_in_hello_check(in, &h, err);
    }
    if (ret < 0) {
        lm_chan_free(c);
        return err && strstr(err->msg, in->file_path)
                   ? ret
                   : lm_error_prefix(err, "file '%s'", in->file_path);
    }
    in->have_session = true;
    memcpy(in->session, h.session, sizeof in->session);
    in->features = h.features;
    /* The source's multifd channel count says how it wrote the file; the
     * readers here are this side's own (multifd-channels). */
    in->nmfd = 0;
    in->lv.ack_feature = false;
    in->chan = c;
    pthread_mutex_lock(&m->lock);
    m->chan = c;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int lm_in_file_loaded(lm_incoming *in, int ret, lm_error *err)
{
    if (ret < 0 && ret != -EPIPE && err && !strstr(err->msg, in->file_path))
        return lm_error_prefix(err, "file '%s'", in->file_path);
    if (ret != -EPIPE)
        return ret;
    /* The channel says "peer closed the connection": in a file, the
     * stream stops before its end. */
    struct stat st;
    long long size = fstat(lm_chan_fd(in->chan), &st) == 0 ? (long long)st.st_size : -1;
    lm_error_clear(err);
    return lm_error_set(err, -EPROTO,
                        "file '%s': truncated: the stream ends (at byte %lld of the file) "
                        "before its end-of-stream record",
                        in->file_path, size);
}

/* ------------------------------------------------------------- mapped-ram */

/* Pages read by this thread (no multifd). */
typedef struct inline_reader {
    int fd;
    const char *path;
} inline_reader;

static int inline_read(void *opaque, lm_ram_block *b, uint64_t first, uint64_t count, uint64_t off,
                       lm_error *err)
{
    inline_reader *ir = opaque;
    return lm_mapped_read_run(ir->fd, b, first, count, off, ir->path, err);
}

static int inline_sync(void *opaque, lm_error *err)
{
    (void)opaque;
    (void)err;
    return 0;
}

static int mfd_read(void *opaque, lm_ram_block *b, uint64_t first, uint64_t count, uint64_t off,
                    lm_error *err)
{
    return lm_mfd_recv_file_read(opaque, b, first, count, off, err);
}

/* The one receive sync after the block list (seed 004), the re-entrant
 * one sockets use for MULTIFD_FLUSH. */
static int mfd_sync(void *opaque, lm_error *err)
{
    return lm_mfd_recv_sync(opaque, 1, err);
}

int lm_in_file_mapped(lm_incoming *in, const lm_rec_hdr *h, lm_error *err)
{
    lm_mig *m = in->m;
    if (!(in->features & LM_FEAT_MAPPED_RAM) || in->mapped_done)
        return lm_error_set(err, -EPROTO, "MAPPED_RAM %s",
                            in->mapped_done ? "twice" : "in a stream saved without mapped-ram");
    if (!m->mem.smap.ready)
        return lm_error_set(err, -EPROTO, "MAPPED_RAM before the RAM block table");
    if (in->lazy_cap) {
        int lret = lm_in_lazy_start(in, h, err); /* lazy.c */
        return lret < 0 && !strstr(err->msg, in->file_path)
                   ? lm_error_prefix(err, "file '%s'", in->file_path)
                   : lret;
    }
    pthread_mutex_lock(&m->lock);
    bool multifd = m->caps & (1ull << LM_CAP_MULTIFD);
    bool direct = m->params.direct_io;
    unsigned n = multifd ? m->params.multifd_channels : 1;
    pthread_mutex_unlock(&m->lock);
    int fds[LM_MULTIFD_MAX_CHANNELS];
    int ret = 0;
    if (direct) {
        ret = lm_mapped_open_direct(in->file_path, false, n, fds, err);
        if (ret < 0)
            return ret;
    } else {
        for (unsigned i = 0; i < n; i++)
            fds[i] = lm_chan_fd(in->chan); /* pread: the stream's offset stays */
    }
    inline_reader ir = {.fd = fds[0], .path = in->file_path};
    lm_mapped_reader rd = {inline_read, inline_sync, &ir};
    lm_mfd_recv *r = NULL;
    if (multifd) {
        ret = lm_mfd_recv_new_file(&m->stats.mfd, in->chan, fds, n, direct, in->file_path, &r, err);
        if (ret < 0)
            goto out;
        direct = false; /* the readers own the descriptors now */
        rd = (lm_mapped_reader){mfd_read, mfd_sync, r};
    }
    uint64_t pages = 0;
    ret = lm_mapped_load(&m->mem, &m->place, in->chan, h, in->file_path, &rd, &pages, err);
    if (r) {
        if (ret < 0)
            lm_mfd_recv_shutdown(r, "mapped-ram load failed");
        else
            ret = lm_mfd_recv_finish(r, err);
        lm_mfd_recv_free(r);
    }
    if (ret == 0)
        in->mapped_done = true;
    else
        lm_error_prefix(err, "file '%s'", in->file_path);
out:
    if (direct)
        for (unsigned i = 0; i < n; i++)
            close(fds[i]);
    return ret;
}
