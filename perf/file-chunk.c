/* file-chunk: the design cost behind the file backend's chunk size
 * (RP_FILE_CHUNK in client/librefpage.c, docs/performance.md).
 *
 * A template's file holds its page repeated over one chunk; a mapping is
 * MAP_PRIVATE pieces of it, one VMA per chunk. A bigger chunk costs every
 * process more to fill (once per template), a smaller one more VMAs per
 * mapping. For each chunk size this measures, median of --reps:
 *   fill   memfd_create + pwritev of the page repeated + F_ADD_SEALS, as
 *          librefpage's file_ensure does it (close not timed);
 *   1 GiB  reserve --map-mib MiB PROT_NONE, map it over in chunk-sized
 *          pieces (MAP_FIXED), read one page of each piece (a read fault,
 *          with the kernel's fault-around), munmap; and the same without
 *          the reads.
 * Then, for a small mapping (--small-kib, 256 KiB by default), mmap +
 * munmap against the ways to get one:
 *   anon         mmap(MAP_PRIVATE|MAP_ANONYMOUS) + munmap
 *   memfd        one mmap(MAP_PRIVATE) of a template file + munmap
 *   rp file      rp_map + rp_unmap, librefpage's file backend (a
 *                reservation and one piece: two mmaps, no daemon)
 *   rp uffd      rp_map + rp_unmap, the uffd backend: a MAP and an UNMAP
 *                round trip to the refpaged at --socket
 * Every touched page must read the pattern: a wrong byte is exit status 1.
 * Timings only; nothing here is a pass/fail threshold. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <refpage.h>

#define PAGE 4096u
#define PATTERN 0xAAu
#define MAX_REPS 1000
#define NIOV 64

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u
#endif

struct cfg {
	unsigned reps, small_iters;
	size_t map_mib, small_kib;
	const char *socket;
	int quick;
};

static uint8_t page[PAGE] __attribute__((aligned(PAGE)));
static unsigned long mismatches;

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what)
{
	fprintf(stderr, "file-chunk: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* librefpage's file_ensure, for a chunk of any size: -1 on error. */
static int template_file(size_t chunk)
{
	struct iovec iov[NIOV];
	size_t have = 0;
	int fd = memfd_create("refpage", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);

	if (fd < 0 && errno == EINVAL)
		fd = memfd_create("refpage", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -1;
	for (unsigned i = 0; i < NIOV; i++)
		iov[i] = (struct iovec){ .iov_base = page, .iov_len = PAGE };
	while (have < chunk) {
		unsigned n = (unsigned)((chunk - have) / PAGE < NIOV ? (chunk - have) / PAGE
								     : NIOV);
		ssize_t w = pwritev(fd, iov, (int)n, (off_t)have);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			goto fail;
		have += (size_t)w;
	}
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		goto fail;
	return fd;
fail:
	close(fd);
	return -1;
}

static double fill_ms(size_t chunk)
{
	double t0 = now_ms();
	int fd = template_file(chunk);
	double t = now_ms() - t0;

	if (fd < 0)
		die("template file");
	close(fd);
	return t;
}

/* Reserve, map in pieces, read a page of each (if touch), unmap: one
 * rep, in ms. */
static double map_ms(int fd, size_t chunk, size_t len, int touch)
{
	double t0 = now_ms();
	char *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		die("reservation");
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		if (mmap(p + off, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) ==
		    MAP_FAILED)
			die("mmap of a piece");
	}
	for (size_t off = 0; touch && off < len; off += chunk)
		mismatches += *(volatile uint8_t *)(p + off) != PATTERN;
	munmap(p, len);
	return now_ms() - t0;
}

