/*
 * mime.c - message structure for message filters (see mime.h).
 */
#include "policy/mime.h"

#include <ctype.h>
#include <stdlib.h>
#include <strings.h>

/* One line from off: [off, *end) without its CR LF; *next after it. */
static bool line_at(const char *msg, size_t len, size_t off, size_t *end,
                    size_t *next)
{
    if (off >= len)
        return false;
    const char *nl = memchr(msg + off, '\n', len - off);
    size_t e = nl ? (size_t)(nl - msg) : len;
    *next = nl ? e + 1 : len;
    if (e > off && msg[e - 1] == '\r')
        e--;
    *end = e;
    return true;
}

/* The fields of a header block that parts need (unfolded, trimmed). */
struct part_fields {
    char *ctype, *disp, *cte; /* NULL: not there */
    bool cut;                 /* a value was longer than MIME_VALUE_MAX */
};

static void fields_free(struct part_fields *pf)
{
    free(pf->ctype);
    free(pf->disp);
    free(pf->cte);
}

static const char *fv(const char *v)
{
    return v ? v : "";
}

/* Unfolded value of a field spanning [voff, vend) (continuation lines
 * included), NUL-terminated, leading and trailing blanks dropped. False
 * when it was cut (over MIME_VALUE_MAX) or held a NUL (kept as a space):
 * the message is then not valid. */
static bool unfold(const char *msg, size_t voff, size_t vend, struct buf *out)
{
    bool lead = true, ok = true;
    for (size_t i = voff; i < vend; i++) {
        char ch = msg[i];
        if (ch == '\r' || ch == '\n')
            continue;
        if (lead && (ch == ' ' || ch == '\t'))
            continue;
        if (out->len >= MIME_VALUE_MAX) {
            ok = false;
            break;
        }
        lead = false;
        if (ch == '\0') {
            ch = ' ';
            ok = false;
        }
        buf_putc(out, ch);
    }
    while (out->len &&
           (out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\t'))
        out->len--;
    buf_putc(out, '\0');
    return ok;
}

/* Walk a header block from off. For each field calls fn (name, value
 * bounds). Returns the offset after the empty line (or len). *bad is set
 * for a line that is neither a field nor a continuation. */
typedef void (*field_fn)(void *arg, const char *msg, size_t noff, size_t nlen,
                         size_t voff, size_t vend, size_t foff, size_t fend);

static size_t header_block(const char *msg, size_t len, size_t off, field_fn fn,
                           void *arg, bool *bad)
{
    size_t end, next;
    size_t foff = 0, noff = 0, nlen = 0, voff = 0, vend = 0;
    bool have = false;
    while (line_at(msg, len, off, &end, &next)) {
        if (end == off) { /* the empty line */
            if (have)
                fn(arg, msg, noff, nlen, voff, vend, foff, off);
            return next;
        }
        if ((msg[off] == ' ' || msg[off] == '\t') && have) {
            vend = end; /* continuation */
            off = next;
            continue;
        }
        if (have)
            fn(arg, msg, noff, nlen, voff, vend, foff, off);
        have = false;
        const char *colon = memchr(msg + off, ':', end - off);
        size_t n = colon ? (size_t)(colon - (msg + off)) : 0;
        bool name_ok = n > 0;
        for (size_t i = 0; i < n && name_ok; i++) {
            unsigned char ch = (unsigned char)msg[off + i];
            name_ok = ch > 32 && ch < 127;
        }
        if (!name_ok) {
            *bad = true; /* not a field: the header ends here */
            return off;
        }
        have = true;
        foff = off;
        noff = off;
        nlen = n;
        voff = off + n + 1;
        vend = end;
        off = next;
    }
    if (have)
        fn(arg, msg, noff, nlen, voff, vend, foff, len);
    return len;
}

static void top_field(void *arg, const char *msg, size_t noff, size_t nlen,
                      size_t voff, size_t vend, size_t foff, size_t fend)
{
    struct mime_msg *m = arg;
    if (m->nheaders >= MIME_MAX_HEADERS) {
        m->valid = false;
        return;
    }
    m->headers =
        xgrow(m->headers, &m->hcap, m->nheaders + 1, sizeof(*m->headers));
    struct mime_header *h = &m->headers[m->nheaders++];
    h->name = xstrndup(msg + noff, nlen);
    struct buf b = {0};
    if (!unfold(msg, voff, vend, &b))
        m->valid = false;
    h->value = b.data;
    h->off = foff;
    h->len = fend - foff;
}

static void part_field(void *arg, const char *msg, size_t noff, size_t nlen,
                       size_t voff, size_t vend, size_t foff, size_t fend)
{
    struct part_fields *pf = arg;
    (void)foff;
    (void)fend;
    char **dst = NULL;
    if (nlen == 12 && strncasecmp(msg + noff, "Content-Type", 12) == 0)
        dst = &pf->ctype;
    else if (nlen == 19 &&
             strncasecmp(msg + noff, "Content-Disposition", 19) == 0)
        dst = &pf->disp;
    else if (nlen == 25 &&
             strncasecmp(msg + noff, "Content-Transfer-Encoding", 25) == 0)
        dst = &pf->cte;
    if (dst == NULL || *dst)
        return; /* another field, or the first of two wins */
    struct buf b = {0};
    if (!unfold(msg, voff, vend, &b))
        pf->cut = true;
    *dst = b.data;
}

/* Percent-decode an RFC 2231 extended value (after charset''lang). */
static void pct_decode(const char *v, size_t n, struct buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '%' && i + 2 < n && isxdigit((unsigned char)v[i + 1]) &&
            isxdigit((unsigned char)v[i + 2])) {
            char hx[3] = {v[i + 1], v[i + 2], 0};
            buf_putc(out, (char)strtol(hx, NULL, 16));
            i += 2;
        } else {
            buf_putc(out, v[i]);
        }
    }
}

