/*
 * smtpc.c - the SMTP client (see smtpc.h).
 *
 * One bufferevent per connection. Replies are read line by line
 * (bounded), assembled into struct smtpc_reply and matched, in order,
 * against the list of commands sent and not yet answered (`want`): with
 * PIPELINING a whole transaction's MAIL, RCPTs and DATA go out in one
 * write (RFC 2920) and the replies come back in the same order; without
 * it each command waits for the previous reply. Content is streamed from
 * the owner's read callback whenever the output buffer runs low, with
 * dot-stuffing applied on the way.
 */
#include "delivery/smtpc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <time.h>

#define CONTENT_CHUNK 65536u
#define QUIT_WAIT 5 /* seconds smtpc_quit waits for the 221 */

enum state {
    ST_CONNECTING,
    ST_GREETING,
    ST_EHLO,
    ST_HELO,
    ST_STARTTLS, /* waiting for the reply to STARTTLS */
    ST_HANDSHAKE, /* TLS handshake under way */
    ST_READY,
    ST_TXN,     /* MAIL/RCPT/DATA replies outstanding */
    ST_CONTENT, /* streaming the message */
    ST_DOT,     /* waiting for the reply to the final dot */
    ST_RSET,    /* waiting for the reply to RSET, then txn_done */
    ST_QUIT,
    ST_FAIL_QUIT, /* greeting refused or TLS not achieved; QUIT sent, its
                     reply awaited before the failure is reported */
};

/* What a reply in the pipeline answers. */
enum want { W_MAIL, W_RCPT, W_DATA };

struct smtpc {
    struct event_base *base;
    struct bufferevent *bev;
    struct event *notify; /* deferred failure report */
    struct smtpc_config cfg;
    char *helo;
    struct smtpc_callbacks cb;
    void *arg;
    enum state state;
    unsigned caps;
    uint64_t max_size;
    char local_ip[INET6_ADDRSTRLEN];

    /* Reply being assembled. */
    struct smtpc_reply rep;
    unsigned rep_lines;
    bool rep_open;

    /* Current transaction. */
    struct smtpc_txn txn;
    struct smtpc_result res;
    size_t next_rcpt;  /* next RCPT to send (no pipelining) */
    size_t want_rcpt;  /* next RCPT reply expected */
    bool want_mail, want_data;
    bool sent_all;     /* MAIL, RCPTs, DATA all written */
    size_t accepted;   /* recipients accepted so far */
    bool at_bol, last_lf, content_eof;
    enum smtpc_fail pending_fail;
    bool *alive; /* cleared by smtpc_free (see on_read) */
    bool quitting; /* smtpc_quit was called */
    struct smtpc_reply greet; /* a refusing reply, reported after QUIT */
    enum smtpc_fail quit_fail; /* ... as this failure */
    struct smtpc_tls_info tls;
    struct timespec tls_start;
    char *tls_names[SMTPC_TLS_NAMES_MAX];
    char *tls_sni;
    struct smtpc_tlsa *tlsa; /* copies, data included */
    size_t ntlsa;
    bool dane_unusable;      /* OpenSSL took none of them */
    char *dane_name;
};

const char *smtpc_fail_name(enum smtpc_fail f)
{
    static const char *const names[] = {
        [SMTPC_OK] = "ok",
        [SMTPC_CONNECT] = "connection refused",
        [SMTPC_TIMEOUT] = "timeout",
        [SMTPC_EOF] = "EOF",
        [SMTPC_NETWORK] = "network error",
        [SMTPC_PROTOCOL] = "protocol error",
        [SMTPC_GREETING] = "greeting refused",
        [SMTPC_HELO] = "EHLO/HELO refused",
        [SMTPC_SHUTDOWN] = "421 from server",
        [SMTPC_TLS] = "TLS error",
    };
    return f < ARRAY_LEN(names) ? names[f] : "?";
}

/* ---- replies ---- */

int smtpc_parse_line(const char *line, size_t len, bool *more, bool masked_ok)
{
    *more = false;
    if (len < 3)
        return -1;
    bool digits = isdigit((unsigned char)line[0]) &&
                  isdigit((unsigned char)line[1]) &&
                  isdigit((unsigned char)line[2]);
    int code;
    if (digits) {
        code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (code < 200 || code > 599)
            return -1;
    } else if (masked_ok && line[0] == '2' &&
               (line[1] == '*' || isdigit((unsigned char)line[1])) &&
               (line[2] == '*' || isdigit((unsigned char)line[2]))) {
        code = 220; /* a firewall masked the greeting's digits */
    } else {
        return -1;
    }
    if (len > 3) {
        if (line[3] == '-')
            *more = true;
        else if (line[3] != ' ' && !(masked_ok && !digits))
            return -1;
    }
    return code;
}

