/*
 * file.c - file: URIs (QEMU's syntax and meaning, digest §5.10):
 * "file:PATH[,offset=N]", the stream starting at byte N of PATH.  The bytes
 * before N belong to whoever put them there (a management layer's own
 * header) and are never touched; the source truncates the file to N, so
 * nothing of an older, longer stream is left after the new one.
 *
 * No threads, no locks.  The parser is pure (fuzzed with the other URIs).
 */
#include "chan/chan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parses N of ",offset=N": decimal, or hex with 0x. */
static int parse_offset(const char *p, uint64_t *out)
{
    uint64_t v = 0;
    unsigned base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    if (!*p)
        return -EINVAL;
    for (; *p; p++) {
        unsigned d;
        if (*p >= '0' && *p <= '9')
            d = (unsigned)(*p - '0');
        else if (base == 16 && *p >= 'a' && *p <= 'f')
            d = (unsigned)(*p - 'a' + 10);
        else if (base == 16 && *p >= 'A' && *p <= 'F')
            d = (unsigned)(*p - 'A' + 10);
        else
            return -EINVAL;
        if (v > (UINT64_MAX - d) / base)
            return -ERANGE;
        v = v * base + d;
    }
    /* off_t is signed: an offset must fit it. */
    if (v > (uint64_t)INT64_MAX)
        return -ERANGE;
    *out = v;
    return 0;
}

int lm_uri_parse_file(const char *uri, const char *rest, lm_uri *u, lm_error *err)
{
    (void)uri;
    const char *comma = strrchr(rest, ',');
    size_t plen = strlen(rest);
    u->offset = 0;
    if (comma && !strncmp(comma, ",offset=", 8)) {
        int r = parse_offset(comma + 8, &u->offset);
        if (r < 0)
            return lm_error_set(err, r,
                                r == -ERANGE ? "bad file: URI: offset is too large"
                                             : "bad file: URI: offset is not a number "
                                               "(expected ,offset=N, N decimal or 0x hex)");
        plen = (size_t)(comma - rest);
    } else if (comma) {
        /* QEMU takes only offset=; a comma in a path is ambiguous with it. */
        return lm_error_set(err, -EINVAL,
                            "bad file: URI: unknown option after ',' (only offset=N is known)");
    }
    if (plen == 0)
        return lm_error_set(err, -EINVAL, "bad file: URI: empty path");
    /* Nor before ,offset=: "file:a,b,offset=0" would format back (offset
     * 0 is not written) as "file:a,b", which names an option "b"; the
     * fuzzing campaign found it (docs/reliability.md). */
    if (memchr(rest, ',', plen))
        return lm_error_set(err, -EINVAL,
                            "bad file: URI: ',' in the path (only ,offset=N may follow the path)");
    if (plen >= sizeof u->file)
        return lm_error_set(err, -ENAMETOOLONG, "bad file: URI: path is %zu bytes, at most %zu",
                            plen, sizeof u->file - 1);
    for (size_t i = 0; i < plen; i++)
        if ((unsigned char)rest[i] < 0x20)
            return lm_error_set(err, -EINVAL, "bad file: URI: control character in the path");
    memcpy(u->file, rest, plen);
    u->file[plen] = '\0';
    return 0;
}

int lm_file_open_out(const lm_uri *u, int *fd_out, lm_error *err)
{
    *fd_out = -1;
    int fd = open(u->file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return lm_error_set(err, -errno, "file '%s': %s", u->file, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ftruncate(fd, (off_t)u->offset) < 0) {
        int e = errno;
        close(fd);
        return lm_error_set(err, -e, "file '%s': truncating to offset %llu: %s", u->file,
                            (unsigned long long)u->offset, strerror(e));
    }
    if (lseek(fd, (off_t)u->offset, SEEK_SET) < 0) {
        int e = errno;
        close(fd);
        return lm_error_set(err, -e, "file '%s': seeking to offset %llu: %s", u->file,
                            (unsigned long long)u->offset, strerror(e));
    }
    *fd_out = fd;
    return 0;
}

int lm_file_open_in(const lm_uri *u, int *fd_out, lm_error *err)
{
    *fd_out = -1;
    int fd = open(u->file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lm_error_set(err, -errno, "file '%s': %s", u->file, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lm_error_set(err, -EINVAL, "file '%s': not a regular file", u->file);
    }
    if ((uint64_t)st.st_size <= u->offset) {
        close(fd);
        return lm_error_set(err, -EINVAL,
                            "file '%s': offset %llu is at or past the end of the file (%llu "
                            "bytes): no stream there",
                            u->file, (unsigned long long)u->offset, (unsigned long long)st.st_size);
    }
    if (lseek(fd, (off_t)u->offset, SEEK_SET) < 0) {
        int e = errno;
        close(fd);
        return lm_error_set(err, -e, "file '%s': seeking to offset %llu: %s", u->file,
                            (unsigned long long)u->offset, strerror(e));
    }
    *fd_out = fd;
    return 0;
}
