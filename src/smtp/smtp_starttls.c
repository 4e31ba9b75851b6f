/*
 * smtp_starttls.c - STARTTLS on the server side (RFC 3207): offering it,
 * the switch to a TLS filter over the session's socket, the handshake's
 * outcome, TLS-required policies, and closing without losing the last
 * encrypted reply. See docs/smtp.md "STARTTLS".
 */
#include "core/mlog.h"
#include "smtp/smtp_session.h"
#include "smtp/smtp_tls.h"

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

bool smtp_tls_offered(const struct session *s)
{
    return !s->tls && s->pp->tls != POLICY_TLS_OFF && s->lis->tls_ctx;
}

/* Commands a client may give before STARTTLS when TLS is required. */
bool smtp_tls_allowed_before(enum smtp_verb v)
{
    return v == SMTP_EHLO || v == SMTP_HELO || v == SMTP_STARTTLS ||
           v == SMTP_NOOP || v == SMTP_RSET || v == SMTP_QUIT;
}

void smtp_cmd_starttls(struct session *s, const struct smtp_cmd *c)
{
    if (!smtp_tls_offered(s) && !s->tls) {
        ss_error_reply(s, R_STARTTLS_NOT_AVAIL);
        return;
    }
    if (c->arg[0]) {
        ss_error_reply(s, R_NO_ARGS);
        return;
    }
    if (s->tls || s->txn) {
        ss_error_reply(s, R_BAD_SEQUENCE);
        return;
    }
    SSL *ssl = SSL_new(s->lis->tls_ctx);
    if (ssl == NULL) {
        char e[256];
        mlog_icid_tls_failed(s->icid, smtp_tls_error(e, sizeof(e)));
        ss_reply_raw(s, 454, "4.7.0", "TLS not available due to local problem");
        return;
    }
    if (s->pp->tls_verify_client)
        SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       NULL);
    /* Whatever the client sent after STARTTLS in plaintext is dropped:
     * it must not be taken as commands of the encrypted session
     * (CVE-2011-0411, STARTTLS command injection). */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t junk = evbuffer_get_length(in);
    if (junk) {
        evbuffer_drain(in, junk);
        mlog_system(MLOG_INFO,
                    "ICID %llu STARTTLS: %zu byte(s) sent before the TLS "
                    "handshake discarded",
                    (unsigned long long)s->icid, junk);
    }
    ss_reply_raw(s, 220, "2.0.0", "Ready to start TLS");
    /* The 220 is already in the socket's output buffer: it goes out in
     * plaintext ahead of the handshake. */
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE);
    if (tb == NULL) {
        /* libevent has freed ssl (CLOSE_ON_FREE); s->bev is untouched. */
        mlog_icid_tls_failed(s->icid, "cannot start the TLS filter");
        ss_close_after_flush(s);
        return;
    }
    /* Clients that close without close_notify are normal. */
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    s->bev = tb;
    bufferevent_setcb(tb, ss_on_read, ss_on_write, ss_on_event, s);
    bufferevent_setwatermark(tb, EV_READ, 0, INPUT_HIGH);
    ss_set_timeout(s, s->lc->command_timeout);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
    s->state = SS_TLSHANDSHAKE;
}

/* 530 to a command that needs TLS first; logged once per session. */
void smtp_tls_refuse(struct session *s)
{
    if (!s->tls_required_logged) {
        mlog_icid_tls_required(s->icid);
        s->tls_required_logged = true;
    }
    ss_error_reply(s, R_TLS_REQUIRED);
}

/* tls_mandatory_senders: is this sender refused without TLS? */
bool smtp_tls_mandatory_for(const struct session *s, const char *addr)
{
    size_t n = s->pp->ntls_mandatory;
    if (n == 0 || !smtp_tls_offered(s))
        return false; /* encrypted already, or never told to STARTTLS */
    struct rat_entry *rows = xcalloc(n, sizeof(*rows));
    for (size_t i = 0; i < n; i++)
        rows[i].pattern = s->pp->tls_mandatory[i];
    bool hit = rat_match(rows, n, addr) != NULL;
    free(rows);
    return hit;
}

/* The handshake is done: a fresh session inside TLS (RFC 3207 4.2). */
void smtp_tls_established(struct session *s)
{
    SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
    s->tls = true;
    s->srv->stats.tls_ok++;
    mlog_icid_tls_success(s->icid, SSL_get_version(ssl),
                          SSL_get_cipher_name(ssl));
    /* RFC 3207 4.2: forget what the plaintext session established,
     * an AUTH included. */
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    s->authed = false;
    s->relay = s->pol->access == HAT_RELAY;
    s->state = SS_CMD;
    ss_process(s);
}

/* The handshake failed (or the client left during it). */
void smtp_tls_failed(struct session *s, short what)
{
    char why[256] = "";
    unsigned long e = bufferevent_get_openssl_error(s->bev);
    if (e)
        ERR_error_string_n(e, why, sizeof(why));
    else if (what & BEV_EVENT_TIMEOUT)
        str_copy(why, sizeof(why), "handshake timed out");
    else
        str_copy(why, sizeof(why), "connection closed during the handshake");
    ERR_clear_error();
    s->srv->stats.tls_failed++;
    mlog_icid_tls_failed(s->icid, why);
    mlog_icid_close(s->icid);
    ss_free(s);
}

/* The TLS records of the last reply have left: close now. */
static void on_tls_drained_ev(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    (void)fd;
    (void)what;
    mlog_icid_close(s->icid);
    ss_free(s);
}

static void on_tls_out(struct evbuffer *buf, const struct evbuffer_cb_info *i,
                       void *arg)
{
    struct session *s = arg;
    (void)i;
    if (evbuffer_get_length(buf) == 0)
        event_active(s->close_ev, EV_TIMEOUT, 0); /* not from inside I/O */
}

/* Under TLS the filter's output empties when the records are made, not
 * when they are sent: closing then would lose the last reply. True if
 * the close must wait (a callback on the socket's output will do it). */
bool smtp_tls_output_pending(struct session *s)
{
    struct bufferevent *u = bufferevent_get_underlying(s->bev);
    if (u == NULL)
        return false;
    struct evbuffer *out = bufferevent_get_output(u);
    if (evbuffer_get_length(out) == 0)
        return false;
    if (s->close_ev == NULL) {
        s->close_ev = evtimer_new(s->srv->base, on_tls_drained_ev, s);
        evbuffer_add_cb(out, on_tls_out, s);
    }
    return true;
}
