/*
 * dsn.c - build delivery status notifications (see dsn.h).
 *
 * The report is built in three bodies first (the human-readable text,
 * the delivery-status fields, the copy of the original), so the MIME
 * boundary can be chosen last: it is derived from the MID, the time and
 * a counter, and the counter moves on until the boundary occurs in none
 * of the bodies. Nothing from the input reaches the output unchecked:
 * identifiers were refused if they hold controls, free text is cleaned to
 * one line and folded, and the copy of the original is either proven
 * safe as MIME content (whole message) or rewritten line by line
 * (headers). Every line the module writes ends in CRLF and is at most
 * LINE_MAX octets; header fields and prose fold at FOLD_WIDTH where
 * white space allows.
 */
#include "queue/dsn.h"

#include <time.h>

#define LINE_MAX_OCTETS 998 /* RFC 5322 2.1.1, without the CRLF */
#define FOLD_WIDTH 78       /* RFC 5322 2.1.1 "SHOULD" */
#define COPY_FOLD_AT 990    /* over-long original header lines fold here */
#define INDENT "    "       /* continuation of folded fields and prose */
#define TIME_MAX INT64_C(253402300799) /* 9999-12-31 23:59:59 UTC */

enum copy_kind { COPY_NONE, COPY_HEADERS, COPY_WHOLE };

static bool fail(char *err, size_t errlen, const char *fmt, ...)
    MOAT_PRINTF(3, 4);

/* Write a refusal reason; always returns false. */
static bool fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid (overlong
 * forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2, cp = c & 0x1fu, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        k = 3, cp = c & 0x0fu, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4, cp = c & 0x07u, min = 0x10000;
    } else
        return 0;
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

/* --- input checks ------------------------------------------------------- */

/* Check an identifier: non-empty, bounded, no controls (and no space
 * unless `spaces`), non-ASCII only as valid UTF-8 and only if `utf8`. */
static bool check_id(const char *s, const char *what, bool spaces, bool utf8,
                     char *err, size_t errlen)
{
    if (s == NULL || *s == '\0')
        return fail(err, errlen, "%s is empty", what);
    size_t n = strnlen(s, DSN_ID_MAX + 1);
    if (n > DSN_ID_MAX)
        return fail(err, errlen, "%s is longer than %d octets", what,
                    DSN_ID_MAX);
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            return fail(err, errlen, "%s holds a control character", what);
        if (p[i] == ' ' && !spaces)
            return fail(err, errlen, "%s holds a space", what);
        if (p[i] < 0x80)
            continue;
        if (!utf8)
            return fail(err, errlen, "%s is not ASCII (no SMTPUTF8)", what);
        size_t k = utf8_len(p + i, n - i);
        if (k == 0)
            return fail(err, errlen, "%s is not valid UTF-8", what);
        i += k - 1;
    }
    return true;
}

/* RFC 3463 status "class.subject.detail", class 4 or 5 (4 for a delay:
 * a warning about a permanent failure would contradict itself). */
static bool status_ok(const char *s, enum dsn_kind kind)
{
    if (s == NULL || (s[0] != '4' && s[0] != '5') || s[1] != '.')
        return false;
    if (kind == DSN_DELAY && s[0] != '4')
        return false;
    const char *p = s + 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (d < 4 && p[d] >= '0' && p[d] <= '9')
            d++;
        if (d == 0 || d > 3)
            return false;
        p += d;
        if (part == 0 && *p++ != '.')
            return false;
    }
    return *p == '\0';
}

static bool time_ok(int64_t t)
{
    return t > 0 && t <= TIME_MAX;
}

