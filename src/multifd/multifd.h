/*
 * multifd.h - parallel page channels (DESIGN §8, seed 004, digest §5.9/§8).
 *
 * Source: the migration thread queues pages (lm_mfd_queue_page); a full
 * batch (one block, up to LM_MFD_BATCH_PAGES pages) is handed to an idle
 * channel thread, which detects zero pages (zero-page-detection=multifd),
 * compresses (one stream per channel) and writes one MULTIFD_PAGES record.
 * At every dirty sync the migration thread calls lm_mfd_send_sync(): each
 * channel writes MULTIFD_SYNC(seq) after the batches it already has, and
 * the main channel gets MULTIFD_FLUSH(seq).
 *
 * Destination: a thread per channel reads MULTIFD_PAGES straight into
 * guest memory (or decompresses into it).  On MULTIFD_SYNC(seq) a channel
 * parks until the main thread, on MULTIFD_FLUSH(seq), has seen every
 * channel reach seq (lm_mfd_recv_sync).  So every page of round N is in
 * memory before any page of round N+1 is read, on whatever channel: a page
 * re-sent in a later round can never be overwritten by its older copy.
 * lm_mfd_recv_sync() may be called any number of times (a seq already
 * reached returns at once); it is the only sync primitive, for sockets and
 * (later) files alike.
 *
 * Postcopy: after POSTCOPY_RUN the channels carry the background push.
 * The source fences them right after RUN (lm_mfd_send_fence), so a
 * receive channel reads a postcopy packet only once the destination is
 * listening; its pages then go through the same placement interface
 * (mem.h), which places them atomically from then on.  A last sync
 * precedes EOS.
 *
 * Layering: multifd moves pages between the memory layer (mem/) and
 * channels; it knows nothing of the migration object, RAM's passes or
 * postcopy.  Its counters live in the caller's lm_mfd_counters.
 */
#ifndef LM_MULTIFD_H
#define LM_MULTIFD_H

#include "chan/record.h"
#include "mem/mem.h"

#include <sys/uio.h>

#define LM_MFD_BATCH_PAGES 256 /* pages per packet: 1 MiB, like a main-channel run */

/* ------------------------------------------------------------ compression */

typedef struct lm_mfd_codec lm_mfd_codec;

/* One compression (or decompression) stream of one channel.  level: zlib
 * 0..9, zstd 0..20 (0 = library default), ignored for lz4. */
int lm_mfd_codec_new(lm_mfd_comp method, int level, bool compress, lm_mfd_codec **out,
                     lm_error *err);
void lm_mfd_codec_free(lm_mfd_codec *c);
/* Largest output of lm_mfd_compress for in_len input bytes. */
size_t lm_mfd_compress_bound(lm_mfd_comp method, size_t in_len);
/* Compresses the n pieces as one packet (flushed, so the peer can decode
 * it now); returns the compressed size or < 0. */
long lm_mfd_compress(lm_mfd_codec *c, const struct iovec *in, unsigned n, uint8_t *out, size_t cap,
                     lm_error *err);
/* Decompresses one packet: must yield exactly out_len bytes and use all of
 * in; anything else is an error naming what was wrong. */
int lm_mfd_decompress(lm_mfd_codec *c, const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t out_len, lm_error *err);

/* ------------------------------------------------------------------ source */

typedef struct lm_mfd_send lm_mfd_send;

/* What the channels did, for query-migrate: written by the channel
 * threads with relaxed atomics, owned by the caller (it outlives the
 * sender). */
typedef struct lm_mfd_counters {
    uint64_t bytes;                                         /* wire bytes of every channel */
    uint64_t normal, zero;                                  /* pages sent as data / found zero */
    uint64_t precopy_bytes, downtime_bytes, postcopy_bytes; /* bytes by phase */
    uint32_t channels;
    lm_multifd_chan_stats chan[LM_MULTIFD_MAX_CHANNELS];
    uint64_t postcopy_pages; /* destination: pages placed atomically */
} lm_mfd_counters;

struct lm_mapped;

typedef struct lm_mfd_send_cfg {
    lm_multifd_compression compression;
    int level;
    lm_zero_page_detection zpd;
    /* mapped-ram (a file): no channels and no packets; channel i writes
     * its batches at the pages' offsets with the file's descriptor i
     * (lm_mapped_save_pages), and a sync only drains the channels (seed
     * 004: local, nothing goes on the main stream). */
    struct lm_mapped *mapped;
} lm_mfd_send_cfg;

/* Starts a send thread per channel ("lm-mfd-send/N").  chans[0..n) are
 * connected channels past their HELLO (NULL with cfg->mapped); ownership moves to the sender when
 * it returns 0 (on failure they stay the caller's).
 * main is the main channel: a channel's failure is set as its error and
 * shuts it down, so the migration thread sees it. */