/* A parameter of a structured field value ("type/sub; a=b; c="d;e"")
 * into out (NUL-terminated): name=value, name="quoted", the RFC 2231
 * forms name*=charset''pct and continuations name*0=, name*1*=, ...
 * Quoted strings and comments are skipped whole, so a ';' or a name
 * inside them is not a parameter. False if absent. */
static bool param(const char *v, const char *name, struct buf *out)
{
    size_t nl = strlen(name);
    buf_reset(out);
    struct seg {
        int idx;
        bool ext;
        char *val;
    } segs[32];
    size_t nseg = 0;
    const char *plain = NULL; /* name= */
    size_t plain_len = 0;
    bool have_plain = false, have_ext = false;
    char *ext_val = NULL;
    const char *p = v;
    /* Skip the media type (or disposition) up to the first ';'. */
    while (*p && *p != ';')
        p++;
    while (*p == ';') {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *k = p;
        while (*p && *p != '=' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        size_t klen = (size_t)(p - k);
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=') {
            while (*p && *p != ';')
                p++;
            continue;
        }
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        struct buf val = {0};
        bool quoted = *p == '"';
        if (quoted) {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                buf_putc(&val, *p);
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ';' && *p != ' ' && *p != '\t' && *p != '(')
                buf_putc(&val, *p++);
        }
        /* Whatever follows up to the next ';' (blanks, a comment). */
        int paren = 0;
        while (*p && (*p != ';' || paren)) {
            if (*p == '(')
                paren++;
            else if (*p == ')' && paren)
                paren--;
            else if (*p == '\\' && p[1])
                p++;
            p++;
        }
        buf_putc(&val, '\0');
        bool used = false;
        if (klen == nl && strncasecmp(k, name, nl) == 0 && !have_plain) {
            have_plain = true;
            plain = val.data;
            plain_len = val.len - 1;
            used = true;
        } else if (klen == nl + 1 && strncasecmp(k, name, nl) == 0 &&
                   k[nl] == '*' && !have_ext) {
            have_ext = true;
            ext_val = val.data;
            used = true;
        } else if (klen > nl + 1 && strncasecmp(k, name, nl) == 0 &&
                   k[nl] == '*' && isdigit((unsigned char)k[nl + 1]) &&
                   nseg < ARRAY_LEN(segs)) {
            int idx = 0;
            size_t q = nl + 1;
            while (q < klen && isdigit((unsigned char)k[q]) && idx < 1000)
                idx = idx * 10 + (k[q++] - '0');
            bool ext = q < klen && k[q] == '*';
            segs[nseg++] = (struct seg){idx, ext, val.data};
            used = true;
        }
        if (!used)
            buf_free(&val);
    }
    bool found = false;
    if (have_ext && ext_val) {
        const char *q = strstr(ext_val, "''");
        const char *d = q ? q + 2 : ext_val;
        pct_decode(d, strlen(d), out);
        found = true;
    } else if (nseg > 0) {
        /* Continuations in index order; the first may carry charset''. */
        for (int want = 0; want < 1000; want++) {
            size_t k2 = 0;
            while (k2 < nseg && segs[k2].idx != want)
                k2++;
            if (k2 == nseg)
                break;
            const char *d = segs[k2].val;
            if (segs[k2].ext) {
                if (want == 0) {
                    const char *q = strstr(d, "''");
                    d = q ? q + 2 : d;
                }
                pct_decode(d, strlen(d), out);
            } else {
                buf_append(out, d, strlen(d));
            }
        }
        found = true;
    } else if (have_plain) {
        buf_append(out, plain, plain_len);
        found = true;
    }
    free((char *)plain);
    free(ext_val);
    for (size_t k2 = 0; k2 < nseg; k2++)
        free(segs[k2].val);
    buf_putc(out, '\0');
    return found;
}

