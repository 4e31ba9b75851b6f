/*
 * dns_wire.c - DNS response packet parser (see dns_wire.h).
 *
 * The packet is untrusted input even from a validating resolver, so every
 * read is preceded by a length check against the packet, or against the
 * record's rdata for names and fields inside rdata: a name in MX rdata
 * that runs past rdlength refuses the packet, as do an A record that is
 * not 4 octets and rdata left over after a name. Rdata is interpreted
 * only for class IN; other classes are stepped over by rdlength.
 *
 * Name compression (RFC 1035 4.1.4) is where parsers loop or wander. A
 * pointer must point past the header and strictly before the start of
 * the run of labels it ends (the name's own start, or the previous
 * pointer's target), so offsets strictly decrease from jump to jump and
 * forward pointers and self-loops are refused. At most DNS_HOPS_MAX jumps
 * are followed per name, so a 64 KiB packet of names cannot cost more
 * than a few hundred steps each. Whatever the jumps, the name may not
 * exceed 255 octets in wire form nor any label 63.
 *
 * dns_wire_parse() walks the packet twice: once to validate it all, and
 * only then again to hand records to the callback, so a caller never
 * acts on part of a packet that turns out to be malformed.
 */
#include "delivery/dns_wire.h"

#include <assert.h>

#define DNS_HDR_LEN 12
#define DNS_RR_HDR_LEN 10     /* type, class, ttl, rdlength */
#define DNS_WIRE_NAME_MAX 255 /* RFC 1035 2.3.4, length octets included */
#define DNS_LABEL_MAX 63
/* A name has at most 127 labels, and a compressor ends a run of labels
 * with one pointer, so more jumps than that are hostile. */
#define DNS_HOPS_MAX 127
#define DNS_CLASS_IN 1

#define FLAG_QR 0x8000
#define FLAG_AA 0x0400
#define FLAG_TC 0x0200

struct wire {
    const uint8_t *p;
    size_t len;
};

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* --- names ---------------------------------------------------------------- */

/* Append one label to out at *o in presentation form: lower case, and
 * anything but [a-z0-9_-] escaped so the text is safe in logs and SMTP. */
static void label_put(const uint8_t *s, size_t n, char *out, size_t *o)
{
    if (*o > 0)
        out[(*o)++] = '.';
    for (size_t i = 0; i < n; i++) {
        unsigned c = s[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
            c == '_') {
            out[(*o)++] = (char)c;
        } else if (c == '.') {
            out[(*o)++] = '\\';
            out[(*o)++] = '.';
        } else {
            out[(*o)++] = '\\';
            out[(*o)++] = (char)('0' + c / 100);
            out[(*o)++] = (char)('0' + c / 10 % 10);
            out[(*o)++] = (char)('0' + c % 10);
        }
    }
    /* 255 wire octets cannot need more (see DNS_NAME_MAX). */
    assert(*o <= DNS_NAME_MAX);
}

/* Why a name ran out of room: its rdata, or the packet itself. */
static const char *overrun(const struct wire *w, size_t limit)
{
    return limit < w->len ? "name overruns rdlength"
                          : "packet ends inside a name";
}

/* Read the name at *pos, whose uncompressed start must end by `end`; on
 * success *pos moves past it. Writes the presentation form to out
 * (DNS_NAME_MAX + 1 bytes) unless out is NULL. Returns NULL or a reason. */
static const char *name_read(const struct wire *w, size_t *pos, size_t end,
                             char *out)
{
    size_t at = *pos, seg = at, limit = end, next = 0, wirelen = 1, o = 0;
    unsigned hops = 0;
    for (;;) {
        if (at >= limit)
            return overrun(w, limit);
        unsigned c = w->p[at];
        if (c == 0)
            break;
        if ((c & 0xC0) == 0xC0) {
            if (limit - at < 2)
                return overrun(w, limit);
            size_t target = (size_t)(c & 0x3F) << 8 | w->p[at + 1];
            if (hops == 0)
                next = at + 2;
            if (target < DNS_HDR_LEN || target >= seg)
                return "compression pointer does not point back";
            if (++hops > DNS_HOPS_MAX)
                return "too many compression pointers";
            at = seg = target;
            limit = w->len;
            continue;
        }
        if (c > DNS_LABEL_MAX) /* also the 0x40 and 0x80 label types */
            return "label longer than 63 octets";
        wirelen += 1 + c;
        if (wirelen > DNS_WIRE_NAME_MAX)
            return "name longer than 255 octets";
        if (c >= limit - at)
            return overrun(w, limit);
        if (out != NULL)
            label_put(w->p + at + 1, c, out, &o);
        at += 1 + c;
    }
    *pos = hops == 0 ? at + 1 : next;
    if (out != NULL)
        out[o] = '\0';
    return NULL;
}

