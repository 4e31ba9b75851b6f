/*
 * smtp_session.c - one inbound SMTP connection (RFC 5321 server side).
 *
 * A session reads commands line by line (only CRLF ends a line), answers
 * each from a table of verb handlers, and streams message content through
 * the DATA/BDAT scanner into the spool. It never answers 250 to a message
 * before the spool's commit callback says the message is on stable
 * storage; while the commit is in flight it reads nothing more (pipelined
 * commands wait). Every input is bounded: command lines by
 * SMTP_CMD_LINE_MAX, buffered input by a read high-watermark, buffered
 * replies by OUTPUT_HIGH, messages by the listener's max_message_size.
 * Violations inside a message are remembered and answered at its end.
 * Every outcome is logged through mlog.
 */
#include "core/buf.h"
#include "core/ids.h"
#include "core/mlog.h"
#include "core/netaddr.h"
#include "policy/rat.h"
#include "smtp/smtp_cmd.h"
#include "smtp/smtp_data.h"
#include "smtp/smtp_internal.h"
#include "smtp/smtp_reply.h"
#include "spool/spool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define INPUT_HIGH (256 * 1024)  /* stop reading the socket above this */
#define OUTPUT_HIGH (256 * 1024) /* stop reading commands above this */

enum sstate {
    SS_CMD,     /* waiting for a command */
    SS_DATA,    /* reading DATA content */
    SS_BDAT,    /* reading a BDAT chunk */
    SS_COMMIT,  /* message handed to the spool, waiting for the flush */
    SS_CLOSING, /* last reply queued; freed once it is written */
};

/* One mail transaction, from MAIL to the end of data or RSET. */
struct txn {
    uint64_t mid;
    char *from;
    struct smtp_mail_params params;
    size_t nrcpt, rcpt_cap;
    char **rcpts;
    struct spool_msg *msg; /* open spool file, NULL until DATA/BDAT */
    struct smtp_data scan;
    bool scanning;
    struct buf out;        /* scanner output waiting for the spool */
    int spool_err;         /* first spool error, 0 if none */
    bool too_big;
    bool bdat;             /* content arrives by BDAT */
    uint64_t bdat_left;    /* bytes of the current chunk still to read */
    bool bdat_last;
};

struct session {
    LIST_ENTRY(session) link;
    struct smtp_server *srv;
    struct listener *lis;
    struct moat_conf *conf;          /* snapshot this session runs under */
    const struct conf_listener *lc;
    struct bufferevent *bev;
    struct event *life_timer;
    uint64_t icid;
    char ip[INET6_ADDRSTRLEN];
    char *helo;
    enum sstate state;
    bool esmtp;
    bool relay;           /* HAT rule RELAY: RAT not consulted */
    bool draining;        /* daemon stopping: close after the transaction */
    bool dead;            /* connection gone, struct kept for the commit */
    bool commit_pending;
    bool line_overflow;   /* discarding an over-long command line */
    unsigned errors;
    unsigned messages;
    uint64_t discard_left; /* BDAT chunk outside a valid transaction */
    enum smtp_reply_id discard_reply;
    struct txn *txn;
};

static void session_process(struct session *s);
static void session_free(struct session *s);
static void txn_end(struct session *s, bool log_abort);

struct session *session_next(struct session *s)
{
    return LIST_NEXT(s, link);
}

/* ---- replies ---------------------------------------------------------- */

/* Queue one reply line built from a code, enhanced code and text. */
static void reply_raw(struct session *s, unsigned code, const char *enh,
                      const char *text)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (enh)
        evbuffer_add_printf(out, "%u %s %s\r\n", code, enh, text);
    else
        evbuffer_add_printf(out, "%u %s\r\n", code, text);
}

/* Queue a reply from the table. */
static void reply(struct session *s, enum smtp_reply_id id)
{
    const struct smtp_reply *r = smtp_reply_get(id);
    reply_raw(s, r->code, r->enhanced, r->text);
}

