/* refpage-run: run an unmodified, dynamically linked program with its large
 * heap allocations pattern-initialised by librefpage-preload.so.
 *
 * It validates its options, checks once that refpages are usable (a
 * reachable refpaged, a userfaultfd that serves kernel-mode faults),
 * exports the settings for the shim and execs the program with the shim
 * in LD_PRELOAD. See usage() and docs/preload.md. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"
#include "refpage.h"
#include "runopt.h"

#define SHIM_NAME "librefpage-preload.so"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: refpage-run [OPTIONS] [--] PROGRAM [ARGS...]\n"
		"Run PROGRAM with its large heap allocations pattern-initialised.\n"
		"\n"
		"  --mode MODE        refpage: refpage mappings served by refpaged (default)\n"
		"                     memset:  anonymous memory filled with the pattern at once\n"
		"                     anon:    anonymous memory, untouched (zeros)\n"
		"  --pattern BYTE     the pattern, 0..255, e.g. 0xAA (default 0xAA)\n"
		"  --threshold BYTES  smallest request served so; k, m, g suffixes (default 131072)\n"
		"  --socket PATH      refpaged's socket (default $REFPAGED_SOCKET, else %s)\n"
		"  --strict           refpage mode: exit 1 instead of falling back to memset\n"
		"                     when refpages cannot be had (checked here, and by the\n"
		"                     program's processes later on)\n"
		"  --backend BACKEND  refpage mode: file (the default; also 'auto'): the kernel\n"
		"                     serves the faults from a template file of the process\n"
		"                     (no daemon needed); uffd: refpaged serves them (with\n"
		"                     --report: the reading thread, and pages read then\n"
		"                     written, which the file backend's report cannot see)\n"
		"  --allow-user-mode-only\n"
		"                     --backend uffd even where this user only gets a user-mode-\n"
		"                     only userfaultfd (then read(2) into or write(2) from an\n"
		"                     untouched large buffer fails with EFAULT)\n"
		"  --stats            each process prints its large-allocation counts at exit\n"
		"  --report[=FILE]    refpage mode: each process lists at exit its large\n"
		"                     allocations with pages read before they were written\n"
		"                     (size, call site, pages, first offset, thread), to\n"
		"                     stderr or appended to FILE; see --backend\n"
		"  --report-format FORMAT\n"
		"                     text (default) or json: one JSON object a line with\n"
		"                     pid, tid, size, site, pages, first_offset, backtrace\n"
		"  -h, --help         this text\n"
		"\n"
		"Large calloc requests get plain anonymous memory (zeros) in every mode.\n"
		"$" RUNOPT_ENV_PRELOAD " overrides where the shim is looked for.\n"
		"Exit status: PROGRAM's; 2 for a bad command line; 1 when --strict finds\n"
		"no refpages; 126 or 127 when PROGRAM cannot be run.\n",
		PROTO_DEFAULT_SOCKET);
}

__attribute__((format(printf, 1, 2), noreturn)) static void bad(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "refpage-run: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\nTry 'refpage-run --help'.\n");
	va_end(ap);
	exit(2);
}

struct run_opts {
	enum runopt_mode mode;
	uint8_t pat;
	const char *pattern, *threshold, *socket;
	int strict, allow_umo, stats, report;
	enum runopt_backend backend;
	const char *report_file;
	enum runopt_format format;
};

enum {
	OPT_MODE = 256,
	OPT_PATTERN,
	OPT_THRESHOLD,
	OPT_SOCKET,
	OPT_STRICT,
	OPT_UMO,
	OPT_BACKEND,
	OPT_STATS,
	OPT_REPORT,
	OPT_REPORT_FORMAT
};

static int parse_args(int argc, char **argv, struct run_opts *o)
{
	static const struct option longs[] = {
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "pattern", required_argument, NULL, OPT_PATTERN },
		{ "threshold", required_argument, NULL, OPT_THRESHOLD },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "strict", no_argument, NULL, OPT_STRICT },
		{ "allow-user-mode-only", no_argument, NULL, OPT_UMO },
		{ "backend", required_argument, NULL, OPT_BACKEND },
		{ "stats", no_argument, NULL, OPT_STATS },
		{ "report", optional_argument, NULL, OPT_REPORT },
		{ "report-format", required_argument, NULL, OPT_REPORT_FORMAT },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	size_t thr;
	int c, backend_given = 0;

	opterr = 0;
	/* "+": stop at PROGRAM, whose own options are not ours. */
	while ((c = getopt_long(argc, argv, "+:h", longs, NULL)) != -1) {
		switch (c) {
		case OPT_MODE:
			if (runopt_mode(optarg, &o->mode) < 0)
				bad("--mode: want refpage, memset or anon, not '%s'", optarg);
			break;
		case OPT_PATTERN:
			if (runopt_pattern(optarg, &o->pat) < 0)
				bad("--pattern: want a byte value 0..255 (e.g. 0xAA), not '%s'",
				    optarg);
			o->pattern = optarg;
			break;
		case OPT_THRESHOLD:
			if (runopt_threshold(optarg, &thr) < 0)
				bad("--threshold: want a size from 1 byte to 1 TiB (e.g. 131072, 128k, 1m), not '%s'",
				    optarg);
			o->threshold = optarg;
			break;
		case OPT_SOCKET:
			if (!*optarg ||
			    strlen(optarg) >= sizeof(((struct sockaddr_un *)0)->sun_path))
				bad("--socket: want a path of 1 to 107 bytes, not '%s'", optarg);
			o->socket = optarg;
			break;
		case OPT_STRICT:
			o->strict = 1;
			break;
		case OPT_BACKEND:
			if (runopt_backend(optarg, &o->backend) < 0)
				bad("--backend: want auto, uffd or file, not '%s'", optarg);
			backend_given = strcmp(optarg, "auto") != 0;
			break;
		case OPT_UMO:
			o->allow_umo = 1;
			break;
		case OPT_STATS:
			o->stats = 1;
			break;
		case OPT_REPORT:
			o->report = 1;
			if (optarg && !*optarg)
				bad("--report=: want a file name (or --report alone for stderr)");
			o->report_file = optarg;
			break;
		case OPT_REPORT_FORMAT:
			if (runopt_format(optarg, &o->format) < 0)
				bad("--report-format: want text or json, not '%s'", optarg);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			bad("option '%s' needs a value", argv[optind - 1]);
			break;
		default:
			bad("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (o->allow_umo) {
		if (backend_given && o->backend == RUNOPT_BACKEND_FILE)
			bad("--allow-user-mode-only asks for the uffd backend, --backend file for the "
			    "other");
		o->backend = RUNOPT_BACKEND_UFFD;
	}
	if (optind >= argc)
		bad("no PROGRAM given");
	if (o->report && o->mode != RUNOPT_REFPAGE)
		bad("--report needs --mode refpage (it watches refpage blocks only)");
	return optind;
}

/* The shim: $REFPAGE_RUN_PRELOAD, else beside this executable (the build
 * tree), else where `make install` put it relative to us, else its
 * configured absolute install path. */
static int find_shim(char *out, size_t n)
{
	const char *env = getenv(RUNOPT_ENV_PRELOAD);
	char exe[PATH_MAX];
	ssize_t len;

	if (env && *env) {
		if (access(env, R_OK) < 0)
			return -1;
		snprintf(out, n, "%s", env);
		return 0;
	}
	len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (len > 0) {
		exe[len] = 0;
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = 0;
			if (snprintf(out, n, "%s/" SHIM_NAME, exe) < (int)n &&
			    access(out, R_OK) == 0)
				return 0;
			if (snprintf(out, n, "%s/../" RP_LIBDIR "/refpage/" SHIM_NAME, exe) <
				    (int)n &&
			    access(out, R_OK) == 0 && realpath(out, exe)) {
				snprintf(out, n, "%s", exe);
				return 0;
			}
		}
	}
	snprintf(out, n, "%s", RP_SHIM_INSTALLED);
	return access(out, R_OK) == 0 ? 0 : -1;
}

