/*
 * abi_v01.c - the LIVEMIG_0.1 versions of the functions whose struct grew
 * in 0.2 (docs/api.md, "How structs grow").  A program built against the
 * 0.1 header allocated the 0.1 size of lm_params and lm_info; it is bound
 * to these (lm_x@LIVEMIG_0.1), which fill only that much.  Programs built
 * now get the current functions (lm_x@@LIVEMIG_0.2).  lm_mig_set_params
 * needs no second version: it reads only the fields its `which` mask
 * selects, and a 0.1 program cannot select a 0.2 field.
 *
 * Only in the shared library (CMakeLists.txt): symbol versions mean nothing
 * in the static archive, whose users are built with the current header.
 */
#include "livemig.h"

#include <stddef.h>
#include <string.h>

/* The first field each struct got in 0.2: everything before it is 0.1. */
#define PARAMS_V01_SIZE offsetof(lm_params, vcpu_dirty_limit)
#define INFO_V01_SIZE offsetof(lm_info, queued_bytes)

#define COMPAT __attribute__((visibility("default"), used))

COMPAT void lm_params_default_v01(lm_params *p);
COMPAT void lm_mig_get_params_v01(lm_mig *m, lm_params *out);
COMPAT void lm_mig_query_v01(lm_mig *m, lm_info *out);

__asm__(".symver lm_params_default_v01, lm_params_default@LIVEMIG_0.1");
__asm__(".symver lm_mig_get_params_v01, lm_mig_get_params@LIVEMIG_0.1");
__asm__(".symver lm_mig_query_v01, lm_mig_query@LIVEMIG_0.1");

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