/* Set the read and write timeouts to `secs` seconds. */
static void set_timeout(struct session *s, unsigned secs)
{
    struct timeval tv = {(time_t)secs, 0};
    bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* Stop reading and free the session once the queued replies are out. */
static void close_after_flush(struct session *s)
{
    /* Ending the session ends its transaction, unless the message is
     * already with the spool (then it completes on its own). */
    if (s->txn && !s->commit_pending)
        txn_end(s, true);
    s->state = SS_CLOSING;
    bufferevent_disable(s->bev, EV_READ);
    bufferevent_enable(s->bev, EV_WRITE);
}

/* Count a protocol error; past the listener's bound, end the session. */
static void error_reply(struct session *s, enum smtp_reply_id id)
{
    reply(s, id);
    if (++s->errors >= s->lc->max_errors) {
        mlog_icid_disconnected(s->icid, s->ip, "too many errors");
        reply(s, R_TOO_MANY_ERRORS);
        close_after_flush(s);
    }
}

/* ---- transactions ----------------------------------------------------- */

/* End the transaction; log it as aborted when it was not completed. */
static void txn_end(struct session *s, bool log_abort)
{
    struct txn *t = s->txn;
    if (t == NULL)
        return;
    if (t->msg)
        spool_msg_abort(t->msg);
    if (log_abort) {
        mlog_mid_aborted(t->mid);
        s->srv->stats.aborted++;
    }
    for (size_t i = 0; i < t->nrcpt; i++)
        free(t->rcpts[i]);
    free(t->rcpts);
    free(t->from);
    if (t->scanning)
        smtp_data_free(&t->scan);
    buf_free(&t->out);
    free(t);
    s->txn = NULL;
}

/* Hand the scanner's output to the spool, enforcing the size limit. */
static void txn_spool_out(struct session *s)
{
    struct txn *t = s->txn;
    if (!t->too_big && t->scan.bytes_out > s->lc->max_message_size) {
        t->too_big = true;
        if (t->msg) {
            spool_msg_abort(t->msg);
            t->msg = NULL;
        }
    }
    if (t->msg && t->out.len) {
        int err = spool_msg_write(t->msg, t->out.data, t->out.len);
        if (err) {
            t->spool_err = err;
            mlog_system(MLOG_WARNING, "MID %llu spool write failed: %s",
                        (unsigned long long)t->mid, strerror(err));
            spool_msg_abort(t->msg);
            t->msg = NULL;
        }
    }
    buf_reset(&t->out);
}

/* The reply for a spool error number. */
static enum smtp_reply_id spool_err_reply(int err)
{
    return (err == ENOSPC || err == EDQUOT || err == EFBIG) ? R_STORAGE_FULL
                                                            : R_LOCAL_ERROR;
}

/* Format the Received: header that starts every stored message. */
static void received_header(struct session *s, struct buf *b)
{
    const struct txn *t = s->txn;
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
    const char *proto = s->esmtp ? (t->params.smtputf8 ? "UTF8SMTP" : "ESMTP")
                                 : "SMTP";
    /* The HELO name and the recipient go in verbatim: both were
     * validated (no CR, LF, NUL or other controls), and escaping them
     * would change the recipient's quoted local part. */
    buf_printf(b, "Received: from %s", s->helo);
    buf_printf(b, " (unknown [%s])\r\n\tby %s with %s id %llu (ICID %llu)",
               s->ip, s->lc->hostname, proto, (unsigned long long)t->mid,
               (unsigned long long)s->icid);
    if (t->nrcpt == 1) {
        buf_printf(b, "\r\n\tfor <%s>", t->rcpts[0]);
    }
    buf_printf(b, ";\r\n\t%s\r\n", date);
}

/* Open the spool file and write the Received: header; false on error
 * (already answered and the transaction ended). */
static bool txn_begin_content(struct session *s, enum smtp_data_mode mode)
{
    struct txn *t = s->txn;
    unsigned flags = 0;
    if (t->params.body == SMTP_BODY_8BITMIME)
        flags |= SPOOL_F_8BITMIME;
    if (t->params.body == SMTP_BODY_BINARYMIME)
        flags |= SPOOL_F_BINARYMIME;
    if (t->params.smtputf8)
        flags |= SPOOL_F_SMTPUTF8;
    struct spool_envelope env = {
        .mid = t->mid,
        .icid = s->icid,
        .received = (int64_t)time(NULL),
        .listener = s->lc->name,
        .client_ip = s->ip,
        .helo = s->helo ? s->helo : "",
        .mail_from = t->from,
        .flags = flags,
        .nrcpt = t->nrcpt,
        .rcpts = (const char *const *)t->rcpts,
    };
    int err = 0;
    t->msg = spool_msg_begin(s->srv->spool, &env, &err);
    if (t->msg == NULL) {
        mlog_system(MLOG_WARNING, "MID %llu cannot create spool file: %s",
                    (unsigned long long)t->mid, strerror(err));
        mlog_icid_receiving_failed(s->icid, "Resources Low");
        reply(s, spool_err_reply(err));
        txn_end(s, true);
        return false;
    }
    struct buf hdr = {0};
    received_header(s, &hdr);
    err = spool_msg_write(t->msg, hdr.data, hdr.len);
    buf_free(&hdr);
    if (err)
        t->spool_err = err;
    smtp_data_init(&t->scan, mode);
    t->scanning = true;
    return true;
}

/* The spool's answer for a message: 250 only now. */
static void on_committed(void *arg, uint64_t mid, int err)
{
    struct session *s = arg;
    struct txn *t = s->txn;
    s->commit_pending = false;
    if (err) {
        mlog_system(MLOG_WARNING, "MID %llu spool commit failed: %s",
                    (unsigned long long)mid, strerror(err));
        mlog_icid_receiving_failed(s->icid, "Resources Low");
        txn_end(s, true);
        if (!s->dead)
            reply(s, spool_err_reply(err));
    } else {
        mlog_mid_queued(mid);
        s->srv->stats.messages++;
        s->srv->stats.recipients += t->nrcpt;
        s->messages++;
        txn_end(s, false);
        if (!s->dead) {
            char text[64];
            str_printf(text, sizeof(text), "Ok: Message %llu accepted",
                       (unsigned long long)mid);
            reply_raw(s, 250, "2.0.0", text);
        }
    }
    if (s->dead) {
        session_free(s);
        return;
    }
    s->state = SS_CMD;
    session_process(s);
}

/* End of content: answer a remembered violation, or commit. */
static void txn_finish_content(struct session *s)
{
    struct txn *t = s->txn;
    unsigned f = t->scan.flags;
    enum smtp_reply_id fail = R_NONE;
    const char *why = NULL;

    txn_spool_out(s);
    if (t->too_big) {
        fail = R_TOO_BIG;
        why = "Message size exceeds limit";
    } else if (f & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR)) {
        fail = R_BARE_LF;
        why = "Protocol error (bare CR or LF in message)";
    } else if (f & SMTP_DATA_LONG_LINE) {
        fail = R_DATA_LINE_TOO_LONG;
        why = "Protocol error (line longer than 1000 octets)";
    } else if (t->spool_err || t->msg == NULL) {
        fail = spool_err_reply(t->spool_err);
        why = "Resources Low";
    }
    s->state = SS_CMD;
    if (fail != R_NONE) {
        mlog_icid_receiving_failed(s->icid, why);
        txn_end(s, true);
        reply(s, fail);
        return;
    }
    if (t->scan.message_id.len)
        mlog_mid_message_id(t->mid, buf_str(&t->scan.message_id));
    if (t->scan.subject.len)
        mlog_mid_subject(t->mid, buf_str(&t->scan.subject));
    mlog_mid_ready(t->mid, spool_msg_size(t->msg), t->from);
    s->state = SS_COMMIT;
    s->commit_pending = true;
    struct spool_msg *m = t->msg;
    t->msg = NULL;
    spool_msg_commit(m, on_committed, s);
}

