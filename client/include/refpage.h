/* librefpage: reference-page mappings served by refpaged.
 *
 * A refpage mapping behaves like mmap(MAP_PRIVATE|MAP_ANONYMOUS) except that
 * a page never written reads as its template page instead of zeros; the
 * first write makes a private copy. MADV_DONTNEED brings the template back;
 * munmap and mremap keep working; fork children see their parent's pages as
 * with ordinary private memory and the template elsewhere.
 *
 * The library never calls malloc and may be called from inside an
 * allocator. An rp_client may be used from many threads at once. After
 * fork() the child transparently gets its own connection on first use.
 *
 * Two backends serve the mappings; each process gets one (rp_backend):
 *   uffd  refpaged resolves the faults through a userfaultfd the process
 *         hands it; needs a daemon and a full userfaultfd (root,
 *         vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd).
 *   file  the kernel resolves them itself from a file of this process
 *         holding the template repeated (a sealed memfd of 4 MiB a
 *         template, filled at its first use), mapped MAP_PRIVATE: needs no
 *         daemon and no privilege, and untouched pages are read with no
 *         copy at all. A mapping is one VMA per 4 MiB: plain mremap may
 *         move or grow a mapping of one VMA up to 4 MiB; past that use
 *         rp_remap (mremap refuses to move several VMAs on most kernels,
 *         and a VMA grown past the file's end raises SIGBUS there).
 * Where the process can only make a user-mode-only userfaultfd (Debian's
 * default for users), the uffd backend would make every system call on an
 * untouched page fail with EFAULT: such a process gets the file backend.
 *
 * If refpaged goes away, uffd mappings keep working as ordinary anonymous
 * memory (untouched pages read zero); calls on the client then fail with
 * -ENOTCONN and rp_alive() reports it. File mappings do not depend on it. */
#ifndef REFPAGE_H
#define REFPAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rp_client rp_client;

/* socket_path NULL: $REFPAGED_SOCKET, else /run/refpaged/refpaged.sock.
 * Chooses the backend (file unless a full userfaultfd can be made).
 * Returns 0 or -errno; on the uffd backend: -ENOENT/-ECONNREFUSED when no
 * daemon listens, -EPROTO on a protocol version mismatch, -EDQUOT/-EMFILE
 * past the daemon's limits. */
int rp_connect(const char *socket_path, rp_client **out);
void rp_disconnect(rp_client *c);

/* rp_connect with flags:
 *   RP_CONNECT_REPORT  report mode: the daemon records every read of a
 *     page of this connection's mappings that was never written (a read
 *     fault on a missing page), for rp_report_read. It also fills faults
 *     one page at a time (no fault-around), so reads are never hidden by a
 *     page filled ahead. Fork children keep it. -EOPNOTSUPP from a daemon
 *     that does not know it. */
#define RP_CONNECT_REPORT 0x1u
/*   RP_CONNECT_FILE  the file backend even where a full userfaultfd could
 *     be made (not with RP_CONNECT_REPORT or RP_CONNECT_UFFD: -EINVAL).
 *   RP_CONNECT_UFFD  the uffd backend even with a user-mode-only
 *     userfaultfd (then read(2) into an untouched page fails with EFAULT;
 *     the daemon sees every fault). -EPERM when no userfaultfd at all.
 *     RP_CONNECT_REPORT implies it: report mode needs the daemon to see
 *     the faults. */
#define RP_CONNECT_FILE 0x2u
#define RP_CONNECT_UFFD 0x4u
int rp_connect_opts(const char *socket_path, unsigned flags, rp_client **out);

enum rp_backend_kind { RP_BACKEND_UFFD = 1, RP_BACKEND_FILE = 2 };
/* The backend serving this process's new mappings (a fork child chooses
 * again: one that gave up a privilege may get another), or -errno. It
 * never connects to the daemon. Library users that want refpages without
 * a daemon retry a failed rp_connect with RP_CONNECT_FILE. On the file
 * backend MADV_FREE and MADV_WIPEONFORK fail with EINVAL (use
 * MADV_DONTNEED), and each mapping is a VMA of its own at least. */
