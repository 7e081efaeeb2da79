/* load_client: the restart load of tests/common/load.h as a program, for
 * the real-systemd test (selftest.sh kills and restarts refpaged under it).
 *
 *   load_client SOCKET THREADS
 *
 * Connects once, maps four refpage mappings, forks a child with
 * LOAD_CHILD_THREADS faulting threads and runs THREADS here, all dropping
 * and re-touching their pages without a pause; a monitor calls rp_alive()
 * every millisecond. Prints "flowing" once every thread has done a round,
 * then answers one line per command read from stdin:
 *
 *   check    every thread, here and in the child, finishes a round from
 *            now (within 30 s): "ok STATE" or "FAIL why"
 *   lenient  from now on zeros are right too (the daemon is being stopped
 *            for good): "ok lenient"
 *   mark     the slowest first touches (max_ms) start again from 0, so that
 *            the next check's are those since: "ok marked"
 *   stop     (or end of input) stop, join, and print "done STATE" (exit 0)
 *            or "FAIL why" (exit 1)
 *
 * STATE is "bad=N zeros=Z dead=D/C max_ms=P/Q touches=T/U": wrong pages,
 * pages read as zeros, rp_alive() checks that said the connection was gone
 * out of all checks, the slowest first touch here / in the child, and the
 * number of first touches here / in the child. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <refpage.h>

#include "load.h"

#define TIMEOUT_S 30.0

static struct load ld;
static struct load_alive mon;

static void state(char *buf, size_t n)
{
	struct load_shared *sh = ld.sh;

	snprintf(buf, n, "bad=%d zeros=%lu dead=%lu/%lu max_ms=%.2f/%.2f touches=%lu/%lu",
		 atomic_load(&sh->bad),
		 atomic_load(&sh->side[0].zeros) + atomic_load(&sh->side[1].zeros),
		 atomic_load(&mon.dead), atomic_load(&mon.checks),
		 (double)atomic_load(&sh->side[0].max_ns) / 1e6,
		 (double)atomic_load(&sh->side[1].max_ns) / 1e6, atomic_load(&sh->side[0].touches),
		 atomic_load(&sh->side[1].touches));
}

int main(int argc, char **argv)
{
	char err[256], st[256], line[64];
	rp_client *c;
	char *end;
	int r;

	if (argc != 3) {
		fprintf(stderr, "usage: load_client SOCKET THREADS\n");
		return 2;
	}
	long threads = strtol(argv[2], &end, 10);
	if (*end || threads < 1 || threads > LOAD_MAX_THREADS) {
		fprintf(stderr, "load_client: THREADS: '%s' is not in 1..%d\n", argv[2],
			LOAD_MAX_THREADS);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((r = rp_connect_opts(argv[1], RP_CONNECT_UFFD, &c)) < 0) {
		printf("FAIL rp_connect %s: %s\n", argv[1], strerror(-r));
		return 1;
	}
	if (load_start(&ld, c, (int)threads, 1, err, sizeof(err)) < 0) {
		printf("FAIL %s\n", err);
		return 1;
	}
	for (double waited = 0; !load_flowing(&ld); waited += 0.01) {
		if (waited > TIMEOUT_S || atomic_load(&ld.sh->bad)) {
			state(st, sizeof(st));
			printf("FAIL not flowing after %.0f s: %s %s\n", waited, st, ld.sh->why);
			return 1;
		}
		usleep(10000);
	}
	if ((r = load_alive_start(&mon, c)) < 0) {
		printf("FAIL alive monitor: %s\n", strerror(-r));
		return 1;
	}
	printf("flowing\n");
	while (fgets(line, sizeof(line), stdin) && strcmp(line, "stop\n") != 0) {
		if (strcmp(line, "check\n") == 0) {
			r = load_wait_progress(&ld, TIMEOUT_S, err, sizeof(err));
			state(st, sizeof(st));
			if (r < 0)
				printf("FAIL %s; %s\n", err, st);
			else
				printf("ok %s\n", st);
		} else if (strcmp(line, "mark\n") == 0) {
			atomic_store(&ld.sh->side[0].max_ns, 0);
			atomic_store(&ld.sh->side[1].max_ns, 0);
			printf("ok marked\n");
		} else if (strcmp(line, "lenient\n") == 0) {
			atomic_store(&ld.sh->lenient, 1);
			printf("ok lenient\n");
		} else {
			printf("FAIL unknown command: %s", line);
		}
	}
	r = load_stop(&ld, TIMEOUT_S, err, sizeof(err));
	load_alive_stop(&mon);
	state(st, sizeof(st));
	if (r < 0) {
		printf("FAIL %s; %s\n", err, st);
		return 1;
	}
	if (atomic_load(&ld.sh->bad)) {
		printf("FAIL %s; %s\n", ld.sh->why, st);
		return 1;
	}
	printf("done %s\n", st);
	load_free(&ld);
	rp_disconnect(c);
	return 0;
}