/* "Text/HTML; charset=x" -> "text/html". */
static void media_type(const char *v, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *v && *v != ';' && *v != ' ' && *v != '\t' && o + 1 < outlen; v++)
        out[o++] = (char)tolower((unsigned char)*v);
    out[o] = '\0';
    if (o == 0 || strchr(out, '/') == NULL)
        str_copy(out, outlen, "text/plain");
}

static void add_leaf(struct mime_msg *m, const struct part_fields *pf,
                     size_t body_off, size_t body_len, unsigned depth)
{
    if (pf->cut)
        m->valid = false;
    if (m->nparts >= MIME_MAX_PARTS) {
        m->valid = false;
        return;
    }
    m->parts = xgrow(m->parts, &m->pcap, m->nparts + 1, sizeof(*m->parts));
    struct mime_part *p = &m->parts[m->nparts++];
    memset(p, 0, sizeof(*p));
    media_type(fv(pf->ctype), p->type, sizeof(p->type));
    struct buf fn = {0};
    if (!param(fv(pf->disp), "filename", &fn))
        param(fv(pf->ctype), "name", &fn);
    p->filename = fn.data;
    bool disp_att = strncasecmp(fv(pf->disp), "attachment", 10) == 0;
    p->attachment = disp_att || p->filename[0] ||
                    (depth > 0 && strncmp(p->type, "text/", 5) != 0);
    const char *cte = fv(pf->cte);
    if (strcasecmp(cte, "base64") == 0)
        p->cte = MIME_BASE64;
    else if (strcasecmp(cte, "quoted-printable") == 0)
        p->cte = MIME_QP;
    else if (cte[0] == '\0' || strcasecmp(cte, "7bit") == 0 ||
             strcasecmp(cte, "8bit") == 0 || strcasecmp(cte, "binary") == 0)
        p->cte = MIME_7BIT;
    else
        p->cte = MIME_OTHER;
    p->body_off = body_off;
    p->body_len = body_len;
    p->depth = depth;
}

/* Is the line [off, end) the delimiter "--b" or "--b--" (with transport
 * padding)? 1: delimiter, 2: close delimiter, 0: neither. */
static int delimiter(const char *msg, size_t off, size_t end, const char *b,
                     size_t blen)
{
    if (end - off < blen + 2 || msg[off] != '-' || msg[off + 1] != '-' ||
        memcmp(msg + off + 2, b, blen) != 0)
        return 0;
    size_t i = off + 2 + blen;
    int kind = 1;
    if (end - i >= 2 && msg[i] == '-' && msg[i + 1] == '-') {
        kind = 2;
        i += 2;
    }
    for (; i < end; i++)
        if (msg[i] != ' ' && msg[i] != '\t')
            return 0;
    return kind;
}

