/* fork_client: fork children are served, for tests/systemd.
 *
 *   fork_client [SOCKET]
 *
 * Maps 64 pages of pattern 0xAA, reads page 0 and writes page 1, then
 * forks. The child reads pages 16..39 and its own child pages 40..63:
 * pages nobody touched before the forks, which read 0xAA only if the daemon
 * follows the forks and serves the children (an unserved child reads
 * zeros). The child also checks that it sees the parent's write, and
 * writes a page that the parent must not see. Prints one line per check;
 * exits 0 when all pass. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#define PAGE 4096u
#define PAGES 64u

static int range_is(const volatile uint8_t *p, unsigned first, unsigned last, uint8_t b)
{
	for (unsigned i = first; i <= last; i++)
		for (unsigned j = 0; j < PAGE; j += 512)
			if (p[i * PAGE + j] != b)
				return 0;
	return 1;
}

static int report(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAIL", what);
	fflush(stdout);
	return ok;
}

/* Exit status of a child, 1 if it did not exit normally. */
static int reap(pid_t pid)
{
	int st = 0;

	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return 1;
	return WEXITSTATUS(st);
}

static int grandchild(volatile uint8_t *p)
{
	return report(range_is(p, 40, PAGES - 1, 0xAA),
		      "grandchild: pages untouched before both forks read 0xAA")
		       ? 0
		       : 1;
}

static int child(volatile uint8_t *p)
{
	int ok = report(p[PAGE] == 0x11, "child: sees the parent's write");
	ok &= report(range_is(p, 16, 39, 0xAA), "child: pages untouched before the fork read 0xAA");
	p[2 * PAGE + 8] = 0x22;
	pid_t pid = fork();
	if (pid == 0)
		_exit(grandchild(p));
	ok &= report(reap(pid) == 0, "child: its own child was served");
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	rp_client *c;
	uint32_t id;
	int r = rp_connect_opts(argc > 1 ? argv[1] : NULL, RP_CONNECT_UFFD, &c);

	if (r < 0 || (r = rp_template_fill(c, 0xAA, &id)) < 0) {
		fprintf(stderr, "fork_client: %s\n", strerror(-r));
		return 1;
	}
	volatile uint8_t *p = rp_map(c, NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, 0, id);
	if ((void *)p == MAP_FAILED) {
		fprintf(stderr, "fork_client: rp_map: %s\n", strerror(errno));
		return 1;
	}
	int ok = report(p[0] == 0xAA, "parent: an untouched page reads 0xAA");
	p[PAGE] = 0x11;
	pid_t pid = fork();
	if (pid == 0)
		_exit(child(p));
	ok &= report(reap(pid) == 0, "parent: the child and its child were served");
	ok &= report(p[2 * PAGE + 8] == 0xAA, "parent: the child's write is invisible here");
	return ok ? 0 : 1;
}
