/*
 * objects.c - QEMU's user-creatable objects that migration TLS needs
 * (object-add / object-del, -object): tls-creds-x509, tls-creds-psk and
 * authz-list, kept by id in the lm_mig; and the choice, when a migration
 * starts, of the credentials and authz list its parameters name.
 *
 * Properties arrive flat as strings, QEMU's -object form: "dir=...",
 * "verify-peer=on", "rules.0.match=CN=x" (QMP's JSON is flattened into it
 * by the caller).  Credentials are loaded when added (a bad file is named
 * by object-add, as QEMU).  Threads: under m->lock; the objects are
 * reference counted, so a migration keeps what it started with when one
 * is deleted.
 */
#include "chan/tls.h"
#include "core/internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct lm_object {
    char id[LM_TLS_ID_MAX + 1];
    lm_tls_creds *creds;
    lm_authz *authz;
    struct lm_object *next;
};

static const char *prop(unsigned n, const char *const *k, const char *const *v, const char *name)
{
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(k[i], name))
            return v[i];
    return NULL;
}

static int parse_bool(const char *s, const char *what, bool *out, lm_error *err)
{
    if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes"))
        *out = true;
    else if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no"))
        *out = false;
    else
        return lm_error_set(err, -EINVAL, "Parameter '%s' expects 'on' or 'off'", what);
    return 0;
}

static int endpoint(const char *s, bool *server, lm_error *err)
{
    if (!s || !strcmp(s, "client"))
        *server = false;
    else if (!strcmp(s, "server"))
        *server = true;
    else
        return lm_error_set(err, -EINVAL, "Parameter 'endpoint' does not accept value '%s'", s);
    return 0;
}

static bool known(const char *key, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (!strcmp(key, *allowed))
            return true;
    return false;
}

static int creds_new(bool psk, unsigned n, const char *const *k, const char *const *v,
                     lm_tls_creds **out, lm_error *err)
{
    static const char *const x509_keys[] = {"dir",      "endpoint",     "verify-peer",
                                            "priority", "sanity-check", NULL};
    static const char *const psk_keys[] = {"dir",      "endpoint", "verify-peer",
                                           "priority", "username", NULL};
    for (unsigned i = 0; i < n; i++)
        if (!known(k[i], psk ? psk_keys : x509_keys))
            return lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", k[i]);
    bool server = false, verify = true;
    int r = endpoint(prop(n, k, v, "endpoint"), &server, err);
    const char *s = prop(n, k, v, "verify-peer");
    if (r == 0 && s)
        r = parse_bool(s, "verify-peer", &verify, err);
    if (r == 0 && prop(n, k, v, "priority"))
        r = lm_error_set(err, -ENOTSUP,
                         "Parameter 'priority': livemig uses its own TLS 1.3 priority");
    if (r < 0)
        return r;
    const char *dir = prop(n, k, v, "dir");
    if (psk)
        return lm_tls_creds_psk_new(dir, server, prop(n, k, v, "username"), out, err);
    return lm_tls_creds_x509_new(dir, server, verify, out, err);
}

#define MAX_RULES 256

static int authz_new(unsigned n, const char *const *k, const char *const *v, lm_authz **out,
                     lm_error *err)
{
    lm_authz_rule rules[MAX_RULES];
    bool have_match[MAX_RULES] = {false};
    unsigned nr = 0;
    bool allow = false;
    memset(rules, 0, sizeof rules);
    for (unsigned i = 0; i < n; i++) {
        if (!strcmp(k[i], "policy")) {
            if (strcmp(v[i], "allow") && strcmp(v[i], "deny"))
                return lm_error_set(err, -EINVAL, "Parameter 'policy' does not accept value '%s'",
                                    v[i]);
            allow = !strcmp(v[i], "allow");
            continue;
        }
        char *end;
        unsigned long idx;
        if (strncmp(k[i], "rules.", 6) || !isdigit((unsigned char)k[i][6]) ||
            (idx = strtoul(k[i] + 6, &end, 10)) >= MAX_RULES || *end != '.')
            return lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", k[i]);
        const char *f = end + 1;
        lm_authz_rule *r = &rules[idx];
        if (!strcmp(f, "match")) {
            r->match = v[i];
            have_match[idx] = true;
        } else if (!strcmp(f, "policy") && (!strcmp(v[i], "allow") || !strcmp(v[i], "deny"))) {
            r->allow = !strcmp(v[i], "allow");
        } else if (!strcmp(f, "format") && (!strcmp(v[i], "exact") || !strcmp(v[i], "glob"))) {
            r->glob = !strcmp(v[i], "glob");
        } else {
            return lm_error_set(err, -EINVAL, "authz-list: bad rule property '%s=%s'", k[i], v[i]);
        }
        if (idx + 1 > nr)
            nr = (unsigned)idx + 1;
    }
    for (unsigned i = 0; i < nr; i++)
        if (!have_match[i])
            return lm_error_set(err, -EINVAL, "authz-list: rule %u has no 'match'", i);
    return lm_authz_new(allow, rules, nr, out, err);
}

