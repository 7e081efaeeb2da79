/* Fact e: how long a client can make the daemon's uffd ioctls wait on its
 * mmap_lock. A client process (C) populates SIZE GiB of anonymous memory
 * (4 KiB pages) and then, phase by phase, forks in a loop (dup_mmap holds
 * its mmap_lock for writing and write-locks every VMA), toggles mprotect
 * over the whole area (mmap_lock for writing), and zaps and repopulates
 * it (MADV_DONTNEED + MADV_POPULATE_WRITE: mmap_lock for reading). The
 * daemon side (D, another process holding C's uffd) times UFFDIO_COPY and
 * UFFDIO_ZEROPAGE onto a present page (EEXIST: nothing written),
 * UFFDIO_WRITEPROTECT mode 0 (ENOENT), UFFDIO_WAKE, and UFFDIO_REGISTER +
 * UFFDIO_UNREGISTER of a small mapping, all on small mappings of C's that
 * the big operations do not touch.
 *   cc -O2 -Wall -o lock_block lock_block.c && ./lock_block 4 */
#include "kf.h"
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

enum { PH_IDLE, PH_FORK, PH_MPROTECT, PH_REPOPULATE, PH_DONE, NPH };
static const char *const ph_name[] = { "idle", "fork loop", "mprotect loop",
				       "DONTNEED+POPULATE loop" };
enum { OP_COPY, OP_COPYB, OP_ZERO, OP_WP, OP_WAKE, OP_REG, OP_UNREG, NOP };
static const char *const op_name[] = { "COPY", "COPY in area", "ZEROPAGE",  "WRITEPROTECT",
				       "WAKE", "REGISTER",     "UNREGISTER" };

struct shared {
	atomic_int phase, ready;
	double op_max[NPH], op_sum[NPH];
	long op_n[NPH];
	uint64_t r, r2, b;
};

#define OP_S 1.5 /* seconds of one op type per phase */
#define MAXS 400000

static void client(struct shared *sh, int sock, size_t gib)
{
	size_t len = gib << 30;
	uint8_t *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *r = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	uint8_t *r2 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(b, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += PAGE)
		b[i] = 1;
	int fd = kf_uffd(1, 0);
	r[0] = 1; /* one present page: COPY/ZEROPAGE there give EEXIST */
	kf_register(fd, (uintptr_t)r, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING);
	/* The area's first 2 MiB too (a VMA of its own now): COPY onto its
	 * present pages gives EEXIST. The rest is the zap/populate target. */
	kf_register(fd, (uintptr_t)b, 2 << 20, UFFDIO_REGISTER_MODE_MISSING);
	sh->r = (uintptr_t)r;
	sh->r2 = (uintptr_t)r2;
	sh->b = (uintptr_t)b;
	kf_send_fd(sock, fd);
	close(fd);
	atomic_store(&sh->ready, 1);
	for (int ph; (ph = atomic_load(&sh->phase)) != PH_DONE;) {
		{
			double t0 = kf_now();
			if (ph <= PH_IDLE) {
				usleep(1000);
				continue;
			} else if (ph == PH_FORK) {
				pid_t p = fork();
				if (p == 0)
					_exit(0);
				t0 = kf_now() - t0;
				waitpid(p, NULL, 0);
			} else if (ph == PH_MPROTECT) {
				mprotect(b, len, PROT_READ);
				mprotect(b, len, PROT_READ | PROT_WRITE);
				t0 = (kf_now() - t0) / 2;
			} else {
				madvise(b + (2 << 20), len - (2 << 20), MADV_DONTNEED);
				double t1 = kf_now();
				madvise(b + (2 << 20), len - (2 << 20), MADV_POPULATE_WRITE);
				t0 = kf_now() - t1 > t1 - t0 ? kf_now() - t1 : t1 - t0;
			}
			if (t0 > sh->op_max[ph])
				sh->op_max[ph] = t0;
			sh->op_sum[ph] += t0;
			sh->op_n[ph]++;
		}
	}
	_exit(0);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	size_t gib = argc > 1 ? strtoul(argv[1], NULL, 0) : 4;
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	atomic_init(&sh->phase, -1);
	pid_t c = fork();
	if (c == 0)
		client(sh, sv[1], gib);
	int fd = kf_recv_fd(sv[0]);
	static double *s[NPH][NOP];
	static long n[NPH][NOP];
	for (int p = 0; p < NPH; p++)
		for (int o = 0; o < NOP; o++)
			s[p][o] = malloc(MAXS * sizeof(double));
	static char src[PAGE] __attribute__((aligned(4096)));
	while (!atomic_load(&sh->ready))
		usleep(1000);
	/* One op type at a time: with all in turn, whichever is in the
	 * kernel when the client takes its lock absorbs the whole wait. */
	for (int ph = PH_IDLE; ph < PH_DONE; ph++) {
		atomic_store(&sh->phase, ph);
		for (int o = 0; o < NOP; o++) {
			double end = kf_now() + OP_S;
			while (kf_now() < end) {
				double t0 = kf_now();
				switch (o) {
				case OP_COPY:
					kf_copy(fd, sh->r, src, PAGE);
					break;
				case OP_COPYB:
					kf_copy(fd, sh->b, src, PAGE);
					break;
				case OP_ZERO:
					kf_zeropage(fd, sh->r, PAGE);
					break;
				case OP_WP:
					kf_wp(fd, sh->r, 4 * PAGE,
					      UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
					break;
				case OP_WAKE:
					kf_wake(fd, sh->r + PAGE, PAGE);
					break;
				case OP_REG:
					kf_register(fd, sh->r2, PAGE, UFFDIO_REGISTER_MODE_MISSING);
					break;
				case OP_UNREG:
					kf_unregister(fd, sh->r2, PAGE);
					break;
				}
				double dt = kf_now() - t0;
				if (n[ph][o] < MAXS)
					s[ph][o][n[ph][o]++] = dt;
			}
		}
	}
	atomic_store(&sh->phase, PH_DONE);
	waitpid(c, NULL, 0);
	printf("client: %zu GiB populated, 4 KiB pages; each op type timed alone for %.1f s per "
	       "phase\n",
	       gib, OP_S);
	for (int p = PH_IDLE; p < PH_DONE; p++) {
		if (p != PH_IDLE)
			printf("%s: client op max %.1f ms, mean %.1f ms (%ld ops)\n", ph_name[p],
			       sh->op_max[p] * 1e3,
			       sh->op_n[p] ? sh->op_sum[p] / sh->op_n[p] * 1e3 : 0, sh->op_n[p]);
		else
			printf("%s:\n", ph_name[p]);
		for (int o = 0; o < NOP; o++) {
			long k = n[p][o];
			if (!k)
				continue;
			qsort(s[p][o], (size_t)k, sizeof(double), cmp);
			double slow = 0;
			int nslow = 0;
			for (long i = 0; i < k; i++)
				if (s[p][o][i] > 5e-3) {
					slow += s[p][o][i];
					nslow++;
				}
			printf("   %-13s n %6ld  median %6.1f us  max %7.1f ms  calls > 5 ms: %3d, "
			       "%5.0f ms of %.0f\n",
			       op_name[o], k, s[p][o][k / 2] * 1e6, s[p][o][k - 1] * 1e3, nslow,
			       slow * 1e3, OP_S * 1e3);
		}
	}
	return 0;
}
