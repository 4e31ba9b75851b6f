/*
 * test_smtpc.c - the SMTP client (delivery/smtpc.c) against a scripted
 * SMTP server on 127.0.0.1, both on one event_base in this process.
 *
 * A dialogue is a table of steps that reads like a transcript:
 *
 *     {NULL,   "220 mx.test ESMTP"},          the greeting, sent on accept
 *     {"EHLO", "250-mx.test\n250 SIZE"},      expect a line, then reply
 *     {"MAIL", NULL, SF_CLOSE},               expect a line, then hang up
 *
 * "expect" is a prefix of the line the server must read next. A reply is
 * lines joined by '\n' (the server sends CRLF), or raw bytes with SF_RAW;
 * a step may hold its reply back for delay_ms, or send part of it later.
 * After a reply that starts "354" the server keeps the content exactly as
 * it came over the wire (still dot-stuffed) up to the lone ".", which is
 * then matched against the next step. Every line the server reads is
 * recorded with the number of complete lines already waiting behind it,
 * so a test sees what arrived pipelined.
 *
 * The owner side records every callback, notes callbacks that run inside
 * an smtpc_* call or after it let go of the connection, and frees the
 * connection from inside callbacks, as the delivery queue does; the build
 * runs under ASan, so a use after free in smtpc shows up here.
 *
 * The test_fixed_* cases are regressions for bugs these tests found (each
 * comment says what was wrong).
 */
#include "core/util.h"

#include "delivery/smtpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <setjmp.h> /* cmocka needs it first */

#include <cmocka.h>

/* Script steps are written {expect, reply} with flags, delay and the
 * later part left out, so that a dialogue reads like a transcript. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define HELO "client.test"
#define MAX_STEPS 256
#define MAX_SEEN 256
#define MAX_CONTENT 16
#define MAX_TXN 16
#define MAX_RCPT 8
#define WATCHDOG 6 /* seconds any one dialogue may take */


/* ---- the scripted server ---- */

#define SF_RAW 0x1u   /* send the reply as is, no CRLF added */
#define SF_CLOSE 0x2u /* close the connection once the reply is out */

struct step {
    const char *expect; /* prefix of the line to read; NULL: greeting */
    const char *reply;  /* NULL: say nothing */
    unsigned flags;
    unsigned delay_ms; /* wait before replying */
    const char *later; /* if set: reply at once, send this (raw) after
                          delay_ms, then close if SF_CLOSE */
};

struct server {
    struct event_base *base;
    evutil_socket_t lfd;
    struct event *accept_ev;
    struct event *delay;
    struct bufferevent *bev;
    uint16_t port;
    struct step steps[MAX_STEPS];
    size_t nsteps, at;
    const struct step *pending; /* delayed reply */
    bool data_mode, waiting, closing, closed;
    unsigned accepted;
    char *seen[MAX_SEEN];    /* lines read, in order ("." ends a DATA) */
    size_t behind[MAX_SEEN]; /* complete lines waiting behind each */
    size_t nseen;
    size_t behind_at_reply; /* most lines waiting when a delayed reply went */
    struct evbuffer *content[MAX_CONTENT]; /* each DATA, as received */
    size_t ncontent;
    unsigned nerrors;
    char error[512]; /* the first deviation from the script */
};

static void server_note(struct server *s, const char *fmt, ...)
    MOAT_PRINTF(2, 3);
static void server_note(struct server *s, const char *fmt, ...)
{
    va_list ap;
    if (s->nerrors++ > 0)
        return;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof(s->error), fmt, ap);
    va_end(ap);
}

static void server_close(struct server *s)
{
    if (s->bev != NULL) {
        bufferevent_free(s->bev);
        s->bev = NULL;
    }
    evtimer_del(s->delay);
    s->waiting = false;
    s->closing = false;
    s->closed = true;
}

/* Complete lines in the buffer (command phase only: it linearises). */
static size_t lines_waiting(struct evbuffer *in)
{
    size_t len = evbuffer_get_length(in), n = 0;
    const unsigned char *p = evbuffer_pullup(in, -1);
    for (size_t i = 0; i < len; i++)
        n += p[i] == '\n';
    return n;
}

static void server_begin_data(struct server *s)
{
    s->data_mode = true;
    if (s->ncontent >= MAX_CONTENT) {
        server_note(s, "more than %d DATA phases", MAX_CONTENT);
        s->ncontent = MAX_CONTENT - 1;
    }
    if (s->content[s->ncontent] == NULL)
        s->content[s->ncontent] = evbuffer_new();
}

static void server_send(struct server *s, const char *reply, unsigned flags)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (flags & SF_RAW) {
        evbuffer_add(out, reply, strlen(reply));
    } else {
        const char *p = reply;
        for (;;) {
            const char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) : strlen(p);
            evbuffer_add(out, p, n);
            evbuffer_add(out, "\r\n", 2);
            if (nl == NULL)
                break;
            p = nl + 1;
        }
    }
    if (strncmp(reply, "354", 3) == 0)
        server_begin_data(s);
}

static void server_reply(struct server *s, const struct step *st)
{
    if (st->reply != NULL)
        server_send(s, st->reply, st->flags);
    if (st->flags & SF_CLOSE) {
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            server_close(s);
        else
            s->closing = true; /* srv_on_write closes once it is out */
    }
}

static void server_step(struct server *s, const struct step *st)
{
    if (st->delay_ms == 0) {
        server_reply(s, st);
        return;
    }
    struct timeval tv = {(time_t)(st->delay_ms / 1000),
                         (suseconds_t)(st->delay_ms % 1000) * 1000};
    s->pending = st;
    if (st->later != NULL) {
        if (st->reply != NULL)
            server_send(s, st->reply, st->flags);
    } else {
        s->waiting = true; /* read nothing more until the reply is out */
    }
    evtimer_add(s->delay, &tv);
}

/* One line read from the client (behind: complete lines after it). */
static void server_line(struct server *s, const char *line, size_t n,
                        size_t behind)
{
    if (s->data_mode) {
        if (n != 1 || line[0] != '.') {
            evbuffer_add(s->content[s->ncontent], line, n);
            evbuffer_add(s->content[s->ncontent], "\r\n", 2);
            return;
        }
        s->data_mode = false;
        s->ncontent++;
    }
    if (s->nseen < MAX_SEEN) {
        s->seen[s->nseen] = xstrndup(line, n);
        s->behind[s->nseen] = behind;
        s->nseen++;
    }
    if (s->at >= s->nsteps) {
        server_note(s, "\"%.*s\" came after the end of the script", (int)n,
                    line);
        server_send(s, "502 5.5.1 not in the script", 0);
        return;
    }
    const struct step *st = &s->steps[s->at++];
    if (st->expect != NULL &&
        strncasecmp(line, st->expect, strlen(st->expect)) != 0)
        server_note(s, "step %zu: expected \"%s\", got \"%.*s\"", s->at - 1,
                    st->expect, (int)n, line);
    server_step(s, st);
}

static void server_input(struct server *s)
{
    while (s->bev != NULL && !s->waiting && !s->closing) {
        struct evbuffer *in = bufferevent_get_input(s->bev);
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
        if (line == NULL)
            return;
        size_t behind = s->data_mode ? 0 : lines_waiting(in);
        server_line(s, line, n, behind);
        free(line);
    }
}

static void srv_on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    server_input(arg);
}

static void srv_on_write(struct bufferevent *bev, void *arg)
{
    struct server *s = arg;
    if (s->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        server_close(s);
}

/* EOF or reset from the client. */
static void srv_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    server_close(arg);
}

static void srv_on_delay(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    (void)fd;
    (void)what;
    if (s->pending->later != NULL) {
        const struct step rest = {NULL, s->pending->later,
                                  s->pending->flags | SF_RAW, 0, NULL};
        server_reply(s, &rest);
        return;
    }
    size_t behind = lines_waiting(bufferevent_get_input(s->bev));
    if (behind > s->behind_at_reply)
        s->behind_at_reply = behind;
    s->waiting = false;
    server_reply(s, s->pending);
    server_input(s);
}

static void srv_on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct server *s = arg;
    (void)what;
    evutil_socket_t fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return;
    if (s->bev != NULL || s->closed) {
        server_note(s, "a second connection");
        evutil_closesocket(fd);
        return;
    }
    evutil_make_socket_nonblocking(fd);
    s->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(s->bev, srv_on_read, srv_on_write, srv_on_event, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    s->accepted++;
    if (s->nsteps > 0 && s->steps[0].expect == NULL) {
        s->at = 1;
        server_step(s, &s->steps[0]);
    }
}

static void server_listen(struct server *s, struct event_base *base)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int one = 1;
    memset(s, 0, sizeof(*s));
    s->base = base;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sin, &len), 0);
    s->port = ntohs(sin.sin_port);
    evutil_make_socket_nonblocking(s->lfd);
    s->accept_ev =
        event_new(base, s->lfd, EV_READ | EV_PERSIST, srv_on_accept, s);
    event_add(s->accept_ev, NULL);
    s->delay = evtimer_new(base, srv_on_delay, s);
}

/* Forget the last dialogue; keep listening on the same port. */
static void server_reset(struct server *s)
{
    server_close(s);
    for (size_t i = 0; i < s->nseen; i++)
        free(s->seen[i]);
    for (size_t i = 0; i < MAX_CONTENT; i++) {
        if (s->content[i] != NULL)
            evbuffer_free(s->content[i]);
        s->content[i] = NULL;
    }
    s->nsteps = s->at = s->nseen = s->ncontent = 0;
    s->pending = NULL;
    s->data_mode = s->closed = false;
    s->accepted = s->nerrors = 0;
    s->behind_at_reply = 0;
    s->error[0] = '\0';
}

