/*
 * worker.h - a small thread pool for blocking work (password hashing)
 * whose completions are reported on the event loop's thread.
 *
 * work(arg) runs on a pool thread; done(arg, cancelled) then runs exactly
 * once on the loop thread, never from inside worker_submit or
 * worker_cancel. All calls except work() itself are made on the loop
 * thread. At most WORKER_QUEUE_MAX jobs wait to start; beyond that
 * worker_submit refuses (the caller answers with a temporary error).
 */
#ifndef MOAT_CORE_WORKER_H
#define MOAT_CORE_WORKER_H

#include "core/util.h"

#define WORKER_THREADS_MAX 16
#define WORKER_QUEUE_MAX 10000 /* jobs waiting to start */

struct event_base;
struct worker_pool;
struct worker_job;

/* Start nthreads (1..WORKER_THREADS_MAX) threads reporting to base.
 * NULL on failure, errno set (EINVAL for a bad count). */
struct worker_pool *worker_pool_new(struct event_base *base, unsigned nthreads);
/* Queue work(arg); done(arg, cancelled) follows on the loop thread. The
 * handle is valid until done is called. NULL with errno EAGAIN when
 * WORKER_QUEUE_MAX jobs are already waiting (done is then never called). */
struct worker_job *worker_submit(struct worker_pool *p, void (*work)(void *arg),
                                 void (*done)(void *arg, bool cancelled),
                                 void *arg);
/* The caller no longer wants the result: done is still called exactly
 * once, with cancelled = true, after work finished if it had started; a
 * job not yet started is not run. */
void worker_cancel(struct worker_job *j);
/* Jobs queued or running now. */
size_t worker_pending(const struct worker_pool *p);
/* Stop: jobs not started are not run, running ones are waited for, and
 * every outstanding done() is called with cancelled = true before this
 * returns. Must not be called from inside a done callback. */
void worker_pool_free(struct worker_pool *p);

#endif