/* A name that must fill the rest of its rdata exactly. */
static const char *name_exact(const struct wire *w, size_t rd, size_t end,
                              char *out)
{
    const char *why = name_read(w, &rd, end, out);
    if (why == NULL && rd != end)
        why = "rdata continues after the name";
    return why;
}

/* --- rdata, class IN ------------------------------------------------------ */

typedef const char *rdata_fn(const struct wire *w, size_t rd, size_t end,
                             struct dns_rr *rr);

static const char *rd_a(const struct wire *w, size_t rd, size_t end,
                        struct dns_rr *rr)
{
    if (end - rd != sizeof(rr->u.a))
        return "A rdata must be 4 octets";
    memcpy(rr->u.a, w->p + rd, sizeof(rr->u.a));
    return NULL;
}

static const char *rd_aaaa(const struct wire *w, size_t rd, size_t end,
                           struct dns_rr *rr)
{
    if (end - rd != sizeof(rr->u.aaaa))
        return "AAAA rdata must be 16 octets";
    memcpy(rr->u.aaaa, w->p + rd, sizeof(rr->u.aaaa));
    return NULL;
}

/* CNAME, NS, PTR: one name. */
static const char *rd_name(const struct wire *w, size_t rd, size_t end,
                           struct dns_rr *rr)
{
    return name_exact(w, rd, end, rr->u.name);
}

static const char *rd_mx(const struct wire *w, size_t rd, size_t end,
                         struct dns_rr *rr)
{
    if (end - rd < 3)
        return "MX rdata shorter than 3 octets";
    rr->u.mx.pref = get16(w->p + rd);
    return name_exact(w, rd + 2, end, rr->u.mx.host);
}

static const char *rd_soa(const struct wire *w, size_t rd, size_t end,
                          struct dns_rr *rr)
{
    const char *why = name_read(w, &rd, end, NULL); /* MNAME */
    if (why == NULL)
        why = name_read(w, &rd, end, NULL); /* RNAME */
    if (why != NULL)
        return why;
    if (end - rd != 20)
        return "SOA rdata must end with 20 octets of counters";
    const uint8_t *p = w->p + rd;
    rr->u.soa.serial = get32(p);
    rr->u.soa.refresh = get32(p + 4);
    rr->u.soa.retry = get32(p + 8);
    rr->u.soa.expire = get32(p + 12);
    rr->u.soa.minimum = get32(p + 16);
    return NULL;
}

static const char *rd_raw(const struct wire *w, size_t rd, size_t end,
                          struct dns_rr *rr)
{
    rr->u.raw.data = w->p + rd;
    rr->u.raw.len = end - rd;
    return NULL;
}

/* One or more character-strings filling the rdata (RFC 1035 3.3.14), so
 * later readers may trust each length octet. */
static const char *rd_txt(const struct wire *w, size_t rd, size_t end,
                          struct dns_rr *rr)
{
    if (rd == end)
        return "TXT rdata is empty";
    for (size_t at = rd; at < end; at += 1 + (size_t)w->p[at])
        if (w->p[at] >= end - at)
            return "TXT character-string overruns rdlength";
    return rd_raw(w, rd, end, rr);
}

static const char *rd_tlsa(const struct wire *w, size_t rd, size_t end,
                           struct dns_rr *rr)
{
    if (end - rd < 3)
        return "TLSA rdata shorter than 3 octets";
    rr->u.tlsa.usage = w->p[rd];
    rr->u.tlsa.selector = w->p[rd + 1];
    rr->u.tlsa.mtype = w->p[rd + 2];
    rr->u.tlsa.data = w->p + rd + 3;
    rr->u.tlsa.len = end - rd - 3;
    return NULL;
}