/* Append a line's text to the reply, printable only, bounded. */
static void rep_add_text(struct smtpc_reply *r, const char *s, size_t n)
{
    size_t at = strlen(r->text);
    if (at > 0 && at + 3 < sizeof(r->text)) {
        memcpy(r->text + at, " / ", 3);
        at += 3;
    }
    for (size_t i = 0; i < n && at + 1 < sizeof(r->text); i++) {
        unsigned char ch = (unsigned char)s[i];
        r->text[at++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    r->text[at] = '\0';
}

/* Take "x.y.z " off the front of a reply's first line. */
static size_t take_enhanced(struct smtpc_reply *r, const char *s, size_t n)
{
    size_t i = 0, dots = 0, start = 0;
    if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    for (i = 0; i < n && i < 15; i++) {
        if (s[i] == '.')
            dots++;
        else if (s[i] == ' ')
            break;
        else if (!isdigit((unsigned char)s[i]))
            return 0;
    }
    if (dots != 2 || s[i - 1] == '.' || (i < n && s[i] != ' '))
        return 0;
    memcpy(r->enh, s, i);
    r->enh[i] = '\0';
    start = i;
    while (start < n && s[start] == ' ')
        start++;
    return start;
}

/* ---- plumbing ---- */

static void set_read_timeout(struct smtpc *c, unsigned secs)
{
    struct timeval rt = {(time_t)secs, 0};
    struct timeval wt = {(time_t)c->cfg.command_timeout, 0};
    bufferevent_set_timeouts(c->bev, secs ? &rt : NULL, &wt);
}

static void send_line(struct smtpc *c, const char *fmt, ...) MOAT_PRINTF(2, 3);
static void send_line(struct smtpc *c, const char *fmt, ...)
{
    va_list ap;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
}

static void result_reset(struct smtpc *c)
{
    free(c->res.rcpt);
    memset(&c->res, 0, sizeof(c->res));
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* Report a failure: to txn_done inside a transaction, else failed().
 * The owner may free c inside; the caller must return at once. */
static void quit_done(struct smtpc *c);

static void fail(struct smtpc *c, enum smtpc_fail f,
                 const struct smtpc_reply *r)
{
    if (c->quitting) {
        /* Whatever went wrong, the connection was being closed anyway. */
        quit_done(c);
        return;
    }
    enum state st = c->state;
    if (st == ST_FAIL_QUIT) {
        /* The reply to our QUIT was odd or never came: still report why
         * the connection was being ended. */
        f = c->quit_fail;
        r = &c->greet;
    }
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    c->state = ST_QUIT;
    if (st == ST_TXN || st == ST_CONTENT || st == ST_DOT || st == ST_RSET) {
        c->res.fail = f;
        c->cb.txn_done(c->arg, c, &c->res);
        return;
    }
    static const struct smtpc_reply none;
    c->cb.failed(c->arg, c, f, r ? r : &none);
}

/* ---- transaction steps ---- */

static void send_mail(struct smtpc *c)
{
    const struct smtpc_txn *t = &c->txn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "MAIL FROM:<%s>", t->mail_from);
    if ((c->caps & SMTPC_CAP_SIZE) && t->size)
        evbuffer_add_printf(out, " SIZE=%llu", (unsigned long long)t->size);
    if ((c->caps & SMTPC_CAP_8BITMIME) && t->body_8bit)
        evbuffer_add_printf(out, " BODY=8BITMIME");
    if ((c->caps & SMTPC_CAP_SMTPUTF8) && t->smtputf8)
        evbuffer_add_printf(out, " SMTPUTF8");
    evbuffer_add(out, "\r\n", 2);
}

static void send_rcpt(struct smtpc *c, size_t i)
{
    send_line(c, "RCPT TO:<%s>", c->txn.rcpts[i]);
}

/* The transaction ended before content: RSET if a MAIL was accepted. */
static void txn_abandon(struct smtpc *c)
{
    if (c->res.mail.code >= 200 && c->res.mail.code < 300) {
        c->state = ST_RSET;
        send_line(c, "RSET");
        set_read_timeout(c, c->cfg.command_timeout);
        return;
    }
    c->state = ST_READY;
    set_read_timeout(c, 0);
    c->cb.txn_done(c->arg, c, &c->res);
}

/* Stream content while the output buffer is low. */
static void pump_content(struct smtpc *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char *buf = NULL;
    while (!c->content_eof && evbuffer_get_length(out) < CONTENT_CHUNK) {
        if (buf == NULL)
            buf = xmalloc(CONTENT_CHUNK);
        ssize_t n = c->txn.read(c->txn.read_arg, buf, CONTENT_CHUNK);
        if (n < 0) {
            /* Cannot finish the message: drop the connection rather
             * than send a dot that would deliver a truncated copy. */
            free(buf);
            c->res.content_error = true;
            fail(c, SMTPC_NETWORK, NULL);
            return;
        }
        if (n == 0) {
            c->content_eof = true;
            if (!c->last_lf)
                evbuffer_add(out, "\r\n", 2);
            evbuffer_add(out, ".\r\n", 3);
            c->state = ST_DOT;
            set_read_timeout(c, c->cfg.data_done_timeout);
            break;
        }
        const char *p = buf, *end = buf + n;
        if (c->at_bol && *p == '.')
            evbuffer_add(out, ".", 1);
        c->at_bol = false;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (nl == NULL) {
                evbuffer_add(out, p, (size_t)(end - p));
                break;
            }
            evbuffer_add(out, p, (size_t)(nl + 1 - p));
            p = nl + 1;
            if (p == end)
                c->at_bol = true;
            else if (*p == '.')
                evbuffer_add(out, ".", 1);
        }
        c->last_lf = buf[n - 1] == '\n';
    }
    free(buf);
}

static void start_content(struct smtpc *c)
{
    struct timeval wt = {(time_t)c->cfg.data_timeout, 0};
    c->state = ST_CONTENT;
    c->at_bol = true;
    c->last_lf = true;
    c->content_eof = false;
    /* No read timeout while sending: the write timeout watches progress;
     * a reply the server sends early is still read. */
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    pump_content(c);
}

/* A complete reply inside a transaction. */
static void txn_reply(struct smtpc *c, const struct smtpc_reply *r)
{
    bool pipelined = (c->caps & SMTPC_CAP_PIPELINING) != 0;
    if (c->want_mail) {
        c->want_mail = false;
        c->res.mail = *r;
        if (r->code / 100 != 2 && !pipelined) {
            txn_abandon(c);
            return;
        }
        if (!pipelined) {
            if (c->txn.nrcpt == 0) {
                txn_abandon(c);
                return;
            }
            send_rcpt(c, c->next_rcpt++);
        }
        return;
    }
    if (c->want_rcpt < c->txn.nrcpt) {
        c->res.rcpt[c->want_rcpt++] = *r;
        if (r->code / 100 == 2)
            c->accepted++;
        if (pipelined)
            return;
        if (c->next_rcpt < c->txn.nrcpt) {
            send_rcpt(c, c->next_rcpt++);
            return;
        }
        if (c->accepted == 0) {
            txn_abandon(c);
            return;
        }
        c->want_data = true;
        send_line(c, "DATA");
        return;
    }
    if (c->want_data) {
        c->want_data = false;
        c->res.data = *r;
        if (r->code != 354) {
            txn_abandon(c);
            return;
        }
        if (c->accepted == 0) {
            /* Pipelined, every RCPT refused, yet 354: end the (empty)
             * data at once; nobody gets it (RFC 2920, 3.1). */
            c->content_eof = true;
            c->state = ST_DOT;
            send_line(c, ".");
            set_read_timeout(c, c->cfg.data_done_timeout);
            return;
        }
        start_content(c);
    }
}

/* Say QUIT and report failure f (with reply r) once it is answered or
 * the server closes: RFC 5321 3.1 after a refusing greeting, and the
 * polite end when TLS was required and not achieved. */
static void fail_after_quit(struct smtpc *c, enum smtpc_fail f,
                            const struct smtpc_reply *r)
{
    static const struct smtpc_reply none;
    c->greet = r ? *r : none;
    c->quit_fail = f;
    c->state = ST_FAIL_QUIT;
    send_line(c, "QUIT");
    set_read_timeout(c, QUIT_WAIT);
}

/* ---- STARTTLS (RFC 3207) ---- */

static bool tls_required(const struct smtpc *c)
{
    return c->ntlsa > 0 || c->cfg.tls_mode == SMTPC_TLS_REQUIRED ||
           c->cfg.tls_mode == SMTPC_TLS_REQUIRED_VERIFY ||
           c->cfg.tls_mode == SMTPC_TLS_REQUIRED_VERIFY_HOSTED;
}

static bool tls_verify_mode(const struct smtpc *c)
{
    return c->cfg.tls_mode == SMTPC_TLS_PREFERRED_VERIFY ||
           c->cfg.tls_mode == SMTPC_TLS_REQUIRED_VERIFY ||
           c->cfg.tls_mode == SMTPC_TLS_REQUIRED_VERIFY_HOSTED;
}

/* An OpenSSL error as text (e, or the newest queued); the queue is
 * cleared. */
static void tls_err_text(char *buf, size_t len, unsigned long e)
{
    if (e == 0)
        e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        buf[0] = '\0';
    ERR_clear_error();
}

/* EHLO (or HELO) was accepted: STARTTLS if the mode asks for it. False
 * when the session goes on without (ready in plaintext). */
static bool tls_begin(struct smtpc *c)
{
    if ((c->cfg.tls_mode == SMTPC_TLS_NO && c->ntlsa == 0) ||
        c->cfg.tls_ctx == NULL || c->tls.active)
        return false;
    c->tls.offered = (c->caps & SMTPC_CAP_STARTTLS) != 0;
    if (!c->tls.offered) {
        if (!tls_required(c))
            return false;
        str_copy(c->tls.error, sizeof(c->tls.error),
                 c->state == ST_HELO ? "EHLO refused, so no STARTTLS"
                                     : "STARTTLS not offered");
        fail_after_quit(c, SMTPC_TLS, NULL);
        return true;
    }
    clock_gettime(CLOCK_MONOTONIC, &c->tls_start);
    c->state = ST_STARTTLS;
    send_line(c, "STARTTLS");
    set_read_timeout(c, c->cfg.command_timeout);
    return true;
}

/* 220 to STARTTLS: the handshake, through a filter over the socket. */
static void tls_handshake(struct smtpc *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (evbuffer_get_length(in) > 0) {
        /* Plaintext behind the 220 would be read as the TLS session's
         * first bytes (the server-side form of STARTTLS injection). */
        str_copy(c->tls.error, sizeof(c->tls.error),
                 "the server sent data after its 220 reply to STARTTLS");
        fail(c, SMTPC_TLS, NULL);
        return;
    }
    SSL *ssl = SSL_new(c->cfg.tls_ctx);
    bool ok = ssl != NULL;
    if (ok && c->tls_sni)
        ok = SSL_set_tlsext_host_name(ssl, c->tls_sni) == 1;
    if (ok && tls_verify_mode(c)) {
        /* The names the certificate may carry: subjectAltName dNSName
         * entries, or the subject CN when it has none (OpenSSL's rule);
         * a wildcard only as a whole left-most label. */
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        for (size_t i = 0; ok && i < SMTPC_TLS_NAMES_MAX && c->tls_names[i];
             i++)
            ok = (i == 0 ? SSL_set1_host(ssl, c->tls_names[i])
                         : SSL_add1_host(ssl, c->tls_names[i])) == 1;
    }
    if (ok && c->ntlsa > 0) {
        /* RFC 7672: DANE-EE matches the key or certificate alone, names
         * and dates aside; DANE-TA needs a chain naming the MX host. */
        ok = SSL_dane_enable(ssl, c->dane_name) > 0;
        if (ok)
            SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
        int usable = 0;
        for (size_t i = 0; ok && i < c->ntlsa; i++) {
            const struct smtpc_tlsa *t = &c->tlsa[i];
            if (SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype,
                                  t->data, t->len) > 0)
                usable++;
        }
        ERR_clear_error(); /* a malformed record is only not usable */
        /* RFC 7672 2.2: TLSA records but none usable (OpenSSL refused
         * them all): TLS stays mandatory, without authentication, as
         * for records of usage 0 or 1. */
        c->dane_unusable = ok && usable == 0;
    }
    /* The handshake never stops on the certificate: the mode decides
     * what a failed check means once it is done (tls_established). */
    if (ok)
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    struct bufferevent *tb = NULL;
    if (ok) {
        bufferevent_set_timeouts(c->bev, NULL, NULL);
        tb = bufferevent_openssl_filter_new(c->base, c->bev, ssl,
                                            BUFFEREVENT_SSL_CONNECTING,
                                            BEV_OPT_CLOSE_ON_FREE);
        /* On failure libevent has freed ssl already (CLOSE_ON_FREE);
         * the socket's bufferevent is untouched. */
        ssl = NULL;
    }
    if (tb == NULL) {
        char e[200];
        tls_err_text(e, sizeof(e), 0);
        str_printf(c->tls.error, sizeof(c->tls.error),
                   "cannot start TLS: %s", e[0] ? e : "out of memory");
        SSL_free(ssl);
        fail(c, SMTPC_TLS, NULL);
        return;
    }
    /* Servers that close without close_notify after QUIT are normal. */
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    c->bev = tb;
    bufferevent_setcb(tb, on_read, on_write, on_event, c);
    bufferevent_setwatermark(tb, EV_WRITE, CONTENT_CHUNK / 2, 0);
    c->state = ST_HANDSHAKE;
    set_read_timeout(c, c->cfg.command_timeout);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
}

