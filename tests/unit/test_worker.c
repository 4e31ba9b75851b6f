/*
 * test_worker.c - the blocking-work thread pool: work runs on pool
 * threads, done() on the loop thread exactly once and never from inside
 * submit or cancel; cancel before and during work; the queue bound; and
 * freeing a pool with jobs outstanding.
 */
#include "core/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* A gate a work function can wait on until the test opens it. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    unsigned entered; /* work functions that reached the gate */
};

static struct gate gate;

static void gate_reset(void)
{
    pthread_mutex_lock(&gate.mu);
    gate.open = false;
    gate.entered = 0;
    pthread_mutex_unlock(&gate.mu);
}

static void gate_open(void)
{
    pthread_mutex_lock(&gate.mu);
    gate.open = true;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

/* Wait (up to 10 s) until n work functions are at the gate. */
static void gate_wait_entered(unsigned n)
{
    uint64_t until = time_mono_ms() + 10000;
    pthread_mutex_lock(&gate.mu);
    while (gate.entered < n && time_mono_ms() < until) {
        pthread_mutex_unlock(&gate.mu);
        usleep(1000);
        pthread_mutex_lock(&gate.mu);
    }
    unsigned got = gate.entered;
    pthread_mutex_unlock(&gate.mu);
    assert_int_equal(got, n);
}

/* One job's record: what work and done saw. */
struct rec {
    unsigned id;
    bool wait_gate;     /* block in work until the gate opens */
    bool worked;        /* set by work */
    bool on_pool;       /* work ran off the loop thread */
    bool worked_first;  /* work had finished when done ran */
    unsigned ndone;     /* done calls */
    bool cancelled;     /* done's argument */
    bool done_on_loop;  /* done ran on the loop thread */
    unsigned done_seq;  /* order in which done was called */
};

static pthread_t loop_thread;
static unsigned done_seq;
static bool in_call; /* inside worker_submit or worker_cancel */

static void work_fn(void *arg)
{
    struct rec *r = arg;
    r->on_pool = !pthread_equal(pthread_self(), loop_thread);
    if (r->wait_gate) {
        pthread_mutex_lock(&gate.mu);
        gate.entered++;
        while (!gate.open)
            pthread_cond_wait(&gate.cv, &gate.mu);
        pthread_mutex_unlock(&gate.mu);
    }
    r->worked = true;
}

static void done_fn(void *arg, bool cancelled)
{
    struct rec *r = arg;
    assert_false(in_call);
    r->ndone++;
    r->cancelled = cancelled;
    r->worked_first = r->worked;
    r->done_on_loop = pthread_equal(pthread_self(), loop_thread);
    r->done_seq = done_seq++;
}

static struct worker_job *submit(struct worker_pool *p, struct rec *r)
{
    in_call = true;
    struct worker_job *j = worker_submit(p, work_fn, done_fn, r);
    in_call = false;
    return j;
}

static void cancel(struct worker_job *j)
{
    in_call = true;
    worker_cancel(j);
    in_call = false;
}

/* Run the loop until every record has had done, or 10 s pass. */
static void run_until_done(struct event_base *base, struct rec *r, size_t n)
{
    uint64_t until = time_mono_ms() + 10000;
    for (;;) {
        size_t got = 0;
        for (size_t i = 0; i < n; i++)
            got += r[i].ndone > 0;
        if (got == n || time_mono_ms() > until)
            break;
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static int setup(void **state)
{
    (void)state;
    pthread_mutex_init(&gate.mu, NULL);
    pthread_cond_init(&gate.cv, NULL);
    gate_reset();
    loop_thread = pthread_self();
    done_seq = 0;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    *state = base;
    return 0;
}

static int teardown(void **state)
{
    event_base_free(*state);
    pthread_cond_destroy(&gate.cv);
    pthread_mutex_destroy(&gate.mu);
    return 0;
}

static void test_bad_count(void **state)
{
    struct event_base *base = *state;
    errno = 0;
    assert_null(worker_pool_new(base, 0));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(worker_pool_new(base, WORKER_THREADS_MAX + 1));
    assert_int_equal(errno, EINVAL);
    struct worker_pool *p = worker_pool_new(base, WORKER_THREADS_MAX);
    assert_non_null(p);
    assert_int_equal(worker_pending(p), 0);
    worker_pool_free(p);
}

static void test_runs_and_reports_on_loop(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 2);
    assert_non_null(p);
    struct rec r[3] = {{.id = 0}, {.id = 1}, {.id = 2}};
    for (size_t i = 0; i < ARRAY_LEN(r); i++)
        assert_non_null(submit(p, &r[i]));
    run_until_done(base, r, ARRAY_LEN(r));
    for (size_t i = 0; i < ARRAY_LEN(r); i++) {
        assert_true(r[i].worked);
        assert_true(r[i].on_pool);
        assert_int_equal(r[i].ndone, 1);
        assert_false(r[i].cancelled);
        assert_true(r[i].done_on_loop);
        assert_true(r[i].worked_first);
    }
    assert_int_equal(worker_pending(p), 0);
    worker_pool_free(p);
    for (size_t i = 0; i < ARRAY_LEN(r); i++)
        assert_int_equal(r[i].ndone, 1); /* not again at free */
}

/* One thread runs jobs in submission order; many threads run them all. */
static void test_many_jobs(void **state)
{
    struct event_base *base = *state;
    enum { N = 2000 };
    struct rec *r = xcalloc(N, sizeof(*r));
    for (unsigned threads = 1; threads <= 8; threads += 7) {
        memset(r, 0, N * sizeof(*r));
        done_seq = 0;
        struct worker_pool *p = worker_pool_new(base, threads);
        assert_non_null(p);
        for (unsigned i = 0; i < N; i++) {
            r[i].id = i;
            assert_non_null(submit(p, &r[i]));
        }
        run_until_done(base, r, N);
        for (unsigned i = 0; i < N; i++) {
            assert_int_equal(r[i].ndone, 1);
            assert_true(r[i].worked);
            assert_false(r[i].cancelled);
            if (threads == 1)
                assert_int_equal(r[i].done_seq, i);
        }
        assert_int_equal(done_seq, N);
        assert_int_equal(worker_pending(p), 0);
        worker_pool_free(p);
    }
    free(r);
}

static void test_cancel_before_start(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 1);
    assert_non_null(p);
    gate_reset();
    struct rec r[3] = {{.wait_gate = true}, {0}, {0}};
    assert_non_null(submit(p, &r[0]));
    gate_wait_entered(1); /* the only thread is busy with r[0] */
    struct worker_job *j1 = submit(p, &r[1]);
    assert_non_null(submit(p, &r[2]));
    assert_int_equal(worker_pending(p), 3);
    cancel(j1);
    assert_int_equal(worker_pending(p), 2);
    assert_int_equal(r[1].ndone, 0); /* not from inside cancel */
    run_until_done(base, &r[1], 1);
    assert_int_equal(r[1].ndone, 1);
    assert_true(r[1].cancelled);
    assert_false(r[1].worked);
    gate_open();
    run_until_done(base, r, ARRAY_LEN(r));
    assert_false(r[0].cancelled);
    assert_false(r[2].cancelled);
    assert_true(r[2].worked);
    assert_false(r[1].worked);
    assert_int_equal(r[1].ndone, 1);
    worker_pool_free(p);
}

static void test_cancel_while_running(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 1);
    assert_non_null(p);
    gate_reset();
    struct rec r = {.wait_gate = true};
    struct worker_job *j = submit(p, &r);
    assert_non_null(j);
    gate_wait_entered(1);
    cancel(j);
    cancel(j); /* twice is harmless */
    /* done must wait for work to finish. */
    for (int i = 0; i < 5; i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    assert_int_equal(r.ndone, 0);
    assert_int_equal(worker_pending(p), 1);
    gate_open();
    run_until_done(base, &r, 1);
    assert_int_equal(r.ndone, 1);
    assert_true(r.cancelled);
    assert_true(r.worked_first);
    assert_true(r.done_on_loop);
    worker_pool_free(p);
    assert_int_equal(r.ndone, 1);
}

/* A job that finished but whose done() has not run yet: cancel wins. */
static void test_cancel_after_finish(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 1);
    assert_non_null(p);
    struct rec r = {0};
    struct worker_job *j = submit(p, &r);
    uint64_t until = time_mono_ms() + 10000;
    while (worker_pending(p) > 0 && time_mono_ms() < until)
        usleep(1000);
    assert_int_equal(worker_pending(p), 0);
    assert_int_equal(r.ndone, 0); /* the loop has not run */
    cancel(j);
    run_until_done(base, &r, 1);
    assert_int_equal(r.ndone, 1);
    assert_true(r.cancelled);
    assert_true(r.worked);
    worker_pool_free(p);
}