static void chunk_table(const struct cfg *c)
{
	static const unsigned mibs[] = { 1, 2, 4, 8, 16 };
	size_t len = c->map_mib << 20;
	double f[MAX_REPS], m[MAX_REPS], u[MAX_REPS];

	printf("| chunk | fill ms (create + pwritev + seal) | VMAs per %zu MiB | map + touch + "
	       "unmap %zu MiB, ms | per VMA, us | map + unmap (no touch), ms | per VMA, us |\n",
	       c->map_mib, c->map_mib);
	printf("|--:|--:|--:|--:|--:|--:|--:|\n");
	for (unsigned i = 0; i < sizeof(mibs) / sizeof(mibs[0]); i++) {
		size_t chunk = (size_t)mibs[i] << 20;
		int fd = template_file(chunk);
		if (fd < 0)
			die("template file");
		size_t vmas = (len + chunk - 1) / chunk;
		(void)fill_ms(chunk);
		(void)map_ms(fd, chunk, len, 1); /* warm: page tables, the file's pages */
		for (unsigned r = 0; r < c->reps; r++) {
			f[r] = fill_ms(chunk);
			m[r] = map_ms(fd, chunk, len, 1);
			u[r] = map_ms(fd, chunk, len, 0);
		}
		close(fd);
		double mm = median(m, c->reps), mu = median(u, c->reps);
		printf("| %u MiB | %.2f | %zu | %.2f | %.2f | %.2f | %.2f |\n", mibs[i],
		       median(f, c->reps), vmas, mm, mm * 1e3 / (double)vmas, mu,
		       mu * 1e3 / (double)vmas);
		fflush(stdout);
	}
}

/* --- small mappings ------------------------------------------------------ */

enum small_kind { SMALL_ANON, SMALL_MEMFD, SMALL_RP };

struct small {
	const char *name;
	enum small_kind kind;
	int fd;
	rp_client *rp;
	uint32_t tmpl;
	char why[160];
};

static void *small_map(struct small *s, size_t len)
{
	switch (s->kind) {
	case SMALL_ANON:
		return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	case SMALL_MEMFD:
		return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, s->fd, 0);
	default:
		return rp_map(s->rp, NULL, len, PROT_READ | PROT_WRITE, 0, s->tmpl);
	}
}

static void small_unmap(struct small *s, void *p, size_t len)
{
	if (s->kind == SMALL_RP)
		rp_unmap(s->rp, p, len);
	else
		munmap(p, len);
}

/* Mean us per map + unmap over iters, one rep. */
static double small_us(struct small *s, size_t len, unsigned iters)
{
	double t0 = now_ms();

	for (unsigned i = 0; i < iters; i++) {
		void *p = small_map(s, len);
		if (p == MAP_FAILED)
			die(s->name);
		small_unmap(s, p, len);
	}
	return (now_ms() - t0) * 1e3 / iters;
}

static int small_rp_setup(struct small *s, const char *socket, unsigned flags)
{
	int r = rp_connect_opts(socket, flags, &s->rp);

	if (r < 0) {
		snprintf(s->why, sizeof(s->why), "rp_connect_opts: %s", rp_strerror(r));
		s->rp = NULL;
		return -1;
	}
	if ((r = rp_template_fill(s->rp, PATTERN, &s->tmpl)) < 0) {
		snprintf(s->why, sizeof(s->why), "rp_template_fill: %s", rp_strerror(r));
		return -1;
	}
	/* The file backend's template file is made at the first map. */
	void *p = rp_map(s->rp, NULL, PAGE, PROT_READ, 0, s->tmpl);
	if (p == MAP_FAILED) {
		snprintf(s->why, sizeof(s->why), "rp_map: %s", strerror(errno));
		return -1;
	}
	mismatches += *(volatile uint8_t *)p != PATTERN;
	rp_unmap(s->rp, p, PAGE);
	return 0;
}

