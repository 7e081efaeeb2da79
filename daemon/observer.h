/* The one interface through which the core tells whoever listens what
 * changed in its state: a client came or went, a template handle was set, a
 * request was answered, an address space appeared (a client's, or a fork
 * child's), a range was mapped, unmapped or copied, a pid was learned.
 *
 * The restart wing (daemon/persist.c) subscribes and keeps a journal of
 * these, so that a restarted daemon can rebuild the state; nothing in the
 * core depends on anybody listening: with no observer the daemon works
 * the same and restarts lose their clients.
 *
 * Events are emitted by the thread that makes the change, while the change
 * is still its own (sessions and templates on the main loop; an address
 * space's events on the worker that owns it), after the change is made and
 * before anyone is told of it (a reply, a wake-up): so the order of one
 * object's events is the order of its changes, and a reply is never sent
 * for a change not emitted yet. emit must be thread safe and must not call
 * back into the core. */
#ifndef REFPAGED_OBSERVER_H
#define REFPAGED_OBSERVER_H

#include <stdint.h>

enum obs_type {
	OBS_SESSION_NEW, /* session, fd, pid, uid, gid */
	OBS_SESSION_END, /* session */
	OBS_SESSION_MM,  /* session, mm: its HELLO made mm */
	OBS_HANDLE,      /* session, handle (index), tmpl id (0: freed), uses */
	OBS_REPLY,       /* session, req_seq, status, id, value: a request that is
			   * not an address-space change was answered */
	OBS_MM_NEW,      /* mm, parent (0: a client's own), fd, pid, uid, tree, features, flags */
	OBS_MM_END,      /* mm */
	OBS_MM_PID,      /* mm, pid */
	OBS_MAP,         /* mm, start, end, tmpl; session and req_seq if a request did it */
	OBS_UNMAP,       /* mm, start, end; session and req_seq if a request did it */
	OBS_COPY,        /* mm, start (from), end (from + len), to */
};

#define OBS_MM_CHILD 0x1u

struct obs_event {
	enum obs_type type;
	uint32_t session, mm, parent, tree, tmpl, handle, uses, req_seq, id, flags;
	int32_t status, pid;
	uint32_t uid, gid;
	int fd;
	uint64_t start, end, to, value, features;
};

struct rp_observer {
	void (*emit)(void *ctx, const struct obs_event *ev);
	void *ctx;
};

static inline void obs_emit(const struct rp_observer *o, const struct obs_event *ev)
{
	if (o && o->emit)
		o->emit(o->ctx, ev);
}

#endif