/* The handshake is done: check the certificate as the mode asks, then a
 * fresh EHLO inside TLS (RFC 3207 4.2: forget what the server said). */
static void tls_established(struct smtpc *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    c->tls.seconds = (double)(now.tv_sec - c->tls_start.tv_sec) +
                     (double)(now.tv_nsec - c->tls_start.tv_nsec) / 1e9;
    c->tls.active = true;
    str_copy(c->tls.protocol, sizeof(c->tls.protocol), SSL_get_version(ssl));
    str_copy(c->tls.cipher, sizeof(c->tls.cipher), SSL_get_cipher_name(ssl));
    c->tls.dane_usage = -1;
    if (c->ntlsa > 0 && !c->dane_unusable) {
        c->tls.checked = true;
        c->tls.dane = true;
        long vr = SSL_get_verify_result(ssl);
        uint8_t usage = 0;
        if (vr == X509_V_OK &&
            SSL_get0_dane_tlsa(ssl, &usage, NULL, NULL, NULL, NULL) >= 0) {
            c->tls.verified = true;
            c->tls.dane_usage = usage;
            str_copy(c->tls.peer_name, sizeof(c->tls.peer_name),
                     c->dane_name);
        } else {
            str_printf(c->tls.verify_error, sizeof(c->tls.verify_error),
                       "%ld:%s", vr,
                       vr == X509_V_OK ? "no TLSA record matched"
                                       : X509_verify_cert_error_string(vr));
            str_printf(c->tls.error, sizeof(c->tls.error),
                       "DANE verification failed: %s", c->tls.verify_error);
            fail_after_quit(c, SMTPC_TLS, NULL);
            return;
        }
    } else if (tls_verify_mode(c)) {
        c->tls.checked = true;
        long vr = SSL_get_verify_result(ssl);
        if (SSL_get0_peer_certificate(ssl) == NULL)
            str_copy(c->tls.verify_error, sizeof(c->tls.verify_error),
                     "no certificate from server");
        else if (vr != X509_V_OK)
            str_printf(c->tls.verify_error, sizeof(c->tls.verify_error),
                       "%ld:%s", vr, X509_verify_cert_error_string(vr));
        else if (c->tls_names[0] == NULL)
            str_copy(c->tls.verify_error, sizeof(c->tls.verify_error),
                     "no name to check the certificate against");
        else {
            c->tls.verified = true;
            const char *pn = SSL_get0_peername(ssl);
            str_copy(c->tls.peer_name, sizeof(c->tls.peer_name),
                     pn ? pn : "");
        }
        if (!c->tls.verified && tls_required(c)) {
            str_printf(c->tls.error, sizeof(c->tls.error),
                       "verify error: %s", c->tls.verify_error);
            fail_after_quit(c, SMTPC_TLS, NULL);
            return;
        }
    }
    c->caps = 0;
    c->max_size = 0;
    c->state = ST_EHLO;
    send_line(c, "EHLO %s", c->helo);
    set_read_timeout(c, c->cfg.command_timeout);
}