static void set_preload(const char *shim)
{
	const char *old = getenv("LD_PRELOAD");
	static char v[8192];

	if (strpbrk(shim, " :") || shim[0] != '/') {
		fprintf(stderr,
			"refpage-run: the shim path '%s' cannot go into LD_PRELOAD "
			"(it must be absolute, without spaces or colons)\n",
			shim);
		exit(1);
	}
	if (old && *old && strstr(old, shim))
		return;
	if (old && *old)
		snprintf(v, sizeof(v), "%s:%s", shim, old);
	else
		snprintf(v, sizeof(v), "%s", shim);
	setenv("LD_PRELOAD", v, 1);
}

/* Refpage mode only: are refpages to be had? If not, --strict ends here
 * and otherwise the whole run switches to memset, said once. */
static void check_refpages(struct run_opts *o)
{
	const char *path = o->socket ? o->socket : getenv(RUNOPT_ENV_SOCKET);
	unsigned flags = o->backend == RUNOPT_BACKEND_UFFD ? RP_CONNECT_UFFD : RP_CONNECT_FILE;
	char why[512];
	rp_client *c;
	uint32_t id;
	int r;

	if (!path || !*path)
		path = PROTO_DEFAULT_SOCKET;
	if (o->report && o->backend == RUNOPT_BACKEND_UFFD)
		flags |= RP_CONNECT_REPORT;
	r = rp_connect_opts(path, flags, &c);
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot reach refpaged at %s%s: %s", path,
			 r == -EOPNOTSUPP ? " in report mode" : "", rp_strerror(r));
	} else {
		/* A page mapped and unmapped: the file backend's template file
		 * is made at the first map, not before. */
		void *m = MAP_FAILED;
		if ((r = rp_template_fill(c, o->pat, &id)) == 0 &&
		    (m = rp_map(c, NULL, 4096, PROT_READ | PROT_WRITE, 0, id)) == MAP_FAILED)
			r = -errno;
		if (m != MAP_FAILED)
			rp_unmap(c, m, 4096);
		int backend = rp_backend(c);
		rp_disconnect(c);
		if (r == 0)
			return;
		if (backend == RP_BACKEND_FILE) {
			snprintf(why, sizeof(why), "the file backend cannot map refpages: %s",
				 rp_strerror(r));
			goto refused;
		}
		snprintf(why, sizeof(why), "refpaged at %s refused refpages: %s", path,
			 rp_strerror(r));
	}
