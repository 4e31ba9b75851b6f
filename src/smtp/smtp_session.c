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
 * replies by OUTPUT_HIGH, messages by the policy's max_message_size.
 * Violations inside a message are remembered and answered at its end.
 * Every outcome is logged through mlog. Before the greeting the client
 * goes through the listener's Host Access Table (smtp_hat.c does the
 * lookups and the verdict); SMTP AUTH is in smtp_auth.c, STARTTLS in
 * smtp_starttls.c.
 */
#include "smtp/smtp_session.h"
#include "core/buf.h"
#include "core/ids.h"
#include "core/mlog.h"
#include "core/netaddr.h"
#include "policy/iptable.h"
#include "policy/rat.h"
#include "smtp/smtp_cmd.h"
#include "smtp/smtp_data.h"
#include "smtp/smtp_hat.h"
#include "smtp/smtp_internal.h"
#include "smtp/smtp_reply.h"
#include "spool/spool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define OUTPUT_HIGH (256 * 1024) /* stop reading commands above this */

static void txn_end(struct session *s, bool log_abort);

struct session *session_next(struct session *s)
{
    return LIST_NEXT(s, link);
}

/* ---- replies ---------------------------------------------------------- */

/* Queue one reply line built from a code, enhanced code and text. */
void ss_reply_raw(struct session *s, unsigned code, const char *enh,
                  const char *text)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (enh)
        evbuffer_add_printf(out, "%u %s %s\r\n", code, enh, text);
    else
        evbuffer_add_printf(out, "%u %s\r\n", code, text);
}

/* Queue a reply from the table. */
void ss_reply(struct session *s, enum smtp_reply_id id)
{
    const struct smtp_reply *r = smtp_reply_get(id);
    ss_reply_raw(s, r->code, r->enhanced, r->text);
}

/* A configured text with the appliance's variables expanded: $Hostname,
 * $RemoteIP, $Group, $HATEntry, $EnvelopeSender (names case-blind).
 * Control characters never reach the client: configured texts are
 * printable, and expanded values are host names, addresses, group names
 * and validated addresses. */
static void expand_text(const struct session *s, const char *in,
                        const char *sender, char *out, size_t outlen)
{
    const char *host = s->verified              ? s->rdns
                       : s->ptr == HAT_PTR_TEMP ? "Unknown"
                                                : "None";
    const struct {
        const char *name;
        const char *value;
    } vars[] = {
        {"$Hostname", host},
        {"$RemoteIP", s->ip},
        {"$Group", s->group ? s->group : "None"},
        {"$HATEntry", s->hat_entry ? s->hat_entry : "ALL"},
        {"$EnvelopeSender", sender ? sender : ""},
    };
    struct buf b = {0};
    while (*in) {
        size_t k = 0;
        if (*in == '$')
            for (; k < ARRAY_LEN(vars); k++)
                if (strncasecmp(in, vars[k].name, strlen(vars[k].name)) == 0)
                    break;
        if (*in == '$' && k < ARRAY_LEN(vars)) {
            buf_puts(&b, vars[k].value);
            in += strlen(vars[k].name);
        } else {
            buf_putc(&b, *in++);
        }
    }
    str_copy(out, outlen, b.len ? buf_str(&b) : "");
    buf_free(&b);
}

/* A reply with a configured code and text (or the default text). A
 * text starting "#x.y.z " carries its enhanced code (the appliance's
 * convention); otherwise `enh` is used. */
static void reply_custom(struct session *s, unsigned code, const char *enh,
                         const char *text, const char *dflt, const char *sender)
{
    char t[400], e[16];
    expand_text(s, text ? text : dflt, sender, t, sizeof(t));
    const char *body = t;
    unsigned x, y, z;
    int n = 0;
    if (t[0] == '#' && sscanf(t + 1, "%1u.%3u.%3u %n", &x, &y, &z, &n) == 3 &&
        n > 0) {
        /* The appliance's "#x.y.z text": the enhanced code, its class
         * made to agree with the reply code (451 with "#5.1.8"). */
        str_printf(e, sizeof(e), "%u.%u.%u", code / 100, y, z);
        enh = e;
        body = t + 1 + n;
    } else if (enh[0] != (char)('0' + code / 100)) {
        str_printf(e, sizeof(e), "%u%s", code / 100, enh + 1);
        enh = e;
    }
    ss_reply_raw(s, code, enh, body);
}

