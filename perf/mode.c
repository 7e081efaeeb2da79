/* The ways to get memory whose untouched pages read as the pattern (or
 * zero, for the anon baseline). Setup, which may be slow, happens once per
 * run; mode_map() and, for many-small, mode_unmap() are timed. */
#include "bench.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE BENCH_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define UFFD_BATCH 16

void mode_init(struct mode *m, enum mode_kind kind, const char *name)
{
	memset(m, 0, sizeof(*m));
	m->kind = kind;
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->expect = kind == MODE_ANON ? 0 : BENCH_PATTERN;
	m->memfd = m->uffd = m->stopfd = -1;
	m->handler_cpu = -1;
}

static int skip(struct mode *m, const char *what, int err)
{
	snprintf(m->why, sizeof(m->why), "%s: %s", what, strerror(err));
	return -1;
}

static uint8_t *pattern_page(void)
{
	uint8_t *p = mmap(NULL, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	memset(p, BENCH_PATTERN, PAGE);
	return p;
}

/* --- memfd ------------------------------------------------------------ */

/* The template file is filled once, here: every rep then maps it
 * MAP_PRIVATE, and a write copies from the page cache in the kernel. */
static int memfd_setup(struct mode *m, size_t len)
{
	m->memfd = memfd_create("refpage-bench-template", MFD_CLOEXEC);
	if (m->memfd < 0)
		return skip(m, "memfd_create", errno);
	if (ftruncate(m->memfd, (off_t)len) < 0)
		return skip(m, "ftruncate of the template memfd", errno);
	void *p = mmap(NULL, len, RW, MAP_SHARED, m->memfd, 0);
	if (p == MAP_FAILED)
		return skip(m, "mmap of the template memfd", errno);
	memset(p, BENCH_PATTERN, len);
	munmap(p, len);
	m->memfd_len = len;
	return 0;
}

/* --- uffd-thread ------------------------------------------------------ */


static void uffd_serve(struct mode *m, uint64_t addr)
{
	struct uffdio_copy c = {
		.dst = addr & ~(uint64_t)(PAGE - 1),
		.src = (uintptr_t)m->pattern,
		.len = PAGE,
	};

	while (ioctl(m->uffd, UFFDIO_COPY, &c) < 0 && errno == EAGAIN)
		c.copy = 0;
	if (c.copy < 0) {
		/* EEXIST or a range going away: let the thread retry. */
		struct uffdio_range r = { .start = c.dst, .len = PAGE };
		ioctl(m->uffd, UFFDIO_WAKE, &r);
	}
	atomic_fetch_add_explicit(&m->served, 1, memory_order_relaxed);
}

/* poll + read + one UFFDIO_COPY of one page per fault: the plainest
 * in-process pager, the yardstick for the daemon's per-fault cost. */
static void *uffd_handler(void *arg)
{
	struct mode *m = arg;
	struct pollfd pf[2] = { { .fd = m->uffd, .events = POLLIN },
				{ .fd = m->stopfd, .events = POLLIN } };
	struct uffd_msg msgs[UFFD_BATCH];

	atomic_store(&m->handler_tid, gettid());
	for (;;) {
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			break;
		if (pf[1].revents)
			break;
		ssize_t n = read(m->uffd, msgs, sizeof(msgs));
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				uffd_serve(m, msgs[i].arg.pagefault.address);
	}
	return NULL;
}

static int uffd_setup(struct mode *m)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = proto_uffd_create(NULL);

	if (fd < 0)
		return skip(m, "no userfaultfd for this process", -fd);
	m->uffd = fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return skip(m, "UFFDIO_API", errno);
	if ((m->stopfd = eventfd(0, EFD_CLOEXEC)) < 0)
		return skip(m, "eventfd", errno);
	if (!(m->pattern = pattern_page()))
		return skip(m, "pattern page", ENOMEM);
	int r = pthread_create(&m->handler, NULL, uffd_handler, m);
	if (r)
		return skip(m, "handler thread", r);
	m->handler_up = 1;
	if (m->handler_cpu >= 0 && (r = probe_pin(m->handler, m->handler_cpu)))
		return skip(m, "pinning the handler thread", r);
	while (!atomic_load(&m->handler_tid))
		sched_yield();
	return 0;
}

