/* Logging to stderr with syslog priority prefixes ("<3>..."), which
 * journald turns into real priorities. Thread safe: one write(2) a line. */
#ifndef REFPAGED_LOG_H
#define REFPAGED_LOG_H

#include <syslog.h>

void log_set_level(int level);
int log_get_level(void);
/* "err", "warning", "notice", "info", "debug" or a digit 0-7; -1 if unknown. */
int log_parse_level(const char *s);
void rp_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) rp_log(LOG_ERR, __VA_ARGS__)
#define log_warn(...) rp_log(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) rp_log(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) rp_log(LOG_INFO, __VA_ARGS__)
#define log_debug(...) rp_log(LOG_DEBUG, __VA_ARGS__)

#endif