/* ---- command handlers ------------------------------------------------- */

static void cmd_ehlo_helo(struct session *s, const struct smtp_cmd *c)
{
    if (smtp_parse_helo(c->arg) != R_NONE) {
        mlog_icid_bad_syntax(s->icid, c->name, strlen(c->name));
        error_reply(s, R_HELO_SYNTAX);
        return;
    }
    txn_end(s, true);
    free(s->helo);
    s->helo = xstrdup(c->arg);
    s->esmtp = c->verb == SMTP_EHLO;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (!s->esmtp) {
        evbuffer_add_printf(out, "250 %s\r\n", s->lc->hostname);
        return;
    }
    evbuffer_add_printf(out,
                        "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n"
                        "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n",
                        s->lc->hostname,
                        (unsigned long long)s->lc->max_message_size);
    if (s->lc->chunking)
        evbuffer_add_printf(out, "250-CHUNKING\r\n");
    evbuffer_add_printf(out, "250 SMTPUTF8\r\n");
}

static void cmd_mail(struct session *s, const struct smtp_cmd *c)
{
    if (s->helo == NULL)
        {
        error_reply(s, R_NEED_HELO);
        return;
    }
    if (s->txn)
        {
        error_reply(s, R_NESTED_MAIL);
        return;
    }
    if (s->messages >= s->lc->max_messages_per_connection) {
        mlog_icid_receiving_failed(s->icid, "Too Many Messages");
        {
        reply(s, R_TOO_MANY_MSGS);
        return;
    }
    }
    struct smtp_path path;
    struct smtp_mail_params p;
    const char *why = NULL;
    enum smtp_reply_id r = smtp_parse_mail(c->arg, &path, &p, &why);
    if (r == R_NONE && !s->esmtp && (p.size_given || p.smtputf8 ||
                                     p.body != SMTP_BODY_7BIT))
        r = R_BAD_PARAM, why = "ESMTP parameter after HELO";
    if (r == R_NONE && p.body == SMTP_BODY_BINARYMIME && !s->lc->chunking)
        r = R_BAD_PARAM, why = "BINARYMIME needs CHUNKING";
    if (r != R_NONE) {
        mlog_icid_invalid_sender(s->icid, why ? why : "syntax error",
                                 c->arg);
        {
        error_reply(s, r);
        return;
    }
    }
    if (p.size_given && p.size > s->lc->max_message_size) {
        mlog_icid_receiving_failed(s->icid, "Message size exceeds limit");
        {
        reply(s, R_TOO_BIG_DECLARED);
        return;
    }
    }
    uint64_t mid = ids_next(s->srv->ids, ID_MID);
    if (mid == 0) {
        mlog_system(MLOG_CRITICAL, "cannot reserve message IDs");
        {
        reply(s, R_LOCAL_ERROR);
        return;
    }
    }
    struct txn *t = xcalloc(1, sizeof(*t));
    t->mid = mid;
    t->from = xstrdup(path.addr);
    t->params = p;
    s->txn = t;
    mlog_mid_start(mid, s->icid);
    mlog_mid_from(mid, s->icid, t->from);
    reply(s, R_SENDER_OK);
}