int rp_backend(rp_client *c);
/* "uffd", "file", or "?". */
const char *rp_backend_name(int backend);

/* One read-before-write page (report mode). A read the kernel made in a
 * system call of the thread (e.g. write(2) out of the page) is one too, not
 * told apart from the thread's own loads. */
struct rp_report_rec {
	void *addr;  /* the page read: the caller maps it to its mapping and offset */
	uint64_t ns; /* CLOCK_MONOTONIC when the daemon saw it (order it against
		      * the caller's own map/unmap times to tell reused addresses) */
	int32_t tid; /* the reading thread */
};

/* Take up to max records of this process's read-before-write pages,
 * oldest first (each is returned once). Returns how many (0: none left
 * now), or -errno (-EOPNOTSUPP: not a report-mode connection). *dropped
 * (may be NULL): records of this uid the daemon dropped so far because its
 * bounded queue was full. In a fork child: the child's own records. */
int rp_report_read(rp_client *c, struct rp_report_rec *out, int max, uint64_t *dropped);

/* Templates: one page each, identified by a per-connection id. */
int rp_template_fill(rp_client *c, uint8_t byte, uint32_t *id);
int rp_template_create(rp_client *c, const void *page, uint32_t *id);
int rp_template_release(rp_client *c, uint32_t id);

/* Like mmap(addr, len, prot, flags|MAP_PRIVATE|MAP_ANONYMOUS): missing pages
 * read as template id. MAP_FAILED and errno on error (EINVAL for
 * MAP_SHARED, a file-backed or MAP_HUGETLB request, or an unknown id). */
void *rp_map(rp_client *c, void *addr, size_t len, int prot, int flags, uint32_t id);
/* Unmap (all or part of) a refpage mapping. 0 or -errno. */
int rp_unmap(rp_client *c, void *addr, size_t len);
/* mremap(old, old_len, new_len, flags, new_addr) for a refpage mapping of
 * template id, on any backend (flags: MREMAP_MAYMOVE, MREMAP_FIXED): a
 * grown part reads as the template. On the file backend a mapping is many
 * VMAs, which plain mremap cannot move or grow; there the grown part gets
 * protection prot and none of the old part's flags (the kernel's mremap
 * would copy them; this library cannot ask the kernel for them), and a
 * failed move leaves the mapping where it was. On the uffd backend it is
 * the kernel's mremap (no daemon needed). MAP_FAILED and errno. */
void *rp_remap(rp_client *c, void *old, size_t old_len, size_t new_len, int flags, int prot,
	       uint32_t id, void *new_addr);

/* Drop-in for the kernel patch's
 *   mmap(addr, len, prot, flags | MAP_REFPAGE, -1, (off_t)refpage):
 * uses a process-wide default connection (rp_connect(NULL)); the page's
 * contents are taken at the call. */
void *refpage_mmap(void *addr, size_t len, int prot, int flags, const void *refpage);

/* 1 while the daemon connection is up, 0 once it is lost (the daemon died or
 * closed us): from then on refpage mappings read zeros where untouched.
 * Always 1 on the file backend. */
int rp_alive(rp_client *c);

/* What an error of this library means, in words for a user: err is a
 * -errno (or errno) any rp_* call returned; EDQUOT (a budget of the
 * caller's uid is used up), EMFILE (a connection refused) and ENOTCONN (the
 * daemon went away) say what refpaged did. Never NULL. */
const char *rp_strerror(int err);

/* Daemon counters (see refpagectl stats). names[i] describes values[i].
 * Fills at most max entries; returns the number filled or -errno
 * (-EOPNOTSUPP on the file backend: no daemon serves it). */
int rp_stats(rp_client *c, uint64_t *values, const char **names, int max);

#ifdef __cplusplus
}
#endif
#endif
