/* direct_read: reads a file with O_DIRECT into the start of a fresh, much
 * larger heap buffer, as a database or a backup tool would: the kernel
 * writes into pages the program never touched (under refpage-run a
 * refpage block: with a user-mode-only userfaultfd that read fails with
 * EFAULT; the file backend serves it).
 *   direct_read FILE ALLOC_MIB
 * Prints "direct_read: N bytes, fnv1a XXXXXXXXXXXXXXXX" (the bytes read,
 * the same in every mode) on stdout and "direct_read: maxrss_kb N" on
 * stderr. Exit 77 when the file's filesystem does not do O_DIRECT. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define ALIGN 4096

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: direct_read FILE ALLOC_MIB\n");
		return 2;
	}
	size_t alloc = strtoull(argv[2], NULL, 10) << 20;
	int fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "direct_read: open %s with O_DIRECT: %s\n", argv[1],
			strerror(errno));
		return errno == EINVAL ? 77 : 1;
	}
	void *v;
	if (posix_memalign(&v, ALIGN, alloc)) {
		fprintf(stderr, "direct_read: posix_memalign %zu: out of memory\n", alloc);
		return 1;
	}
	unsigned char *buf = v;
	size_t have = 0;
	while (have < alloc) {
		ssize_t n = read(fd, buf + have,
				 alloc - have < (1u << 20) ? alloc - have : 1u << 20);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "direct_read: read at %zu: %s\n", have, strerror(errno));
			return errno == EINVAL && have == 0 ? 77 : 1;
		}
		if (n == 0)
			break;
		have += (size_t)n;
	}
	uint64_t h = 14695981039346656037ull;
	for (size_t i = 0; i < have; i++)
		h = (h ^ buf[i]) * 1099511628211ull;
	printf("direct_read: %zu bytes, fnv1a %016" PRIx64 "\n", have, h);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	fprintf(stderr, "direct_read: maxrss_kb %ld\n", ru.ru_maxrss);
	free(buf);
	close(fd);
	return 0;
}
