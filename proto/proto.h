/* refpaged wire protocol: AF_UNIX SOCK_SEQPACKET, one message per packet.
 *
 * Every packet is a proto_hdr followed by exactly hdr.len payload bytes.
 * Each type has one exact payload length (proto_payload_len); requests must
 * carry version PROTO_VERSION and zero flags; only HELLO may carry a file
 * descriptor (the client's unconfigured userfaultfd), and it must.
 * Replies echo the request's seq. All fields are fixed width, little endian
 * (host order: both ends are on the same machine), and no struct has padding.
 *
 * This header depends on libc alone: the client library and the daemon
 * both build it. */
#ifndef REFPAGED_PROTO_H
#define REFPAGED_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1u
#define PROTO_PAGE_SIZE 4096u
/* Largest packet: header plus a template page. */
#define PROTO_MAX_MSG (16u + PROTO_PAGE_SIZE)
#define PROTO_DEFAULT_SOCKET "/run/refpaged/refpaged.sock"

enum proto_type {
	PROTO_HELLO = 1,            /* c->d, carries the uffd */
	PROTO_TEMPLATE_FILL = 2,    /* c->d */
	PROTO_TEMPLATE_CREATE = 3,  /* c->d, one page of contents */
	PROTO_TEMPLATE_RELEASE = 4, /* c->d */
	PROTO_MAP = 5,              /* c->d */
	PROTO_UNMAP = 6,            /* c->d */
	PROTO_STATS = 7,            /* c->d */
	PROTO_UPGRADE = 8,          /* c->d: re-exec the daemon binary, keeping every client */
	PROTO_USAGE = 9,            /* c->d: a uid's use of its budgets */
	PROTO_REPORT = 10,          /* c->d: take the caller's read-before-write records */
	PROTO_REPLY = 64,           /* d->c: answer to every request but STATS and USAGE */
	PROTO_STATS_REPLY = 65,     /* d->c */
	PROTO_USAGE_REPLY = 66,     /* d->c */
	PROTO_REPORT_REPLY = 67,    /* d->c */
	PROTO_TYPE_MAX = 68
};

struct proto_hdr {
	uint16_t version;
	uint16_t type;
	uint32_t len;   /* payload bytes after the header */
	uint32_t seq;   /* chosen by the client, echoed in the reply */
	uint32_t flags; /* reserved, must be zero */
};
_Static_assert(sizeof(struct proto_hdr) == 16, "proto_hdr size");

/* HELLO flags */
#define PROTO_HELLO_USER_MODE_ONLY 0x1u /* uffd made with UFFD_USER_MODE_ONLY */
/* Report mode for this address space (and its fork children): every fault
 * fills its one page (no fault-around), and a read fault on a page never
 * written is recorded for REPORT. A daemon older than this flag refuses the
 * HELLO (a reserved flag): the client says report mode needs a newer one. */
#define PROTO_HELLO_REPORT 0x2u
#define PROTO_HELLO_FLAGS_ALL (PROTO_HELLO_USER_MODE_ONLY | PROTO_HELLO_REPORT)

struct proto_hello {
	uint32_t page_size; /* must be PROTO_PAGE_SIZE */
	uint32_t flags;     /* PROTO_HELLO_* */
	uint32_t pid;       /* informational; the daemon trusts SO_PEERCRED */
	uint32_t reserved;  /* zero */
};
_Static_assert(sizeof(struct proto_hello) == 16, "proto_hello size");

struct proto_template_fill {
	uint8_t byte;
	uint8_t reserved[7]; /* zero */
};
_Static_assert(sizeof(struct proto_template_fill) == 8, "proto_template_fill size");

struct proto_template_create {
	uint8_t page[PROTO_PAGE_SIZE];
};
_Static_assert(sizeof(struct proto_template_create) == PROTO_PAGE_SIZE,
	       "proto_template_create size");

struct proto_template_release {
	uint32_t id;
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct proto_template_release) == 8, "proto_template_release size");

struct proto_map {
	uint64_t addr;  /* page aligned */
	uint64_t len;   /* page aligned, non zero */
	uint32_t id;    /* template */
	uint32_t flags; /* reserved, zero */
};
_Static_assert(sizeof(struct proto_map) == 24, "proto_map size");

struct proto_unmap {
	uint64_t addr;
	uint64_t len;
};
_Static_assert(sizeof(struct proto_unmap) == 16, "proto_unmap size");