/* The reject banner of the session's policy. */
void ss_reply_reject(struct session *s)
{
    char dflt[300];
    str_printf(dflt, sizeof(dflt), "%s %s", s->hostname,
               smtp_reply_get(R_ACCESS_DENIED)->text);
    reply_custom(s, s->pp->reject_code, "5.7.1", s->pp->reject_text, dflt,
                 NULL);
}

/* Set the read and write timeouts to `secs` seconds. */
void ss_set_timeout(struct session *s, unsigned secs)
{
    struct timeval tv = {(time_t)secs, 0};
    bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* Stop reading and free the session once the queued replies are out. */
void ss_close_after_flush(struct session *s)
{
    sender_check_cancel(s->sender_check);
    s->sender_check = NULL;
    smtp_auth_abandon(s); /* a check finishing later must not reopen us */
    /* Ending the session ends its transaction, unless the message is
     * already with the spool (then it completes on its own). */
    if (s->txn && !s->commit_pending)
        txn_end(s, true);
    s->state = SS_CLOSING;
    bufferevent_disable(s->bev, EV_READ);
    bufferevent_enable(s->bev, EV_WRITE);
}

/* Count a protocol error; past the listener's bound, end the session. */
void ss_error_reply(struct session *s, enum smtp_reply_id id)
{
    ss_reply(s, id);
    if (++s->errors >= s->lc->max_errors) {
        mlog_icid_disconnected(s->icid, s->ip, "too many errors");
        ss_reply(s, R_TOO_MANY_ERRORS);
        ss_close_after_flush(s);
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
    if (!t->too_big && t->scan.bytes_out > s->pp->max_message_size) {
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
    /* RFC 3848 (and RFC 6531 for UTF8SMTP): "S" under TLS, "A" after
     * AUTH, e.g. ESMTPSA. */
    char proto[16];
    if (!s->esmtp)
        str_copy(proto, sizeof(proto), "SMTP");
    else
        str_printf(proto, sizeof(proto), "%s%s%s",
                   t->params.smtputf8 ? "UTF8SMTP" : "ESMTP", s->tls ? "S" : "",
                   s->authed ? "A" : "");
    /* The HELO name and the recipient go in verbatim: both were
     * validated (no CR, LF, NUL or other controls), and escaping them
     * would change the recipient's quoted local part. */
    buf_printf(b, "Received: from %s", s->helo);
    /* The client's name only when forward-confirmed (dns_wire names hold
     * no spaces or controls). */
    buf_printf(b, " (%s [%s])\r\n\tby %s with %s id %llu (ICID %llu)",
               s->verified ? s->rdns : "unknown", s->ip, s->hostname, proto,
               (unsigned long long)t->mid, (unsigned long long)s->icid);
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
        ss_reply(s, spool_err_reply(err));
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
            ss_reply(s, spool_err_reply(err));
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
            ss_reply_raw(s, 250, "2.0.0", text);
        }
    }
    if (s->dead) {
        ss_free(s);
        return;
    }
    s->state = SS_CMD;
    ss_process(s);
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
        ss_reply(s, fail);
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
        ss_error_reply(s, R_HELO_SYNTAX);
        return;
    }
    txn_end(s, true);
    free(s->helo);
    s->helo = xstrdup(c->arg);
    s->esmtp = c->verb == SMTP_EHLO;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (!s->esmtp) {
        evbuffer_add_printf(out, "250 %s\r\n", s->hostname);
        return;
    }
    evbuffer_add_printf(out,
                        "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n"
                        "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n",
                        s->hostname,
                        (unsigned long long)s->pp->max_message_size);
    if (s->lc->chunking)
        evbuffer_add_printf(out, "250-CHUNKING\r\n");
    if (smtp_tls_offered(s))
        evbuffer_add_printf(out, "250-STARTTLS\r\n");
    if (smtp_auth_offered(s))
        evbuffer_add_printf(out, "250-AUTH PLAIN LOGIN\r\n");
    evbuffer_add_printf(out, "250 SMTPUTF8\r\n");
}

