/* event-cost: what each non-cooperative userfaultfd event costs the
 * process that triggers it, to decide which ones refpaged asks for.
 *
 * With UFFD_FEATURE_EVENT_UNMAP, munmap() of a registered range blocks
 * until the handler has read the UNMAP message; with EVENT_REMOVE,
 * madvise(MADV_DONTNEED) blocks until it has read REMOVE; with
 * EVENT_REMAP, mremap() waits for REMAP. This program times those calls
 * on a registered 64 KiB range with and without each feature, with a
 * handler thread in the same process reading events (the same two context
 * switches a daemon costs), and prints medians in ns.
 *   event-cost [--reps N]   (samples per cell, default 1001) */

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"
#include "timing.h"

#define PAGE 4096u
#define LEN (16 * PAGE)

struct handler {
	int uffd;
	atomic_int stop;
	pthread_t th;
};


/* Reads and drops events; answers faults with zero pages (none expected:
 * the timed pages are written before the timed call). */
static void *handler_main(void *arg)
{
	struct handler *h = arg;
	struct uffd_msg m[16];
	struct pollfd p = { .fd = h->uffd, .events = POLLIN };

	while (!atomic_load(&h->stop)) {
		if (poll(&p, 1, 10) <= 0)
			continue;
		ssize_t n = read(h->uffd, m, sizeof(m));
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(m[0]); i++) {
			if (m[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			struct uffdio_zeropage z = {
				.range = { .start = m[i].arg.pagefault.address &
						    ~(uint64_t)(PAGE - 1),
					   .len = PAGE },
			};
			ioctl(h->uffd, UFFDIO_ZEROPAGE, &z);
		}
	}
	return NULL;
}

static uint8_t *map_registered(int uffd)
{
	uint8_t *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	struct uffdio_register r = { .range = { (uintptr_t)p, LEN },
				     .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (uffd >= 0 && ioctl(uffd, UFFDIO_REGISTER, &r) < 0)
		return NULL;
	return p;
}

enum op { OP_MUNMAP, OP_DONTNEED, OP_MREMAP };

/* ns of one op on a freshly registered, fully written range. */
static double time_op(int uffd, enum op op)
{
	uint8_t *spare = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *p = map_registered(uffd);

	if (!p || spare == MAP_FAILED) {
		fprintf(stderr, "event-cost: map/register: %s\n", strerror(errno));
		exit(1);
	}
	memset(p, 1, LEN);
	double t0 = timing_now_ns();
	if (op == OP_MUNMAP)
		munmap(p, LEN);
	else if (op == OP_DONTNEED)
		madvise(p, LEN, MADV_DONTNEED);
	else
		p = mremap(p, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, spare);
	double t = timing_now_ns() - t0;
	if (op != OP_MUNMAP)
		munmap(p, LEN);
	else
		munmap(spare, LEN);
	return t;
}

static const struct config {
	const char *name;
	uint64_t features; /* UINT64_MAX: no uffd at all */
} configs[] = {
	{ "not registered", UINT64_MAX },
	{ "MISSING only", 0 },
	{ "+EVENT_UNMAP", UFFD_FEATURE_EVENT_UNMAP },
	{ "+EVENT_REMOVE", UFFD_FEATURE_EVENT_REMOVE },
	{ "+EVENT_REMAP", UFFD_FEATURE_EVENT_REMAP },
};
#define NCONF (sizeof(configs) / sizeof(configs[0]))
#define ROUNDS 9

static int start_handler(struct handler *h, uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	h->uffd = -1;
	if (features == UINT64_MAX)
		return 0;
	h->uffd = proto_uffd_create(NULL);
	if (h->uffd < 0 || ioctl(h->uffd, UFFDIO_API, &api) < 0)
		return -errno;
	return pthread_create(&h->th, NULL, handler_main, h) ? -EAGAIN : 0;
}

int main(int argc, char **argv)
{
	static struct handler h[NCONF];
	int reps = 1001;

	if (argc == 3 && !strcmp(argv[1], "--reps"))
		reps = atoi(argv[2]);
	if (reps < ROUNDS) {
		fprintf(stderr, "usage: event-cost [--reps N]   (N >= %d)\n", ROUNDS);
		return 2;
	}
	int per = reps / ROUNDS;
	double *t = calloc(NCONF * 3 * (size_t)per * ROUNDS, sizeof(double));
	for (size_t c = 0; c < NCONF; c++) {
		int r = start_handler(&h[c], configs[c].features);
		if (r < 0) {
			fprintf(stderr, "event-cost: %s: %s\n", configs[c].name, strerror(-r));
			return 1;
		}
	}
	/* Rounds interleave the configurations, so that drift on a noisy
	 * machine hits them all alike. */
	for (int round = 0; round < ROUNDS; round++)
		for (size_t c = 0; c < NCONF; c++)
			for (int op = 0; op < 3; op++)
				for (int i = 0; i < per; i++)
					t[((c * 3 + op) * ROUNDS + round) * per + i] = time_op(
						h[c].uffd, op);
	printf("median ns per call on a written, registered %u KiB range (%d samples each)\n",
	       LEN / 1024, per * ROUNDS);
	printf("%-16s %12s %12s %12s\n", "uffd features", "munmap", "DONTNEED", "mremap");
	for (size_t c = 0; c < NCONF; c++) {
		printf("%-16s", configs[c].name);
		for (int op = 0; op < 3; op++) {
			double *v = &t[(c * 3 + op) * ROUNDS * per];
			qsort(v, (size_t)per * ROUNDS, sizeof(double), timing_cmp_double);
			printf(" %12.0f", v[per * ROUNDS / 2]);
		}
		printf("\n");
	}
	for (size_t c = 0; c < NCONF; c++) {
		atomic_store(&h[c].stop, 1);
		if (h[c].uffd >= 0) {
			pthread_join(h[c].th, NULL);
			close(h[c].uffd);
		}
	}
	free(t);
	return 0;
}