int lm_mfd_send_new(lm_mem *mem, lm_mfd_counters *ctr, lm_chan *main, lm_chan **chans, unsigned n,
                    const lm_mfd_send_cfg *cfg, lm_mfd_send **out, lm_error *err);
/* Migration thread: adds one page; hands the batch off when it is full or
 * the block changes (may block until a channel is idle). */
int lm_mfd_queue_page(lm_mfd_send *s, uint32_t block, uint64_t page, lm_error *err);
/* Migration thread: hands off the partial batch, then has every channel
 * write MULTIFD_SYNC(seq) after its queued work, and writes
 * MULTIFD_FLUSH(seq) on the main channel.  Does nothing when no page was
 * queued since the previous sync. */
int lm_mfd_send_sync(lm_mfd_send *s, lm_error *err);
/* Migration thread: like lm_mfd_send_sync, but the SYNC/FLUSH pair goes
 * out even when no page was queued since the previous sync.  Postcopy
 * uses it right after POSTCOPY_RUN: a channel's next packet is then read
 * only once the destination's main thread has processed RUN (so it is
 * placed atomically, never written into memory being discarded). */
int lm_mfd_send_fence(lm_mfd_send *s, lm_error *err);
/* Migration thread, after the main channel's EOS: every channel writes EOS
 * and flushes; waits for them.  Returns the first channel error. */
int lm_mfd_send_finish(lm_mfd_send *s, lm_error *err);
/* Migration thread: the phase the batches handed off from now on belong
 * to; their wire bytes count as precopy-, downtime- or postcopy-bytes. */
typedef enum { LM_MFD_PRECOPY, LM_MFD_DOWNTIME, LM_MFD_POSTCOPY } lm_mfd_phase;
/* Bytes handed to the channels and not yet delivered: the pages of the
 * batches not yet sent (before compression: an upper bound) and what the
 * sockets still hold (lm_chan_queued); with_cur: also the batch the
 * migration thread is still filling (it leaves only when full or at a
 * sync, so waiting for it to drain would wait for ever).  The migration
 * thread only. */
uint64_t lm_mfd_send_queued(lm_mfd_send *s, bool with_cur);
void lm_mfd_send_set_phase(lm_mfd_send *s, lm_mfd_phase phase);
/* Any thread: shuts every channel down (cancel, failure). */
void lm_mfd_send_shutdown(lm_mfd_send *s, const char *why);
/* Joins the threads (after shutdown or finish), closes the channels. */
void lm_mfd_send_free(lm_mfd_send *s);

/* ------------------------------------------------------------- destination */

typedef struct lm_mfd_recv lm_mfd_recv;

/* Starts a receive thread per channel ("lm-mfd-recv/N"); ownership of
 * chans moves when it returns 0 (on failure they stay the caller's).  Test knob (never set in
 * production): the environment variable LIVEMIG_TEST_MULTIFD="delay=C:MS" makes channel C sleep MS
 * before placing each packet, so its pages arrive after those the other
 * channels carried later: the reordering the per-pass sync must absorb.  A channel's failure is set
 * as main's error and shuts main down, so the incoming thread stops with that reason. */
int lm_mfd_recv_new(lm_mem *mem, lm_place *place, lm_mfd_counters *ctr, lm_chan *main,
                    lm_chan **chans, unsigned n, lm_mfd_recv **out, lm_error *err);
/* File readers (mapped-ram): n threads ("lm-mfd-recv/N") reading with
 * fds[i] (closed by lm_mfd_recv_free when own_fds) what the incoming
 * thread queues with lm_mfd_recv_file_read.  No packets: lm_mfd_recv_sync
 * asks every reader to drain its queue and waits for them all, the same
 * re-entrant call as for sockets.  path names the file in errors; a
 * reader's failure is set as main's error. */
int lm_mfd_recv_new_file(lm_mfd_counters *ctr, lm_chan *main, const int *fds, unsigned n,
                         bool own_fds, const char *path, lm_mfd_recv **out, lm_error *err);
/* Incoming thread: queues a read of pages [first, first + count) of b at
 * file offset off (blocks while every reader's queue is full). */
int lm_mfd_recv_file_read(lm_mfd_recv *r, lm_ram_block *b, uint64_t first, uint64_t count,
                          uint64_t off, lm_error *err);
/* Incoming thread: the RAM block table is known (channels may place pages). */
void lm_mfd_recv_blocks_ready(lm_mfd_recv *r);
/* Incoming thread: waits until every channel reached MULTIFD_SYNC(seq),
 * then releases them.  Re-entrant: a seq already reached returns at once. */
int lm_mfd_recv_sync(lm_mfd_recv *r, uint64_t seq, lm_error *err);
/* Incoming thread, at EOS: waits for every channel's EOS. */
int lm_mfd_recv_finish(lm_mfd_recv *r, lm_error *err);
void lm_mfd_recv_shutdown(lm_mfd_recv *r, const char *why);
void lm_mfd_recv_free(lm_mfd_recv *r);

#endif /* LM_MULTIFD_H */