static bool check_rcpt(const struct dsn_input *in, const struct dsn_rcpt *r,
                       size_t i, char *err, size_t errlen)
{
    char what[48];
    str_printf(what, sizeof(what), "recipient %zu address", i);
    if (!check_id(r->addr, what, true, in->utf8, err, errlen))
        return false;
    str_printf(what, sizeof(what), "recipient %zu ORCPT", i);
    if (r->orcpt && !check_id(r->orcpt, what, true, in->utf8, err, errlen))
        return false;
    str_printf(what, sizeof(what), "recipient %zu remote MTA", i);
    if (r->remote_mta &&
        !check_id(r->remote_mta, what, false, false, err, errlen))
        return false;
    if (!status_ok(r->status, in->kind))
        return fail(err, errlen, "recipient %zu: bad status for a %s", i,
                    in->kind == DSN_DELAY ? "delay" : "failure");
    if (r->last_attempt != 0 && !time_ok(r->last_attempt))
        return fail(err, errlen, "recipient %zu: bad last attempt time", i);
    return true;
}

/* Refuse what would make a wrong or broken report (see dsn.h). */
static bool check_input(const struct dsn_input *in, char *err, size_t errlen)
{
    bool u = in->utf8;
    if (in->kind != DSN_FAILURE && in->kind != DSN_DELAY)
        return fail(err, errlen, "bad report kind");
    if (!check_id(in->reporting_mta, "reporting MTA", false, false, err,
                  errlen) ||
        !check_id(in->postmaster, "postmaster", false, u, err, errlen) ||
        !check_id(in->message_id, "Message-ID", false, false, err, errlen))
        return false;
    size_t n = strlen(in->message_id);
    if (n < 3 || in->message_id[0] != '<' || in->message_id[n - 1] != '>')
        return fail(err, errlen, "Message-ID is not in <...>");
    if (in->sender == NULL)
        return fail(err, errlen, "sender is missing");
    if (*in->sender == '\0' && in->to == NULL)
        return fail(err, errlen, "null sender: no report for a bounce");
    if (*in->sender != '\0' &&
        !check_id(in->sender, "sender", true, u, err, errlen))
        return false;
    if (in->to && !check_id(in->to, "report recipient", true, u, err, errlen))
        return false;
    if (in->envid && !check_id(in->envid, "ENVID", true, false, err, errlen))
        return false;
    if (in->client_ip &&
        !check_id(in->client_ip, "client IP", false, false, err, errlen))
        return false;
    if (!time_ok(in->now) || !time_ok(in->arrival))
        return fail(err, errlen, "bad report or arrival time");
    if (in->kind == DSN_DELAY && !time_ok(in->retry_until))
        return fail(err, errlen, "a delay warning needs its retry end");
    size_t need =
        in->orig_size < in->max_copy ? (size_t)in->orig_size : in->max_copy;
    if (need > 0 && (in->orig == NULL || in->orig_len < need))
        return fail(err, errlen, "original: %zu bytes given, %zu needed",
                    in->orig ? in->orig_len : 0, need);
    if (in->nrcpt == 0 || in->rcpts == NULL)
        return fail(err, errlen, "no recipients");
    for (size_t i = 0; i < in->nrcpt; i++)
        if (!check_rcpt(in, &in->rcpts[i], i, err, errlen))
            return false;
    return true;
}

/* --- text helpers ------------------------------------------------------- */

/* RFC 5322 date in local time with a numeric zone. Names come from
 * tables, not strftime, so a locale can never change them. */
static void put_date(struct buf *b, int64_t t)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed",
                                    "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL) {
        gmtime_r(&tt, &tm);
        tm.tm_gmtoff = 0;
    }
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    buf_printf(b, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday],
               tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
               tm.tm_min, tm.tm_sec, sign, off / 60, off % 60);
}

/* Append free text as one clean line (see dsn.h): white space runs and
 * line breaks become one space (so a remote multi-line reply joins into
 * one), other controls '?', non-ASCII '?' unless `utf8`, where only
 * invalid UTF-8 becomes '?'. Cut at DSN_TEXT_MAX octets with "...". */
static void put_clean(struct buf *b, const char *s, bool utf8)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strnlen(s, DSN_TEXT_MAX + 1);
    bool cut = n > DSN_TEXT_MAX;
    if (cut) {
        n = DSN_TEXT_MAX;
        while (n > 0 && (p[n] & 0xc0) == 0x80)
            n--;
    }
    size_t start = b->len;
    bool space = false;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            space = true;
            i++;
            continue;
        }
        if (space && b->len > start)
            buf_putc(b, ' ');
        space = false;
        size_t k = c < 0x80 ? 1 : utf8_len(p + i, n - i);
        if (c < 0x20 || c == 0x7f || k == 0 || (k > 1 && !utf8))
            buf_putc(b, '?');
        else
            buf_append(b, p + i, k);
        i += k ? k : 1;
    }
    if (cut)
        buf_puts(b, "...");
}