/* Reply for a RAT row: its custom code/text, or the default. */
static void rat_reply(struct session *s, const struct rat_entry *row,
                      enum smtp_reply_id dflt)
{
    if (row && row->code) {
        char enh[8];
        str_printf(enh, sizeof(enh), "%u.0.0", row->code / 100);
        reply_raw(s, row->code, enh,
                  row->text ? row->text : smtp_reply_get(dflt)->text);
    } else
        reply(s, dflt);
}

static void cmd_rcpt(struct session *s, const struct smtp_cmd *c)
{
    struct txn *t = s->txn;
    if (t == NULL)
        {
        error_reply(s, R_NEED_MAIL);
        return;
    }
    if (t->bdat)
        {
        error_reply(s, R_BAD_SEQUENCE);
        return;
    }
    struct smtp_path path;
    const char *why = NULL;
    enum smtp_reply_id r =
        smtp_parse_rcpt(c->arg, t->params.smtputf8, &path, &why);
    if (r != R_NONE) {
        mlog_icid_invalid_rcpt(s->icid, t->mid, why ? why : "syntax error",
                               c->arg);
        s->srv->stats.rejected_rcpts++;
        {
        error_reply(s, r);
        return;
    }
    }
    if (t->nrcpt >= s->lc->max_recipients) {
        mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr,
                               "Receiving Control (too many recipients)");
        s->srv->stats.rejected_rcpts++;
        {
        reply(s, R_TOO_MANY_RCPTS);
        return;
    }
    }
    const struct rat_entry *row = NULL;
    if (!s->relay) {
        row = rat_match(s->lc->rat, s->lc->rat_count, path.addr);
        if (row == NULL || row->action == RAT_REJECT) {
            mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr, "RAT");
            s->srv->stats.rejected_rcpts++;
            {
        rat_reply(s, row, R_ADDR_REJECTED);
        return;
    }
        }
    }
    t->rcpts = xgrow(t->rcpts, &t->rcpt_cap, t->nrcpt + 1,
                     sizeof(*t->rcpts));
    t->rcpts[t->nrcpt] = xstrdup(path.addr);
    mlog_mid_rcpt(t->mid, s->icid, (unsigned)t->nrcpt, path.addr);
    t->nrcpt++;
    rat_reply(s, row, R_RCPT_OK);
}

