/*
 * bytes.h - the byte-level primitives the codecs share: little-endian
 * fields and the checks of names, messages and page sizes.  Internal to
 * format/.
 */
#ifndef LM_FORMAT_BYTES_H
#define LM_FORMAT_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ primitives */

static inline uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* Index of the first byte of a name that is not printable ASCII
 * (0x20..0x7e), or -1 when all are.  Names end up in error messages, QMP
 * replies and `livemig inspect` output, so control bytes are refused. */
static inline long bad_name_byte(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return (long)i;
    return -1;
}

/* Messages may also carry UTF-8 (bytes >= 0x80) but no control bytes. */
static inline bool msg_byte_ok(uint8_t c)
{
    return c >= 0x20 && c != 0x7f;
}

static inline bool page_size_ok(uint64_t ps)
{
    return ps >= 4096 && ps <= (1u << 30) && (ps & (ps - 1)) == 0;
}

#endif /* LM_FORMAT_BYTES_H */