/* Open the transaction for a checked MAIL command. */
static void mail_accept(struct session *s, const struct smtp_path *path,
                        const struct smtp_mail_params *p)
{
    uint64_t mid = ids_next(s->srv->ids, ID_MID);
    if (mid == 0) {
        mlog_system(MLOG_CRITICAL, "cannot reserve message IDs");
        ss_reply(s, R_LOCAL_ERROR);
        return;
    }
    struct txn *t = xcalloc(1, sizeof(*t));
    t->mid = mid;
    t->from = xstrdup(path->addr);
    t->params = *p;
    s->txn = t;
    mlog_mid_start(mid, s->icid);
    mlog_mid_from(mid, s->icid, t->from);
    ss_reply(s, R_SENDER_OK);
}

/* Parse and check a MAIL argument; true if it may go on. Answers and
 * logs the failures itself (then returns false). */
static bool mail_parse(struct session *s, const char *arg,
                       struct smtp_path *path, struct smtp_mail_params *p)
{
    const char *why = NULL;
    enum smtp_reply_id r = smtp_parse_mail(arg, path, p, &why);
    if (r == R_NONE && !s->esmtp &&
        (p->size_given || p->smtputf8 || p->body != SMTP_BODY_7BIT))
        r = R_BAD_PARAM, why = "ESMTP parameter after HELO";
    if (r == R_NONE && p->body == SMTP_BODY_BINARYMIME && !s->lc->chunking)
        r = R_BAD_PARAM, why = "BINARYMIME needs CHUNKING";
    if (r != R_NONE) {
        mlog_icid_invalid_sender(s->icid, why ? why : "syntax error", arg);
        ss_error_reply(s, r);
        return false;
    }
    if (p->size_given && p->size > s->pp->max_message_size) {
        mlog_icid_receiving_failed(s->icid, "Message size exceeds limit");
        ss_reply(s, R_TOO_BIG_DECLARED);
        return false;
    }
    return true;
}

/* The envelope sender's domain was looked up. */
static void on_sender_checked(void *arg, enum dnsl_status st)
{
    struct session *s = arg;
    s->sender_check = NULL;
    struct smtp_path path;
    struct smtp_mail_params p;
    char *arg_text = s->pending_mail;
    s->pending_mail = NULL;
    s->state = SS_CMD;
    /* Parsed and checked before the lookup; parse it again here. */
    if (mail_parse(s, arg_text, &path, &p)) {
        if (st == DNSL_OK) {
            mail_accept(s, &path, &p);
        } else if (st == DNSL_NXDOMAIN) {
            mlog_icid_sender_dns(s->icid, path.addr, "domain does not exist");
            reply_custom(s, s->pp->sdv_nxdomain_code, "5.1.8",
                         s->pp->sdv_nxdomain_text,
                         "#5.1.8 Domain of sender address <$EnvelopeSender> "
                         "does not exist",
                         path.addr);
        } else {
            mlog_icid_sender_dns(s->icid, path.addr,
                                 "domain could not be resolved");
            reply_custom(s, s->pp->sdv_tempfail_code, "4.1.8",
                         s->pp->sdv_tempfail_text,
                         "#4.1.8 Domain of sender address <$EnvelopeSender> "
                         "does not resolve",
                         path.addr);
        }
    }
    free(arg_text);
    ss_process(s);
}