static const struct rdata_kind {
    uint16_t type;
    const char *name;
    rdata_fn *read;
} kinds[] = {
    {DNS_T_A, "A", rd_a},
    {DNS_T_NS, "NS", rd_name},
    {DNS_T_CNAME, "CNAME", rd_name},
    {DNS_T_SOA, "SOA", rd_soa},
    {DNS_T_PTR, "PTR", rd_name},
    {DNS_T_MX, "MX", rd_mx},
    {DNS_T_TXT, "TXT", rd_txt},
    {DNS_T_AAAA, "AAAA", rd_aaaa},
    {DNS_T_TLSA, "TLSA", rd_tlsa},
};

static const struct rdata_kind *kind_of(uint16_t type)
{
    for (size_t i = 0; i < ARRAY_LEN(kinds); i++)
        if (kinds[i].type == type)
            return &kinds[i];
    return NULL;
}

/* --- records and sections ------------------------------------------------- */

/* Where a record's parts lie, for the caller and for error messages. */
struct rr_loc {
    bool head; /* the fixed fields were read */
    uint16_t class;
    size_t rdlen;
};

/* Read the record at *pos into rr and move past it. */
static const char *rr_read(const struct wire *w, size_t *pos, struct dns_rr *rr,
                           struct rr_loc *loc)
{
    loc->head = false;
    const char *why = name_read(w, pos, w->len, rr->owner);
    if (why != NULL)
        return why;
    if (w->len - *pos < DNS_RR_HDR_LEN)
        return "packet ends inside a record header";
    const uint8_t *h = w->p + *pos;
    rr->type = get16(h);
    loc->class = get16(h + 2);
    rr->ttl = get32(h + 4);
    if (rr->ttl > INT32_MAX) /* RFC 2181 8: read as zero */
        rr->ttl = 0;
    loc->rdlen = get16(h + 8);
    loc->head = true;
    *pos += DNS_RR_HDR_LEN;
    if (w->len - *pos < loc->rdlen)
        return "rdata runs past the end of the packet";
    size_t rd = *pos;
    *pos += loc->rdlen;
    if (loc->class != DNS_CLASS_IN)
        return NULL;
    const struct rdata_kind *k = kind_of(rr->type);
    return (k != NULL ? k->read : rd_raw)(w, rd, *pos, rr);
}

/* One walk over the packet; see dns_wire_parse. */
struct walk {
    struct wire w;
    struct dns_msg_info *info;
    dns_rr_fn fn; /* NULL on the validating walk */
    void *arg;
    char *err;
    size_t errlen;
    struct dns_rr rr; /* ~2 KiB: kept here, not per call */
};

/* Write a reason to err and return -1. A cut-off reason is still a
 * reason, so truncation is not checked. */
