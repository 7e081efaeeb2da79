/* The state journal: what a restarted refpaged needs to go on serving the
 * clients whose descriptors it gets back, kept so that each change costs
 * O(change) rather than a rewrite of the whole state. This file is the
 * format alone: layout, encoding, checksums, reading with the replay
 * filter, crash-safe writing and compaction. What goes in is decided by
 * the daemon (persist), what comes out is used by the restore.
 *
 * It lives in one memfd, sparse (offsets in bytes; nothing is ever
 * written at or past JNL_FILE_END = 2^39):
 *
 *   0                        file header: magic, version, layout, and two
 *                            slot descriptors, each with its own CRC32C
 *   JNL_COUNTERS_OFF  4096   the STATS counters, live: the daemon's own
 *                            (MAP_SHARED), so they survive even a SIGKILL
 *   JNL_TMPL_OFF      8192   template page i at JNL_TMPL_OFF + i * 4096,
 *                            i < JNL_MAX_PAGES (2^26 - 2)
 *   JNL_IMAGE_OFF(0)  2^38   slot 0: an IMAGE (at most JNL_IMAGE_MAX)
 *   JNL_JOURNAL_OFF(0)       slot 0: its JOURNAL (2^36 bytes of room)
 *   JNL_IMAGE_OFF(1)         slot 1: an image
 *   JNL_JOURNAL_OFF(1)       slot 1: its journal, ending at JNL_FILE_END
 *
 * A slot holds an image (the state, compacted: templates, range-tree
 * nodes, address spaces, sessions) and the journal that follows it: the
 * changes made since, one record each, appended. A slot's descriptor says
 * where its image is, its length and CRC32C, its generation and Q, the seq
 * of its journal's first record. A reader takes the valid slot with the
 * highest generation, replays its image, then its journal up to the first
 * record that is torn (short, bad CRC, unknown type, seq not the next).
 *
 * Seqs. Every record appended gets the next seq (u64, consecutive, 1 for
 * the first record of a fresh file, never reused), assigned under the
 * writer's mutex together with its place in the journal: file order is
 * seq order. A journal's records are Q, Q+1, ... without a gap.
 *
 * Appending a record is one pwrite at the end of the current slot's
 * journal. A record is either all there or, torn by a crash during that
 * pwrite, the end of the journal: everything before it stands.
 *
 * Compaction (jnl_compact_*), without stopping appends:
 *  1. begin: the other slot's descriptor is zeroed (so no reader takes the
 *     slot about to be written), and the writer goes to dual mode: every
 *     record appended from now on, seq Q onwards, goes to the current
 *     journal AND to the start of the other slot's journal area.
 *  2. The daemon captures its objects, each group at its own capture seq
 *     (all >= Q - 1), and builds an image (struct jnl_image_builder).
 *  3. commit: the image is written into the other slot's image area, then
 *     that slot's descriptor {generation + 1, image offset/length/CRC,
 *     journal offset, Q} in ONE pwrite: the commit point. Dual mode ends
 *     (in the same critical section, so no record falls between), the old
 *     slot's descriptor is zeroed, its image and journal punched, and the
 *     template pages freed before step 1 become reusable.
 * Why it is crash safe: until the commit pwrite lands, the old slot is the
 * valid one with the highest generation, and its journal has every record
 * (dual mode writes the old journal first); the new slot is zeroed or has
 * a descriptor whose CRC fails. Once it lands, the new slot has the higher
 * generation, an image whose CRC was right before the descriptor was
 * written, and a journal that has had every record from Q on. Each record
 * a new journal has was also written to the old one first, so either
 * choice replays to the same state at that instant. A torn descriptor
 * fails its CRC; a torn image fails the descriptor's image CRC.
 *
 * Records' CRCs start from the low 32 bits of their journal's generation
 * (the generation of the slot they are replayed from): a record left in an
 * area from another generation never passes, whatever its seq.
 *
 * Capture seqs and the replay filter. The image is not one instant: the
 * main thread captures sessions (with their handles and last replies) and
 * templates at S_main (jnl_image_hdr.main_seq), each worker the mms it
 * owns at its own seq (jnl_mm.seq); a capture at seq S reflects every
 * record <= S of its objects and none > S (read jnl_last_seq under the
 * lock that orders the appends of those objects), and a fork family is
 * captured at once by the worker that owns it. The template table holds
 * every template alive at S_main and every template a captured node or
 * handle names (captured trees hold their templates until the image is
 * built, so those are alive). Replay rule (jnl_read):
 *  - a record targeting an object captured in the image applies only if
 *    its seq > that object's capture seq (templates and sessions:
 *    S_main; mms: their own);
 *  - a record targeting an object not in the image applies if an earlier
 *    record of this journal created it (TMPL_NEW, SESSION_NEW, MM_NEW) and
 *    nothing ended or rejected it; a *_NEW always applies, except:
 *  - TMPL_NEW of a template already known (in the image, or created) is
 *    the same template again: checked to be identical, and skipped;
 *  - MM_NEW of a fork child not in the image whose parent is, at a seq <=
 *    the parent's capture seq, is skipped with every later record of the
 *    child: the child's family is captured by one worker at once, so such
 *    a child ended before the capture (and cloning the parent's captured,
 *    later, tree would be wrong anyway). A child whose parent is neither
 *    known nor in the image is skipped as unknown; one whose parent was
 *    rejected, rejected;
 *  - a MAP or HANDLE naming a template that is not alive at that point of
 *    the replay (never known, freed, or rejected) is skipped: it happens
 *    for a template created before Q, mapped after an mm's capture and
 *    freed before S_main, whose pieces all went before its TMPL_FREE;
 *  - a MAP or UNMAP with a session (a client's request) also updates that
 *    session's last reply {req_seq, status 0, id 0, value 0}, by the
 *    session rule: it is handed over as a separate JNL_REPLY, after the
 *    MAP/UNMAP itself (which follows the mm rule).
 * A record whose checksum is right but whose contents are impossible
 * (malformed fields, an id created twice, a template page shared by two
 * templates) ends the replay as a torn one does (JNL_END_INVALID): what
 * came before stands; what follows might depend on it.
 *
 * Template pages are written before the TMPL_NEW that names them, and
 * never rewritten while a slot a reader may take can refer to them: a
 * page freed (after its TMPL_FREE is appended) becomes reusable only at
 * the commit of a compaction that BEGAN after the free. That image was
 * captured after the free (so it cannot hold the template) and its
 * journal starts after it (so it cannot name it), and the old slot is
 * zeroed before the page is released. Within one slot's image and
 * journal, a page therefore belongs to one template at most, which the
 * reader checks. (A page freed during a compaction waits for the next.)
 *
 * Fixed-width fields, host byte order (writer and reader run on the same
 * machine), no padding, every record a multiple of 8 bytes. The magic and
 * the version are at the same offsets as in the previous format (the one
 * of snapshot.h, version 1), so a binary of either kind refuses the other
 * one's file as a version it does not know rather than as garbage. */
