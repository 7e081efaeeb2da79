/* Settings shared by refpage-run (which validates its command line and
 * exports them) and librefpage-preload.so (which validates what it finds in
 * its environment). Parsing here never allocates: the shim calls it from
 * inside malloc. */
#ifndef RP_RUNOPT_H
#define RP_RUNOPT_H

#include <stddef.h>
#include <stdint.h>

#define RUNOPT_ENV_MODE "REFPAGE_RUN_MODE"
#define RUNOPT_ENV_PATTERN "REFPAGE_RUN_PATTERN"
#define RUNOPT_ENV_THRESHOLD "REFPAGE_RUN_THRESHOLD"
#define RUNOPT_ENV_STRICT "REFPAGE_RUN_STRICT"
#define RUNOPT_ENV_ALLOW_UMO "REFPAGE_RUN_ALLOW_USER_MODE_ONLY"
#define RUNOPT_ENV_BACKEND "REFPAGE_RUN_BACKEND" /* auto, uffd or file */
#define RUNOPT_ENV_STATS "REFPAGE_RUN_STATS"
#define RUNOPT_ENV_REPORT "REFPAGE_RUN_REPORT"               /* 0 or 1 */
#define RUNOPT_ENV_REPORT_FILE "REFPAGE_RUN_REPORT_FILE"     /* empty: stderr */
#define RUNOPT_ENV_REPORT_FORMAT "REFPAGE_RUN_REPORT_FORMAT" /* text or json */
#define RUNOPT_ENV_PRELOAD "REFPAGE_RUN_PRELOAD"
#define RUNOPT_ENV_SOCKET "REFPAGED_SOCKET"

#define RUNOPT_DEFAULT_PATTERN 0xAAu
#define RUNOPT_DEFAULT_THRESHOLD 131072u
/* Past this a "threshold" is a typo, not a policy (1 TiB). */
#define RUNOPT_MAX_THRESHOLD (1ull << 40)

enum runopt_mode {
	RUNOPT_REFPAGE, /* large allocations from refpage mappings */
	RUNOPT_MEMSET,  /* anonymous mappings, memset to the pattern at once */
	RUNOPT_ANON,    /* anonymous mappings, untouched (zeros) */
};

/* Each returns 0 and stores the value, or -1 for a malformed value. */
int runopt_mode(const char *s, enum runopt_mode *out);
/* 0..255, decimal, 0x hex or 0 octal. */
int runopt_pattern(const char *s, uint8_t *out);
/* 1..RUNOPT_MAX_THRESHOLD bytes, with an optional k, m or g (KiB, MiB,
 * GiB) suffix. */
int runopt_threshold(const char *s, size_t *out);
/* "0" or "1". */
int runopt_bool(const char *s, int *out);

const char *runopt_mode_name(enum runopt_mode m);

/* Which librefpage backend refpage mode uses (refpage.h). The file
 * backend is the default: the kernel serves its faults on its own paths,
 * so an unmodified program runs at about anonymous memory's speed and RSS
 * there (docs/performance.md, "Real programs"); --report keeps it (the
 * report is then read from /proc/self/pagemap: docs/report.md). */
enum runopt_backend {
	RUNOPT_BACKEND_FILE, /* the kernel serves the faults from a template file */
	RUNOPT_BACKEND_UFFD, /* refpaged serves them, even through a user-mode-only uffd */
};
/* "file" or "auto" (the default: file), or "uffd". */
int runopt_backend(const char *s, enum runopt_backend *out);
const char *runopt_backend_name(enum runopt_backend b);

enum runopt_format { RUNOPT_TEXT, RUNOPT_JSON };
/* "text" or "json". */
int runopt_format(const char *s, enum runopt_format *out);

#endif
