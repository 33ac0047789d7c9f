/*
 * block.c - the host's RAM blocks and, on the destination, the mapping of
 * the source's block table onto them (mem.h).
 */
#include "mem/mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > LM_RAM_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 0x21 || name[i] > 0x7e)
            return false;
    return true;
}

int lm_mem_block_add(lm_mem *mem, const char *name, void *base, uint64_t len, uint32_t page_size,
                     lm_error *err)
{
    if (!name_ok(name))
        return lm_error_set(err, -EINVAL, "RAM block name must be 1..%d printable characters",
                            LM_RAM_NAME_MAX);
    if (page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EINVAL, "RAM block '%s': page size %u not supported (4096)", name,
                            page_size);
    if (!base || ((uintptr_t)base % page_size) || !len || (len % page_size))
        return lm_error_set(err, -EINVAL,
                            "RAM block '%s': base and length must be non-zero "
                            "multiples of the page size",
                            name);
    if (mem->nblocks >= LM_RAM_MAX_BLOCKS)
        return lm_error_set(err, -ENOSPC, "too many RAM blocks (max %d)", LM_RAM_MAX_BLOCKS);
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        if (strcmp(b->name, name) == 0)
            return lm_error_set(err, -EEXIST, "RAM block '%s' already registered", name);
        uint8_t *p = base;
        if (p < b->base + b->len && b->base < p + len)
            return lm_error_set(err, -EINVAL, "RAM block '%s' overlaps block '%s'", name, b->name);
    }
    lm_ram_block *b = &mem->blocks[mem->nblocks];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->base = base;
    b->len = len;
    b->page_size = page_size;
    b->npages = len / page_size;
    mem->nblocks++;
    return 0;
}

void lm_mem_fini(lm_mem *mem)
{
    lm_mem_prefault_stop(mem);
    for (unsigned i = 0; i < mem->nblocks; i++) {
        free(mem->blocks[i].received);
        free(mem->blocks[i].prefaulted);
        mem->blocks[i].received = mem->blocks[i].prefaulted = NULL;
    }
}

lm_ram_block *lm_mem_find(lm_mem *mem, uint64_t addr, unsigned *idx)
{
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        if (addr >= (uintptr_t)b->base && addr < (uintptr_t)b->base + b->len) {
            *idx = i;
            return b;
        }
    }
    return NULL;
}

int lm_mem_stream_map_set(lm_mem *mem, const lm_fmt_block *blocks, uint32_t n, lm_error *err)
{
    lm_mem_stream_map *s = &mem->smap;
    if (s->ready)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS received twice");
    if (n != mem->nblocks)
        return lm_error_set(err, -EPROTO, "the source has %u RAM blocks, this destination %u", n,
                            mem->nblocks);
    for (uint32_t i = 0; i < n; i++) {
        const lm_fmt_block *sb = &blocks[i];
        unsigned j;
        for (j = 0; j < mem->nblocks; j++)
            if (strcmp(mem->blocks[j].name, sb->name) == 0)
                break;
        if (j == mem->nblocks)
            return lm_error_set(err, -EPROTO, "RAM block '%s' of the source does not exist here",
                                sb->name);
        lm_ram_block *b = &mem->blocks[j];
        if (b->len != sb->length || b->page_size != sb->page_size)
            return lm_error_set(err, -EPROTO,
                                "RAM block '%s': source has %llu bytes in %u-byte pages, "
                                "destination %llu bytes in %u-byte pages",
                                sb->name, (unsigned long long)sb->length, sb->page_size,
                                (unsigned long long)b->len, b->page_size);
        s->blocks[i] = *sb;
        s->map[i] = (uint8_t)j;
        s->rmap[j] = i;
    }
    s->nblocks = n;
    s->ready = true;
    return 0;
}

int lm_mem_stream_run(lm_mem *mem, uint32_t block, uint64_t first, uint64_t count, const char *what,
                      lm_ram_block **out, lm_error *err)
{
    const lm_mem_stream_map *s = &mem->smap;
    if (!s->ready)
        return lm_error_set(err, -EPROTO, "%s before the RAM block table", what);
    if (lm_fmt_ram_run_check(block, first, count, s->blocks, s->nblocks, err) < 0)
        return lm_error_prefix(err, "%s", what);
    *out = &mem->blocks[s->map[block]];
    return 0;
}
