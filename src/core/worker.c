/*
 * worker.c - the blocking-work thread pool (see worker.h).
 *
 * One mutex guards a run queue (jobs waiting to start, doubly linked so
 * a cancel unlinks in O(1)) and a finished list (jobs whose done() is
 * due). A pool thread takes a job from the run queue, runs it unlocked,
 * appends it to the finished list and bumps an eventfd; the loop's event
 * on that eventfd takes the whole finished list and calls each done().
 * A cancelled job that has not started moves straight to the finished
 * list, so done() always runs from the loop callback, never from inside
 * the caller's own call. Pool threads block every signal: signals are
 * the loop thread's business.
 */
#include "core/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_FINISHED };

struct worker_job {
    struct worker_job *prev, *next; /* on the run queue or finished list */
    struct worker_pool *pool;
    void (*work)(void *arg);
    void (*done)(void *arg, bool cancelled);
    void *arg;
    enum job_state state; /* under pool->mu */
    bool cancelled;       /* loop thread only */
};

struct job_list {
    struct worker_job *head, *tail;
    size_t n;
};

struct worker_pool {
    struct event_base *base;
    struct event *ev;
    int evfd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job_list queued;   /* waiting for a thread */
    struct job_list finished; /* waiting for done() on the loop */
    atomic_size_t pending;    /* queued + running, for worker_pending */
    bool stop;                /* threads exit; submit refuses */
    unsigned nthreads;        /* threads started */
    pthread_t threads[WORKER_THREADS_MAX];
};

/* ---- lists ---- */

static void list_push(struct job_list *l, struct worker_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void list_remove(struct job_list *l, struct worker_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static struct worker_job *list_pop(struct job_list *l)
{
    struct worker_job *j = l->head;
    if (j)
        list_remove(l, j);
    return j;
}

/* ---- pool threads ---- */

/* Tell the loop that the finished list has grown (called under mu). */
static void wake_loop(struct worker_pool *p)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the loop will look. */
    if (write(p->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        fatal("worker: eventfd write: %s", strerror(errno));
}

static void *worker_main(void *arg)
{
    struct worker_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->queued.head == NULL)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        struct worker_job *j = list_pop(&p->queued);
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&p->mu);
        j->work(j->arg);
        pthread_mutex_lock(&p->mu);
        j->state = JOB_FINISHED;
        atomic_fetch_sub(&p->pending, 1);
        list_push(&p->finished, j);
        wake_loop(p);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- the loop side ---- */

/* Call done() for every finished job (all as cancelled when `cancel`).
 * The list is taken whole first, so a done() may submit or cancel. */
static void deliver(struct worker_pool *p, bool cancel)
{
    pthread_mutex_lock(&p->mu);
    struct job_list l = p->finished;
    p->finished = (struct job_list){0};
    pthread_mutex_unlock(&p->mu);
    struct worker_job *j;
    while ((j = list_pop(&l)) != NULL) {
        j->done(j->arg, j->cancelled || cancel);
        free(j);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        fatal("worker: eventfd read: %s", strerror(errno));
    deliver(arg, false);
}

/* Stop and join the threads, then release everything; queued jobs and
 * undelivered completions get done(arg, true). */
static void pool_teardown(struct worker_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    struct worker_job *j;
    while ((j = list_pop(&p->queued)) != NULL) {
        j->state = JOB_FINISHED;
        list_push(&p->finished, j);
    }
    atomic_store(&p->pending, 0);
    deliver(p, true);
    if (p->ev)
        event_free(p->ev);
    if (p->evfd >= 0)
        close(p->evfd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Start the threads with every signal blocked in them. */
static int start_threads(struct worker_pool *p, unsigned nthreads)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = 0;
    while (p->nthreads < nthreads && rc == 0) {
        rc = pthread_create(&p->threads[p->nthreads], NULL, worker_main, p);
        if (rc == 0)
            p->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

struct worker_pool *worker_pool_new(struct event_base *base, unsigned nthreads)
{
    if (base == NULL || nthreads == 0 || nthreads > WORKER_THREADS_MAX) {
        errno = EINVAL;
        return NULL;
    }
    struct worker_pool *p = xcalloc(1, sizeof(*p));
    p->base = base;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->pending, 0);
    int e = 0;
    p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->evfd < 0)
        e = errno;
    else if ((p->ev = event_new(base, p->evfd, EV_READ | EV_PERSIST, on_wake,
                                p)) == NULL ||
             event_add(p->ev, NULL) != 0)
        e = ENOMEM;
    else
        e = start_threads(p, nthreads);
    if (e == 0)
        return p;
    pool_teardown(p);
    errno = e;
    return NULL;
}

struct worker_job *worker_submit(struct worker_pool *p, void (*work)(void *arg),
                                 void (*done)(void *arg, bool cancelled),
                                 void *arg)
{
    struct worker_job *j = xcalloc(1, sizeof(*j));
    j->pool = p;
    j->work = work;
    j->done = done;
    j->arg = arg;
    j->state = JOB_QUEUED;
    pthread_mutex_lock(&p->mu);
    int e = p->stop ? ECANCELED : p->queued.n >= WORKER_QUEUE_MAX ? EAGAIN : 0;
    if (e == 0) {
        list_push(&p->queued, j);
        atomic_fetch_add(&p->pending, 1);
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (e != 0) {
        free(j);
        errno = e;
        return NULL;
    }
    return j;
}

void worker_cancel(struct worker_job *j)
{
    struct worker_pool *p = j->pool;
    pthread_mutex_lock(&p->mu);
    j->cancelled = true;
    if (j->state == JOB_QUEUED) {
        /* Not started: it never runs; done() comes from the loop. */
        list_remove(&p->queued, j);
        atomic_fetch_sub(&p->pending, 1);
        j->state = JOB_FINISHED;
        list_push(&p->finished, j);
        wake_loop(p);
    }
    pthread_mutex_unlock(&p->mu);
}

size_t worker_pending(const struct worker_pool *p)
{
    return atomic_load(&p->pending);
}

void worker_pool_free(struct worker_pool *p)
{
    if (p)
        pool_teardown(p);
}
