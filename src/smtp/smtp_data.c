/*
 * smtp_data.c - the DATA/BDAT content scanner (see smtp_data.h).
 *
 * The scanner is on the hot path for every byte of mail, so it works on
 * runs, not bytes: memchr finds the next LF, a second memchr looks for
 * bare CRs inside the line, and content is appended to the output in
 * bulk; the only bytes it ever drops are a stuffing dot and the
 * terminator's ".CRLF", which split the run. Its state between chunks is
 * one of five positions (start of line, mid line, after a CR, after a
 * line-leading dot, after ".CR"), so any chunking gives the same result.
 *
 * Only CRLF starts a new line for the end-of-data and unstuffing rules:
 * "<LF>.<LF>", "<CR>.<CR>", "<LF>.<CRLF>" and "<CRLF>.<LF>" are content
 * (and flagged), never the end of the message (SMTP smuggling). For the
 * line-length limit and header capture a bare LF also ends a line, so the
 * limit applies to the lines as they will be stored.
 *
 * Header capture keeps the current header line in a bounded buffer
 * (HDR_LINE_MAX) and the captured values bounded to
 * SMTP_DATA_HDR_VALUE_MAX; longer input is truncated, never grown.
 */
#include "smtp/smtp_data.h"
#include "smtp/smtp_cmd.h"

/* Bound of a header line kept for capture: the value bound plus room for
 * the field name and the blanks after the colon. */
#define HDR_LINE_MAX (SMTP_DATA_HDR_VALUE_MAX + 64)

/* Scanner positions, kept in d->state between calls. */
enum {
    ST_BOL,    /* at the start of a line (after CRLF) */
    ST_MID,    /* inside a line */
    ST_CR,     /* after a content CR that may start a CRLF */
    ST_DOT,    /* DOT mode: after a line-leading dot (dropped) */
    ST_DOT_CR, /* DOT mode: after a line-leading ".CR" (CR held back) */
};

/* Headers captured for the mail log; hdr_capture is index + 1. */
static const struct hdr_field {
    const char *name;
    size_t off; /* offset of the struct buf in struct smtp_data */
} hdr_fields[] = {
    {"Message-ID", offsetof(struct smtp_data, message_id)},
    {"Subject", offsetof(struct smtp_data, subject)},
};

/* One call's view of its input. */
struct scan {
    struct smtp_data *d;
    const char *p;   /* next unread byte */
    const char *e;   /* end of input */
    const char *run; /* first content byte not yet appended to out */
    struct buf *out;
};

/* --- header capture ------------------------------------------------------ */

/* True for the folding white space of RFC 5322 (SP, HT). */
static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* The value buffer being captured, or NULL. */
static struct buf *hdr_target(struct smtp_data *d)
{
    if (d->hdr_capture == 0)
        return NULL;
    return (struct buf *)((char *)d + hdr_fields[d->hdr_capture - 1].off);
}

/* Append to the captured value, skipping leading blanks, bounded. */
static void hdr_value_add(struct smtp_data *d, const char *s, size_t n)
{
    struct buf *v = hdr_target(d);
    if (v->len == 0)
        while (n > 0 && is_wsp(*s)) {
            s++;
            n--;
        }
    size_t room = SMTP_DATA_HDR_VALUE_MAX - v->len;
    buf_append(v, s, n < room ? n : room);
}

/* Close the field being captured: trim its trailing blanks. */
static void hdr_end_field(struct smtp_data *d)
{
    struct buf *v = hdr_target(d);
    if (v == NULL)
        return;
    while (v->len > 0 && is_wsp(v->data[v->len - 1]))
        v->len--;
    if (v->data)
        v->data[v->len] = '\0';
    d->hdr_capture = 0;
}

/* A new header field line: start capturing it if it is one we want. */
static void hdr_start_field(struct smtp_data *d, const char *s, size_t n)
{
    const char *colon = memchr(s, ':', n);
    if (colon == NULL)
        return;
    size_t nlen = (size_t)(colon - s);
    while (nlen > 0 && is_wsp(s[nlen - 1]))
        nlen--;
    for (size_t i = 0; i < ARRAY_LEN(hdr_fields); i++) {
        if (strlen(hdr_fields[i].name) != nlen ||
            !str_nieq(s, hdr_fields[i].name, nlen) || (d->hdr_got & (1u << i)))
            continue;
        d->hdr_got |= 1u << i;
        d->hdr_capture = (int)i + 1;
        hdr_value_add(d, colon + 1, n - (size_t)(colon - s) - 1);
        return;
    }
}

/* Keep part of the current header line, bounded. */
static void hdr_add(struct smtp_data *d, const char *s, size_t n)
{
    size_t room = HDR_LINE_MAX - d->hdr_line.len;
    buf_append(&d->hdr_line, s, n < room ? n : room);
}

/* A header line is complete: dispatch it as field, continuation or end. */
static void hdr_eol(struct smtp_data *d)
{
    struct buf *l = &d->hdr_line;
    if (l->len > 0 && l->data[l->len - 1] == '\r')
        l->len--;
    if (l->len == 0) {
        hdr_end_field(d);
        d->in_headers = false;
        buf_free(l);
        return;
    }
    if (is_wsp(l->data[0])) {
        if (d->hdr_capture)
            hdr_value_add(d, l->data, l->len);
    } else {
        hdr_end_field(d);
        hdr_start_field(d, l->data, l->len);
    }
    buf_reset(l);
}