/* Envelope sender DNS verification: true if MAIL may go on now; false
 * if it was answered or waits for the lookup. */
static bool sender_dns_ok(struct session *s, const struct smtp_path *path,
                          const char *arg)
{
    if (!s->pp->sender_dns_verification || path->is_null)
        return true;
    const char *d = path->domain;
    if (d == NULL || d[0] == '[' || strchr(d, '.') == NULL) {
        mlog_icid_sender_dns(s->icid, path->addr, "domain missing");
        reply_custom(s, s->pp->sdv_malformed_code, "5.5.4",
                     s->pp->sdv_malformed_text,
                     "#5.5.4 Domain required for sender address", path->addr);
        return false;
    }
    for (const char *p = d; *p; p++)
        if ((unsigned char)*p >= 0x80)
            return true; /* a U-label: not checked (no IDNA conversion) */
    s->pending_mail = xstrdup(arg);
    s->state = SS_LOOKUP;
    s->sender_check =
        sender_check_start(s->srv->resolver, d, on_sender_checked, s);
    return false;
}

static void cmd_mail(struct session *s, const struct smtp_cmd *c)
{
    if (s->helo == NULL) {
        ss_error_reply(s, R_NEED_HELO);
        return;
    }
    if (s->txn) {
        ss_error_reply(s, R_NESTED_MAIL);
        return;
    }
    if (s->pp->smtp_auth == POLICY_AUTH_REQUIRED && !s->authed) {
        mlog_auth_required(s->icid);
        ss_error_reply(s, R_AUTH_REQUIRED);
        return;
    }
    if (s->messages >= s->pp->max_messages_per_connection) {
        mlog_icid_receiving_failed(s->icid, "Too Many Messages");
        ss_reply(s, R_TOO_MANY_MSGS);
        return;
    }
    struct smtp_path path;
    struct smtp_mail_params p;
    if (!mail_parse(s, c->arg, &path, &p))
        return;
    if (smtp_tls_mandatory_for(s, path.addr)) {
        smtp_tls_refuse(s);
        return;
    }
    if (!sender_dns_ok(s, &path, c->arg))
        return;
    mail_accept(s, &path, &p);
}

/* Reply for a RAT row: its custom code/text, or the default. */
static void rat_reply(struct session *s, const struct rat_entry *row,
                      enum smtp_reply_id dflt)
{
    if (row && row->code) {
        char enh[8];
        str_printf(enh, sizeof(enh), "%u.0.0", row->code / 100);
        ss_reply_raw(s, row->code, enh,
                     row->text ? row->text : smtp_reply_get(dflt)->text);
    } else
        ss_reply(s, dflt);
}

/* The policy's recipients-per-hour limit, counted per client address
 * on every listener together; a recipient that passes is counted. RAT
 * rows with bypass_receiving_control are exempt. */
static bool rate_limit_ok(struct session *s, const struct rat_entry *row)
{
    unsigned limit = s->pp->max_recipients_per_hour;
    if (limit == 0 || (row && row->bypass_receiving_control))
        return true;
    uint64_t *n = iptable_counter(s->srv->ip_rcpts, &s->peer, 0, time(NULL),
                                  s->conf->rate_limit_period);
    if (n == NULL)
        return true; /* table full: never refuse for that */
    if (*n >= limit)
        return false;
    (*n)++;
    return true;
}