static void server_free(struct server *s)
{
    server_reset(s);
    event_free(s->accept_ev);
    event_free(s->delay);
    evutil_closesocket(s->lfd);
}

static void server_add(struct server *s, const char *expect, const char *reply,
                       unsigned flags)
{
    assert_true(s->nsteps < MAX_STEPS);
    s->steps[s->nsteps++] = (struct step){expect, reply, flags, 0, NULL};
}

static void server_script(struct server *s, const struct step *steps, size_t n)
{
    assert_true(n <= MAX_STEPS);
    memcpy(s->steps, steps, n * sizeof(*steps));
    s->nsteps = n;
}

/* ---- the owner (what the delivery queue would be) ---- */

enum on_ready { R_SEND, R_QUIT, R_FREE, R_IDLE };

struct txn_rec {
    enum smtpc_fail fail;
    struct smtpc_reply mail, data, done;
    struct smtpc_reply rcpt[MAX_RCPT];
    size_t nrcpt;
    bool content_error;
};

struct owner {
    struct event_base *base;
    struct server *srv; /* NULL: no server takes part */
    struct smtpc *c;
    struct smtpc_config cfg;
    enum on_ready on_ready;
    bool free_on_txn;             /* txn_done frees instead of going on */
    const struct smtpc_txn *txns; /* sent one after another, then QUIT */
    size_t ntxns, nsent;
    int nconnected, nready, nfailed, ntxn, nclosed;
    enum smtpc_fail fail;
    struct smtpc_reply reply;
    struct txn_rec txn[MAX_TXN];
    unsigned caps;
    uint64_t max_size;
    char local_ip[64];
    bool in_call;        /* inside an smtpc_* call made by the owner */
    int cb_in_call;      /* callbacks that ran inside such a call */
    int cb_after_finish; /* callbacks after the owner let go of c */
    bool finished;       /* the owner freed c or handed it to smtpc_quit */
    bool quitting;       /* handed to smtpc_quit, not yet closed() */
    bool timed_out;
};

static void owner_reset(struct owner *o)
{
    struct event_base *base = o->base;
    struct server *srv = o->srv;
    memset(o, 0, sizeof(*o));
    o->base = base;
    o->srv = srv;
    o->cfg = (struct smtpc_config){
        .helo = HELO,
        .connect_timeout = 2,
        .greeting_timeout = 2,
        .command_timeout = 2,
        .data_timeout = 2,
        .data_done_timeout = 2,
    };
    o->on_ready = R_SEND;
}

static void owner_free(struct owner *o, struct smtpc *c)
{
    o->quitting = false;
    smtpc_free(c);
    if (o->c == c)
        o->c = NULL;
    o->finished = true;
}

static void owner_quit(struct owner *o, struct smtpc *c)
{
    o->in_call = true;
    o->quitting = true;
    smtpc_quit(c);
    o->in_call = false;
    if (o->c == c)
        o->c = NULL;
    o->finished = true;
}

/* Send the next transaction, or QUIT when there is none. */
static void owner_next(struct owner *o, struct smtpc *c)
{
    if (o->nsent >= o->ntxns) {
        owner_quit(o, c);
        return;
    }
    o->in_call = true;
    smtpc_send(c, &o->txns[o->nsent++]);
    o->in_call = false;
}

/* Common to every callback: false if the owner must not act on it. */
static bool owner_enter(struct owner *o)
{
    if (o->in_call) {
        o->cb_in_call++;
        return false; /* freeing here would pull c from under the call */
    }
    if (o->finished) {
        o->cb_after_finish++;
        return false;
    }
    return true;
}

static void cb_connected(void *arg, struct smtpc *c)
{
    struct owner *o = arg;
    (void)c;
    owner_enter(o);
    o->nconnected++;
}

static void cb_ready(void *arg, struct smtpc *c)
{
    struct owner *o = arg;
    if (!owner_enter(o))
        return;
    o->nready++;
    o->caps = smtpc_caps(c);
    o->max_size = smtpc_max_size(c);
    str_copy(o->local_ip, sizeof(o->local_ip), smtpc_local_ip(c));
    switch (o->on_ready) {
    case R_SEND:
        owner_next(o, c);
        break;
    case R_QUIT:
        owner_quit(o, c);
        break;
    case R_FREE:
        owner_free(o, c);
        break;
    case R_IDLE:
        break;
    }
}

static void cb_failed(void *arg, struct smtpc *c, enum smtpc_fail f,
                      const struct smtpc_reply *r)
{
    struct owner *o = arg;
    bool act = owner_enter(o);
    o->nfailed++;
    o->fail = f;
    o->reply = *r;
    if (act || o->finished)
        owner_free(o, c); /* after quit nobody else would free it */
}

static void cb_txn_done(void *arg, struct smtpc *c,
                        const struct smtpc_result *res)
{
    struct owner *o = arg;
    bool act = owner_enter(o);
    if (o->ntxn < MAX_TXN) {
        struct txn_rec *t = &o->txn[o->ntxn];
        size_t n = o->nsent > 0 ? o->txns[o->nsent - 1].nrcpt : 0;
        t->fail = res->fail;
        t->mail = res->mail;
        t->data = res->data;
        t->done = res->done;
        t->content_error = res->content_error;
        t->nrcpt = n;
        for (size_t i = 0; i < n && i < MAX_RCPT; i++)
            t->rcpt[i] = res->rcpt[i];
    }
    o->ntxn++;
    if (!act) {
        if (o->finished)
            owner_free(o, c);
        return;
    }
    if (res->fail != SMTPC_OK || o->free_on_txn)
        owner_free(o, c);
    else
        owner_next(o, c);
}

/* After smtpc_quit: the connection is closed and smtpc frees it. */
static void cb_closed(void *arg, struct smtpc *c)
{
    struct owner *o = arg;
    (void)c;
    if (o->in_call)
        o->cb_in_call++;
    o->nclosed++;
    o->quitting = false;
}

static const struct smtpc_callbacks owner_cbs = {
    .connected = cb_connected,
    .ready = cb_ready,
    .failed = cb_failed,
    .txn_done = cb_txn_done,
    .closed = cb_closed,
};

static void owner_connect_to(struct owner *o, const struct sockaddr *sa,
                             socklen_t salen)
{
    o->in_call = true;
    o->c = smtpc_connect(o->base, &o->cfg, sa, salen, &owner_cbs, o);
    o->in_call = false;
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct owner *o = arg;
    (void)fd;
    (void)what;
    o->timed_out = true;
}

static bool owner_done(const struct owner *o)
{
    return o->finished && !o->quitting && (o->srv == NULL || o->srv->closed);
}

/* Run the loop until the owner let go (after a quit: until closed()) and
 * the server saw the connection end. */
static void run(struct owner *o)
{
    struct timeval tv = {WATCHDOG, 0};
    struct event *t = evtimer_new(o->base, on_watchdog, o);
    evtimer_add(t, &tv);
    while (!owner_done(o) && !o->timed_out)
        event_base_loop(o->base, EVLOOP_ONCE);
    event_free(t);
}

/* ---- fixture ---- */

struct fx {
    struct event_base *base;
    struct server srv;
    struct owner o;
};

static int fx_setup(void **state)
{
    struct fx *fx = xcalloc(1, sizeof(*fx));
    fx->base = event_base_new();
    assert_non_null(fx->base);
    server_listen(&fx->srv, fx->base);
    fx->o.base = fx->base;
    fx->o.srv = &fx->srv;
    owner_reset(&fx->o);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    if (fx->o.c != NULL && !fx->o.finished)
        smtpc_free(fx->o.c);
    server_free(&fx->srv);
    event_base_free(fx->base);
    free(fx);
    return 0;
}

/* Start a dialogue: the server will play script, the owner starts afresh
 * (set its fields, then call talk()). */
static struct owner *dialogue(struct fx *fx, const struct step *script,
                              size_t n)
{
    server_reset(&fx->srv);
    server_script(&fx->srv, script, n);
    owner_reset(&fx->o);
    return &fx->o;
}

#define DIALOGUE(fx, script) dialogue((fx), (script), ARRAY_LEN(script))

/* Connect to the scripted server and run the dialogue to its end; check
 * what every dialogue must satisfy. */
