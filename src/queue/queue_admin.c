/*
 * queue_admin.c - the queue's moatctl commands: queue list|show|flush|
 * delete|bounce|retry, tophosts, hoststatus. Output shapes follow the
 * appliance's CLI where it is known (tophosts, hoststatus).
 */
#include "queue/queue_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static void fmt_time(char *out, size_t len, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(out, len, "%a %b %e %H:%M:%S %Y", &tm);
}

/* "1,234,567" */
static void thousands(uint64_t v, char *out, size_t len)
{
    char tmp[32];
    str_printf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    size_t n = strlen(tmp), k = 0;
    for (size_t i = 0; i < n && k + 2 < len; i++) {
        out[k++] = tmp[i];
        if ((n - i - 1) % 3 == 0 && i + 1 < n)
            out[k++] = ',';
    }
    out[k] = '\0';
}

/* Parse a MID argument; false (with a message) if it is not one. */
static bool arg_mid(const char *args, uint64_t *mid, struct buf *out)
{
    while (*args == ' ')
        args++;
    size_t n = strspn(args, "0123456789");
    if (n == 0 || args[n + strspn(args + n, " ")] != '\0' ||
        !parse_u64(args, n, mid)) {
        buf_puts(out, "usage: MID (a message ID, as `moatctl queue list` "
                      "shows)\n");
        return false;
    }
    return true;
}

/* A MID argument naming a message in the queue; false (with a message)
 * otherwise. */
static bool arg_queued_mid(struct queue *q, const char *args, uint64_t *mid,
                           struct buf *out)
{
    if (!arg_mid(args, mid, out))
        return false;
    if (spool_find(q->sp, *mid) == NULL) {
        buf_printf(out, "MID %llu is not in the queue\n",
                   (unsigned long long)*mid);
        return false;
    }
    return true;
}

/* Call fn on every job of mid that is not being delivered, and count
 * the active ones. fn may free the job. */
static size_t each_job(struct queue *q, uint64_t mid,
                       void (*fn)(struct queue *q, struct job *j, void *arg),
                       void *arg, size_t *active)
{
    size_t n = 0;
    *active = 0;
    struct job **list = NULL;
    size_t cnt = 0, cap = 0;
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i]; d; d = d->hnext) {
            struct job *j;
            TAILQ_FOREACH(j, &d->ready, link)
            if (j->mid == mid) {
                list = xgrow(list, &cap, cnt + 1, sizeof(*list));
                list[cnt++] = j;
            }
            struct conn *cn;
            LIST_FOREACH(cn, &d->conns, link)
            if (cn->job && cn->job->mid == mid) {
                (*active)++;
                if (fn)
                    fn(q, cn->job, arg); /* sets a flag only */
            }
        }
    for (size_t i = 0; i < q->nheap; i++)
        if (q->heap[i]->mid == mid) {
            list = xgrow(list, &cap, cnt + 1, sizeof(*list));
            list[cnt++] = q->heap[i];
        }
    for (size_t i = 0; i < cnt; i++, n++)
        if (fn)
            fn(q, list[i], arg);
    free(list);
    return n;
}

/* ---- queue list / show ---- */

static bool list_line(void *arg, const struct spool_entry *e)
{
    struct buf *out = arg;
    char when[64];
    fmt_time(when, sizeof(when), e->received);
    buf_printf(out, "%-10llu %10llu  %s  %5zu  <",
               (unsigned long long)e->mid, (unsigned long long)e->size, when,
               e->nrcpt - e->ndone);
    buf_put_escaped(out, e->mail_from, strlen(e->mail_from), 0);
    buf_puts(out, ">\n");
    return true;
}

bool queue_cmd_list(struct queue *q, const char *args, struct buf *out)
{
    (void)args;
    buf_printf(out, "%-10s %10s  %-24s  %5s  %s\n", "MID", "Bytes",
               "Received", "Rcpts", "Sender");
    spool_foreach(q->sp, list_line, out);
    buf_printf(out, "%zu message(s), %llu bytes\n", spool_count(q->sp),
               (unsigned long long)spool_bytes(q->sp));
    return true;
}

