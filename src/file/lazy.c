/*
 * lazy.c - lazy restore of a mapped-ram file: the fault-time serve and
 * the background readers (lazy.h has the threads and the lock).
 */
#include "file/lazy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A background reader's run of present pages (4 MiB: disk speed, and
 * shared fairly among readers); zero runs are longer (no I/O). */
#define RUN_PAGES 1024u
#define ZERO_RUN_PAGES 8192u
/* Pages around a fault served with it: one aligned 64 KiB read. */
#define CLUSTER 16u
/* The test knob's wait bound. */
#define HOLD_MAX_NS (30ull * 1000000000ull)

struct lm_lazy {
    lm_mem *mem;
    lm_place *pl;
    char path[LM_URI_FILE_PATH_MAX];
    lm_mapped_layout l;
    uint8_t *bm[LM_RAM_MAX_BLOCKS];   /* layout order */
    unsigned bidx[LM_RAM_MAX_BLOCKS]; /* layout index -> RAM block */
    int lidx[LM_RAM_MAX_BLOCKS];      /* RAM block -> layout index, -1 */
    uint64_t present;
    unsigned n;
    int fds[LM_MULTIFD_MAX_CHANNELS];
    bool own_fds, direct;
    int serve_fd;  /* the main stream's (buffered), for faults */
    uint8_t *fbuf; /* the fault thread's cluster */
    uint64_t *bytes;
    lm_lazy_hooks hk;
    /* test knob (LIVEMIG_TEST_LAZY) */
    uint64_t hold_faults;
    char hold_file[256];

    pthread_mutex_t lock;
    pthread_cond_t cond; /* a serve, a failure, stop */
    /* --- lock --- */
    /* Reader i's share: pages [pos[i], end[i]) of the blocks laid end to
     * end in layout order, read front to back (one sequential stream per
     * descriptor, so the kernel's readahead runs ahead of the copies). */
    uint64_t pos[LM_MULTIFD_MAX_CHANNELS], end[LM_MULTIFD_MAX_CHANNELS];
    bool quit;
    unsigned ndone;
    int ret;
    lm_error err;
    uint64_t served; /* pages placed by serves */
    pthread_t threads[LM_MULTIFD_MAX_CHANNELS];
    unsigned started;
};

static bool bit(const uint8_t *bm, uint64_t p)
{
    return (bm[p / 8] >> (p % 8)) & 1;
}

/* Test knob (never set in production): LIVEMIG_TEST_LAZY=hold-faults:N
 * keeps the readers from starting until N pages were served at fault
 * time, hold-file:PATH until PATH exists (both bounded by 30 s), so that
 * a test has the guest touch pages no reader placed yet, or changes the
 * file under a running restore, without a race. */
static void parse_knob(lm_lazy *z)
{
    const char *e = getenv("LIVEMIG_TEST_LAZY");
    if (!e)
        return;
    const char *f = strstr(e, "hold-faults:");
    if (f)
        z->hold_faults = strtoull(f + 12, NULL, 10);
    f = strstr(e, "hold-file:");
    if (f) {
        snprintf(z->hold_file, sizeof z->hold_file, "%s", f + 10);
        z->hold_file[strcspn(z->hold_file, ",")] = 0;
    }
    if (z->hold_faults || z->hold_file[0])
        fprintf(stderr, "livemig: test knob: lazy readers held (%s)\n", e);
}

static void hold(lm_lazy *z)
{
    if (!z->hold_faults && !z->hold_file[0])
        return;
    uint64_t end = lm_now_ns() + HOLD_MAX_NS;
    pthread_mutex_lock(&z->lock);
    while (!z->quit && lm_now_ns() < end) {
        if (z->hold_faults && z->served >= z->hold_faults)
            break;
        if (z->hold_file[0] && access(z->hold_file, F_OK) == 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&z->cond, &z->lock, &ts);
    }
    pthread_mutex_unlock(&z->lock);
}

void lm_lazy_fail(lm_lazy *z, const lm_error *err)
{
    pthread_mutex_lock(&z->lock);
    bool first = z->ret == 0;
    if (first) {
        z->ret = err && err->code ? err->code : -EIO;
        if (err)
            z->err = *err;
        if (!z->err.code)
            lm_error_set(&z->err, z->ret, "file '%s': lazy restore failed", z->path);
    }
    z->quit = true;
    pthread_cond_broadcast(&z->cond);
    pthread_mutex_unlock(&z->lock);
    if (first && z->hk.wake)
        z->hk.wake(z->hk.opaque);
}

int lm_lazy_error(lm_lazy *z, lm_error *err)
{
    pthread_mutex_lock(&z->lock);
    int ret = z->ret;
    if (ret && err)
        *err = z->err;
    pthread_mutex_unlock(&z->lock);
    return ret;
}

bool lm_lazy_done(lm_lazy *z)
{
    pthread_mutex_lock(&z->lock);
    bool done = z->started && z->ndone == z->started;
    pthread_mutex_unlock(&z->lock);
    return done;
}

/* Places pages [p, q) of layout block li (all present, or all zero) from
 * buf, read with fd at their place. */
