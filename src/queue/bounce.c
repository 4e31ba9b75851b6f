/*
 * bounce.c - what happens to hard-bounced recipients: an RFC 3464 DSN to
 * the envelope sender, queued as a new message (MID logged as "generated
 * for bounce of MID ..."), or a logged double bounce when the sender is
 * null.
 *
 * Order matters for "never lose, at least once": the recipients are
 * marked bounced in the original's spool file only after the DSN itself
 * was committed. A crash in between sends the DSN twice, never zero
 * times. If the DSN cannot be queued (full disk), the recipients stay
 * pending and are bounced again at the next retry.
 */
#include "queue/dsn.h"
#include "queue/queue_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A DSN on its way to the spool; the original's rids wait for it. */
struct pending_dsn {
    struct queue *q;
    uint64_t mid; /* the original */
    size_t n;
    unsigned *rids;
    char status[16];      /* to bounce again if the DSN is not queued */
    char reason[QERR_MAX];
};

static void mark_bounced(struct queue *q, uint64_t mid, const unsigned *rids,
                         size_t n)
{
    queue_mark(q, mid, rids, n, SPOOL_RCPT_BOUNCED, false);
}

static void on_dsn_committed(void *arg, uint64_t newmid, int err)
{
    struct pending_dsn *p = arg;
    struct queue *q = p->q;
    if (err == 0) {
        mlog_mid_queued(newmid);
        q->st.bounces_sent++;
        mark_bounced(q, p->mid, p->rids, p->n);
    } else {
        mlog_system(MLOG_WARNING,
                    "MID %llu: bounce for MID %llu not queued: %s; the "
                    "recipients stay queued and bounce at the next retry",
                    (unsigned long long)newmid, (unsigned long long)p->mid,
                    strerror(err));
        const struct spool_entry *e = spool_find(q->sp, p->mid);
        if (e && p->n > 0) {
            /* A job that bounces again when it comes due (bounce_status
             * set), never one that is delivered. */
            char dom[256];
            queue_addr_domain(e->rcpts[p->rids[0]], q->conf->hostname, dom,
                              sizeof(dom));
            struct dest *d = queue_dest(q, dom);
            struct job *j = job_new(q, d, p->mid, p->rids, p->n);
            str_copy(j->bounce_status, sizeof(j->bounce_status), p->status);
            str_copy(j->last_error, sizeof(j->last_error), p->reason);
            job_wait(q, j, queue_now() + queue_profile(q, d)->initial_retry);
        }
    }
    free(p->rids);
    free(p);
}

/* "5.1.1 - Bad destination mailbox address" without its "5.1.1 - ",
 * for the log line that prints the status itself. */
static const char *bare_reason(const char *status, const char *reason)
{
    size_t n = strlen(status);
    if (strncmp(reason, status, n) == 0 && strncmp(reason + n, " - ", 3) == 0)
        return reason + n + 3;
    return reason;
}

/* Read the first `max` bytes of a message's content. */
static char *read_original(struct queue *q, uint64_t mid, size_t max,
                           size_t *len)
{
    int err = 0;
    *len = 0;
    struct spool_reader *r = spool_reader_open(q->sp, mid, &err);
    if (r == NULL)
        return NULL;
    char *buf = xmalloc(max + 1);
    while (*len < max) {
        ssize_t k = spool_reader_read(r, buf + *len, max - *len);
        if (k <= 0)
            break;
        *len += (size_t)k;
    }
    spool_reader_close(r);
    return buf;
}

void queue_bounce_all(struct queue *q, uint64_t mid, const unsigned *rids,
                      size_t n, const char *status, const char *reason,
                      const char *reply)
{
    struct bounce_rcpt *br = xcalloc(n + 1, sizeof(*br));
    for (size_t i = 0; i < n; i++)
        br[i] = (struct bounce_rcpt){rids[i], status, reason, reply};
    queue_bounce(q, mid, br, n, NULL);
    free(br);
}

