/* hold_client: a client that keeps a refpage mapping across the daemon's
 * death, for the systemd-lite tests.
 *
 *   hold_client SOCKET PAGES
 *
 * Maps PAGES pages of pattern 0xAA, reads the first half (they must read
 * 0xAA), prints "held", then waits for a line (or EOF) on stdin: the test
 * stops the daemon meanwhile. Then it reads every page under a watchdog
 * alarm: touched pages must still read 0xAA, untouched ones 0xAA or, once
 * the daemon is gone, zeros; nothing may hang. Prints one result line:
 *   "after: touched N/N, untouched P pattern Z zero, alive A"
 * and exits 0 when every page is as expected, 1 otherwise, and dies of
 * SIGALRM if a fault hangs. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <refpage.h>

#define PAGE 4096u
#define HANG_S 10

static int page_is(const volatile uint8_t *p, uint8_t b)
{
	for (size_t i = 0; i < PAGE; i++)
		if (p[i] != b)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	rp_client *c;
	uint32_t id;
	char line[16];

	if (argc != 3) {
		fprintf(stderr, "usage: hold_client SOCKET PAGES\n");
		return 2;
	}
	size_t pages = strtoul(argv[2], NULL, 10), half = pages / 2;
	int r = rp_connect_opts(argv[1], RP_CONNECT_UFFD, &c);
	if (r < 0 || (r = rp_template_fill(c, 0xAA, &id)) < 0) {
		fprintf(stderr, "hold_client: %s\n", strerror(-r));
		return 1;
	}
	volatile uint8_t *p = rp_map(c, NULL, pages * PAGE, PROT_READ | PROT_WRITE, 0, id);
	if ((void *)p == MAP_FAILED) {
		fprintf(stderr, "hold_client: rp_map: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < half; i++)
		if (!page_is(p + i * PAGE, 0xAA)) {
			fprintf(stderr, "hold_client: page %zu does not read 0xAA\n", i);
			return 1;
		}
	printf("held\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		line[0] = '\0';

	alarm(HANG_S);
	size_t touched = 0, pattern = 0, zero = 0;
	for (size_t i = 0; i < pages; i++) {
		const volatile uint8_t *q = p + i * PAGE;
		if (i < half)
			touched += page_is(q, 0xAA);
		else if (q[0] == 0xAA)
			pattern += page_is(q, 0xAA);
		else
			zero += page_is(q, 0);
	}
	alarm(0);
	int alive = rp_alive(c);
	printf("after: touched %zu/%zu, untouched %zu pattern %zu zero, alive %d\n", touched, half,
	       pattern, zero, alive);
	return touched == half && pattern + zero == pages - half ? 0 : 1;
}