static void talk(struct fx *fx)
{
    struct owner *o = &fx->o;
    struct sockaddr_in sin = loopback(fx->srv.port);
    owner_connect_to(o, (const struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(o->c);
    assert_int_equal(o->nfailed, 0); /* never inside smtpc_connect */
    run(o);
    if (fx->srv.error[0] != '\0')
        fail_msg("server: %s", fx->srv.error);
    assert_false(o->timed_out);
    assert_int_equal(o->cb_in_call, 0);
    assert_int_equal(o->cb_after_finish, 0);
    assert_true(fx->srv.closed);
}

/* ---- checks ---- */

static void check_reply(const struct smtpc_reply *r, int code, const char *enh,
                        const char *text)
{
    assert_int_equal(r->code, code);
    assert_string_equal(r->enh, enh);
    if (text != NULL)
        assert_string_equal(r->text, text);
}

/* The server read exactly these lines (NULL-terminated list). */
static void check_seen(const struct server *s, const char *const *want)
{
    size_t i = 0;
    for (; want[i] != NULL; i++) {
        if (i >= s->nseen)
            fail_msg("server read %zu lines; next expected \"%s\"", s->nseen,
                     want[i]);
        if (strcmp(s->seen[i], want[i]) != 0)
            fail_msg("line %zu: \"%s\", expected \"%s\"", i, s->seen[i],
                     want[i]);
    }
    if (s->nseen != i)
        fail_msg("server read %zu lines, expected %zu; extra \"%s\"", s->nseen,
                 i, s->seen[i]);
}

static bool saw_line(const struct server *s, const char *line)
{
    for (size_t i = 0; i < s->nseen; i++)
        if (strcmp(s->seen[i], line) == 0)
            return true;
    return false;
}

static size_t content_len(const struct server *s, size_t i)
{
    return s->content[i] ? evbuffer_get_length(s->content[i]) : 0;
}

static const char *content_of(const struct server *s, size_t i)
{
    if (s->content[i] == NULL)
        return "";
    return (const char *)evbuffer_pullup(s->content[i], -1);
}

/* DATA phase i carried exactly want (what precedes the final dot). */
static void check_content(const struct server *s, size_t i, const char *want,
                          size_t len)
{
    size_t got = content_len(s, i);
    const char *p = content_of(s, i);
    size_t k = 0;
    while (k < got && k < len && p[k] == want[k])
        k++;
    if (got != len || k != len)
        fail_msg("content %zu: %zu bytes, expected %zu; first difference at "
                 "byte %zu",
                 i, got, len, k);
}

/* ---- content sources ---- */

struct source {
    const char *data;
    size_t len, off;
    size_t piece; /* most bytes per read; 0: as many as asked */
    bool fail;    /* return -1 once fail_at bytes were given */
    size_t fail_at;
};

static ssize_t source_read(void *arg, void *buf, size_t n)
{
    struct source *src = arg;
    size_t left = src->len - src->off;
    if (src->fail && src->off >= src->fail_at)
        return -1;
    if (src->fail && src->fail_at - src->off < left)
        left = src->fail_at - src->off;
    if (src->piece != 0 && left > src->piece)
        left = src->piece;
    if (left > n)
        left = n;
    memcpy(buf, src->data + src->off, left);
    src->off += left;
    return (ssize_t)left;
}

static struct source source_str(const char *s, size_t piece)
{
    return (struct source){.data = s, .len = strlen(s), .piece = piece};
}

static struct smtpc_txn txn_of(const char *from, const char *const *rcpts,
                               size_t nrcpt, struct source *src)
{
    return (struct smtpc_txn){
        .mail_from = from,
        .nrcpt = nrcpt,
        .rcpts = rcpts,
        .read = source_read,
        .read_arg = src,
    };
}

/* The content as it must travel between the 354 and the final dot: a
 * '.' starting a line doubled, a CRLF added when the last line lacks one
 * (RFC 5321 4.5.2). Written here apart from smtpc.c. */
static char *wire_form(const char *s, size_t len, size_t *out_len)
{
    char *out = xmalloc(2 * len + 3);
    size_t k = 0;
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && s[i] == '.')
            out[k++] = '.';
        out[k++] = s[i];
        bol = s[i] == '\n';
    }
    if (len > 0 && s[len - 1] != '\n') {
        out[k++] = '\r';
        out[k++] = '\n';
    }
    *out_len = k;
    return out;
}

/* About size bytes of CRLF lines of varied length; many start with '.',
 * some are a lone '.'. */
static char *make_big(size_t size, size_t *out_len)
{
    char *p = xmalloc(size + 256);
    size_t i = 0;
    for (unsigned line = 0; i < size; line++) {
        size_t len = (line * 37u) % 120u;
        if (line % 50u == 7u)
            len = 1;
        for (size_t k = 0; k < len; k++) {
            char ch = (char)('a' + (line + k) % 26u);
            if ((k == 0 && line % 3u == 0) || (k == 1 && line % 9u == 0) ||
                line % 50u == 7u)
                ch = '.';
            p[i++] = ch;
        }
        p[i++] = '\r';
        p[i++] = '\n';
    }
    *out_len = i;
    return p;
}

/* ---- common script lines ---- */

/* clang-format off */
#define GREET {NULL, "220 mx.test ESMTP ready"}
#define EHLO_PIPE                                                             \
    {"EHLO " HELO, "250-mx.test greets " HELO "\n250-SIZE 1000000\n"          \
                   "250-PIPELINING\n250-8BITMIME\n250 ENHANCEDSTATUSCODES"}
#define EHLO_PLAIN                                                            \
    {"EHLO " HELO, "250-mx.test greets " HELO "\n250 ENHANCEDSTATUSCODES"}
#define QUIT {"QUIT", "221 2.0.0 bye"}
/* clang-format on */

static const char *const rcpt_a[] = {"a@dest.test"};
static const char *const rcpt_ab[] = {"a@dest.test", "b@dest.test"};
static const char *const rcpt_abc[] = {"a@dest.test", "b@dest.test",
                                       "c@dest.test"};

/* Split so that 7-byte reads cut a CRLF with '.' right after it
 * ("abcdef\r" | "\n.gh\r\n." | "x\r\nyz\r\n" | ".last"), end a piece with
 * a '.' that starts a line, start a piece with one, and end without a
 * CRLF. */
static const char split_msg[] = "abcdef\r\n.gh\r\n.x\r\nyz\r\n.last";
static const char split_wire[] = "abcdef\r\n..gh\r\n..x\r\nyz\r\n..last\r\n";

/* ---- smtpc_parse_line ---- */

static const struct parse_case {
    const char *label;
    const char *line;
    bool masked_ok;
    int code;
    bool more;
} parse_cases[] = {
    {"last line", "250 ok", false, 250, false},
    {"continuation", "250-PIPELINING", false, 250, true},
    {"bare code", "354", false, 354, false},
    {"code and dash only", "250-", false, 250, true},
    {"code and space only", "221 ", false, 221, false},
    {"lowest code", "200 x", false, 200, false},
    {"highest code", "599 x", false, 599, false},
    {"below range", "199 x", false, -1, false},
    {"above range", "600 x", false, -1, false},
    {"zeros", "000 x", false, -1, false},
    {"too short", "25", false, -1, false},
    {"empty", "", false, -1, false},
    {"letter in code", "2x0 ok", false, -1, false},
    {"no separator", "250ok", false, -1, false},
    {"tab separator", "250\tok", false, -1, false},
    {"leading space", " 250 ok", false, -1, false},
    {"four digits", "2500 ok", false, -1, false},
    {"masked code, not allowed", "2**0****", false, -1, false},
    {"masked code, allowed", "2**0****", true, 220, false},
    {"masked code and space", "2** ****", true, 220, false},
    {"masked continuation", "2**-****", true, 220, true},
    {"partly masked code", "22* ready", true, 220, false},
    {"masked text, digits clear", "220 ***", false, 220, false},
    {"masked text, masked allowed", "220 2**0*****", true, 220, false},
    {"masked 5xx is no greeting", "5** go away", true, -1, false},
    {"all stars", "*** x", true, -1, false},
    {"masked, too short", "2*", true, -1, false},
    {"masked allowed, real code", "554 no", true, 554, false},
    {"masked allowed, digits need a separator", "220x", true, -1, false},
};

/* Case: reply line parsing, table-driven. */
static void test_parse_line(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *t = &parse_cases[i];
        bool more = !t->more; /* must be set either way */
        int code =
            smtpc_parse_line(t->line, strlen(t->line), &more, t->masked_ok);
        if (code != t->code || more != t->more)
            fail_msg("%s: \"%s\" gave %d more=%d, expected %d more=%d",
                     t->label, t->line, code, more, t->code, t->more);
    }
    /* Only len bytes count: no NUL needed, the rest is not looked at. */
    bool more = true;
    assert_int_equal(smtpc_parse_line("250-xyz", 3, &more, false), 250);
    assert_false(more);
    assert_int_equal(smtpc_parse_line("250 ok", 2, &more, false), -1);
}

/* Case: every failure has a name; an unknown value is "?". */
static void test_fail_names(void **state)
{
    (void)state;
    assert_string_equal(smtpc_fail_name(SMTPC_OK), "ok");
    for (int f = SMTPC_OK; f <= SMTPC_SHUTDOWN; f++) {
        const char *name = smtpc_fail_name((enum smtpc_fail)f);
        assert_non_null(name);
        assert_string_not_equal(name, "?");
    }
    assert_string_equal(smtpc_fail_name((enum smtpc_fail)99), "?");
}

/* ---- dialogues ---- */

/* Case: PIPELINING server. The EHLO reply gives the capabilities and the
 * size limit; MAIL, 3 RCPTs and DATA go out in one write; SIZE= and
 * BODY=8BITMIME are given; the content is dot-stuffed across 7-byte
 * reads and gets its final CRLF; replies and enhanced codes come back per
 * recipient; a second transaction (null sender) uses the same
 * connection; smtpc_quit says QUIT. */