#ifndef REFPAGED_JOURNAL_H
#define REFPAGED_JOURNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define JNL_VERSION 2u
#define JNL_MAGIC "RPSNAP\n\0"
#define JNL_IMAGE_MAGIC 0x49535052u /* "RPSI" */
#define JNL_PAGE 4096u
#define JNL_COUNTERS_OFF ((uint64_t)JNL_PAGE)
#define JNL_TMPL_OFF (2 * (uint64_t)JNL_PAGE)
#define JNL_AREA (1ull << 36) /* an image area, a journal area */
#define JNL_IMAGE_OFF(i) ((1ull << 38) + (uint64_t)(i)*2 * JNL_AREA)
#define JNL_JOURNAL_OFF(i) (JNL_IMAGE_OFF(i) + JNL_AREA)
#define JNL_FILE_END JNL_IMAGE_OFF(2)
#define JNL_MAX_PAGES ((JNL_IMAGE_OFF(0) - JNL_TMPL_OFF) / JNL_PAGE)
/* Largest image either side accepts (the reader holds it in memory):
 * some 30 million range-tree nodes. */
#define JNL_IMAGE_MAX (1ull << 30)
/* Handle indices (and a session's handle count) stay below this: the
 * daemon's --max-templates is at most 2^20. */
#define JNL_MAX_HANDLES (1u << 20)
#define JNL_MAX_STATS 64u
/* No seq or generation is larger (2^62: past any lifetime, and nothing
 * added to one can wrap); the writer refuses to go beyond (-EOVERFLOW). */