/* Append clean one-line text to a line already holding `col` octets,
 * folding at spaces before FOLD_WIDTH; continuation lines start with
 * INDENT (white space, so this also folds header fields). A word too
 * long for any line is cut at LINE_MAX_OCTETS, on a UTF-8 character
 * boundary. Ends the last line with CRLF. */
static void put_wrapped(struct buf *b, size_t col, const char *text)
{
    const size_t ind = sizeof(INDENT) - 1;
    bool empty = true; /* no word on this line yet */
    const char *p = text;
    while (*p) {
        size_t w = strcspn(p, " ");
        if (!empty && col + 1 + w > FOLD_WIDTH) {
            buf_puts(b, "\r\n" INDENT);
            col = ind;
        } else if (!empty) {
            buf_putc(b, ' ');
            col++;
        }
        while (col + w > LINE_MAX_OCTETS) {
            size_t cut = LINE_MAX_OCTETS - col;
            while (cut > 0 && ((unsigned char)p[cut] & 0xc0) == 0x80)
                cut--;
            buf_append(b, p, cut);
            buf_puts(b, "\r\n" INDENT);
            col = ind;
            p += cut;
            w -= cut;
        }
        buf_append(b, p, w);
        col += w;
        empty = false;
        p += w;
        while (*p == ' ')
            p++;
    }
    buf_puts(b, "\r\n");
}

/* "prefix" followed by cleaned free text, folded. */
static void put_text_line(struct buf *b, const char *prefix, const char *s,
                          bool utf8)
{
    struct buf t = {0};
    put_clean(&t, s, utf8);
    buf_puts(b, prefix);
    put_wrapped(b, strlen(prefix), buf_str(&t));
    buf_free(&t);
}

/* RFC 3464 address type: RFC 6533's "utf-8" for non-ASCII addresses. */
static const char *addr_type(const char *addr)
{
    return is_ascii(addr) ? "rfc822" : "utf-8";
}

/* --- part 1: the human-readable notification ---------------------------- */

static void text_recipient(const struct dsn_input *in, const struct dsn_rcpt *r,
                           struct buf *b)
{
    buf_printf(b, "<%s>\r\n", r->addr);
    if (r->reason)
        put_text_line(b, INDENT, r->reason, in->utf8);
    if (r->reply) {
        struct buf who = {0};
        buf_printf(&who, INDENT "%s said: ",
                   r->remote_mta ? r->remote_mta : "The remote server");
        put_text_line(b, buf_str(&who), r->reply, in->utf8);
        buf_free(&who);
    }
    if (!r->reason && !r->reply)
        buf_printf(b, INDENT "Status %s\r\n", r->status);
    buf_puts(b, "\r\n");
}

static void build_text(const struct dsn_input *in, enum copy_kind copy,
                       struct buf *b)
{
    buf_printf(b, "This is the mail system at %s.\r\n\r\n", in->reporting_mta);
    if (in->kind == DSN_FAILURE) {
        buf_puts(b, "Your message could not be delivered to the recipients "
                    "below. The mail\r\n"
                    "system has stopped trying; the reason is given under "
                    "each address.\r\n\r\n");
    } else {
        buf_puts(b, "This is only a warning: you do not need to send your "
                    "message again.\r\n\r\n"
                    "Your message has not yet been delivered to the "
                    "recipients below.\r\n"
                    "The mail system keeps trying until\r\n" INDENT);
        put_date(b, in->retry_until);
        buf_puts(b, "\r\nand will write to you again if it gives up.\r\n\r\n");
    }
    for (size_t i = 0; i < in->nrcpt; i++)
        text_recipient(in, &in->rcpts[i], b);
    buf_puts(b, "Your message was received on ");
    put_date(b, in->arrival);
    buf_puts(b, ".\r\n");
    if (copy == COPY_WHOLE)
        buf_puts(b, "A copy of it is attached.\r\n");
    else if (copy == COPY_HEADERS)
        buf_puts(b, "Its header section is attached.\r\n");
    buf_printf(b,
               "\r\nFor help, contact the postmaster of %s\r\n"
               "and include this report.\r\n",
               in->reporting_mta);
}