/* Where a recipient's job is: "active DCID n", "ready", "retry at ...". */
static void rcpt_where(struct queue *q, uint64_t mid, unsigned rid, char *out,
                       size_t len, const char **err)
{
    *err = NULL;
    str_copy(out, len, "queued");
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i]; d; d = d->hnext) {
            struct job *j;
            TAILQ_FOREACH(j, &d->ready, link)
            for (size_t k = 0; k < j->nrid; k++)
                if (j->mid == mid && j->rids[k] == rid) {
                    str_copy(out, len, "ready");
                    *err = j->last_error;
                }
            struct conn *cn;
            LIST_FOREACH(cn, &d->conns, link)
            if (cn->job && cn->job->mid == mid)
                for (size_t k = 0; k < cn->job->nrid; k++)
                    if (cn->job->rids[k] == rid)
                        str_printf(out, len, "delivering (DCID %llu)",
                                   (unsigned long long)cn->dcid);
        }
    for (size_t i = 0; i < q->nheap; i++) {
        struct job *j = q->heap[i];
        for (size_t k = 0; k < j->nrid; k++)
            if (j->mid == mid && j->rids[k] == rid) {
                char when[64];
                fmt_time(when, sizeof(when), j->next_try);
                str_printf(out, len, "retry at %s", when);
                *err = j->last_error;
            }
    }
}

bool queue_cmd_show(struct queue *q, const char *args, struct buf *out)
{
    uint64_t mid;
    if (!arg_queued_mid(q, args, &mid, out))
        return false;
    const struct spool_entry *e = spool_find(q->sp, mid);
    char when[64];
    fmt_time(when, sizeof(when), e->received);
    buf_printf(out, "MID:        %llu\n", (unsigned long long)e->mid);
    buf_printf(out, "ICID:       %llu\n", (unsigned long long)e->icid);
    buf_printf(out, "Received:   %s\n", when);
    buf_printf(out, "Size:       %llu bytes\n", (unsigned long long)e->size);
    buf_printf(out, "Listener:   %s\n", e->listener);
    buf_printf(out, "Client:     %s (HELO ", e->client_ip);
    buf_put_escaped(out, e->helo, strlen(e->helo), 0);
    buf_puts(out, ")\nSender:     <");
    buf_put_escaped(out, e->mail_from, strlen(e->mail_from), 0);
    buf_puts(out, ">\nRecipients:\n");
    static const char *const states[] = {"pending", "delivered", "bounced",
                                         "deleted"};
    for (size_t i = 0; i < e->nrcpt; i++) {
        const struct spool_rcpt *st = &e->rstate[i];
        buf_printf(out, "  RID %zu <", i);
        buf_put_escaped(out, e->rcpts[i], strlen(e->rcpts[i]), 0);
        buf_printf(out, "> %s", states[st->state]);
        if (st->state == SPOOL_RCPT_PENDING) {
            char where[96];
            const char *err;
            rcpt_where(q, mid, (unsigned)i, where, sizeof(where), &err);
            buf_printf(out, ", %s, %u failed attempt(s)", where, st->attempts);
            if (err && err[0]) {
                buf_puts(out, ", last error: ");
                buf_put_escaped(out, err, strlen(err), 0);
            }
        }
        buf_putc(out, '\n');
    }
    return true;
}

/* ---- flush / retry ---- */

struct kick_set {
    struct dest **d;
    size_t n, cap;
};

static void make_ready(struct queue *q, struct job *j, void *arg)
{
    struct kick_set *ks = arg;
    if (j->state != JOB_WAIT)
        return;
    if (j->bounce_status[0]) {
        job_wait(q, j, queue_now()); /* the timer bounces it */
        return;
    }
    j->d->down_until = 0;
    job_ready(q, j);
    ks->d = xgrow(ks->d, &ks->cap, ks->n + 1, sizeof(*ks->d));
    ks->d[ks->n++] = j->d;
}

