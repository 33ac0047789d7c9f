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
        return lm_error_prefix(err, "file '%s'", in->file_path);
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
