/* refpaged wire protocol: encoding, validation, and fd-passing I/O. */
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

static const char *const err_str[PROTO_ERR_COUNT] = {
	[PROTO_OK] = "ok",
	[PROTO_ESHORT] = "short message",
	[PROTO_ELONG] = "oversized message",
	[PROTO_EVERSION] = "protocol version mismatch",
	[PROTO_ETYPE] = "unknown message type",
	[PROTO_ELEN] = "wrong payload length for type",
	[PROTO_EFLAGS] = "reserved header flags set",
	[PROTO_ERESERVED] = "reserved payload field set",
	[PROTO_EFD_MISSING] = "HELLO without a file descriptor",
	[PROTO_EFD_UNEXPECTED] = "file descriptor on a message that takes none",
	[PROTO_EFD_MANY] = "more than one file descriptor",
	[PROTO_ETRUNC] = "truncated message or control data",
};

const char *proto_err_str(enum proto_err e)
{
	if ((unsigned)e >= PROTO_ERR_COUNT)
		return "unknown error";
	return err_str[e];
}

const char *proto_type_name(uint16_t type)
{
	switch (type) {
	case PROTO_HELLO:
		return "HELLO";
	case PROTO_TEMPLATE_FILL:
		return "TEMPLATE_FILL";
	case PROTO_TEMPLATE_CREATE:
		return "TEMPLATE_CREATE";
	case PROTO_TEMPLATE_RELEASE:
		return "TEMPLATE_RELEASE";
	case PROTO_MAP:
		return "MAP";
	case PROTO_UNMAP:
		return "UNMAP";
	case PROTO_STATS:
		return "STATS";
	case PROTO_UPGRADE:
		return "UPGRADE";
	case PROTO_USAGE:
		return "USAGE";
	case PROTO_REPORT:
		return "REPORT";
	case PROTO_REPLY:
		return "REPLY";
	case PROTO_STATS_REPLY:
		return "STATS_REPLY";
	case PROTO_USAGE_REPLY:
		return "USAGE_REPLY";
	case PROTO_REPORT_REPLY:
		return "REPORT_REPLY";
	default:
		return "?";
	}
}

const char *proto_stat_name(unsigned s)
{
	static const char *const names[PROTO_STAT_COUNT] = {
		[PROTO_STAT_CLIENTS] = "clients",
		[PROTO_STAT_PROCESSES] = "processes",
		[PROTO_STAT_RANGES] = "ranges",
		[PROTO_STAT_BYTES] = "bytes_registered",
		[PROTO_STAT_TEMPLATES] = "templates",
		[PROTO_STAT_FAULTS] = "faults",
		[PROTO_STAT_PAGES_COPIED] = "pages_copied",
		[PROTO_STAT_PAGES_ZERO] = "pages_zero",
		[PROTO_STAT_UNKNOWN_FAULTS] = "unknown_faults",
		[PROTO_STAT_ERR_EEXIST] = "err_eexist",
		[PROTO_STAT_ERR_EAGAIN] = "err_eagain",
		[PROTO_STAT_ERR_ENOENT] = "err_enoent",
		[PROTO_STAT_ERR_ESRCH] = "err_esrch",
		[PROTO_STAT_ERR_ENOMEM] = "err_enomem",
		[PROTO_STAT_ERR_OTHER] = "err_other",
		[PROTO_STAT_EV_FORK] = "ev_fork",
		[PROTO_STAT_EV_REMAP] = "ev_remap",
		[PROTO_STAT_EV_UNMAP] = "ev_unmap",
		[PROTO_STAT_REPORT_READS] = "report_reads",
		[PROTO_STAT_PROCS_RECLAIMED] = "processes_reclaimed",
		[PROTO_STAT_CLIENTS_CLOSED] = "clients_closed_bad_input",
		[PROTO_STAT_UNTRACKED] = "forks_untracked",
		[PROTO_STAT_FAULTS_COALESCED] = "faults_coalesced",
		[PROTO_STAT_BATCH_WAKES] = "batch_wakes",
		[PROTO_STAT_MAPS_WAITED] = "maps_waited",
		[PROTO_STAT_MAPS_WAIT_EXPIRED] = "maps_wait_expired",
		[PROTO_STAT_REFUSED] = "refused_budget",
		[PROTO_STAT_RELEASED] = "processes_released",
		[PROTO_STAT_LOG_SUPPRESSED] = "log_suppressed",
		[PROTO_STAT_LOOP_US] = "loop_us",
		[PROTO_STAT_DENIED_SYSCALLS] = "denied_syscalls",
		[PROTO_STAT_EVENTS_REORDERED] = "events_reordered",
	};
	return s < PROTO_STAT_COUNT ? names[s] : "?";
}