static void test_pipelined_happy(void **state)
{
    struct fx *fx = *state;
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL FROM:<sender@src.test>", "250 2.1.0 sender ok"},
        {"RCPT TO:<a@dest.test>", "250 2.1.5 a ok"},
        {"RCPT TO:<b@dest.test>", "250 2.1.5 b ok"},
        {"RCPT TO:<c@dest.test>", "251 2.1.5 c will be forwarded"},
        {"DATA", "354 go ahead"},
        {".", "250 2.0.0 queued as A1"},
        {"MAIL FROM:<>", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "250 2.1.5 ok"},
        {"DATA", "354 go ahead"},
        {".", "250-2.0.0 queued\n250 2.0.0 as A2"},
        QUIT,
    };
    struct source s1 = source_str(split_msg, 7);
    struct source s2 = source_str(".\r\n..\r\nend\r\n", 0);
    struct smtpc_txn t[2] = {
        txn_of("sender@src.test", rcpt_abc, 3, &s1),
        txn_of("", rcpt_a, 1, &s2),
    };
    t[0].size = strlen(split_msg);
    t[0].body_8bit = true;
    t[0].smtputf8 = true; /* not offered: not sent */
    char mail1[128];
    assert_true(str_printf(mail1, sizeof(mail1),
                           "MAIL FROM:<sender@src.test> SIZE=%zu "
                           "BODY=8BITMIME",
                           strlen(split_msg)));

    struct owner *o = DIALOGUE(fx, script);
    o->txns = t;
    o->ntxns = 2;
    talk(fx);

    assert_int_equal(o->nconnected, 1);
    assert_int_equal(o->nready, 1);
    assert_int_equal(o->nfailed, 0);
    assert_int_equal(o->nclosed, 1);
    assert_int_equal(o->caps, SMTPC_CAP_PIPELINING | SMTPC_CAP_SIZE |
                                  SMTPC_CAP_8BITMIME | SMTPC_CAP_ENHANCED);
    assert_int_equal(o->max_size, 1000000);
    assert_string_equal(o->local_ip, "127.0.0.1");
    check_seen(&fx->srv,
               (const char *const[]){
                   "EHLO " HELO, mail1, "RCPT TO:<a@dest.test>",
                   "RCPT TO:<b@dest.test>", "RCPT TO:<c@dest.test>", "DATA",
                   ".", "MAIL FROM:<>", "RCPT TO:<a@dest.test>", "DATA", ".",
                   "QUIT", NULL});
    /* Pipelined: when the server read MAIL, the RCPTs and DATA were
     * already in its buffer. */
    assert_int_equal(fx->srv.behind[1], 4);
    assert_int_equal(fx->srv.behind[7], 2);

    assert_int_equal(o->ntxn, 2);
    const struct txn_rec *r = &o->txn[0];
    assert_int_equal(r->fail, SMTPC_OK);
    assert_false(r->content_error);
    check_reply(&r->mail, 250, "2.1.0", "sender ok");
    check_reply(&r->rcpt[0], 250, "2.1.5", "a ok");
    check_reply(&r->rcpt[1], 250, "2.1.5", "b ok");
    check_reply(&r->rcpt[2], 251, "2.1.5", "c will be forwarded");
    check_reply(&r->data, 354, "", "go ahead");
    check_reply(&r->done, 250, "2.0.0", "queued as A1");
    check_content(&fx->srv, 0, split_wire, strlen(split_wire));

    r = &o->txn[1];
    assert_int_equal(r->fail, SMTPC_OK);
    check_reply(&r->mail, 250, "2.1.0", "ok");
    check_reply(&r->done, 250, "2.0.0", "queued / as A2");
    check_content(&fx->srv, 1, "..\r\n...\r\nend\r\n", 14);
}

/* Case: without PIPELINING each command waits for its reply: the server
 * holds its replies to MAIL and the first RCPT back, and nothing else
 * arrives meanwhile. SIZE (no limit given) is used, BODY= is not offered
 * so not sent. */
static void test_no_pipelining(void **state)
{
    struct fx *fx = *state;
    const struct step script[] = {
        GREET,
        {"EHLO " HELO, "250-mx.test\n250-SIZE\n250 ENHANCEDSTATUSCODES"},
        {"MAIL FROM:<sender@src.test> SIZE=5", "250 2.1.0 ok", 0, 150},
        {"RCPT TO:<a@dest.test>", "250 2.1.5 ok", 0, 100},
        {"RCPT TO:<b@dest.test>", "250 2.1.5 ok"},
        {"DATA", "354 go ahead"},
        {".", "250 2.0.0 queued"},
        QUIT,
    };
    struct source src = source_str("hello", 0);
    struct smtpc_txn t = txn_of("sender@src.test", rcpt_ab, 2, &src);
    t.size = 5;
    t.body_8bit = true;
    struct owner *o = DIALOGUE(fx, script);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);

    assert_int_equal(o->caps, SMTPC_CAP_SIZE | SMTPC_CAP_ENHANCED);
    assert_int_equal(o->max_size, 0);
    check_seen(&fx->srv, (const char *const[]){
                             "EHLO " HELO, "MAIL FROM:<sender@src.test> SIZE=5",
                             "RCPT TO:<a@dest.test>", "RCPT TO:<b@dest.test>",
                             "DATA", ".", "QUIT", NULL});
    for (size_t i = 0; i < fx->srv.nseen; i++)
        assert_int_equal(fx->srv.behind[i], 0);
    assert_int_equal(fx->srv.behind_at_reply, 0);
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_OK);
    check_content(&fx->srv, 0, "hello\r\n", 7);
}

/* Case: the other extensions and parameters. Keywords are matched without
 * regard to case; unknown ones are ignored; SIZE without a number is a
 * capability with no limit; SMTPUTF8 is asked for when offered. */
static void test_ehlo_caps(void **state)
{
    struct fx *fx = *state;
    const struct step script[] = {
        GREET,
        {"EHLO " HELO, "250-mx.test\n250-pipelining\n250-SIZE\n"
                       "250-X-EXPERIMENTAL foo\n250-STARTTLS\n250-SMTPUTF8\n"
                       "250-CHUNKING\n250-8bitmime\n250 AUTH PLAIN"},
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go ahead"},
        {".", "250 ok"},
        QUIT,
    };
    struct source src = source_str("x\r\n", 0);
    struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
    t.size = 3;
    t.body_8bit = true;
    t.smtputf8 = true;
    struct owner *o = DIALOGUE(fx, script);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->caps, SMTPC_CAP_PIPELINING | SMTPC_CAP_SIZE |
                                  SMTPC_CAP_STARTTLS | SMTPC_CAP_SMTPUTF8 |
                                  SMTPC_CAP_CHUNKING | SMTPC_CAP_8BITMIME);
    assert_int_equal(o->max_size, 0);
    assert_string_equal(fx->srv.seen[1],
                        "MAIL FROM:<s@src.test> SIZE=3 BODY=8BITMIME SMTPUTF8");
}

/* Case: recipients answered 250, 550 5.1.1 and 452 4.2.1, pipelined and
 * not: the message goes to the one accepted, each reply is kept. */
static void test_rcpt_mixed(void **state)
{
    struct fx *fx = *state;
    const struct step pipe[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "250 2.1.5 ok"},
        {"RCPT TO:<b@dest.test>", "550 5.1.1 no such user"},
        {"RCPT TO:<c@dest.test>", "452 4.2.1 mailbox full"},
        {"DATA", "354 go ahead"},
        {".", "250 2.0.0 queued"},
        QUIT,
    };
    const struct step plain[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "250 2.1.5 ok"},
        {"RCPT TO:<b@dest.test>", "550 5.1.1 no such user"},
        {"RCPT TO:<c@dest.test>", "452 4.2.1 mailbox full"},
        {"DATA", "354 go ahead"},
        {".", "250 2.0.0 queued"},
        QUIT,
    };
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
    } cases[] = {
        {"pipelined", pipe, ARRAY_LEN(pipe)},
        {"one at a time", plain, ARRAY_LEN(plain)},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# rcpt mixed: %s\n", cases[i].label);
        struct source src = source_str("Subject: x\r\n\r\nbody\r\n", 5);
        struct smtpc_txn t = txn_of("s@src.test", rcpt_abc, 3, &src);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->txns = &t;
        o->ntxns = 1;
        talk(fx);
        assert_int_equal(o->ntxn, 1);
        const struct txn_rec *r = &o->txn[0];
        assert_int_equal(r->fail, SMTPC_OK);
        check_reply(&r->rcpt[0], 250, "2.1.5", "ok");
        check_reply(&r->rcpt[1], 550, "5.1.1", "no such user");
        check_reply(&r->rcpt[2], 452, "4.2.1", "mailbox full");
        check_reply(&r->data, 354, "", NULL);
        check_reply(&r->done, 250, "2.0.0", "queued");
        check_content(&fx->srv, 0, "Subject: x\r\n\r\nbody\r\n", 20);
    }
}

/* Case: transactions that deliver nothing, table-driven: every RCPT
 * refused (one at a time: no DATA, RSET; pipelined: DATA refused then
 * RSET; pipelined and 354 anyway: an empty message ended at once), and
 * MAIL refused (no RCPT, no RSET; pipelined: no RSET either). The
 * connection stays usable each time. */