#define JNL_SEQ_MAX (1ull << 62)

struct jnl_slot {
	uint64_t gen;       /* 0: never written, or zeroed; <= JNL_SEQ_MAX */
	uint64_t image_off; /* JNL_IMAGE_OFF(slot) */
	uint64_t image_len;
	uint64_t journal_off; /* JNL_JOURNAL_OFF(slot) */
	uint64_t first_seq;   /* Q: the seq of the journal's first record, <= JNL_SEQ_MAX */
	uint32_t image_crc;   /* CRC32C of the image */
	uint32_t crc;         /* CRC32C of the 44 bytes above */
};
_Static_assert(sizeof(struct jnl_slot) == 48, "jnl_slot size");

struct jnl_file_hdr {
	uint8_t magic[8];      /* JNL_MAGIC */
	uint32_t version;      /* JNL_VERSION: of the whole layout and encoding */
	uint32_t page_size;    /* JNL_PAGE */
	uint64_t counters_off; /* JNL_COUNTERS_OFF */
	uint64_t tmpl_off;     /* JNL_TMPL_OFF */
	uint64_t slot_off[2];  /* JNL_IMAGE_OFF(i); the journal area follows */
	uint64_t area;         /* JNL_AREA */
	uint32_t reserved;     /* zero */
	uint32_t crc;          /* CRC32C of the 60 bytes above */
	struct jnl_slot slot[2];
};
_Static_assert(sizeof(struct jnl_file_hdr) == 160, "jnl_file_hdr size");

#define JNL_COUNTERS_MAGIC 0x43535052u /* "RPSC" */

/* Counters are updated in place, one aligned 8-byte store at a time: no
 * checksum, a reader checks magic and count. */
struct jnl_counters {
	uint32_t magic;            /* JNL_COUNTERS_MAGIC */
	uint32_t count;            /* valid entries in v, <= JNL_MAX_STATS */
	uint64_t v[JNL_MAX_STATS]; /* enum proto_stat order */
};
_Static_assert(sizeof(struct jnl_counters) <= JNL_PAGE, "jnl_counters size");

/* --- objects: image entries and record payloads ---------------------------- */

/* The next ids to hand out: a restarted daemon never reuses an id. */
struct jnl_ids {
	uint32_t tmpl, session, mm, tree;
};
_Static_assert(sizeof(struct jnl_ids) == 16, "jnl_ids size");

/* A template (image entry, and the TMPL_NEW payload): its content is page
 * `page` of the template area, whose CRC32C is crc. */
struct jnl_tmpl {
	uint32_t id;
	uint32_t uid;  /* its owner, charged for it */
	uint32_t page; /* < JNL_MAX_PAGES */
	uint32_t crc;
};
_Static_assert(sizeof(struct jnl_tmpl) == 16, "jnl_tmpl size");

/* A range-tree node: [start, end) -> tmpl, page aligned, start < end;
 * left and right are node indices (1-based, 0: none) smaller than the
 * node's own: nodes come children first, each distinct node once, and the
 * trees of a fork family share them. */
