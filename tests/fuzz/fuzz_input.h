/* The input format of fuzz_session, shared with the seed corpus generator.
 *
 * An input is a sequence of steps, each
 *     uint8_t op; uint16_t len (little endian); uint8_t data[len];
 * A truncated last step is cut to what is there.
 *
 * op bits 4-5 name a client connection slot (0..2); slot 3 means the step
 * is a harness action instead of a packet (FZ_ACT_*, in bits 0-2, with
 * data[0] as its argument).
 *
 * For a packet step, data is sent as one SOCK_SEQPACKET packet on the
 * slot's connection (connecting it first if needed), with
 *   bits 0-2: descriptors attached (FZ_FD_*),
 *   bit 3:    the client leaves the replies unread for now,
 *   bit 6:    the harness sets hdr.len to len - 16 (when len >= 16),
 *   bit 7:    the harness sets hdr.version to PROTO_VERSION and hdr.flags to 0.
 * The fix-ups let mutations reach the payload checks without having to
 * keep two length fields in agreement. */
#ifndef RP_FUZZ_INPUT_H
#define RP_FUZZ_INPUT_H

#include <stdint.h>

#define FZ_SLOTS 3
#define FZ_OP_SLOT(op) (((op) >> 4) & 3u)
#define FZ_OP_FD(op) ((op)&7u)
#define FZ_OP_NOREAD 0x08u
#define FZ_OP_FIXLEN 0x40u
#define FZ_OP_FIXHDR 0x80u
#define FZ_OP_ACTION 0x30u /* slot 3 */

enum fz_fd {
	FZ_FD_NONE,
	FZ_FD_UFFD,            /* a fresh userfaultfd, as the library makes it */
	FZ_FD_UFFD_UMO,        /* a fresh UFFD_USER_MODE_ONLY userfaultfd */
	FZ_FD_UFFD_CONFIGURED, /* a userfaultfd already through UFFDIO_API */
	FZ_FD_PIPE,
	FZ_FD_EVENTFD,
	FZ_FD_FILE, /* a regular file */
	FZ_FD_TWO,  /* a fresh userfaultfd and an eventfd */
};

enum fz_action {
	FZ_ACT_HANGUP,        /* the client of slot data[0] % 3 closes its socket */
	FZ_ACT_TOUCH,         /* the uffd owner reads arena page data[0] % FZ_ARENA_PAGES */
	FZ_ACT_HELLO_TIMEOUT, /* slot data[0] % 3's handshake timer fires */
	FZ_ACT_READ,          /* every client reads its replies */
	FZ_ACT_CONNECT,       /* slot data[0] % 3 connects (if it is not connected) */
};

/* The uffd owner's arena: fixed, so that seeds can MAP it (above ASan's
 * shadow, below its allocator). Pages [FZ_HOLE, FZ_HOLE + FZ_HOLE_PAGES)
 * are left unmapped. */
#define FZ_ARENA ((uint64_t)0x520000000000ull)
#define FZ_ARENA_PAGES 64u
#define FZ_HOLE 48u
#define FZ_HOLE_PAGES 2u

#endif
