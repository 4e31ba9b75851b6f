/*
 * test_spool.c - unit tests for the spool, against a real directory (under
 * mkdtemp) and a real event_base.
 *
 * The file format is checked with a parser and a bitwise CRC-32 written
 * here from docs/spool.md, independently of spool_file.c, so a change of
 * format shows up as a failing test rather than as two agreeing bugs.
 */
#include "core/util.h"

#include "spool/spool.h"
#include "spool/spool_file.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h> /* cmocka needs it first */

#include <cmocka.h>

#define MAX_RESULTS 1024
#define CHUNK 65536u

/* ---- fixture ---- */

struct fx {
    char tmp[64];
    char root[96];
    struct event_base *base;
    struct spool *sp;
    struct spool_recovery rec;
};

struct results {
    struct event_base *base;
    size_t want, n;
    bool timed_out;
    uint64_t mids[MAX_RESULTS];
    int errs[MAX_RESULTS];
};

/* Open the fixture's spool, failing the test with the reason. */
static void fx_open(struct fx *fx)
{
    char err[256] = "";
    fx->sp = spool_open(fx->base, fx->root, &fx->rec, err, sizeof(err));
    if (fx->sp == NULL)
        fail_msg("spool_open: %s", err);
}

/* Close and open again, as after a restart. */
static void fx_reopen(struct fx *fx)
{
    spool_close(fx->sp);
    fx->sp = NULL;
    fx_open(fx);
}

static int fx_setup(void **state)
{
    struct fx *fx = xcalloc(1, sizeof(*fx));
    assert_true(str_copy(fx->tmp, sizeof(fx->tmp), "/tmp/moat-spool-XXXXXX"));
    assert_non_null(mkdtemp(fx->tmp));
    assert_true(str_printf(fx->root, sizeof(fx->root), "%s/spool", fx->tmp));
    fx->base = event_base_new();
    assert_non_null(fx->base);
    fx_open(fx);
    *state = fx;
    return 0;
}

/* nftw callback: remove one entry. */
static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    spool_close(fx->sp);
    event_base_free(fx->base);
    nftw(fx->tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

/* ---- helpers ---- */

static const char *const rcpts3[] = {"a@example.com", "b@example.org",
                                     "\"odd  quoted\"@example.net"};

/* The envelope every test message uses, varied by MID. */
static struct spool_envelope env_for(uint64_t mid)
{
    struct spool_envelope e = {
        .mid = mid,
        .icid = 1000 + mid,
        .received = 1700000000 + (int64_t)mid,
        .listener = "IncomingMail",
        .client_ip = "192.0.2.7",
        .helo = "mx.example.net",
        .mail_from = "sender@example.net",
        .flags = SPOOL_F_8BITMIME,
        .nrcpt = 3,
        .rcpts = rcpts3,
    };
    return e;
}

/* Deterministic content byte i of message mid (NULs included). */
static unsigned char pattern(uint64_t mid, size_t i)
{
    return (unsigned char)(i * 31u + mid * 7u + (i >> 8));
}

/* Begin a message with env and write size bytes in odd-sized pieces. */
static struct spool_msg *
put_msg_env(struct fx *fx, const struct spool_envelope *env, size_t size)
{
    uint64_t mid = env->mid;
    int e = 0;
    struct spool_msg *m = spool_msg_begin(fx->sp, env, &e);
    if (m == NULL)
        fail_msg("begin MID %llu: %s", (unsigned long long)mid, strerror(e));
    unsigned char piece[7919];
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof(piece) ? size - off : sizeof(piece);
        for (size_t i = 0; i < n; i++)
            piece[i] = pattern(mid, off + i);
        assert_int_equal(spool_msg_write(m, piece, n), 0);
        off += n;
    }
    assert_int_equal(spool_msg_size(m), size);
    return m;
}

/* Begin message mid (envelope env_for(mid)) and write size bytes. */
static struct spool_msg *put_msg(struct fx *fx, uint64_t mid, size_t size)
{
    struct spool_envelope env = env_for(mid);
    return put_msg_env(fx, &env, size);
}

/* Commit callback: record the outcome, stop the loop when all are in. */
static void record_cb(void *arg, uint64_t mid, int err)
{
    struct results *r = arg;
    assert_true(r->n < MAX_RESULTS);
    r->mids[r->n] = mid;
    r->errs[r->n] = err;
    r->n++;
    if (r->n == r->want)
        event_base_loopbreak(r->base);
}

/* Timer callback: give up waiting. */
static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct results *r = arg;
    (void)fd;
    (void)what;
    r->timed_out = true;
    event_base_loopbreak(r->base);
}

/* Run the loop until r->want callbacks came (or 30 s passed). */
static void wait_results(struct fx *fx, struct results *r)
{
    struct timeval tv = {30, 0};
    struct event *t = evtimer_new(fx->base, on_timeout, r);
    evtimer_add(t, &tv);
    while (r->n < r->want && !r->timed_out)
        event_base_loop(fx->base, 0);
    event_free(t);
    assert_false(r->timed_out);
}

