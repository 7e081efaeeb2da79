/* Requests from fuzz_session to its uffd owner process (uffd_helper.c). */
#ifndef RP_FUZZ_HELPER_H
#define RP_FUZZ_HELPER_H

#include <stdint.h>

enum {
	FZ_HELPER_UFFD = 'U',  /* arg: FZ_HELPER_UFFD_* */
	FZ_HELPER_TOUCH = 'T', /* page: arena page to read */
	FZ_HELPER_RESET = 'R', /* drop every arena page */
};

enum {
	FZ_HELPER_UFFD_PLAIN,
	FZ_HELPER_UFFD_UMO,
	FZ_HELPER_UFFD_CONFIGURED,
};

struct fz_helper_req {
	uint8_t op;
	uint8_t arg;
	uint16_t reserved;
	uint32_t page;
};

#endif
