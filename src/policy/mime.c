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

/* The fields of a header block that parts need. */
struct part_fields {
    char ctype[1024];
    char disp[1024];
    char cte[64];
};

/* Unfolded value of a field spanning [voff, vend) (continuation lines
 * included), into out (bounded), leading blanks dropped. */
static void unfold(const char *msg, size_t voff, size_t vend, struct buf *out)
{
    bool lead = true;
    for (size_t i = voff; i < vend && out->len < MIME_VALUE_MAX; i++) {
        char ch = msg[i];
        if (ch == '\r' || ch == '\n')
            continue;
        if (lead && (ch == ' ' || ch == '\t'))
            continue;
        lead = false;
        buf_putc(out, ch);
    }
}

/* Walk a header block from off. For each field calls fn (name, value
 * bounds). Returns the offset after the empty line (or len). *bad is set
 * for a line that is neither a field nor a continuation. */
typedef void (*field_fn)(void *arg, const char *msg, size_t noff, size_t nlen,
                         size_t voff, size_t vend, size_t foff, size_t fend);

static size_t header_block(const char *msg, size_t len, size_t off,
                           field_fn fn, void *arg, bool *bad)
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
    m->headers = xgrow(m->headers, &m->hcap, m->nheaders + 1,
                       sizeof(*m->headers));
    struct mime_header *h = &m->headers[m->nheaders++];
    h->name = xstrndup(msg + noff, nlen);
    struct buf b = {0};
    unfold(msg, voff, vend, &b);
    buf_putc(&b, '\0');
    h->value = b.data;
    /* Trailing blanks are not part of the value. */
    size_t vl = strlen(h->value);
    while (vl && (h->value[vl - 1] == ' ' || h->value[vl - 1] == '\t'))
        h->value[--vl] = '\0';
    h->off = foff;
    h->len = fend - foff;
}

static void part_field(void *arg, const char *msg, size_t noff, size_t nlen,
                       size_t voff, size_t vend, size_t foff, size_t fend)
{
    struct part_fields *pf = arg;
    (void)foff;
    (void)fend;
    char *dst = NULL;
    size_t cap = 0;
    if (nlen == 12 && strncasecmp(msg + noff, "Content-Type", 12) == 0) {
        dst = pf->ctype;
        cap = sizeof(pf->ctype);
    } else if (nlen == 19 &&
               strncasecmp(msg + noff, "Content-Disposition", 19) == 0) {
        dst = pf->disp;
        cap = sizeof(pf->disp);
    } else if (nlen == 25 &&
               strncasecmp(msg + noff, "Content-Transfer-Encoding", 25) == 0) {
        dst = pf->cte;
        cap = sizeof(pf->cte);
    }
    if (dst == NULL || dst[0])
        return; /* another field, or the first of two wins */
    struct buf b = {0};
    unfold(msg, voff, vend, &b);
    buf_putc(&b, '\0');
    str_copy(dst, cap, b.data);
    buf_free(&b);
}

/* A parameter of a structured field ("boundary", "filename"), unquoted,
 * into out; RFC 2231 "name*=charset''pct%20encoded" too. */
static bool param(const char *v, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = strchr(v, ';');
    while (p) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        bool ext = false;
        if (strncasecmp(p, name, nl) == 0 &&
            (p[nl] == '=' || (p[nl] == '*' && p[nl + 1] == '='))) {
            ext = p[nl] == '*';
            p += nl + (ext ? 2 : 1);
            size_t o = 0;
            if (*p == '"') {
                for (p++; *p && *p != '"' && o + 1 < outlen; p++) {
                    if (*p == '\\' && p[1])
                        p++;
                    out[o++] = *p;
                }
            } else if (ext) {
                const char *q = strstr(p, "''");
                if (q && q < p + strcspn(p, ";"))
                    p = q + 2; /* charset and language skipped */
                for (; *p && *p != ';' && *p != ' ' && o + 1 < outlen; p++) {
                    if (*p == '%' && isxdigit((unsigned char)p[1]) &&
                        isxdigit((unsigned char)p[2])) {
                        char hx[3] = {p[1], p[2], 0};
                        out[o++] = (char)strtol(hx, NULL, 16);
                        p += 2;
                    } else {
                        out[o++] = *p;
                    }
                }
            } else {
                for (; *p && *p != ';' && *p != ' ' && *p != '\t' &&
                       o + 1 < outlen;
                     p++)
                    out[o++] = *p;
            }
            out[o] = '\0';
            return true;
        }
        p = strchr(p, ';');
    }
    return false;
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
    if (m->nparts >= MIME_MAX_PARTS) {
        m->valid = false;
        return;
    }
    m->parts = xgrow(m->parts, &m->pcap, m->nparts + 1, sizeof(*m->parts));
    struct mime_part *p = &m->parts[m->nparts++];
    memset(p, 0, sizeof(*p));
    media_type(pf->ctype, p->type, sizeof(p->type));
    if (!param(pf->disp, "filename", p->filename, sizeof(p->filename)))
        param(pf->ctype, "name", p->filename, sizeof(p->filename));
    bool disp_att = strncasecmp(pf->disp, "attachment", 10) == 0;
    p->attachment = disp_att || p->filename[0] ||
                    (depth > 0 && strncmp(p->type, "text/", 5) != 0);
    if (strcasecmp(pf->cte, "base64") == 0)
        p->cte = MIME_BASE64;
    else if (strcasecmp(pf->cte, "quoted-printable") == 0)
        p->cte = MIME_QP;
    else if (pf->cte[0] == '\0' || strcasecmp(pf->cte, "7bit") == 0 ||
             strcasecmp(pf->cte, "8bit") == 0 ||
             strcasecmp(pf->cte, "binary") == 0)
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
    media_type(pf->ctype, type, sizeof(type));
    char b[256];
    if (strncmp(type, "multipart/", 10) != 0) {
        add_leaf(m, pf, off, end - off, depth);
        return;
    }
    if (!param(pf->ctype, "boundary", b, sizeof(b)) || b[0] == '\0' ||
        depth >= MIME_MAX_DEPTH) {
        m->valid = false;
        add_leaf(m, pf, off, end - off, depth); /* taken as one blob */
        return;
    }
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
            size_t body = header_block(msg, pend, start, part_field, &sub, &bad);
            if (bad)
                m->valid = false;
            walk(m, msg, body, pend < body ? body : pend, &sub, depth + 1);
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
            any = true;
        }
    }
    if (!any)
        add_leaf(m, pf, off, end - off, depth);
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
        str_copy(pf.ctype, sizeof(pf.ctype), h->value);
    if ((h = mime_header_find(m, "Content-Disposition")) != NULL)
        str_copy(pf.disp, sizeof(pf.disp), h->value);
    if ((h = mime_header_find(m, "Content-Transfer-Encoding")) != NULL)
        str_copy(pf.cte, sizeof(pf.cte), h->value);
    walk(m, msg, body, len, &pf, 0);
}

void mime_free(struct mime_msg *m)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        free(m->headers[i].name);
        free(m->headers[i].value);
    }
    free(m->headers);
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

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
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
            int v = b64val((unsigned char)s[i]);
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
