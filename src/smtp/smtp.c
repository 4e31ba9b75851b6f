/*
 * smtp.c - the SMTP server owner: listening sockets and the session list
 * (see smtp.h). Sessions themselves live in smtp_session.c.
 *
 * Never drops a bound socket during a reload whose address is unchanged,
 * so a commit never refuses connections.
 */
#include "core/buf.h"
#include "core/mlog.h"
#include "core/netaddr.h"
#include "core/worker.h"
#include "policy/iptable.h"
#include "smtp/smtp_internal.h"
#include "smtp/smtp_tls.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024

/* Client addresses tracked per table (about 64 bytes each). */
#define IPTABLE_MAX 1000000

struct smtp_server *smtp_server_new(struct event_base *base,
                                    struct spool *spool, struct ids *ids)
{
    struct smtp_server *srv = xcalloc(1, sizeof(*srv));
    srv->base = base;
    srv->spool = spool;
    srv->ids = ids;
    srv->ip_sessions = iptable_new(IPTABLE_MAX);
    srv->ip_rcpts = iptable_new(IPTABLE_MAX);
    srv->ip_authfail = iptable_new(IPTABLE_MAX);
    LIST_INIT(&srv->sessions);
    return srv;
}

void smtp_server_set_resolver(struct smtp_server *srv, struct resolver *r)
{
    srv->resolver = r;
}

void smtp_server_set_stores(struct smtp_server *srv, struct spool *spool,
                            struct ids *ids)
{
    srv->spool = spool;
    srv->ids = ids;
}

/* A new connection on a listener: hand it to a session. */
static void on_accept(struct evconnlistener *evl, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct listener *l = arg;
    (void)evl;
    session_start(l, fd, sa, salen);
}

/* accept(2) failed (EMFILE and the like): log once per burst and go on. */
static void on_accept_error(struct evconnlistener *evl, void *arg)
{
    struct listener *l = arg;
    (void)evl;
    mlog_system(MLOG_WARNING, "Listener %s: accept failed: %s", l->lc->name,
                strerror(errno));
}

void listener_unref(struct listener *l)
{
    if (--l->refs > 0)
        return;
    if (l->evl)
        evconnlistener_free(l->evl);
    SSL_CTX_free(l->tls_ctx);
    conf_unref(l->conf);
    free(l);
}

/* Bind a listener's socket. */
static struct listener *listener_bind(struct smtp_server *srv,
                                      struct moat_conf *conf,
                                      const struct conf_listener *lc, char *err,
                                      size_t errlen)
{
    unsigned flags =
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    struct evconnlistener *evl = evconnlistener_new_bind(
        srv->base, on_accept, NULL, flags, LISTEN_BACKLOG,
        (const struct sockaddr *)&lc->addr.ss, (int)lc->addr.len);
    if (evl == NULL) {
        str_printf(err, errlen, "listener \"%s\": cannot listen on %s: %s",
                   lc->name, lc->address, strerror(errno));
        return NULL;
    }
    struct listener *l = xcalloc(1, sizeof(*l));
    l->srv = srv;
    l->evl = evl;
    l->refs = 1;
    evconnlistener_set_cb(evl, on_accept, l);
    evconnlistener_set_error_cb(evl, on_accept_error);
    netaddr_ip_str(&lc->addr, l->ip, sizeof(l->ip));
    l->conf = conf_ref(conf);
    l->lc = lc;
    return l;
}

/* Find a current listener bound to the same address as lc. */
static struct listener *listener_same_addr(struct smtp_server *srv,
                                           const struct conf_listener *lc)
{
    for (size_t i = 0; i < srv->nlisteners; i++) {
        const struct netaddr *a = &srv->listeners[i]->lc->addr;
        if (a->len == lc->addr.len &&
            memcmp(&a->ss, &lc->addr.ss, lc->addr.len) == 0)
            return srv->listeners[i];
    }
    return NULL;
}

bool smtp_tls_check(const struct moat_conf *conf, char *err, size_t errlen)
{
    for (size_t i = 0; i < conf->listener_count; i++) {
        const struct conf_listener *lc = &conf->listeners[i];
        bool demo;
        if (!smtp_tls_wanted(lc))
            continue;
        SSL_CTX *ctx = smtp_tls_ctx_new(lc, &demo, err, errlen);
        if (ctx == NULL)
            return false;
        SSL_CTX_free(ctx);
    }
    return true;
}

