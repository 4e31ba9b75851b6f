/*
 * queue.c - work queue, delivery queues, scheduler, connections and
 * outcomes (see queue.h).
 *
 * Life of a recipient: the spool commits its message -> workq_submit()
 * groups the pending recipients by domain into jobs -> a job waits in its
 * destination's ready list -> a connection takes it (conn_next), sends
 * one SMTP transaction, and job_result() turns the replies into one of
 * delivered / retry later / bounced, each written to the spool file
 * before the job is dropped or put in the retry heap.
 */
#include "queue/queue_internal.h"
#include "delivery/dns_wire.h"
#include "delivery/tls_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#define HASH_INIT 64
/* A connection with nothing to do waits this long for the next job before
 * it says QUIT (as Postfix's connection cache does): mail that arrives a
 * moment later does not pay for a new connection. */
#define IDLE_CACHE_SECS 2

int64_t queue_now(void)
{
    return (int64_t)time(NULL);
}

/* ---- destinations ---- */

static size_t hash_str(const char *s)
{
    size_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static void hash_grow(struct queue *q)
{
    size_t nsize = q->hsize ? q->hsize * 2 : HASH_INIT;
    struct dest **nt = xcalloc(nsize, sizeof(*nt));
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i], *next; d; d = next) {
            next = d->hnext;
            size_t at = hash_str(d->domain) & (nsize - 1);
            d->hnext = nt[at];
            nt[at] = d;
        }
    free(q->htab);
    q->htab = nt;
    q->hsize = nsize;
}

static struct dest *dest_find(const struct queue *q, const char *domain)
{
    if (q->hsize == 0)
        return NULL;
    for (struct dest *d = q->htab[hash_str(domain) & (q->hsize - 1)]; d;
         d = d->hnext)
        if (strcmp(d->domain, domain) == 0)
            return d;
    return NULL;
}

struct dest *queue_dest(struct queue *q, const char *domain)
{
    struct dest *d = dest_find(q, domain);
    if (d)
        return d;
    if (q->ndest + 1 > q->hsize / 2)
        hash_grow(q);
    d = xcalloc(1, sizeof(*d));
    d->domain = xstrdup(domain);
    TAILQ_INIT(&d->ready);
    LIST_INIT(&d->conns);
    size_t at = hash_str(domain) & (q->hsize - 1);
    d->hnext = q->htab[at];
    q->htab[at] = d;
    q->ndest++;
    q->st.destinations = q->ndest;
    return d;
}

/* Look the destination's rows up again if the configuration changed. */
static void dest_refresh(const struct queue *q, struct dest *d)
{
    if (d->conf_gen == q->gen + 1)
        return;
    d->dc = conf_dest_find(q->conf, d->domain);
    d->route = conf_route_find(q->conf, d->domain);
    d->profile = conf_profile_find(q->conf, d->dc->bounce_profile);
    if (d->profile == NULL)
        d->profile = &q->conf->profiles[0];
    d->conf_gen = q->gen + 1;
}

const struct conf_dest *dest_conf(const struct queue *q, struct dest *d)
{
    dest_refresh(q, d);
    return d->dc;
}

const struct conf_route *dest_route(const struct queue *q, struct dest *d)
{
    dest_refresh(q, d);
    return d->route;
}

const struct conf_bounce_profile *queue_profile(const struct queue *q,
                                                struct dest *d)
{
    dest_refresh(q, d);
    return d->profile;
}

/* ---- the retry heap (min by next_try) ---- */

static void heap_swap(struct queue *q, size_t a, size_t b)
{
    struct job *t = q->heap[a];
    q->heap[a] = q->heap[b];
    q->heap[b] = t;
    q->heap[a]->heap_at = a;
    q->heap[b]->heap_at = b;
}

static void heap_up(struct queue *q, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (q->heap[p]->next_try <= q->heap[i]->next_try)
            break;
        heap_swap(q, i, p);
        i = p;
    }
}

static void heap_down(struct queue *q, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < q->nheap && q->heap[l]->next_try < q->heap[m]->next_try)
            m = l;
        if (r < q->nheap && q->heap[r]->next_try < q->heap[m]->next_try)
            m = r;
        if (m == i)
            return;
        heap_swap(q, i, m);
        i = m;
    }
}

static void heap_remove(struct queue *q, struct job *j)
{
    size_t i = j->heap_at;
    q->nheap--;
    if (i != q->nheap) {
        q->heap[i] = q->heap[q->nheap];
        q->heap[i]->heap_at = i;
        heap_down(q, i);
        heap_up(q, i);
    }
}

/* Arm the timer for the earliest waiting job. */
static void timer_arm(struct queue *q)
{
    evtimer_del(q->timer);
    if (q->nheap == 0 || q->stopping)
        return;
    int64_t wait = q->heap[0]->next_try - queue_now();
    struct timeval tv = {wait > 0 ? (time_t)wait : 0, wait > 0 ? 0 : 1000};
    evtimer_add(q->timer, &tv);
}

/* ---- jobs ---- */

struct job *job_new(struct queue *q, struct dest *d, uint64_t mid,
                    const unsigned *rids, size_t n)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->d = d;
    j->mid = mid;
    j->nrid = n;
    j->rids = xmalloc(n * sizeof(*rids) + 1);
    memcpy(j->rids, rids, n * sizeof(*rids));
    j->state = JOB_WAIT;
    j->heap_at = SIZE_MAX;
    d->active_rcpts += n;
    q->st.active_rcpts += n;
    return j;
}

/* Take a job out of the ready list or the heap (not an active one). */
void job_unlink(struct queue *q, struct job *j)
{
    j->rate_held = false;
    if (j->state == JOB_READY) {
        TAILQ_REMOVE(&j->d->ready, j, link);
        j->d->nready--;
    } else if (j->state == JOB_WAIT && j->heap_at != SIZE_MAX) {
        heap_remove(q, j);
        j->heap_at = SIZE_MAX;
    }
    j->state = JOB_WAIT;
}

void job_free(struct queue *q, struct job *j)
{
    job_unlink(q, j);
    j->d->active_rcpts -= j->nrid;
    q->st.active_rcpts -= j->nrid;
    free(j->rids);
    free(j);
}

void job_ready(struct queue *q, struct job *j)
{
    job_unlink(q, j);
    j->state = JOB_READY;
    TAILQ_INSERT_TAIL(&j->d->ready, j, link);
    j->d->nready++;
}

void job_wait(struct queue *q, struct job *j, int64_t when)
{
    job_unlink(q, j);
    j->state = JOB_WAIT;
    j->next_try = when;
    q->heap = xgrow(q->heap, &q->heapcap, q->nheap + 1, sizeof(*q->heap));
    j->heap_at = q->nheap;
    q->heap[q->nheap++] = j;
    heap_up(q, j->heap_at);
    if (q->heap[0] == j)
        timer_arm(q);
}

/* A job whose time has come: ready, or bounced if it is too old. */
static bool job_expired(struct queue *q, struct job *j, int64_t now);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct queue *q = arg;
    (void)fd;
    (void)what;
    int64_t now = queue_now();
    /* Destinations touched, kicked once at the end. */
    struct dest **touched = NULL;
    size_t nt = 0, cap = 0;
    while (q->nheap > 0 && q->heap[0]->next_try <= now) {
        struct job *j = q->heap[0];
        struct dest *d = j->d;
        if (j->bounce_status[0]) {
            /* Its DSN could not be queued before: try the bounce again,
             * never a delivery. */
            job_unlink(q, j);
            queue_bounce_all(q, j->mid, j->rids, j->nrid, j->bounce_status,
                             j->last_error, NULL);
            job_free(q, j);
            continue;
        }
        if (job_expired(q, j, now))
            continue;
        job_ready(q, j);
        touched = xgrow(touched, &cap, nt + 1, sizeof(*touched));
        touched[nt++] = d;
    }
    for (size_t i = 0; i < nt; i++)
        dest_kick(q, touched[i]);
    free(touched);
    timer_arm(q);
}

/* ---- recording outcomes ---- */