/* A results recorder expecting want callbacks. */
static struct results *results_new(struct fx *fx, size_t want)
{
    struct results *r = xcalloc(1, sizeof(*r));
    r->base = fx->base;
    r->want = want;
    return r;
}

/* Write, commit and wait for message mid; returns the callback's err. */
static int commit_one(struct fx *fx, uint64_t mid, size_t size)
{
    struct results *r = results_new(fx, 1);
    struct spool_msg *m = put_msg(fx, mid, size);
    spool_msg_commit(m, record_cb, r);
    assert_int_equal(r->n, 0); /* never called from inside commit */
    wait_results(fx, r);
    assert_int_equal(r->mids[0], mid);
    int err = r->errs[0];
    free(r);
    return err;
}

/* Path of <root>/<sub>/<name>. */
static void path_of(const struct fx *fx, const char *sub, const char *name,
                    char *out, size_t outlen)
{
    assert_true(str_printf(out, outlen, "%s/%s/%s", fx->root, sub, name));
}

/* Path of <root>/<sub>/<mid>. */
static void mid_path(const struct fx *fx, const char *sub, uint64_t mid,
                     char *out, size_t outlen)
{
    char name[32];
    assert_true(
        str_printf(name, sizeof(name), "%llu", (unsigned long long)mid));
    path_of(fx, sub, name, out, outlen);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Number of names in <root>/<sub> not starting with '.'. */
static size_t count_names(const struct fx *fx, const char *sub)
{
    char path[PATH_MAX];
    assert_true(str_printf(path, sizeof(path), "%s/%s", fx->root, sub));
    DIR *d = opendir(path);
    assert_non_null(d);
    size_t n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Read a whole file (malloc'd). */
static unsigned char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    unsigned char *p = xmalloc((size_t)st.st_size + 1);
    assert_int_equal(read(fd, p, (size_t)st.st_size), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return p;
}

/* Write a whole file (0600), replacing it. */
static void spit(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    close(fd);
}

/* Bitwise CRC-32 (IEEE, reflected), independent of the table version. */
static uint32_t crc_slow(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* A spool file as this test reads the documented format. */
struct parsed {
    size_t nrec;
    size_t starts[64]; /* offset of each record (first 64) */
    size_t env_len;
    uint64_t size;
    unsigned char *content;
};

/* Parse and check a spool file; true when it is entirely valid. */
static bool parse_file(const unsigned char *p, size_t len, struct parsed *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 8 || memcmp(p, "MOATSPL\1", 8) != 0)
        return false;
    out->content = xmalloc(len + 1);
    for (size_t off = 8; off + 5 <= len;) {
        unsigned char type = p[off];
        size_t rl = be32(p + off + 1);
        if (out->nrec < ARRAY_LEN(out->starts))
            out->starts[out->nrec] = off;
        out->nrec++;
        if (rl > len - off - 5 || (out->nrec == 1) != (type == 'E'))
            return false;
        if (type == 'E')
            out->env_len = rl;
        else if (type == 'C' && rl > 0 && rl <= CHUNK) {
            memcpy(out->content + out->size, p + off + 5, rl);
            out->size += rl;
        } else if (type == 'Z') {
            return rl == 12 && off + 17 == len &&
                   ((uint64_t)be32(p + off + 5) << 32 | be32(p + off + 9)) ==
                       out->size &&
                   be32(p + off + 13) == crc_slow(p, off);
        } else if (type != 'E')
            return false;
        off += 5 + rl;
    }
    return false;
}

/* Check queue/<mid> holds exactly the expected content. */
static void check_queued_file(const struct fx *fx, uint64_t mid, size_t size)
{
    char path[PATH_MAX];
    size_t len;
    struct parsed pf;
    mid_path(fx, "queue", mid, path, sizeof(path));
    unsigned char *p = slurp(path, &len);
    assert_true(parse_file(p, len, &pf));
    assert_int_equal(pf.size, size);
    for (size_t i = 0; i < size; i++)
        if (pf.content[i] != pattern(mid, i))
            fail_msg("MID %llu byte %zu differs", (unsigned long long)mid, i);
    free(pf.content);
    free(p);
}

/* Check an index entry against env_for(mid) and the size. */
static void check_entry(const struct fx *fx, uint64_t mid, uint64_t size)
{
    const struct spool_entry *e = spool_find(fx->sp, mid);
    struct spool_envelope env = env_for(mid);
    assert_non_null(e);
    assert_int_equal(e->mid, mid);
    assert_int_equal(e->icid, env.icid);
    assert_int_equal(e->received, env.received);
    assert_int_equal(e->size, size);
    assert_string_equal(e->listener, env.listener);
    assert_string_equal(e->client_ip, env.client_ip);
    assert_string_equal(e->helo, env.helo);
    assert_string_equal(e->mail_from, env.mail_from);
    assert_int_equal(e->flags, env.flags);
    assert_int_equal(e->nrcpt, env.nrcpt);
    for (size_t i = 0; i < env.nrcpt; i++)
        assert_string_equal(e->rcpts[i], env.rcpts[i]);
}

/* ---- cases ---- */

/* Case: begin/write/commit -> callback, file in queue/ with the content. */
static void test_commit_basic(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    struct stat st;
    assert_int_equal(commit_one(fx, 42, 150000), 0);
    mid_path(fx, "incoming", 42, path, sizeof(path));
    assert_false(exists(path));
    mid_path(fx, "queue", 42, path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    check_queued_file(fx, 42, 150000);
    check_entry(fx, 42, 150000);
    assert_int_equal(spool_count(fx->sp), 1);
    assert_int_equal(spool_bytes(fx->sp), 150000);
    assert_true(stat(fx->root, &st) == 0 && (st.st_mode & 0777) == 0700);
}

/* Case: an empty message and one of exactly one full record. */
static void test_commit_edge_sizes(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(commit_one(fx, 1, 0), 0);
    assert_int_equal(commit_one(fx, 2, CHUNK), 0);
    assert_int_equal(commit_one(fx, 3, 2 * CHUNK + 1), 0);
    check_queued_file(fx, 1, 0);
    check_queued_file(fx, 2, CHUNK);
    check_queued_file(fx, 3, 2 * CHUNK + 1);
    fx_reopen(fx);
    assert_int_equal(fx->rec.queued, 3);
    check_entry(fx, 1, 0);
    check_entry(fx, 2, CHUNK);
    check_entry(fx, 3, 2 * CHUNK + 1);
}

/* foreach visitor: check increasing MIDs, count. */
static bool visit_sorted(void *arg, const struct spool_entry *e)
{
    uint64_t *last = arg;
    assert_true(e->mid > last[0]);
    last[0] = e->mid;
    last[1]++;
    return true;
}

/* foreach visitor that stops after the first entry. */
static bool visit_first(void *arg, const struct spool_entry *e)
{
    *(uint64_t *)arg = e->mid;
    return false;
}

/* Case: the index stays sorted when MIDs commit out of order. */
static void test_index_order(void **state)
{
    struct fx *fx = *state;
    static const uint64_t mids[] = {50, 10, 90, 30, 70, 20, 100, 5};
    for (size_t i = 0; i < ARRAY_LEN(mids); i++)
        assert_int_equal(commit_one(fx, mids[i], 100 + i), 0);
    uint64_t acc[2] = {0, 0}, first = 0;
    spool_foreach(fx->sp, visit_sorted, acc);
    assert_int_equal(acc[1], ARRAY_LEN(mids));
    spool_foreach(fx->sp, visit_first, &first);
    assert_int_equal(first, 5);
    assert_null(spool_find(fx->sp, 11));
    assert_null(spool_find(fx->sp, 1000));
    assert_null(spool_find(fx->sp, 1));
    assert_non_null(spool_find(fx->sp, 100));
}

/* Case: abort removes the incoming file and leaves no trace. */
static void test_abort(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    struct spool_msg *m = put_msg(fx, 7, 100000);
    mid_path(fx, "incoming", 7, path, sizeof(path));
    assert_true(exists(path));
    spool_msg_abort(m);
    assert_false(exists(path));
    assert_int_equal(count_names(fx, "incoming"), 0);
    assert_int_equal(count_names(fx, "queue"), 0);
    assert_int_equal(spool_count(fx->sp), 0);
}

/* Case: begin refuses duplicate MIDs and oversized envelopes. */
static void test_begin_errors(void **state)
{
    struct fx *fx = *state;
    int e = 0;
    assert_int_equal(commit_one(fx, 9, 10), 0);
    struct spool_envelope env = env_for(9);
    assert_null(spool_msg_begin(fx->sp, &env, &e));
    assert_int_equal(e, EEXIST); /* committed */
    struct spool_msg *m = put_msg(fx, 10, 10);
    env = env_for(10);
    assert_null(spool_msg_begin(fx->sp, &env, &e));
    assert_int_equal(e, EEXIST); /* being received */
    spool_msg_abort(m);
    size_t n = 100001;
    const char **many = xcalloc(n, sizeof(*many));
    for (size_t i = 0; i < n; i++)
        many[i] = "r@example.com";
    env = env_for(11);
    env.rcpts = many;
    env.nrcpt = n;
    assert_null(spool_msg_begin(fx->sp, &env, &e));
    assert_int_equal(e, E2BIG);
    free(many);
    assert_int_equal(count_names(fx, "incoming"), 0);
}

/* Case: 200 commits in one loop turn complete once each, in commit order,
 * in fewer than 200 flushes; the index ends up sorted. */
static void test_group_commit(void **state)
{
    struct fx *fx = *state;
    enum { N = 200 };
    struct spool_msg *msgs[N + 1];
    uint64_t order[N];
    struct results *r = results_new(fx, N);
    struct spool_stats st;
    for (uint64_t mid = 1; mid <= N; mid++)
        msgs[mid] = put_msg(fx, mid, 4096);
    for (size_t i = 0; i < N; i++) {
        order[i] = (i * 7) % N + 1; /* a permutation of 1..N */
        spool_msg_commit(msgs[order[i]], record_cb, r);
    }
    wait_results(fx, r);
    assert_int_equal(r->n, N);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(r->mids[i], order[i]);
        assert_int_equal(r->errs[i], 0);
    }
    spool_get_stats(fx->sp, &st);
    assert_int_equal(st.commits, N);
    assert_int_equal(st.failures, 0);
    assert_true(st.batches < N);
    assert_true(st.max_batch > 1);
    uint64_t acc[2] = {0, 0};
    spool_foreach(fx->sp, visit_sorted, acc);
    assert_int_equal(acc[1], N);
    assert_int_equal(spool_bytes(fx->sp), N * 4096);
    print_message("# group commit: %d messages in %llu batches, max %zu\n", N,
                  (unsigned long long)st.batches, st.max_batch);
    free(r);
}

/* Case: one message of a batch fails (its queue/ name is taken by a file
 * the spool must not replace): only it fails, and its file is removed. */
static void test_batch_partial_failure(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    size_t len;
    struct results *r = results_new(fx, 3);
    struct spool_msg *m[3];
    for (uint64_t mid = 1; mid <= 3; mid++)
        m[mid - 1] = put_msg(fx, mid, 2000);
    mid_path(fx, "queue", 2, path, sizeof(path));
    spit(path, "not mine", 8);
    for (size_t i = 0; i < 3; i++)
        spool_msg_commit(m[i], record_cb, r);
    wait_results(fx, r);
    assert_int_equal(r->errs[0], 0);
    assert_int_equal(r->errs[1], EEXIST);
    assert_int_equal(r->errs[2], 0);
    free(r);
    unsigned char *p = slurp(path, &len);
    assert_int_equal(len, 8);
    assert_memory_equal(p, "not mine", 8);
    free(p);
    assert_int_equal(count_names(fx, "incoming"), 0);
    assert_null(spool_find(fx->sp, 2));
    check_queued_file(fx, 1, 2000);
    check_queued_file(fx, 3, 2000);
    assert_int_equal(spool_count(fx->sp), 2);
}

/* Case: close waits for commits in flight and runs their callbacks. */
static void test_close_drains(void **state)
{
    struct fx *fx = *state;
    struct results *r = results_new(fx, 5);
    for (uint64_t mid = 1; mid <= 5; mid++)
        spool_msg_commit(put_msg(fx, mid, 1000), record_cb, r);
    spool_close(fx->sp);
    fx->sp = NULL;
    assert_int_equal(r->n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(r->errs[i], 0);
    fx_open(fx);
    assert_int_equal(fx->rec.queued, 5);
    free(r);
}

/* Case: reopen recovers committed messages with their envelopes. */
static void test_reopen(void **state)
{
    struct fx *fx = *state;
    for (uint64_t mid = 1; mid <= 4; mid++)
        assert_int_equal(commit_one(fx, mid, mid * 50000), 0);
    fx_reopen(fx);
    assert_int_equal(fx->rec.queued, 4);
    assert_int_equal(fx->rec.discarded, 0);
    assert_int_equal(fx->rec.corrupt, 0);
    assert_int_equal(fx->rec.max_mid, 4);
    assert_int_equal(spool_count(fx->sp), 4);
    assert_int_equal(spool_bytes(fx->sp), 10 * 50000);
    for (uint64_t mid = 1; mid <= 4; mid++)
        check_entry(fx, mid, mid * 50000);
}

/* Case: the null sender, an empty HELO and other odd values survive. */
static void test_reopen_odd_envelope(void **state)
{
    struct fx *fx = *state;
    static const char *const one[] = {"x@example.com"};
    struct spool_envelope env = env_for(77);
    env.mail_from = "";
    env.helo = "";
    env.received = -1;
    env.icid = UINT64_MAX;
    env.flags = SPOOL_F_SMTPUTF8 | SPOOL_F_BINARYMIME;
    env.nrcpt = 1;
    env.rcpts = one;
    struct results *r = results_new(fx, 1);
    spool_msg_commit(put_msg_env(fx, &env, 10), record_cb, r);
    wait_results(fx, r);
    assert_int_equal(r->errs[0], 0);
    free(r);
    fx_reopen(fx);
    const struct spool_entry *e = spool_find(fx->sp, 77);
    assert_non_null(e);
    assert_string_equal(e->mail_from, "");
    assert_string_equal(e->helo, "");
    assert_int_equal(e->received, -1);
    assert_int_equal(e->icid, UINT64_MAX);
    assert_int_equal(e->flags, SPOOL_F_SMTPUTF8 | SPOOL_F_BINARYMIME);
    assert_int_equal(e->nrcpt, 1);
    assert_string_equal(e->rcpts[0], "x@example.com");
}

/* Case: a file left in incoming/ is discarded on reopen, its MID seen;
 * dot-files there are left alone. */
static void test_incoming_discarded(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX], dot[PATH_MAX];
    size_t len;
    assert_int_equal(commit_one(fx, 3, 100), 0);
    struct spool_msg *m = put_msg(fx, 8, 70000);
    mid_path(fx, "incoming", 8, path, sizeof(path));
    unsigned char *partial = slurp(path, &len); /* as a crash leaves it */
    spool_msg_abort(m);
    spool_close(fx->sp);
    fx->sp = NULL;
    spit(path, partial, len);
    free(partial);
    path_of(fx, "incoming", ".keep", dot, sizeof(dot));
    spit(dot, "x", 1);
    fx_open(fx);
    assert_int_equal(fx->rec.discarded, 1);
    assert_int_equal(fx->rec.queued, 1);
    assert_int_equal(fx->rec.max_mid, 8);
    assert_false(exists(path));
    assert_true(exists(dot));
    assert_null(spool_find(fx->sp, 8));
    check_entry(fx, 3, 100);
}

/* Commit n messages (MIDs 1..n) of size bytes, close; return file size. */
static size_t make_copies(struct fx *fx, size_t n, size_t size)
{
    char path[PATH_MAX];
    struct stat st;
    struct results *r = results_new(fx, n);
    for (uint64_t mid = 1; mid <= n; mid++)
        spool_msg_commit(put_msg(fx, mid, size), record_cb, r);
    wait_results(fx, r);
    free(r);
    spool_close(fx->sp);
    fx->sp = NULL;
    for (uint64_t mid = 1; mid <= n; mid++) {
        mid_path(fx, "queue", mid, path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
    }
    return (size_t)st.st_size;
}

/* Reopen and check that exactly n files were moved to corrupt/. */
static void expect_all_corrupt(struct fx *fx, size_t n)
{
    fx_open(fx);
    assert_int_equal(fx->rec.corrupt, n);
    assert_int_equal(fx->rec.queued, 0);
    assert_int_equal(spool_count(fx->sp), 0);
    assert_int_equal(count_names(fx, "queue"), 0);
    assert_int_equal(count_names(fx, "corrupt"), n);
}

/* Apply fn to queue/<mid>'s bytes and write the result back. */
static void mutate(struct fx *fx, uint64_t mid,
                   size_t (*fn)(unsigned char *p, size_t len, size_t arg),
                   size_t arg)
{
    char path[PATH_MAX];
    size_t len;
    mid_path(fx, "queue", mid, path, sizeof(path));
    unsigned char *p = slurp(path, &len);
    unsigned char *q = xmalloc(len + 64);
    memcpy(q, p, len);
    len = fn(q, len, arg);
    spit(path, q, len);
    free(q);
    free(p);
}

/* Mutators: cut at arg, flip bit arg%8 of byte arg/8, append a byte. */
static size_t cut_at(unsigned char *p, size_t len, size_t arg)
{
    (void)p;
    assert_true(arg < len);
    return arg;
}

static size_t flip_bit(unsigned char *p, size_t len, size_t arg)
{
    assert_true(arg / 8 < len);
    p[arg / 8] ^= (unsigned char)(1u << (arg % 8));
    return len;
}

/* Case: a small file cut at every length 0..size-1. (Bytes after the end
 * record are a torn status record, see test_status_torn.) */
static void test_corrupt_truncations(void **state)
{
    struct fx *fx = *state;
    enum { N = 600 };
    char path[PATH_MAX];
    size_t size = make_copies(fx, N, 300);
    assert_true(size <= N);
    for (uint64_t mid = 1; mid <= size; mid++)
        mutate(fx, mid, cut_at, mid - 1);
    for (uint64_t mid = size + 1; mid <= N; mid++) {
        mid_path(fx, "queue", mid, path, sizeof(path));
        assert_int_equal(unlink(path), 0);
    }
    expect_all_corrupt(fx, size);
}

/* Case: recipient states are appended, survive a reopen, and the message
 * goes when its last recipient is done. */
static void test_status_records(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    bool removed = true;
    assert_int_equal(commit_one(fx, 4, 1000), 0);
    struct spool_rcpt_update u[2] = {
        {0, {SPOOL_RCPT_DELIVERED, 0, 0}},
        {1, {SPOOL_RCPT_PENDING, 2, 1234567}},
    };
    assert_int_equal(spool_rcpt_update(fx->sp, 4, u, 2, &removed), 0);
    assert_false(removed);
    assert_int_equal(spool_rcpt_update(fx->sp, 99, u, 1, &removed), ENOENT);
    /* A final state is final: a later "pending" for RID 0 is ignored. */
    u[0].st.state = SPOOL_RCPT_PENDING;
    assert_int_equal(spool_rcpt_update(fx->sp, 4, u, 1, &removed), 0);
    fx_reopen(fx);
    const struct spool_entry *e = spool_find(fx->sp, 4);
    assert_non_null(e);
    assert_int_equal(e->ndone, 1);
    assert_int_equal(e->rstate[0].state, SPOOL_RCPT_DELIVERED);
    assert_int_equal(e->rstate[1].state, SPOOL_RCPT_PENDING);
    assert_int_equal(e->rstate[1].attempts, 2);
    assert_int_equal(e->rstate[1].next_try, 1234567);
    assert_int_equal(e->rstate[2].state, SPOOL_RCPT_PENDING);
    struct spool_rcpt_update last[2] = {
        {1, {SPOOL_RCPT_BOUNCED, 3, 0}},
        {2, {SPOOL_RCPT_DELETED, 0, 0}},
    };
    assert_int_equal(spool_rcpt_update(fx->sp, 4, last, 2, &removed), 0);
    assert_true(removed);
    assert_null(spool_find(fx->sp, 4));
    mid_path(fx, "queue", 4, path, sizeof(path));
    assert_false(exists(path));
}

/* Append a status record for rid with the given state to a file. */
static size_t add_status(unsigned char *p, size_t len, size_t rid_state)
{
    struct spool_rcpt st = {(uint8_t)(rid_state & 0xff), 1, 0};
    spool_put_status(p + len, (uint32_t)(rid_state >> 8), &st);
    return len + SPOOL_REC_HDR + SPOOL_STATUS_LEN;
}

/* Case: a torn status record at the end (any cut of one) is ignored and
 * cut off; a file whose recipients are all done is removed on open. */
static void test_status_torn(void **state)
{
    struct fx *fx = *state;
    enum { REC = SPOOL_REC_HDR + SPOOL_STATUS_LEN };
    char path[PATH_MAX];
    size_t size = make_copies(fx, REC + 1, 300);
    for (uint64_t mid = 1; mid <= REC; mid++) {
        mid_path(fx, "queue", mid, path, sizeof(path));
        mutate(fx, mid, add_status, SPOOL_RCPT_DELIVERED); /* RID 0 */
        mutate(fx, mid, add_status, 1u << 8 | SPOOL_RCPT_DELIVERED);
        mutate(fx, mid, cut_at, size + REC + mid - 1);     /* torn 2nd */
    }
    /* MID REC+1: all three recipients done, not yet unlinked. */
    for (size_t rid = 0; rid < 3; rid++)
        mutate(fx, REC + 1, add_status, rid << 8 | SPOOL_RCPT_BOUNCED);
    fx_open(fx);
    assert_int_equal(fx->rec.corrupt, 0);
    assert_int_equal(spool_count(fx->sp), REC);
    for (uint64_t mid = 1; mid <= REC; mid++) {
        const struct spool_entry *e = spool_find(fx->sp, mid);
        assert_non_null(e);
        assert_int_equal(e->ndone, 1);
        assert_int_equal(e->rstate[1].state, SPOOL_RCPT_PENDING);
        struct stat st;
        mid_path(fx, "queue", mid, path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((size_t)st.st_size, size + REC);
    }
    mid_path(fx, "queue", REC + 1, path, sizeof(path));
    assert_false(exists(path));
    /* Appending after the cut gives a file that reads back right. */
    struct spool_rcpt_update u = {2, {SPOOL_RCPT_PENDING, 7, 42}};
    bool removed;
    assert_int_equal(spool_rcpt_update(fx->sp, 3, &u, 1, &removed), 0);
    fx_reopen(fx);
    const struct spool_entry *e = spool_find(fx->sp, 3);
    assert_int_equal(e->rstate[2].attempts, 7);
    assert_int_equal(e->rstate[0].state, SPOOL_RCPT_DELIVERED);
}

/* Case: the reader returns the content byte for byte, for sizes around
 * the record boundaries, whatever the read sizes; rewind restarts. */
static void test_reader(void **state)
{
    struct fx *fx = *state;
    const size_t sizes[] = {1, 300, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7};
    const size_t reads[] = {1, 7, 4096, CHUNK + 100};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++)
        assert_int_equal(commit_one(fx, 10 + i, sizes[i]), 0);
    unsigned char *buf = xmalloc(CHUNK + 100);
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        int e = 0;
        struct spool_reader *r = spool_reader_open(fx->sp, 10 + i, &e);
        assert_non_null(r);
        for (size_t j = 0; j < ARRAY_LEN(reads); j++) {
            size_t got = 0;
            ssize_t n;
            while ((n = spool_reader_read(r, buf, reads[j])) > 0) {
                for (ssize_t k = 0; k < n; k++)
                    assert_int_equal(buf[k], pattern(10 + i, got + (size_t)k));
                got += (size_t)n;
            }
            assert_int_equal(n, 0);
            assert_int_equal(got, sizes[i]);
            spool_reader_rewind(r);
        }
        spool_reader_close(r);
    }
    free(buf);
    int e = 0;
    assert_null(spool_reader_open(fx->sp, 999, &e));
    assert_int_equal(e, ENOENT);
}

/* Case: a small file with one bit flipped, at every byte position. */
static void test_corrupt_flips(void **state)
{
    struct fx *fx = *state;
    enum { N = 600 };
    char path[PATH_MAX];
    size_t size = make_copies(fx, N, 300);
    assert_true(size <= N);
    for (uint64_t mid = 1; mid <= size; mid++)
        mutate(fx, mid, flip_bit, (mid - 1) * 8 + mid % 8);
    for (uint64_t mid = size + 1; mid <= N; mid++) {
        mid_path(fx, "queue", mid, path, sizeof(path));
        assert_int_equal(unlink(path), 0);
    }
    expect_all_corrupt(fx, size);
}

/* Case: a multi-record file cut at and around every record boundary,
 * inside every record, and with a bit flipped inside every record. */
static void test_corrupt_boundaries(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    size_t len, cuts[64], ncut = 0;
    struct parsed pf;
    make_copies(fx, 1, 2 * CHUNK + 100);
    mid_path(fx, "queue", 1, path, sizeof(path));
    unsigned char *p = slurp(path, &len);
    assert_true(parse_file(p, len, &pf));
    assert_int_equal(pf.nrec, 5); /* E C C C Z */
    free(pf.content);
    free(p);
    for (size_t i = 0; i < pf.nrec; i++) {
        size_t s = pf.starts[i],
               next = i + 1 < pf.nrec ? pf.starts[i + 1] : len;
        size_t at[] = {s, s + 1, s + 4, s + 5, (s + 5 + next) / 2, next - 1};
        for (size_t k = 0; k < ARRAY_LEN(at); k++)
            cuts[ncut++] = at[k];
    }
    /* A fresh spool holding one copy per mutation. */
    assert_true(str_printf(fx->root, sizeof(fx->root), "%s/spool2", fx->tmp));
    fx_open(fx);
    size_t n = ncut + pf.nrec + 2;
    make_copies(fx, n, 2 * CHUNK + 100);
    uint64_t mid = 1;
    for (size_t i = 0; i < ncut; i++)
        mutate(fx, mid++, cut_at, cuts[i]);
    for (size_t i = 0; i < pf.nrec; i++) /* a bit inside each record */
        mutate(fx, mid++, flip_bit, (pf.starts[i] + 7) * 8 + 3);
    mutate(fx, mid++, flip_bit, 0 * 8 + 0); /* bad magic */
    mutate(fx, mid++, flip_bit, 7 * 8 + 1); /* bad version */
    assert_int_equal(mid - 1, n);
    expect_all_corrupt(fx, n);
}

/* Case: odd names in queue/: dot-files stay, non-numeric and
 * non-canonical names and a MID/name mismatch go to corrupt/ without
 * replacing an earlier corrupt file; the valid file is indexed. */
static void test_recovery_names(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX], other[PATH_MAX];
    size_t len;
    make_copies(fx, 1, 500);
    mid_path(fx, "queue", 1, path, sizeof(path));
    unsigned char *good = slurp(path, &len);
    static const char *const bad[] = {"abc", "007", "2",
                                      "18446744073709551616"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        path_of(fx, "queue", bad[i], other, sizeof(other));
        spit(other, good, len); /* valid bytes, but for MID 1 */
    }
    path_of(fx, "queue", ".hidden", other, sizeof(other));
    spit(other, "x", 1);
    path_of(fx, "corrupt", "abc", other, sizeof(other));
    spit(other, "older", 5);
    fx_open(fx);
    assert_int_equal(fx->rec.queued, 1);
    assert_int_equal(fx->rec.corrupt, ARRAY_LEN(bad));
    assert_int_equal(fx->rec.max_mid, 2); /* "007" is not a MID name */
    check_entry(fx, 1, 500);
    assert_null(spool_find(fx->sp, 2));
    path_of(fx, "queue", ".hidden", other, sizeof(other));
    assert_true(exists(other));
    path_of(fx, "corrupt", "abc.1", other, sizeof(other));
    assert_true(exists(other));
    assert_int_equal(count_names(fx, "corrupt"), ARRAY_LEN(bad) + 1);
    free(good);
}

/* Set the soft file-size limit (SIGXFSZ ignored, so writes get EFBIG). */
static void set_fsize(rlim_t cur, struct rlimit *old)
{
    struct rlimit lim;
    if (old)
        assert_int_equal(getrlimit(RLIMIT_FSIZE, old), 0);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &lim), 0);
    lim.rlim_cur = cur;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
}