/* The handshake failed, timed out or the server left during it. */
static void tls_handshake_failed(struct smtpc *c, short what)
{
    char e[200];
    tls_err_text(e, sizeof(e), bufferevent_get_openssl_error(c->bev));
    if (e[0])
        str_printf(c->tls.error, sizeof(c->tls.error),
                   "TLS handshake failed: %s", e);
    else if (what & BEV_EVENT_TIMEOUT)
        str_copy(c->tls.error, sizeof(c->tls.error),
                 "TLS handshake timed out");
    else
        str_copy(c->tls.error, sizeof(c->tls.error),
                 "connection closed during the TLS handshake");
    fail(c, SMTPC_TLS, NULL);
}

/* The QUIT exchange is over (or gave up): tell the owner, free. */
static void quit_done(struct smtpc *c)
{
    if (c->quitting && c->cb.closed)
        c->cb.closed(c->arg, c);
    smtpc_free(c);
}

/* A complete reply: dispatch by state. The owner may free c inside a
 * callback, so every path that calls one returns right after. */
static void on_reply(struct smtpc *c, const struct smtpc_reply *r)
{
    if (r->code == 421 && c->state != ST_QUIT && c->state != ST_FAIL_QUIT) {
        /* The server is going away: whatever we asked, it is over. The
         * reply answers the oldest command outstanding. */
        if (c->state == ST_TXN) {
            if (c->want_mail)
                c->res.mail = *r;
            else if (c->want_rcpt < c->txn.nrcpt)
                c->res.rcpt[c->want_rcpt] = *r;
            else if (c->want_data)
                c->res.data = *r;
        } else if (c->state == ST_CONTENT || c->state == ST_DOT) {
            c->res.done = *r;
        }
        fail(c, SMTPC_SHUTDOWN, r);
        return;
    }
    switch (c->state) {
    case ST_GREETING:
        if (r->code / 100 != 2) {
            if (r->code == 421) {
                fail(c, SMTPC_SHUTDOWN, r);
                return;
            }
            /* RFC 5321 3.1: a 554 greeting waits for our QUIT. Report
             * the refusal once that is answered (or the server closes). */
            fail_after_quit(c, SMTPC_GREETING, r);
            return;
        }
        c->state = ST_EHLO;
        send_line(c, "EHLO %s", c->helo);
        set_read_timeout(c, c->cfg.command_timeout);
        return;
    case ST_EHLO:
        if (r->code / 100 == 2)
            break;
        c->caps = 0;
        c->max_size = 0;
        c->state = ST_HELO;
        send_line(c, "HELO %s", c->helo);
        return;
    case ST_HELO:
        if (r->code / 100 != 2) {
            fail(c, SMTPC_HELO, r);
            return;
        }
        break;
    case ST_TXN:
        txn_reply(c, r);
        return;
    case ST_CONTENT:
        /* A reply before the dot: the server gave up on the message. */
        c->res.done = *r;
        fail(c, SMTPC_PROTOCOL, r);
        return;
    case ST_DOT:
        c->res.done = *r;
        c->state = ST_READY;
        set_read_timeout(c, 0);
        c->cb.txn_done(c->arg, c, &c->res);
        return;
    case ST_RSET:
        if (r->code / 100 != 2) {
            fail(c, SMTPC_PROTOCOL, r);
            return;
        }
        c->state = ST_READY;
        set_read_timeout(c, 0);
        c->cb.txn_done(c->arg, c, &c->res);
        return;
    case ST_QUIT:
        quit_done(c);
        return;
    case ST_FAIL_QUIT:
        fail(c, c->quit_fail, &c->greet);
        return;
    case ST_STARTTLS:
        if (r->code == 220) {
            tls_handshake(c);
            return;
        }
        str_printf(c->tls.error, sizeof(c->tls.error),
                   "STARTTLS unexpected response: %d%s%s %s", r->code,
                   r->enh[0] ? " " : "", r->enh, r->text);
        if (tls_required(c)) {
            fail_after_quit(c, SMTPC_TLS, r);
            return;
        }
        break; /* preferred: the session goes on in plaintext */
    case ST_HANDSHAKE:
        fail(c, SMTPC_PROTOCOL, r); /* cannot happen: the filter reads */
        return;
    case ST_READY:
    case ST_CONNECTING:
    default:
        /* Unasked-for reply while idle: the session is not sane. */
        fail(c, SMTPC_PROTOCOL, r);
        return;
    }
    /* EHLO or HELO accepted (or STARTTLS refused in a preferred mode). */
    if (c->state != ST_STARTTLS && tls_begin(c))
        return;
    c->state = ST_READY;
    set_read_timeout(c, 0);
    c->cb.ready(c->arg, c);
}