static void *uffd_map(struct mode *m, size_t len)
{
	void *p = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return p;
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(m->uffd, UFFDIO_REGISTER, &reg) < 0) {
		int e = errno;
		munmap(p, len);
		errno = e;
		return MAP_FAILED;
	}
	return p;
}

/* --- refpaged --------------------------------------------------------- */

/* The uffd backend, asked for by name: rp_connect alone gives a process
 * that only gets a user-mode-only userfaultfd (any user here) the file
 * backend, which would then be measured under this mode's name. */
static int refpaged_setup(struct mode *m)
{
	int r = rp_connect_opts(m->socket, RP_CONNECT_UFFD, &m->rp);

	if (r < 0) {
		snprintf(m->why, sizeof(m->why), "no refpaged at %s: %s",
			 m->socket ? m->socket : "the default socket", strerror(-r));
		m->rp = NULL;
		return -1;
	}
	if ((r = rp_template_fill(m->rp, BENCH_PATTERN, &m->tmpl)) < 0)
		return skip(m, "rp_template_fill", -r);
	if (!m->daemon_pid)
		m->daemon_pid = probe_peer_pid(m->socket);
	probe_cmdline(m->daemon_pid, m->daemon_cmd, sizeof(m->daemon_cmd));
	return 0;
}

/* --- refpage-file ------------------------------------------------------ */

/* librefpage's file backend: the kernel serves every fault from the
 * template's sealed memfd, mapped MAP_PRIVATE in 4 MiB pieces. The file is
 * made and filled at a template's first rp_map (once per process; its cost
 * is perf/file-chunk's): one page mapped here keeps that out of the first
 * timed rep, as memfd's fill is. No daemon, no server. */
static int refpage_file_setup(struct mode *m)
{
	int r = rp_connect_opts(m->socket, RP_CONNECT_FILE, &m->rp);

	if (r < 0) {
		m->rp = NULL;
		return skip(m, "rp_connect_opts(RP_CONNECT_FILE)", -r);
	}
	if ((r = rp_backend(m->rp)) != RP_BACKEND_FILE)
		return skip(m, "rp_backend is not the file backend", r < 0 ? -r : EPROTO);
	if ((r = rp_template_fill(m->rp, BENCH_PATTERN, &m->tmpl)) < 0)
		return skip(m, "rp_template_fill", -r);
	void *p = rp_map(m->rp, NULL, PAGE, RW, 0, m->tmpl);
	if (p == MAP_FAILED)
		return skip(m, "rp_map of the template's file", errno);
	rp_unmap(m->rp, p, PAGE);
	return 0;
}

static uint64_t refpaged_faults(struct mode *m)
{
	uint64_t v[64];
	const char *names[64];
	int n = rp_stats(m->rp, v, names, 64);

	for (int i = 0; i < n; i++)
		if (names[i] && !strcmp(names[i], "faults"))
			return v[i];
	return UINT64_MAX;
}

/* --- kernel MAP_REFPAGE ------------------------------------------------ */

static void *krefpage_map(struct mode *m, size_t len)
{
	return mmap(NULL, len, RW, MAP_PRIVATE | BENCH_MAP_REFPAGE, -1,
		    (off_t)(uintptr_t)m->pattern);
}

/* A stock kernel takes MAP_PRIVATE without MAP_ANONYMOUS as a file
 * mapping and fails on fd -1 with EBADF. */