static int place_run(lm_lazy *z, int fd, uint32_t li, uint64_t p, uint64_t q, bool present,
                     uint8_t *buf, lm_error *err)
{
    lm_ram_block *b = &z->mem->blocks[z->bidx[li]];
    uint64_t ps = z->l.b[li].page_size;
    if (!present)
        return lm_place_pages(z->pl, b, p, q - p, NULL, err);
    char what[LM_RAM_NAME_MAX + 32];
    snprintf(what, sizeof what, "block '%s' pages", b->name);
    int ret = lm_mapped_pread(fd, buf, (q - p) * ps, z->l.b[li].pages_offset + p * ps, z->path,
                              what, err);
    if (ret < 0)
        return ret;
    LM_ATOMIC_ADD(z->bytes, (q - p) * ps);
    return lm_place_pages(z->pl, b, p, q - p, buf, err);
}

/* The next run of reader id (lock held): false when its share is done. */
static bool next_run(lm_lazy *z, unsigned id, uint32_t *li, uint64_t *p, uint64_t *q, bool *present)
{
    uint64_t base = 0, g = z->pos[id];
    for (uint32_t b = 0; b < z->l.nblocks && g < z->end[id]; b++) {
        uint64_t np = z->l.b[b].npages;
        if (g >= base + np) {
            base += np;
            continue;
        }
        const uint8_t *bm = z->bm[b];
        uint64_t s = g - base, stop = z->end[id] - base < np ? z->end[id] - base : np;
        bool set = bit(bm, s);
        uint64_t e = s + 1, max = set ? RUN_PAGES : ZERO_RUN_PAGES;
        while (e < stop && e - s < max && bit(bm, e) == set)
            e++;
        *li = b;
        *p = s;
        *q = e;
        *present = set;
        z->pos[id] = base + e;
        return true;
    }
    return false;
}

typedef struct reader_arg {
    lm_lazy *z;
    unsigned id;
} reader_arg;

static void *reader_fn(void *arg)
{
    reader_arg *ra = arg;
    lm_lazy *z = ra->z;
    unsigned id = ra->id;
    free(ra);
    char name[16];
    snprintf(name, sizeof name, "lm-lazy/%u", id);
    pthread_setname_np(pthread_self(), name);
    lm_error err = {0};
    int ret = 0;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, (size_t)RUN_PAGES * LM_PAGE_SIZE) != 0)
        ret = lm_error_set(&err, -ENOMEM, "out of memory for a lazy reader's buffer");
    hold(z);
    while (ret == 0) {
        uint32_t li;
        uint64_t p, q;
        bool present;
        pthread_mutex_lock(&z->lock);
        bool more = !z->quit && next_run(z, id, &li, &p, &q, &present);
        pthread_mutex_unlock(&z->lock);
        if (!more)
            break;
        /* Runs that faults placed whole are skipped (a partly placed one
         * is read whole: placement skips the pages placed already). */
        if (z->hk.owed && !z->hk.owed(z->hk.opaque, z->bidx[li], p, q - p))
            continue;
        ret = place_run(z, z->fds[id], li, p, q, present, buf, &err);
    }
    free(buf);
    if (ret < 0)
        lm_lazy_fail(z, &err);
    pthread_mutex_lock(&z->lock);
    bool last = ++z->ndone == z->started;
    pthread_mutex_unlock(&z->lock);
    if (last && ret == 0 && z->hk.wake)
        z->hk.wake(z->hk.opaque);
    return NULL;
}

int lm_lazy_serve(lm_lazy *z, unsigned bi, uint64_t page, lm_error *err)
{
    int li = bi < LM_RAM_MAX_BLOCKS ? z->lidx[bi] : -1;
    if (li < 0)
        return lm_error_set(err, -EINVAL, "lazy restore: a fault outside the file's blocks");
    const uint8_t *bm = z->bm[li];
    uint64_t np = z->l.b[li].npages;
    uint64_t c0 = page / CLUSTER * CLUSTER, c1 = c0 + CLUSTER < np ? c0 + CLUSTER : np;
    int ret = 0;
    for (uint64_t p = c0; p < c1 && ret == 0;) {
        bool set = bit(bm, p);
        uint64_t q = p + 1;
        while (q < c1 && bit(bm, q) == set)
            q++;
        ret = place_run(z, z->serve_fd, (uint32_t)li, p, q, set, z->fbuf, err);
        p = q;
    }
    if (ret < 0) {
        lm_lazy_fail(z, err);
        return ret;
    }
    pthread_mutex_lock(&z->lock);
    z->served += c1 - c0;
    pthread_cond_broadcast(&z->cond);
    pthread_mutex_unlock(&z->lock);
    return 0;
}