/* An EHLO reply line names an extension (RFC 5321 4.1.1.1). */
static void ehlo_keyword(struct smtpc *c, const char *s, size_t n)
{
    static const struct {
        const char *name;
        unsigned cap;
    } kw[] = {
        {"PIPELINING", SMTPC_CAP_PIPELINING}, {"SIZE", SMTPC_CAP_SIZE},
        {"8BITMIME", SMTPC_CAP_8BITMIME}, {"ENHANCEDSTATUSCODES", SMTPC_CAP_ENHANCED},
        {"SMTPUTF8", SMTPC_CAP_SMTPUTF8}, {"STARTTLS", SMTPC_CAP_STARTTLS},
        {"CHUNKING", SMTPC_CAP_CHUNKING},
    };
    size_t w = 0;
    while (w < n && s[w] != ' ')
        w++;
    for (size_t i = 0; i < ARRAY_LEN(kw); i++) {
        if (strlen(kw[i].name) != w || strncasecmp(s, kw[i].name, w) != 0)
            continue;
        c->caps |= kw[i].cap;
        if (kw[i].cap == SMTPC_CAP_SIZE && w < n) {
            uint64_t v;
            const char *a = s + w + 1;
            size_t alen = n - w - 1;
            if (parse_u64(a, alen, &v))
                c->max_size = v;
        }
    }
}