static void test_nothing_delivered(void **state)
{
    struct fx *fx = *state;
    const struct step all_refused_plain[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "550 5.1.1 no such user"},
        {"RCPT TO:<b@dest.test>", "550 5.1.1 no such user"},
        {"RSET", "250 2.0.0 ok"},
        QUIT,
    };
    const struct step all_refused_503[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "550 5.1.1 no such user"},
        {"RCPT TO:<b@dest.test>", "550 5.1.1 no such user"},
        {"DATA", "503 5.5.1 no valid recipients"},
        {"RSET", "250 2.0.0 ok"},
        QUIT,
    };
    const struct step all_refused_354[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "550 5.1.1 no such user"},
        {"RCPT TO:<b@dest.test>", "550 5.1.1 no such user"},
        {"DATA", "354 go ahead"},
        {".", "554 5.5.1 no valid recipients"},
        QUIT,
    };
    const struct step mail_refused_plain[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "553 5.1.8 bad sender"},
        QUIT,
    };
    const struct step mail_refused_pipe[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "553 5.1.8 bad sender"},
        {"RCPT TO:<a@dest.test>", "503 5.5.1 MAIL first"},
        {"RCPT TO:<b@dest.test>", "503 5.5.1 MAIL first"},
        {"DATA", "503 5.5.1 MAIL first"},
        QUIT,
    };
    const char *const seen_rset_plain[] = {"EHLO " HELO,
                                           "MAIL FROM:<s@src.test>",
                                           "RCPT TO:<a@dest.test>",
                                           "RCPT TO:<b@dest.test>",
                                           "RSET",
                                           "QUIT",
                                           NULL};
    const char *const seen_rset_pipe[] = {"EHLO " HELO,
                                          "MAIL FROM:<s@src.test>",
                                          "RCPT TO:<a@dest.test>",
                                          "RCPT TO:<b@dest.test>",
                                          "DATA",
                                          "RSET",
                                          "QUIT",
                                          NULL};
    const char *const seen_dot[] = {"EHLO " HELO,
                                    "MAIL FROM:<s@src.test>",
                                    "RCPT TO:<a@dest.test>",
                                    "RCPT TO:<b@dest.test>",
                                    "DATA",
                                    ".",
                                    "QUIT",
                                    NULL};
    const char *const seen_mail_plain[] = {
        "EHLO " HELO, "MAIL FROM:<s@src.test>", "QUIT", NULL};
    const char *const seen_mail_pipe[] = {"EHLO " HELO,
                                          "MAIL FROM:<s@src.test>",
                                          "RCPT TO:<a@dest.test>",
                                          "RCPT TO:<b@dest.test>",
                                          "DATA",
                                          "QUIT",
                                          NULL};
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
        const char *const *seen;
        int mail, rcpt, data, done;
    } cases[] = {
        {"all RCPTs refused, one at a time", all_refused_plain,
         ARRAY_LEN(all_refused_plain), seen_rset_plain, 250, 550, 0, 0},
        {"all RCPTs refused, pipelined, DATA 503", all_refused_503,
         ARRAY_LEN(all_refused_503), seen_rset_pipe, 250, 550, 503, 0},
        {"all RCPTs refused, pipelined, 354 anyway", all_refused_354,
         ARRAY_LEN(all_refused_354), seen_dot, 250, 550, 354, 554},
        {"MAIL refused, one at a time", mail_refused_plain,
         ARRAY_LEN(mail_refused_plain), seen_mail_plain, 553, 0, 0, 0},
        {"MAIL refused, pipelined", mail_refused_pipe,
         ARRAY_LEN(mail_refused_pipe), seen_mail_pipe, 553, 503, 503, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# nothing delivered: %s\n", cases[i].label);
        struct source src = source_str("never sent\r\n", 0);
        struct smtpc_txn t = txn_of("s@src.test", rcpt_ab, 2, &src);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->txns = &t;
        o->ntxns = 1;
        talk(fx);
        check_seen(&fx->srv, cases[i].seen);
        assert_int_equal(o->ntxn, 1);
        const struct txn_rec *r = &o->txn[0];
        assert_int_equal(r->fail, SMTPC_OK);
        assert_int_equal(r->mail.code, cases[i].mail);
        assert_int_equal(r->rcpt[0].code, cases[i].rcpt);
        assert_int_equal(r->rcpt[1].code, cases[i].rcpt);
        assert_int_equal(r->data.code, cases[i].data);
        assert_int_equal(r->done.code, cases[i].done);
        assert_int_equal(content_len(&fx->srv, 0), 0);
        assert_int_equal(src.off, 0); /* the content was never read */
    }
}

/* Case: EHLO refused: HELO, no extensions; HELO refused too: failed()
 * with SMTPC_HELO and the server's reply. */
static void test_helo(void **state)
{
    struct fx *fx = *state;
    const struct step fallback[] = {
        GREET,
        {"EHLO " HELO, "502 5.5.2 command not recognized"},
        {"HELO " HELO, "250 mx.test"},
        QUIT,
    };
    struct owner *o = DIALOGUE(fx, fallback);
    o->on_ready = R_QUIT;
    talk(fx);
    assert_int_equal(o->nready, 1);
    assert_int_equal(o->caps, 0);
    assert_int_equal(o->max_size, 0);
    check_seen(&fx->srv,
               (const char *const[]){"EHLO " HELO, "HELO " HELO, "QUIT", NULL});

    const struct step refused[] = {
        GREET,
        {"EHLO " HELO, "500 5.5.1 what?"},
        {"HELO " HELO, "550 5.7.1 go away"},
    };
    o = DIALOGUE(fx, refused);
    talk(fx);
    assert_int_equal(o->nready, 0);
    assert_int_equal(o->nfailed, 1);
    assert_int_equal(o->fail, SMTPC_HELO);
    check_reply(&o->reply, 550, "5.7.1", "go away");
}

/* Case: greetings, table-driven: refused (554), masked by a firewall
 * (text or the code's digits), multi-line and masked, 421, garbage. */
static void test_greeting(void **state)
{
    struct fx *fx = *state;
    const struct {
        const char *label;
        const char *greeting;
        enum smtpc_fail fail; /* SMTPC_OK: the session comes up */
        int code;
    } cases[] = {
        {"554 refused", "554 no service here", SMTPC_GREETING, 554},
        {"masked text", "220 2**0*****", SMTPC_OK, 0},
        {"masked code", "2**0****", SMTPC_OK, 0},
        {"masked code, spaced", "2** ************", SMTPC_OK, 0},
        {"masked, multi-line", "220-**** *****\n2**0****", SMTPC_OK, 0},
        {"421 busy", "421 4.3.2 busy", SMTPC_SHUTDOWN, 421},
        {"garbage", "hello there", SMTPC_PROTOCOL, 0},
        {"masked 5xx", "5** *****", SMTPC_PROTOCOL, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# greeting: %s\n", cases[i].label);
        const struct step script[] = {
            {NULL, cases[i].greeting},
            EHLO_PLAIN,
            QUIT,
        };
        /* A refusing (5xx) greeting gets QUIT first (RFC 5321 3.1). */
        const struct step refusing[] = {{NULL, cases[i].greeting}, QUIT};
        bool quits = cases[i].fail == SMTPC_GREETING;
        size_t n = cases[i].fail == SMTPC_OK ? ARRAY_LEN(script) : 1;
        struct owner *o = quits ? dialogue(fx, refusing, 2)
                                : dialogue(fx, script, n);
        o->on_ready = R_QUIT;
        talk(fx);
        if (cases[i].fail == SMTPC_OK) {
            assert_int_equal(o->nready, 1);
            assert_int_equal(o->nfailed, 0);
            check_seen(&fx->srv,
                       (const char *const[]){"EHLO " HELO, "QUIT", NULL});
            continue;
        }
        assert_int_equal(o->nready, 0);
        assert_int_equal(o->nfailed, 1);
        assert_int_equal(o->fail, cases[i].fail);
        assert_int_equal(o->reply.code, cases[i].code);
        if (quits)
            check_seen(&fx->srv, (const char *const[]){"QUIT", NULL});
        else
            assert_int_equal(fx->srv.nseen, 0); /* no EHLO */
    }
    /* The refused greeting's text comes back. */
    const struct step refused[] = {{NULL, "554 no service here"}, QUIT};
    struct owner *o = DIALOGUE(fx, refused);
    talk(fx);
    assert_int_equal(o->fail, SMTPC_GREETING);
    assert_string_equal(o->reply.text, "no service here");
}

/* Case: timeouts, 1 s each, table-driven: no greeting, no EHLO reply,
 * no MAIL reply, no reply to the final dot. */
static void test_timeouts(void **state)
{
    struct fx *fx = *state;
    const struct step no_greeting[] = {{NULL, NULL}};
    const struct step no_ehlo[] = {GREET, {"EHLO", NULL}};
    const struct step no_mail[] = {GREET, EHLO_PLAIN, {"MAIL", NULL}};
    const struct step no_dot[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go"},
        {".", NULL},
    };
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
        bool in_txn;
    } cases[] = {
        {"greeting", no_greeting, ARRAY_LEN(no_greeting), false},
        {"EHLO", no_ehlo, ARRAY_LEN(no_ehlo), false},
        {"MAIL", no_mail, ARRAY_LEN(no_mail), true},
        {"final dot", no_dot, ARRAY_LEN(no_dot), true},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# timeout: %s\n", cases[i].label);
        struct source src = source_str("x\r\n", 0);
        struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->cfg.greeting_timeout = o->cfg.command_timeout = 1;
        o->cfg.data_timeout = o->cfg.data_done_timeout = 1;
        o->txns = &t;
        o->ntxns = 1;
        uint64_t t0 = time_mono_ms();
        talk(fx);
        uint64_t ms = time_mono_ms() - t0;
        assert_true(ms >= 900 && ms < 3000);
        if (cases[i].in_txn) {
            assert_int_equal(o->ntxn, 1);
            assert_int_equal(o->txn[0].fail, SMTPC_TIMEOUT);
        } else {
            assert_int_equal(o->nfailed, 1);
            assert_int_equal(o->fail, SMTPC_TIMEOUT);
        }
    }
}

