/*
 * ratelimit.c - max-bandwidth as a byte budget per 100 ms window, as QEMU's
 * migration_rate_* do (digest section 3.5): budget = bytes_per_sec / 10,
 * 0 = unlimited, a new limit applies to the current window at once.
 *
 * One difference from QEMU: bytes sent beyond a window's budget (a record
 * cannot be split, so the last one overshoots) are carried into the next
 * windows instead of being forgiven, so a limit stays honest even when
 * records are large compared to the budget.  The debt is capped at one
 * window's budget, and nothing is saved up the other way: an idle window
 * gives no extra budget later.
 *
 * Pure arithmetic, no threads, no locks: owned by the migration thread.
 */
#include "chan/chan.h"

static uint64_t window_budget(uint64_t bps)
{
    uint64_t b = bps / (1000000000ull / LM_RATE_WINDOW_NS);
    /* Under 10 B/s the budget would be 0 and nothing could ever be sent. */
    return b ? b : 1;
}

void lm_rl_init(lm_ratelimit *rl, uint64_t bytes_per_sec, uint64_t now_ns)
{
    rl->bytes_per_sec = bytes_per_sec;
    rl->window_start_ns = now_ns;
    rl->window_bytes = 0;
}

void lm_rl_set(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    /* The budget is derived from bytes_per_sec on every query, so the
     * bytes already sent in this window count against the new limit. */
    rl->bytes_per_sec = bytes_per_sec;
}

void lm_rl_account(lm_ratelimit *rl, uint64_t bytes)
{
    rl->window_bytes =
        bytes > UINT64_MAX - rl->window_bytes ? UINT64_MAX : rl->window_bytes + bytes;
}

void lm_rl_tick(lm_ratelimit *rl, uint64_t now_ns)
{
    if (now_ns < rl->window_start_ns || now_ns - rl->window_start_ns < LM_RATE_WINDOW_NS)
        return;
    uint64_t elapsed = now_ns - rl->window_start_ns;
    rl->window_start_ns = now_ns;
    if (!rl->bytes_per_sec) {
        rl->window_bytes = 0;
        return;
    }
    /* What the elapsed time paid for; any overshoot beyond it is debt, at
     * most one window's budget so that bytes sent while unlimited (or under
     * a higher limit) do not stall the channel for long after a change. */
    uint64_t budget = window_budget(rl->bytes_per_sec);
    unsigned __int128 paid = (unsigned __int128)budget * elapsed / LM_RATE_WINDOW_NS;
    uint64_t debt = paid >= rl->window_bytes ? 0 : rl->window_bytes - (uint64_t)paid;
    rl->window_bytes = debt < budget ? debt : budget;
}

bool lm_rl_exceeded(const lm_ratelimit *rl)
{
    return rl->bytes_per_sec && rl->window_bytes >= window_budget(rl->bytes_per_sec);
}

uint64_t lm_rl_budget(const lm_ratelimit *rl)
{
    if (!rl->bytes_per_sec)
        return UINT64_MAX;
    uint64_t b = window_budget(rl->bytes_per_sec);
    return rl->window_bytes >= b ? 0 : b - rl->window_bytes;
}

uint64_t lm_rl_wait_ns(const lm_ratelimit *rl, uint64_t now_ns)
{
    if (now_ns < rl->window_start_ns)
        return LM_RATE_WINDOW_NS;
    uint64_t elapsed = now_ns - rl->window_start_ns;
    return elapsed >= LM_RATE_WINDOW_NS ? 0 : LM_RATE_WINDOW_NS - elapsed;
}