static void kick_all(struct queue *q, struct kick_set *ks)
{
    for (size_t i = 0; i < ks->n; i++)
        dest_kick(q, ks->d[i]);
    free(ks->d);
}

bool queue_cmd_flush(struct queue *q, const char *args, struct buf *out)
{
    char dom[256] = "";
    while (*args == ' ')
        args++;
    str_copy(dom, sizeof(dom), args);
    for (char *p = dom; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    size_t n = strlen(dom);
    while (n > 0 && dom[n - 1] == ' ')
        dom[--n] = '\0';
    struct kick_set ks = {0};
    /* Walk a copy: making a job ready changes the heap. */
    struct job **w = xmalloc((q->nheap + 1) * sizeof(*w));
    size_t nw = q->nheap;
    if (nw > 0)
        memcpy(w, q->heap, nw * sizeof(*w));
    size_t moved = 0;
    for (size_t i = 0; i < nw; i++)
        if (dom[0] == '\0' || strcmp(w[i]->d->domain, dom) == 0) {
            moved += w[i]->nrid;
            make_ready(q, w[i], &ks);
        }
    free(w);
    kick_all(q, &ks);
    buf_printf(out, "%zu recipient(s)%s%s%s scheduled for delivery now\n",
               moved, dom[0] ? " for " : "", dom, "");
    return true;
}

bool queue_cmd_retry(struct queue *q, const char *args, struct buf *out)
{
    uint64_t mid;
    if (!arg_queued_mid(q, args, &mid, out))
        return false;
    struct kick_set ks = {0};
    size_t active;
    each_job(q, mid, make_ready, &ks, &active);
    size_t n = ks.n;
    kick_all(q, &ks);
    buf_printf(out, "MID %llu: %zu job(s) scheduled for delivery now%s\n",
               (unsigned long long)mid, n,
               active ? " (one is being delivered)" : "");
    return true;
}

/* ---- delete / bounce ---- */

struct kill_ctx {
    bool bounce;
    size_t rcpts;
};

static void kill_job(struct queue *q, struct job *j, void *arg)
{
    struct kill_ctx *k = arg;
    if (j->state == JOB_ACTIVE) {
        /* Reserved by a connection still being set up: take it back and
         * act now; nothing of it is on the wire yet. */
        struct conn *cn;
        LIST_FOREACH(cn, &j->d->conns, link)
            if (cn->job == j && cn->st != C_BUSY) {
                cn->job = NULL;
                j->state = JOB_WAIT;
                break;
            }
    }
    if (j->state == JOB_ACTIVE) {
        /* Decided when the transaction in flight ends. */
        if (k->bounce)
            j->kill_bounce = true;
        else
            j->kill_delete = true;
        return;
    }
    k->rcpts += j->nrid;
    uint64_t mid = j->mid;
    if (k->bounce) {
        for (size_t i = 0; i < j->nrid; i++)
            mlog_bounced(false, 0, mid, j->rids[i], "5.3.0",
                         "Bounced by administrator", "000", "");
        j->d->hard += j->nrid;
        q->st.hard_bounced += j->nrid;
        queue_bounce_all(q, mid, j->rids, j->nrid, "5.3.0",
                         "5.3.0 - Bounced by administrator", NULL);
        job_free(q, j);
        return;
    }
    size_t n = j->nrid;
    unsigned *rids = xmalloc(n * sizeof(*rids) + 1);
    memcpy(rids, j->rids, n * sizeof(*rids));
    job_free(q, j);
    queue_delete_rcpts(q, mid, rids, n);
    free(rids);
}

static bool kill_cmd(struct queue *q, const char *args, struct buf *out,
                     bool bounce)
{
    uint64_t mid;
    if (!arg_queued_mid(q, args, &mid, out))
        return false;
    struct kill_ctx k = {bounce, 0};
    size_t active;
    each_job(q, mid, kill_job, &k, &active);
    buf_printf(out, "MID %llu: %zu recipient(s) %s", (unsigned long long)mid,
               k.rcpts, bounce ? "bounced" : "deleted");
    if (active)
        buf_printf(out, "; %zu delivery in progress: its recipients are %s "
                        "if it does not succeed",
                   active, bounce ? "bounced" : "deleted");
    buf_putc(out, '\n');
    return true;
}

bool queue_cmd_delete(struct queue *q, const char *args, struct buf *out)
{
    return kill_cmd(q, args, out, false);
}

bool queue_cmd_bounce(struct queue *q, const char *args, struct buf *out)
{
    return kill_cmd(q, args, out, true);
}

/* ---- tophosts / hoststatus ---- */

static const char *sort_keys[] = {"active", "connections", "delivered",
                                  "hard", "soft", NULL};

static uint64_t sort_value(const struct dest *d, int key)
{
    switch (key) {
    case 1:
        return d->nconns;
    case 2:
        return d->delivered;
    case 3:
        return d->hard;
    case 4:
        return d->soft;
    default:
        return d->active_rcpts;
    }
}

static int g_sort_key;

static int dest_cmp(const void *a, const void *b)
{
    const struct dest *x = *(struct dest *const *)a;
    const struct dest *y = *(struct dest *const *)b;
    uint64_t vx = sort_value(x, g_sort_key), vy = sort_value(y, g_sort_key);
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return strcmp(x->domain, y->domain);
}

bool queue_cmd_tophosts(struct queue *q, const char *args, struct buf *out)
{
    while (*args == ' ')
        args++;
    int key = 0;
    if (*args) {
        key = -1;
        for (int i = 0; sort_keys[i]; i++)
            if (strncasecmp(args, sort_keys[i], strlen(args)) == 0)
                key = i;
        if (key < 0) {
            buf_puts(out, "sort by one of: active, connections, delivered, "
                          "hard, soft\n");
            return false;
        }
    }
    struct dest **v = xmalloc((q->ndest + 1) * sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < q->hsize; i++)
        for (struct dest *d = q->htab[i]; d; d = d->hnext)
            v[n++] = d;
    g_sort_key = key;
    qsort(v, n, sizeof(*v), dest_cmp);
    char now[64];
    fmt_time(now, sizeof(now), queue_now());
    buf_printf(out, "Status as of:        %s\n", now);
    buf_printf(out, "Hosts sorted by %s\n\n", sort_keys[key]);
    buf_printf(out, "%4s %-32s %13s %10s %13s %12s %12s\n", "#",
               "Recipient Host", "Active Recip.", "Conn. Out", "Deliv. Recip.",
               "Soft Bounced", "Hard Bounced");
    for (size_t i = 0; i < n && i < 200; i++) {
        char a[32], c[32], dl[32], s[32], h[32];
        thousands(v[i]->active_rcpts, a, sizeof(a));
        thousands(v[i]->nconns, c, sizeof(c));
        thousands(v[i]->delivered, dl, sizeof(dl));
        thousands(v[i]->soft, s, sizeof(s));
        thousands(v[i]->hard, h, sizeof(h));
        buf_printf(out, "%4zu %-32s %13s %10s %13s %12s %12s\n", i + 1,
                   v[i]->domain, a, c, dl, s, h);
    }
    free(v);
    return true;
}

bool queue_cmd_hoststatus(struct queue *q, const char *args, struct buf *out)
{
    char dom[256];
    while (*args == ' ')
        args++;
    str_copy(dom, sizeof(dom), args);
    for (char *p = dom; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (dom[0] == '\0') {
        buf_puts(out, "usage: hoststatus DOMAIN\n");
        return false;
    }
    struct dest *d = NULL;
    for (size_t i = 0; i < q->hsize && !d; i++)
        for (struct dest *x = q->htab[i]; x; x = x->hnext)
            if (strcmp(x->domain, dom) == 0)
                d = x;
    if (d == NULL) {
        buf_printf(out, "No record of host: %s\n", dom);
        return false;
    }
    const struct conf_dest *dc = dest_conf(q, d);
    const struct conf_bounce_profile *p = queue_profile(q, d);
    const struct conf_route *r = dest_route(q, d);
    char now[64], last[64] = "Never", next[64] = "None";
    fmt_time(now, sizeof(now), queue_now());
    if (d->last_activity)
        fmt_time(last, sizeof(last), d->last_activity);
    int64_t nt = 0;
    size_t waiting = 0;
    for (size_t i = 0; i < q->nheap; i++)
        if (q->heap[i]->d == d) {
            waiting += q->heap[i]->nrid;
            if (nt == 0 || q->heap[i]->next_try < nt)
                nt = q->heap[i]->next_try;
        }
    if (nt)
        fmt_time(next, sizeof(next), nt);
    int64_t now_t = queue_now();
    const char *updown = d->down_until > now_t ? "down"
                         : d->delivered || d->nconns ? "up"
                                                     : "unknown";
    buf_printf(out, "Host mail status for: %s\n", d->domain);
    buf_printf(out, "Status as of:         %s\n", now);
    buf_printf(out, "Host up/down:         %s\n\n", updown);
    buf_printf(out, "Counters:\n");
    buf_printf(out, "  Soft Bounced Events            %llu\n",
               (unsigned long long)d->soft);
    buf_printf(out, "  Completed Recipients           %llu\n",
               (unsigned long long)(d->delivered + d->hard));
    buf_printf(out, "    Hard Bounced Recipients      %llu\n",
               (unsigned long long)d->hard);
    buf_printf(out, "    Delivered Recipients         %llu\n",
               (unsigned long long)d->delivered);
    buf_printf(out, "Gauges:\n");
    buf_printf(out, "  Active Recipients              %zu\n", d->active_rcpts);
    buf_printf(out, "    Waiting For Retry            %zu\n", waiting);
    buf_printf(out, "  Current Outbound Connections   %zu\n", d->nconns);
    buf_printf(out, "  Last Activity                  %s\n", last);
    buf_printf(out, "  Next Retry                     %s\n", next);
    buf_printf(out, "Last error:           %s\n",
               d->last_error[0] ? d->last_error : "None");
    buf_printf(out, "Destination controls: %s (concurrency %u, messages per "
                    "connection %u, bounce profile %s)\n",
               dc->domain, dc->concurrency, dc->messages_per_connection,
               dc->bounce_profile);
    char rl[64] = "no limit";
    if (dc->rcpt_limited)
        str_printf(rl, sizeof(rl), "%u per %u s", dc->recipient_limit,
                   dc->recipient_period);
    buf_printf(out, "                      recipient limit %s, limits per %s, "
                    "tls %s, dane %s\n",
               rl, conf_dest_per_name(dc->limits_per),
               conf_dest_tls_name(dc->tls), conf_dest_dane_name(dc->dane));
    buf_printf(out, "Bounce profile:       %s (max retries %u, max queue "
                    "lifetime %u s, initial retry %u s, max retry %u s)\n",
               p->name, p->max_retries, p->max_queue_lifetime,
               p->initial_retry, p->max_retry_timeout);
    if (r == NULL)
        buf_puts(out, "SMTP routes for this host: none (MX records)\n");
    else if (r->kind == ROUTE_USEDNS)
        buf_printf(out, "SMTP routes for this host: %s -> USEDNS\n", r->domain);
    else if (r->kind == ROUTE_DEVNULL)
        buf_printf(out, "SMTP routes for this host: %s -> /dev/null\n",
                   r->domain);
    else {
        buf_printf(out, "SMTP routes for this host: %s ->", r->domain);
        for (size_t i = 0; i < r->nhosts; i++)
            buf_printf(out, "%s %s%s%s:%u/pri=%u", i ? "," : "",
                       strchr(r->hosts[i].host, ':') ? "[" : "",
                       r->hosts[i].host,
                       strchr(r->hosts[i].host, ':') ? "]" : "",
                       r->hosts[i].port, r->hosts[i].pri);
        buf_putc(out, '\n');
    }
    return true;
}