/* Case: 421 ends the connection with what is known: mid-transaction
 * (after a pipelined MAIL, and as the reply to MAIL) txn_done with
 * SMTPC_SHUTDOWN; while idle, failed() with the reply. */
static void test_shutdown_421(void **state)
{
    struct fx *fx = *state;
    const struct step pipe[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT", "421 4.3.2 shutting down", SF_CLOSE},
    };
    struct source src = source_str("x\r\n", 0);
    struct smtpc_txn t = txn_of("s@src.test", rcpt_abc, 3, &src);
    struct owner *o = DIALOGUE(fx, pipe);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_SHUTDOWN);
    check_reply(&o->txn[0].mail, 250, "2.1.0", "ok");
    assert_int_equal(content_len(&fx->srv, 0), 0);

    const struct step plain[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "421 4.7.0 try again later", SF_CLOSE},
    };
    src = source_str("x\r\n", 0);
    o = DIALOGUE(fx, plain);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_SHUTDOWN);
    check_reply(&o->txn[0].mail, 421, "4.7.0", "try again later");
    check_seen(&fx->srv, (const char *const[]){"EHLO " HELO,
                                               "MAIL FROM:<s@src.test>", NULL});

    /* Idle: the 421 follows the EHLO reply in the same segment. */
    const struct step idle[] = {
        GREET,
        {"EHLO", "250-mx.test\r\n250 PIPELINING\r\n421 4.4.2 idle too long\r\n",
         SF_RAW | SF_CLOSE},
    };
    o = DIALOGUE(fx, idle);
    o->on_ready = R_IDLE;
    talk(fx);
    assert_int_equal(o->nready, 1);
    assert_int_equal(o->nfailed, 1);
    assert_int_equal(o->fail, SMTPC_SHUTDOWN);
    check_reply(&o->reply, 421, "4.4.2", "idle too long");
}

/* Case: the server hangs up: after MAIL (one at a time and pipelined)
 * txn_done with SMTPC_EOF; before the EHLO reply and while idle,
 * failed() with SMTPC_EOF. */
static void test_server_closes(void **state)
{
    struct fx *fx = *state;
    const struct step after_mail_plain[] = {
        GREET, EHLO_PLAIN, {"MAIL", NULL, SF_CLOSE}};
    const struct step after_mail_pipe[] = {
        GREET, EHLO_PIPE, {"MAIL", NULL, SF_CLOSE}};
    const struct step at_ehlo[] = {GREET, {"EHLO", NULL, SF_CLOSE}};
    const struct step idle[] = {GREET, {"EHLO", "250 mx.test", SF_CLOSE}};
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
        enum on_ready on_ready;
        bool in_txn;
    } cases[] = {
        {"after MAIL, one at a time", after_mail_plain,
         ARRAY_LEN(after_mail_plain), R_SEND, true},
        {"after MAIL, pipelined", after_mail_pipe, ARRAY_LEN(after_mail_pipe),
         R_SEND, true},
        {"at EHLO", at_ehlo, ARRAY_LEN(at_ehlo), R_SEND, false},
        {"idle", idle, ARRAY_LEN(idle), R_IDLE, false},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# server closes: %s\n", cases[i].label);
        struct source src = source_str("x\r\n", 0);
        struct smtpc_txn t = txn_of("s@src.test", rcpt_ab, 2, &src);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->txns = &t;
        o->ntxns = 1;
        o->on_ready = cases[i].on_ready;
        talk(fx);
        if (cases[i].in_txn) {
            assert_int_equal(o->nfailed, 0);
            assert_int_equal(o->ntxn, 1);
            assert_int_equal(o->txn[0].fail, SMTPC_EOF);
            assert_int_equal(o->txn[0].mail.code, 0);
        } else {
            assert_int_equal(o->ntxn, 0);
            assert_int_equal(o->nfailed, 1);
            assert_int_equal(o->fail, SMTPC_EOF);
            assert_int_equal(o->reply.code, 0);
        }
    }
}

/* Case: smtpc_quit() says QUIT and then closed() comes once, from the
 * loop, whether the server answers 221 or just hangs up; no other
 * callback after the quit. */
static void test_quit(void **state)
{
    struct fx *fx = *state;
    const struct step bye[] = {GREET, EHLO_PIPE, QUIT};
    const struct step hang_up[] = {GREET, EHLO_PIPE, {"QUIT", NULL, SF_CLOSE}};
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
    } cases[] = {
        {"221", bye, ARRAY_LEN(bye)},
        {"hang-up", hang_up, ARRAY_LEN(hang_up)},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# quit: %s\n", cases[i].label);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->on_ready = R_QUIT;
        uint64_t t0 = time_mono_ms();
        talk(fx);
        assert_true(time_mono_ms() - t0 < 2000); /* not QUIT_WAIT */
        assert_int_equal(o->nready, 1);
        assert_int_equal(o->nclosed, 1);
        assert_int_equal(o->nfailed, 0);
        check_seen(&fx->srv, (const char *const[]){"EHLO " HELO, "QUIT", NULL});
    }
}

/* Case: connecting to a port nobody listens on: failed() with
 * SMTPC_CONNECT, from the loop, never inside smtpc_connect. */
static void test_connect_refused(void **state)
{
    struct fx *fx = *state;
    struct owner *o = &fx->o;
    evutil_socket_t fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = loopback(0);
    socklen_t len = sizeof(sin);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    evutil_closesocket(fd); /* the port is free now, nobody listens */
    owner_reset(o);
    o->srv = NULL;
    owner_connect_to(o, (const struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(o->c);
    assert_int_equal(o->nfailed, 0);
    run(o);
    o->srv = &fx->srv;
    assert_false(o->timed_out);
    assert_int_equal(o->cb_in_call, 0);
    assert_int_equal(o->nconnected, 0);
    assert_int_equal(o->nfailed, 1);
    assert_int_equal(o->fail, SMTPC_CONNECT);
    assert_int_equal(o->reply.code, 0);
}

/* An EHLO reply of n lines; the line after the first is an unknown
 * keyword. Returned string is the caller's. */
static char *ehlo_lines(size_t n)
{
    char *s = xmalloc(n * 16 + 16);
    size_t at = 0;
    for (size_t i = 0; i + 1 < n; i++)
        at += (size_t)snprintf(s + at, 16, "250-X-KW%zu\n", i);
    snprintf(s + at, 16, "250 PIPELINING");
    return s;
}

/* A raw reply line "250 xxx..." of exactly len bytes (CRLF added when
 * crlf). */
static char *long_line(size_t len, bool crlf)
{
    char *s = xmalloc(len + 3);
    memcpy(s, "250 ", 4);
    memset(s + 4, 'x', len - 4);
    memcpy(s + len, crlf ? "\r\n" : "", crlf ? 3 : 1);
    return s;
}

/* Case: reply limits, table-driven: SMTPC_LINES_MAX lines pass, one more
 * is SMTPC_PROTOCOL; a line of SMTPC_LINE_MAX bytes passes, one byte
 * more is SMTPC_PROTOCOL, and so is an unended line past the limit (at
 * once, not at the timeout); a code that changes inside a reply too. */
static void test_reply_limits(void **state)
{
    struct fx *fx = *state;
    char *lines_ok = ehlo_lines(SMTPC_LINES_MAX);
    char *lines_over = ehlo_lines(SMTPC_LINES_MAX + 1);
    char *line_ok = long_line(SMTPC_LINE_MAX, true);
    char *line_over = long_line(SMTPC_LINE_MAX + 1, true);
    char *unended = long_line(SMTPC_LINE_MAX + 500, false);
    const struct {
        const char *label;
        const char *reply;
        unsigned flags;
        bool ok;
    } cases[] = {
        {"SMTPC_LINES_MAX lines", lines_ok, 0, true},
        {"SMTPC_LINES_MAX + 1 lines", lines_over, 0, false},
        {"line of SMTPC_LINE_MAX", line_ok, SF_RAW, true},
        {"line of SMTPC_LINE_MAX + 1", line_over, SF_RAW, false},
        {"unended line past the limit", unended, SF_RAW, false},
        {"code changes mid-reply", "250-mx.test\n251 PIPELINING", 0, false},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# reply limits: %s\n", cases[i].label);
        const struct step script[] = {
            GREET,
            {"EHLO", cases[i].reply, cases[i].flags},
            QUIT,
        };
        struct owner *o = dialogue(fx, script, ARRAY_LEN(script));
        o->on_ready = R_QUIT;
        o->cfg.command_timeout = 4;
        uint64_t t0 = time_mono_ms();
        talk(fx);
        if (cases[i].ok) {
            assert_int_equal(o->nready, 1);
            assert_int_equal(o->nfailed, 0);
        } else {
            assert_int_equal(o->nready, 0);
            assert_int_equal(o->nfailed, 1);
            assert_int_equal(o->fail, SMTPC_PROTOCOL);
            assert_true(time_mono_ms() - t0 < 2000);
        }
    }
    free(lines_ok);
    free(lines_over);
    free(line_ok);
    free(line_over);
    free(unended);
}

/* Case: reply text comes back printable: control bytes, DEL, 8-bit bytes,
 * a bare CR and a tab become '?'; continuation lines are joined with
 * " / " and their repeated enhanced code dropped; a long text is cut to
 * SMTPC_TEXT_MAX - 1. */
static void test_reply_sanitized(void **state)
{
    struct fx *fx = *state;
    static const char *const rcpts4[] = {"a@dest.test", "b@dest.test",
                                         "c@dest.test", "d@dest.test"};
    char *longr = xmalloc(2100);
    memcpy(longr, "250 ", 4);
    memset(longr + 4, 'y', 2000);
    longr[2004] = '\0';
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 2.1.0 ok"},
        {"RCPT TO:<a@dest.test>", "550 5.1.1 bad\x01user\x7f\xc3\xa9\r\n",
         SF_RAW},
        {"RCPT TO:<b@dest.test>",
         "450-4.2.0 first\r\n450-4.2.0 second\r\n450 4.2.0 third\r\n", SF_RAW},
        {"RCPT TO:<c@dest.test>", "250 ok\ttab and a\rCR\r\n", SF_RAW},
        {"RCPT TO:<d@dest.test>", longr},
        {"DATA", "354 go ahead"},
        {".", "250 ok"},
        QUIT,
    };
    struct source src = source_str("x\r\n", 0);
    struct smtpc_txn t = txn_of("s@src.test", rcpts4, 4, &src);
    struct owner *o = DIALOGUE(fx, script);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->ntxn, 1);
    const struct txn_rec *r = &o->txn[0];
    assert_int_equal(r->fail, SMTPC_OK);
    check_reply(&r->rcpt[0], 550, "5.1.1", "bad?user???");
    check_reply(&r->rcpt[1], 450, "4.2.0", "first / second / third");
    check_reply(&r->rcpt[2], 250, "", "ok?tab and a?CR");
    check_reply(&r->rcpt[3], 250, "", NULL);
    assert_int_equal(strlen(r->rcpt[3].text), SMTPC_TEXT_MAX - 1);
    for (size_t i = 0; i < SMTPC_TEXT_MAX - 1; i++)
        assert_int_equal(r->rcpt[3].text[i], 'y');
    free(longr);
}