/* Write the states; "Message finished" when the message leaves. */
static void update_spool(struct queue *q, uint64_t mid,
                         const struct spool_rcpt_update *u, size_t n,
                         bool aborted)
{
    bool removed = false;
    int err = spool_rcpt_update(q->sp, mid, u, n, &removed);
    if (err && err != ENOENT)
        mlog_system(MLOG_WARNING,
                    "MID %llu cannot record recipient states: %s (they "
                    "may be delivered once more after a restart)",
                    (unsigned long long)mid, strerror(err));
    if (removed)
        mlog_mid_finished(mid, aborted);
}

void queue_update(struct queue *q, uint64_t mid,
                  const struct spool_rcpt_update *u, size_t n)
{
    update_spool(q, mid, u, n, false);
}

void queue_mark(struct queue *q, uint64_t mid, const unsigned *rids, size_t n,
                enum spool_rcpt_state state, bool aborted)
{
    struct spool_rcpt_update *u = xcalloc(n + 1, sizeof(*u));
    for (size_t i = 0; i < n; i++) {
        u[i].rid = rids[i];
        u[i].st.state = (uint8_t)state;
    }
    update_spool(q, mid, u, n, aborted);
    free(u);
}

void queue_delete_rcpts(struct queue *q, uint64_t mid, const unsigned *rids,
                        size_t n)
{
    mlog_mid_deleted(mid, rids, n, "deleted by administrator");
    q->st.deleted += n;
    queue_mark(q, mid, rids, n, SPOOL_RCPT_DELETED, true);
}

/* The domain part of an address, lower case, into out. */
void queue_addr_domain(const char *addr, const char *fallback, char *out,
                        size_t outlen)
{
    const char *at = strrchr(addr, '@');
    str_copy(out, outlen, at ? at + 1 : fallback);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    size_t n = strlen(out);
    if (n > 0 && out[n - 1] == '.')
        out[n - 1] = '\0'; /* "example.com." is example.com */
}

/* Retry interval after `attempts` failures: initial, doubling, capped. */
static int64_t retry_wait(const struct conf_bounce_profile *p,
                          unsigned attempts)
{
    int64_t w = p->initial_retry;
    for (unsigned i = 1; i < attempts && w < p->max_retry_timeout; i++)
        w *= 2;
    return w < p->max_retry_timeout ? w : p->max_retry_timeout;
}

/* Hard bounce with moat's own reason (no server reply). */
static void bounce_local(struct queue *q, uint64_t dcid, uint64_t mid,
                         const unsigned *rids, size_t n, const char *status,
                         const char *reason, const char *code,
                         const char *text, bool dns)
{
    for (size_t i = 0; i < n; i++)
        mlog_bounced(false, dcid, mid, rids[i], status, reason, code, text);
    q->st.hard_bounced += n;
    if (dns)
        q->st.dns_bounced += n;
    char why[QERR_MAX];
    str_printf(why, sizeof(why), "%s - %s", status, reason);
    queue_bounce_all(q, mid, rids, n, status, why, NULL);
}

static bool job_expired(struct queue *q, struct job *j, int64_t now)
{
    const struct spool_entry *e = spool_find(q->sp, j->mid);
    if (e == NULL) {
        job_free(q, j);
        return true;
    }
    const struct conf_bounce_profile *p = queue_profile(q, j->d);
    if (now < e->received + (int64_t)p->max_queue_lifetime)
        return false;
    struct dest *d = j->d;
    d->hard += j->nrid;
    q->st.expired += j->nrid;
    bounce_local(q, 0, j->mid, j->rids, j->nrid, "5.4.7",
                 "Delivery expired (message too old)", "000", j->last_error,
                 false);
    job_free(q, j);
    return true;
}

/* Soft failure of some recipients of a job: record attempts, then wait,
 * or bounce if retries or time ran out. Frees nothing; returns true if
 * the rids were bounced (the caller drops them). */
static bool soft_fail(struct queue *q, struct dest *d, uint64_t dcid,
                      uint64_t mid, const unsigned *rids, size_t n,
                      const char *status, const char *reason,
                      const char *code, const char *text, int64_t *next)
{
    const struct spool_entry *e = spool_find(q->sp, mid);
    if (e == NULL)
        return true;
    const struct conf_bounce_profile *p = queue_profile(q, d);
    int64_t now = queue_now();
    unsigned attempts = 0;
    for (size_t i = 0; i < n; i++)
        if (rids[i] < e->nrcpt && e->rstate[rids[i]].attempts > attempts)
            attempts = e->rstate[rids[i]].attempts;
    attempts++;
    int64_t when = now + retry_wait(p, attempts);
    str_printf(d->last_error, sizeof(d->last_error), "%s - %s ('%s', ['%s'])",
               status, reason, code, text);
    if (attempts > p->max_retries ||
        now >= e->received + (int64_t)p->max_queue_lifetime) {
        bool expired = attempts <= p->max_retries;
        for (size_t i = 0; i < n; i++)
            mlog_bounced(false, dcid, mid, rids[i], "5.4.7",
                         expired ? "Delivery expired (message too old)"
                                 : "Delivery retries exceeded",
                         code, text);
        d->hard += n;
        q->st.hard_bounced += n;
        q->st.expired += n;
        char why[QERR_MAX];
        str_printf(why, sizeof(why), "5.4.7 - %s (last error: %s - %s)",
                   expired ? "Delivery expired (message too old)"
                           : "Delivery retries exceeded",
                   status, reason);
        queue_bounce_all(q, mid, rids, n, "5.4.7", why, NULL);
        return true;
    }
    d->soft += n;
    q->st.soft_bounced += n;
    struct spool_rcpt_update *u = xcalloc(n, sizeof(*u));
    for (size_t i = 0; i < n; i++) {
        mlog_bounced(true, dcid, mid, rids[i], status, reason, code, text);
        u[i].rid = rids[i];
        u[i].st.state = SPOOL_RCPT_PENDING;
        u[i].st.attempts = attempts;
        u[i].st.next_try = when;
    }
    queue_update(q, mid, u, n);
    free(u);
    mlog_mid_pending(mid, rids, n, when);
    *next = when;
    return false;
}

/* Fail every ready job of a destination (DNS or connection failure with
 * nothing delivered). hard: bounce them all. */
static void dest_fail_ready(struct queue *q, struct dest *d, bool hard,
                            uint64_t dcid, const char *status,
                            const char *reason, const char *text,
                            struct job *only)
{
    struct job *j;
    int64_t hold = 0;
    while ((j = TAILQ_FIRST(&d->ready)) != NULL) {
        bool last = only != NULL;
        if (only && j != only)
            break;
        job_unlink(q, j);
        str_copy(j->last_error, sizeof(j->last_error), text);
        if (hard) {
            d->hard += j->nrid;
            bounce_local(q, dcid, j->mid, j->rids, j->nrid, status, reason,
                         "000", text, true);
            job_free(q, j);
            if (last)
                return;
            continue;
        }
        int64_t when = 0;
        if (soft_fail(q, d, dcid, j->mid, j->rids, j->nrid, status, reason,
                      "000", text, &when)) {
            job_free(q, j);
            if (last)
                return;
            continue;
        }
        if (hold == 0 || when < hold)
            hold = when;
        job_wait(q, j, when);
        if (last)
            return; /* one job charged; the destination is not down */
    }
    if (!hard && hold)
        d->down_until = hold;
}

/* ---- destination limits: recipient windows, per-MX-IP slots ---- */

/* Recipients window w may still take now (UINT64_MAX: no limit); *until
 * is when it ends. An expired window starts afresh. */
static uint64_t rate_left(const struct conf_dest *dc, struct rate_window *w,
                          int64_t now, int64_t *until)
{
    *until = now;
    if (!dc->rcpt_limited)
        return UINT64_MAX;
    if (w->start == 0 || now >= w->start + (int64_t)dc->recipient_period) {
        w->start = 0;
        w->count = 0;
        *until = now + dc->recipient_period;
        return dc->recipient_limit;
    }
    *until = w->start + dc->recipient_period;
    return w->count >= dc->recipient_limit ? 0
                                           : dc->recipient_limit - w->count;
}

static void rate_take(struct rate_window *w, int64_t now, uint64_t n)
{
    if (w->start == 0)
        w->start = now;
    w->count += n;
}

