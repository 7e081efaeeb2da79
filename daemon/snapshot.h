/* The state snapshot: what a restarted refpaged needs to go on serving the
 * clients whose descriptors it gets back (from the systemd fd store, or
 * from the previous daemon on an upgrade). This file is the format alone:
 * layout, encoding, checksums, reading and crash-safe writing. What goes
 * in is decided by daemon/persist.c, what comes out is used by
 * daemon/restore.c.
 *
 * The snapshot lives in one memfd, sparse:
 *
 *   [0, 104)                 file header: magic, version, two slot descriptors
 *   counters_off             the STATS counters, live: the daemon's own
 *                            (MAP_SHARED), so they survive even a SIGKILL
 *   tmpl_off + i * 4096      template page i, written once while in use
 *   SNAP_SLOT_OFF(0), (1)    two slots, each able to hold a body
 *
 * A body (the daemon's state without the template contents) is written
 * into the slot that does not hold the last committed body, then that
 * slot's descriptor (generation, offset, length, CRC32C of the body, and a
 * CRC32C of the descriptor itself) is rewritten in one 32-byte pwrite. A
 * reader takes the valid slot with the highest generation: a writer killed
 * at any point leaves the previous body intact, as the slot being written
 * is never the one it last committed. Template pages carry their own
 * CRC32C in the body that refers to them, and a page is reused only once
 * no committed body refers to it any more (snap_page_alloc).
 *
 * Fixed-width fields, host byte order (both writer and reader run on the
 * same machine), no padding, every record a multiple of 8 bytes. The
 * version at offset 8 is checked before anything else is trusted: a reader
 * refuses a version it does not know (SNAP_EVERSION) rather than guess. */
#ifndef REFPAGED_SNAPSHOT_H
#define REFPAGED_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#define SNAP_VERSION 1u
#define SNAP_MAGIC "RPSNAP\n\0"
#define SNAP_BODY_MAGIC 0x42535052u /* "RPSB" */
#define SNAP_PAGE 4096u
#define SNAP_COUNTERS_OFF ((uint64_t)SNAP_PAGE)
#define SNAP_TMPL_OFF (2 * (uint64_t)SNAP_PAGE)
/* Template pages below the slots: 2^26 of them, four times the largest
 * --max-store. */
#define SNAP_SLOT_OFF(i) ((1ull << 38) + (uint64_t)(i) * (1ull << 37))
#define SNAP_MAX_PAGES ((SNAP_SLOT_OFF(0) - SNAP_TMPL_OFF) / SNAP_PAGE)
/* Largest body either side accepts: far beyond any real state. */
#define SNAP_BODY_MAX (1ull << 30)
#define SNAP_MAX_STATS 64u

struct snap_slot {
	uint64_t gen;      /* 0: never written */
	uint64_t off;      /* of the body in the file */
	uint64_t len;      /* body bytes */
	uint32_t body_crc; /* CRC32C of the body */
	uint32_t crc;      /* CRC32C of the 28 bytes above */
};
_Static_assert(sizeof(struct snap_slot) == 32, "snap_slot size");

struct snap_file_hdr {
	uint8_t magic[8];      /* SNAP_MAGIC */
	uint32_t version;      /* of the layout and the body encoding */
	uint32_t page_size;    /* SNAP_PAGE */
	uint64_t tmpl_off;     /* template page i is at tmpl_off + i * page_size */
	uint64_t counters_off; /* struct snap_counters */
	uint32_t reserved;     /* zero */
	uint32_t crc;          /* CRC32C of the 36 bytes above */
	struct snap_slot slot[2];
};
_Static_assert(sizeof(struct snap_file_hdr) == 104, "snap_file_hdr size");

#define SNAP_COUNTERS_MAGIC 0x43535052u /* "RPSC" */

/* Counters are updated in place, one aligned 8-byte store at a time:
 * no checksum, a reader checks magic and count. A body has a copy of
 * them too, for when this page is unusable. */