refused:
	if (o->strict) {
		fprintf(stderr, "refpage-run: --strict: %s\n", why);
		exit(1);
	}
	fprintf(stderr, "refpage-run: %s; large allocations fall back to memset of the pattern%s\n",
		why, o->report ? ", and --report has nothing to report" : "");
	o->mode = RUNOPT_MEMSET;
	o->report = 0;
}

int main(int argc, char **argv)
{
	struct run_opts o = { .mode = RUNOPT_REFPAGE, .pat = RUNOPT_DEFAULT_PATTERN };
	char shim[PATH_MAX];
	int first = parse_args(argc, argv, &o);

	if (find_shim(shim, sizeof(shim)) < 0) {
		const char *env = getenv(RUNOPT_ENV_PRELOAD);
		if (env && *env)
			fprintf(stderr, "refpage-run: $%s=%s: %s\n", RUNOPT_ENV_PRELOAD, env,
				strerror(errno));
		else
			fprintf(stderr,
				"refpage-run: cannot find %s (looked beside refpage-run and in %s)\n",
				SHIM_NAME, RP_SHIM_INSTALLED);
		return 1;
	}
	if (o.mode == RUNOPT_REFPAGE)
		check_refpages(&o);
	setenv(RUNOPT_ENV_MODE, runopt_mode_name(o.mode), 1);
	setenv(RUNOPT_ENV_PATTERN, o.pattern ? o.pattern : "0xAA", 1);
	setenv(RUNOPT_ENV_THRESHOLD, o.threshold ? o.threshold : "131072", 1);
	setenv(RUNOPT_ENV_STRICT, o.strict ? "1" : "0", 1);
	setenv(RUNOPT_ENV_ALLOW_UMO, o.allow_umo ? "1" : "0", 1);
	setenv(RUNOPT_ENV_BACKEND, runopt_backend_name(o.backend), 1);
	setenv(RUNOPT_ENV_STATS, o.stats ? "1" : "0", 1);
	setenv(RUNOPT_ENV_REPORT, o.report ? "1" : "0", 1);
	setenv(RUNOPT_ENV_REPORT_FORMAT, o.format == RUNOPT_JSON ? "json" : "text", 1);
	if (o.report_file) {
		/* The program may change directory: the file's path is fixed now. */
		char cwd[PATH_MAX], abs[PATH_MAX + 256];
		if (o.report_file[0] != '/' && getcwd(cwd, sizeof(cwd)) &&
		    snprintf(abs, sizeof(abs), "%s/%s", cwd, o.report_file) < (int)sizeof(abs))
			o.report_file = abs;
		setenv(RUNOPT_ENV_REPORT_FILE, o.report_file, 1);
	} else {
		unsetenv(RUNOPT_ENV_REPORT_FILE);
	}
	if (o.socket)
		setenv(RUNOPT_ENV_SOCKET, o.socket, 1);
	set_preload(shim);
	execvp(argv[first], argv + first);
	int e = errno;
	fprintf(stderr, "refpage-run: cannot run %s: %s\n", argv[first], strerror(e));
	return e == ENOENT ? 127 : 126;
}
