/*
 * proc.c - child processes of the CLI (the demo's two guests): start them
 * so they cannot outlive us, reap them within a bound, clean up their
 * private directory.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int cli_spawn_self(char *const argv[], const char *logpath, pid_t *pid_out, lm_error *err)
{
    int logfd = -1, rc = 0;
    pid_t parent = getpid();

    if (logpath) {
        logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (logfd < 0)
            return lm_error_set(err, -errno, "cannot open %s: %s", logpath, strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) {
        rc = lm_error_set(err, -errno, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        /* Child: only async-signal-safe calls until exec. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127); /* the parent already died: do not start at all */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            if (nul > 2)
                close(nul);
        }
        if (logfd >= 0) {
            dup2(logfd, 1);
            dup2(logfd, 2);
        }
        execv("/proc/self/exe", argv);
        const char msg[] = "livemig: cannot exec /proc/self/exe\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(127);
    }
    *pid_out = pid;
out:
    if (logfd >= 0)
        close(logfd);
    return rc;
}

int cli_wait_child(pid_t pid, int timeout_ms, int *status)
{
    uint64_t deadline = cli_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
            if (status)
                *status = r == pid ? st : 0;
            return 1;
        }
        if (cli_now_ms() >= deadline)
            return 0;
        /* No pidfd in glibc 2.36's headers; a child exit is rare and this
         * wait is bounded, so a short nap between checks is fine here. */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void cli_kill_child(pid_t pid, int grace_ms)
{
    if (pid <= 0)
        return;
    if (cli_wait_child(pid, 0, NULL))
        return;
    kill(pid, SIGTERM);
    if (cli_wait_child(pid, grace_ms, NULL))
        return;
    kill(pid, SIGKILL);
    cli_wait_child(pid, 5000, NULL);
}

void cli_rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

void cli_print_tail(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    /* Logs are short (a guest prints a few lines); keep the last ones. */
    char ring[16][512];
    int n = 0;
    if (lines > 16)
        lines = 16;
    while (fgets(ring[n % lines], sizeof ring[0], f))
        n++;
    fclose(f);
    for (int i = n > lines ? n - lines : 0; i < n; i++) {
        char *l = ring[i % lines];
        size_t len = strlen(l);
        fprintf(stderr, "    | %s%s", l, len && l[len - 1] == '\n' ? "" : "\n");
    }
}