/* One line from the server. A callback may free c inside. */
static void on_line(struct smtpc *c, const char *line, size_t len)
{
    bool more;
    int code = smtpc_parse_line(line, len, &more, c->state == ST_GREETING);
    if (code < 0 || (c->rep_open && code != c->rep.code)) {
        struct smtpc_reply r = {0};
        rep_add_text(&r, line, len);
        fail(c, SMTPC_PROTOCOL, &r);
        return;
    }
    const char *text = len > 4 ? line + 4 : "";
    size_t tlen = len > 4 ? len - 4 : 0;
    if (!c->rep_open) {
        memset(&c->rep, 0, sizeof(c->rep));
        c->rep.code = code;
        c->rep_open = true;
        c->rep_lines = 0;
        if (c->state != ST_GREETING) {
            size_t skip = take_enhanced(&c->rep, text, tlen);
            text += skip;
            tlen -= skip;
        }
    } else if (c->rep.enh[0]) {
        /* Continuation lines repeat the enhanced code; drop it. */
        struct smtpc_reply tmp = {0};
        size_t skip = take_enhanced(&tmp, text, tlen);
        text += skip;
        tlen -= skip;
    }
    if (++c->rep_lines > SMTPC_LINES_MAX) {
        fail(c, SMTPC_PROTOCOL, &c->rep);
        return;
    }
    if (c->state == ST_EHLO && code == 250 && c->rep_lines > 1)
        ehlo_keyword(c, line + 4, len > 4 ? len - 4 : 0);
    else
        rep_add_text(&c->rep, text, tlen);
    if (more)
        return;
    c->rep_open = false;
    struct smtpc_reply r = c->rep;
    on_reply(c, &r);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    /* Lines already read are answers to commands in order, so they are
     * all handled, unless a callback freed the connection. */
    bool alive = true;
    c->alive = &alive;
    for (;;) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            c->alive = NULL;
            /* A partial line may hold its CR already: + 2 for CRLF. */
            if (evbuffer_get_length(in) > SMTPC_LINE_MAX + 2) {
                struct smtpc_reply r = {0};
                rep_add_text(&r, "reply line too long", 19);
                fail(c, SMTPC_PROTOCOL, &r);
            }
            return;
        }
        if (n > SMTPC_LINE_MAX) {
            free(line);
            c->alive = NULL;
            struct smtpc_reply r = {0};
            rep_add_text(&r, "reply line too long", 19);
            fail(c, SMTPC_PROTOCOL, &r);
            return;
        }
        on_line(c, line, n);
        free(line);
        if (!alive)
            return;
        if (bev != c->bev) {
            /* STARTTLS: the TLS filter reads the socket from now on. */
            c->alive = NULL;
            return;
        }
        if (c->state == ST_QUIT && !bufferevent_get_enabled(c->bev)) {
            c->alive = NULL; /* failed; the owner frees it later */
            return;
        }
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;
    (void)bev;
    if (c->state == ST_CONTENT)
        pump_content(c);
}