struct jnl_node {
	uint64_t start, end;
	uint32_t left, right;
	uint32_t tmpl;     /* a template of the image */
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct jnl_node) == 32, "jnl_node size");

#define JNL_MM_CHILD 0x1u /* adopted from a fork event */

/* A served address space; its userfaultfd is the fd named "u<id>". */
struct jnl_mm {
	uint32_t id;
	int32_t pid; /* 0: not known yet */
	uint32_t uid;
	uint32_t tree;     /* the fork tree: a client and its descendants, != 0 */
	uint64_t features; /* from UFFDIO_API */
	uint32_t flags;    /* JNL_MM_* */
	uint32_t root;     /* node index, 0: no ranges */
	uint64_t seq;      /* capture seq, >= Q - 1 */
};
_Static_assert(sizeof(struct jnl_mm) == 40, "jnl_mm size");

/* The last reply is kept so that a request still queued on the socket
 * (consumed only after the reply) is answered again, not done twice. */
#define JNL_SESSION_REPLIED 0x1u

/* A connection, the fd named "c<id>"; nhandles struct jnl_handle follow
 * it in the image (handle index i: the i-th). */
struct jnl_session {
	uint32_t id;
	int32_t pid; /* SO_PEERCRED at accept */
	uint32_t uid;
	uint32_t gid;
	uint32_t mm;       /* the client's own address space, 0 before HELLO; it
		       * may be one the journal creates (resolve it after the
		       * replay) */
	uint32_t nhandles; /* <= JNL_MAX_HANDLES */
	uint32_t last_seq; /* the last reply: request seq, status, id, value */
	int32_t last_status;
	uint32_t last_id;
	uint32_t flags; /* JNL_SESSION_* */
	uint64_t last_value;
};
_Static_assert(sizeof(struct jnl_session) == 48, "jnl_session size");

struct jnl_handle {
	uint32_t tmpl; /* a template of the image; 0: a free slot (uses 0) */
	uint32_t uses; /* times handed out */
};
_Static_assert(sizeof(struct jnl_handle) == 8, "jnl_handle size");

/* The image: this header, then ntmpls struct jnl_tmpl, nnodes struct
 * jnl_node, nmms struct jnl_mm, nsessions struct jnl_session each followed
 * by its handles; nothing after. */
struct jnl_image_hdr {
	uint32_t magic; /* JNL_IMAGE_MAGIC */
	uint32_t ntmpls;
	uint32_t nnodes;
	uint32_t nmms;
	uint32_t nsessions;
	uint32_t reserved; /* zero */
	uint64_t main_seq; /* S_main: templates and sessions, >= Q - 1 */
	struct jnl_ids next;
};
_Static_assert(sizeof(struct jnl_image_hdr) == 48, "jnl_image_hdr size");

/* --- journal records -------------------------------------------------------- */

enum jnl_type {
	JNL_TMPL_NEW = 1, /* struct jnl_tmpl */
	JNL_TMPL_FREE,    /* struct jnl_ended */
	JNL_SESSION_NEW,  /* struct jnl_session_new */
	JNL_SESSION_END,  /* struct jnl_ended */
	JNL_SESSION_MM,   /* struct jnl_session_mm: HELLO done */
	JNL_HANDLE,       /* struct jnl_handle_set */
	JNL_REPLY,        /* struct jnl_reply */
	JNL_MM_NEW,       /* struct jnl_mm_new */
	JNL_MM_END,       /* struct jnl_ended */
	JNL_MM_PID,       /* struct jnl_mm_pid */
	JNL_MAP,          /* struct jnl_map */
	JNL_UNMAP,        /* struct jnl_unmap */
	JNL_COPY,         /* struct jnl_copy */
	JNL_TYPE_COUNT
};

