/*
 * queue_internal.h - private to src/queue: the queue's structures, shared
 * by queue.c (work queue, scheduler, connections, outcomes), bounce.c
 * (DSN generation) and queue_admin.c (moatctl commands).
 */
#ifndef MOAT_QUEUE_INTERNAL_H
#define MOAT_QUEUE_INTERNAL_H

#include "core/ids.h"
#include "core/mlog.h"
#include "delivery/resolve.h"
#include "delivery/smtpc.h"
#include "queue/queue.h"
#include "spool/spool.h"

#include <sys/queue.h>

#define QERR_MAX 300 /* last error text kept */

enum job_state { JOB_READY, JOB_WAIT, JOB_ACTIVE };

/* Some recipients of one message for one destination. */
struct job {
    TAILQ_ENTRY(job) link; /* in its destination's ready list */
    struct dest *d;
    uint64_t mid;
    size_t nrid;
    unsigned *rids;
    int64_t next_try;      /* JOB_WAIT: when it becomes ready */
    size_t heap_at;        /* position in the retry heap */
    enum job_state state;
    bool kill_delete;      /* admin: delete when the delivery ends */
    bool kill_bounce;      /* admin: bounce when the delivery ends */
    bool rate_held;        /* waiting for a recipient-limit window */
    char last_error[QERR_MAX]; /* (bounce_status set: the bounce reason) */
    char bounce_status[16];    /* set: waiting to bounce, not to deliver */
};

TAILQ_HEAD(job_list, job);

enum conn_state { C_RESOLVING, C_CONNECTING, C_IDLE, C_BUSY, C_QUITTING };

/* One delivery connection (and, before it, its next-hop lookup). */
struct conn {
    LIST_ENTRY(conn) link;
    struct queue *q;
    struct dest *d;
    uint64_t dcid;
    enum conn_state st;
    bool starting;             /* counted in d->nstarting */
    struct resolve_req *rq;
    struct nexthop *nh;
    size_t ai;                 /* next address to try */
    struct smtpc *c;
    struct job *job;           /* being delivered */
    struct spool_reader *rd;
    const char **rcpt_ptrs;
    unsigned sent;             /* transactions on this connection */
    bool parked;               /* idle, waiting for a job (IDLE_CACHE_SECS) */
    bool logged_new;           /* "New SMTP DCID" written, "close" due */
    unsigned gen;              /* q->gen when opened */
    struct event *idle_ev;
    char err[QERR_MAX];        /* why the last address failed */
    char err_status[8];        /* its enhanced status ("" = 4.4.0) */
    int slot;                  /* limits_per = mx_ip: its address's slot in
                                  d->ips (counted in conns), else -1 */
    bool dane;                 /* DANE applies: resolved through res_sec */
    struct dns_lookup *tlsa_lk; /* TLSA lookup for the address being tried */
};

/* A recipient-limit window (destination controls recipient_limit). */
struct rate_window {
    int64_t start;             /* when it began (0: none yet) */
    uint64_t count;            /* recipients sent in it */
};

/* limits_per = mx_ip: what one MX address has in use. */
struct ip_slot {
    char ip[INET6_ADDRSTRLEN];
    unsigned conns;            /* connections to it now */
    struct rate_window rw;
};

#define DEST_MAX_IP_SLOTS 64

/* One destination domain: its ready jobs, connections and counters. */
struct dest {
    char *domain;
    struct dest *hnext;
    struct job_list ready;
    size_t nready;
    LIST_HEAD(, conn) conns;
    size_t nconns, nstarting;
    size_t active_rcpts;       /* recipients in its jobs */
    uint64_t delivered, soft, hard;
    int64_t down_until;        /* after a failed attempt: hold jobs */
    struct rate_window rw;     /* recipient_limit, limits_per = domain */
    struct ip_slot *ips;       /* limits_per = mx_ip */
    size_t nips;
    size_t naddrs;             /* addresses in the last next-hop lookup */
    unsigned conn_fail;        /* connections failed since the last one
                                  that worked: no new ones meanwhile */
    /* Its rows of the configuration, looked up once per generation (the
     * tables may hold 40,000 routes; see dest_conf). */
    unsigned conf_gen;         /* q->gen + 1 when filled, 0: never */
    const struct conf_dest *dc;
    const struct conf_route *route; /* NULL: MX */
    const struct conf_bounce_profile *profile;
    int64_t last_activity;
    char last_error[QERR_MAX];
};

struct queue {
    struct event_base *base;
    struct moat_conf *conf;
    struct spool *sp;
    struct ids *ids;
    struct resolver *res;
    struct resolver *res_sec;  /* validating (DANE); NULL: no anchors */
    char dane_err[256];        /* why res_sec is NULL */
    SSL_CTX *tls_ctx;          /* outbound STARTTLS (NULL: none) */
    struct dest **htab;
    size_t hsize, ndest;
    struct job **heap;         /* waiting jobs, by next_try */
    size_t nheap, heapcap;
    struct event *timer;
    struct queue_stats st;
    unsigned gen;              /* configuration generation */
    bool stopping;
};

/* queue.c */
struct dest *queue_dest(struct queue *q, const char *domain);
struct job *job_new(struct queue *q, struct dest *d, uint64_t mid,
                    const unsigned *rids, size_t n);
void job_free(struct queue *q, struct job *j);
void job_ready(struct queue *q, struct job *j);
void job_wait(struct queue *q, struct job *j, int64_t when);
void job_unlink(struct queue *q, struct job *j);
void dest_kick(struct queue *q, struct dest *d);
/* The destination's configuration rows (refreshed after a commit). */
const struct conf_dest *dest_conf(const struct queue *q, struct dest *d);
const struct conf_route *dest_route(const struct queue *q, struct dest *d);
const struct conf_bounce_profile *queue_profile(const struct queue *q,
                                                struct dest *d);
/* Record final or retry states; logs "Message finished" when the
 * message leaves the spool. */
void queue_update(struct queue *q, uint64_t mid,
                  const struct spool_rcpt_update *u, size_t n);
/* The same, all to one final state; aborted: "Message finished ...
 * aborted" (an administrative delete) rather than "done". */
void queue_mark(struct queue *q, uint64_t mid, const unsigned *rids, size_t n,
                enum spool_rcpt_state state, bool aborted);
int64_t queue_now(void);
/* The domain of an address (fallback when it has none), lower case,
 * without a trailing dot. */
void queue_addr_domain(const char *addr, const char *fallback, char *out,
                       size_t outlen);
/* Administrative delete: log, record, and "Message finished ... aborted"
 * when the message leaves the spool. */
void queue_delete_rcpts(struct queue *q, uint64_t mid, const unsigned *rids,
                        size_t n);

/* One hard-bounced recipient. reply (the server's, "550 5.1.1 ...") or
 * reason (moat's, "5.4.7 - Delivery expired ...") explains it. */
struct bounce_rcpt {
    unsigned rid;
    const char *status;
    const char *reason;
    const char *reply; /* may be NULL */
};

/* bounce.c: hard bounce recipients of mid (already logged as Bounced):
 * one DSN for them all (or the double bounce logged), and the recipients
 * marked bounced once that is safe. remote may be NULL. */
void queue_bounce(struct queue *q, uint64_t mid, const struct bounce_rcpt *br,
                  size_t n, const char *remote);
/* The same for recipients sharing one reason. */
void queue_bounce_all(struct queue *q, uint64_t mid, const unsigned *rids,
                      size_t n, const char *status, const char *reason,
                      const char *reply);

#endif
