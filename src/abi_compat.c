/*
 * abi_compat.c - the older versions of the functions whose struct grew
 * (docs/api.md, "How structs grow"): lm_params and lm_info grew in 0.2
 * and again in 0.3.  A program built against the 0.1 (0.2) header
 * allocated that release's size of lm_params and lm_info; it is bound to
 * lm_x@LIVEMIG_0.1 (@LIVEMIG_0.2), which fill only that much.  Programs
 * built now get the current functions (lm_x@@LIVEMIG_0.3).
 * lm_mig_set_params needs no second version: it reads only the fields its
 * `which` mask selects, and an older program cannot select a newer field.
 *
 * Only in the shared library (CMakeLists.txt): symbol versions mean nothing
 * in the static archive, whose users are built with the current header.
 */
#include "livemig.h"

#include <stddef.h>
#include <string.h>

/* The first field each struct got in a release: everything before it is
 * the release before. */
#define PARAMS_V01_SIZE offsetof(lm_params, vcpu_dirty_limit)
#define INFO_V01_SIZE offsetof(lm_info, queued_bytes)
#define PARAMS_V02_SIZE offsetof(lm_params, tls_creds)
#define INFO_V02_SIZE offsetof(lm_info, has_xbzrle)

#define COMPAT __attribute__((visibility("default"), used))

COMPAT void lm_params_default_v01(lm_params *p);
COMPAT void lm_mig_get_params_v01(lm_mig *m, lm_params *out);
COMPAT void lm_mig_query_v01(lm_mig *m, lm_info *out);

__asm__(".symver lm_params_default_v01, lm_params_default@LIVEMIG_0.1");
__asm__(".symver lm_mig_get_params_v01, lm_mig_get_params@LIVEMIG_0.1");
__asm__(".symver lm_mig_query_v01, lm_mig_query@LIVEMIG_0.1");

COMPAT void lm_params_default_v02(lm_params *p);
COMPAT void lm_mig_get_params_v02(lm_mig *m, lm_params *out);
COMPAT void lm_mig_query_v02(lm_mig *m, lm_info *out);

__asm__(".symver lm_params_default_v02, lm_params_default@LIVEMIG_0.2");
__asm__(".symver lm_mig_get_params_v02, lm_mig_get_params@LIVEMIG_0.2");
__asm__(".symver lm_mig_query_v02, lm_mig_query@LIVEMIG_0.2");

void lm_params_default_v01(lm_params *p)
{
    lm_params full;
    lm_params_default(&full);
    memcpy(p, &full, PARAMS_V01_SIZE);
}

void lm_mig_get_params_v01(lm_mig *m, lm_params *out)
{
    lm_params full;
    lm_mig_get_params(m, &full);
    memcpy(out, &full, PARAMS_V01_SIZE);
}

void lm_mig_query_v01(lm_mig *m, lm_info *out)
{
    lm_info full;
    lm_mig_query(m, &full);
    memcpy(out, &full, INFO_V01_SIZE);
}

void lm_params_default_v02(lm_params *p)
{
    lm_params full;
    lm_params_default(&full);
    memcpy(p, &full, PARAMS_V02_SIZE);
}

void lm_mig_get_params_v02(lm_mig *m, lm_params *out)
{
    lm_params full;
    lm_mig_get_params(m, &full);
    memcpy(out, &full, PARAMS_V02_SIZE);
}

void lm_mig_query_v02(lm_mig *m, lm_info *out)
{
    lm_info full;
    lm_mig_query(m, &full);
    memcpy(out, &full, INFO_V02_SIZE);
}
