/* The input format of fuzz_journal, shared with its seed generator
 * (mkcorpus_journal.c).
 *
 * A state file is sparse and its parts lie far apart (daemon/journal.h),
 * so an input is not the file's bytes in a row but the bytes of each part
 * that matters:
 *
 *     uint8_t flags;        FJ_*
 *     uint8_t callbacks;    how the harness's callbacks answer (FJ_CB_*)
 *     uint16_t len[FJ_NREGIONS];   little endian
 *     the bytes of each region in turn (cut short where the input ends)
 *
 * and the harness writes region r at fj_region_off[r] of a memfd.
 *
 * The fix-ups let mutations get past the checksums to what they guard:
 * the harness recomputes what the flags say, in this order: record CRCs
 * (and seqs) of each journal, with its slot's generation and Q; each slot
 * descriptor's image CRC (over the image region, as written) and its own
 * CRC; the file header's CRC. */
#ifndef RP_FUZZ_JOURNAL_H
#define RP_FUZZ_JOURNAL_H

#include <stdint.h>

#include "journal.h"

enum fj_region {
	FJ_HDR,  /* the file header (the counters page follows, left empty) */
	FJ_TMPL, /* template pages from page 0 */
	FJ_IMAGE0,
	FJ_JOURNAL0,
	FJ_IMAGE1,
	FJ_JOURNAL1,
	FJ_NREGIONS
};

static const uint64_t fj_region_off[FJ_NREGIONS] = {
	0, JNL_TMPL_OFF, JNL_IMAGE_OFF(0), JNL_JOURNAL_OFF(0), JNL_IMAGE_OFF(1), JNL_JOURNAL_OFF(1),
};

#define FJ_HDR_BYTES (2 + 2 * FJ_NREGIONS)
#define FJ_REGION_MAX 16384u /* per region, more is cut off */

#define FJ_FIX_RECORDS 0x01u /* record CRCs */
#define FJ_FIX_SEQS 0x02u    /* record seqs: Q, Q+1, ... */
#define FJ_FIX_SLOTS 0x04u   /* descriptor image CRCs and CRCs */
#define FJ_FIX_HDR 0x08u     /* the file header's CRC */
#define FJ_FIX_ALL 0x0fu

/* callbacks: bits 0-2 a residue: objects whose id % 7 equals it are
 * rejected (7: none); bit 3: every 16th node is rejected; bits 4-7: after
 * that many callbacks times 8, stop (0: never). */
#define FJ_CB_NONE 0x07u

#endif