static void cmd_rcpt(struct session *s, const struct smtp_cmd *c)
{
    struct txn *t = s->txn;
    if (t == NULL) {
        ss_error_reply(s, R_NEED_MAIL);
        return;
    }
    if (t->bdat) {
        ss_error_reply(s, R_BAD_SEQUENCE);
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
        ss_error_reply(s, r);
        return;
    }
    if (t->nrcpt >= s->pp->max_recipients) {
        mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr,
                               "Receiving Control (too many recipients)");
        s->srv->stats.rejected_rcpts++;
        ss_reply(s, R_TOO_MANY_RCPTS);
        return;
    }
    if (s->hat_reject) {
        /* HAT REJECT delayed to the recipients: log each, refuse each. */
        mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr, "HAT");
        s->srv->stats.rejected_rcpts++;
        ss_reply_reject(s);
        return;
    }
    const struct rat_entry *row = NULL;
    if (!s->relay) {
        row = rat_match(s->lc->rat, s->lc->rat_count, path.addr);
        if (row == NULL || row->action == RAT_REJECT) {
            mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr, "RAT");
            s->srv->stats.rejected_rcpts++;
            rat_reply(s, row, R_ADDR_REJECTED);
            return;
        }
    }
    if (!rate_limit_ok(s, row)) {
        mlog_mid_rcpt_rejected(t->mid, s->icid, path.addr, "Receiving Control");
        s->srv->stats.rejected_rcpts++;
        s->srv->stats.rate_limited++;
        reply_custom(s, s->pp->rate_limit_code, "4.3.2", s->pp->rate_limit_text,
                     "Too many recipients received this hour", NULL);
        return;
    }
    t->rcpts = xgrow(t->rcpts, &t->rcpt_cap, t->nrcpt + 1, sizeof(*t->rcpts));
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
    if (c->arg[0]) {
        ss_error_reply(s, R_NO_ARGS);
        return;
    }
    enum smtp_reply_id r = content_ready(s);
    if (r == R_NONE && s->txn->bdat)
        r = R_BDAT_MIX;
    if (r == R_NONE && s->txn->params.body == SMTP_BODY_BINARYMIME)
        r = R_BDAT_MIX;
    if (r != R_NONE) {
        ss_error_reply(s, r);
        return;
    }
    if (!txn_begin_content(s, SMTP_DATA_DOT))
        return;
    ss_reply(s, R_DATA_GO);
    s->state = SS_DATA;
    ss_set_timeout(s, s->lc->data_timeout);
}

static void cmd_bdat(struct session *s, const struct smtp_cmd *c)
{
    uint64_t size;
    bool last;
    if (!s->lc->chunking) {
        ss_error_reply(s, R_UNKNOWN_CMD);
        return;
    }
    if (smtp_parse_bdat(c->arg, &size, &last) != R_NONE) {
        /* The chunk's length is unknown, so its bytes cannot be told
         * from commands: the only safe answer is to end the session. */
        mlog_icid_bad_syntax(s->icid, "BDAT", 4);
        ss_reply(s, R_SYNTAX);
        ss_close_after_flush(s);
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
    ss_set_timeout(s, s->lc->data_timeout);
}

static void cmd_rset(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg[0]) {
        ss_error_reply(s, R_NO_ARGS);
        return;
    }
    txn_end(s, true);
    ss_reply(s, R_RESET_OK);
}

static void cmd_noop(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    ss_reply(s, R_GENERIC_OK);
}

static void cmd_quit(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    txn_end(s, true);
    ss_reply(s, R_BYE);
    ss_close_after_flush(s);
}

static void cmd_vrfy(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg[0] == '\0') {
        ss_error_reply(s, R_SYNTAX);
        return;
    }
    ss_reply(s, R_VRFY);
}

static void cmd_expn(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    ss_reply(s, R_NOT_IMPL);
}

static void cmd_help(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    ss_reply(s, R_HELP);
}

static const struct {
    enum smtp_verb verb;
    void (*fn)(struct session *, const struct smtp_cmd *);
} handlers[] = {
    {SMTP_HELO, cmd_ehlo_helo},
    {SMTP_EHLO, cmd_ehlo_helo},
    {SMTP_MAIL, cmd_mail},
    {SMTP_RCPT, cmd_rcpt},
    {SMTP_DATA, cmd_data},
    {SMTP_BDAT, cmd_bdat},
    {SMTP_RSET, cmd_rset},
    {SMTP_NOOP, cmd_noop},
    {SMTP_QUIT, cmd_quit},
    {SMTP_VRFY, cmd_vrfy},
    {SMTP_EXPN, cmd_expn},
    {SMTP_HELP, cmd_help},
    {SMTP_STARTTLS, smtp_cmd_starttls},
    {SMTP_AUTH, smtp_cmd_auth},
};