/* The window a connection's recipients count against. */
static struct rate_window *conn_window(struct conn *cn,
                                       const struct conf_dest *dc)
{
    if (dc->limits_per == DEST_PER_MX_IP && cn->slot >= 0)
        return &cn->d->ips[cn->slot].rw;
    return &cn->d->rw;
}

/* A job waits for the recipient limit's next window (no attempt is
 * charged). */
static void job_hold(struct queue *q, struct job *j, int64_t until)
{
    mlog_mid_pending(j->mid, j->rids, j->nrid, until);
    job_wait(q, j, until);
    j->rate_held = true;
}

/* Keep the first `keep` recipients in j; the rest become a new job,
 * returned (not queued anywhere yet). */
static struct job *job_split(struct queue *q, struct job *j, size_t keep)
{
    struct job *t = job_new(q, j->d, j->mid, j->rids + keep, j->nrid - keep);
    j->d->active_rcpts -= j->nrid - keep;
    q->st.active_rcpts -= j->nrid - keep;
    j->nrid = keep;
    return t;
}

/* The slot of an MX address (found, reused or added); -1 if the table
 * is full of addresses in use. */
static int slot_get(struct dest *d, const char *ip, int64_t now,
                    const struct conf_dest *dc)
{
    int spare = -1;
    for (size_t i = 0; i < d->nips; i++) {
        struct ip_slot *s = &d->ips[i];
        if (strcmp(s->ip, ip) == 0)
            return (int)i;
        if (spare < 0 && s->conns == 0 &&
            (s->rw.start == 0 ||
             now >= s->rw.start + (int64_t)dc->recipient_period))
            spare = (int)i;
    }
    if (spare < 0) {
        if (d->nips >= DEST_MAX_IP_SLOTS)
            return -1;
        d->ips = xrealloc(d->ips, (d->nips + 1) * sizeof(*d->ips));
        spare = (int)d->nips++;
    }
    struct ip_slot *s = &d->ips[spare];
    memset(s, 0, sizeof(*s));
    str_copy(s->ip, sizeof(s->ip), ip);
    return spare;
}

static void slot_release(struct conn *cn)
{
    if (cn->slot >= 0) {
        cn->d->ips[cn->slot].conns--;
        cn->slot = -1;
    }
}

/* ---- connections ---- */

static void conn_free(struct conn *cn)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    if (cn->starting) {
        cn->starting = false;
        d->nstarting--;
    }
    slot_release(cn);
    resolver_lookup_cancel(cn->tlsa_lk);
    if (cn->rq)
        resolve_cancel(cn->rq);
    if (cn->idle_ev)
        event_free(cn->idle_ev);
    if (cn->c)
        smtpc_free(cn->c);
    if (cn->job) {
        /* Shut down mid-delivery: the spool keeps the recipients. */
        job_free(q, cn->job);
    }
    spool_reader_close(cn->rd);
    free(cn->rcpt_ptrs);
    free(cn->nh);
    LIST_REMOVE(cn, link);
    d->nconns--;
    q->st.conns_out--;
    free(cn);
}

/* The job a connection was opened for goes back to the front of its
 * destination's ready list (returned; NULL if it had none). */
static struct job *conn_give_back(struct conn *cn)
{
    struct job *j = cn->job;
    cn->job = NULL;
    if (j) {
        job_ready(cn->q, j);
        TAILQ_REMOVE(&cn->d->ready, j, link);
        TAILQ_INSERT_HEAD(&cn->d->ready, j, link);
    }
    return j;
}

/* Close a connection and let the destination start another if needed.
 * With quit, the connection says QUIT first and keeps counting against
 * the destination's concurrency until the server has closed it. */
static void conn_done(struct conn *cn, bool quit)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    if (cn->c && cn->logged_new) {
        mlog_dcid_close(cn->dcid);
        cn->logged_new = false;
    }
    if (quit && cn->c) {
        cn->st = C_QUITTING;
        smtpc_quit(cn->c); /* calls on_closed, then frees itself */
        return;
    }
    conn_free(cn);
    dest_kick(q, d);
}

static void on_closed(void *arg, struct smtpc *c)
{
    struct conn *cn = arg;
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    (void)c;
    cn->c = NULL; /* smtpc frees itself */
    conn_free(cn);
    dest_kick(q, d);
}

static void conn_try_next(struct conn *cn);
static void conn_next(struct conn *cn);

/* Content for smtpc from the spool. */
static ssize_t read_content(void *arg, void *buf, size_t n)
{
    struct conn *cn = arg;
    return spool_reader_read(cn->rd, buf, n);
}

/* Classify a reply: 2, 4 or 5; 0 when there was none. */
static int reply_class(const struct smtpc_reply *r)
{
    return r->code ? r->code / 100 : 0;
}

/* A recipient's status line "5.1.1" and reason text for a reply. */
static void reply_status(const struct smtpc_reply *r, char *status,
                         size_t len)
{
    if (r->enh[0])
        str_copy(status, len, r->enh);
    else
        str_printf(status, len, "%d.0.0", r->code / 100);
}

static const char *status_reason(const char *status)
{
    static const struct {
        const char *sub;
        const char *text;
    } t[] = {
        {".1.0", "Unknown address error"},
        {".1.1", "Bad destination mailbox address"},
        {".1.2", "Bad destination host"},
        {".1.3", "Bad destination mailbox address syntax"},
        {".1.10", "Recipient address has null MX"},
        {".2.0", "Other or undefined mailbox status"},
        {".2.1", "Mailbox disabled, not accepting messages"},
        {".2.2", "Mailbox full"},
        {".2.3", "Message length exceeds administrative limit"},
        {".3.0", "Other or undefined mail system status"},
        {".3.1", "Mail system full"},
        {".3.4", "Message too big for system"},
        {".4.0", "Other network problem"},
        {".4.1", "No answer from host"},
        {".4.2", "Bad connection"},
        {".4.3", "Directory server failure"},
        {".4.4", "Unable to route"},
        {".4.7", "Delivery time expired"},
        {".5.0", "Other or undefined protocol status"},
        {".6.0", "Other or undefined media error"},
        {".7.0", "Other or undefined security status"},
        {".7.1", "Delivery not authorized, message refused"},
        {".7.4", "Security features not supported"},
        {".7.5", "Cryptographic failure"},
    };
    const char *dot = strchr(status, '.');
    for (size_t i = 0; dot && i < ARRAY_LEN(t); i++)
        if (strcmp(dot, t[i].sub) == 0)
            return t[i].text;
    return status[0] == '5' ? "Bounced by destination server"
                            : "Deferred by destination server";
}

/* The "IP: details" text for a failure without a reply. */
static const char *fail_details(enum smtpc_fail f)
{
    switch (f) {
    case SMTPC_TIMEOUT:
        return "timeout";
    case SMTPC_EOF:
        return "EOF";
    case SMTPC_CONNECT:
        return "connection refused";
    default:
        return smtpc_fail_name(f);
    }
}

/* The server's recipient limit, not a problem with the recipient:
 * 452 with X.5.3 (RFC 3463), or without an enhanced code, saying so. */
static bool too_many_rcpts(const struct smtpc_reply *r)
{
    if (r->code != 452)
        return false;
    if (r->enh[0])
        return strcmp(r->enh, "4.5.3") == 0;
    return strcasestr(r->text, "too many recipients") != NULL;
}

/* Same code, enhanced code and text: one group of recipients. */
static bool reply_same(const struct smtpc_reply *a, const struct smtpc_reply *b)
{
    return a == b || (a->code == b->code && strcmp(a->enh, b->enh) == 0 &&
                      strcmp(a->text, b->text) == 0);
}

/* Recipients of one transaction that failed temporarily with the same
 * reply (r->code 0: no reply, the connection failed). */
