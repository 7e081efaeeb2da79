/* A program built against the installed librefpage0 and librefpage-dev
 * only (tests/packaging/test_debs.sh builds it with pkg-config, shared
 * and static, and with find_package(refpage)). It dials a socket where no
 * daemon listens: the header compiles, the library links and loads, and
 * its first call answers as documented.
 *
 *   consumer SOCKET_PATH */
#include <errno.h>
#include <stdio.h>

#include <refpage.h>

int main(int argc, char **argv)
{
	rp_client *c;

	if (argc != 2) {
		fprintf(stderr, "usage: consumer SOCKET_PATH\n");
		return 2;
	}
	int r = rp_connect_opts(argv[1], RP_CONNECT_UFFD, &c);
	if (r != -ENOENT) {
		fprintf(stderr, "consumer: rp_connect(%s) gave %d, expected -ENOENT\n", argv[1], r);
		if (r == 0)
			rp_disconnect(c);
		return 1;
	}
	printf("rp_connect: %s\n", rp_strerror(r));
	return 0;
}
