/* Logging: see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = LOG_INFO;
static unsigned rl_burst = 20, rl_per_s = 5;

void log_set_level(int level)
{
	atomic_store(&log_level, level);
}

int log_parse_level(const char *s)
{
	static const char *const names[] = { "emerg",   "alert",  "crit", "err",
					     "warning", "notice", "info", "debug" };
	for (int i = 0; i < 8; i++)
		if (!strcmp(s, names[i]))
			return i;
	if (!strcmp(s, "error"))
		return LOG_ERR;
	if (!strcmp(s, "warn"))
		return LOG_WARNING;
	if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
		return s[0] - '0';
	return -1;
}

__attribute__((format(printf, 3, 0))) static void vlog(int prio, const char *prefix,
						       const char *fmt, va_list ap)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "<%d>%s", prio, prefix);
	int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);

	if (m < 0)
		return;
	n += m < (int)(sizeof(buf) - n - 1) ? m : (int)(sizeof(buf) - n - 2);
	buf[n++] = '\n';
	/* A failed log write has nowhere to be reported. */
	if (write(STDERR_FILENO, buf, n) < 0)
		return;
}

void rp_log(int prio, const char *fmt, ...)
{
	va_list ap;

	if (prio > atomic_load(&log_level))
		return;
	va_start(ap, fmt);
	vlog(prio, "", fmt, ap);
	va_end(ap);
}

void log_rl_defaults(unsigned burst, unsigned per_s)
{
	rl_burst = burst;
	rl_per_s = per_s;
}

void log_rl_init(struct log_rl *rl)
{
	pthread_mutex_init(&rl->lock, NULL);
	rl->burst = rl_burst;
	rl->per_s = rl_per_s;
	rl->tokens = rl_burst;
	rl->last = 0;
	rl->suppressed = rl->total_suppressed = 0;
}

void log_rl_fini(struct log_rl *rl)
{
	pthread_mutex_destroy(&rl->lock);
}

uint64_t log_rl_dropped(struct log_rl *rl)
{
	pthread_mutex_lock(&rl->lock);
	uint64_t n = rl->total_suppressed;
	pthread_mutex_unlock(&rl->lock);
	return n;
}

double rp_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A token, or not; *dropped gets the lines dropped since the last one
 * that got a token. */
static int rl_take(struct log_rl *rl, uint64_t *dropped)
{
	double now = rp_now();
	int ok;

	pthread_mutex_lock(&rl->lock);
	if (rl->last)
		rl->tokens += (now - rl->last) * rl->per_s;
	if (rl->tokens > rl->burst)
		rl->tokens = rl->burst;
	rl->last = now;
	ok = rl->tokens >= 1;
	if (ok) {
		rl->tokens -= 1;
		*dropped = rl->suppressed;
		rl->suppressed = 0;
	} else {
		rl->suppressed++;
		rl->total_suppressed++;
	}
	pthread_mutex_unlock(&rl->lock);
	return ok;
}

void rp_log_rl(struct log_rl *rl, int prio, const char *fmt, ...)
{
	char prefix[64] = "";
	uint64_t dropped = 0;
	va_list ap;

	if (prio > atomic_load(&log_level) || !rl_take(rl, &dropped))
		return;
	if (dropped)
		snprintf(prefix, sizeof(prefix), "(%llu similar messages suppressed) ",
			 (unsigned long long)dropped);
	va_start(ap, fmt);
	vlog(prio, prefix, fmt, ap);
	va_end(ap);
}