/* Common checks before message content; returns R_NONE if ready. */
static enum smtp_reply_id content_ready(const struct session *s)
{
    if (s->txn == NULL)
        return R_NEED_MAIL;
    if (s->txn->nrcpt == 0)
        return R_NEED_RCPT;
    return R_NONE;
}

static void cmd_data(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg[0])
        {
        error_reply(s, R_NO_ARGS);
        return;
    }
    enum smtp_reply_id r = content_ready(s);
    if (r == R_NONE && s->txn->bdat)
        r = R_BDAT_MIX;
    if (r == R_NONE && s->txn->params.body == SMTP_BODY_BINARYMIME)
        r = R_BDAT_MIX;
    if (r != R_NONE)
        {
        error_reply(s, r);
        return;
    }
    if (!txn_begin_content(s, SMTP_DATA_DOT))
        return;
    reply(s, R_DATA_GO);
    s->state = SS_DATA;
    set_timeout(s, s->lc->data_timeout);
}

static void cmd_bdat(struct session *s, const struct smtp_cmd *c)
{
    uint64_t size;
    bool last;
    if (!s->lc->chunking)
        {
        error_reply(s, R_UNKNOWN_CMD);
        return;
    }
    if (smtp_parse_bdat(c->arg, &size, &last) != R_NONE) {
        /* The chunk's length is unknown, so its bytes cannot be told
         * from commands: the only safe answer is to end the session. */
        mlog_icid_bad_syntax(s->icid, "BDAT", 4);
        reply(s, R_SYNTAX);
        close_after_flush(s);
        return;
    }
    enum smtp_reply_id r = content_ready(s);
    if (r != R_NONE) {
        s->discard_left = size;
        s->discard_reply = r;
        s->state = SS_BDAT;
        return;
    }
    struct txn *t = s->txn;
    if (!t->bdat) {
        t->bdat = true;
        if (!txn_begin_content(s, SMTP_DATA_RAW)) {
            s->discard_left = size;
            s->discard_reply = R_NONE; /* already answered */
            s->state = SS_BDAT;
            return;
        }
    }
    t->bdat_left = size;
    t->bdat_last = last;
    s->state = SS_BDAT;
    set_timeout(s, s->lc->data_timeout);
}

static void cmd_rset(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg[0])
        {
        error_reply(s, R_NO_ARGS);
        return;
    }
    txn_end(s, true);
    reply(s, R_RESET_OK);
}

static void cmd_noop(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    reply(s, R_GENERIC_OK);
}

static void cmd_quit(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    txn_end(s, true);
    reply(s, R_BYE);
    close_after_flush(s);
}

static void cmd_vrfy(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg[0] == '\0')
        {
        error_reply(s, R_SYNTAX);
        return;
    }
    reply(s, R_VRFY);
}

static void cmd_expn(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    reply(s, R_NOT_IMPL);
}

static void cmd_help(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    reply(s, R_HELP);
}