static int krefpage_setup(struct mode *m)
{
	if (!(m->pattern = pattern_page()))
		return skip(m, "pattern page", ENOMEM);
	volatile uint8_t *p = krefpage_map(m, PAGE);
	if ((void *)p == MAP_FAILED && errno == EBADF) {
		snprintf(
			m->why, sizeof(m->why),
			"kernel has no MAP_REFPAGE (mmap(MAP_PRIVATE|0x%x, fd -1) fails with EBADF)",
			BENCH_MAP_REFPAGE);
		return -1;
	}
	if ((void *)p == MAP_FAILED)
		return skip(m, "mmap(MAP_REFPAGE)", errno);
	int ok = p[0] == BENCH_PATTERN && p[PAGE - 1] == BENCH_PATTERN;
	munmap((void *)p, PAGE);
	if (!ok)
		snprintf(m->why, sizeof(m->why),
			 "mmap(MAP_REFPAGE) succeeded but does not read as the reference page");
	return ok ? 0 : -1;
}

/* --- dispatch --------------------------------------------------------- */

int mode_setup(struct mode *m, size_t max_len)
{
	switch (m->kind) {
	case MODE_MEMFD:
		return memfd_setup(m, max_len);
	case MODE_UFFD_THREAD:
		return uffd_setup(m);
	case MODE_REFPAGED:
		return refpaged_setup(m);
	case MODE_REFPAGE_FILE:
		return refpage_file_setup(m);
	case MODE_KERNEL_REFPAGE:
		return krefpage_setup(m);
	default:
		return 0;
	}
}

void mode_teardown(struct mode *m)
{
	if (m->handler_up) {
		uint64_t one = 1;
		if (write(m->stopfd, &one, sizeof(one)) == sizeof(one))
			pthread_join(m->handler, NULL);
		m->handler_up = 0;
	}
	if (m->rp)
		rp_disconnect(m->rp);
	m->rp = NULL;
	if (m->pattern)
		munmap(m->pattern, PAGE);
	m->pattern = NULL;
	if (m->uffd >= 0)
		close(m->uffd);
	if (m->stopfd >= 0)
		close(m->stopfd);
	if (m->memfd >= 0)
		close(m->memfd);
	m->uffd = m->stopfd = m->memfd = -1;
}

void *mode_map(struct mode *m, size_t len)
{
	void *p;

	switch (m->kind) {
	case MODE_MEMSET:
		p = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED)
			memset(p, BENCH_PATTERN, len);
		return p;
	case MODE_MEMFD:
		return mmap(NULL, len, RW, MAP_PRIVATE, m->memfd, 0);
	case MODE_UFFD_THREAD:
		return uffd_map(m, len);
	case MODE_REFPAGED:
	case MODE_REFPAGE_FILE:
		/* rp_map adds MAP_PRIVATE(|MAP_ANONYMOUS) itself. */
		return rp_map(m->rp, NULL, len, RW, 0, m->tmpl);
	case MODE_KERNEL_REFPAGE:
		return krefpage_map(m, len);
	default:
		return mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
}

void mode_unmap(struct mode *m, void *p, size_t len)
{
	if (m->kind == MODE_REFPAGED || m->kind == MODE_REFPAGE_FILE)
		rp_unmap(m->rp, p, len);
	else
		munmap(p, len);
}

int mode_server(const struct mode *m, struct server_ref *s)
{
	if (m->kind == MODE_UFFD_THREAD && m->handler_up) {
		*s = (struct server_ref){ .pid = getpid(), .tid = atomic_load(&m->handler_tid) };
		return 1;
	}
	if (m->kind == MODE_REFPAGED && m->daemon_pid > 0) {
		*s = (struct server_ref){ .pid = m->daemon_pid, .tid = 0 };
		return 1;
	}
	return 0;
}

uint64_t mode_served(struct mode *m)
{
	if (m->kind == MODE_UFFD_THREAD)
		return atomic_load(&m->served);
	if (m->kind == MODE_REFPAGED && m->rp)
		return refpaged_faults(m);
	return UINT64_MAX;
}