/* UPGRADE: the daemon re-executes its binary (the file at the path it was
 * started from, so a new version installed there), handing over every
 * client; only root and the daemon's own uid may ask. Allowed before
 * HELLO, like STATS. The reply comes once it is done: status 0 and id the
 * new daemon's pid; -EPERM; -EBUSY (one at a time); -EOPNOTSUPP (no exec
 * helper); -EPROTONOSUPPORT (the new binary cannot read the state
 * snapshot: the old one goes on serving); -ECANCELED (the new binary
 * failed otherwise: the old one goes on serving). */
struct proto_upgrade {
	uint32_t flags;    /* zero */
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct proto_upgrade) == 8, "proto_upgrade size");

/* USAGE: one uid's use of each budget (enum proto_res order). A client may
 * ask about its own uid only (uid = its own; or PROTO_USAGE_SELF); root
 * and the daemon's uid may ask about any, and walk every uid the daemon
 * has an account for with PROTO_USAGE_NEXT (the first uid above uid;
 * status -ENOENT past the last). */
#define PROTO_USAGE_NEXT 0x1u
#define PROTO_USAGE_SELF 0x2u
#define PROTO_USAGE_FLAGS_ALL (PROTO_USAGE_NEXT | PROTO_USAGE_SELF)
struct proto_usage {
	uint32_t uid;
	uint32_t flags; /* PROTO_USAGE_* */
};
_Static_assert(sizeof(struct proto_usage) == 8, "proto_usage size");

enum proto_res {
	PROTO_RES_CONNECTIONS,
	PROTO_RES_TEMPLATES,
	PROTO_RES_RANGES,
	PROTO_RES_BYTES,
	PROTO_RES_PROCESSES,
	PROTO_RES_FDS,
	PROTO_RES_MEMORY,
	PROTO_RES_COUNT
};
#define PROTO_RES_MAX 16u
_Static_assert(PROTO_RES_COUNT <= PROTO_RES_MAX, "too many resources");

struct proto_usage_reply {
	int32_t status;
	uint32_t uid;
	uint32_t count; /* valid entries below */
	uint32_t reserved;
	uint64_t used[PROTO_RES_MAX];
	uint64_t limit[PROTO_RES_MAX];   /* the uid's budget, 0: none */
	uint64_t refused[PROTO_RES_MAX]; /* requests refused for this budget so far */
	uint64_t log_suppressed;         /* this uid's log lines dropped by its rate limit */
	uint64_t loop_us;                /* main-loop time its requests took */
};
_Static_assert(sizeof(struct proto_usage_reply) == 16 + 3 * 8 * PROTO_RES_MAX + 16,
	       "proto_usage_reply size");

/* REPORT: take (and remove) up to max records of read-before-write faults
 * of the caller's own process (its SO_PEERCRED pid): faults of its address
 * spaces in report mode, the one its HELLO made and one adopted from a
 * fork. After HELLO only. The records wait in a queue per uid, bounded
 * (docs/report.md); past its bound new records are dropped and counted. */
struct proto_report {
	uint32_t max;      /* 1..PROTO_REPORT_RECS */
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct proto_report) == 8, "proto_report size");

/* A read by the program and one the kernel made in its system call (e.g.
 * write(2) out of the page) are the same record: the fault does not say
 * which (docs/report.md, "Precision"). */
struct proto_report_rec {
	uint64_t addr;     /* the page read */
	uint64_t ns;       /* CLOCK_MONOTONIC when the daemon filled it */
	int32_t tid;       /* the reading thread, as the kernel named it (THREAD_ID) */
	uint32_t reserved; /* zero (the record's alignment) */
};
_Static_assert(sizeof(struct proto_report_rec) == 24, "proto_report_rec size");

#define PROTO_REPORT_RECS 169u
struct proto_report_reply {
	int32_t status;
	uint32_t count; /* records below */
	uint32_t more;  /* 1: records of this process are still queued */
	uint32_t reserved;
	uint64_t dropped; /* records of this uid dropped so far: its queue was full */
	struct proto_report_rec rec[PROTO_REPORT_RECS];
};
_Static_assert(sizeof(struct proto_report_reply) == 24 + 24 * PROTO_REPORT_RECS &&
		       sizeof(struct proto_report_reply) <= PROTO_PAGE_SIZE,
	       "proto_report_reply size");

