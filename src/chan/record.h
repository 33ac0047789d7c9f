/*
 * record.h - the record layer: typed, length-prefixed records (docs/format.md
 * §3) written to and read from a channel.  Every writer of a record and
 * every reader of one goes through here, so framing, the bound on what a
 * peer may make us read, and the error texts are in one place.  Knows
 * nothing of migration: the payload codecs are in format/, what records
 * mean is the caller's business.
 *
 * Threads: a channel has one reader; writers of one channel serialise
 * themselves (the functions take no lock).
 */
#ifndef LM_CHAN_RECORD_H
#define LM_CHAN_RECORD_H

#include "chan/chan.h"
#include "format/format.h"

/* Queues one record (header + payload) on c without flushing.  Payloads
 * above 4 KiB are written from the caller's memory (no copy).  Returns 0
 * or the channel's (sticky) error code. */
int lm_rec_write(lm_chan *c, uint8_t type, const void *payload, uint32_t len);
/* lm_rec_write, then a flush: the record is on its way when it returns. */
int lm_rec_send(lm_chan *c, uint8_t type, const void *payload, uint32_t len);
/* An ERROR or RP_SHUT record {status, message}, flushed. */
int lm_rec_send_status(lm_chan *c, uint8_t type, int32_t status, const char *msg);

/* Reads and decodes one record header.  exact: read no further than the
 * header (the payload may be page data to receive in place).  Returns 0,
 * or < 0 with err set: the channel's error, or the decoder's (unknown type,
 * bad length...). */
int lm_rec_read_hdr(lm_chan *c, bool exact, lm_rec_hdr *h, lm_error *err);
/* Reads the payload of h into buf, refusing (-EPROTO, "<what>: <TYPE>
 * record of N bytes, at most CAP"; what may be NULL) a record longer than
 * cap: what a peer can make us read is bounded by the caller's buffer. */
int lm_rec_read_payload(lm_chan *c, const lm_rec_hdr *h, void *buf, uint32_t cap, const char *what,
                        lm_error *err);

#endif /* LM_CHAN_RECORD_H */