/* Write pieces until spool_msg_write fails; return its error. */
static int write_until_error(struct spool_msg *m, size_t max)
{
    static unsigned char piece[4096];
    for (size_t off = 0; off < max; off += sizeof(piece)) {
        int e = spool_msg_write(m, piece, sizeof(piece));
        if (e != 0)
            return e;
    }
    return 0;
}

/* Case: EFBIG while writing is returned and sticky; abort leaves nothing;
 * a commit after the error fails cleanly; earlier messages survive. */
static void test_write_failure(void **state)
{
    struct fx *fx = *state;
    struct rlimit old;
    struct spool_stats st;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(commit_one(fx, 1, 5000), 0);
    set_fsize(200000, &old);
    struct spool_msg *m = put_msg(fx, 2, 1000);
    assert_int_equal(write_until_error(m, 1 << 20), EFBIG);
    assert_int_equal(spool_msg_write(m, "x", 1), EFBIG); /* sticky */
    spool_msg_abort(m);
    m = put_msg(fx, 3, 1000);
    assert_int_equal(write_until_error(m, 1 << 20), EFBIG);
    struct results *r = results_new(fx, 1);
    spool_msg_commit(m, record_cb, r);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    wait_results(fx, r);
    assert_int_equal(r->errs[0], EFBIG);
    free(r);
    spool_get_stats(fx->sp, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.commits, 1);
    assert_int_equal(count_names(fx, "incoming"), 0);
    assert_int_equal(count_names(fx, "queue"), 1);
    assert_null(spool_find(fx->sp, 3));
    fx_reopen(fx);
    assert_int_equal(fx->rec.queued, 1);
    assert_int_equal(fx->rec.discarded, 0);
    check_entry(fx, 1, 5000);
    check_queued_file(fx, 1, 5000);
}