/* Case: the owner frees the connection inside each callback while more
 * of the server's bytes wait in the same segment (ASan checks that the
 * client stops touching itself): failed() on a refused greeting, ready(),
 * txn_done() after the dot, txn_done() after RSET. */
static void test_free_in_callbacks(void **state)
{
    struct fx *fx = *state;
    const struct step in_failed[] = {
        {NULL, "554-no\r\n554 no\r\n554 stray\r\n", SF_RAW}};
    const struct step in_ready[] = {
        GREET, {"EHLO", "250-mx\r\n250 PIPELINING\r\n250 stray\r\n", SF_RAW}};
    const struct step in_txn_done[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go ahead"},
        {".", "250 queued\r\n250 stray\r\n421 stray\r\n", SF_RAW},
    };
    const struct step in_rset_done[] = {
        GREET,
        EHLO_PLAIN,
        {"MAIL", "250 ok"},
        {"RCPT", "550 no"},
        {"RSET", "250 ok\r\nstray garbage\r\n", SF_RAW},
    };
    const struct {
        const char *label;
        const struct step *script;
        size_t n;
        enum on_ready on_ready;
        int nready, nfailed, ntxn;
    } cases[] = {
        {"failed", in_failed, ARRAY_LEN(in_failed), R_SEND, 0, 1, 0},
        {"ready", in_ready, ARRAY_LEN(in_ready), R_FREE, 1, 0, 0},
        {"txn_done after the dot", in_txn_done, ARRAY_LEN(in_txn_done), R_SEND,
         1, 0, 1},
        {"txn_done after RSET", in_rset_done, ARRAY_LEN(in_rset_done), R_SEND,
         1, 0, 1},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# free in callback: %s\n", cases[i].label);
        struct source src = source_str("x\r\n", 0);
        struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
        struct owner *o = dialogue(fx, cases[i].script, cases[i].n);
        o->on_ready = cases[i].on_ready;
        o->free_on_txn = true;
        o->txns = &t;
        o->ntxns = 1;
        talk(fx);
        assert_int_equal(o->nready, cases[i].nready);
        assert_int_equal(o->nfailed, cases[i].nfailed);
        assert_int_equal(o->ntxn, cases[i].ntxn);
        if (o->ntxn > 0)
            assert_int_equal(o->txn[0].fail, SMTPC_OK);
    }
}

/* Case: content edges on one connection, one transaction each: empty,
 * no final CRLF, a lone "." line, dots read one byte at a time, the
 * 7-byte split, dots inside lines (untouched), a bare CRLF. */
static void test_content_edges(void **state)
{
    struct fx *fx = *state;
    static const struct {
        const char *label;
        const char *content;
        size_t piece;
        const char *wire;
    } cases[] = {
        {"empty", "", 0, ""},
        {"no final CRLF", "abc", 0, "abc\r\n"},
        {"lone dot line", ".\r\n", 0, "..\r\n"},
        {"dots, byte by byte", "..x\r\n.\r\n.", 1, "...x\r\n..\r\n..\r\n"},
        {"CRLF split before a dot", split_msg, 7, split_wire},
        {"dots inside lines", "a.b\r\n .c\r\nd.\r\n", 3,
         "a.b\r\n .c\r\nd.\r\n"},
        {"bare CRLF", "\r\n", 0, "\r\n"},
        {"dot after bare CRLF, 2-byte reads", "\r\n.\r\n", 2, "\r\n..\r\n"},
    };
    enum { N = ARRAY_LEN(cases) };
    struct source src[N];
    struct smtpc_txn t[N];
    server_reset(&fx->srv);
    server_add(&fx->srv, NULL, "220 mx.test", 0);
    server_add(&fx->srv, "EHLO", "250-mx.test\n250 PIPELINING", 0);
    for (size_t i = 0; i < N; i++) {
        src[i] = source_str(cases[i].content, cases[i].piece);
        t[i] = txn_of("s@src.test", rcpt_a, 1, &src[i]);
        server_add(&fx->srv, "MAIL", "250 ok", 0);
        server_add(&fx->srv, "RCPT", "250 ok", 0);
        server_add(&fx->srv, "DATA", "354 go ahead", 0);
        server_add(&fx->srv, ".", "250 queued", 0);
    }
    server_add(&fx->srv, "QUIT", "221 bye", 0);
    struct owner *o = &fx->o;
    owner_reset(o);
    o->txns = t;
    o->ntxns = N;
    talk(fx);
    assert_int_equal(o->ntxn, N);
    for (size_t i = 0; i < N; i++) {
        print_message("# content: %s\n", cases[i].label);
        assert_int_equal(o->txn[i].fail, SMTPC_OK);
        check_content(&fx->srv, i, cases[i].wire, strlen(cases[i].wire));
    }
}

/* Case: a 300 KB message in odd 4093-byte reads (so the client refills
 * from its write callback many times) arrives byte for byte, dot-stuffed. */
static void test_big_content(void **state)
{
    struct fx *fx = *state;
    size_t len, wire_len;
    char *big = make_big(300000, &len);
    char *wire = wire_form(big, len, &wire_len);
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go ahead"},
        {".", "250 queued"},
        QUIT,
    };
    struct source src = {.data = big, .len = len, .piece = 4093};
    struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
    t.size = len;
    struct owner *o = DIALOGUE(fx, script);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_OK);
    assert_true(wire_len > len); /* there was stuffing to do */
    check_content(&fx->srv, 0, wire, wire_len);
    free(wire);
    free(big);
}

/* Case: the content source fails (at the first read, after a few bytes,
 * after 200 KB when refilling from the write callback): txn_done with
 * content_error, the connection dropped, and no final dot ever sent; what
 * the server got is a prefix of the message. */
static void test_content_error(void **state)
{
    struct fx *fx = *state;
    size_t len, wire_len;
    char *big = make_big(300000, &len);
    char *wire = wire_form(big, len, &wire_len);
    const struct {
        const char *label;
        size_t fail_at;
    } cases[] = {
        {"first read", 0},
        {"after 5 bytes", 5},
        {"after 200 KB", 200000},
    };
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go ahead"},
        {".", "250 queued"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# content error: %s\n", cases[i].label);
        struct source src = {.data = big,
                             .len = len,
                             .piece = 4093,
                             .fail = true,
                             .fail_at = cases[i].fail_at};
        struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
        struct owner *o = DIALOGUE(fx, script);
        o->txns = &t;
        o->ntxns = 1;
        talk(fx);
        assert_int_equal(o->ntxn, 1);
        assert_int_equal(o->txn[0].fail, SMTPC_NETWORK);
        assert_true(o->txn[0].content_error);
        assert_false(saw_line(&fx->srv, "."));
        size_t got = content_len(&fx->srv, 0);
        assert_true(got < wire_len);
        assert_memory_equal(content_of(&fx->srv, 0), wire, got);
    }
    free(wire);
    free(big);
}

/* Case: a reply during the content (the server gives up before the dot):
 * txn_done with SMTPC_PROTOCOL and the reply in done; no dot sent. */
