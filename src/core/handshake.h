/*
 * handshake.h - HELLO, the first bytes of every connection (docs/format.md
 * §2): the source's request and the destination's answer, ACCEPT or
 * REJECT followed by an ERROR record that names the reason, so that both
 * sides report the same cause.  Internal to core.
 */
#ifndef LM_CORE_HANDSHAKE_H
#define LM_CORE_HANDSHAKE_H

#include "core/internal.h"

/* Source: sends h (a request) on c and waits up to timeout_ms for the
 * answer; 0 when it accepts this very channel (role, index, session),
 * -ECONNREFUSED with the destination's reason when it rejects, -ETIMEDOUT,
 * or another error naming what was wrong. */
int lm_hello_request(lm_chan *c, const lm_hello *h, int timeout_ms, lm_error *err);
/* Destination: answers a request: ACCEPT (why NULL) or REJECT + ERROR. */
int lm_hello_answer(lm_chan *c, const lm_hello *req, const lm_error *why);

#endif /* LM_CORE_HANDSHAKE_H */