bool smtp_server_apply(struct smtp_server *srv, struct moat_conf *conf,
                       char *err, size_t errlen)
{
    size_t n = conf->listener_count;
    struct listener **next = xcalloc(n ? n : 1, sizeof(*next));
    bool *fresh = xcalloc(n ? n : 1, sizeof(*fresh));
    SSL_CTX **ctxs = xcalloc(n ? n : 1, sizeof(*ctxs));
    bool *demo = xcalloc(n ? n : 1, sizeof(*demo));

    /* TLS contexts first: a certificate that does not load refuses the
     * configuration before anything changes. */
    for (size_t i = 0; i < n; i++) {
        const struct conf_listener *lc = &conf->listeners[i];
        if (smtp_tls_wanted(lc) &&
            (ctxs[i] = smtp_tls_ctx_new(lc, &demo[i], err, errlen)) == NULL)
            goto fail;
    }

    for (size_t i = 0; i < n; i++) {
        const struct conf_listener *lc = &conf->listeners[i];
        struct listener *old = listener_same_addr(srv, lc);
        if (old == NULL) {
            next[i] = listener_bind(srv, conf, lc, err, errlen);
            fresh[i] = true;
            if (next[i] == NULL)
                goto fail;
        } else {
            next[i] = old;
            old->refs++;
        }
    }
    /* Commit: retarget reused listeners, drop the old set. */
    for (size_t i = 0; i < n; i++) {
        if (!fresh[i]) {
            struct moat_conf *prev = next[i]->conf;
            next[i]->conf = conf_ref(conf);
            next[i]->lc = &conf->listeners[i];
            conf_unref(prev);
        }
        /* Sessions in TLS hold their own reference to the old context. */
        SSL_CTX_free(next[i]->tls_ctx);
        next[i]->tls_ctx = ctxs[i];
        next[i]->tls_demo = demo[i];
        ctxs[i] = NULL;
        if (demo[i])
            mlog_system(MLOG_WARNING,
                        "Listener %s: no tls_certificate configured: STARTTLS "
                        "uses a self-signed DEMO certificate for %s; clients "
                        "that verify will refuse it. Configure tls_certificate "
                        "and tls_key before production use.",
                        conf->listeners[i].name, conf->listeners[i].hostname);
    }
    for (size_t i = 0; i < srv->nlisteners; i++) {
        /* A listener not reused stops accepting now; its sessions keep
         * their own reference until they end. */
        struct listener *l = srv->listeners[i];
        evconnlistener_disable(l->evl);
        listener_unref(l);
    }
    for (size_t i = 0; i < n; i++)
        if (!srv->draining)
            evconnlistener_enable(next[i]->evl);
    free(srv->listeners);
    srv->listeners = next;
    srv->nlisteners = n;
    free(fresh);
    free(ctxs);
    free(demo);
    return true;

fail:
    for (size_t i = 0; i < n; i++) {
        if (next[i])
            listener_unref(next[i]);
        SSL_CTX_free(ctxs[i]);
    }
    free(next);
    free(fresh);
    free(ctxs);
    free(demo);
    return false;
}

void smtp_server_session_gone(struct smtp_server *srv)
{
    srv->stats.sessions--;
    if (srv->draining && srv->stats.sessions == 0 && srv->drained) {
        void (*done)(void *) = srv->drained;
        srv->drained = NULL;
        done(srv->drained_arg);
    }
}

void smtp_server_drain(struct smtp_server *srv, void (*done)(void *), void *arg)
{
    srv->draining = true;
    srv->drained = done;
    srv->drained_arg = arg;
    for (size_t i = 0; i < srv->nlisteners; i++)
        evconnlistener_disable(srv->listeners[i]->evl);
    struct session *s, *tmp;
    /* session_drain may free the session: walk with a saved next. */
    for (s = LIST_FIRST(&srv->sessions); s; s = tmp) {
        tmp = session_next(s);
        session_drain(s);
    }
    if (srv->stats.sessions == 0 && srv->drained) {
        srv->drained = NULL;
        done(arg);
    }
}

void smtp_server_close_all(struct smtp_server *srv)
{
    struct session *s, *tmp;
    for (s = LIST_FIRST(&srv->sessions); s; s = tmp) {
        tmp = session_next(s);
        session_kill(s);
    }
}

size_t smtp_server_demo_tls(const struct smtp_server *srv, struct buf *names)
{
    size_t k = 0;
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i]->tls_demo) {
            buf_printf(names, "%s%s", k++ ? ", " : "",
                       srv->listeners[i]->lc->name);
        }
    return k;
}

void smtp_server_get_stats(const struct smtp_server *srv, struct smtp_stats *st)
{
    *st = srv->stats;
}

void smtp_server_free(struct smtp_server *srv)
{
    if (srv == NULL)
        return;
    smtp_server_close_all(srv);
    for (size_t i = 0; i < srv->nlisteners; i++)
        listener_unref(srv->listeners[i]);
    free(srv->listeners);
    iptable_free(srv->ip_sessions);
    iptable_free(srv->ip_rcpts);
    iptable_free(srv->ip_authfail);
    worker_pool_free(srv->auth_pool);
    free(srv);
}
