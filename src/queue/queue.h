/*
 * queue.h - the work queue and the delivery queues.
 *
 * Every message the spool commits (and every one recovered at start-up)
 * passes the work queue — the stage where message filters and mail
 * policies will run — and is split into jobs: one per destination domain,
 * holding that domain's pending recipients of the message (at most
 * max_recipients_per_transaction each). A job waits in its destination's
 * ready list, or in the retry heap until its next attempt.
 *
 * A destination opens up to `concurrency` connections (destination
 * controls), each resolving the next hop (SMTP route or MX), connecting
 * to the addresses in order, and sending up to `messages_per_connection`
 * jobs before it says QUIT. Each recipient's outcome is written to the
 * message's spool file (spool_rcpt_update) and logged; 4xx and
 * connection/DNS failures are retried per the destination's bounce
 * profile; 5xx, permanent DNS failures, exhausted retries and expiry
 * bounce at once, with an RFC 3464 DSN to the sender (queued as a new
 * message) unless the sender is null.
 *
 * Threading: loop thread only.
 */
#ifndef MOAT_QUEUE_H
#define MOAT_QUEUE_H

#include "conf/conf.h"
#include "core/buf.h"

struct event_base;
struct spool;
struct ids;
struct queue;

struct queue_stats {
    uint64_t delivered;     /* recipients delivered */
    uint64_t hard_bounced;  /* recipients hard bounced */
    uint64_t soft_bounced;  /* soft bounce events */
    uint64_t dns_bounced;   /* of hard_bounced: DNS */
    uint64_t expired;       /* of hard_bounced: expired/retries */
    uint64_t deleted;       /* recipients deleted (admin, /dev/null) */
    uint64_t bounces_sent;  /* DSN messages generated */
    uint64_t double_bounces;
    uint64_t tls_out;       /* outbound TLS sessions established */
    uint64_t tls_out_failed; /* outbound connections failed for TLS */
    size_t active_rcpts;    /* recipients queued */
    size_t conns_out;       /* delivery connections open */
    size_t destinations;
};

/* Create the queue; it starts delivering at once, beginning with the
 * spool's recovered messages. NULL with a reason on error. */
struct queue *queue_new(struct event_base *base, struct moat_conf *conf,
                        struct spool *sp, struct ids *ids, char *err,
                        size_t errlen);
/* A new configuration (destination controls, routes, bounce profiles,
 * delivery timeouts). The resolver settings take effect at restart. */
void queue_set_conf(struct queue *q, struct moat_conf *conf);
/* Stop: close every delivery connection (recipients in flight stay
 * pending in the spool and are delivered after a restart). */
void queue_stop(struct queue *q);
void queue_free(struct queue *q);
/* The queue's resolver, shared with the SMTP server's HAT lookups; it
 * lives until queue_free. */
struct resolver *queue_resolver(struct queue *q);
/* The outbound TLS client context (delivery/tls_client.h) for new
 * connections; the queue owns it from now on (NULL: no STARTTLS). Set
 * before queue_set_conf when a commit changes it. */
typedef struct ssl_ctx_st SSL_CTX;
void queue_set_tls(struct queue *q, SSL_CTX *ctx);

void queue_get_stats(const struct queue *q, struct queue_stats *st);

/* Admin commands (moatctl): each fills out and returns true for OK. */
bool queue_cmd_list(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_show(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_flush(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_delete(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_bounce(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_retry(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_tophosts(struct queue *q, const char *args, struct buf *out);
bool queue_cmd_hoststatus(struct queue *q, const char *args, struct buf *out);

#endif