static void note_local(struct smtpc *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = bufferevent_getfd(c->bev);
    c->local_ip[0] = '\0';
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->local_ip,
                  sizeof(c->local_ip));
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr,
                  c->local_ip, sizeof(c->local_ip));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct smtpc *c = arg;
    (void)bev;
    if ((what & BEV_EVENT_CONNECTED) && c->state != ST_HANDSHAKE) {
        if (c->quitting)
            return; /* smtpc_quit while connecting: the timer closes it */
        note_local(c);
        c->state = ST_GREETING;
        set_read_timeout(c, c->cfg.greeting_timeout);
        if (c->cb.connected)
            c->cb.connected(c->arg, c);
        return;
    }
    if (c->state == ST_QUIT) {
        quit_done(c);
        return;
    }
    if (c->state == ST_FAIL_QUIT) {
        fail(c, c->quit_fail, &c->greet); /* closed or timed out after QUIT */
        return;
    }
    if (c->state == ST_HANDSHAKE) {
        if (what & BEV_EVENT_CONNECTED)
            tls_established(c);
        else
            tls_handshake_failed(c, what);
        return;
    }
    enum smtpc_fail f = SMTPC_NETWORK;
    if (c->state == ST_CONNECTING)
        note_local(c);
    if (what & BEV_EVENT_TIMEOUT)
        f = SMTPC_TIMEOUT;
    else if (c->state == ST_CONNECTING)
        f = SMTPC_CONNECT;
    else if (what & BEV_EVENT_EOF)
        f = SMTPC_EOF;
    fail(c, f, NULL);
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct smtpc *c = arg;
    (void)fd;
    (void)what;
    fail(c, c->pending_fail, NULL);
}

static void on_quit_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    quit_done(arg);
}

/* ---- interface ---- */

