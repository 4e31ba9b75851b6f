/*
 * smtp.h - the SMTP server: listeners and their sessions.
 *
 * The server owns the listening sockets of every configured listener and
 * every live session, all on one libevent loop. Listeners are bound while
 * the daemon still runs as root (smtp_server_apply before dropping
 * privileges); a later apply (moatctl commit) keeps the sockets of
 * listeners whose address is unchanged, so open sessions finish under the
 * configuration they started with and no connection is refused during a
 * reload.
 */
#ifndef MOAT_SMTP_H
#define MOAT_SMTP_H

#include "conf/conf.h"

struct event_base;
struct spool;
struct ids;
struct smtp_server;
struct resolver;

struct smtp_stats {
    uint64_t connections;     /* accepted since start */
    uint64_t messages;        /* answered 250 */
    uint64_t recipients;      /* accepted recipients of those messages */
    uint64_t rejected_rcpts;  /* refused at RCPT */
    uint64_t aborted;         /* transactions that did not complete */
    uint64_t refused;         /* connections closed by HAT TCPREFUSE */
    uint64_t rate_limited;    /* recipients refused by the rate limit */
    uint64_t tls_ok;          /* STARTTLS handshakes completed */
    uint64_t tls_failed;      /* STARTTLS handshakes failed */
    size_t sessions;          /* open now */
};

struct smtp_server *smtp_server_new(struct event_base *base,
                                    struct spool *spool, struct ids *ids);
/* Give the server its stores (the spool and the ID counters), which are
 * opened after the listeners are bound and privileges dropped. */
void smtp_server_set_stores(struct smtp_server *srv, struct spool *spool,
                            struct ids *ids);
/* The resolver for Host Access Table and sender lookups (owned by the
 * caller; required before the first connection). */
void smtp_server_set_resolver(struct smtp_server *srv, struct resolver *r);
/* Load every listener's TLS certificate, key, ciphers and client CAs as
 * smtp_server_apply would, and drop them: for moatd -t and configtest.
 * false with the first problem in err. */
bool smtp_tls_check(const struct moat_conf *conf, char *err, size_t errlen);
/* Make the listeners match conf: reuse sockets whose address is
 * unchanged, bind new ones, close removed ones. All or nothing: on
 * failure nothing changes and err says which listener failed. */
bool smtp_server_apply(struct smtp_server *srv, struct moat_conf *conf,
                       char *err, size_t errlen);
/* Stop accepting; tell idle sessions 421 and close them; let sessions in
 * a transaction finish it. `done` runs (once) when no session is left. */
void smtp_server_drain(struct smtp_server *srv, void (*done)(void *),
                       void *arg);
/* Close every remaining session at once (transactions are aborted; a
 * message already being committed still completes). */
void smtp_server_close_all(struct smtp_server *srv);
/* Listeners whose STARTTLS uses the demo certificate: their names,
 * comma-separated, appended to names; returns how many. */
struct buf;
size_t smtp_server_demo_tls(const struct smtp_server *srv, struct buf *names);
void smtp_server_get_stats(const struct smtp_server *srv,
                           struct smtp_stats *st);
void smtp_server_free(struct smtp_server *srv);

#endif