static void soft_group(struct conn *cn, uint64_t mid, const unsigned *rids,
                       size_t n, const struct smtpc_reply *r,
                       const struct smtpc_result *res, const char *host)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    char status[16], code[8], text[SMTPC_TEXT_MAX + 32];
    const char *reason;
    if (r->code) {
        reply_status(r, status, sizeof(status));
        str_printf(code, sizeof(code), "%d", r->code);
        str_printf(text, sizeof(text), "%s%s%s", r->enh, r->enh[0] ? " " : "",
                   r->text);
        reason = status_reason(status);
        if (r->code / 100 != 4) {
            /* A 2xx/3xx where it makes no sense, or a reply cut short:
             * the protocol went wrong; try again. */
            str_copy(status, sizeof(status), "4.5.0");
            reason = "Other or undefined protocol status";
        }
    } else {
        str_copy(status, sizeof(status), "4.4.2");
        str_copy(code, sizeof(code), "000");
        str_printf(text, sizeof(text), "%s: %s", host,
                   res->content_error ? "spool read error"
                                      : fail_details(res->fail));
        reason = "Bad connection";
    }
    int64_t when = 0;
    struct job *nj = job_new(q, d, mid, rids, n);
    str_copy(nj->last_error, sizeof(nj->last_error), text);
    if (soft_fail(q, d, cn->dcid, mid, rids, n, status, reason, code, text,
                  &when))
        job_free(q, nj);
    else
        job_wait(q, nj, when);
}

/* Apply a finished transaction to the connection's job. */
static void job_result(struct conn *cn, const struct smtpc_result *res)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    struct job *j = cn->job;
    cn->job = NULL;
    spool_reader_close(cn->rd);
    cn->rd = NULL;
    d->last_activity = queue_now();
    size_t n = j->nrid;
    unsigned *ok = xmalloc(n * sizeof(*ok) + 1);
    unsigned *hard = xmalloc(n * sizeof(*hard) + 1);
    unsigned *soft = xmalloc(n * sizeof(*soft) + 1);
    size_t nok = 0, nhard = 0, nsoft = 0;
    const struct smtpc_reply **why = xcalloc(n + 1, sizeof(*why));
    for (size_t i = 0; i < n; i++) {
        /* The first refusal decides; a recipient is delivered only when
         * its RCPT, a 354 to DATA, the whole content and a 2xx after the
         * final dot all happened. Anything else odd is temporary. */
        const struct smtpc_reply *r;
        int cls;
        if (res->mail.code && reply_class(&res->mail) != 2) {
            r = &res->mail;
            cls = reply_class(r);
        } else if (reply_class(&res->rcpt[i]) != 2) {
            r = &res->rcpt[i];
            cls = reply_class(r);
        } else if (res->data.code != 354) {
            r = &res->data; /* 5xx refuses; 2xx/3xx is a protocol error */
            cls = reply_class(r) == 5 ? 5 : 4;
        } else if (res->fail != SMTPC_OK || res->content_error) {
            r = &res->done; /* a reply before the dot, or the link died */
            cls = 4;
        } else {
            r = &res->done;
            cls = reply_class(r);
        }
        why[i] = r;
        if (cls == 2) {
            ok[nok++] = j->rids[i];
        } else if (cls == 5) {
            hard[nhard++] = j->rids[i];
        } else {
            soft[nsoft++] = j->rids[i];
        }
    }
    const struct spool_entry *e = spool_find(q->sp, j->mid);
    if (nok) {
        mlog_dcid_message_done(cn->dcid, j->mid, ok, nok);
        char resp[SMTPC_TEXT_MAX + 32];
        str_printf(resp, sizeof(resp), "%s%s%s", res->done.enh,
                   res->done.enh[0] ? " " : "", res->done.text);
        mlog_mid_response(j->mid, ok, nok, resp);
        d->delivered += nok;
        q->st.delivered += nok;
        d->conn_fail = 0; /* the destination works: lift the throttle */
        queue_mark(q, j->mid, ok, nok, SPOOL_RCPT_DELIVERED, false);
    }
    e = spool_find(q->sp, j->mid); /* the update may have removed it */
    const char *host = cn->nh && cn->ai > 0 ? cn->nh->addrs[cn->ai - 1].host
                                            : d->domain;
    if (nhard && e) {
        /* One DSN for every recipient this transaction bounced, each
         * with its own reply. */
        struct bounce_rcpt *br = xcalloc(nhard, sizeof(*br));
        char (*st)[16] = xcalloc(nhard, sizeof(*st));
        char (*rs)[QERR_MAX] = xcalloc(nhard, sizeof(*rs));
        char (*rp)[SMTPC_TEXT_MAX + 48] = xcalloc(nhard, sizeof(*rp));
        for (size_t i = 0; i < nhard; i++) {
            const struct smtpc_reply *r = NULL;
            for (size_t k = 0; k < n; k++)
                if (j->rids[k] == hard[i])
                    r = why[k];
            char code[8], text[SMTPC_TEXT_MAX + 32];
            reply_status(r, st[i], sizeof(st[i]));
            str_printf(code, sizeof(code), "%d", r->code);
            str_printf(text, sizeof(text), "%s%s%s", r->enh,
                       r->enh[0] ? " " : "", r->text);
            mlog_bounced(false, cn->dcid, j->mid, hard[i], st[i],
                         status_reason(st[i]), code, text);
            str_printf(rp[i], sizeof(rp[i]), "%d %s", r->code, text);
            str_printf(rs[i], sizeof(rs[i]), "%s - %s", st[i],
                       status_reason(st[i]));
            br[i] = (struct bounce_rcpt){hard[i], st[i], rs[i], rp[i]};
        }
        d->hard += nhard;
        q->st.hard_bounced += nhard;
        queue_bounce(q, j->mid, br, nhard, host);
        free(br);
        free(st);
        free(rs);
        free(rp);
    }
    if (nsoft && (j->kill_delete || j->kill_bounce)) {
        /* The administrator gave these up during the delivery. */
        if (j->kill_bounce) {
            for (size_t i = 0; i < nsoft; i++)
                mlog_bounced(false, cn->dcid, j->mid, soft[i], "5.3.0",
                             "Bounced by administrator", "000", "");
            d->hard += nsoft;
            q->st.hard_bounced += nsoft;
            queue_bounce_all(q, j->mid, soft, nsoft, "5.3.0",
                             "5.3.0 - Bounced by administrator", NULL);
        } else {
            queue_delete_rcpts(q, j->mid, soft, nsoft);
        }
        nsoft = 0;
    }
    /* Temporary failures, one group per distinct reply, so each Delayed:
     * line and last error names what the server said for that RID. */
    unsigned *grp = xmalloc(n * sizeof(*grp) + 1);
    for (size_t i = 0; i < nsoft && e; i++) {
        const struct smtpc_reply *r = NULL;
        for (size_t k = 0; k < n; k++)
            if (j->rids[k] == soft[i])
                r = why[k];
        if (r == NULL)
            continue; /* already taken by an earlier group */
        size_t ng = 0;
        for (size_t m = i; m < nsoft; m++)
            for (size_t k = 0; k < n; k++)
                if (j->rids[k] == soft[m] && why[k] && reply_same(why[k], r)) {
                    grp[ng++] = soft[m];
                    why[k] = NULL;
                }
        if (too_many_rcpts(r) && nok > 0 && res->fail == SMTPC_OK) {
            /* "Too many recipients" (RFC 5321 4.5.3.1.10) after others of
             * the same transaction went through: not a failure, the rest
             * go at once in another transaction (this connection takes it
             * next), with no attempt charged. */
            job_ready(q, job_new(q, d, j->mid, grp, ng));
            continue;
        }
        soft_group(cn, j->mid, grp, ng, r, res, host);
    }
    free(grp);
    free(why);
    free(ok);
    free(hard);
    free(soft);
    job_free(q, j);
}

static bool non_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

/* Does this job's envelope (sender, its recipients) need SMTPUTF8? A
 * message received with SMTPUTF8 but all-ASCII addresses goes without it
 * to a server that does not offer it (RFC 6531 3.4 leaves headers to the
 * receiver; Postfix does the same). */
static bool envelope_needs_utf8(const struct spool_entry *e,
                                const struct job *j)
{
    if (non_ascii(e->mail_from))
        return true;
    for (size_t i = 0; i < j->nrid; i++)
        if (non_ascii(e->rcpts[j->rids[i]]))
            return true;
    return false;
}