static void small_table(const struct cfg *c)
{
	struct small s[] = {
		{ .name = "anon", .kind = SMALL_ANON },
		{ .name = "memfd (one mmap of a 4 MiB template file)", .kind = SMALL_MEMFD },
		{ .name = "rp_map file backend", .kind = SMALL_RP },
		{ .name = "rp_map uffd backend (daemon round trips)", .kind = SMALL_RP },
	};
	size_t len = c->small_kib << 10;
	double v[MAX_REPS];

	if ((s[1].fd = template_file(4u << 20)) < 0)
		die("template file");
	if (small_rp_setup(&s[2], c->socket, RP_CONNECT_FILE) < 0)
		s[2].kind = SMALL_ANON;
	if (small_rp_setup(&s[3], c->socket, RP_CONNECT_UFFD) < 0)
		s[3].kind = SMALL_ANON;
	printf("\n| %zu KiB mapping | mmap + munmap, us (median of %u reps x %u) |\n|---|--:|\n",
	       c->small_kib, c->reps, c->small_iters);
	for (unsigned i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
		if (s[i].why[0]) {
			printf("| %s | skipped: %s |\n", s[i].name, s[i].why);
			continue;
		}
		(void)small_us(&s[i], len, c->small_iters);
		for (unsigned r = 0; r < c->reps; r++)
			v[r] = small_us(&s[i], len, c->small_iters);
		printf("| %s | %.2f |\n", s[i].name, median(v, c->reps));
		fflush(stdout);
	}
	close(s[1].fd);
	for (unsigned i = 2; i < 4; i++)
		if (s[i].rp)
			rp_disconnect(s[i].rp);
}

static unsigned long num(const char *opt, const char *s, unsigned long lo, unsigned long hi)
{
	char *end;

	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr, "file-chunk: --%s: expected a number in [%lu, %lu]\n", opt, lo, hi);
		exit(2);
	}
	return v;
}

static void usage(FILE *f)
{
	fputs("usage: file-chunk [--reps N] [--map-mib N] [--small-kib N] [--small-iters N]\n"
	      "                  [--socket PATH] [--quick]\n"
	      "  --reps N         repetitions, medians reported (default 9)\n"
	      "  --map-mib N      the mapping mapped in pieces (default 1024)\n"
	      "  --small-kib N    the small mapping (default 256)\n"
	      "  --small-iters N  map + unmap per small rep (default 1000)\n"
	      "  --socket PATH    refpaged for the uffd backend's rp_map (default: librefpage's)\n"
	      "  --quick          a smoke run: --reps 1 --map-mib 64 --small-iters 10, over\n"
	      "                   any of those given\n",
	      f);
}

static void parse(int argc, char **argv, struct cfg *c)
{
	static const struct option lo[] = {
		{ "reps", required_argument, NULL, 'r' },
		{ "map-mib", required_argument, NULL, 'm' },
		{ "small-kib", required_argument, NULL, 'k' },
		{ "small-iters", required_argument, NULL, 'i' },
		{ "socket", required_argument, NULL, 's' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int o;

	*c = (struct cfg){ .reps = 9, .small_iters = 1000, .map_mib = 1024, .small_kib = 256 };
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'r':
			c->reps = (unsigned)num("reps", optarg, 1, MAX_REPS);
			break;
		case 'm':
			c->map_mib = num("map-mib", optarg, 1, 1 << 20);
			break;
		case 'k':
			c->small_kib = num("small-kib", optarg, 4, 4096) & ~3ul;
			break;
		case 'i':
			c->small_iters = (unsigned)num("small-iters", optarg, 1, 1000000);
			break;
		case 's':
			c->socket = optarg;
			break;
		case 'q':
			c->quick = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc) {
		usage(stderr);
		exit(2);
	}
	if (c->quick) {
		c->reps = 1;
		c->small_iters = 10;
		c->map_mib = 64;
	}
}

int main(int argc, char **argv)
{
	struct cfg c;

	parse(argc, argv, &c);
	memset(page, PATTERN, PAGE);
	printf("file-chunk: uid %u; %u reps (medians); page 0x%02X\n\n", (unsigned)getuid(), c.reps,
	       PATTERN);
	chunk_table(&c);
	small_table(&c);
	printf("\n%lu mismatches\n", mismatches);
	return mismatches ? 1 : 0;
}
