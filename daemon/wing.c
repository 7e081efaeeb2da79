/* The restart wing as main.c sees it: see wing.h. */
#include "wing.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon.h"
#include "fdset.h"
#include "log.h"
#include "stats.h"
#include "wing_int.h"
#include "worker.h"

#define HANDOVER_EXIT_FAILED 4

void wing_subscribe(struct wing *wg, struct tmpl_ops *tops);

static int wing_argc;
static char **wing_argv;
static int snap_fd = -1;

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct wing *wg = w->data;

	(void)loop;
	(void)revents;
	wing_upgrade(wg->d, -1, 0, 0);
}

/* What a previous daemon left: the old daemon's on an upgrade, else
 * whatever systemd passes (its socket, and the fd store's contents). */
static int inherit(struct wing *wg, struct fdset *fds)
{
	if (wg->o.handover_fd > 0) {
		fds->from = "the previous daemon";
		return wing_handover_receive(wg, wg->o.handover_fd, fds, &snap_fd);
	}
	fds->from = "systemd";
	if (fdset_from_systemd(fds) < 0)
		log_err("cannot take the descriptors systemd passed");
	snap_fd = fdset_take(fds, WING_SNAP_NAME);
	return 0;
}

int wing_init(struct rp_daemon *d, const struct wing_opts *o, struct tmpl_ops *tops, int argc,
	      char **argv, struct fdset *fds)
{
	struct wing *wg = calloc(1, sizeof(*wg));
	const char *env = getenv("FDSTORE"); /* systemd >= 254: FileDescriptorStoreMax= */

	if (!wg) {
		log_err("cannot initialise: out of memory");
		return -1;
	}
	wg->d = d;
	wg->o = *o;
	wg->fd = -1;
	wg->o.fdstore = o->fdstore || (env && atoi(env) > 0);
	if (wg->o.fdstore && !getenv("NOTIFY_SOCKET")) {
		log_warn(
			"--fd-store: no $NOTIFY_SOCKET, so no fd store: a restart loses every client");
		wg->o.fdstore = 0;
	}
	pthread_mutex_init(&wg->cap_lock, NULL);
	pthread_cond_init(&wg->cap_done, NULL);
	d->wing = wg;
	d->upgrade = wing_upgrade;
	wing_subscribe(wg, tops);
	wing_argc = argc;
	wing_argv = calloc((size_t)argc + 1, sizeof(*wing_argv));
	for (int i = 0; wing_argv && i < argc; i++)
		wing_argv[i] = argv[i];
	if (inherit(wg, fds) < 0)
		_exit(HANDOVER_EXIT_FAILED); /* the old daemon goes on */
	return 0;
}

void wing_helper_start(struct rp_daemon *d)
{
	(void)d;
	if (wing_argv)
		wing_exec_helper_start(wing_argc, wing_argv);
	free(wing_argv);
	wing_argv = NULL;
}

void wing_failed(struct rp_daemon *d, const char *why)
{
	struct wing *wg = d->wing;

	if (wg && wg->o.handover_fd > 0) {
		wing_handover_refuse(wg->o.handover_fd, -ECANCELED, why);
		_exit(HANDOVER_EXIT_FAILED);
	}
}

int wing_restore(struct rp_daemon *d, struct fdset *fds)
{
	struct wing *wg = d->wing;
	int handover = wg->o.handover_fd > 0;

	if (wing_rebuild(wg, fds, snap_fd, handover) < 0) {
		fdset_free(fds);
		wing_failed(d, "cannot rebuild the state");
		return -1;
	}
	fdset_free(fds);
	if (handover && wing_handover_commit(wg->o.handover_fd) < 0)
		_exit(HANDOVER_EXIT_FAILED); /* the old daemon goes on: touch nothing */
	if (wg->o.fdstore) {
		if (worker_spawn(&wg->compactor) < 0) {
			log_err("cannot start the journal's compaction thread: the journal will grow");
		} else {
			wg->compactor_up = 1;
			wing_journal_start(wg);
		}
	}
	ev_signal_init(&wg->sighup, on_sighup, SIGHUP);
	wg->sighup.data = wg;
	ev_signal_start(d->loop, &wg->sighup);
	return 0;
}

int wing_journal_fd(const struct rp_daemon *d)
{
	const struct wing *wg = d->wing;

	return wg && wg->writer_open ? wg->fd : -1;
}

void wing_stop(struct rp_daemon *d, int status)
{
	struct wing *wg = d->wing;

	if (!wg || !wg->o.fdstore)
		return;
	log_notice(
		"stopping; %llu clients (%llu processes) stay in the fd store: a restart resumes them, a "
		"stop (systemctl stop) releases them and their untouched refpages read zeros "
		"from then on",
		(unsigned long long)stat_get(PROTO_STAT_CLIENTS),
		(unsigned long long)stat_get(PROTO_STAT_PROCESSES));
	wing_detach(wg, status);
}

void wing_fini(struct rp_daemon *d)
{
	struct wing *wg = d->wing;

	if (!wg)
		return;
	/* SIGHUP's watcher stays: stopping it would restore the default
	 * action with rt_sigaction, which the sandbox does not allow. */
	ev_timer_stop(d->loop, &wg->compact_timer);
	if (wg->compactor_up)
		worker_join(&wg->compactor);
	wing_compaction_drop(wg);
	if (wg->counters) {
		stats_move_home();
		munmap(wg->counters, JNL_PAGE);
	}
	if (wg->writer_open)
		jnl_writer_fini(&wg->w);
	if (wg->fd >= 0)
		close(wg->fd);
	free(wg);
	d->wing = NULL;
}