struct snap_counters {
	uint32_t magic; /* SNAP_COUNTERS_MAGIC */
	uint32_t count; /* valid entries in v, <= SNAP_MAX_STATS */
	uint64_t v[64]; /* enum proto_stat order */
};
_Static_assert(sizeof(struct snap_counters) <= SNAP_PAGE, "snap_counters size");

/* --- body records, in this order after struct snap_body ---------------- */

struct snap_body {
	uint32_t magic;        /* SNAP_BODY_MAGIC */
	uint32_t nstats;       /* uint64_t counters (enum proto_stat order) */
	uint32_t ntmpls;       /* struct snap_tmpl */
	uint32_t nsessions;    /* struct snap_session, each followed by its handles */
	uint32_t nmms;         /* struct snap_mm, each followed by its ranges */
	uint32_t nuids;        /* struct snap_uid */
	uint32_t next_session; /* the next ids to hand out */
	uint32_t next_mm;
	uint32_t next_tree;
	uint32_t reserved;
};
_Static_assert(sizeof(struct snap_body) == 40, "snap_body size");

/* A template: its page in the file and that page's CRC32C. Records refer
 * to templates by their position in this table. */
struct snap_tmpl {
	uint32_t page;
	uint32_t crc;
};
_Static_assert(sizeof(struct snap_tmpl) == 8, "snap_tmpl size");

/* The session's last reply is kept so that a request still queued on its
 * socket (it is consumed only after the reply, see session.c) is answered
 * again rather than done twice. */
#define SNAP_SESSION_REPLIED 0x1u

/* A connection; its socket is the fd named "c<id>". */
struct snap_session {
	uint32_t id;
	int32_t pid;          /* SO_PEERCRED at accept */
	uint32_t uid;
	uint32_t gid;
	uint32_t mm;          /* the client's own address space, 0 before HELLO */
	uint32_t nhandles;    /* struct snap_handle that follow: handle id i+1 */
	uint32_t last_seq;
	uint32_t last_id;
	int32_t last_status;
	uint32_t flags;       /* SNAP_SESSION_* */
	uint64_t last_value;
};
_Static_assert(sizeof(struct snap_session) == 48, "snap_session size");

#define SNAP_NO_TMPL UINT32_MAX

struct snap_handle {
	uint32_t tmpl; /* position in the template table, SNAP_NO_TMPL: free slot */
	uint32_t uses;
};
_Static_assert(sizeof(struct snap_handle) == 8, "snap_handle size");

#define SNAP_MM_CHILD 0x1u /* adopted from a fork event */

/* A served address space; its userfaultfd is the fd named "u<id>". */
struct snap_mm {
	uint32_t id;
	int32_t pid;       /* 0: not known yet */
	uint32_t uid;
	uint32_t tree;     /* the fork tree: a client and all its descendants */
	uint64_t features; /* from UFFDIO_API */
	uint32_t flags;    /* SNAP_MM_* */
	uint32_t nranges;  /* struct snap_range that follow, sorted */
};
_Static_assert(sizeof(struct snap_mm) == 32, "snap_mm size");

struct snap_range {
	uint64_t start, end;
	uint32_t tmpl;     /* position in the template table */
	uint32_t reserved;
};
_Static_assert(sizeof(struct snap_range) == 24, "snap_range size");

#define SNAP_ACCT_RES 5u

/* What a uid was charged, as a cross-check: restore charges again what it
 * actually brings back. */
struct snap_uid {
	uint32_t uid;
	uint32_t reserved;
	uint64_t used[SNAP_ACCT_RES]; /* enum acct_res order */
};
_Static_assert(sizeof(struct snap_uid) == 48, "snap_uid size");

/* --- reading --------------------------------------------------------------- */

enum snap_err {
	SNAP_OK = 0,
	SNAP_EIO,       /* read error */
	SNAP_ETRUNC,    /* shorter than the header says */
	SNAP_EMAGIC,    /* not a snapshot */
	SNAP_EVERSION,  /* a version this reader does not know */
	SNAP_ECRC,      /* checksum mismatch */
	SNAP_EFORMAT,   /* checksum right, contents malformed */
	SNAP_EEMPTY,    /* no slot ever written */
	SNAP_ENOMEM,
	SNAP_ERR_COUNT
};