static void cmd_starttls(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    error_reply(s, R_STARTTLS_NOT_AVAIL);
}

static void cmd_auth(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    error_reply(s, R_AUTH_NOT_AVAIL);
}

static const struct {
    enum smtp_verb verb;
    void (*fn)(struct session *, const struct smtp_cmd *);
} handlers[] = {
    {SMTP_HELO, cmd_ehlo_helo}, {SMTP_EHLO, cmd_ehlo_helo},
    {SMTP_MAIL, cmd_mail},      {SMTP_RCPT, cmd_rcpt},
    {SMTP_DATA, cmd_data},      {SMTP_BDAT, cmd_bdat},
    {SMTP_RSET, cmd_rset},      {SMTP_NOOP, cmd_noop},
    {SMTP_QUIT, cmd_quit},      {SMTP_VRFY, cmd_vrfy},
    {SMTP_EXPN, cmd_expn},      {SMTP_HELP, cmd_help},
    {SMTP_STARTTLS, cmd_starttls}, {SMTP_AUTH, cmd_auth},
};

/* Parse and run one command line. */
static void handle_command(struct session *s, const char *line, size_t len)
{
    struct smtp_cmd c;
    enum smtp_reply_id r = smtp_cmd_parse(line, len, &c);
    if (r == R_UNKNOWN_CMD) {
        mlog_icid_unknown_command(s->icid, line, len);
        {
        error_reply(s, R_UNKNOWN_CMD);
        return;
    }
    }
    if (r != R_NONE) {
        mlog_icid_bad_syntax(s->icid, line, len);
        {
        error_reply(s, r);
        return;
    }
    }
    for (size_t i = 0; i < ARRAY_LEN(handlers); i++)
        if (handlers[i].verb == c.verb)
            {
        handlers[i].fn(s, &c);
        return;
    }
    error_reply(s, R_UNKNOWN_CMD);
}

/* ---- input processing ------------------------------------------------- */

/* Read one command line if complete. Returns true if progress was made. */
static bool process_command(struct session *s, struct evbuffer *in)
{
    if (s->draining && s->txn == NULL) {
        reply(s, R_SHUTDOWN);
        close_after_flush(s);
        return false;
    }
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) > OUTPUT_HIGH)
        return false; /* the client is not reading its replies */
    size_t eol_len = 0;
    struct evbuffer_ptr p =
        evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);
    if (p.pos < 0) {
        size_t len = evbuffer_get_length(in);
        if (len >= SMTP_CMD_LINE_MAX) {
            /* Keep the last byte: it may be the CR of the CRLF. */
            evbuffer_drain(in, len - 1);
            s->line_overflow = true;
        }
        return false;
    }
    size_t len = (size_t)p.pos;
    if (s->line_overflow || len + 2 > SMTP_CMD_LINE_MAX) {
        s->line_overflow = false;
        evbuffer_drain(in, len + eol_len);
        mlog_icid_bad_syntax(s->icid, "(line too long)", 15);
        error_reply(s, R_LINE_TOO_LONG);
        return true;
    }
    char line[SMTP_CMD_LINE_MAX + 1];
    evbuffer_remove(in, line, len);
    line[len] = '\0';
    evbuffer_drain(in, eol_len);
    handle_command(s, line, len);
    return true;
}

/* Feed DATA content to the scanner. */
static bool process_data(struct session *s, struct evbuffer *in)
{
    struct txn *t = s->txn;
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        size_t used = smtp_data_feed(&t->scan, v.iov_base, v.iov_len,
                                     &t->out);
        evbuffer_drain(in, used);
        txn_spool_out(s);
        if (t->scan.done) {
            set_timeout(s, s->lc->command_timeout);
            txn_finish_content(s);
            return true;
        }
    }
    return false;
}