/* Child side of the crash test: exit after `left` acknowledgements. */
static void crash_cb(void *arg, uint64_t mid, int err)
{
    size_t *left = arg;
    (void)mid;
    if (err != 0)
        _exit(10);
    if (--*left == 0)
        _exit(0); /* "crash" with commits still in flight */
}

/* Size of message mid in the crash test. */
static size_t crash_size(uint64_t mid)
{
    return 1000 + (size_t)mid * 3001;
}

/* The crashing child: begin and commit n messages, die after k acks. */
MOAT_NORETURN static void crash_child(const char *root, size_t n, size_t k)
{
    struct event_base *base = event_base_new();
    struct spool *sp = spool_open(base, root, NULL, NULL, 0);
    unsigned char piece[1024];
    size_t left = k;
    if (sp == NULL)
        _exit(11);
    for (uint64_t mid = 1; mid <= n; mid++) {
        struct spool_envelope env = env_for(mid);
        struct spool_msg *m = spool_msg_begin(sp, &env, NULL);
        if (m == NULL)
            _exit(12);
        for (size_t off = 0; off < crash_size(mid); off += sizeof(piece)) {
            size_t len = crash_size(mid) - off;
            len = len < sizeof(piece) ? len : sizeof(piece);
            for (size_t i = 0; i < len; i++)
                piece[i] = pattern(mid, off + i);
            if (spool_msg_write(m, piece, len) != 0)
                _exit(13);
        }
        spool_msg_commit(m, crash_cb, &left);
    }
    event_base_dispatch(base);
    _exit(14);
}