/* Parse and run one command line. */
static void handle_command(struct session *s, const char *line, size_t len)
{
    struct smtp_cmd c;
    enum smtp_reply_id r = smtp_cmd_parse(line, len, &c);
    if (r == R_UNKNOWN_CMD) {
        mlog_icid_unknown_command(s->icid, line, len);
        ss_error_reply(s, R_UNKNOWN_CMD);
        return;
    }
    if (r != R_NONE) {
        mlog_icid_bad_syntax(s->icid, line, len);
        ss_error_reply(s, r);
        return;
    }
    if (!s->tls && s->pp->tls == POLICY_TLS_REQUIRED && s->lis->tls_ctx &&
        !smtp_tls_allowed_before(c.verb)) {
        smtp_tls_refuse(s);
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(handlers); i++)
        if (handlers[i].verb == c.verb) {
            handlers[i].fn(s, &c);
            if (c.verb == SMTP_AUTH)
                explicit_bzero(&c, sizeof(c)); /* held a credential */
            return;
        }
    ss_error_reply(s, R_UNKNOWN_CMD);
}

/* ---- input processing ------------------------------------------------- */

/* Read one command line if complete. Returns true if progress was made. */
static bool process_command(struct session *s, struct evbuffer *in)
{
    if (s->draining && s->txn == NULL) {
        ss_reply(s, R_SHUTDOWN);
        ss_close_after_flush(s);
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
        if (s->state == SS_AUTH) {
            s->state = SS_CMD;
            smtp_auth_reset(s);
        }
        mlog_icid_bad_syntax(s->icid, "(line too long)", 15);
        ss_error_reply(s, R_LINE_TOO_LONG);
        return true;
    }
    char line[SMTP_CMD_LINE_MAX + 1];
    evbuffer_remove(in, line, len);
    line[len] = '\0';
    evbuffer_drain(in, eol_len);
    if (s->state == SS_AUTH)
        smtp_auth_response(s, line);
    else
        handle_command(s, line, len);
    explicit_bzero(line, len);
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
        size_t used = smtp_data_feed(&t->scan, v.iov_base, v.iov_len, &t->out);
        evbuffer_drain(in, used);
        txn_spool_out(s);
        if (t->scan.done) {
            ss_set_timeout(s, s->lc->command_timeout);
            txn_finish_content(s);
            return true;
        }
    }
    return false;
}

/* Take up to `left` bytes of a BDAT chunk; returns bytes taken. */
static size_t bdat_take(struct session *s, struct evbuffer *in, uint64_t left,
                        bool keep)
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
        ss_set_timeout(s, s->lc->command_timeout);
        if (s->discard_reply != R_NONE)
            ss_error_reply(s, s->discard_reply);
        return true;
    }
    struct txn *t = s->txn;
    t->bdat_left -= bdat_take(s, in, t->bdat_left, true);
    if (t->bdat_left)
        return false;
    ss_set_timeout(s, s->lc->command_timeout);
    if (t->bdat_last) {
        smtp_data_finish(&t->scan);
        txn_finish_content(s);
        return true;
    }
    s->state = SS_CMD;
    char text[64];
    str_printf(text, sizeof(text), "Ok: %llu octets received",
               (unsigned long long)t->scan.bytes_out);
    ss_reply_raw(s, 250, "2.0.0", text);
    return true;
}

