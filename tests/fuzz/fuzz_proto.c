/* libFuzzer target: proto_check, the decoder of every untrusted packet,
 * on arbitrary bytes with an arbitrary descriptor count and direction.
 *
 * Input: one byte of parameters (bits 0-1: descriptors received, 0..3;
 * bit 2: want_request), then the packet. The packet is copied into a
 * buffer of exactly its size (ASan sees any read past it) aligned as the
 * daemon's and the library's receive buffers are.
 *
 * Whatever proto_check accepts must be exactly what the header says:
 * a known type of the right direction, its exact payload length, version
 * and zero flags, descriptors only on HELLO, reserved fields zero; and
 * proto_build must rebuild the same bytes from it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                            \
	do {                                                                                \
		if (!(c)) {                                                                 \
			fprintf(stderr, "fuzz_proto: %s:%d: %s\n", __FILE__, __LINE__, #c); \
			abort();                                                            \
		}                                                                           \
	} while (0)

static int is_request(uint16_t t)
{
	return t >= PROTO_HELLO && t < PROTO_REPLY && proto_payload_len(t) >= 0;
}

static void check_accepted(const uint8_t *buf, size_t n, int nfds, int want_request,
			   const struct proto_hdr *h)
{
	static _Alignas(8) uint8_t out[PROTO_MAX_MSG];

	CHECK((const void *)h == (const void *)buf);
	CHECK(h->version == PROTO_VERSION && h->flags == 0);
	CHECK(proto_payload_len(h->type) >= 0);
	CHECK(n == sizeof(*h) + (size_t)proto_payload_len(h->type) && n <= PROTO_MAX_MSG);
	CHECK(is_request(h->type) == !!want_request);
	CHECK(strcmp(proto_type_name(h->type), "?") != 0);
	if (want_request)
		CHECK(h->type == PROTO_HELLO ? nfds == 1 : nfds == 0);
	else
		CHECK(nfds == 0);
	if (want_request && h->type == PROTO_HELLO) {
		const struct proto_hello *hh = (const void *)(h + 1);
		CHECK(hh->reserved == 0 && !(hh->flags & ~PROTO_HELLO_FLAGS_ALL));
	}
	if (want_request && h->type == PROTO_MAP)
		CHECK(((const struct proto_map *)(const void *)(h + 1))->flags == 0);
	size_t m = proto_build(out, h->type, h->seq, h + 1, h->len);
	CHECK(m == n && memcmp(out, buf, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct proto_hdr *h = NULL;

	if (size < 1)
		return 0;
	int nfds = data[0] & 3;
	int want_request = !!(data[0] & 4);
	size_t n = size - 1;
	/* malloc: aligned for any struct, and exactly n bytes for ASan. */
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, n);
	enum proto_err e = proto_check(buf, n, nfds, want_request, &h);
	CHECK((unsigned)e < PROTO_ERR_COUNT);
	CHECK(proto_err_str(e) && strcmp(proto_err_str(e), "unknown error") != 0);
	if (e == PROTO_OK)
		check_accepted(buf, n, nfds, want_request, h);
	else
		CHECK(h == NULL);
	if (n >= 2) {
		uint16_t t;
		memcpy(&t, buf, sizeof(t));
		CHECK(proto_type_name(t) != NULL);
		CHECK(proto_stat_name(t) != NULL);
		CHECK(proto_err_str((enum proto_err)t) != NULL);
	}
	free(buf);
	return 0;
}
