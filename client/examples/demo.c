/* refpage-demo: the semantics of a refpage mapping, shown on 256 MiB of
 * 0xAA pattern memory, then the daemon's counters (uffd backend).
 *   refpage-demo [-s SOCKET] [-m MiB] [-b auto|uffd|file] */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <refpage.h>

#define PAGE 4096u

static int failures;

static void check(int ok, const char *what)
{
	printf("  [%s] %s\n", ok ? " ok " : "FAIL", what);
	if (!ok)
		failures++;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int all_bytes(const uint8_t *p, size_t n, uint8_t b)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != b)
			return 0;
	return 1;
}

/* Read one byte of every page; returns how many read as b. */
static size_t scan(const volatile uint8_t *p, size_t len, uint8_t b)
{
	size_t hits = 0;
	for (size_t off = 0; off < len; off += PAGE)
		hits += p[off] == b;
	return hits;
}

static void show_fork(uint8_t *p)
{
	p[0] = 0x11;
	pid_t pid = fork();
	if (pid == 0) {
		int ok = p[0] == 0x11 && p[PAGE * 7] == 0xAA;
		p[0] = 0x22; /* private to the child */
		_exit(ok ? 0 : 1);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	check(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "fork: the child sees the parent's written page and the pattern elsewhere");
	check(p[0] == 0x11, "fork: the child's write is invisible to the parent");
}

static void show_stats(rp_client *c)
{
	uint64_t v[32];
	const char *names[32];
	int n = rp_stats(c, v, names, 32);

	if (n == -EOPNOTSUPP) {
		printf("\n(file backend: no daemon involved, no counters)\n");
		return;
	}
	printf("\ndaemon STATS:\n");
	for (int i = 0; i < n; i++)
		printf("  %-26s %llu\n", names[i], (unsigned long long)v[i]);
}

int main(int argc, char **argv)
{
	const char *sock = NULL;
	size_t mib = 256;
	unsigned flags = 0;
	int o;

	while ((o = getopt(argc, argv, "s:m:b:")) != -1) {
		if (o == 's')
			sock = optarg;
		else if (o == 'm')
			mib = strtoul(optarg, NULL, 10);
		else if (o == 'b' && !strcmp(optarg, "file"))
			flags = RP_CONNECT_FILE;
		else if (o == 'b' && !strcmp(optarg, "uffd"))
			flags = RP_CONNECT_UFFD;
		else if (o != 'b' || strcmp(optarg, "auto")) {
			fprintf(stderr,
				"usage: refpage-demo [-s SOCKET] [-m MiB] [-b auto|uffd|file]\n");
			return 2;
		}
	}
	if (mib < 4) {
		fprintf(stderr, "refpage-demo: -m: at least 4 MiB\n");
		return 2;
	}
	size_t len = mib << 20;
	rp_client *c;
	uint32_t id;
	int r = rp_connect_opts(sock, flags, &c);
	if (r < 0) {
		fprintf(stderr, "refpage-demo: cannot reach refpaged: %s\n", strerror(-r));
		return 1;
	}
	if ((r = rp_template_fill(c, 0xAA, &id)) < 0) {
		fprintf(stderr, "refpage-demo: template: %s\n", strerror(-r));
		return 1;
	}
	uint8_t *p = rp_map(c, NULL, len, PROT_READ | PROT_WRITE, 0, id);
	if (p == MAP_FAILED) {
		fprintf(stderr, "refpage-demo: rp_map: %s\n", strerror(errno));
		return 1;
	}
	printf("mapped %zu MiB of pattern 0xAA at %p, uid %d, %s backend\n", mib, (void *)p,
	       (int)getuid(), rp_backend_name(rp_backend(c)));
	double t0 = now_s();
	size_t hits = scan(p, len, 0xAA);
	double t1 = now_s();
	check(hits == len / PAGE, "every untouched page reads 0xAA");
	printf("         (%zu pages in %.3f s: %.0f ns/page)\n", len / PAGE, t1 - t0,
	       (t1 - t0) * 1e9 / (len / PAGE));
	memset(p + PAGE, 0x5A, PAGE);
	check(all_bytes(p + PAGE, PAGE, 0x5A) && all_bytes(p + 2 * PAGE, PAGE, 0xAA),
	      "a write makes the page private; its neighbours still read 0xAA");
	int fd = open("/proc/self/cmdline", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, p + 3 * PAGE, 64) : -1;
	check(n > 0 && p[3 * PAGE + n] == 0xAA,
	      "read(2) into an untouched page: the kernel's own access sees the page");
	if (fd >= 0)
		close(fd);
	madvise(p + PAGE, PAGE, MADV_DONTNEED);
	check(all_bytes(p + PAGE, PAGE, 0xAA), "MADV_DONTNEED brings the pattern back");
	check(rp_unmap(c, p + len / 2, PAGE * 16) == 0 && p[len / 2 + PAGE * 16] == 0xAA,
	      "unmapping the middle leaves the rest working");
	uint8_t *q = mremap(p + len - (1u << 20), 1u << 20, 1u << 20, MREMAP_MAYMOVE | MREMAP_FIXED,
			    p + len / 2);
	(void)q;
	check(q != MAP_FAILED && scan(p + len / 2, 1u << 20, 0xAA) == 256,
	      "mremap moves pages and pattern together");
	show_fork(p);
	show_stats(c);
	rp_disconnect(c);
	printf("\n%s\n", failures ? "SOME CHECKS FAILED" : "all checks passed");
	return failures ? 1 : 0;
}