struct jnl_rec_hdr {
	uint32_t crc;  /* CRC32C of the rest of the record, payload included,
			* started from (uint32_t)generation */
	uint16_t type; /* enum jnl_type */
	uint16_t len;  /* payload bytes: the type's size, exactly */
	uint64_t seq;
};
_Static_assert(sizeof(struct jnl_rec_hdr) == 16, "jnl_rec_hdr size");

/* TMPL_FREE, SESSION_END, MM_END: the object ends. */
struct jnl_ended {
	uint32_t id;
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct jnl_ended) == 8, "jnl_ended size");

struct jnl_session_new {
	uint32_t id;
	int32_t pid;
	uint32_t uid, gid;
};
_Static_assert(sizeof(struct jnl_session_new) == 16, "jnl_session_new size");

/* mm 0: the session's address space is gone. */
struct jnl_session_mm {
	uint32_t session, mm;
};
_Static_assert(sizeof(struct jnl_session_mm) == 8, "jnl_session_mm size");

/* Handle index of session now names tmpl, handed out uses times; tmpl 0
 * (with uses 0): the handle is freed. */
struct jnl_handle_set {
	uint32_t session;
	uint32_t index; /* < JNL_MAX_HANDLES */
	uint32_t tmpl;
	uint32_t uses;
};
_Static_assert(sizeof(struct jnl_handle_set) == 16, "jnl_handle_set size");

/* The last reply of a request that changed no address space (TEMPLATE_*,
 * HELLO, a MAP or UNMAP that failed, ...). */
struct jnl_reply {
	uint32_t session;
	uint32_t req_seq;
	int32_t status;
	uint32_t id;
	uint64_t value;
};
_Static_assert(sizeof(struct jnl_reply) == 24, "jnl_reply size");

/* parent 0: a client's own address space (flags without JNL_MM_CHILD);
 * else a fork child (with it) whose tree starts as a clone of parent's as
 * replayed so far. */
struct jnl_mm_new {
	uint32_t id;
	uint32_t parent;
	int32_t pid;
	uint32_t uid;
	uint32_t tree; /* != 0 */
	uint32_t flags;
	uint64_t features;
};
_Static_assert(sizeof(struct jnl_mm_new) == 32, "jnl_mm_new size");

struct jnl_mm_pid {
	uint32_t id;
	int32_t pid;
};
_Static_assert(sizeof(struct jnl_mm_pid) == 8, "jnl_mm_pid size");

/* [start, end) -> tmpl in mm. session, req_seq: the request that did it
 * (session 0: none, e.g. a mapping grown in place). */
struct jnl_map {
	uint32_t mm, tmpl;
	uint32_t session, req_seq;
	uint64_t start, end;
};
_Static_assert(sizeof(struct jnl_map) == 32, "jnl_map size");

/* [start, end) of mm forgotten. session 0: the kernel's unmap event. */
struct jnl_unmap {
	uint32_t mm;
	uint32_t session, req_seq;
	uint32_t reserved; /* zero */
	uint64_t start, end;
};
_Static_assert(sizeof(struct jnl_unmap) == 32, "jnl_unmap size");

/* mremap: what mm has at [from, from + len) it also has at [to, to + len),
 * what was at the destination forgotten first (range_copy's semantics). */
struct jnl_copy {
	uint32_t mm;
	uint32_t reserved; /* zero */
	uint64_t from, to, len;
};
_Static_assert(sizeof(struct jnl_copy) == 32, "jnl_copy size");

union jnl_payload {
	struct jnl_tmpl tmpl_new;
	struct jnl_ended end; /* TMPL_FREE, SESSION_END, MM_END */
	struct jnl_session_new session_new;
	struct jnl_session_mm session_mm;
	struct jnl_handle_set handle;
	struct jnl_reply reply;
	struct jnl_mm_new mm_new;
	struct jnl_mm_pid mm_pid;
	struct jnl_map map;
	struct jnl_unmap unmap;
	struct jnl_copy copy;
};

/* The largest record, header included. */
#define JNL_REC_MAX (sizeof(struct jnl_rec_hdr) + 32u)