/* Take up to `left` bytes of a BDAT chunk; returns bytes taken. */
static size_t bdat_take(struct session *s, struct evbuffer *in,
                        uint64_t left, bool keep)
{
    size_t taken = 0;
    while (left > taken && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        size_t n = v.iov_len;
        if (n > left - taken)
            n = (size_t)(left - taken);
        if (keep) {
            smtp_data_feed(&s->txn->scan, v.iov_base, n, &s->txn->out);
            txn_spool_out(s);
        }
        evbuffer_drain(in, n);
        taken += n;
    }
    return taken;
}

/* Read a BDAT chunk; at its end, reply or commit. */
static bool process_bdat(struct session *s, struct evbuffer *in)
{
    if (s->discard_left || s->txn == NULL || !s->txn->bdat) {
        s->discard_left -= bdat_take(s, in, s->discard_left, false);
        if (s->discard_left)
            return false;
        s->state = SS_CMD;
        set_timeout(s, s->lc->command_timeout);
        if (s->discard_reply != R_NONE)
            error_reply(s, s->discard_reply);
        return true;
    }
    struct txn *t = s->txn;
    t->bdat_left -= bdat_take(s, in, t->bdat_left, true);
    if (t->bdat_left)
        return false;
    set_timeout(s, s->lc->command_timeout);
    if (t->bdat_last) {
        smtp_data_finish(&t->scan);
        txn_finish_content(s);
        return true;
    }
    s->state = SS_CMD;
    char text[64];
    str_printf(text, sizeof(text), "Ok: %llu octets received",
               (unsigned long long)t->scan.bytes_out);
    reply_raw(s, 250, "2.0.0", text);
    return true;
}

/* Run the state machine over whatever input is buffered. */
static void session_process(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    bool progress = true;
    while (progress) {
        switch (s->state) {
        case SS_CMD:
            progress = process_command(s, in);
            break;
        case SS_DATA:
            progress = process_data(s, in);
            break;
        case SS_BDAT:
            progress = process_bdat(s, in);
            break;
        default:
            progress = false;
        }
    }
}

/* ---- events ----------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    session_process(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    if (s->state == SS_CLOSING) {
        mlog_icid_close(s->icid);
        session_free(s);
        return;
    }
    /* Replies drained: resume commands held back by OUTPUT_HIGH. */
    if (s->state == SS_CMD)
        session_process(s);
}

/* A timeout: tell the client, log what was interrupted, close. */
/* End a session on a timeout. `why` is the disconnect reason; NULL
 * means the read timeout fired, which during DATA/BDAT is the data
 * timeout and otherwise the command timeout. */