/* Bounce (or delete) a job that cannot be sent as it is. */
static void job_refuse(struct conn *cn, struct job *j, const char *status,
                       const char *reason)
{
    struct queue *q = cn->q;
    cn->d->hard += j->nrid;
    bounce_local(q, cn->dcid, j->mid, j->rids, j->nrid, status, reason, "000",
                 "", false);
    job_free(q, j);
}

static void on_idle_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct conn *cn = arg;
    (void)fd;
    (void)what;
    cn->parked = false;
    conn_done(cn, true);
}

/* Give the connection its next job; park it when there is none yet; say
 * QUIT when it has carried its share. */
static void conn_next(struct conn *cn)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    const struct conf_dest *dc = dest_conf(q, d);
    if (cn->parked) {
        cn->parked = false;
        evtimer_del(cn->idle_ev);
    }
    for (;;) {
        struct job *j = cn->job ? cn->job : TAILQ_FIRST(&d->ready);
        cn->job = NULL;
        if (cn->sent >= dc->messages_per_connection || q->stopping ||
            q->conf->delivery.suspended || cn->gen != q->gen) {
            /* Done, or the configuration changed (routes, limits): a new
             * connection picks up from here. */
            if (j && j->state == JOB_ACTIVE)
                job_ready(q, j);
            conn_done(cn, true);
            return;
        }
        if (j == NULL) {
            if (cn->idle_ev == NULL)
                cn->idle_ev = evtimer_new(q->base, on_idle_timeout, cn);
            struct timeval tv = {IDLE_CACHE_SECS, 0};
            cn->parked = true;
            cn->st = C_IDLE;
            evtimer_add(cn->idle_ev, &tv);
            return;
        }
        if (j->state != JOB_ACTIVE)
            job_unlink(q, j);
        const struct spool_entry *e = spool_find(q->sp, j->mid);
        if (e == NULL) {
            job_free(q, j);
            continue;
        }
        unsigned caps = smtpc_caps(cn->c);
        uint64_t max = smtpc_max_size(cn->c);
        if ((caps & SMTPC_CAP_SIZE) && max && e->size > max) {
            job_refuse(cn, j, "5.3.4", "Message too big for system");
            continue;
        }
        if ((e->flags & SPOOL_F_SMTPUTF8) && !(caps & SMTPC_CAP_SMTPUTF8) &&
            envelope_needs_utf8(e, j)) {
            job_refuse(cn, j, "5.6.7",
                       "Non-ASCII addresses not permitted for that recipient");
            continue;
        }
        if (e->flags & SPOOL_F_BINARYMIME) {
            job_refuse(cn, j, "5.6.3", "Conversion required but not supported");
            continue;
        }
        int64_t now = queue_now(), until;
        struct rate_window *w = conn_window(cn, dc);
        uint64_t left = rate_left(dc, w, now, &until);
        if (left == 0) {
            job_hold(q, j, until);
            continue;
        }
        if (left < j->nrid)
            job_hold(q, job_split(q, j, (size_t)left), until);
        int err = 0;
        cn->rd = spool_reader_open(q->sp, j->mid, &err);
        if (cn->rd == NULL) {
            mlog_system(MLOG_WARNING, "MID %llu cannot read spool file: %s",
                        (unsigned long long)j->mid, strerror(err));
            str_printf(j->last_error, sizeof(j->last_error),
                       "spool read error: %s", strerror(err));
            job_wait(q, j, queue_now() + queue_profile(q, d)->initial_retry);
            continue;
        }
        j->state = JOB_ACTIVE;
        cn->job = j;
        cn->st = C_BUSY;
        cn->sent++;
        cn->rcpt_ptrs = xrealloc(cn->rcpt_ptrs,
                                 (j->nrid + 1) * sizeof(*cn->rcpt_ptrs));
        for (size_t i = 0; i < j->nrid; i++)
            cn->rcpt_ptrs[i] = e->rcpts[j->rids[i]];
        struct smtpc_txn t = {
            .mail_from = e->mail_from,
            .body_8bit = (e->flags & SPOOL_F_8BITMIME) != 0,
            /* smtpc sends it only to a server that offers it; one that
             * does not gets an ASCII envelope without it (checked above). */
            .smtputf8 = (e->flags & SPOOL_F_SMTPUTF8) != 0,
            .size = e->size,
            .nrcpt = j->nrid,
            .rcpts = cn->rcpt_ptrs,
            .read = read_content,
            .read_arg = cn,
        };
        rate_take(w, now, j->nrid);
        mlog_dcid_delivery_start(cn->dcid, j->mid, j->rids, j->nrid);
        smtpc_send(cn->c, &t);
        return;
    }
}

static void on_closed(void *arg, struct smtpc *c);

static void on_connected(void *arg, struct smtpc *c)
{
    struct conn *cn = arg;
    const struct nexthop_addr *a = &cn->nh->addrs[cn->ai - 1];
    mlog_dcid_new(cn->dcid, smtpc_local_ip(c), a->ip, a->port);
    cn->logged_new = true;
}

/* What STARTTLS came to, for the log (before "Delivery start"). */
static void log_tls(struct conn *cn, struct smtpc *c)
{
    const struct smtpc_tls_info *t = smtpc_tls(c);
    if (t->active) {
        mlog_tls_client_time(t->seconds);
        if (t->checked && !t->verified)
            mlog_dcid_tls_unverified(cn->dcid, cn->d->domain,
                                     t->verify_error);
        if (t->dane && t->verified)
            mlog_dcid_dane_success(cn->dcid, t->peer_name, t->dane_usage);
        mlog_dcid_tls_success(cn->dcid, t->protocol, t->cipher,
                              cn->d->domain);
        cn->q->st.tls_out++;
    } else if (t->error[0]) {
        mlog_dcid_tls_failed(cn->dcid, t->error); /* preferred: plaintext */
    }
}

static void on_ready(void *arg, struct smtpc *c)
{
    struct conn *cn = arg;
    log_tls(cn, c);
    if (cn->starting) {
        cn->starting = false;
        cn->d->nstarting--;
    }
    cn->st = C_IDLE;
    cn->d->down_until = 0;
    cn->d->conn_fail = 0;
    conn_next(cn);
}

static void on_failed(void *arg, struct smtpc *c, enum smtpc_fail f,
                      const struct smtpc_reply *r)
{
    struct conn *cn = arg;
    const struct nexthop_addr *a = &cn->nh->addrs[cn->ai - 1];
    if (cn->st == C_IDLE) {
        /* Between transactions (e.g. a 421 while idle): just close. */
        conn_done(cn, false);
        return;
    }
    char reason[QERR_MAX];
    cn->err_status[0] = '\0';
    if (f == SMTPC_TLS) {
        const struct smtpc_tls_info *t = smtpc_tls(c);
        mlog_dcid_tls_failed(cn->dcid, t->error);
        if (t->required) {
            mlog_dcid_tls_required(cn->dcid, a->ip);
            str_printf(reason, sizeof(reason),
                       "TLS was required but could not be successfully "
                       "negotiated: %s",
                       t->error);
        } else {
            str_printf(reason, sizeof(reason), "TLS failed: %s", t->error);
        }
        str_copy(cn->err_status, sizeof(cn->err_status),
                 t->offered ? "4.7.5" : "4.7.4");
        cn->q->st.tls_out_failed++;
    } else {
        if (r->code)
            str_printf(reason, sizeof(reason), "%d %s%s%s", r->code, r->enh,
                       r->enh[0] ? " " : "", r->text);
        else
            str_copy(reason, sizeof(reason), smtpc_fail_name(f));
        mlog_connection_error(cn->dcid, cn->d->domain, a->ip, a->port,
                              fail_details(f), smtpc_local_ip(c), reason);
    }
    if (cn->logged_new) {
        mlog_dcid_close(cn->dcid); /* refused at the greeting or EHLO */
        cn->logged_new = false;
    }
    str_printf(cn->err, sizeof(cn->err), "%s[%s]:%u: %s", a->host, a->ip,
               a->port, reason);
    smtpc_free(cn->c);
    cn->c = NULL;
    conn_try_next(cn);
}

static void on_txn_done(void *arg, struct smtpc *c,
                        const struct smtpc_result *res)
{
    struct conn *cn = arg;
    (void)c;
    job_result(cn, res);
    if (res->fail != SMTPC_OK) {
        conn_done(cn, false);
        return;
    }
    cn->st = C_IDLE;
    conn_next(cn);
}