/* Payload bytes of a record type, 0 for a type that does not exist. */
size_t jnl_payload_len(unsigned type);
const char *jnl_type_name(unsigned type);

/* --- reading ------------------------------------------------------------------ */

enum jnl_err {
	JNL_OK = 0,
	JNL_EIO,      /* read error */
	JNL_ETRUNC,   /* shorter than the header says */
	JNL_EMAGIC,   /* not a refpaged state file */
	JNL_EVERSION, /* a version this reader does not know */
	JNL_ECRC,     /* checksum mismatch */
	JNL_EFORMAT,  /* checksum right, contents malformed */
	JNL_EEMPTY,   /* no slot ever written */
	JNL_ENOMEM,
	JNL_EABORT, /* a callback said stop (jnl_info.abort) */
	JNL_ERR_COUNT
};

const char *jnl_err_str(enum jnl_err e);

/* Why the replayed journal ends where it does. */
enum jnl_end {
	JNL_END_CLEAN,   /* zeros after the last record: nothing more written */
	JNL_END_TORN,    /* a record cut short, with a bad CRC, of an unknown
			  * type or length: a crash during its pwrite */
	JNL_END_SEQ,     /* a record whose seq is not the next one */
	JNL_END_INVALID, /* a record whose CRC is right but whose contents are
			  * impossible (see the top of this file) */
	JNL_END_AREA,    /* the journal area is full */
	JNL_END_IO,      /* a read error */
	JNL_END_COUNT
};

const char *jnl_end_str(enum jnl_end e);

/* A callback returns 0 to accept, JNL_REJECT (any positive value) to
 * reject, a negative value to stop jnl_read (JNL_EABORT). Rejecting an
 * object (an image entry, or a *_NEW record) or a record targeting one
 * makes that object rejected: no later record targeting it is handed
 * over (its *_END included: drop it when you reject it). Records that
 * merely name it still are (SESSION_MM naming a rejected mm; the image's
 * nodes and handles naming a rejected template), except MAP and HANDLE
 * naming a rejected template and MM_NEW of a rejected mm's child (that
 * child is rejected too, unseen). A rejected node is only counted: build
 * no node over it and reject the mms whose root is, or is above, it.
 * A rejected *_END is taken as done. Any callback may be NULL: accept. */
#define JNL_REJECT 1

struct jnl_callbacks {
	/* In the image's order: templates, nodes (index 1, 2, ...: children
	 * before parents), mms, sessions (h: s->nhandles of them). */
	int (*tmpl)(void *ctx, const struct jnl_tmpl *t);
	int (*node)(void *ctx, uint32_t index, const struct jnl_node *n);
	int (*mm)(void *ctx, const struct jnl_mm *m);
	int (*session)(void *ctx, const struct jnl_session *s, const struct jnl_handle *h);
	/* Then every journal record that passes the filter, in seq order;
	 * the session part of a MAP or UNMAP comes as a JNL_REPLY of the same
	 * seq right after it. */
	int (*record)(void *ctx, uint64_t seq, enum jnl_type type, const union jnl_payload *p);
};

struct jnl_info {
	uint32_t version;         /* the file's, also on JNL_EVERSION */
	int slot;                 /* the slot used, -1: none */
	enum jnl_err slot_err[2]; /* why a slot was refused (JNL_OK: used, or not tried) */
	uint64_t gen;             /* of the slot used */
	uint64_t image_len;
	uint64_t main_seq;  /* S_main of its image */
	uint64_t first_seq; /* Q */
	uint64_t next_seq;  /* after the last record replayed */
	uint64_t tail;      /* file offset after the last record replayed */
	enum jnl_end end;
	struct jnl_ids next; /* ids a restarted daemon may hand out from */
	uint64_t records;    /* valid records read */
	uint64_t delivered;  /* record callbacks (replies of MAP/UNMAP included) */
	uint64_t filtered;   /* record parts at or below their object's capture seq */
	uint64_t skipped;    /* record parts for unknown, ended or rejected objects,
				     * or naming a template not alive */
	uint32_t rejected_nodes;
	int abort; /* the negative value a callback returned */
	/* Template pages, for jnl_writer_resume: in use by a template alive
	 * at the end of the replay, and held by one freed or rejected. */
	uint32_t *pages_live, *pages_dead;
	size_t npages_live, npages_dead;
};