struct proto_reply {
	int32_t status; /* 0 or -errno */
	uint32_t id;    /* TEMPLATE_*: the template id; HELLO: PROTO_VERSION; UPGRADE: new pid */
	uint64_t value; /* HELLO: uffd features granted; else zero */
};
_Static_assert(sizeof(struct proto_reply) == 16, "proto_reply size");

/* STATS counters, by index. Append only: old clients read a prefix.
 * Root and the daemon's own uid are shown the daemon's; any other uid its
 * own uid's share only (the gauges and every count of its own work):
 * nothing in STATS tells one uid about another's. */
enum proto_stat {
	PROTO_STAT_CLIENTS,        /* connected sessions */
	PROTO_STAT_PROCESSES,      /* live address spaces served (incl. fork children) */
	PROTO_STAT_RANGES,         /* registered ranges */
	PROTO_STAT_BYTES,          /* registered bytes */
	PROTO_STAT_TEMPLATES,      /* distinct template pages stored */
	PROTO_STAT_FAULTS,         /* page faults answered */
	PROTO_STAT_PAGES_COPIED,   /* pages filled with UFFDIO_COPY */
	PROTO_STAT_PAGES_ZERO,     /* pages filled with UFFDIO_ZEROPAGE */
	PROTO_STAT_UNKNOWN_FAULTS, /* faults outside any known range (zero filled) */
	PROTO_STAT_ERR_EEXIST,     /* uffd ioctl errors by class */
	PROTO_STAT_ERR_EAGAIN,
	PROTO_STAT_ERR_ENOENT,
	PROTO_STAT_ERR_ESRCH,
	PROTO_STAT_ERR_ENOMEM,
	PROTO_STAT_ERR_OTHER,
	PROTO_STAT_EV_FORK, /* uffd events handled */
	PROTO_STAT_EV_REMAP,
	PROTO_STAT_EV_UNMAP,
	PROTO_STAT_REPORT_READS,      /* read-before-write faults recorded (report mode; the
				     * slot of a counter never used before) */
	PROTO_STAT_PROCS_RECLAIMED,   /* fork children found dead and released */
	PROTO_STAT_CLIENTS_CLOSED,    /* sessions closed for bad input */
	PROTO_STAT_UNTRACKED,         /* fork children past the limit, served untracked */
	PROTO_STAT_FAULTS_COALESCED,  /* faults answered by an earlier fill of their batch */
	PROTO_STAT_BATCH_WAKES,       /* UFFDIO_WAKEs of filled spans (--dontwake) */
	PROTO_STAT_MAPS_WAITED,       /* MAPs held back for an unmap/mremap event in flight */
	PROTO_STAT_MAPS_WAIT_EXPIRED, /* of those, MAPs that went ahead at the wait's cap */
	PROTO_STAT_REFUSED,           /* requests, fork children and fills refused: a budget */
	PROTO_STAT_RELEASED,          /* address spaces let go (the fallback: zeros) for a budget
				     * or a fill the kernel kept refusing */
	PROTO_STAT_LOG_SUPPRESSED,    /* log lines dropped by a uid's rate limit */
	PROTO_STAT_LOOP_US,           /* main-loop time spent on requests, microseconds */
	PROTO_STAT_DENIED_SYSCALLS,   /* system calls the sandbox refused (daemon-wide only) */
	PROTO_STAT_EVENTS_REORDERED,  /* late unmap/mremap events applied before events read
				      * earlier (their changes came first) */
	PROTO_STAT_COUNT
};
#define PROTO_STATS_MAX 32u
_Static_assert(PROTO_STAT_COUNT <= PROTO_STATS_MAX, "too many stats");

struct proto_stats_reply {
	int32_t status;
	uint32_t count; /* valid entries in counters */
	uint64_t counters[PROTO_STATS_MAX];
};
_Static_assert(sizeof(struct proto_stats_reply) == 8 + 8 * PROTO_STATS_MAX,
	       "proto_stats_reply size");