static const struct smtpc_callbacks conn_cbs = {
    .connected = on_connected,
    .ready = on_ready,
    .failed = on_failed,
    .txn_done = on_txn_done,
    .closed = on_closed,
};

/* Every address failed before a session was up. */
static void conn_all_failed(struct conn *cn)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    bool others = false;
    struct conn *o;
    LIST_FOREACH(o, &d->conns, link)
        others |= o != cn && (o->st == C_IDLE || o->st == C_BUSY);
    str_copy(d->last_error, sizeof(d->last_error), cn->err);
    d->conn_fail++;
    uint64_t dcid = cn->dcid;
    char err[QERR_MAX], status[8];
    str_copy(err, sizeof(err), cn->err);
    str_copy(status, sizeof(status), cn->err_status[0] ? cn->err_status
                                                       : "4.4.0");
    /* The job this connection was opened for takes the failure; with no
     * other connection working, so do the destination's other jobs. */
    struct job *j = conn_give_back(cn); /* to the front: fail it first */
    conn_free(cn);
    if (!others || j)
        dest_fail_ready(q, d, false, dcid, status, status_reason(status),
                        err, others ? j : NULL);
    dest_kick(q, d);
}

static void conn_try_next(struct conn *cn);
static void conn_connect(struct conn *cn, const struct nexthop_addr *a,
                         const struct dnsl_result *tlsa);
static bool wake_parked(struct dest *d);

/* Address a cannot be used (DANE): note why, try the next. */
static void conn_addr_failed(struct conn *cn, const struct nexthop_addr *a,
                             const char *why)
{
    mlog_dane_failed(a->host, a->ip, why);
    str_printf(cn->err, sizeof(cn->err), "%s[%s]:%u: %s", a->host, a->ip,
               a->port, why);
    str_copy(cn->err_status, sizeof(cn->err_status), "4.7.5");
    cn->q->st.tls_out_failed++;
    conn_try_next(cn);
}

static void on_tlsa(void *arg, const struct dnsl_result *res)
{
    struct conn *cn = arg;
    cn->tlsa_lk = NULL;
    const struct nexthop_addr *a = &cn->nh->addrs[cn->ai - 1];
    bool mandatory = dest_conf(cn->q, cn->d)->dane == DEST_DANE_MANDATORY;
    char why[QERR_MAX];
    if (res->status == DNSL_TEMP) {
        /* RFC 7672 2.2: a failed TLSA lookup makes the host unusable. */
        str_printf(why, sizeof(why), "TLSA lookup for _%u._tcp.%s failed: %s",
                   a->port, a->host,
                   res->bogus ? res->why_bogus : "ServFail or timeout");
        conn_addr_failed(cn, a, why);
        return;
    }
    if (res->status != DNSL_OK || !res->secure) {
        const char *what = res->status == DNSL_OK
                               ? "TLSA records not DNSSEC-validated"
                               : "no TLSA record";
        if (mandatory) {
            str_printf(why, sizeof(why), "DANE is mandatory: %s for %s", what,
                       a->host);
            conn_addr_failed(cn, a, why);
            return;
        }
        mlog_dane_unused(cn->d->domain, a->host, what);
        conn_connect(cn, a, NULL);
        return;
    }
    for (size_t i = 0; i < res->ntlsa; i++)
        if ((res->tlsa[i].usage == 2 || res->tlsa[i].usage == 3) &&
            res->tlsa[i].too_long) {
            /* Never authenticate less than the domain asks for. */
            str_printf(why, sizeof(why),
                       "a TLSA record of _%u._tcp.%s is too long to use "
                       "(over %d bytes)",
                       a->port, a->host, DNSL_TLSA_DATA_MAX);
            conn_addr_failed(cn, a, why);
            return;
        }
    conn_connect(cn, a, res);
}

/* DANE for address a: look up its TLSA records when the destination
 * asks for DANE and the MX and address records are DNSSEC-validated;
 * otherwise connect with the destination's TLS setting (opportunistic)
 * or not at all (mandatory). */
static void conn_dane(struct conn *cn, const struct nexthop_addr *a)
{
    struct queue *q = cn->q;
    const struct conf_dest *dc = dest_conf(q, cn->d);
    if (dc->dane == DEST_DANE_NONE || !cn->dane) {
        conn_connect(cn, a, NULL);
        return;
    }
    bool mandatory = dc->dane == DEST_DANE_MANDATORY;
    char why[QERR_MAX];
    const char *problem = NULL;
    if (q->res_sec == NULL) {
        str_printf(why, sizeof(why), "DANE unavailable: %s", q->dane_err);
        problem = why;
    } else if (!a->dnssec) {
        str_printf(why, sizeof(why),
                   "the MX or address records of %s are not DNSSEC-validated",
                   a->host);
        problem = why;
    }
    if (problem && mandatory) {
        char m[QERR_MAX];
        str_printf(m, sizeof(m), "DANE is mandatory: %s", problem);
        conn_addr_failed(cn, a, m);
        return;
    }
    if (problem) {
        mlog_dane_unused(cn->d->domain, a->host, problem);
        conn_connect(cn, a, NULL);
        return;
    }
    char name[NEXTHOP_HOST_MAX + 16];
    str_printf(name, sizeof(name), "_%u._tcp.%s", a->port, a->host);
    cn->st = C_RESOLVING;
    cn->tlsa_lk = resolver_lookup(q->res_sec, name, DNS_T_TLSA, on_tlsa, cn);
}

_Static_assert((int)DEST_TLS_REQUIRED_VERIFY_HOSTED ==
                   (int)SMTPC_TLS_REQUIRED_VERIFY_HOSTED &&
               (int)DEST_TLS_PREFERRED_VERIFY == (int)SMTPC_TLS_PREFERRED_VERIFY &&
               (int)DEST_TLS_NO == (int)SMTPC_TLS_NO,
               "destination tls values are smtpc's modes");

/* A next-hop name usable as a TLS name: a host name, not an address. */
static bool tls_host_name(const char *h)
{
    struct in6_addr a6;
    struct in_addr a4;
    return h[0] && inet_pton(AF_INET, h, &a4) != 1 &&
           inet_pton(AF_INET6, h, &a6) != 1;
}

/* The destination's TLS setting for a connection to address a: the
 * mode, the server name sent (SNI) and the names a verified certificate
 * may carry. Required - Verify (and Preferred - Verify) accept the MX or
 * route host name or the recipient domain; Required - Verify Hosted
 * Domains only the recipient domain. */
static void tls_settings(struct conn *cn, const struct nexthop_addr *a,
                         const struct dnsl_result *tlsa,
                         struct smtpc_tlsa *usable, struct smtpc_config *cfg)
{
    const struct conf_dest *dc = dest_conf(cn->q, cn->d);
    cfg->tls_ctx = cn->q->tls_ctx;
    cfg->tls_mode = (enum smtpc_tls_mode)dc->tls;
    if (tlsa && cfg->tls_ctx) {
        /* RFC 7672 3.1: DANE-TA(2) and DANE-EE(3) records are usable for
         * SMTP; PKIX-TA/EE (0, 1) are not. With TLSA records but none
         * usable, TLS is still mandatory, unauthenticated. */
        for (size_t i = 0; i < tlsa->ntlsa && cfg->ntlsa < SMTPC_TLSA_MAX;
             i++) {
            const struct dnsl_tlsa *t = &tlsa->tlsa[i];
            if ((t->usage != 2 && t->usage != 3) || t->selector > 1 ||
                t->mtype > 2 || t->too_long || t->len == 0)
                continue;
            usable[cfg->ntlsa++] = (struct smtpc_tlsa){
                t->usage, t->selector, t->mtype, t->len, t->data};
        }
        cfg->tlsa = usable;
        cfg->dane_name = a->host;
        if (cfg->tls_mode < SMTPC_TLS_REQUIRED ||
            cfg->tls_mode == SMTPC_TLS_PREFERRED_VERIFY)
            cfg->tls_mode = SMTPC_TLS_REQUIRED;
    }
    if (cfg->tls_ctx == NULL || cfg->tls_mode == SMTPC_TLS_NO)
        return;
    bool host_ok = tls_host_name(a->host);
    cfg->tls_sni = host_ok ? a->host : NULL;
    if (dc->tls != DEST_TLS_REQUIRED_VERIFY_HOSTED && host_ok &&
        strcasecmp(a->host, cn->d->domain) != 0)
        cfg->tls_names[cfg->tls_nnames++] = a->host;
    cfg->tls_names[cfg->tls_nnames++] = cn->d->domain;
}

