/*
 * mapped.h - mapped-ram (DESIGN §8, digest §5.10, docs/format.md §9): a
 * file: URI's guest pages at fixed offsets.  Every RAM block gets a
 * present-page bitmap and a page region at a 1 MiB-aligned offset; page i
 * always lives at pages_offset + i * page_size, a zero page is a hole
 * (bit clear, never written), a page saved again overwrites its own place,
 * so a live save stays bounded.  The main stream (HELLO, RAM_BLOCKS, the
 * MAPPED_RAM record, device sections, EOS) is the ordinary one around it.
 *
 * Source: lm_mapped_new opens the page descriptors (one per writer: the
 * migration thread, or each multifd channel; O_DIRECT ones with direct-io,
 * the main stream's own descriptor otherwise); the migration thread writes
 * the layout (lm_mapped_save_setup) and, at completion, the bitmaps;
 * writers call lm_mapped_save_pages from their own thread (the present
 * bits are atomic; within a dirty round a page has one writer, and rounds
 * are fenced by multifd's local sync, seed 004).
 * Destination: lm_mapped_load, on the incoming thread, reads the layout
 * and the bitmaps, hands every run of present pages to a reader (inline,
 * or multifd's file readers), syncs once after the block list, and moves
 * the main stream past the regions.
 *
 * Layering: below multifd (whose channels call lm_mapped_save_pages);
 * uses mem/, chan/, format/ only.
 */
#ifndef LM_FILE_MAPPED_H
#define LM_FILE_MAPPED_H

#include "chan/record.h"
#include "mem/mem.h"

typedef struct lm_mapped lm_mapped;

/* Opens n page descriptors on path (write: O_WRONLY, else O_RDONLY) with
 * O_DIRECT, into fds[0..n).  A filesystem that refuses O_DIRECT (tmpfs)
 * gets an error naming it and the file. */
int lm_mapped_open_direct(const char *path, bool write, unsigned n, int *fds, lm_error *err);
/* Reads exactly n bytes at off; a short read is "truncated" (what names the
 * data, e.g. "block 'ram' pages"). */
int lm_mapped_pread(int fd, void *p, size_t n, uint64_t off, const char *path, const char *what,
                    lm_error *err);

/* Reads pages [first, first + count) of b from fd at off straight into
 * guest memory, populated first (a fault per page inside the read would
 * cost more than the read). */
int lm_mapped_read_run(int fd, lm_ram_block *b, uint64_t first, uint64_t count, uint64_t off,
                       const char *path, lm_error *err);

/* ------------------------------------------------------------------ source */

/* main_fd: the main stream's descriptor (borrowed: bitmaps are written on
 * it); nwriters: 1 (the migration thread) or the multifd channel count;
 * bytes: a counter the page writes add to (relaxed atomic, the caller's). */
int lm_mapped_new(lm_mem *mem, const char *path, int main_fd, bool direct, unsigned nwriters,
                  uint64_t *bytes, lm_mapped **out, lm_error *err);
void lm_mapped_free(lm_mapped *mr);
/* The page descriptor of writer i. */
int lm_mapped_fd(const lm_mapped *mr, unsigned i);
/* Migration thread, right after RAM_BLOCKS: plans the regions after the
 * MAPPED_RAM record, writes it, and moves the main stream past them. */
int lm_mapped_save_setup(lm_mapped *mr, lm_chan *main, lm_error *err);
/* Writer thread: pages[0..n) of block bi (ascending), with writer fd.
 * detect: a zero page clears its bit and is not written; the others set
 * theirs and are written in runs at their offsets.  *normal / *zero get
 * the counts. */
int lm_mapped_save_pages(lm_mapped *mr, int fd, unsigned bi, const uint64_t *pages, uint32_t n,
                         bool detect, uint32_t *normal, uint32_t *zero, lm_error *err);
/* The same for a run [first, first + count), migration thread. */
int lm_mapped_save_run(lm_mapped *mr, unsigned bi, uint64_t first, uint64_t count, lm_error *err);
/* A run of zero pages: their bits clear (what an earlier round wrote there
 * is left, unused). */
void lm_mapped_save_zero(lm_mapped *mr, unsigned bi, uint64_t first, uint64_t count);
/* Migration thread, every page written: the bitmaps go to their places. */
int lm_mapped_save_complete(lm_mapped *mr, lm_error *err);

/* ------------------------------------------------------------- destination */

/* Where a run of present pages goes: read (queue) pages [first, first +
 * count) of b from file offset off (lm_mapped_read_run), and wait for
 * every queued read (called once). */
typedef struct lm_mapped_reader {
    int (*read)(void *opaque, lm_ram_block *b, uint64_t first, uint64_t count, uint64_t off,
                lm_error *err);
    int (*sync)(void *opaque, lm_error *err);
    void *opaque;
} lm_mapped_reader;

/* Incoming thread, at the MAPPED_RAM record h of main (a file): reads the
 * layout and checks it against the record's end, the stream's block
 * table and the file's size (truncated). */
int lm_mapped_read_layout(lm_mem *mem, lm_chan *main, const lm_rec_hdr *h, const char *path,
                          lm_mapped_layout *l, lm_error *err);
/* Reads and checks (CRC, no bit past the end) the bitmap region of the
 * layout's block i (name: its RAM block's) into *out (malloc'ed, the
 * caller frees it); returns the present pages, or < 0. */
int64_t lm_mapped_read_bitmap(int fd, const lm_mapped_layout *l, uint32_t i, const char *name,
                              const char *path, uint8_t **out, lm_error *err);

/* Incoming thread, at the MAPPED_RAM record h of main (a file): checks the
 * layout against the stream's block table and the file, loads every
 * present page through rd (zero pages through pl: cleared only where an
 * earlier attempt wrote), then moves main to where the stream goes on.
 * path names the file in errors.  *pages gets the present pages. */
int lm_mapped_load(lm_mem *mem, lm_place *pl, lm_chan *main, const lm_rec_hdr *h, const char *path,
                   const lm_mapped_reader *rd, uint64_t *pages, lm_error *err);

#endif /* LM_FILE_MAPPED_H */
