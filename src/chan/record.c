/* record.c - writing and reading framed records on a channel (record.h). */
#include "chan/record.h"

#include <errno.h>
#include <stdio.h>

int lm_rec_write(lm_chan *c, uint8_t type, const void *payload, uint32_t len)
{
    uint8_t hdr[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(type, len, hdr, sizeof hdr);
    if (len > 4096)
        return lm_chan_write_ref(c, hdr, sizeof hdr, payload, len);
    int ret = lm_chan_put(c, hdr, sizeof hdr);
    if (ret == 0 && len)
        ret = lm_chan_put(c, payload, len);
    return ret;
}

int lm_rec_send(lm_chan *c, uint8_t type, const void *payload, uint32_t len)
{
    int ret = lm_rec_write(c, type, payload, len);
    return ret < 0 ? ret : lm_chan_flush(c);
}

int lm_rec_send_status(lm_chan *c, uint8_t type, int32_t status, const char *msg)
{
    lm_status_msg sm = {.status = status};
    snprintf(sm.msg, sizeof sm.msg, "%s", msg ? msg : "");
    uint8_t p[6 + LM_ERROR_MSG_MAX];
    int n = lm_fmt_status_msg_encode(&sm, p, sizeof p);
    if (n < 0)
        return n;
    return lm_rec_send(c, type, p, (uint32_t)n);
}

/* A failed read always leaves the channel's sticky error; -EIO if not. */
static int chan_error(lm_chan *c, lm_error *err)
{
    int code = lm_chan_get_error(c, err);
    return code ? code : lm_error_set(err, -EIO, "channel read failed");
}

int lm_rec_read_hdr(lm_chan *c, bool exact, lm_rec_hdr *h, lm_error *err)
{
    uint8_t hb[LM_REC_HDR_SIZE];
    int ret = exact ? lm_chan_read_exact(c, hb, sizeof hb) : lm_chan_read_full(c, hb, sizeof hb);
    if (ret < 0)
        return chan_error(c, err);
    if (lm_fmt_rec_hdr_decode(hb, sizeof hb, h, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    return 0;
}

int lm_rec_read_payload(lm_chan *c, const lm_rec_hdr *h, void *buf, uint32_t cap, const char *what,
                        lm_error *err)
{
    if (h->len > cap)
        return lm_error_set(err, -EPROTO, "%s%s%s record of %u bytes, at most %u", what ? what : "",
                            what ? ": " : "", lm_rec_type_name(h->type), h->len, cap);
    if (h->len && lm_chan_read_full(c, buf, h->len) < 0)
        return chan_error(c, err);
    return 0;
}