/* End of message: finish a header section that never reached its end. */
static void hdr_finish(struct smtp_data *d)
{
    if (d->in_headers && d->hdr_line.len > 0)
        hdr_eol(d);
    hdr_end_field(d);
    buf_free(&d->hdr_line);
}

/* --- the scanner ------------------------------------------------------------
 */

/* Append the pending run up to `upto` to the output. */
static void emit(struct scan *s, const char *upto)
{
    size_t n = (size_t)(upto - s->run);
    if (n > 0) {
        buf_append(s->out, s->run, n);
        s->d->bytes_out += n;
    }
    s->run = upto;
}

/* Count n more octets in the current line. */
static void line_add(struct smtp_data *d, size_t n)
{
    d->line_len += n;
    if (d->line_len > SMTP_TEXT_LINE_MAX)
        d->flags |= SMTP_DATA_LONG_LINE;
}

/* The current line ended with its LF (crlf: preceded by CR). */
static void line_end(struct smtp_data *d, bool crlf)
{
    d->line_len = 0;
    if (d->in_headers)
        hdr_eol(d);
    d->state = crlf ? ST_BOL : ST_MID;
}

/* Start of line: a leading dot is stuffing (DOT mode) or starts the end. */
static void st_bol(struct scan *s)
{
    if (s->d->mode == SMTP_DATA_DOT && *s->p == '.') {
        emit(s, s->p);
        s->run = ++s->p;
        s->d->state = ST_DOT;
    } else
        s->d->state = ST_MID;
}

/* After a leading dot: ".CR" may be the end, anything else is content. */
static void st_dot(struct scan *s)
{
    if (*s->p == '\r') {
        s->run = ++s->p; /* hold the CR back until we see what follows */
        s->d->state = ST_DOT_CR;
    } else
        s->d->state = ST_MID;
}

/* After a leading ".CR": LF ends the data, anything else makes the CR a
 * bare CR of a content line. */
static void st_dot_cr(struct scan *s)
{
    struct smtp_data *d = s->d;
    if (*s->p == '\n') {
        s->run = ++s->p;
        d->done = true;
        hdr_finish(d);
        return;
    }
    d->flags |= SMTP_DATA_BARE_CR;
    buf_putc(s->out, '\r');
    d->bytes_out++;
    line_add(d, 1);
    if (d->in_headers)
        hdr_add(d, "\r", 1);
    d->state = ST_MID;
}

/* After a content CR at the end of the previous input. */
static void st_cr(struct scan *s)
{
    if (*s->p == '\n') {
        s->p++;
        line_add(s->d, 1);
        line_end(s->d, true);
    } else {
        s->d->flags |= SMTP_DATA_BARE_CR;
        s->d->state = ST_MID;
    }
}

/* Inside a line: take everything up to and including the next LF. */
static void st_mid(struct scan *s)
{
    struct smtp_data *d = s->d;
    const char *p = s->p;
    const char *lf = memchr(p, '\n', (size_t)(s->e - p));
    const char *end = lf ? lf : s->e;
    /* A CR right before the LF, or last in the input, is not (yet) bare. */
    if (end - p > 1 && memchr(p, '\r', (size_t)(end - p - 1)))
        d->flags |= SMTP_DATA_BARE_CR;
    if (d->in_headers)
        hdr_add(d, p, (size_t)(end - p));
    if (lf == NULL) {
        line_add(d, (size_t)(s->e - p));
        s->p = s->e;
        d->state = s->e[-1] == '\r' ? ST_CR : ST_MID;
        return;
    }
    bool crlf = lf > p && lf[-1] == '\r';
    if (!crlf)
        d->flags |= SMTP_DATA_BARE_LF;
    line_add(d, (size_t)(lf + 1 - p));
    s->p = lf + 1;
    line_end(d, crlf);
}

static void (*const steps[])(struct scan *) = {
    [ST_BOL] = st_bol, [ST_MID] = st_mid,       [ST_CR] = st_cr,
    [ST_DOT] = st_dot, [ST_DOT_CR] = st_dot_cr,
};

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode)
{
    memset(d, 0, sizeof(*d));
    buf_init(&d->message_id);
    buf_init(&d->subject);
    buf_init(&d->hdr_line);
    d->mode = mode;
    d->in_headers = true;
    d->state = ST_BOL;
}

void smtp_data_free(struct smtp_data *d)
{
    buf_free(&d->message_id);
    buf_free(&d->subject);
    buf_free(&d->hdr_line);
}

size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t len,
                      struct buf *out)
{
    struct scan s = {.d = d, .p = in, .e = in + len, .run = in, .out = out};
    if (d->done)
        return 0;
    while (s.p < s.e && !d->done)
        steps[d->state](&s);
    emit(&s, s.p);
    return (size_t)(s.p - in);
}

void smtp_data_finish(struct smtp_data *d)
{
    if (d->state == ST_CR) {
        d->flags |= SMTP_DATA_BARE_CR;
        d->state = ST_MID;
    }
    hdr_finish(d);
}