/* --- part 2: the delivery-status fields (RFC 3464 order) ---------------- */

static void put_date_field(struct buf *b, const char *name, int64_t t)
{
    buf_printf(b, "%s: ", name);
    put_date(b, t);
    buf_puts(b, "\r\n");
}

/* Received-From-MTA from the client's HELO name (free text: only the
 * SMTP server checked it) and its IP address. */
static void received_from(const struct dsn_input *in, struct buf *b)
{
    struct buf v = {0};
    if (in->helo)
        put_clean(&v, in->helo, in->utf8);
    if (v.len == 0 && in->client_ip == NULL) {
        buf_free(&v);
        return;
    }
    if (in->client_ip)
        buf_printf(&v, v.len ? " ([%s])" : "[%s]", in->client_ip);
    buf_puts(b, "Received-From-MTA: dns; ");
    put_wrapped(b, strlen("Received-From-MTA: dns; "), buf_str(&v));
    buf_free(&v);
}

static void status_recipient(const struct dsn_input *in,
                             const struct dsn_rcpt *r, struct buf *b)
{
    if (r->orcpt)
        buf_printf(b, "Original-Recipient: %s%s\r\n",
                   strchr(r->orcpt, ';') ? "" : "rfc822; ", r->orcpt);
    buf_printf(b, "Final-Recipient: %s; %s\r\n", addr_type(r->addr), r->addr);
    buf_printf(b, "Action: %s\r\n",
               in->kind == DSN_DELAY ? "delayed" : "failed");
    buf_printf(b, "Status: %s\r\n", r->status);
    if (r->remote_mta)
        buf_printf(b, "Remote-MTA: dns; %s\r\n", r->remote_mta);
    if (r->reply)
        put_text_line(b, "Diagnostic-Code: smtp; ", r->reply, in->utf8);
    else if (r->reason)
        put_text_line(b, "Diagnostic-Code: X-Moat; ", r->reason, in->utf8);
    if (r->last_attempt)
        put_date_field(b, "Last-Attempt-Date", r->last_attempt);
    if (in->kind == DSN_DELAY)
        put_date_field(b, "Will-Retry-Until", in->retry_until);
}

static void build_status(const struct dsn_input *in, struct buf *b)
{
    if (in->envid)
        buf_printf(b, "Original-Envelope-Id: %s\r\n", in->envid);
    buf_printf(b, "Reporting-MTA: dns; %s\r\n", in->reporting_mta);
    received_from(in, b);
    put_date_field(b, "Arrival-Date", in->arrival);
    buf_printf(b, "X-Moat-MID: %llu\r\n", (unsigned long long)in->mid);
    if (*in->sender)
        buf_printf(b, "X-Moat-Sender: %s; %s\r\n", addr_type(in->sender),
                   in->sender);
    for (size_t i = 0; i < in->nrcpt; i++) {
        buf_puts(b, "\r\n");
        status_recipient(in, &in->rcpts[i], b);
    }
}

/* --- part 3: the copy of the original ----------------------------------- */

/* Length of the header section of p[0..n): up to the first empty line
 * (CRLF or a bare LF alone), or all of it when there is none. */
static size_t header_end(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] == '\n' || (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n'))
            return i;
        const char *nl = memchr(p + i, '\n', n - i);
        if (nl == NULL)
            return n;
        i = (size_t)(nl - p) + 1;
    }
    return n;
}

/* How much of the header section to copy. All of it when its end is
 * known and it fits; else up to the last line end within `max`,
 * preferably one followed by a new field, so no field is cut in two.
 * `whole` tells that p[0..avail) is the entire message: otherwise the
 * bytes after it are unknown, and so is whether its last line ended. */
