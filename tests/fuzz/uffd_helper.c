/* fuzz_session's uffd owner: a small process, built without sanitizers or
 * coverage, whose address space the fuzzed MAP requests register.
 *
 * The fuzzer cannot hand the daemon code a userfaultfd of its own: a MAP
 * of a fuzzed address could then register the fuzzer's heap, stack or
 * sanitizer shadow, and the worker would fill them with template bytes.
 * This process owns every uffd instead, keeps an arena at a fixed address
 * for the seeds to MAP, and touches arena pages on request, which makes
 * the worker answer real faults.
 *
 * Runs with its end of a SOCK_SEQPACKET socketpair as fd 3. Requests are
 * struct fz_helper_req; answers: U: one byte with the new uffd attached
 * (none on failure), T: the page's bytes as read in user mode, R: one
 * byte. Exits on EOF. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fuzz_helper.h"
#include "fuzz_input.h"
#include "proto.h"

#define PAGE 4096u
#define SOCK 3

static uint8_t *arena;

static int make_uffd(unsigned kind)
{
	int flags = O_CLOEXEC | O_NONBLOCK;

	if (kind == FZ_HELPER_UFFD_UMO)
		flags |= UFFD_USER_MODE_ONLY;
	int fd = (int)syscall(SYS_userfaultfd, flags);
	if (fd >= 0 && kind == FZ_HELPER_UFFD_CONFIGURED) {
		struct uffdio_api api = { .api = UFFD_API };
		if (ioctl(fd, UFFDIO_API, &api) < 0) {
			close(fd);
			fd = -1;
		}
	}
	return fd;
}

static void send_uffd(unsigned kind)
{
	char one = 'u';
	struct iovec iov = { .iov_base = &one, .iov_len = 1 };
	int fd = make_uffd(kind);

	if (proto_sendmsg_fds(SOCK, &iov, 1, &fd, fd >= 0 ? 1 : 0, 0) < 0)
		_exit(1);
	if (fd >= 0)
		close(fd);
}

/* In user mode first: a user-mode-only uffd cannot serve the kernel's own
 * access to a missing page (send(2) from the arena would get EFAULT). */
static void touch(uint32_t page)
{
	static uint64_t copy[PAGE / sizeof(uint64_t)];
	const volatile uint64_t *p = (const volatile uint64_t *)(arena + (size_t)page * PAGE);

	if (page >= FZ_ARENA_PAGES || (page >= FZ_HOLE && page < FZ_HOLE + FZ_HOLE_PAGES))
		memset(copy, 0xEE, sizeof(copy));
	else
		for (size_t i = 0; i < PAGE / sizeof(uint64_t); i++)
			copy[i] = p[i];
	if (send(SOCK, copy, sizeof(copy), MSG_NOSIGNAL) < 0)
		_exit(1);
}

static void reset(void)
{
	madvise(arena, (size_t)FZ_HOLE * PAGE, MADV_DONTNEED);
	madvise(arena + (size_t)(FZ_HOLE + FZ_HOLE_PAGES) * PAGE,
		(size_t)(FZ_ARENA_PAGES - FZ_HOLE - FZ_HOLE_PAGES) * PAGE, MADV_DONTNEED);
	if (send(SOCK, "r", 1, MSG_NOSIGNAL) < 0)
		_exit(1);
}

int main(void)
{
	struct fz_helper_req r;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	arena = mmap((void *)(uintptr_t)FZ_ARENA, (size_t)FZ_ARENA_PAGES * PAGE,
		     PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		     0);
	if (arena != (void *)(uintptr_t)FZ_ARENA) {
		fprintf(stderr, "uffd_helper: cannot map the arena at %#llx: %s\n",
			(unsigned long long)FZ_ARENA, strerror(errno));
		return 1;
	}
	munmap(arena + (size_t)FZ_HOLE * PAGE, (size_t)FZ_HOLE_PAGES * PAGE);
	for (;;) {
		ssize_t n = recv(SOCK, &r, sizeof(r), 0);
		if (n != (ssize_t)sizeof(r))
			return 0;
		switch (r.op) {
		case FZ_HELPER_UFFD:
			send_uffd(r.arg);
			break;
		case FZ_HELPER_TOUCH:
			touch(r.page);
			break;
		case FZ_HELPER_RESET:
			reset();
			break;
		default:
			return 1;
		}
	}
}