static int fail(struct walk *k, const char *fmt, ...) MOAT_PRINTF(2, 3);
static int fail(struct walk *k, const char *fmt, ...)
{
    if (k->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(k->err, k->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int rr_fail(struct walk *k, const char *section, unsigned i,
                   const struct rr_loc *loc, const char *why)
{
    if (!loc->head)
        return fail(k, "%s record %u: %s", section, i, why);
    const struct rdata_kind *kind = kind_of(k->rr.type);
    if (kind != NULL)
        return fail(k, "%s record %u (%s, rdlength %zu): %s", section, i,
                    kind->name, loc->rdlen, why);
    return fail(k, "%s record %u (TYPE%u, rdlength %zu): %s", section, i,
                (unsigned)k->rr.type, loc->rdlen, why);
}

static int header_read(struct walk *k)
{
    if (k->w.len < DNS_HDR_LEN)
        return fail(k, "packet shorter than a DNS header (%zu octets)",
                    k->w.len);
    const uint8_t *p = k->w.p;
    struct dns_msg_info *info = k->info;
    memset(info, 0, sizeof(*info));
    info->id = get16(p);
    info->flags = get16(p + 2);
    info->rcode = info->flags & 0xF;
    info->aa = (info->flags & FLAG_AA) != 0;
    info->tc = (info->flags & FLAG_TC) != 0;
    info->qdcount = get16(p + 4);
    info->ancount = get16(p + 6);
    info->nscount = get16(p + 8);
    info->arcount = get16(p + 10);
    if (!(info->flags & FLAG_QR))
        return fail(k, "not a response (QR clear)");
    if ((info->flags >> 11 & 0xF) != 0)
        return fail(k, "opcode %u is not QUERY", info->flags >> 11 & 0xF);
    return 0;
}

static int question_skip(struct walk *k, size_t *pos)
{
    for (unsigned i = 1; i <= k->info->qdcount; i++) {
        const char *why = name_read(&k->w, pos, k->w.len, NULL);
        if (why == NULL && k->w.len - *pos < 4)
            why = "packet ends inside the question";
        if (why != NULL)
            return fail(k, "question %u: %s", i, why);
        *pos += 4; /* QTYPE, QCLASS */
    }
    return 0;
}

/* Read the answer section, handing class IN records to fn. Returns 0,
 * 1 if fn asked to stop, or -1. */
static int answer_read(struct walk *k, size_t *pos)
{
    for (unsigned i = 1; i <= k->info->ancount; i++) {
        struct rr_loc loc;
        const char *why = rr_read(&k->w, pos, &k->rr, &loc);
        if (why != NULL)
            return rr_fail(k, "answer", i, &loc, why);
        if (loc.class == DNS_CLASS_IN && k->fn != NULL &&
            !k->fn(k->arg, &k->rr))
            return 1;
    }
    return 0;
}

/* Read the authority section, noting the first IN SOA's negative TTL. */
static int authority_read(struct walk *k, size_t *pos)
{
    for (unsigned i = 1; i <= k->info->nscount; i++) {
        struct rr_loc loc;
        const char *why = rr_read(&k->w, pos, &k->rr, &loc);
        if (why != NULL)
            return rr_fail(k, "authority", i, &loc, why);
        if (loc.class == DNS_CLASS_IN && k->rr.type == DNS_T_SOA &&
            !k->info->has_soa) {
            k->info->has_soa = true;
            k->info->neg_ttl = k->rr.ttl < k->rr.u.soa.minimum
                                   ? k->rr.ttl
                                   : k->rr.u.soa.minimum;
        }
    }
    return 0;
}

static int walk(struct walk *k)
{
    size_t pos = DNS_HDR_LEN;
    int r;
    if (header_read(k) < 0 || question_skip(k, &pos) < 0)
        return -1;
    if ((r = answer_read(k, &pos)) != 0)
        return r;
    return authority_read(k, &pos);
}

int dns_wire_parse(const uint8_t *pkt, size_t len, struct dns_msg_info *info,
                   dns_rr_fn fn, void *arg, char *err, size_t errlen)
{
    struct dns_msg_info scratch;
    struct walk k = {
        .w = {.p = pkt, .len = pkt != NULL ? len : 0},
        .info = info != NULL ? info : &scratch,
        .err = err,
        .errlen = err != NULL ? errlen : 0,
    };
    if (k.errlen > 0)
        err[0] = '\0';
    if (walk(&k) < 0)
        return -1;
    if (fn == NULL)
        return 0;
    /* The second walk may stop early; keep the first walk's info. */
    struct dns_msg_info again;
    k.info = &again;
    k.fn = fn;
    k.arg = arg;
    int r = walk(&k);
    assert(r >= 0); /* the same bytes were valid a moment ago */
    (void)r;
    return 0;
}

/* --- MX collection -------------------------------------------------------- */

struct mx_set {
    struct dns_mx *mx;
    size_t cap, n;
};

/* Insert an MX after those of lower or equal preference (so the sort is
 * stable); when full, the least preferred falls off the end. */
static bool mx_take(void *arg, const struct dns_rr *rr)
{
    struct mx_set *s = arg;
    if (rr->type != DNS_T_MX)
        return true;
    size_t i = s->n;
    while (i > 0 && s->mx[i - 1].pref > rr->u.mx.pref)
        i--;
    if (i == s->cap)
        return true;
    size_t last = s->n < s->cap ? s->n : s->cap - 1;
    memmove(&s->mx[i + 1], &s->mx[i], (last - i) * sizeof(*s->mx));
    s->mx[i].pref = rr->u.mx.pref;
    memcpy(s->mx[i].host, rr->u.mx.host, strlen(rr->u.mx.host) + 1);
    if (s->n < s->cap)
        s->n++;
    return true;
}

int dns_wire_mx(const uint8_t *pkt, size_t len, struct dns_msg_info *info,
                struct dns_mx *mx, size_t cap, size_t *n, char *err,
                size_t errlen)
{
    struct mx_set s = {.mx = mx, .cap = cap, .n = 0};
    int r = dns_wire_parse(pkt, len, info, mx_take, &s, err, errlen);
    *n = r == 0 ? s.n : 0;
    return r;
}