uint32_t jnl_crc32c(uint32_t crc, const void *p, size_t n);

/* Read the state in fd: the newest valid slot's image and journal,
 * replayed through cb (see the top of this file for the filter).
 * JNL_OK, or why not: info->slot_err says why each slot was refused,
 * info->version is the file's. Callbacks are made only for the slot
 * finally used, once its image is known to be whole and well formed;
 * JNL_ENOMEM or JNL_EABORT may come after some: drop what they built.
 * Uses pread only. jnl_info_free(info) in every case. */
enum jnl_err jnl_read(int fd, const struct jnl_callbacks *cb, void *ctx, struct jnl_info *info);
void jnl_info_free(struct jnl_info *info);

/* The live counters: JNL_OK, JNL_EIO, JNL_ETRUNC, or JNL_EFORMAT (not
 * counters). */
enum jnl_err jnl_read_counters(int fd, struct jnl_counters *c);

/* Template page `page` into buf (JNL_PAGE bytes), checked against crc:
 * JNL_OK, JNL_EIO, JNL_ETRUNC or JNL_ECRC. */
enum jnl_err jnl_read_page(int fd, uint32_t page, uint32_t crc, void *buf);

/* --- the image encoder ---------------------------------------------------------- */

struct jnl_bytes {
	uint8_t *p;
	size_t len, cap;
};

/* Sections may be filled in any order, from one thread. Errors are kept:
 * the first one is also what jnl_image_finish returns. */
struct jnl_image_builder {
	struct jnl_bytes tmpls, nodes, mms, sessions, out;
	uint32_t ntmpls, nnodes, nmms, nsessions;
	int err;
};

void jnl_image_init(struct jnl_image_builder *b);
int jnl_image_add_tmpl(struct jnl_image_builder *b, const struct jnl_tmpl *t);
/* The node's index (1, 2, ...), or 0 on error: children (n->left,
 * n->right) must have been added already; n->reserved is ignored. */
uint32_t jnl_image_add_node(struct jnl_image_builder *b, const struct jnl_node *n);
int jnl_image_add_mm(struct jnl_image_builder *b, const struct jnl_mm *m);
int jnl_image_add_session(struct jnl_image_builder *b, const struct jnl_session *s,
			  const struct jnl_handle *h);
/* The image, in *image (owned by b) and *len. 0, or the first error:
 * -ENOMEM, -EINVAL (an entry malformed), -EFBIG (past JNL_IMAGE_MAX).
 * References (templates of nodes and handles, ids twice, capture seqs) are
 * checked by jnl_compact_commit. */
int jnl_image_finish(struct jnl_image_builder *b, uint64_t main_seq, const struct jnl_ids *next,
		     const void **image, size_t *len);
void jnl_image_free(struct jnl_image_builder *b);

/* --- writing -------------------------------------------------------------------- */

struct jnl_u32s {
	uint32_t *v;
	size_t n, cap;
};

/* Thread safety: jnl_append, jnl_last_seq, jnl_journal_bytes and the
 * jnl_page_* calls from any thread; jnl_compact_* from one thread at a
 * time, concurrently with those; init, resume and fini alone.
 * System calls on the file: pwrite64 (records, descriptors, images,
 * template pages; the header and counters page at init), fallocate with
 * FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (slots no reader takes,
 * released pages, what follows the last record at resume; where it fails
 * only memory is lost, but at resume, where the bytes after the last
 * record are then zeroed with pwrite64), ftruncate (init only); besides
 * futex for the mutex and the allocator's. */
