/* Shared helpers of the kernel-fact experiments (see README.md). Each
 * program prints what it observed; none is part of ctest. The ctest
 * counterpart of setuid_child.c, tests/tenant/fork_gate.c, uses them too. */
#ifndef KF_H
#define KF_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static inline double kf_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A uffd of the calling process; user_mode_only asks for
 * UFFD_USER_MODE_ONLY. features go to UFFDIO_API; -1 on failure. */
static inline int kf_uffd(int user_mode_only, uint64_t features)
{
	int fd = (int)syscall(SYS_userfaultfd,
			      O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
	if (fd < 0)
		return -1;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* fd is a userfaultfd (by its /proc/self/fd link). */
static inline int kf_is_uffd(int fd)
{
	char path[64], link[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return 0;
	link[n] = '\0';
	return !strcmp(link, "anon_inode:[userfaultfd]");
}

/* errno of an ioctl, 0 for success */
static inline int kf_ioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg) < 0 ? errno : 0;
}

static inline int kf_register(int fd, uint64_t start, uint64_t len, uint64_t mode)
{
	struct uffdio_register r = { .range = { .start = start, .len = len }, .mode = mode };
	return kf_ioctl(fd, UFFDIO_REGISTER, &r);
}

static inline int kf_unregister(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return kf_ioctl(fd, UFFDIO_UNREGISTER, &r);
}

static inline int kf_wake(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return kf_ioctl(fd, UFFDIO_WAKE, &r);
}

static inline int kf_copy(int fd, uint64_t dst, const void *src, uint64_t len)
{
	struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len };
	return kf_ioctl(fd, UFFDIO_COPY, &c);
}

static inline int kf_zeropage(int fd, uint64_t dst, uint64_t len)
{
	struct uffdio_zeropage z = { .range = { .start = dst, .len = len } };
	return kf_ioctl(fd, UFFDIO_ZEROPAGE, &z);
}

static inline int kf_wp(int fd, uint64_t start, uint64_t len, uint64_t mode)
{
	struct uffdio_writeprotect w = { .range = { .start = start, .len = len }, .mode = mode };
	return kf_ioctl(fd, UFFDIO_WRITEPROTECT, &w);
}

static inline const char *kf_err(int e)
{
	static char buf[8][32];
	static int i;
	const char *n;
	switch (e) {
	case 0:
		n = "0";
		break;
	case EAGAIN:
		n = "EAGAIN";
		break;
	case ENOENT:
		n = "ENOENT";
		break;
	case EINVAL:
		n = "EINVAL";
		break;
	case ESRCH:
		n = "ESRCH";
		break;
	case ENOMEM:
		n = "ENOMEM";
		break;
	case EEXIST:
		n = "EEXIST";
		break;
	case EPERM:
		n = "EPERM";
		break;
	case EFAULT:
		n = "EFAULT";
		break;
	case EBUSY:
		n = "EBUSY";
		break;
	case EMFILE:
		n = "EMFILE";
		break;
	default:
		i = (i + 1) % 8;
		snprintf(buf[i], sizeof(buf[i]), "errno %d", e);
		return buf[i];
	}
	return n;
}

static inline int kf_send_fd(int sock, int fd)
{
	char b = 'F';
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	union {
		struct cmsghdr a;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	memset(&cm, 0, sizeof(cm));
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static inline int kf_recv_fd(int sock)
{
	char b;
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	union {
		struct cmsghdr a;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	int fd = -1;
	if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

#endif