static size_t header_copy_len(const char *p, size_t avail, bool whole,
                              size_t max)
{
    size_t hlen = header_end(p, avail);
    bool complete = hlen < avail || whole;
    if (complete && hlen <= max)
        return hlen;
    size_t lim = hlen < max ? hlen : max;
    size_t line = 0, field = 0;
    for (size_t i = 0; i < lim; i++) {
        if (p[i] != '\n')
            continue;
        line = i + 1;
        if (line < hlen && p[line] != ' ' && p[line] != '\t')
            field = line;
    }
    return field ? field : line;
}

/* Can the whole message go out unchanged (apart from LF -> CRLF) as a
 * 7bit or 8bit MIME entity? */
static bool copy_safe(const char *p, size_t n, bool eightbit)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n') {
            col = 0;
            continue;
        }
        if (c == '\r' && i + 1 < n && p[i + 1] == '\n')
            continue;
        if (c == '\r' || c == '\0' || (c >= 0x80 && !eightbit))
            return false;
        if (++col > LINE_MAX_OCTETS)
            return false;
    }
    return true;
}

/* Copy a checked message, line ends made CRLF, the last line ended. */
static void put_whole(struct buf *b, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n;
        size_t adv = nl ? len + 1 : len;
        if (len > 0 && p[len - 1] == '\r')
            len--;
        buf_append(b, p, len);
        buf_puts(b, "\r\n");
        p += adv;
        n -= adv;
    }
}

/* Copy header lines, rewriting what MIME cannot carry: line ends become
 * CRLF, controls (bare CR, NUL...) and undeclared 8-bit bytes '?', and
 * lines longer than COPY_FOLD_AT are folded (between UTF-8 characters,
 * so at most 3 octets later). */
static void put_headers(struct buf *b, const char *p, size_t n, bool eightbit)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r' && i + 1 < n && p[i + 1] == '\n')
            continue;
        if (c == '\n') {
            buf_puts(b, "\r\n");
            col = 0;
            continue;
        }
        if (col >= COPY_FOLD_AT && (c & 0xc0) != 0x80) {
            buf_puts(b, "\r\n ");
            col = 1;
        }
        bool ok = c == '\t' || (c >= 0x20 && c != 0x7f);
        if (c >= 0x80 && !eightbit)
            ok = false;
        buf_putc(b, ok ? (char)c : '?');
        col++;
    }
    if (col > 0)
        buf_puts(b, "\r\n");
}

static enum copy_kind build_copy(const struct dsn_input *in, struct buf *b)
{
    if (in->max_copy == 0 || in->orig_size == 0 || in->orig == NULL)
        return COPY_NONE;
    bool whole = in->orig_len >= in->orig_size;
    size_t avail = whole ? (size_t)in->orig_size : in->orig_len;
    bool eight = in->eightbit || in->utf8;
    if (!in->hdrs_only && in->orig_size <= in->max_copy &&
        copy_safe(in->orig, avail, eight)) {
        put_whole(b, in->orig, avail);
        return COPY_WHOLE;
    }
    size_t n = header_copy_len(in->orig, avail, whole, in->max_copy);
    if (n == 0)
        return COPY_NONE;
    put_headers(b, in->orig, n, eight);
    return COPY_HEADERS;
}

/* --- assembly ----------------------------------------------------------- */

static bool has_8bit(const struct buf *b)
{
    for (size_t i = 0; i < b->len; i++)
        if ((unsigned char)b->data[i] >= 0x80)
            return true;
    return false;
}

/* The first boundary "=_moat_<n>.<mid>.<now>" found in no part. The
 * counter comes first so that no candidate is a prefix of another: each
 * occurrence of "=_moat_" in the parts rules out at most one candidate,
 * so the search ends after at most (total length + 1) tries. */
