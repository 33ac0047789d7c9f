/*
 * bitmap.h - bitmaps of pages (or 2 MiB chunks) as arrays of 64-bit words,
 * bit i in word i / 64 at position i % 64.  Plain helpers for maps owned by
 * one thread or guarded by a lock; the _atomic ones for maps several
 * threads set concurrently (relaxed: they order nothing else).  Knows
 * nothing of migration.
 */
#ifndef LM_UTIL_BITMAP_H
#define LM_UTIL_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

static inline uint64_t lm_bitmap_words(uint64_t nbits)
{
    return (nbits + 63) / 64;
}
static inline bool lm_bit_test(const uint64_t *b, uint64_t i)
{
    return (b[i / 64] >> (i % 64)) & 1;
}
static inline void lm_bit_set(uint64_t *b, uint64_t i)
{
    b[i / 64] |= 1ull << (i % 64);
}
static inline void lm_bit_clear(uint64_t *b, uint64_t i)
{
    b[i / 64] &= ~(1ull << (i % 64));
}
static inline bool lm_bit_test_atomic(const uint64_t *b, uint64_t i)
{
    return (__atomic_load_n(&b[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}
static inline void lm_bit_set_atomic(uint64_t *b, uint64_t i)
{
    __atomic_fetch_or(&b[i / 64], 1ull << (i % 64), __ATOMIC_RELAXED);
}

/* First set (clear) bit at or after `from`, or nbits when there is none. */
uint64_t lm_bitmap_next_set(const uint64_t *b, uint64_t nbits, uint64_t from);
uint64_t lm_bitmap_next_clear(const uint64_t *b, uint64_t nbits, uint64_t from);
uint64_t lm_bitmap_count(const uint64_t *b, uint64_t nbits);
/* Clears bits [from, to); sets them with atomic ORs (whole words stored). */
void lm_bitmap_clear_range(uint64_t *b, uint64_t from, uint64_t to);
void lm_bitmap_set_range_atomic(uint64_t *b, uint64_t from, uint64_t to);

#endif /* LM_UTIL_BITMAP_H */