static void conn_try_next(struct conn *cn)
{
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    const struct conf_dest *dc = dest_conf(q, d);
    slot_release(cn);
    const struct nexthop_addr *a = NULL;
    bool full = false;
    while (a == NULL && cn->ai < cn->nh->naddrs) {
        a = &cn->nh->addrs[cn->ai++];
        if (dc->limits_per != DEST_PER_MX_IP)
            break;
        int s = slot_get(d, a->ip, queue_now(), dc);
        if (s >= 0 && d->ips[s].conns >= dc->concurrency) {
            full = true; /* this address has its connections already */
            a = NULL;
            continue;
        }
        cn->slot = s;
        if (s >= 0)
            d->ips[s].conns++;
    }
    if (a == NULL && full) {
        /* Every address is at its limit (limits_per = mx_ip): not a
         * failure; the job goes back to wait for a connection. */
        conn_give_back(cn);
        conn_free(cn);
        wake_parked(d); /* an idle connection there may take it now */
        return;
    }
    if (a == NULL) {
        conn_all_failed(cn);
        return;
    }
    conn_dane(cn, a);
}

/* Connect to address a (tlsa: its DNSSEC-validated TLSA records, for
 * DANE). */
static void conn_connect(struct conn *cn, const struct nexthop_addr *a,
                         const struct dnsl_result *tlsa)
{
    struct queue *q = cn->q;
    cn->dcid = ids_next(q->ids, ID_DCID);
    cn->st = C_CONNECTING;
    const struct conf_delivery *dl = &q->conf->delivery;
    struct smtpc_config cfg = {
        .helo = dl->helo ? dl->helo : q->conf->hostname,
        .connect_timeout = dl->connect_timeout,
        .greeting_timeout = dl->greeting_timeout,
        .command_timeout = dl->command_timeout,
        .data_timeout = dl->data_timeout,
        .data_done_timeout = dl->data_done_timeout,
    };
    struct smtpc_tlsa usable[SMTPC_TLSA_MAX];
    tls_settings(cn, a, tlsa, usable, &cfg);
    cn->c = smtpc_connect(q->base, &cfg, (const struct sockaddr *)&a->ss,
                          a->sslen, &conn_cbs, cn);
    if (cn->c == NULL) {
        str_printf(cn->err, sizeof(cn->err), "%s: %s", a->ip, strerror(errno));
        conn_try_next(cn);
    }
}

static void on_resolved(void *arg, const struct nexthop *nh)
{
    struct conn *cn = arg;
    struct queue *q = cn->q;
    struct dest *d = cn->d;
    cn->rq = NULL;
    if (nh->status != NH_OK) {
        bool hard = nh->status == NH_HARD;
        mlog_dns_error(hard, nh->qname, nh->qtype, nh->what);
        char text[QERR_MAX];
        str_printf(text, sizeof(text), "DNS %s Error looking up %s (%s):  %s",
                   hard ? "Hard" : "Temporary", nh->qname, nh->qtype,
                   nh->what);
        str_copy(d->last_error, sizeof(d->last_error), text);
        struct job *j = conn_give_back(cn);
        conn_free(cn);
        /* With other connections working (the lookup worked for them), a
         * failed lookup charges only the job it was made for. */
        bool others = false;
        struct conn *o;
        LIST_FOREACH(o, &d->conns, link)
            others |= o->st == C_IDLE || o->st == C_BUSY;
        if (!others || j)
            dest_fail_ready(q, d, hard, 0, hard ? nh->enh : "4.4.3",
                            hard ? status_reason(nh->enh)
                                 : "Directory server failure",
                            text, others ? j : NULL);
        dest_kick(q, d);
        return;
    }
    d->naddrs = nh->naddrs;
    cn->nh = xmalloc(sizeof(*cn->nh));
    *cn->nh = *nh;
    cn->ai = 0;
    conn_try_next(cn);
}

static void conn_start(struct queue *q, struct dest *d)
{
    struct conn *cn = xcalloc(1, sizeof(*cn));
    cn->q = q;
    cn->d = d;
    cn->slot = -1;
    cn->gen = q->gen;
    /* Every new connection is opened for a job, reserved for it now: no
     * connection comes up to find its work taken by a faster one, and a
     * connection that fails has a job to charge the failure to. */
    struct job *j = TAILQ_FIRST(&d->ready);
    job_unlink(q, j);
    j->state = JOB_ACTIVE;
    cn->job = j;
    cn->st = C_RESOLVING;
    cn->starting = true;
    d->nstarting++;
    d->nconns++;
    q->st.conns_out++;
    LIST_INSERT_HEAD(&d->conns, cn, link);
    const struct conf_route *route = dest_route(q, d);
    const struct conf_dest *dc = dest_conf(q, d);
    if (route && route->kind != ROUTE_HOSTS)
        route = NULL; /* USEDNS (a /dev/null route never gets here) */
    /* DANE is for MX delivery only: the appliance does not enforce it
     * for destinations reached through an SMTP route. */
    cn->dane = dc->dane != DEST_DANE_NONE && route == NULL;
    struct resolver *res = cn->dane && q->res_sec ? q->res_sec : q->res;
    cn->rq = resolve_nexthop(res, d->domain, route, dc->ip_preference,
                             on_resolved, cn);
}

/* Run conn_next() on the first parked connection of d (it takes a job,
 * or closes); false if none is parked. The list may change inside, so
 * callers loop and rescan. */
static bool wake_parked(struct dest *d)
{
    struct conn *cn;
    LIST_FOREACH(cn, &d->conns, link)
        if (cn->parked)
            break;
    if (cn == NULL)
        return false;
    conn_next(cn);
    return true;
}

/* Recipients for a /dev/null route: logged and recorded as deleted. */
static void drop_devnull(struct queue *q, uint64_t mid, const unsigned *rids,
                         size_t n, const struct conf_route *route)
{
    mlog_mid_devnull(mid, rids, n, route->domain);
    q->st.deleted += n;
    queue_mark(q, mid, rids, n, SPOOL_RCPT_DELETED, false);
}

/* The destination's route is /dev/null now (a commit changed it): drop
 * its ready recipients instead of delivering them. */
static void dest_devnull(struct queue *q, struct dest *d,
                         const struct conf_route *route)
{
    struct job *j;
    while ((j = TAILQ_FIRST(&d->ready)) != NULL) {
        uint64_t mid = j->mid;
        size_t n = j->nrid;
        unsigned *rids = xmalloc(n * sizeof(*rids) + 1);
        memcpy(rids, j->rids, n * sizeof(*rids));
        job_free(q, j);
        drop_devnull(q, mid, rids, n, route);
        free(rids);
    }
}

void dest_kick(struct queue *q, struct dest *d)
{
    if (q->stopping || d->nready == 0 || q->conf->delivery.suspended)
        return;
    const struct conf_route *route = dest_route(q, d);
    if (route && route->kind == ROUTE_DEVNULL) {
        dest_devnull(q, d, route);
        return;
    }
    int64_t now = queue_now();
    if (d->down_until > now) {
        /* The destination failed a moment ago: hold new jobs until its
         * retry time instead of hammering it. */
        struct job *j;
        while ((j = TAILQ_FIRST(&d->ready)) != NULL && d->nconns == 0)
            job_wait(q, j, d->down_until);
        if (d->nconns == 0)
            return;
    }
    const struct conf_dest *dc = dest_conf(q, d);
    int64_t until;
    if ((dc->limits_per == DEST_PER_DOMAIN ||
         (dc->rcpt_limited && dc->recipient_limit == 0)) &&
        rate_left(dc, &d->rw, now, &until) == 0) {
        /* The recipient limit is spent: everything waits for the next
         * window (connections up stay until their idle time ends). */
        struct job *j;
        while ((j = TAILQ_FIRST(&d->ready)) != NULL)
            job_hold(q, j, until);
        return;
    }
    /* Parked connections first: they are up already. */
    while (d->nready > 0 && wake_parked(d))
        ;
    size_t limit = dc->concurrency;
    if (dc->limits_per == DEST_PER_MX_IP)
        limit *= d->naddrs ? d->naddrs : 1;
    if (d->conn_fail > 0)
        /* A connection failed (refused, 421 greeting, ...) and none has
         * worked since: the ones alive carry on, and otherwise one probe
         * at a time, instead of a reconnect storm. */
        limit = d->nconns > 0 ? d->nconns : 1;
    while (d->nready > 0 && d->nconns < limit)
        conn_start(q, d);
}