struct jnl_writer {
	int fd;
	uint32_t version;
	pthread_mutex_t lock; /* everything below */
	int cur;              /* the slot of the last commit */
	uint64_t gen;         /* its generation */
	uint64_t seq;         /* the last seq assigned */
	uint64_t pos;         /* bytes in its journal */
	int compacting;       /* from jnl_compact_begin to the end of commit/abort */
	int dual;             /* records also go to the other slot's journal */
	int dual_err;         /* one did not: the compaction cannot commit */
	uint64_t dual_pos;    /* bytes in the other slot's journal */
	uint64_t q;           /* its first seq */
	/* Template pages: a bit per page in use or not yet reusable. */
	uint64_t *busy;
	size_t nwords, hint;   /* hint: no free page in the words below */
	struct jnl_u32s freed; /* freed since the last jnl_compact_begin */
	struct jnl_u32s held;  /* freed before the running compaction began */
};

/* A fresh state file in fd (emptied first) with version in its header
 * (JNL_VERSION but in tests), its counters page initialised, and an empty
 * image committed in slot 0: there is always a valid slot. 0 or -errno. */
int jnl_writer_init(struct jnl_writer *w, int fd, uint32_t version);
/* Go on after a jnl_read of fd that returned JNL_OK (info as it left it):
 * appends continue right after the last record replayed, with the next
 * seq; the other slot is zeroed and punched, and whatever follows the
 * last record (a torn one) is punched. Pages held by freed or rejected
 * templates become reusable at the next commit. 0 or -errno. */
int jnl_writer_resume(struct jnl_writer *w, int fd, const struct jnl_info *info);
void jnl_writer_fini(struct jnl_writer *w);

/* Append a record: one pwrite (two in dual mode), under the writer's
 * mutex. payload must be len == jnl_payload_len(type) bytes, well formed
 * (-EINVAL otherwise: the reader would stop there). *seq_out (may be
 * NULL) gets its seq. 0, or -errno (nothing appended, no seq used):
 * -ENOSPC (the journal area is full: compact), -EOVERFLOW (JNL_SEQ_MAX). */
int jnl_append(struct jnl_writer *w, enum jnl_type type, const void *payload, size_t len,
	       uint64_t *seq_out);
/* The seq of the last record appended: a capture seq, when read while no
 * record of the captured objects can be appended. */
uint64_t jnl_last_seq(struct jnl_writer *w);
/* Bytes in the current journal: compact when it outgrows the image. */
uint64_t jnl_journal_bytes(struct jnl_writer *w);

/* A page index no slot a reader may take refers to: -ENOSPC, -ENOMEM. */
long jnl_page_alloc(struct jnl_writer *w);
/* Write template page idx (before appending its TMPL_NEW); *crc gets its
 * CRC32C. 0 or -errno. */
int jnl_page_write(struct jnl_writer *w, uint32_t idx, const void *page, uint32_t *crc);
/* Page idx is no longer used (call after appending its template's
 * TMPL_FREE): reusable, and punched, at the commit of the next compaction
 * begun after this call. 0 or -ENOMEM (the page stays used). */
int jnl_page_free(struct jnl_writer *w, uint32_t idx);

/* Start a compaction: *q gets Q, the seq of the new journal's first
 * record; every capture seq must be >= Q - 1. 0, -EBUSY (one is running)
 * or -errno. */
int jnl_compact_begin(struct jnl_writer *w, uint64_t *q);
/* Commit image (checked first: well formed, references resolved, capture
 * seqs >= Q - 1, else -EINVAL) as the new slot. 0, or -errno: then the
 * compaction is aborted and the last committed slot stays the valid one. */
int jnl_compact_commit(struct jnl_writer *w, const void *image, size_t len);
/* Leave dual mode without committing. */
void jnl_compact_abort(struct jnl_writer *w);

#endif
