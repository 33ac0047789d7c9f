/* thread.c - thread helpers. */
#include "util/thread.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A faulting workload thread in postcopy waits on four wake-ups (fault
 * thread, the source's return path, the preempt loader, the placement)
 * while the background push keeps a sender and a loader busy.  On a
 * machine with few cores the bulk threads then delay the urgent ones by
 * whole scheduler slices (measured: docs/benchmarks.md). */
void lm_thread_set_background(void)
{
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
}