const char *snap_err_str(enum snap_err e);

struct snap_sview {
	const struct snap_session *s;
	const struct snap_handle *h; /* s->nhandles */
};

struct snap_mview {
	const struct snap_mm *m;
	const struct snap_range *r; /* m->nranges */
};

/* A decoded body. Pointers are into body, which the image owns. */
struct snap_image {
	uint32_t version;
	uint64_t tmpl_off, counters_off;
	uint64_t gen;
	int slot;                     /* the slot it came from */
	enum snap_err slot_err[2];    /* why a slot was not used (SNAP_OK: it was, or older) */
	uint8_t *body;
	size_t len;
	const struct snap_body *hdr;
	const uint64_t *stats;        /* hdr->nstats */
	const struct snap_tmpl *tmpls; /* hdr->ntmpls */
	struct snap_sview *sessions;  /* hdr->nsessions */
	struct snap_mview *mms;       /* hdr->nmms */
	const struct snap_uid *uids;  /* hdr->nuids */
};

uint32_t snap_crc32c(uint32_t crc, const void *p, size_t n);

/* Check and decode a body of len bytes (taken over by img on success: it
 * must come from malloc). SNAP_OK or SNAP_EFORMAT. */
enum snap_err snap_decode(struct snap_image *img, uint8_t *body, size_t len);

/* Read the snapshot in fd: the newest valid slot, decoded. SNAP_OK, or why
 * there is none (img->slot_err says why each slot was refused; *version
 * gets the file's version when it is SNAP_EVERSION). */
enum snap_err snap_read(int fd, struct snap_image *img, uint32_t *version);
void snap_image_free(struct snap_image *img);

/* The live counters of the snapshot img was read from: SNAP_OK, or
 * SNAP_ETRUNC, SNAP_EFORMAT (not counters). */
enum snap_err snap_read_counters(int fd, const struct snap_image *img, struct snap_counters *c);

/* Template page t of img into page (SNAP_PAGE bytes): SNAP_OK, SNAP_ETRUNC
 * or SNAP_ECRC. */
enum snap_err snap_read_page(int fd, const struct snap_image *img, uint32_t t, void *page);

/* --- writing ------------------------------------------------------------------ */

/* A growable buffer for building a body. */
struct snap_buf {
	uint8_t *p;
	size_t len, cap;
	int oom;
};

/* n zeroed bytes at the end of the buffer (n a multiple of 8), or NULL
 * (and b->oom set). Earlier pointers may move. */
void *snap_buf_add(struct snap_buf *b, size_t n);
void snap_buf_free(struct snap_buf *b);

struct snap_writer {
	int fd;
	uint32_t version;
	uint64_t gen;           /* of the last commit */
	int last;               /* its slot, -1: none */
	/* Template pages referred to by the last committed body, and by the
	 * body being built: a page in neither is free. */
	uint64_t *pages_committed, *pages_now;
	size_t nwords;
};

/* A fresh snapshot in fd (emptied first), with version in its header
 * (SNAP_VERSION but in tests), and its counters page zeroed. 0 or -errno. */
int snap_writer_init(struct snap_writer *w, int fd, uint32_t version);
/* Go on writing the snapshot img was read from. 0 or -errno. */
int snap_writer_resume(struct snap_writer *w, int fd, const struct snap_image *img);
void snap_writer_fini(struct snap_writer *w);

/* A page that no committed body refers to, marked for the body being
 * built; -ENOSPC or -ENOMEM. */
long snap_page_alloc(struct snap_writer *w);
/* Mark page idx as referred to by the body being built. 0 or -ENOMEM. */
int snap_page_keep(struct snap_writer *w, uint32_t idx);
/* Write a template page. 0 or -errno. */
int snap_page_write(struct snap_writer *w, uint32_t idx, const void *page, uint32_t *crc);
/* Write body into the free slot and commit it. 0 or -errno; on error the
 * last committed body stays the valid one. */
int snap_commit(struct snap_writer *w, const void *body, size_t len);

#endif