/* ---- the work queue ---- */

struct rcpt_dom {
    char domain[256];
    unsigned rid;
};

static int rcpt_dom_cmp(const void *a, const void *b)
{
    const struct rcpt_dom *x = a, *y = b;
    int c = strcmp(x->domain, y->domain);
    return c ? c : (x->rid < y->rid ? -1 : x->rid > y->rid);
}

/* Split a message's pending recipients into jobs, one destination each.
 * This is where message filters and mail policies will run. */
static void workq_submit(struct queue *q, const struct spool_entry *e)
{
    int64_t now = queue_now();
    struct rcpt_dom *rd = xcalloc(e->nrcpt + 1, sizeof(*rd));
    size_t n = 0;
    for (size_t i = 0; i < e->nrcpt; i++) {
        if (e->rstate[i].state != SPOOL_RCPT_PENDING)
            continue;
        queue_addr_domain(e->rcpts[i], q->conf->hostname, rd[n].domain,
                    sizeof(rd[n].domain));
        rd[n].rid = (unsigned)i;
        n++;
    }
    qsort(rd, n, sizeof(*rd), rcpt_dom_cmp);
    unsigned *rids = xmalloc((n + 1) * sizeof(*rids));
    size_t per = q->conf->delivery.max_rcpts_per_txn;
    for (size_t i = 0, k; i < n; i = k) {
        for (k = i; k < n && strcmp(rd[k].domain, rd[i].domain) == 0; k++)
            rids[k - i] = rd[k].rid;
        size_t cnt = k - i;
        struct dest *d = queue_dest(q, rd[i].domain);
        const struct conf_route *route = dest_route(q, d);
        if (route && route->kind == ROUTE_DEVNULL) {
            uint64_t mid = e->mid;
            drop_devnull(q, mid, rids, cnt, route);
            if (spool_find(q->sp, mid) == NULL)
                break; /* every recipient done: e is gone */
            continue;
        }
        for (size_t off = 0; off < cnt; off += per) {
            size_t m = cnt - off < per ? cnt - off : per;
            struct job *j = job_new(q, d, e->mid, rids + off, m);
            int64_t next = 0;
            for (size_t r = 0; r < m; r++)
                if (e->rstate[rids[off + r]].next_try > next)
                    next = e->rstate[rids[off + r]].next_try;
            const struct conf_bounce_profile *p = queue_profile(q, d);
            if (now >= e->received + (int64_t)p->max_queue_lifetime)
                job_wait(q, j, now); /* too old: the timer bounces it */
            else if (next > now)
                job_wait(q, j, next);
            else
                job_ready(q, j);
        }
        dest_kick(q, d);
    }
    free(rids);
    free(rd);
}

static void on_committed(void *arg, const struct spool_entry *e)
{
    struct queue *q = arg;
    if (!q->stopping)
        workq_submit(q, e);
}

struct mid_list {
    uint64_t *mids;
    size_t n;
};

static bool collect_mid(void *arg, const struct spool_entry *e)
{
    struct mid_list *ml = arg;
    ml->mids[ml->n++] = e->mid;
    return true;
}

/* ---- life cycle ---- */

struct queue *queue_new(struct event_base *base, struct moat_conf *conf,
                        struct spool *sp, struct ids *ids, char *err,
                        size_t errlen)
{
    struct queue *q = xcalloc(1, sizeof(*q));
    q->base = base;
    q->conf = conf_ref(conf);
    q->sp = sp;
    q->ids = ids;
    q->res = resolver_new(base, &conf->resolver, err, errlen);
    if (q->res != NULL) {
        /* DANE destinations resolve through a validating resolver; with
         * no trust anchor DANE is unavailable (said at each use). */
        q->res_sec = resolver_new_dnssec(base, &conf->resolver, q->dane_err,
                                         sizeof(q->dane_err));
        q->tls_ctx = tls_client_ctx_new(&conf->delivery, err, errlen);
        if (q->tls_ctx == NULL) {
            resolver_free(q->res);
            resolver_free(q->res_sec);
            q->res = NULL;
        }
    }
    if (q->res == NULL) {
        conf_unref(q->conf);
        free(q);
        return NULL;
    }
    q->timer = evtimer_new(base, on_timer, q);
    hash_grow(q);
    spool_set_notify(sp, on_committed, q);
    /* Recovered messages: the spool index changes while they are
     * submitted (a /dev/null route removes a message), so walk a copy of
     * the MIDs. */
    struct mid_list ml = {xmalloc((spool_count(sp) + 1) * sizeof(uint64_t)),
                          0};
    spool_foreach(sp, collect_mid, &ml);
    for (size_t i = 0; i < ml.n; i++) {
        const struct spool_entry *x = spool_find(sp, ml.mids[i]);
        if (x)
            workq_submit(q, x);
    }
    free(ml.mids);
    return q;
}

void queue_set_conf(struct queue *q, struct moat_conf *conf)
{
    struct moat_conf *old = q->conf;
    q->conf = conf_ref(conf);
    conf_unref(old);
    /* Connections opened under the old configuration (its routes, its
     * limits) finish what they carry and close; idle ones close now. */
    q->gen++;
    /* Jobs held by a recipient limit are weighed again under the new
     * one (a raised or removed limit sends them now; otherwise they are
     * held again). The heap changes as they leave: collect first. */
    size_t nheld = 0;
    struct job **held = xmalloc((q->nheap + 1) * sizeof(*held));
    for (size_t i = 0; i < q->nheap; i++)
        if (q->heap[i]->rate_held)
            held[nheld++] = q->heap[i];
    for (size_t i = 0; i < nheld; i++)
        job_ready(q, held[i]);
    free(held);
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i]; d; d = d->hnext) {
            while (wake_parked(d)) /* each sees the new generation: QUIT */
                ;
            dest_kick(q, d);
        }
}

void queue_stop(struct queue *q)
{
    if (q->stopping)
        return;
    q->stopping = true;
    /* The spool may outlive the queue's use of it; nothing new comes in.
     * (DSN commits still report to bounce.c through their callbacks.) */
    spool_set_notify(q->sp, NULL, NULL);
    evtimer_del(q->timer);
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i]; d; d = d->hnext)
            while (!LIST_EMPTY(&d->conns))
                conn_free(LIST_FIRST(&d->conns));
}

void queue_free(struct queue *q)
{
    if (q == NULL)
        return;
    queue_stop(q);
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i], *next; d; d = next) {
            next = d->hnext;
            struct job *j;
            while ((j = TAILQ_FIRST(&d->ready)) != NULL)
                job_free(q, j);
            free(d->ips);
            free(d->domain);
            free(d);
        }
    while (q->nheap > 0) {
        struct job *j = q->heap[0];
        heap_remove(q, j);
        j->heap_at = SIZE_MAX;
        free(j->rids);
        free(j);
    }
    free(q->heap);
    free(q->htab);
    event_free(q->timer);
    resolver_free(q->res);
    resolver_free(q->res_sec);
    SSL_CTX_free(q->tls_ctx);
    conf_unref(q->conf);
    free(q);
}

void queue_set_tls(struct queue *q, SSL_CTX *ctx)
{
    /* Connections under way hold their own references (SSL_new). */
    SSL_CTX_free(q->tls_ctx);
    q->tls_ctx = ctx;
}

struct resolver *queue_resolver(struct queue *q)
{
    return q->res;
}

void queue_get_stats(const struct queue *q, struct queue_stats *st)
{
    *st = q->st;
}
