/* bitmap.c - searches and range operations over word-array bitmaps. */
#include "util/bitmap.h"

uint64_t lm_bitmap_next_set(const uint64_t *b, uint64_t nbits, uint64_t from)
{
    if (from >= nbits)
        return nbits;
    uint64_t w = from / 64;
    uint64_t word = b[w] & (~0ull << (from % 64));
    uint64_t nw = lm_bitmap_words(nbits);
    for (;;) {
        if (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            return i < nbits ? i : nbits;
        }
        if (++w >= nw)
            return nbits;
        word = b[w];
    }
}

uint64_t lm_bitmap_next_clear(const uint64_t *b, uint64_t nbits, uint64_t from)
{
    if (from >= nbits)
        return nbits;
    uint64_t w = from / 64;
    uint64_t word = ~b[w] & (~0ull << (from % 64));
    uint64_t nw = lm_bitmap_words(nbits);
    for (;;) {
        if (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            return i < nbits ? i : nbits;
        }
        if (++w >= nw)
            return nbits;
        word = ~b[w];
    }
}

uint64_t lm_bitmap_count(const uint64_t *b, uint64_t nbits)
{
    uint64_t n = 0, nw = nbits / 64;
    for (uint64_t w = 0; w < nw; w++)
        n += (uint64_t)__builtin_popcountll(b[w]);
    if (nbits % 64)
        n += (uint64_t)__builtin_popcountll(b[nw] & ((1ull << (nbits % 64)) - 1));
    return n;
}

void lm_bitmap_clear_range(uint64_t *b, uint64_t from, uint64_t to)
{
    while (from < to && (from % 64)) {
        lm_bit_clear(b, from);
        from++;
    }
    while (from + 64 <= to) {
        b[from / 64] = 0;
        from += 64;
    }
    while (from < to) {
        lm_bit_clear(b, from);
        from++;
    }
}

void lm_bitmap_set_range_atomic(uint64_t *b, uint64_t from, uint64_t to)
{
    uint64_t i = from;
    for (; i < to && (i % 64); i++)
        lm_bit_set_atomic(b, i);
    for (; i + 64 <= to; i += 64)
        __atomic_store_n(&b[i / 64], ~0ull, __ATOMIC_RELAXED);
    for (; i < to; i++)
        lm_bit_set_atomic(b, i);
}
