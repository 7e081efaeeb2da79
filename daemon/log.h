/* Logging to stderr with syslog priority prefixes ("<3>..."), which
 * journald turns into real priorities. Thread safe: one write(2) a line.
 *
 * Lines a client can make us write (its bad input, its limits, its faults
 * that fail) go through a rate limit of their own (struct log_rl, one per
 * uid): a flooding client cannot fill the journal or spend our time on
 * formatting, and after a quiet spell the next line says how many similar
 * ones were dropped. */
#ifndef REFPAGED_LOG_H
#define REFPAGED_LOG_H

#include <pthread.h>
#include <stdint.h>
#include <syslog.h>

void log_set_level(int level);
/* "err", "warning", "notice", "info", "debug" or a digit 0-7; -1 if unknown. */
int log_parse_level(const char *s);
void rp_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) rp_log(LOG_ERR, __VA_ARGS__)
#define log_warn(...) rp_log(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) rp_log(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) rp_log(LOG_INFO, __VA_ARGS__)
#define log_debug(...) rp_log(LOG_DEBUG, __VA_ARGS__)

/* CLOCK_MONOTONIC in seconds (the rate limiters', the budgets' and the
 * handover's clock; any thread). */
double rp_now(void);

/* A token bucket: up to burst lines at once, then per_s a second. */
struct log_rl {
	pthread_mutex_t lock;
	double tokens;
	double last;         /* CLOCK_MONOTONIC seconds of the last refill */
	uint64_t suppressed; /* since the last line written */
	uint64_t total_suppressed;
	unsigned burst, per_s;
};

/* Defaults of every uid's limit (refpaged --log-burst, --log-rate). */
void log_rl_defaults(unsigned burst, unsigned per_s);
void log_rl_init(struct log_rl *rl);
void log_rl_fini(struct log_rl *rl);
/* Lines dropped by rl so far. */
uint64_t log_rl_dropped(struct log_rl *rl);
/* rp_log through rl: written if the bucket has a token (prefixed with the
 * count dropped since the last one written), else counted and dropped.
 * Lines below the log level cost nothing. */
void rp_log_rl(struct log_rl *rl, int prio, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
