/*
 * smtp_internal.h - what smtp.c (the owner) and smtp_session.c (one
 * connection) share. Private to src/smtp/.
 */
#ifndef MOAT_SMTP_INTERNAL_H
#define MOAT_SMTP_INTERNAL_H

#include "smtp/smtp.h"

#include <sys/queue.h>

struct evconnlistener;
struct session;
typedef struct ssl_ctx_st SSL_CTX;

/* A bound listening socket with the configuration it serves. Reference
 * counted: the server holds one reference, each session another. */
struct listener {
    struct smtp_server *srv;
    struct evconnlistener *evl;
    struct moat_conf *conf;          /* snapshot for new sessions */
    const struct conf_listener *lc;  /* inside conf */
    char ip[48];                     /* listening address, text */
    SSL_CTX *tls_ctx;                /* NULL: no STARTTLS */
    bool tls_demo;                   /* tls_ctx has the demo certificate */
    unsigned nsessions;
    int refs;
};

LIST_HEAD(session_list, session);

struct smtp_server {
    struct event_base *base;
    struct spool *spool;
    struct ids *ids;
    struct resolver *resolver;     /* HAT and sender lookups */
    struct iptable *ip_sessions;   /* open sessions per listener and IP */
    struct iptable *ip_rcpts;      /* recipients per IP and period */
    struct iptable *ip_authfail;   /* AUTH failures per IP and period */
    struct worker_pool *auth_pool; /* password checks, made on first use */
    size_t nlisteners;
    struct listener **listeners;
    struct session_list sessions;
    struct smtp_stats stats;
    bool draining;
    void (*drained)(void *);
    void *drained_arg;
};

void listener_unref(struct listener *l);

/* smtp_session.c */
void session_start(struct listener *l, int fd, const struct sockaddr *sa,
                   int salen);
/* Ask a session to end: idle sessions get 421 and close now, sessions in
 * a transaction close after it. */
void session_drain(struct session *s);
void session_kill(struct session *s);
struct session *session_next(struct session *s);
/* Called by sessions when they are freed. */
void smtp_server_session_gone(struct smtp_server *srv);

#endif
