/* Integration test harness: a real refpaged per test group (or per test),
 * the daemon's fds and STATS, helper client programs run as root or as
 * uid 65534, and raw protocol sockets.
 *
 * No global state: everything a test needs lives in its struct h_daemon.
 * Deadlines only keep a broken build from hanging; no test passes or fails
 * on how fast something happened. */
#ifndef RP_ITEST_HARNESS_H
#define RP_ITEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <refpage.h>

#include "load.h"
#include "proto.h"

#define H_PAGE 4096u
/* Long enough for a loaded machine, short enough to fail rather than hang. */
#define H_DEADLINE_S 15.0
#define H_NOBODY 65534
/* Exit status a test program uses when it cannot run at all (CTest skip). */
#define H_EXIT_SKIP 77

struct h_daemon {
	char dir[64]; /* mkdtemp, mode 0755 so uid 65534 reaches the socket */
	char sock[128];
	char log[128];
	pid_t pid;                /* 0: not running */
	off_t log_mark;           /* log offset where the current test started */
	const char *const *extra; /* more daemon options (NULL-terminated) or NULL */
};

double h_now(void);

/* 1 if this process can make some userfaultfd, else 0 with the reason. */
int h_uffd_usable(char *why, size_t n);
/* setpriv(1)'s path in path (n bytes): 0, or -1 when there is none. */
int h_find_setpriv(char *path, size_t n);
/* 1 if tests may run programs as uid 65534, else 0 with the reason. */
int h_can_run_as_nobody(char *why, size_t n);

/* Make the temp dir and start refpaged on dir/sock; 0 or -1 (log printed).
 * Every daemon the harness starts also gets the options in
 * $RP_ITEST_DAEMON_ARGS (split at blanks, before the test's own extra
 * options): CTest runs some groups again with the fault loop's switches. */
int h_daemon_start(struct h_daemon *d);
/* The same with more options after the harness's own (e.g. limits):
 * extra is NULL-terminated and must outlive the daemon (respawns reuse it). */
int h_daemon_start_args(struct h_daemon *d, const char *const *extra);
/* Start refpaged again on the same socket path (after h_daemon_kill). */
int h_daemon_respawn(struct h_daemon *d);
/* SIGKILL and reap. */
void h_daemon_kill(struct h_daemon *d);
/* SIGTERM, reap within a deadline (else SIGKILL). 0 if it exited 0. */
int h_daemon_stop(struct h_daemon *d);
/* Stop if running, remove the temp dir (kept, and named, when
 * $RP_ITEST_KEEP is set). Returns h_daemon_stop's result. */
int h_daemon_destroy(struct h_daemon *d);
/* A daemon (with extra options, or NULL) and one connection to it, and
 * with id non-NULL a template of fill bytes on that connection. 0, or -1
 * with nothing left running and the reason on stderr. */
int h_session_open(struct h_daemon *d, const char *const *extra, rp_client **c, uint8_t fill,
		   uint32_t *id);
/* Close what h_session_open opened; a failed test (!ok) first prints the
 * daemon's log from from. Returns h_daemon_destroy's result. */
int h_session_close(struct h_daemon *d, rp_client *c, int ok, off_t from);
/* The end of one test on a daemon shared by the group: the log since the
 * mark if it failed (!ok); 0 if the daemon is still alive, else -1. */
int h_test_end(struct h_daemon *d, int ok);
/* 1 while the daemon process exists and has not exited. */
int h_daemon_alive(struct h_daemon *d);
/* Print the daemon's log from offset from to stderr. */
void h_daemon_dump_log(const struct h_daemon *d, off_t from);
/* Remember where the log is now: a failing test prints from there. */
void h_daemon_mark_log(struct h_daemon *d);
/* 1 if the log has needle since the last mark. */
int h_daemon_log_has(const struct h_daemon *d, const char *needle);

/* Open descriptors of a process, -1 on error. */
int h_count_fds(pid_t pid);
/* List them (fd -> target) on stderr. */
void h_print_fds(pid_t pid);

/* STATS through rp_stats. */
struct h_stats {
	int n;
	uint64_t v[PROTO_STATS_MAX];
	const char *name[PROTO_STATS_MAX];
};
int h_stats_read(rp_client *c, struct h_stats *s);
/* Value of counter name; fails the test if the daemon has no such counter. */
uint64_t h_stat(const struct h_stats *s, const char *name);

/* An expected value for a counter; wait until every one holds. */
struct h_want {
	const char *name;
	uint64_t value;
};
/* 0 once all hold, -1 at the deadline (the mismatches are printed). */
int h_wait_stats(rp_client *c, const struct h_want *w, int n, double timeout_s);
/* Wait until the daemon's open fd count is at most want (a baseline: a
 * descriptor of an earlier client may still be on its way to being closed
 * on its worker when it was taken); 0 or -1 (printed). */
int h_wait_fds(pid_t pid, int want, double timeout_s);
/* Poll pred(arg) until it returns non-zero or the deadline passes. */
int h_wait_until(int (*pred)(void *), void *arg, double timeout_s);

/* Programs. argv[0] is a path. as_nobody runs it through setpriv as uid
 * and gid 65534 with no supplementary groups. The child gets its own
 * process group (kill(-pid) ends it and its children). *out_fd (may be
 * NULL) reads its stdout and stderr. Returns the pid or -1. */
pid_t h_spawn(const char *const argv[], int as_nobody, int *out_fd);
/* Run to completion within timeout_s (killed after it). out gets what it
 * printed (NUL terminated, truncated to n). Returns the wait status, or -1
 * on timeout or failure to start. */
int h_run(const char *const argv[], int as_nobody, double timeout_s, char *out, size_t n);
/* Read one line from fd (no newline kept) within timeout_s; 0 or -1. */
int h_read_line(int fd, char *buf, size_t n, double timeout_s);
/* Reap pid within timeout_s; the wait status or -1. */
int h_reap(pid_t pid, double timeout_s);

/* The helper client program and the daemon, as built. */
const char *h_client_prog(void);
const char *h_fork_prog(void);
const char *h_daemon_prog(void);
const char *h_ctl_prog(void);

/* Raw protocol. */
int h_dial(const char *path);
/* Send a header (exactly as given) and payload; fd >= 0 is attached. 0 or -errno. */
int h_send_raw(int s, const struct proto_hdr *h, const void *payload, size_t len, int fd);
/* Send a well-formed request. 0 or -errno. */
int h_send(int s, uint16_t type, uint32_t seq, const void *payload, uint32_t len, int fd);
/* Receive one packet within timeout_s: its length (>= header), 0 when the
 * daemon closed the connection, -ETIMEDOUT or -errno. */
long h_recv(int s, void *buf, size_t n, double timeout_s);
/* Wait for the daemon to close s, discarding what it sends; 1 if closed. */
int h_wait_closed(int s, double timeout_s);
/* A fresh unconfigured userfaultfd, as the library makes it, or -errno. */
int h_make_uffd(void);

/* Memory checks: tests/common/load.h (the restart load uses them too). */
static inline long h_first_not(const void *p, size_t n, uint8_t b)
{
	return load_first_not(p, n, b);
}
static inline long h_first_diff(const void *a, const void *b, size_t n)
{
	return load_first_diff(a, b, n);
}
static inline void h_fill_page(void *page, uint32_t seed)
{
	load_fill_page(page, seed);
}

#endif
