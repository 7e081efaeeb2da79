/* rp_fork_prog: fork-tree scenarios as a separate program, so that the
 * tests can run them as root and as uid 65534.
 *
 *   rp_fork_prog storm SOCKET CHILDREN PARALLEL
 *       map 4 MiB of 0xAA, write page 0, then run CHILDREN short-lived
 *       children, PARALLEL at a time; each checks page 0 (the parent's
 *       bytes) and a fresh page (the pattern), writes, and exits. Prints
 *       "storm ok N" and exits 0 when every child was right.
 *   rp_fork_prog orphan SOCKET
 *       the process forks a child and exits at once; the child, orphaned,
 *       keeps faulting for a second and checks every byte. The test reads
 *       the child's verdict ("orphan ok"/"orphan FAIL ...") on stdout.
 *   rp_fork_prog exec SOCKET
 *       fork a child that faults once and then execs /bin/sleep 30; print
 *       the child's pid and wait for it (the test kills it).
 * Exit status 0 on success, 1 on a wrong byte or failure. */
#include <errno.h>
#include <signal.h>
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
#define MAP_LEN (4u << 20)

static uint8_t *setup(const char *sock)
{
	rp_client *c;
	uint32_t id;
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);

	if (r < 0 || (r = rp_template_fill(c, 0xAA, &id)) < 0) {
		printf("connect FAIL %s\n", strerror(-r));
		exit(1);
	}
	uint8_t *p = rp_map(c, NULL, MAP_LEN, PROT_READ | PROT_WRITE, 0, id);
	if (p == MAP_FAILED) {
		printf("map FAIL %s\n", strerror(errno));
		exit(1);
	}
	memset(p, 0x5A, PAGE);
	return p;
}

static int page_is(const uint8_t *p, uint8_t b)
{
	for (unsigned i = 0; i < PAGE; i++)
		if (p[i] != b)
			return 0;
	return 1;
}

/* A child: the parent's page, a fresh pattern page, a private write. */
static int child_check(uint8_t *p, unsigned n)
{
	uint8_t *fresh = p + PAGE * (1 + n % (MAP_LEN / PAGE - 1));
	int ok = page_is(p, 0x5A) && (fresh[0] == 0xAA || fresh[0] == 0x33);
	fresh[0] = 0x33;
	return ok;
}

static int cmd_storm(const char *sock, unsigned children, unsigned par)
{
	uint8_t *p = setup(sock);
	unsigned started = 0, running = 0, bad = 0;

	while (started < children || running) {
		while (running < par && started < children) {
			pid_t pid = fork();
			if (pid == 0)
				_exit(child_check(p, started) ? 0 : 1);
			if (pid < 0) {
				printf("fork FAIL %s\n", strerror(errno));
				return 1;
			}
			started++;
			running++;
		}
		int st;
		if (wait(&st) > 0) {
			running--;
			bad += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		}
	}
	if (!page_is(p, 0x5A) || p[PAGE] != 0xAA) {
		printf("storm FAIL the parent saw a child's write\n");
		return 1;
	}
	printf(bad ? "storm FAIL %u children saw wrong bytes\n" : "storm ok %u\n",
	       bad ? bad : children);
	return bad ? 1 : 0;
}

static int cmd_orphan(const char *sock)
{
	uint8_t *p = setup(sock);
	pid_t pid = fork();

	if (pid != 0)
		_exit(pid < 0);
	/* The child: wait until the parent is gone, then fault for a second. */
	while (getppid() != 1) {
		struct timespec ts = { 0, 1000000 };
		if (kill(getppid(), 0) < 0)
			break;
		nanosleep(&ts, NULL);
	}
	time_t end = time(NULL) + 1;
	unsigned pages = 0;
	for (size_t off = PAGE; time(NULL) <= end && off < MAP_LEN; off += PAGE, pages++) {
		if (!page_is(p + off, 0xAA) || !page_is(p, 0x5A)) {
			printf("orphan FAIL wrong byte at page %zu\n", off / PAGE);
			return 1;
		}
		p[off] = 1;
		madvise(p + off, PAGE, MADV_DONTNEED);
		if (!page_is(p + off, 0xAA)) {
			printf("orphan FAIL after DONTNEED at page %zu\n", off / PAGE);
			return 1;
		}
	}
	printf("orphan ok %u\n", pages);
	return 0;
}

static int cmd_exec(const char *sock)
{
	uint8_t *p = setup(sock);
	pid_t pid = fork();

	if (pid == 0) {
		if (!page_is(p + PAGE, 0xAA))
			_exit(1);
		execl("/bin/sleep", "sleep", "30", (char *)NULL);
		_exit(127);
	}
	printf("%d\n", (int)pid);
	fflush(stdout);
	int st;
	waitpid(pid, &st, 0);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "storm"))
		return cmd_storm(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "orphan"))
		return cmd_orphan(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "exec"))
		return cmd_exec(argv[2]);
	fprintf(stderr, "usage: see the comment at the top of rp_fork_prog.c\n");
	return 2;
}