static void session_timeout(struct session *s, const char *why)
{
    bool in_data = s->txn && (s->state == SS_DATA || s->state == SS_BDAT);
    if (why == NULL && in_data)
        mlog_icid_receiving_failed(s->icid, "Data timeout");
    else
        mlog_icid_disconnected(
            s->icid, s->ip,
            why ? why
                : s->messages ? "command timeout"
                              : "no messages injected within timeout period");
    if (s->state == SS_COMMIT)
        return; /* the commit will answer; the client may still get it */
    txn_end(s, true);
    reply(s, R_TIMEOUT);
    close_after_flush(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    (void)bev;
    if (what & BEV_EVENT_TIMEOUT) {
        if (s->state == SS_CLOSING) {
            mlog_icid_close(s->icid);
            session_free(s);
        } else
            session_timeout(s, NULL);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (s->state == SS_CLOSING)
            mlog_icid_close(s->icid);
        else {
            /* A message being committed is not aborted: it is accepted
             * the moment it is durable, client or no client. */
            if (!s->commit_pending)
                txn_end(s, true);
            mlog_icid_lost(s->icid);
        }
        session_free(s);
    }
}

static void on_life_timer(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    (void)fd;
    (void)what;
    if (s->state != SS_CLOSING)
        session_timeout(s, "exceeded allowable connection time");
}

/* ---- life cycle ------------------------------------------------------- */

/* The HAT decision for a new connection (placeholder groups until the
 * Host Access Table lands): public listeners ACCEPT as UNKNOWNLIST;
 * private listeners RELAY for RELAYLIST and REJECT everyone else. */
static bool session_hat(struct session *s, const struct netaddr *peer)
{
    const struct conf_listener *lc = s->lc;
    if (lc->type == LISTENER_PUBLIC) {
        mlog_icid_hat(s->icid, "ACCEPT", "UNKNOWNLIST", "ALL");
        return true;
    }
    for (size_t i = 0; i < lc->relay_sender_count; i++) {
        if (cidr_match(&lc->relay_senders[i], peer)) {
            mlog_icid_hat(s->icid, "RELAY", "RELAYLIST",
                          lc->relay_sender_text[i]);
            s->relay = true;
            return true;
        }
    }
    mlog_icid_hat(s->icid, "REJECT", "ALL", "ALL");
    return false;
}

void session_start(struct listener *l, int fd, const struct sockaddr *sa,
                   int salen)
{
    struct smtp_server *srv = l->srv;
    struct netaddr peer = {.len = (socklen_t)salen};
    memcpy(&peer.ss, sa, (size_t)salen < sizeof(peer.ss) ? (size_t)salen
                                                         : sizeof(peer.ss));
    struct session *s = xcalloc(1, sizeof(*s));
    s->srv = srv;
    s->lis = l;
    l->refs++;
    l->nsessions++;
    s->conf = conf_ref(l->conf);
    s->lc = l->lc;
    netaddr_ip_str(&peer, s->ip, sizeof(s->ip));
    LIST_INSERT_HEAD(&srv->sessions, s, link);
    srv->stats.sessions++;
    srv->stats.connections++;

    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (s->bev == NULL) {
        close(fd);
        session_free(s);
        return;
    }
    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_HIGH);
    set_timeout(s, s->lc->command_timeout);

    s->icid = ids_next(srv->ids, ID_ICID);
    if (s->icid == 0) {
        mlog_system(MLOG_CRITICAL, "cannot reserve connection IDs");
        reply(s, R_LOCAL_ERROR);
        close_after_flush(s);
        return;
    }
    mlog_icid_new(s->icid, s->lc->name, l->ip, s->ip, NULL, false);
    if (l->nsessions > s->lc->max_connections) {
        mlog_icid_receiving_failed(s->icid, "Connection limit exceeded");
        reply(s, R_TOO_MANY_CONNS);
        close_after_flush(s);
        return;
    }
    if (!session_hat(s, &peer)) {
        char text[300];
        str_printf(text, sizeof(text), "%s %s", s->lc->hostname,
                   smtp_reply_get(R_ACCESS_DENIED)->text);
        reply_raw(s, 554, "5.7.1", text);
        close_after_flush(s);
        return;
    }
    s->life_timer = evtimer_new(srv->base, on_life_timer, s);
    struct timeval life = {(time_t)s->lc->connection_timeout, 0};
    evtimer_add(s->life_timer, &life);
    evbuffer_add_printf(bufferevent_get_output(s->bev), "220 %s ESMTP\r\n",
                        s->lc->hostname);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

void session_drain(struct session *s)
{
    s->draining = true;
    if (s->state == SS_CMD && s->txn == NULL && !s->dead)
        session_process(s);
}

void session_kill(struct session *s)
{
    if (s->dead)
        return;
    if (s->commit_pending) {
        /* Keep the struct for the commit callback; drop the socket. */
        s->dead = true;
        bufferevent_free(s->bev);
        s->bev = NULL;
        mlog_icid_close(s->icid);
        return;
    }
    txn_end(s, true);
    mlog_icid_close(s->icid);
    session_free(s);
}

static void session_free(struct session *s)
{
    struct smtp_server *srv = s->srv;
    if (s->commit_pending) {
        /* The spool still holds a pointer to us: free on its callback. */
        s->dead = true;
        if (s->bev) {
            bufferevent_free(s->bev);
            s->bev = NULL;
        }
        return;
    }
    LIST_REMOVE(s, link);
    if (s->bev)
        bufferevent_free(s->bev);
    if (s->life_timer)
        event_free(s->life_timer);
    txn_end(s, false);
    free(s->helo);
    conf_unref(s->conf);
    s->lis->nsessions--;
    listener_unref(s->lis);
    free(s);
    smtp_server_session_gone(srv);
}