int lm_lazy_open(lm_mem *mem, lm_place *pl, lm_chan *main, const lm_rec_hdr *h, const char *path,
                 bool direct, unsigned nreaders, uint64_t *bytes, lm_lazy **out, lm_error *err)
{
    *out = NULL;
    if (nreaders < 1 || nreaders > LM_MULTIFD_MAX_CHANNELS)
        return lm_error_set(err, -EINVAL, "lazy restore: %u readers", nreaders);
    lm_lazy *z = calloc(1, sizeof *z);
    if (!z)
        return lm_error_set(err, -ENOMEM, "out of memory");
    z->mem = mem;
    z->pl = pl;
    z->bytes = bytes;
    z->n = nreaders;
    z->serve_fd = lm_chan_fd(main);
    snprintf(z->path, sizeof z->path, "%s", path);
    pthread_mutex_init(&z->lock, NULL);
    pthread_cond_init(&z->cond, NULL);
    for (unsigned i = 0; i < LM_RAM_MAX_BLOCKS; i++)
        z->lidx[i] = -1;
    for (unsigned i = 0; i < nreaders; i++)
        z->fds[i] = z->serve_fd; /* pread: the stream's offset stays */
    parse_knob(z);
    int ret = lm_mapped_read_layout(mem, main, h, path, &z->l, err);
    /* The device state after the regions is what the guest waits for:
     * its read from the disk starts now, beside the bitmaps' reads and
     * the registration (the time to run). */
    if (ret == 0)
        posix_fadvise(z->serve_fd, (off_t)z->l.resume, 0, POSIX_FADV_WILLNEED);
    for (uint32_t i = 0; i < z->l.nblocks && ret == 0; i++) {
        unsigned bi = mem->smap.map[i];
        z->bidx[i] = bi;
        z->lidx[bi] = (int)i;
        int64_t np = lm_mapped_read_bitmap(z->serve_fd, &z->l, i, mem->blocks[bi].name, path,
                                           &z->bm[i], err);
        if (np < 0)
            ret = (int)np;
        else
            z->present += (uint64_t)np;
        if (ret == 0 && z->l.b[i].page_size != LM_PAGE_SIZE)
            ret = lm_error_set(err, -ENOTSUP,
                               "lazy restore: block '%s' has %u-byte pages, only %u supported",
                               mem->blocks[bi].name, z->l.b[i].page_size, LM_PAGE_SIZE);
    }
    if (ret == 0 && posix_memalign((void **)&z->fbuf, 4096, (size_t)CLUSTER * LM_PAGE_SIZE) != 0)
        ret = lm_error_set(err, -ENOMEM, "out of memory");
    if (ret == 0 && direct) {
        ret = lm_mapped_open_direct(path, false, nreaders, z->fds, err);
        z->own_fds = ret == 0;
        z->direct = ret == 0;
    } else if (ret == 0) {
        /* One descriptor per reader: a readahead state of its own. */
        unsigned k = 0;
        for (; k < nreaders; k++) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                ret = lm_error_set(err, -errno, "file '%s': %s", path, strerror(errno));
                break;
            }
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
            z->fds[k] = fd;
        }
        z->own_fds = true;
        for (unsigned r = k; r < nreaders; r++)
            z->fds[r] = -1;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < z->l.nblocks; i++)
        total += z->l.b[i].npages;
    for (unsigned i = 0; i < nreaders; i++) {
        z->pos[i] = total * i / nreaders;
        z->end[i] = total * (i + 1) / nreaders;
    }
    if (ret == 0 && lm_chan_seek(main, z->l.resume) < 0)
        ret = lm_chan_get_error(main, err);
    if (ret < 0) {
        lm_lazy_free(z);
        return ret;
    }
    *out = z;
    return 0;
}

uint64_t lm_lazy_present(const lm_lazy *z)
{
    return z->present;
}

int lm_lazy_start(lm_lazy *z, const lm_lazy_hooks *hk, lm_error *err)
{
    z->hk = *hk;
    int ret = 0;
    for (unsigned i = 0; i < z->n && ret == 0; i++) {
        reader_arg *ra = malloc(sizeof *ra);
        if (!ra)
            return lm_error_set(err, -ENOMEM, "out of memory");
        *ra = (reader_arg){z, i};
        pthread_mutex_lock(&z->lock);
        ret = -pthread_create(&z->threads[i], NULL, reader_fn, ra);
        if (ret == 0)
            z->started++;
        pthread_mutex_unlock(&z->lock);
        if (ret < 0) {
            free(ra);
            lm_error_set(err, ret, "cannot start lazy reader %u", i);
        }
    }
    return ret;
}

void lm_lazy_stop(lm_lazy *z)
{
    pthread_mutex_lock(&z->lock);
    z->quit = true;
    pthread_cond_broadcast(&z->cond);
    unsigned n = z->started;
    z->started = 0;
    z->ndone = 0;
    pthread_mutex_unlock(&z->lock);
    for (unsigned i = 0; i < n; i++)
        pthread_join(z->threads[i], NULL);
}

void lm_lazy_free(lm_lazy *z)
{
    if (!z)
        return;
    lm_lazy_stop(z);
    for (unsigned i = 0; i < LM_RAM_MAX_BLOCKS; i++)
        free(z->bm[i]);
    if (z->own_fds)
        for (unsigned i = 0; i < z->n; i++)
            if (z->fds[i] >= 0)
                close(z->fds[i]);
    free(z->fbuf);
    pthread_cond_destroy(&z->cond);
    pthread_mutex_destroy(&z->lock);
    free(z);
}