struct smtpc *smtpc_connect(struct event_base *base,
                            const struct smtpc_config *cfg,
                            const struct sockaddr *sa, socklen_t salen,
                            const struct smtpc_callbacks *cb, void *arg)
{
    struct smtpc *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->cfg = *cfg;
    c->helo = xstrdup(cfg->helo);
    c->cfg.helo = c->helo;
    if (cfg->tls_sni)
        c->tls_sni = xstrdup(cfg->tls_sni);
    for (size_t i = 0; i < cfg->tls_nnames && i < SMTPC_TLS_NAMES_MAX; i++)
        c->tls_names[i] = xstrdup(cfg->tls_names[i]);
    c->cfg.tls_sni = NULL;
    c->cfg.tls_nnames = 0;
    if (cfg->ntlsa && cfg->dane_name) {
        size_t n = cfg->ntlsa < SMTPC_TLSA_MAX ? cfg->ntlsa : SMTPC_TLSA_MAX;
        c->tlsa = xcalloc(n, sizeof(*c->tlsa));
        for (size_t i = 0; i < n; i++) {
            c->tlsa[i] = cfg->tlsa[i];
            uint8_t *d = xmalloc(cfg->tlsa[i].len + 1);
            memcpy(d, cfg->tlsa[i].data, cfg->tlsa[i].len);
            c->tlsa[i].data = d;
        }
        c->ntlsa = n;
        c->dane_name = xstrdup(cfg->dane_name);
    }
    c->cfg.ntlsa = 0;
    c->cfg.tlsa = NULL;
    c->cfg.dane_name = NULL;
    c->tls.required = c->cfg.tls_ctx && tls_required(c);
    /* The owner may replace its context (a commit) while this
     * connection is still before its STARTTLS. */
    if (c->cfg.tls_ctx)
        SSL_CTX_up_ref(c->cfg.tls_ctx);
    c->cb = *cb;
    c->arg = arg;
    c->state = ST_CONNECTING;
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->notify = evtimer_new(base, on_notify, c);
    if (c->bev == NULL || c->notify == NULL) {
        smtpc_free(c);
        errno = ENOMEM;
        return NULL;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, CONTENT_CHUNK / 2, 0);
    struct timeval ct = {(time_t)cfg->connect_timeout, 0};
    bufferevent_set_timeouts(c->bev, &ct, &ct);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, sa, (int)salen) != 0) {
        /* Reported like any refused connection, but not from inside
         * this call. */
        c->pending_fail = SMTPC_CONNECT;
        struct timeval now = {0, 0};
        evtimer_add(c->notify, &now);
    }
    return c;
}

void smtpc_send(struct smtpc *c, const struct smtpc_txn *t)
{
    result_reset(c);
    c->txn = *t;
    c->res.rcpt = xcalloc(t->nrcpt ? t->nrcpt : 1, sizeof(*c->res.rcpt));
    c->state = ST_TXN;
    c->want_mail = true;
    c->want_rcpt = 0;
    c->want_data = false;
    c->next_rcpt = 0;
    c->accepted = 0;
    send_mail(c);
    if (c->caps & SMTPC_CAP_PIPELINING) {
        for (size_t i = 0; i < t->nrcpt; i++)
            send_rcpt(c, i);
        c->next_rcpt = t->nrcpt;
        c->want_data = true;
        send_line(c, "DATA");
    }
    set_read_timeout(c, c->cfg.command_timeout);
}

void smtpc_quit(struct smtpc *c)
{
    if (c->state == ST_CONNECTING || c->bev == NULL) {
        /* Nothing to say; report the close from the loop, not from here. */
        c->quitting = true;
        c->state = ST_QUIT;
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
        struct timeval now = {0, 0};
        evtimer_del(c->notify);
        event_assign(c->notify, c->base, -1, 0, on_quit_notify, c);
        evtimer_add(c->notify, &now);
        return;
    }
    c->state = ST_QUIT;
    c->quitting = true;
    send_line(c, "QUIT");
    set_read_timeout(c, QUIT_WAIT);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

void smtpc_free(struct smtpc *c)
{
    if (c == NULL)
        return;
    if (c->alive)
        *c->alive = false;
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->notify)
        event_free(c->notify);
    free(c->res.rcpt);
    free(c->helo);
    free(c->tls_sni);
    for (size_t i = 0; i < SMTPC_TLS_NAMES_MAX; i++)
        free(c->tls_names[i]);
    for (size_t i = 0; i < c->ntlsa; i++)
        free((void *)c->tlsa[i].data);
    free(c->tlsa);
    free(c->dane_name);
    SSL_CTX_free(c->cfg.tls_ctx);
    free(c);
}

unsigned smtpc_caps(const struct smtpc *c)
{
    return c->caps;
}

uint64_t smtpc_max_size(const struct smtpc *c)
{
    return c->max_size;
}

const char *smtpc_local_ip(const struct smtpc *c)
{
    return c->local_ip;
}

const struct smtpc_tls_info *smtpc_tls(const struct smtpc *c)
{
    return &c->tls;
}

const char *smtpc_tls_mode_name(enum smtpc_tls_mode m)
{
    static const char *const names[] = {
        [SMTPC_TLS_NO] = "No",
        [SMTPC_TLS_PREFERRED] = "Preferred",
        [SMTPC_TLS_REQUIRED] = "Required",
        [SMTPC_TLS_PREFERRED_VERIFY] = "Preferred - Verify",
        [SMTPC_TLS_REQUIRED_VERIFY] = "Required - Verify",
        [SMTPC_TLS_REQUIRED_VERIFY_HOSTED] = "Required - Verify Hosted Domains",
    };
    return (unsigned)m < ARRAY_LEN(names) ? names[m] : "?";
}
