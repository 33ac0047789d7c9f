/*
 * fuzz_uri.c - libFuzzer target for lm_uri_parse: URIs come from QMP
 * clients (migrate, migrate-incoming), so any bytes must give either a
 * valid lm_uri or a clear error, never a crash or an overlong message.  A
 * parsed URI must format back to text that parses to the same URI.
 */
#include "chan/chan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    lm_uri u, u2;
    lm_error err = {0};
    if (lm_uri_parse(s, &u, &err) == 0) {
        char text[512], small[7];
        lm_uri_format(&u, text, sizeof text);
        lm_uri_format(&u, small, sizeof small);
        if (strlen(small) >= sizeof small)
            abort();
        lm_error err2 = {0};
        if (lm_uri_parse(text, &u2, &err2) != 0 || u2.kind != u.kind)
            abort();
        if (u.kind == LM_URI_TCP && (strcmp(u.host, u2.host) || strcmp(u.port, u2.port)))
            abort();
        if (u.kind == LM_URI_UNIX && strcmp(u.path, u2.path))
            abort();
        if (u.kind == LM_URI_FD && u.fd != u2.fd)
            abort();
    } else {
        /* An error always says something, and is NUL-terminated. */
        if (err.code >= 0 || err.msg[0] == '\0' ||
            strnlen(err.msg, sizeof err.msg) >= sizeof err.msg)
            abort();
    }
    free(s);
    return 0;
}