static void test_reply_during_content(void **state)
{
    struct fx *fx = *state;
    size_t len;
    char *big = make_big(300000, &len);
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"MAIL", "250 ok"},
        {"RCPT", "250 ok"},
        {"DATA", "354 go ahead\r\n552 5.3.4 too big\r\n", SF_RAW},
    };
    struct source src = {.data = big, .len = len, .piece = 4093};
    struct smtpc_txn t = txn_of("s@src.test", rcpt_a, 1, &src);
    struct owner *o = DIALOGUE(fx, script);
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_PROTOCOL);
    check_reply(&o->txn[0].done, 552, "5.3.4", "too big");
    assert_false(saw_line(&fx->srv, "."));
    free(big);
}

/* ---- bugs ---- */

/* Case: a connect() that fails at once with a local error (EINVAL here,
 * from an address length connect(2) refuses; in production ENETUNREACH
 * for an IPv6 MX on a host without IPv6 routes) is reported by failed()
 * once, from the loop, with SMTPC_CONNECT (or smtpc_connect returns
 * NULL, as its header allows).
 *
 * This holds with libevent 2.1.12, whose bufferevent_socket_connect()
 * returns -1 without calling the event callback; smtpc then reports
 * through its notify timer. libevent's development branch runs the event
 * callback synchronously on that path ("freesock:
 * bufferevent_run_eventcb_(bev, BEV_EVENT_ERROR, 0)"), which would call
 * failed() inside smtpc_connect() and again from the timer; this test
 * catches that on an upgrade. */
static void test_connect_local_error(void **state)
{
    struct fx *fx = *state;
    struct owner *o = &fx->o;
    struct sockaddr_in sin = loopback(fx->srv.port);
    owner_reset(o);
    o->srv = NULL;
    owner_connect_to(o, (const struct sockaddr *)&sin, 4);
    int inside = o->cb_in_call;
    if (o->c != NULL)
        run(o);
    o->srv = &fx->srv;
    if (o->c != NULL && !o->finished)
        owner_free(o, o->c);
    assert_int_equal(inside, 0);
    assert_false(o->timed_out);
    assert_int_equal(o->nfailed, o->finished ? 1 : 0);
    if (o->nfailed > 0) {
        assert_int_equal(o->fail, SMTPC_CONNECT);
        assert_int_equal(o->reply.code, 0);
    }
    assert_int_equal(fx->srv.accepted, 0);
}

/* Case: after smtpc_quit() only closed() comes, whatever the server
 * answers to QUIT.
 *
 * Was a bug: smtpc_quit() sets ST_QUIT, which is also the state fail() leaves
 * behind, and fail() does not look at c->quitting. A reply to QUIT that
 * does not parse (or a line over SMTPC_LINE_MAX, or too many lines) goes
 * on_line() -> fail() -> failed() instead of closed(), and the connection
 * is not freed unless the owner does it. queue.c keeps the conn in
 * C_QUITTING until on_closed(); its on_failed() instead logs a
 * connection error, frees the smtpc and calls conn_try_next() on a
 * connection that was being retired, and on_closed() never comes. Fix:
 * in fail(), when c->quitting, call quit_done(c) and return. */
static void test_fixed_quit_garbage_reply(void **state)
{
    struct fx *fx = *state;
    const struct step script[] = {
        GREET,
        EHLO_PIPE,
        {"QUIT", "bye now"},
    };
    struct owner *o = DIALOGUE(fx, script);
    o->on_ready = R_QUIT;
    talk(fx); /* fails here: cb_after_finish == 1 (failed() after quit) */
    assert_int_equal(o->nfailed, 0);
    assert_int_equal(o->nclosed, 1);
}

/* Case: a transaction with no recipients, one command at a time: no
 * RCPT is sent (there is none), the transaction is abandoned with RSET.
 *
 * Was a bug: txn_reply() sends send_rcpt(c, c->next_rcpt++) after MAIL's 2xx
 * without checking next_rcpt < nrcpt, so with nrcpt == 0 it reads
 * rcpts[0] past the end (a NULL rcpts crashes). Here rcpts holds one
 * address beyond nrcpt and it goes out as "RCPT TO:<...>"; its reply is
 * then matched to nothing and the transaction hangs until the command
 * timeout (txn_done SMTPC_TIMEOUT). The pipelined path copes (MAIL,
 * DATA). Fix: in txn_reply, after MAIL's 2xx when nrcpt == 0, call
 * txn_abandon() (or refuse nrcpt == 0 in smtpc_send). */
static void test_fixed_no_rcpt_plain(void **state)
{
    struct fx *fx = *state;
    static const char *const beyond[] = {"beyond-nrcpt@dest.test"};
    const struct step script[] = {
        GREET, EHLO_PLAIN, {"MAIL", "250 2.1.0 ok"}, {"RSET", "250 2.0.0 ok"},
        QUIT,
    };
    struct source src = source_str("x\r\n", 0);
    struct smtpc_txn t = txn_of("s@src.test", beyond, 0, &src);
    struct owner *o = DIALOGUE(fx, script);
    o->cfg.command_timeout = 1;
    o->txns = &t;
    o->ntxns = 1;
    talk(fx);
    assert_false(saw_line(&fx->srv, "RCPT TO:<beyond-nrcpt@dest.test>"));
    assert_int_equal(o->ntxn, 1);
    assert_int_equal(o->txn[0].fail, SMTPC_OK);
}

/* Case: smtpc_quit() while the TCP connect is still under way: only
 * closed(), from the loop; no connected(), nothing sent.
 *
 * Was a bug (from the change that added closed(), 1708f81): smtpc_quit() in
 * ST_CONNECTING disables the bufferevent and arms the notify timer for
 * quit_done(). libevent keeps the write event of a connecting bufferevent
 * (be_socket_disable: "Don't actually disable the write if we are trying
 * to connect"), and I/O callbacks run before timers in a loop pass, so
 * when the connect completes first on_event(BEV_EVENT_CONNECTED) calls
 * connected() after the owner quit (and sets ST_GREETING). In queue.c
 * that logs mlog_dcid_new for a connection being retired, with no
 * matching close line (queue.c only quits from ready/idle today, so it is
 * latent). Fix: at the top of on_event, if c->quitting, ignore
 * BEV_EVENT_CONNECTED (and let the timer finish), or free the
 * bufferevent in smtpc_quit before arming the timer. */
static void test_fixed_quit_while_connecting(void **state)
{
    struct fx *fx = *state;
    const struct step script[] = {GREET};
    struct owner *o = DIALOGUE(fx, script);
    struct sockaddr_in sin = loopback(fx->srv.port);
    owner_connect_to(o, (const struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(o->c);
    owner_quit(o, o->c);
    run(o);
    assert_false(o->timed_out);
    assert_int_equal(o->cb_in_call, 0);
    assert_int_equal(o->nconnected, 0); /* fails: 1 */
    assert_int_equal(o->nready + o->nfailed + o->ntxn, 0);
    assert_int_equal(o->nclosed, 1);
    assert_int_equal(fx->srv.nseen, 0);
}

/* Case: a reply line of exactly SMTPC_LINE_MAX bytes is accepted however
 * TCP cuts it: here its CR comes with the line and its LF 200 ms later.
 *
 * Was a bug: on_read() rejects a partial line when the buffer holds more than
 * SMTPC_LINE_MAX bytes without a LF, but a complete line is measured
 * without its CRLF (n from evbuffer_readln). A line of SMTPC_LINE_MAX
 * bytes passes when its CRLF arrives with it (test_reply_limits) and fails
 * with SMTPC_PROTOCOL when a segment ends between the line and its LF
 * (buffer: SMTPC_LINE_MAX + 1 bytes, the CR included). Minor (2 KB reply
 * lines are rare), but acceptance depends on segmentation. Fix: compare
 * the partial buffer against SMTPC_LINE_MAX + 2 (room for the CRLF). */
static void test_fixed_line_max_split_crlf(void **state)
{
    struct fx *fx = *state;
    char *line = long_line(SMTPC_LINE_MAX, false);
    char *line_cr = xasprintf("%s\r", line);
    const struct step script[] = {
        GREET,
        {"EHLO", line_cr, SF_RAW, 200, "\n"},
        QUIT,
    };
    struct owner *o = DIALOGUE(fx, script);
    o->on_ready = R_QUIT;
    talk(fx);
    free(line);
    free(line_cr);
    assert_int_equal(o->nfailed, 0); /* fails: SMTPC_PROTOCOL */
    assert_int_equal(o->nready, 1);
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    /* A write to a socket the server closed must not kill the test (moatd
     * ignores SIGPIPE the same way). */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_line),
        cmocka_unit_test(test_fail_names),
        CASE(test_pipelined_happy),
        CASE(test_no_pipelining),
        CASE(test_ehlo_caps),
        CASE(test_rcpt_mixed),
        CASE(test_nothing_delivered),
        CASE(test_helo),
        CASE(test_greeting),
        CASE(test_timeouts),
        CASE(test_shutdown_421),
        CASE(test_server_closes),
        CASE(test_quit),
        CASE(test_connect_refused),
        CASE(test_connect_local_error),
        CASE(test_reply_limits),
        CASE(test_reply_sanitized),
        CASE(test_free_in_callbacks),
        CASE(test_content_edges),
        CASE(test_big_content),
        CASE(test_content_error),
        CASE(test_reply_during_content),
        /* Regressions of fixed bugs. */
        CASE(test_fixed_quit_garbage_reply),
        CASE(test_fixed_no_rcpt_plain),
        CASE(test_fixed_line_max_split_crlf),
        CASE(test_fixed_quit_while_connecting),
    };
    return cmocka_run_group_tests_name("smtpc", tests, NULL, NULL);
}