const char *proto_res_name(unsigned r)
{
	static const char *const names[PROTO_RES_COUNT] = {
		[PROTO_RES_CONNECTIONS] = "connections", [PROTO_RES_TEMPLATES] = "templates",
		[PROTO_RES_RANGES] = "ranges",           [PROTO_RES_BYTES] = "bytes_registered",
		[PROTO_RES_PROCESSES] = "processes",     [PROTO_RES_FDS] = "descriptors",
		[PROTO_RES_MEMORY] = "memory_bytes",
	};
	return r < PROTO_RES_COUNT ? names[r] : "?";
}

long proto_payload_len(uint16_t type)
{
	switch (type) {
	case PROTO_HELLO:
		return sizeof(struct proto_hello);
	case PROTO_TEMPLATE_FILL:
		return sizeof(struct proto_template_fill);
	case PROTO_TEMPLATE_CREATE:
		return sizeof(struct proto_template_create);
	case PROTO_TEMPLATE_RELEASE:
		return sizeof(struct proto_template_release);
	case PROTO_MAP:
		return sizeof(struct proto_map);
	case PROTO_UNMAP:
		return sizeof(struct proto_unmap);
	case PROTO_STATS:
		return 0;
	case PROTO_UPGRADE:
		return sizeof(struct proto_upgrade);
	case PROTO_USAGE:
		return sizeof(struct proto_usage);
	case PROTO_REPORT:
		return sizeof(struct proto_report);
	case PROTO_REPLY:
		return sizeof(struct proto_reply);
	case PROTO_STATS_REPLY:
		return sizeof(struct proto_stats_reply);
	case PROTO_USAGE_REPLY:
		return sizeof(struct proto_usage_reply);
	case PROTO_REPORT_REPLY:
		return sizeof(struct proto_report_reply);
	default:
		return -1;
	}
}

