/* Helper of task_size.c, built 32-bit (cc -m32 -static -O2 -o task_size32
 * task_size32.c): makes a user-mode-only uffd with one registered missing
 * page, hands it and the page's address over fd 3, then reads the page
 * once told to and reports its first byte. */
#include "kf.h"

int main(void)
{
	int fd = kf_uffd(1, 0);
	char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t a = (uint32_t)(uintptr_t)p;
	char c;
	if (fd < 0 || kf_register(fd, (uintptr_t)p, PAGE, UFFDIO_REGISTER_MODE_MISSING) != 0)
		return 1;
	kf_send_fd(3, fd);
	write(3, &a, 4);
	read(3, &c, 1);
	c = p[0];
	write(3, &c, 1);
	return 0;
}
