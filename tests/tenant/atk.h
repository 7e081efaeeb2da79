/* rp_attacker's common parts: raw protocol connections (the attacks do
 * what librefpage would never do) and the report lines the driver reads.
 *
 * Each attack is a function of the socket path; its options are key=value
 * arguments (tenant.h). It prints
 *   attacker KEY=VALUE ...     what it did (counts, refusals, timings)
 *   finding NAME=VALUE ...     what it demonstrated (the driver judges)
 * and returns the exit status (0: ran; 77: cannot run here; else broken). */
#ifndef RP_ATK_H
#define RP_ATK_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "tenant.h"

#define ATK_SKIP 77

/* One raw connection. uffd: the descriptor kept after HELLO (-1: none). */
struct atk_conn {
	int fd;
	int uffd;
	uint32_t seq;
};

/* Connect (non-blocking socket: a daemon that stopped accepting gives
 * -EAGAIN, not a hang). fd or -errno. */
int atk_dial(const char *sock);
/* Send one request, waiting at most timeout_s for room. 0 or -errno. */
int atk_send(struct atk_conn *c, uint16_t type, const void *p, uint32_t len, int passfd,
	     double timeout_s);
/* The next packet within timeout_s: its length, 0 when closed, -ETIMEDOUT
 * or -errno. */
long atk_recv(struct atk_conn *c, void *buf, double timeout_s);
/* Request and reply: the reply's status (0 or -errno), -ETIMEDOUT, or
 * -ENOTCONN when the daemon hung up. rep (may be NULL) gets the reply. */
int atk_req(struct atk_conn *c, uint16_t type, const void *p, uint32_t len, double timeout_s,
	    struct proto_reply *rep);
/* Dial and HELLO with a fresh userfaultfd of this process. keep_dup: keep
 * a duplicate of the uffd in c->uffd (the daemon gets the other). 0 or
 * -errno (the daemon's refusal, -ETIMEDOUT, -EAGAIN when it does not
 * accept). */
int atk_hello(struct atk_conn *c, const char *sock, double timeout_s, int keep_dup);
void atk_close(struct atk_conn *c);
/* Template of these contents / this byte: its id (> 0) or -errno. */
long atk_template(struct atk_conn *c, const void *page);
long atk_fill(struct atk_conn *c, uint8_t byte);
int atk_release(struct atk_conn *c, uint32_t id);
int atk_map(struct atk_conn *c, uint64_t addr, uint64_t len, uint32_t id);
int atk_unmap(struct atk_conn *c, uint64_t addr, uint64_t len);
/* STATS on this connection into v (PROTO_STATS_MAX). count or -errno. */
int atk_stats(struct atk_conn *c, uint64_t *v);

/* Anonymous read-write memory (MAP_FAILED on error). */
void *atk_anon(size_t len);
/* 1 while now < deadline. */
int atk_until(double deadline);
/* Refused by a limit (what a fixed daemon answers). */
int atk_refusal(int err);

__attribute__((format(printf, 1, 2))) void atk_out(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void atk_finding(const char *fmt, ...);

/* The attacks (atk_*.c). */
typedef int (*atk_fn)(const char *sock);
int atk_fork_storm(const char *sock);
int atk_fork_fat(const char *sock);
int atk_exec_storm(const char *sock);
int atk_template_flood(const char *sock);
int atk_template_pin(const char *sock);
int atk_oracle(const char *sock);
int atk_fd_exhaust(const char *sock);
int atk_slowloris(const char *sock);
int atk_log_flood(const char *sock);
int atk_cpu_hog(const char *sock);
int atk_req_flood(const char *sock);
int atk_churn(const char *sock);
int atk_unmap_pieces(const char *sock);
int atk_mremap_storm(const char *sock);
int atk_uffd_bomb(const char *sock);
int atk_mremap_dontunmap(const char *sock);
int atk_mmap_lock(const char *sock);
int atk_fault_flood(const char *sock);
int atk_fork_gate(const char *sock);
int atk_enomem(const char *sock);
int atk_probe_write(const char *sock);
/* exec-storm's children exec this: wait until fd= reads end of file. */
int atk_sleeper(const char *sock);

#endif