void queue_bounce(struct queue *q, uint64_t mid, const struct bounce_rcpt *br,
                  size_t n, const char *remote)
{
    const struct spool_entry *e = spool_find(q->sp, mid);
    if (e == NULL || n == 0)
        return;
    unsigned *rids = xmalloc(n * sizeof(*rids));
    for (size_t i = 0; i < n; i++)
        rids[i] = br[i].rid;
    char dom[256];
    queue_addr_domain(e->rcpts[rids[0]], q->conf->hostname, dom, sizeof(dom));
    const struct conf_bounce_profile *prof =
        queue_profile(q, queue_dest(q, dom));
    if (e->mail_from[0] == '\0') {
        /* Never bounce a bounce. */
        for (size_t i = 0; i < n; i++)
            mlog_double_bounce(mid, rids[i], br[i].status,
                               bare_reason(br[i].status, br[i].reason));
        q->st.double_bounces += n;
        mark_bounced(q, mid, rids, n);
        free(rids);
        return;
    }
    if (!prof->send_bounces) {
        mark_bounced(q, mid, rids, n);
        free(rids);
        return;
    }
    size_t olen = 0;
    size_t max = (size_t)prof->max_bounce_copy;
    char *orig = read_original(q, mid, max + 1, &olen);
    struct dsn_rcpt *dr = xcalloc(n, sizeof(*dr));
    int64_t now = queue_now();
    for (size_t i = 0; i < n; i++) {
        dr[i].addr = e->rcpts[rids[i]];
        dr[i].status = br[i].status;
        dr[i].remote_mta = br[i].reply ? remote : NULL;
        dr[i].reply = br[i].reply;
        dr[i].reason = br[i].reply ? NULL : br[i].reason;
        dr[i].last_attempt = now;
    }
    uint64_t newmid = ids_next(q->ids, ID_MID);
    char msgid[600];
    str_printf(msgid, sizeof(msgid), "<%llu.bounce.%llu@%s>",
               (unsigned long long)newmid, (unsigned long long)mid,
               q->conf->hostname);
    char postmaster[300];
    str_printf(postmaster, sizeof(postmaster), "MAILER-DAEMON@%s",
               q->conf->hostname);
    struct dsn_input in = {
        .kind = DSN_FAILURE,
        .reporting_mta = q->conf->hostname,
        .postmaster = postmaster,
        .message_id = msgid,
        .now = now,
        .subject = prof->bounce_subject,
        .mid = mid,
        .sender = e->mail_from,
        .arrival = e->received,
        .client_ip = e->client_ip[0] ? e->client_ip : NULL,
        .helo = e->helo[0] ? e->helo : NULL,
        .eightbit = (e->flags & (SPOOL_F_8BITMIME | SPOOL_F_BINARYMIME)) != 0,
        .utf8 = (e->flags & SPOOL_F_SMTPUTF8) != 0,
        .orig = orig,
        .orig_len = orig ? olen : 0,
        .orig_size = orig ? e->size : 0,
        .max_copy = max,
        .rcpts = dr,
        .nrcpt = n,
    };
    struct buf msg = {0};
    char err[256];
    bool built = dsn_build(&in, &msg, err, sizeof(err));
    free(orig);
    free(dr);
    if (!built) {
        /* The report cannot be made (e.g. an unusable sender address):
         * the sender cannot be told, as with a null sender. */
        mlog_system(MLOG_WARNING, "MID %llu: no bounce possible: %s",
                    (unsigned long long)mid, err);
        for (size_t i = 0; i < n; i++)
            mlog_double_bounce(mid, rids[i], br[i].status,
                               bare_reason(br[i].status, br[i].reason));
        q->st.double_bounces += n;
        mark_bounced(q, mid, rids, n);
        buf_free(&msg);
        free(rids);
        return;
    }
    const char *to[1] = {e->mail_from};
    struct spool_envelope env = {
        .mid = newmid,
        .icid = 0,
        .received = now,
        .listener = "",
        .client_ip = "",
        .helo = "",
        .mail_from = "",
        .flags = e->flags & (SPOOL_F_8BITMIME | SPOOL_F_SMTPUTF8),
        .nrcpt = 1,
        .rcpts = to,
    };
    struct pending_dsn *p = xcalloc(1, sizeof(*p));
    p->q = q;
    p->mid = mid;
    p->n = n;
    p->rids = rids; /* the pending DSN owns them now */
    str_copy(p->status, sizeof(p->status), br[0].status);
    str_copy(p->reason, sizeof(p->reason), br[0].reason);
    int e2 = 0;
    struct spool_msg *m = spool_msg_begin(q->sp, &env, &e2);
    if (m != NULL && (e2 = spool_msg_write(m, msg.data, msg.len)) != 0) {
        spool_msg_abort(m);
        m = NULL;
    }
    if (m == NULL) {
        buf_free(&msg);
        on_dsn_committed(p, newmid, e2 ? e2 : EIO);
        return;
    }
    /* Logged as a message received on ICID 0, once it is written. */
    mlog_mid_bounce_of(newmid, mid);
    mlog_mid_start(newmid, 0);
    mlog_mid_from(newmid, 0, "");
    mlog_mid_rcpt(newmid, 0, 0, e->mail_from);
    mlog_mid_message_id(newmid, msgid);
    mlog_mid_subject(newmid, prof->bounce_subject);
    mlog_mid_ready(newmid, msg.len, "");
    buf_free(&msg);
    spool_msg_commit(m, on_dsn_committed, p);
}
