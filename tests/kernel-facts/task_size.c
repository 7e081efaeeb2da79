/* Fact d: the upper bound validate_range() applies (fs/userfaultfd.c:
 * validate_unaligned_range uses ctx->mm->task_size), found from outside
 * with UFFDIO_WAKE, which touches no mm and takes no lock.
 *   cc -O2 -Wall -o task_size task_size.c && ./task_size [helper32]
 * With a 32-bit helper (task_size32.c, cc -m32 -static) it also shows the
 * bound of a compat client, and that UFFDIO_COPY checks its *source*, an
 * address in the caller's own mm, against the client's bound too. */
#include "kf.h"
#include <sys/wait.h>

/* The first page address validate_range refuses for this uffd's mm. */
static int probes;

static uint64_t uffd_task_size(int fd)
{
	uint64_t lo = 1ull << 16, hi = 1ull << 63; /* lo valid, hi invalid */
	for (probes = 0; hi - lo > PAGE; probes++) {
		uint64_t mid = (lo / 2 + hi / 2) & ~(PAGE - 1);
		if (kf_wake(fd, mid, PAGE) == 0)
			lo = mid;
		else
			hi = mid;
	}
	return hi;
}

int main(int argc, char **argv)
{
	int fd = kf_uffd(1, 0);
	uint64_t ts = uffd_task_size(fd);
	printf("this process: first refused page %#llx (%d ioctls); WAKE at %#llx -> %s, at %#llx -> %s, "
	       "len crossing it -> %s\n",
	       (unsigned long long)ts, probes, (unsigned long long)(ts - PAGE),
	       kf_err(kf_wake(fd, ts - PAGE, PAGE)), (unsigned long long)ts,
	       kf_err(kf_wake(fd, ts, PAGE)), kf_err(kf_wake(fd, ts - PAGE, 2 * PAGE)));
	void *hint = mmap((void *)(1ull << 50), PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	printf("mmap with a hint above 2^47: got %p (no la57: the hint is ignored)\n", hint);
	if (argc < 2)
		return 0;

	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(sv[1], 3);
		execl(argv[1], argv[1], (char *)NULL);
		_exit(127);
	}
	int cfd = kf_recv_fd(sv[0]);
	uint32_t addr;
	if (cfd < 0 || read(sv[0], &addr, 4) != 4) {
		printf("32-bit helper did not answer\n");
		return 1;
	}
	uint64_t cts = uffd_task_size(cfd);
	printf("32-bit (compat) client: first refused page %#llx\n", (unsigned long long)cts);
	static char src64[PAGE] __attribute__((aligned(4096)));
	char *src32 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	memset(src64, 0x64, PAGE);
	memset(src32, 0x32, PAGE);
	int e64 = kf_copy(cfd, addr, src64, PAGE);
	int e32 = kf_copy(cfd, addr, src32, PAGE);
	printf("UFFDIO_COPY into the compat client's registered page from our %p: %s; from our %p "
	       "(below 4 GiB): %s\n",
	       (void *)src64, kf_err(e64), (void *)src32, kf_err(e32));
	write(sv[0], "q", 1);
	char got = 0;
	read(sv[0], &got, 1);
	printf("the compat client reads %#x there\n", (unsigned char)got);
	fflush(stdout);
	waitpid(pid, NULL, 0);
	return 0;
}