static bool valid_id(const char *id)
{
    if (!id || !isalpha((unsigned char)id[0]) || strlen(id) > LM_TLS_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

int lm_mig_object_add(lm_mig *m, const char *type, const char *id, unsigned n,
                      const char *const *keys, const char *const *vals, lm_error *err)
{
    if (!type || !id)
        return lm_error_set(err, -EINVAL, "object-add: 'qom-type' and 'id' are required");
    if (!valid_id(id))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'id' expects an identifier (a letter, then letters, "
                            "digits, '-', '.', '_'; at most %d)",
                            LM_TLS_ID_MAX);
    struct lm_object *o = calloc(1, sizeof *o);
    if (!o)
        return lm_error_set(err, -ENOMEM, "out of memory");
    snprintf(o->id, sizeof o->id, "%s", id);
    int r;
    if (!strcmp(type, "tls-creds-x509") || !strcmp(type, "tls-creds-psk"))
        r = creds_new(!strcmp(type, "tls-creds-psk"), n, keys, vals, &o->creds, err);
    else if (!strcmp(type, "authz-list"))
        r = authz_new(n, keys, vals, &o->authz, err);
    else
        r = lm_error_set(err, -EINVAL,
                         "Invalid parameter 'qom-type': '%s' (this build has tls-creds-x509, "
                         "tls-creds-psk, authz-list)",
                         type);
    if (r < 0) {
        free(o);
        return r;
    }
    pthread_mutex_lock(&m->lock);
    for (struct lm_object *p = m->objects; p; p = p->next)
        if (!strcmp(p->id, id)) {
            pthread_mutex_unlock(&m->lock);
            lm_tls_creds_unref(o->creds);
            lm_authz_unref(o->authz);
            free(o);
            return lm_error_set(err, -EEXIST, "attempt to add duplicate object id '%s'", id);
        }
    o->next = m->objects;
    m->objects = o;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int lm_mig_object_del(lm_mig *m, const char *id, lm_error *err)
{
    pthread_mutex_lock(&m->lock);
    for (struct lm_object **pp = &m->objects; *pp; pp = &(*pp)->next) {
        struct lm_object *o = *pp;
        if (strcmp(o->id, id))
            continue;
        *pp = o->next;
        pthread_mutex_unlock(&m->lock);
        lm_tls_creds_unref(o->creds);
        lm_authz_unref(o->authz);
        free(o);
        return 0;
    }
    pthread_mutex_unlock(&m->lock);
    return lm_error_set(err, -ENOENT, "object '%s' not found", id ? id : "");
}

void lm_mig_objects_free(lm_mig *m)
{
    while (m->objects) {
        struct lm_object *o = m->objects;
        m->objects = o->next;
        lm_tls_creds_unref(o->creds);
        lm_authz_unref(o->authz);
        free(o);
    }
    lm_tls_creds_unref(m->tls_creds);
    lm_authz_unref(m->tls_authz);
    m->tls_creds = NULL;
    m->tls_authz = NULL;
}

static struct lm_object *find(lm_mig *m, const char *id)
{
    for (struct lm_object *o = m->objects; o; o = o->next)
        if (!strcmp(o->id, id))
            return o;
    return NULL;
}

int lm_mig_tls_select_locked(lm_mig *m, bool server, const lm_uri *u, lm_error *err)
{
    const lm_params *p = &m->params;
    lm_tls_creds *cr = NULL;
    lm_authz *az = NULL;
    if (p->tls_creds[0]) {
        if (u->kind == LM_URI_FILE)
            return lm_error_set(err, -EINVAL,
                                "TLS (tls-creds '%s') cannot be used with a file: URI; clear "
                                "tls-creds to save to a file",
                                p->tls_creds);
        struct lm_object *o = find(m, p->tls_creds);
        if (!o || !o->creds)
            return lm_error_set(err, -ENOENT,
                                "tls-creds '%s': no tls-creds-x509 or tls-creds-psk object "
                                "with that id",
                                p->tls_creds);
        if (lm_tls_creds_is_server(o->creds) != server)
            return lm_error_set(err, -EINVAL,
                                "tls-creds '%s' has endpoint=%s, but the %s needs endpoint=%s",
                                p->tls_creds, server ? "client" : "server",
                                server ? "destination" : "source", server ? "server" : "client");
        cr = o->creds;
        if (server && p->tls_authz[0]) {
            struct lm_object *a = find(m, p->tls_authz);
            if (!a || !a->authz)
                return lm_error_set(err, -ENOENT,
                                    "tls-authz '%s': no authz-list object with that id",
                                    p->tls_authz);
            az = a->authz;
        }
    }
    lm_tls_creds_unref(m->tls_creds);
    lm_authz_unref(m->tls_authz);
    m->tls_creds = lm_tls_creds_ref(cr);
    m->tls_authz = lm_authz_ref(az);
    m->tls_host[0] = 0;
    if (cr && !server)
        snprintf(m->tls_host, sizeof m->tls_host, "%s",
                 p->tls_hostname[0]      ? p->tls_hostname
                 : u->kind == LM_URI_TCP ? u->host
                                         : "");
    if (cr && lm_tls_creds_needs_hostname(cr) && !m->tls_host[0])
        return lm_error_set(err, -EINVAL,
                            "tls-hostname is needed with a unix: or fd: URI: the name the "
                            "destination's certificate must carry");
    return 0;
}

void lm_mig_tls_get(lm_mig *m, lm_tls_creds **cr, lm_authz **az, char *host, size_t cap)
{
    pthread_mutex_lock(&m->lock);
    *cr = lm_tls_creds_ref(m->tls_creds);
    if (az)
        *az = lm_authz_ref(m->tls_authz);
    if (host)
        snprintf(host, cap, "%s", m->tls_host);
    pthread_mutex_unlock(&m->lock);
}