static void *open_later(void *arg)
{
    (void)arg;
    usleep(50000);
    gate_open();
    return NULL;
}

static void test_free_with_outstanding(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 2);
    assert_non_null(p);
    gate_reset();
    enum { N = 50 };
    struct rec r[N];
    memset(r, 0, sizeof(r));
    r[0].wait_gate = r[1].wait_gate = true;
    for (unsigned i = 0; i < N; i++)
        assert_non_null(submit(p, &r[i]));
    gate_wait_entered(2); /* both threads busy, 48 queued */
    assert_int_equal(worker_pending(p), N);
    /* Free blocks on the running jobs: open the gate from another
     * thread after a moment. */
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_later, NULL), 0);
    worker_pool_free(p);
    pthread_join(opener, NULL);
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(r[i].ndone, 1);
        assert_true(r[i].cancelled);
        assert_true(r[i].done_on_loop);
        assert_int_equal(r[i].worked, i < 2);
    }
}

static void test_queue_full(void **state)
{
    struct event_base *base = *state;
    struct worker_pool *p = worker_pool_new(base, 1);
    assert_non_null(p);
    gate_reset();
    struct rec *r = xcalloc(WORKER_QUEUE_MAX + 2, sizeof(*r));
    r[0].wait_gate = true;
    assert_non_null(submit(p, &r[0]));
    gate_wait_entered(1);
    for (unsigned i = 1; i <= WORKER_QUEUE_MAX; i++)
        assert_non_null(submit(p, &r[i]));
    errno = 0;
    assert_null(submit(p, &r[WORKER_QUEUE_MAX + 1]));
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(worker_pending(p), WORKER_QUEUE_MAX + 1);
    gate_open();
    run_until_done(base, r, WORKER_QUEUE_MAX + 1);
    for (unsigned i = 0; i <= WORKER_QUEUE_MAX; i++) {
        assert_int_equal(r[i].ndone, 1);
        assert_false(r[i].cancelled);
    }
    assert_int_equal(r[WORKER_QUEUE_MAX + 1].ndone, 0);
    /* Room again. */
    assert_non_null(submit(p, &r[WORKER_QUEUE_MAX + 1]));
    run_until_done(base, &r[WORKER_QUEUE_MAX + 1], 1);
    assert_int_equal(r[WORKER_QUEUE_MAX + 1].ndone, 1);
    worker_pool_free(p);
    free(r);
}

/* A done() may submit more work. */
static struct worker_pool *chain_pool;
static unsigned chain_left;

static void chain_work(void *arg)
{
    (void)arg;
}

static void chain_done(void *arg, bool cancelled)
{
    (void)arg;
    assert_false(cancelled);
    if (--chain_left > 0)
        assert_non_null(
            worker_submit(chain_pool, chain_work, chain_done, NULL));
}

static void test_submit_from_done(void **state)
{
    struct event_base *base = *state;
    chain_pool = worker_pool_new(base, 1);
    assert_non_null(chain_pool);
    chain_left = 10;
    assert_non_null(worker_submit(chain_pool, chain_work, chain_done, NULL));
    uint64_t until = time_mono_ms() + 10000;
    while (chain_left > 0 && time_mono_ms() < until)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(chain_left, 0);
    worker_pool_free(chain_pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runs_and_reports_on_loop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_many_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_running, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_after_finish, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_with_outstanding, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_from_done, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