static int is_request(uint16_t type)
{
	return type >= PROTO_HELLO && type <= PROTO_REPORT;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Reserved payload fields of requests must be zero, so that a later
 * version can give them meaning without old daemons misreading them. */
static enum proto_err check_reserved(uint16_t type, const void *payload)
{
	switch (type) {
	case PROTO_HELLO: {
		const struct proto_hello *h = payload;
		if (h->reserved || (h->flags & ~PROTO_HELLO_FLAGS_ALL))
			return PROTO_ERESERVED;
		return PROTO_OK;
	}
	case PROTO_TEMPLATE_FILL: {
		const struct proto_template_fill *f = payload;
		return all_zero(f->reserved, sizeof(f->reserved)) ? PROTO_OK : PROTO_ERESERVED;
	}
	case PROTO_TEMPLATE_RELEASE: {
		const struct proto_template_release *r = payload;
		return r->reserved ? PROTO_ERESERVED : PROTO_OK;
	}
	case PROTO_MAP: {
		const struct proto_map *m = payload;
		return m->flags ? PROTO_ERESERVED : PROTO_OK;
	}
	case PROTO_UPGRADE: {
		const struct proto_upgrade *u = payload;
		return u->flags || u->reserved ? PROTO_ERESERVED : PROTO_OK;
	}
	case PROTO_USAGE: {
		const struct proto_usage *u = payload;
		return u->flags & ~PROTO_USAGE_FLAGS_ALL ? PROTO_ERESERVED : PROTO_OK;
	}
	case PROTO_REPORT: {
		const struct proto_report *r = payload;
		return r->reserved ? PROTO_ERESERVED : PROTO_OK;
	}
	default:
		return PROTO_OK;
	}
}

static enum proto_err check_fds(uint16_t type, int nfds)
{
	if (nfds > 1)
		return PROTO_EFD_MANY;
	if (type == PROTO_HELLO && nfds == 0)
		return PROTO_EFD_MISSING;
	if (type != PROTO_HELLO && nfds != 0)
		return PROTO_EFD_UNEXPECTED;
	return PROTO_OK;
}

enum proto_err proto_check(const void *buf, size_t n, int nfds, int want_request,
			   const struct proto_hdr **hdr)
{
	struct proto_hdr h;

	if (n < sizeof(h))
		return PROTO_ESHORT;
	if (n > PROTO_MAX_MSG)
		return PROTO_ELONG;
	memcpy(&h, buf, sizeof(h));
	if (h.version != PROTO_VERSION)
		return PROTO_EVERSION;
	long want = proto_payload_len(h.type);
	if (want < 0 || (want_request && !is_request(h.type)) ||
	    (!want_request && is_request(h.type)))
		return PROTO_ETYPE;
	if (h.len != (uint32_t)want)
		return PROTO_ELEN;
	if (n < sizeof(h) + h.len)
		return PROTO_ESHORT;
	if (n > sizeof(h) + h.len)
		return PROTO_ELONG;
	if (h.flags)
		return PROTO_EFLAGS;
	if (want_request) {
		enum proto_err e = check_fds(h.type, nfds);
		if (e != PROTO_OK)
			return e;
		e = check_reserved(h.type, (const uint8_t *)buf + sizeof(h));
		if (e != PROTO_OK)
			return e;
	} else if (nfds) {
		return PROTO_EFD_UNEXPECTED;
	}
	*hdr = buf;
	return PROTO_OK;
}

size_t proto_build(void *out, uint16_t type, uint32_t seq, const void *payload, uint32_t len)
{
	struct proto_hdr h = {
		.version = PROTO_VERSION,
		.type = type,
		.len = len,
		.seq = seq,
		.flags = 0,
	};
	memcpy(out, &h, sizeof(h));
	if (len)
		memcpy((uint8_t *)out + sizeof(h), payload, len);
	return sizeof(h) + len;
}

long proto_sendmsg_fds(int sock, const struct iovec *iov, int niov, const int *fds, unsigned nfds,
		       int flags)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(PROTO_SEND_FDS_MAX * sizeof(int))];
	} cm;
	struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)niov };
	ssize_t r;

	if (nfds > PROTO_SEND_FDS_MAX)
		return -EINVAL;
	if (nfds) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	while ((r = sendmsg(sock, &mh, flags | MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	return r < 0 ? -errno : (long)r;
}

int proto_send(int sock, uint16_t type, uint32_t seq, const void *payload, uint32_t len, int fd,
	       int flags)
{
	struct proto_hdr h = {
		.version = PROTO_VERSION,
		.type = type,
		.len = len,
		.seq = seq,
		.flags = 0,
	};
	struct iovec iov[2] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)payload, .iov_len = len },
	};

	if (len > PROTO_MAX_MSG - sizeof(h))
		return -EMSGSIZE;
	long r = proto_sendmsg_fds(sock, iov, len ? 2 : 1, &fd, fd >= 0, flags);
	if (r < 0)
		return (int)r;
	return (size_t)r == sizeof(h) + len ? 0 : -EMSGSIZE;
}

static void take_fds(struct msghdr *mh, int *fds, int *nfds)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n && *nfds < (int)PROTO_RECV_FDS_MAX; i++)
			memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
	}
}

long proto_recv_fds(int sock, void *buf, int *fds, int *nfds, int *truncated, int flags)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(PROTO_RECV_FDS_MAX * sizeof(int))];
	} cm;
	struct iovec iov = { .iov_base = buf, .iov_len = PROTO_MAX_MSG };
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = cm.buf,
		.msg_controllen = sizeof(cm.buf),
	};
	ssize_t r;

	*nfds = 0;
	*truncated = 0;
	do
		r = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	take_fds(&mh, fds, nfds);
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		*truncated = 1;
	return r;
}

long proto_recv(int sock, void *buf, int *fd, int *nfds, int *truncated, int flags)
{
	int fds[PROTO_RECV_FDS_MAX];
	long r = proto_recv_fds(sock, buf, fds, nfds, truncated, flags);

	*fd = r >= 0 && *nfds ? fds[0] : -1;
	for (int i = 1; r >= 0 && i < *nfds; i++)
		close(fds[i]);
	return r;
}

int proto_dial(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(s);
		return e;
	}
	return s;
}

int proto_uffd_create(int *user_mode_only)
{
	int flags = O_CLOEXEC | O_NONBLOCK;
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int umo = 0, fd = -1;

	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
		close(dev);
	}
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, flags);
	if (fd < 0) {
		fd = (int)syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
		umo = fd >= 0;
	}
	if (user_mode_only)
		*user_mode_only = umo;
	return fd >= 0 ? fd : -errno;
}