/* Why a packet was rejected. */
enum proto_err {
	PROTO_OK = 0,
	PROTO_ESHORT,         /* shorter than a header, or than hdr.len says */
	PROTO_ELONG,          /* longer than hdr.len says, or than PROTO_MAX_MSG */
	PROTO_EVERSION,       /* header version is not PROTO_VERSION */
	PROTO_ETYPE,          /* unknown type, or a reply where a request belongs */
	PROTO_ELEN,           /* hdr.len is not the type's payload length */
	PROTO_EFLAGS,         /* reserved header flags set */
	PROTO_ERESERVED,      /* reserved payload field or flag set */
	PROTO_EFD_MISSING,    /* HELLO without a file descriptor */
	PROTO_EFD_UNEXPECTED, /* a file descriptor on a message that takes none */
	PROTO_EFD_MANY,       /* more than one file descriptor */
	PROTO_ETRUNC,         /* MSG_TRUNC or MSG_CTRUNC: data or fds were lost */
	PROTO_ERR_COUNT
};

const char *proto_err_str(enum proto_err e);
const char *proto_type_name(uint16_t type);
/* Name of STATS counter s (snake_case), "?" when unknown. */
const char *proto_stat_name(unsigned s);
/* Name of USAGE resource r (snake_case), "?" when unknown. */
const char *proto_res_name(unsigned r);

/* Exact payload length of a type, or -1 for an unknown type. */
long proto_payload_len(uint16_t type);

/* Validate a received packet of n bytes that came with nfds descriptors
 * (nfds > 1 means "more than one"). For requests (want_request) also checks
 * reserved payload fields. On success *hdr points into buf. */
enum proto_err proto_check(const void *buf, size_t n, int nfds, int want_request,
			   const struct proto_hdr **hdr);

/* Build header + payload into out (PROTO_MAX_MSG bytes). Returns the
 * packet length. */
size_t proto_build(void *out, uint16_t type, uint32_t seq, const void *payload, uint32_t len);

/* The most descriptors one proto_sendmsg_fds passes (the kernel's
 * SCM_MAX_FD). */
#define PROTO_SEND_FDS_MAX 253u

struct iovec;

/* sendmsg of iov with nfds descriptors attached as SCM_RIGHTS (at most
 * PROTO_SEND_FDS_MAX), retried on EINTR; the bytes sent, or -errno.
 * MSG_NOSIGNAL is added: a dead peer gives -EPIPE, never SIGPIPE. The one
 * place that builds SCM_RIGHTS control data (the daemon, the library, the
 * handover and the tests all go through it). */
long proto_sendmsg_fds(int sock, const struct iovec *iov, int niov, const int *fds, unsigned nfds,
		       int flags);

/* sendmsg one packet, with fd >= 0 attached as SCM_RIGHTS. 0 or -errno.
 * MSG_NOSIGNAL: a dead peer gives -EPIPE, never SIGPIPE. */
int proto_send(int sock, uint16_t type, uint32_t seq, const void *payload, uint32_t len, int fd,
	       int flags);

/* The most descriptors one message can carry (the kernel's SCM_MAX_FD):
 * with room for all of them the kernel never drops one itself. (Were it
 * to, the last close of a dropped userfaultfd would run in the receiving
 * thread, and take its owner's mmap_lock there.) */
#define PROTO_RECV_FDS_MAX 253u

/* recvmsg one packet into buf (PROTO_MAX_MSG bytes). Returns its length
 * (0 on orderly shutdown) or -errno. fds (room for PROTO_RECV_FDS_MAX)
 * gets every descriptor received, close-on-exec, and *nfds their number;
 * the caller closes them. *truncated is set when MSG_TRUNC or MSG_CTRUNC
 * was reported. */
long proto_recv_fds(int sock, void *buf, int *fds, int *nfds, int *truncated, int flags);
/* The same, keeping the first descriptor in *fd (-1: none) and closing
 * the others (*nfds still counts them). */
long proto_recv(int sock, void *buf, int *fd, int *nfds, int *truncated, int flags);

/* Connect a SOCK_SEQPACKET socket (close-on-exec) to path. The fd or
 * -errno (-ENAMETOOLONG for a path that does not fit). */
int proto_dial(const char *path);

/* An unconfigured userfaultfd for the calling process (O_CLOEXEC |
 * O_NONBLOCK): /dev/userfaultfd, else userfaultfd(2), else
 * userfaultfd(UFFD_USER_MODE_ONLY), which unprivileged processes get when
 * vm.unprivileged_userfaultfd is 0. The fd or -errno; *user_mode_only
 * (may be NULL) says whether the last fallback was taken. */
int proto_uffd_create(int *user_mode_only);

#endif