static void pick_boundary(const struct dsn_input *in, struct buf *const *parts,
                          size_t nparts, char *bd, size_t bdlen)
{
    size_t total = 0;
    for (size_t i = 0; i < nparts; i++)
        total += parts[i]->len;
    for (size_t n = 0; n <= total; n++) {
        if (!str_printf(bd, bdlen, "=_moat_%zu.%llu.%lld", n,
                        (unsigned long long)in->mid, (long long)in->now))
            fatal("dsn: boundary buffer too small");
        size_t len = strlen(bd);
        bool clash = false;
        for (size_t i = 0; i < nparts && !clash; i++)
            clash = memmem(buf_str(parts[i]), parts[i]->len, bd, len) != NULL;
        if (!clash)
            return;
    }
    fatal("dsn: no free MIME boundary");
}

static const char *copy_type(enum copy_kind copy, bool utf8)
{
    if (copy == COPY_WHOLE)
        return utf8 ? "message/global" : "message/rfc822";
    return utf8 ? "message/global-headers" : "text/rfc822-headers";
}

static void put_part(struct buf *out, const char *bd, const char *desc,
                     const char *type, const struct buf *body)
{
    buf_printf(out, "\r\n--%s\r\n", bd);
    buf_printf(out, "Content-Description: %s\r\n", desc);
    buf_printf(out, "Content-Type: %s\r\n", type);
    buf_printf(out, "Content-Transfer-Encoding: %s\r\n\r\n",
               has_8bit(body) ? "8bit" : "7bit");
    buf_append(out, buf_str(body), body->len);
}

static void put_header(const struct dsn_input *in, const char *bd, bool eight,
                       struct buf *out)
{
    const char *subject = in->subject;
    if (subject == NULL || *subject == '\0')
        subject = in->kind == DSN_DELAY
                      ? "Delivery Status Notification (Delay)"
                      : "Delivery Status Notification (Failure)";
    put_date_field(out, "Date", in->now);
    buf_printf(out, "From: Mail Delivery System <%s>\r\n", in->postmaster);
    buf_printf(out, "To: <%s>\r\n", in->to ? in->to : in->sender);
    put_text_line(out, "Subject: ", subject, in->utf8);
    buf_printf(out, "Message-ID: %s\r\n", in->message_id);
    buf_puts(out, "Auto-Submitted: auto-replied\r\n");
    buf_puts(out, "MIME-Version: 1.0\r\n");
    buf_printf(out,
               "Content-Type: multipart/report; report-type=%s;\r\n"
               "\tboundary=\"%s\"\r\n",
               in->utf8 ? "global-delivery-status" : "delivery-status", bd);
    buf_printf(out, "Content-Transfer-Encoding: %s\r\n\r\n",
               eight ? "8bit" : "7bit");
    buf_puts(out, "This is a MIME-encapsulated message.\r\n");
}

bool dsn_build(const struct dsn_input *in, struct buf *out, char *err,
               size_t errlen)
{
    if (!check_input(in, err, errlen))
        return false;
    struct buf text = {0}, status = {0}, copy = {0};
    enum copy_kind ck = build_copy(in, &copy);
    build_text(in, ck, &text);
    build_status(in, &status);
    struct buf *parts[] = {&text, &status, &copy};
    char bd[96];
    pick_boundary(in, parts, ARRAY_LEN(parts), bd, sizeof(bd));

    bool eight = has_8bit(&text) || has_8bit(&status) || has_8bit(&copy);
    put_header(in, bd, eight, out);
    put_part(out, bd, "Notification",
             in->utf8 ? "text/plain; charset=utf-8"
                      : "text/plain; charset=us-ascii",
             &text);
    put_part(out, bd, "Delivery report",
             in->utf8 ? "message/global-delivery-status"
                      : "message/delivery-status",
             &status);
    if (ck != COPY_NONE) {
        const char *desc[2][2] = {
            {"Undelivered Message", "Undelivered Message Headers"},
            {"Delayed Message", "Delayed Message Headers"}};
        put_part(out, bd, desc[in->kind == DSN_DELAY][ck == COPY_HEADERS],
                 copy_type(ck, in->utf8), &copy);
    }
    buf_printf(out, "\r\n--%s--\r\n", bd);
    buf_free(&text);
    buf_free(&status);
    buf_free(&copy);
    return true;
}
