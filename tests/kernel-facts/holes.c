/* Fact c: UFFDIO_REGISTER / UFFDIO_UNREGISTER over ranges with holes, and
 * over several adjacent VMAs registered separately.
 *   cc -O2 -Wall -o holes holes.c && ./holes */
#include "kf.h"

static void *area(size_t pages)
{
	return mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

int main(void)
{
	int fd = kf_uffd(1, 0);
	const uint64_t M = UFFDIO_REGISTER_MODE_MISSING;

	/* [a, a+5): pages 1 and 3 unmapped. */
	uint8_t *a = area(5);
	munmap(a + PAGE, PAGE);
	munmap(a + 3 * PAGE, PAGE);
	printf("REGISTER over 5 pages with 2 holes: %s\n",
	       kf_err(kf_register(fd, (uintptr_t)a, 5 * PAGE, M)));
	printf("UNREGISTER over the same: %s\n", kf_err(kf_unregister(fd, (uintptr_t)a, 5 * PAGE)));
	printf("REGISTER again, then UNREGISTER from inside the first hole to the end: %s, %s\n",
	       kf_err(kf_register(fd, (uintptr_t)a, 5 * PAGE, M)),
	       kf_err(kf_unregister(fd, (uintptr_t)a + PAGE, 4 * PAGE)));
	printf("a range that is all hole: REGISTER %s, UNREGISTER %s\n",
	       kf_err(kf_register(fd, (uintptr_t)a + PAGE, PAGE, M)),
	       kf_err(kf_unregister(fd, (uintptr_t)a + PAGE, PAGE)));
	printf("UNREGISTER of a mapped range never registered: %s\n",
	       kf_err(kf_unregister(fd, (uintptr_t)a + 2 * PAGE, PAGE)));

	/* Three adjacent VMAs (different protections keep them apart),
	 * registered one by one, then unregistered in one call. */
	uint8_t *b = area(3);
	mprotect(b + PAGE, PAGE, PROT_READ);
	int r1 = kf_register(fd, (uintptr_t)b, PAGE, M);
	int r2 = kf_register(fd, (uintptr_t)b + PAGE, PAGE, M);
	int r3 = kf_register(fd, (uintptr_t)b + 2 * PAGE, PAGE, M);
	printf("3 adjacent VMAs registered separately: %s %s %s; one UNREGISTER over all: %s\n",
	       kf_err(r1), kf_err(r2), kf_err(r3),
	       kf_err(kf_unregister(fd, (uintptr_t)b, 3 * PAGE)));
	printf("one REGISTER over all 3: %s; one UNREGISTER of the middle one only: %s\n",
	       kf_err(kf_register(fd, (uintptr_t)b, 3 * PAGE, M)),
	       kf_err(kf_unregister(fd, (uintptr_t)b + PAGE, PAGE)));

	/* Partly registered: one VMA registered, its neighbour not. */
	uint8_t *c = area(2);
	mprotect(c + PAGE, PAGE, PROT_READ);
	kf_register(fd, (uintptr_t)c, PAGE, M);
	printf("UNREGISTER over a registered VMA and an unregistered neighbour: %s\n",
	       kf_err(kf_unregister(fd, (uintptr_t)c, 2 * PAGE)));

	/* A neighbour owned by another uffd. */
	int fd2 = kf_uffd(1, 0);
	uint8_t *d = area(2);
	mprotect(d + PAGE, PAGE, PROT_READ);
	kf_register(fd2, (uintptr_t)d + PAGE, PAGE, M);
	printf("REGISTER over a VMA and a neighbour registered on another uffd: %s; UNREGISTER over "
	       "both from the first uffd: %s\n",
	       kf_err(kf_register(fd, (uintptr_t)d, 2 * PAGE, M)),
	       kf_err(kf_unregister(fd, (uintptr_t)d, 2 * PAGE)));

	/* A VMA uffd cannot take (a file mapping) inside the range. */
	int mf = open("/proc/self/exe", O_RDONLY);
	uint8_t *e = area(3);
	mmap(e + PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, mf, 0);
	printf("REGISTER over anon + private file mapping + anon: %s; UNREGISTER over it: %s\n",
	       kf_err(kf_register(fd, (uintptr_t)e, 3 * PAGE, M)),
	       kf_err(kf_unregister(fd, (uintptr_t)e, 3 * PAGE)));
	return 0;
}