/* Case: a process that dies right after K acknowledgements loses none of
 * them, and leaves nothing partial in queue/. */
static void test_crash(void **state)
{
    struct fx *fx = *state;
    enum { N = 60, K = 15 };
    int status;
    spool_close(fx->sp);
    fx->sp = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        crash_child(fx->root, N, K);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    fx_open(fx);
    assert_int_equal(fx->rec.corrupt, 0);
    assert_int_equal(fx->rec.queued + fx->rec.discarded, N);
    assert_true(fx->rec.queued >= K);
    assert_int_equal(fx->rec.max_mid, N);
    for (uint64_t mid = 1; mid <= K; mid++)
        assert_non_null(spool_find(fx->sp, mid)); /* acknowledged */
    for (uint64_t mid = 1; mid <= N; mid++) {
        if (spool_find(fx->sp, mid) == NULL)
            continue;
        check_entry(fx, mid, crash_size(mid));
        check_queued_file(fx, mid, crash_size(mid));
    }
    print_message("# crash: %zu acknowledged, %zu recovered, %zu discarded\n",
                  (size_t)K, fx->rec.queued, fx->rec.discarded);
}

/* Case: the table-driven CRC-32 matches the check value and this file's
 * bitwise version. */
static void test_crc_vector(void **state)
{
    struct fx *fx = *state;
    char path[PATH_MAX];
    size_t len;
    struct parsed pf;
    assert_int_equal(crc_slow((const unsigned char *)"123456789", 9),
                     0xCBF43926u);
    /* parse_file checks the stored CRC with crc_slow. */
    assert_int_equal(commit_one(fx, 5, 3 * CHUNK), 0);
    mid_path(fx, "queue", 5, path, sizeof(path));
    unsigned char *p = slurp(path, &len);
    assert_true(parse_file(p, len, &pf));
    free(pf.content);
    free(p);
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        CASE(test_commit_basic),
        CASE(test_commit_edge_sizes),
        CASE(test_crc_vector),
        CASE(test_index_order),
        CASE(test_abort),
        CASE(test_begin_errors),
        CASE(test_group_commit),
        CASE(test_batch_partial_failure),
        CASE(test_close_drains),
        CASE(test_reopen),
        CASE(test_reopen_odd_envelope),
        CASE(test_incoming_discarded),
        CASE(test_corrupt_truncations),
        CASE(test_status_records),
        CASE(test_status_torn),
        CASE(test_reader),
        CASE(test_corrupt_flips),
        CASE(test_corrupt_boundaries),
        CASE(test_recovery_names),
        CASE(test_write_failure),
        CASE(test_crash),
    };
    return cmocka_run_group_tests_name("spool", tests, NULL, NULL);
}