static void walk(struct mime_msg *m, const char *msg, size_t off, size_t end,
                 const struct part_fields *pf, unsigned depth)
{
    char type[128];
    media_type(fv(pf->ctype), type, sizeof(type));
    if (pf->cut)
        m->valid = false;
    if (strcmp(type, "message/rfc822") == 0 && depth < MIME_MAX_DEPTH) {
        /* A forwarded message: its parts are looked at too. */
        struct part_fields sub = {0};
        bool bad = false;
        size_t body = header_block(msg, end, off, part_field, &sub, &bad);
        if (bad)
            m->valid = false;
        walk(m, msg, body, end < body ? body : end, &sub, depth + 1);
        fields_free(&sub);
        return;
    }
    if (strncmp(type, "multipart/", 10) != 0) {
        add_leaf(m, pf, off, end - off, depth);
        return;
    }
    struct buf bb = {0};
    if (!param(fv(pf->ctype), "boundary", &bb) || bb.data[0] == '\0' ||
        bb.len - 1 > 70 || depth >= MIME_MAX_DEPTH) {
        buf_free(&bb);
        m->valid = false;
        add_leaf(m, pf, off, end - off, depth); /* taken as one blob */
        return;
    }
    const char *b = bb.data;
    size_t blen = strlen(b);
    size_t le, next, start = 0; /* start: a part's first byte, 0 = none */
    bool closed = false, any = false;
    for (size_t o = off; o < end && line_at(msg, end, o, &le, &next);
         o = next) {
        int k = delimiter(msg, o, le, b, blen);
        if (k == 0)
            continue;
        if (start) {
            /* The CRLF before a delimiter belongs to the delimiter. */
            size_t pend = o;
            if (pend > start && msg[pend - 1] == '\n')
                pend--;
            if (pend > start && msg[pend - 1] == '\r')
                pend--;
            struct part_fields sub = {0};
            bool bad = false;
            size_t body =
                header_block(msg, pend, start, part_field, &sub, &bad);
            if (bad)
                m->valid = false;
            walk(m, msg, body, pend < body ? body : pend, &sub, depth + 1);
            fields_free(&sub);
            any = true;
        }
        if (k == 2) {
            closed = true;
            break;
        }
        start = next;
    }
    if (!closed) {
        m->valid = false; /* no close delimiter (or none at all) */
        if (start && start < end) {
            /* The last part runs to the end: still looked at. */
            struct part_fields sub = {0};
            bool bad = false;
            size_t body = header_block(msg, end, start, part_field, &sub, &bad);
            walk(m, msg, body, end < body ? body : end, &sub, depth + 1);
            fields_free(&sub);
            any = true;
        }
    }
    if (!any)
        add_leaf(m, pf, off, end - off, depth);
    buf_free(&bb);
}

void mime_parse(const char *msg, size_t len, struct mime_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->valid = true;
    bool bad = false;
    size_t body = header_block(msg, len, 0, top_field, m, &bad);
    if (bad)
        m->valid = false;
    m->header_len = body;
    struct part_fields pf = {0};
    const struct mime_header *h;
    if ((h = mime_header_find(m, "Content-Type")) != NULL)
        pf.ctype = xstrdup(h->value);
    if ((h = mime_header_find(m, "Content-Disposition")) != NULL)
        pf.disp = xstrdup(h->value);
    if ((h = mime_header_find(m, "Content-Transfer-Encoding")) != NULL)
        pf.cte = xstrdup(h->value);
    walk(m, msg, body, len, &pf, 0);
    fields_free(&pf);
}

void mime_free(struct mime_msg *m)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        free(m->headers[i].name);
        free(m->headers[i].value);
    }
    free(m->headers);
    for (size_t i = 0; i < m->nparts; i++)
        free(m->parts[i].filename);
    free(m->parts);
    memset(m, 0, sizeof(*m));
}

const struct mime_header *mime_header_find(const struct mime_msg *m,
                                           const char *name)
{
    for (size_t i = 0; i < m->nheaders; i++)
        if (strcasecmp(m->headers[i].name, name) == 0)
            return &m->headers[i];
    return NULL;
}

size_t mime_header_count(const struct mime_msg *m, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        n += strcasecmp(m->headers[i].name, name) == 0;
    return n;
}

void mime_decode(const struct mime_part *p, const char *msg, struct buf *out)
{
    const char *s = msg + p->body_off;
    size_t n = p->body_len;
    if (p->cte == MIME_BASE64) {
        unsigned acc = 0, bits = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '=')
                break;
            int v = b64_value((unsigned char)s[i]);
            if (v < 0)
                continue; /* line breaks, junk */
            acc = (acc << 6) | (unsigned)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                buf_putc(out, (char)((acc >> bits) & 0xff));
            }
        }
        return;
    }
    if (p->cte == MIME_QP) {
        for (size_t i = 0; i < n; i++) {
            if (s[i] != '=') {
                buf_putc(out, s[i]);
                continue;
            }
            if (i + 1 < n && s[i + 1] == '\n') { /* soft break, LF */
                i += 1;
            } else if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
                i += 2;
            } else if (i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
                       isxdigit((unsigned char)s[i + 2])) {
                char hx[3] = {s[i + 1], s[i + 2], 0};
                buf_putc(out, (char)strtol(hx, NULL, 16));
                i += 2;
            } else {
                buf_putc(out, '='); /* not an escape: kept */
            }
        }
        return;
    }
    buf_append(out, s, n);
}