/* Run the state machine over whatever input is buffered. */
void ss_process(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    bool progress = true;
    while (progress) {
        switch (s->state) {
        case SS_CMD:
        case SS_AUTH:
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

void ss_on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ss_process(arg);
}

void ss_on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    if (s->state == SS_CLOSING) {
        if (smtp_tls_output_pending(s))
            return;
        mlog_icid_close(s->icid);
        ss_free(s);
        return;
    }
    /* Replies drained: resume commands held back by OUTPUT_HIGH. */
    if (s->state == SS_CMD || s->state == SS_AUTH)
        ss_process(s);
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
            why           ? why
            : s->messages ? "command timeout"
                          : "no messages injected within timeout period");
    if (s->state == SS_COMMIT)
        return; /* the commit will answer; the client may still get it */
    txn_end(s, true);
    ss_reply(s, R_TIMEOUT);
    ss_close_after_flush(s);
}

void ss_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    (void)bev;
    if (s->state == SS_TLSHANDSHAKE) {
        if (what & BEV_EVENT_CONNECTED)
            smtp_tls_established(s);
        else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
            smtp_tls_failed(s, what);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if (s->state == SS_CLOSING) {
            mlog_icid_close(s->icid);
            ss_free(s);
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
        ss_free(s);
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

/* ---- the Host Access Table ------------------------------------------ */

/* Count the session against its address's sessions on this listener,
 * from the moment it is accepted (lookups included). Before the verdict
 * the ceiling is the largest per-IP limit of any of the listener's
 * policies; false if over it. */
static bool ip_count(struct session *s)
{
    uint64_t *n = iptable_counter(s->srv->ip_sessions, &s->peer,
                                  iptable_tag(s->lc->name), 0, 0);
    if (n == NULL)
        return true; /* table full: never refuse for that */
    if (*n >= s->lc->max_connections_per_ip_any) {
        if (*n == 0)
            iptable_release(s->srv->ip_sessions, &s->peer,
                            iptable_tag(s->lc->name));
        return false;
    }
    (*n)++;
    s->ip_counted = true;
    return true;
}

/* After the verdict: within the policy's per-IP limit (this session
 * included)? */
static bool ip_limit_ok(struct session *s)
{
    if (!s->ip_counted)
        return true;
    uint64_t n = iptable_peek(s->srv->ip_sessions, &s->peer,
                              iptable_tag(s->lc->name), 0, 0);
    return n <= s->pp->max_connections_per_ip;
}

static void start_life(struct session *s)
{
    s->life_timer = evtimer_new(s->srv->base, on_life_timer, s);
    struct timeval life = {(time_t)s->lc->connection_timeout, 0};
    evtimer_add(s->life_timer, &life);
}

/* The lookups are in: log the connection, apply the table's verdict. */
static void on_hat_facts(void *arg)
{
    struct session *s = arg;
    struct smtp_server *srv = s->srv;
    const struct hat_facts *f = hat_dns_facts(s->hat_dns);
    struct hat_verdict v;
    hat_evaluate(s->lc, f, &v);
    s->ptr = f->ptr;
    str_copy(s->rdns, sizeof(s->rdns), f->name);
    s->verified = f->verified;
    hat_dns_free(s->hat_dns);
    s->hat_dns = NULL;
    s->pol = v.policy;
    s->pp = &v.policy->p;
    s->group = v.group ? v.group->name : "None";
    s->hat_entry = v.match;
    if (s->pp->banner_hostname)
        s->hostname = s->pp->banner_hostname;

    if (s->pol->access == HAT_TCPREFUSE) {
        /* As on the appliance: no ICID, nothing said, the socket closed. */
        mlog_icid_hat(0, "TCPREFUSE", s->group, s->hat_entry);
        srv->stats.refused++;
        ss_free(s);
        return;
    }
    s->icid = ids_next(srv->ids, ID_ICID);
    if (s->icid == 0) {
        mlog_system(MLOG_CRITICAL, "cannot reserve connection IDs");
        ss_reply(s, R_LOCAL_ERROR);
        ss_close_after_flush(s);
        return;
    }
    mlog_icid_new(s->icid, s->lc->name, s->lis->ip, s->ip,
                  s->rdns[0] ? s->rdns : NULL, s->verified);
    mlog_icid_hat(s->icid, conf_access_rule(s->pol->access), s->group,
                  s->hat_entry);
    if (s->draining || srv->draining) {
        ss_reply(s, R_SHUTDOWN);
        ss_close_after_flush(s);
        return;
    }
    if (s->pol->access == HAT_REJECT && !s->conf->hat_reject_at_rcpt) {
        ss_reply_reject(s);
        ss_close_after_flush(s);
        return;
    }
    if (s->pol->access == HAT_REJECT) {
        mlog_icid_delayed_reject(s->icid, s->ip);
        s->hat_reject = true;
    }
    s->relay = s->pol->access == HAT_RELAY;
    if (!ip_limit_ok(s)) {
        mlog_icid_receiving_failed(s->icid, "Connection limit exceeded");
        ss_reply_raw(s, 421, "4.3.2", "Too many connections from your host");
        ss_close_after_flush(s);
        return;
    }
    start_life(s);
    char banner[400];
    if (s->pp->banner_text)
        expand_text(s, s->pp->banner_text, NULL, banner, sizeof(banner));
    else
        str_printf(banner, sizeof(banner), "%s ESMTP", s->hostname);
    evbuffer_add_printf(bufferevent_get_output(s->bev), "%u %s\r\n",
                        s->pp->banner_code, banner);
    s->state = SS_CMD;
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

void session_start(struct listener *l, int fd, const struct sockaddr *sa,
                   int salen)
{
    struct smtp_server *srv = l->srv;
    struct session *s = xcalloc(1, sizeof(*s));
    s->peer.len = (socklen_t)salen;
    memcpy(&s->peer.ss, sa,
           (size_t)salen < sizeof(s->peer.ss) ? (size_t)salen
                                              : sizeof(s->peer.ss));
    s->srv = srv;
    s->lis = l;
    l->refs++;
    l->nsessions++;
    s->conf = conf_ref(l->conf);
    s->lc = l->lc;
    s->pp = &s->lc->defaults;
    s->hostname = s->lc->hostname;
    s->state = SS_HAT;
    netaddr_ip_str(&s->peer, s->ip, sizeof(s->ip));
    LIST_INSERT_HEAD(&srv->sessions, s, link);
    srv->stats.sessions++;
    srv->stats.connections++;

    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (s->bev == NULL) {
        close(fd);
        ss_free(s);
        return;
    }
    bufferevent_setcb(s->bev, ss_on_read, ss_on_write, ss_on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_HIGH);
    ss_set_timeout(s, s->lc->command_timeout);

    if (l->nsessions > s->lc->max_connections || !ip_count(s)) {
        /* Over the listener's limit, or this address over every policy's
         * per-IP limit: no lookups, a 421 at once. */
        s->icid = ids_next(srv->ids, ID_ICID);
        if (s->icid)
            mlog_icid_new(s->icid, s->lc->name, l->ip, s->ip, NULL, false);
        mlog_icid_receiving_failed(s->icid, "Connection limit exceeded");
        ss_reply(s, R_TOO_MANY_CONNS);
        ss_close_after_flush(s);
        return;
    }
    s->hat_dns = hat_dns_start(srv->resolver, s->lc, &s->peer, on_hat_facts, s);
}

void session_drain(struct session *s)
{
    s->draining = true;
    if (s->state == SS_CMD && s->txn == NULL && !s->dead)
        ss_process(s);
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
        if (s->icid)
            mlog_icid_close(s->icid);
        return;
    }
    txn_end(s, true);
    if (s->icid)
        mlog_icid_close(s->icid);
    ss_free(s);
}

void ss_free(struct session *s)
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
    if (s->close_ev)
        event_free(s->close_ev);
    hat_dns_free(s->hat_dns);
    sender_check_cancel(s->sender_check);
    smtp_auth_abandon(s);
    free(s->pending_mail);
    if (s->ip_counted)
        iptable_release(srv->ip_sessions, &s->peer, iptable_tag(s->lc->name));
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
