/*
 * object_opt.c - QEMU's -object syntax for `livemig guest --object`:
 * "TYPE,id=ID,key=value,..." with ",," for a comma inside a value (a
 * distinguished name: "rules.0.match=CN=a,,O=b"), handed to
 * lm_mig_object_add.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KV 256

int cli_object_add(lm_mig *m, const char *spec, lm_error *err)
{
    size_t len = strlen(spec);
    char *buf = malloc(len + 1);
    if (!buf)
        return lm_error_set(err, -ENOMEM, "out of memory");
    /* Split at single commas, ",," becomes ','. */
    char *fields[MAX_KV + 2];
    unsigned nf = 0;
    char *w = buf;
    fields[nf++] = w;
    for (const char *p = spec; *p; p++) {
        if (*p == ',' && p[1] == ',') {
            *w++ = ',';
            p++;
        } else if (*p == ',') {
            *w++ = 0;
            if (nf == MAX_KV + 2) {
                free(buf);
                return lm_error_set(err, -E2BIG, "too many properties");
            }
            fields[nf++] = w;
        } else {
            *w++ = *p;
        }
    }
    *w = 0;
    const char *type = fields[0], *id = NULL;
    const char *keys[MAX_KV], *vals[MAX_KV];
    unsigned n = 0;
    int r = 0;
    for (unsigned i = 1; i < nf && r == 0; i++) {
        char *eq = strchr(fields[i], '=');
        if (!eq) {
            r = lm_error_set(err, -EINVAL, "'%s': expected key=value", fields[i]);
            break;
        }
        *eq = 0;
        if (!strcmp(fields[i], "id")) {
            id = eq + 1;
            continue;
        }
        keys[n] = fields[i];
        vals[n++] = eq + 1;
    }
    if (r == 0 && (!*type || !id))
        r = lm_error_set(err, -EINVAL, "expected TYPE,id=ID[,key=value...]");
    if (r == 0)
        r = lm_mig_object_add(m, type, id, n, keys, vals, err);
    free(buf);
    return r;
}
