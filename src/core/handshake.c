/* handshake.c - HELLO on both sides (handshake.h). */
#include "core/handshake.h"

#include <errno.h>
#include <string.h>

int lm_hello_request(lm_chan *c, const lm_hello *h, int timeout_ms, lm_error *err)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_fmt_hello_encode(h, buf, sizeof buf);
    if (lm_chan_put(c, buf, sizeof buf) < 0 || lm_chan_flush(c) < 0)
        return lm_chan_get_error(c, err);
    int r = lm_chan_wait_readable(c, timeout_ms);
    if (r == 0)
        return lm_error_set(err, -ETIMEDOUT, "destination did not answer HELLO within %d ms",
                            timeout_ms);
    if (r < 0 || lm_chan_read_full(c, buf, sizeof buf) < 0) {
        lm_chan_get_error(c, err);
        return lm_error_prefix(err, "waiting for the destination's HELLO");
    }
    lm_hello reply;
    if (lm_fmt_hello_decode(buf, sizeof buf, &reply, err) <= 0)
        return lm_error_prefix(err, "destination's HELLO");
    if (reply.kind == LM_HELLO_REJECT) {
        /* The reason follows as an ERROR record; a broken one still
         * rejects, without a reason. */
        lm_rec_hdr rh;
        lm_status_msg sm = {0};
        uint8_t p[6 + LM_ERROR_MSG_MAX];
        lm_error ignore = {0};
        if (lm_rec_read_hdr(c, false, &rh, &ignore) == 0 && rh.type == LM_REC_ERROR &&
            lm_rec_read_payload(c, &rh, p, sizeof p, NULL, &ignore) == 0)
            lm_fmt_status_msg_decode(p, rh.len, &sm, NULL);
        return lm_error_set(err, -ECONNREFUSED, "destination rejected the migration: %s",
                            sm.msg[0] ? sm.msg : "no reason given");
    }
    if (reply.kind != LM_HELLO_ACCEPT || reply.role != h->role ||
        reply.chan_index != h->chan_index ||
        memcmp(reply.session, h->session, sizeof h->session) != 0)
        return lm_error_set(err, -EPROTO, "destination's HELLO does not answer ours");
    return 0;
}

int lm_hello_answer(lm_chan *c, const lm_hello *req, const lm_error *why)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello reply = {.version = LM_FORMAT_VERSION,
                      .role = req->role,
                      .kind = LM_HELLO_ACCEPT,
                      .page_size = LM_PAGE_SIZE,
                      .chan_index = req->chan_index,
                      .chan_count = req->chan_count,
                      .features = req->features};
    memcpy(reply.session, req->session, sizeof reply.session);
    if (why) {
        reply.kind = LM_HELLO_REJECT;
        reply.role = LM_ROLE_MAIN;
        reply.features = 0;
        reply.chan_count = 0;
    }
    lm_fmt_hello_encode(&reply, buf, sizeof buf);
    int ret = lm_chan_put(c, buf, sizeof buf);
    if (ret == 0 && why)
        return lm_rec_send_status(c, LM_REC_ERROR, why->code, why->msg);
    return ret < 0 ? ret : lm_chan_flush(c);
}
