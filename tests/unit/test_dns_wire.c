/*
 * test_dns_wire.c - the DNS response parser against hand-built packets:
 * each record type moat reads (A, AAAA, MX, CNAME chains, null MX, TLSA,
 * TXT, SOA in authority), response codes, name compression (valid,
 * forward, self-looping, out of range, too many hops), label and name
 * length limits, escaping of odd bytes, rdlength mismatches, and every
 * truncation of every valid packet. Each packet is parsed from a heap
 * copy of exactly its length, so ASan sees any read past the end.
 */
#include "delivery/dns_wire.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdlib.h>

/* --- packet builder ------------------------------------------------------- */

#define QNAME_OFF 12      /* the question name follows the header */
#define EXAMPLE_ANSWER 29 /* first answer after the question example.com */
#define RESP 0x8180       /* QR, RD, RA */

struct pkt {
    uint8_t b[8192];
    size_t len;
};

static void put(struct pkt *p, const void *s, size_t n)
{
    assert_true(p->len + n <= sizeof(p->b));
    memcpy(p->b + p->len, s, n);
    p->len += n;
}

static void put8(struct pkt *p, unsigned v)
{
    uint8_t c = (uint8_t)v;
    put(p, &c, 1);
}

static void put16(struct pkt *p, unsigned v)
{
    put8(p, v >> 8);
    put8(p, v & 0xFF);
}

static void put32(struct pkt *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p, v & 0xFFFF);
}

/* The labels of a dotted name ("" is the root), uncompressed. */
static void put_labels(struct pkt *p, const char *name)
{
    while (*name != '\0') {
        const char *dot = strchr(name, '.');
        size_t n = dot != NULL ? (size_t)(dot - name) : strlen(name);
        put8(p, (unsigned)n);
        put(p, name, n);
        name += n + (dot != NULL);
    }
}

static void put_name(struct pkt *p, const char *name)
{
    put_labels(p, name);
    put8(p, 0);
}

/* Labels, then a compression pointer to `off` for the rest. */
static void put_name_ptr(struct pkt *p, const char *labels, unsigned off)
{
    put_labels(p, labels);
    put16(p, 0xC000 | off);
}

static void put_header(struct pkt *p, unsigned flags, unsigned qd, unsigned an,
                       unsigned ns, unsigned ar)
{
    p->len = 0;
    put16(p, 0x1234);
    put16(p, flags);
    put16(p, qd);
    put16(p, an);
    put16(p, ns);
    put16(p, ar);
}

/* Header and one question; the question name lies at QNAME_OFF. */
static void query(struct pkt *p, unsigned flags, const char *qname,
                  unsigned qtype, unsigned an, unsigned ns)
{
    put_header(p, flags, 1, an, ns, 0);
    put_name(p, qname);
    put16(p, qtype);
    put16(p, 1);
}

/* Fixed record fields after the owner; returns where rdlength sits. */
static size_t rr_start(struct pkt *p, unsigned type, unsigned class,
                       uint32_t ttl)
{
    put16(p, type);
    put16(p, class);
    put32(p, ttl);
    size_t at = p->len;
    put16(p, 0);
    return at;
}

static void rr_end(struct pkt *p, size_t at)
{
    size_t n = p->len - at - 2;
    p->b[at] = (uint8_t)(n >> 8);
    p->b[at + 1] = (uint8_t)n;
}

/* --- running the parser --------------------------------------------------- */

#define GOT_MAX 8

struct got {
    int rc;
    struct dns_msg_info info;
    char err[256];
    size_t n, stop_after; /* stop_after 0: never stop */
    struct dns_rr rr[GOT_MAX];
    uint8_t *copy; /* the parsed bytes; rr data points here */
};

static bool collect(void *arg, const struct dns_rr *rr)
{
    struct got *g = arg;
    assert_true(g->n < GOT_MAX);
    g->rr[g->n++] = *rr;
    return g->stop_after == 0 || g->n < g->stop_after;
}

/* A heap copy of exactly len bytes, so ASan catches reads past the end. */
static uint8_t *exact_copy(const uint8_t *b, size_t len)
{
    uint8_t *c = xmalloc(len ? len : 1);
    memcpy(c, b, len);
    return c;
}

static struct got *run_len(const struct pkt *p, size_t len, size_t stop)
{
    struct got *g = xcalloc(1, sizeof(*g));
    g->stop_after = stop;
    g->copy = exact_copy(p->b, len);
    g->rc = dns_wire_parse(g->copy, len, &g->info, collect, g, g->err,
                           sizeof(g->err));
    if (g->rc == 0)
        assert_string_equal(g->err, "");
    else {
        assert_int_equal(g->rc, -1);
        assert_int_equal(g->n, 0); /* no record from a refused packet */
        assert_true(g->err[0] != '\0');
    }
    return g;
}

static struct got *run(const struct pkt *p)
{
    return run_len(p, p->len, 0);
}

static void got_free(struct got *g)
{
    free(g->copy);
    free(g);
}

/* --- valid packets, one builder each (reused by the truncation test) ---- */

static void build_a(struct pkt *p)
{
    query(p, RESP | 0x0400, "A.Example.COM", DNS_T_A, 1, 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_A, 1, 300);
    put(p, "\xc0\x00\x02\x01", 4);
    rr_end(p, at);
}

/* The owner written out in full, so a cut can fall inside its labels. */
static void build_aaaa(struct pkt *p)
{
    query(p, RESP, "example.com", DNS_T_AAAA, 1, 0);
    put_name(p, "example.com");
    size_t at = rr_start(p, DNS_T_AAAA, 1, 60);
    put(p, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16);
    rr_end(p, at);
}

/* A CNAME to a domain whose MXs come out of preference order. */
static void build_mx(struct pkt *p)
{
    static const struct {
        unsigned pref;
        const char *host;
    } mx[] = {{20, "mx3"}, {10, "mx1"}, {30, "mx4"}, {10, "mx2"}};
    query(p, RESP, "example.com", DNS_T_MX, 1 + ARRAY_LEN(mx), 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_CNAME, 1, 300);
    size_t target = p->len;
    put_name_ptr(p, "mail", QNAME_OFF);
    rr_end(p, at);
    for (size_t i = 0; i < ARRAY_LEN(mx); i++) {
        put_name_ptr(p, "", (unsigned)target);
        at = rr_start(p, DNS_T_MX, 1, 3600);
        put16(p, mx[i].pref);
        put_name_ptr(p, mx[i].host, QNAME_OFF);
        rr_end(p, at);
    }
}

/* www.example.com -> a.example.net -> b.example.net -> A. */
static void build_cname(struct pkt *p)
{
    query(p, RESP, "www.example.com", DNS_T_A, 3, 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_CNAME, 1, 100);
    size_t a = p->len;
    put_name(p, "a.example.net");
    rr_end(p, at);
    put_name_ptr(p, "", (unsigned)a);
    at = rr_start(p, DNS_T_CNAME, 1, 200);
    size_t b = p->len;
    put_name_ptr(p, "b", (unsigned)a + 2); /* b + example.net */
    rr_end(p, at);
    put_name_ptr(p, "", (unsigned)b);
    at = rr_start(p, DNS_T_A, 1, 300);
    put(p, "\xc6\x33\x64\x07", 4);
    rr_end(p, at);
}

static void build_null_mx(struct pkt *p)
{
    query(p, RESP, "example.com", DNS_T_MX, 1, 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_MX, 1, 3600);
    put16(p, 0);
    put8(p, 0);
    rr_end(p, at);
}

/* NXDOMAIN with the zone's SOA (MINIMUM 300) in authority. */
static void build_nxdomain_ttl(struct pkt *p, uint32_t ttl)
{
    query(p, RESP | DNS_R_NXDOMAIN, "nope.example.com", DNS_T_MX, 0, 1);
    put_name_ptr(p, "", QNAME_OFF + 5); /* example.com */
    size_t at = rr_start(p, DNS_T_SOA, 1, ttl);
    put_name_ptr(p, "ns1", QNAME_OFF + 5);
    put_name_ptr(p, "hostmaster", QNAME_OFF + 5);
    put32(p, 2024010101);
    put32(p, 7200);
    put32(p, 900);
    put32(p, 1209600);
    put32(p, 300);
    rr_end(p, at);
}

static void build_nxdomain(struct pkt *p)
{
    build_nxdomain_ttl(p, 3600);
}

/* SERVFAIL: the question alone, so a cut can fall in its QCLASS. */
static void build_servfail(struct pkt *p)
{
    query(p, RESP | DNS_R_SERVFAIL, "example.com", DNS_T_MX, 0, 0);
}

static const uint8_t tlsa_hash[32] = {
    0x8c, 0xc3, 0x4e, 0x11, 0xc1, 0x67, 0x04, 0x58, 0x24, 0xad, 0xe4,
    0xd4, 0x8f, 0x0c, 0x13, 0x90, 0x51, 0x5e, 0xe0, 0x6e, 0x3e, 0x9b,
    0x4e, 0x1f, 0xdb, 0x5e, 0x9b, 0x59, 0x60, 0x2d, 0x7a, 0x01};

static void build_tlsa(struct pkt *p)
{
    query(p, RESP, "_25._tcp.mx1.example.com", DNS_T_TLSA, 1, 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_TLSA, 1, 600);
    put8(p, 3);
    put8(p, 1);
    put8(p, 1);
    put(p, tlsa_hash, sizeof(tlsa_hash));
    rr_end(p, at);
}

static void build_txt(struct pkt *p)
{
    query(p, RESP, "example.com", DNS_T_TXT, 1, 0);
    put_name_ptr(p, "", QNAME_OFF);
    size_t at = rr_start(p, DNS_T_TXT, 1, 600);
    put(p, "\x06v=spf1\x04-all\x00", 13);
    rr_end(p, at);
}

static const struct {
    const char *label;
    void (*build)(struct pkt *p);
} valid_packets[] = {
    {"A", build_a},
    {"AAAA", build_aaaa},
    {"MX behind CNAME", build_mx},
    {"CNAME chain", build_cname},
    {"null MX", build_null_mx},
    {"NXDOMAIN with SOA", build_nxdomain},
    {"SERVFAIL, question only", build_servfail},
    {"TLSA", build_tlsa},
    {"TXT", build_txt},
};

/* --- record types --------------------------------------------------------- */

static void test_a(void **state)
{
    (void)state;
    struct pkt p;
    build_a(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->info.id, 0x1234);
    assert_int_equal(g->info.flags, 0x8580);
    assert_int_equal(g->info.rcode, DNS_R_NOERROR);
    assert_true(g->info.aa);
    assert_false(g->info.tc);
    assert_int_equal(g->info.qdcount, 1);
    assert_int_equal(g->info.ancount, 1);
    assert_false(g->info.has_soa);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->rr[0].type, DNS_T_A);
    assert_int_equal(g->rr[0].ttl, 300);
    assert_string_equal(g->rr[0].owner, "a.example.com");
    assert_memory_equal(g->rr[0].u.a, "\xc0\x00\x02\x01", 4);
    got_free(g);
}

static void test_aaaa(void **state)
{
    (void)state;
    struct pkt p;
    build_aaaa(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->rr[0].type, DNS_T_AAAA);
    assert_memory_equal(g->rr[0].u.aaaa,
                        "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16);
    got_free(g);
}

static void test_cname_chain(void **state)
{
    (void)state;
    struct pkt p;
    build_cname(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 3);
    assert_int_equal(g->rr[0].type, DNS_T_CNAME);
    assert_string_equal(g->rr[0].owner, "www.example.com");
    assert_string_equal(g->rr[0].u.name, "a.example.net");
    assert_int_equal(g->rr[1].type, DNS_T_CNAME);
    assert_string_equal(g->rr[1].owner, "a.example.net");
    assert_string_equal(g->rr[1].u.name, "b.example.net");
    assert_int_equal(g->rr[2].type, DNS_T_A);
    assert_string_equal(g->rr[2].owner, "b.example.net");
    assert_int_equal(g->rr[2].ttl, 300);
    got_free(g);
}

static void test_mx_records(void **state)
{
    (void)state;
    struct pkt p;
    build_mx(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 5);
    assert_string_equal(g->rr[0].u.name, "mail.example.com");
    assert_int_equal(g->rr[1].type, DNS_T_MX);
    assert_string_equal(g->rr[1].owner, "mail.example.com");
    assert_int_equal(g->rr[1].u.mx.pref, 20);
    assert_string_equal(g->rr[1].u.mx.host, "mx3.example.com");
    got_free(g);
}

/* dns_wire_mx: sorted by preference, ties in packet order, the least
 * preferred dropped when the array is full. */
static void test_mx_collect(void **state)
{
    (void)state;
    static const struct {
        size_t cap;
        const char *want; /* "pref host" joined by ", " */
    } cases[] = {
        {8, "10 mx1, 10 mx2, 20 mx3, 30 mx4"},
        {4, "10 mx1, 10 mx2, 20 mx3, 30 mx4"},
        {3, "10 mx1, 10 mx2, 20 mx3"},
        {2, "10 mx1, 10 mx2"},
        {1, "10 mx1"},
        {0, ""},
    };
    struct pkt p;
    build_mx(&p);
    struct dns_mx mx[8];
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# mx cap %zu\n", cases[i].cap);
        size_t n = 99;
        char err[128];
        struct dns_msg_info info;
        assert_int_equal(dns_wire_mx(p.b, p.len, &info, mx, cases[i].cap, &n,
                                     err, sizeof(err)),
                         0);
        assert_int_equal(info.ancount, 5);
        char text[256] = "";
        size_t o = 0;
        for (size_t j = 0; j < n; j++) {
            char host[8];
            assert_true(str_printf(host, sizeof(host), "%.3s", mx[j].host));
            assert_string_equal(mx[j].host + 3, ".example.com");
            int w = snprintf(text + o, sizeof(text) - o, "%s%u %s",
                             j ? ", " : "", (unsigned)mx[j].pref, host);
            assert_true(w > 0 && (size_t)w < sizeof(text) - o);
            o += (size_t)w;
        }
        assert_string_equal(text, cases[i].want);
    }
}

static void test_null_mx(void **state)
{
    (void)state;
    struct pkt p;
    build_null_mx(&p);
    struct dns_mx mx[4];
    size_t n = 0;
    char err[128];
    assert_int_equal(dns_wire_mx(p.b, p.len, NULL, mx, 4, &n, err, sizeof(err)),
                     0);
    assert_int_equal(n, 1);
    assert_int_equal(mx[0].pref, 0);
    assert_string_equal(mx[0].host, "");
}

static void test_nxdomain(void **state)
{
    (void)state;
    struct pkt p;
    build_nxdomain(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->info.rcode, DNS_R_NXDOMAIN);
    assert_int_equal(g->info.ancount, 0);
    assert_int_equal(g->info.nscount, 1);
    assert_int_equal(g->n, 0);
    assert_true(g->info.has_soa);
    assert_int_equal(g->info.neg_ttl, 300); /* MINIMUM < TTL */
    got_free(g);

    /* TTL below MINIMUM: the TTL wins (RFC 2308 5). */
    build_nxdomain_ttl(&p, 60);
    g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->info.neg_ttl, 60);
    got_free(g);

    /* A second SOA (TTL 10) does not replace the first. */
    build_nxdomain(&p);
    p.b[9] = 2; /* NSCOUNT */
    put_name_ptr(&p, "", QNAME_OFF + 5);
    size_t at = rr_start(&p, DNS_T_SOA, 1, 10);
    put(&p, "\0\0\0\0\0\1\0\0\0\2\0\0\0\3\0\0\0\4\0\0\0\5", 22);
    rr_end(&p, at);
    g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->info.nscount, 2);
    assert_int_equal(g->info.neg_ttl, 300);
    got_free(g);
}

static void test_tlsa(void **state)
{
    (void)state;
    struct pkt p;
    build_tlsa(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 1);
    const struct dns_rr *rr = &g->rr[0];
    assert_int_equal(rr->type, DNS_T_TLSA);
    assert_string_equal(rr->owner, "_25._tcp.mx1.example.com");
    assert_int_equal(rr->u.tlsa.usage, 3);
    assert_int_equal(rr->u.tlsa.selector, 1);
    assert_int_equal(rr->u.tlsa.mtype, 1);
    assert_int_equal(rr->u.tlsa.len, sizeof(tlsa_hash));
    assert_memory_equal(rr->u.tlsa.data, tlsa_hash, sizeof(tlsa_hash));
    got_free(g);
}

static void test_txt(void **state)
{
    (void)state;
    struct pkt p;
    build_txt(&p);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->rr[0].type, DNS_T_TXT);
    assert_int_equal(g->rr[0].u.raw.len, 13);
    assert_memory_equal(g->rr[0].u.raw.data, "\x06v=spf1\x04-all\x00", 13);
    got_free(g);
}

/* Records of other classes are checked for bounds only and not passed
 * on; unknown types come as raw rdata; a TTL with the top bit reads 0. */
static void test_class_type_ttl(void **state)
{
    (void)state;
    struct pkt p;
    query(&p, RESP, "example.com", DNS_T_A, 2, 0);
    put_name_ptr(&p, "", QNAME_OFF);
    size_t at = rr_start(&p, DNS_T_A, 3 /* CH */, 0);
    put(&p, "whatever", 8); /* not 4 octets, but not IN either */
    rr_end(&p, at);
    put_name_ptr(&p, "", QNAME_OFF);
    at = rr_start(&p, 99 /* SPF */, 1, 0x80000000u);
    put(&p, "\x03xyz", 4);
    rr_end(&p, at);
    struct got *g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->rr[0].type, 99);
    assert_int_equal(g->rr[0].ttl, 0);
    assert_int_equal(g->rr[0].u.raw.len, 4);
    assert_memory_equal(g->rr[0].u.raw.data, "\x03xyz", 4);
    got_free(g);
}

/* The callback's false stops the walk; info still covers the packet. */
static void test_stop(void **state)
{
    (void)state;
    struct pkt p;
    build_cname(&p);
    struct got *g = run_len(&p, p.len, 1);
    assert_int_equal(g->rc, 0);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->info.ancount, 3);
    got_free(g);

    build_nxdomain(&p); /* no answers: the SOA note survives the 2nd walk */
    g = run_len(&p, p.len, 1);
    assert_true(g->info.has_soa);
    got_free(g);

    /* NULL callback and info: validation only. */
    char err[64];
    assert_int_equal(
        dns_wire_parse(p.b, p.len, NULL, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(dns_wire_parse(p.b, 5, NULL, NULL, NULL, NULL, 0), -1);
    assert_int_equal(
        dns_wire_parse(NULL, 0, NULL, NULL, NULL, err, sizeof(err)), -1);
}

/* --- header ----------------------------------------------------------- */

static void test_header(void **state)
{
    (void)state;
    struct pkt p;
    build_a(&p);
    struct got *g = run_len(&p, 11, 0);
    assert_string_equal(g->err, "packet shorter than a DNS header (11 octets)");
    got_free(g);

    build_a(&p);
    p.b[2] &= 0x7F; /* QR clear */
    g = run(&p);
    assert_string_equal(g->err, "not a response (QR clear)");
    got_free(g);

    build_a(&p);
    p.b[2] |= 2 << 3; /* opcode STATUS */
    g = run(&p);
    assert_string_equal(g->err, "opcode 2 is not QUERY");
    got_free(g);

    build_a(&p);
    p.b[2] |= 0x02; /* TC */
    p.b[3] |= DNS_R_SERVFAIL;
    g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_true(g->info.tc);
    assert_int_equal(g->info.rcode, DNS_R_SERVFAIL);
    got_free(g);
}

/* --- names: compression --------------------------------------------------- */

struct name_case {
    const char *label;
    uint8_t owner[8]; /* the answer's owner name, at EXAMPLE_ANSWER */
    size_t len;
    const char *want; /* the owner, or the error */
    bool ok;
};

#define NOT_BACK "answer record 1: compression pointer does not point back"
#define TOO_LONG "answer record 1: label longer than 63 octets"

static const struct name_case ptr_cases[] = {
    {"pointer to qname", {0xC0, 12}, 2, "example.com", true},
    {"pointer to qname suffix", {0xC0, 20}, 2, "com", true},
    {"label then pointer", {1, 'a', 0xC0, 12}, 4, "a.example.com", true},
    {"pointer to root label", {0xC0, 24}, 2, "", true},
    {"root", {0}, 1, "", true},
    {"pointer to itself", {0xC0, EXAMPLE_ANSWER}, 2, NOT_BACK, false},
    {"label, pointer to itself", {1, 'a', 0xC0, 29}, 4, NOT_BACK, false},
    {"forward pointer", {0xC0, 40}, 2, NOT_BACK, false},
    {"pointer out of range", {0xFF, 0xFF}, 2, NOT_BACK, false},
    {"pointer into header", {0xC0, 5}, 2, NOT_BACK, false},
    {"pointer mid-label ('x')", {0xC0, 14}, 2, TOO_LONG, false},
    {"label type 0x40", {0x41, 'a'}, 2, TOO_LONG, false},
    {"label type 0x80", {0x81, 'a'}, 2, TOO_LONG, false},
};

static void test_compression(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(ptr_cases); i++) {
        const struct name_case *t = &ptr_cases[i];
        print_message("# name: %s\n", t->label);
        struct pkt p;
        query(&p, RESP, "example.com", DNS_T_A, 1, 0);
        assert_int_equal(p.len, EXAMPLE_ANSWER);
        put(&p, t->owner, t->len);
        size_t at = rr_start(&p, DNS_T_A, 1, 1);
        put(&p, "\x7f\0\0\x01", 4);
        rr_end(&p, at);
        struct got *g = run(&p);
        if (t->ok) {
            assert_int_equal(g->rc, 0);
            assert_string_equal(g->rr[0].owner, t->want);
        } else
            assert_string_equal(g->err, t->want);
        got_free(g);
    }
}

/* A pointer may land anywhere earlier, even in rdata; the labels found
 * there are still held to the packet's end. The first record's rdata
 * (at 41) starts with a label length: 1 makes a name ("x"), 20 a label
 * ending one octet past the packet. */
static void test_pointer_into_rdata(void **state)
{
    (void)state;
    static const struct {
        uint8_t first;
        const char *want;
    } cases[] = {
        {1, NULL},
        {20, "answer record 2: packet ends inside a name"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct pkt p;
        query(&p, RESP, "example.com", DNS_T_A, 2, 0);
        put_name_ptr(&p, "", QNAME_OFF);
        size_t at = rr_start(&p, DNS_T_A, 1, 1);
        assert_int_equal(p.len, 41);
        put8(&p, cases[i].first);
        put(&p, "x\0\0", 3);
        rr_end(&p, at);
        put_name_ptr(&p, "", 41);
        at = rr_start(&p, DNS_T_A, 1, 1);
        put(&p, "\1\2\3\4", 4);
        rr_end(&p, at);
        assert_int_equal(p.len, 61);
        struct got *g = run(&p);
        if (cases[i].want == NULL) {
            assert_int_equal(g->rc, 0);
            assert_string_equal(g->rr[1].owner, "x");
        } else
            assert_string_equal(g->err, cases[i].want);
        got_free(g);
    }
}

/* A question pointing at itself is refused like an answer. */
static void test_question_pointer(void **state)
{
    (void)state;
    struct pkt p;
    put_header(&p, RESP, 1, 0, 0, 0);
    put16(&p, 0xC000 | QNAME_OFF);
    put32(&p, 0x00010001);
    struct got *g = run(&p);
    assert_string_equal(g->err,
                        "question 1: compression pointer does not point back");
    got_free(g);
}

/* Question k points at question k-1, so reading it takes k-1 jumps:
 * 127 jumps are followed, the 128th is refused. */
static void test_pointer_hops(void **state)
{
    (void)state;
    for (unsigned qd = 128; qd <= 129; qd++) {
        struct pkt p;
        put_header(&p, RESP, qd, 0, 0, 0);
        size_t prev = p.len;
        put_name(&p, "");
        put32(&p, 0x00010001);
        for (unsigned k = 2; k <= qd; k++) {
            size_t here = p.len;
            put16(&p, 0xC000 | (unsigned)prev);
            put32(&p, 0x00010001);
            prev = here;
        }
        struct got *g = run(&p);
        if (qd == 128)
            assert_int_equal(g->rc, 0);
        else
            assert_string_equal(g->err,
                                "question 129: too many compression pointers");
        got_free(g);
    }
}

/* --- names: lengths and escaping ------------------------------------------ */

/* An answer whose owner is the given raw labels (each {len, bytes}). */
static struct got *owner_of(const uint8_t *const *labels, size_t n)
{
    struct pkt p;
    query(&p, RESP, "", DNS_T_A, 1, 0);
    for (size_t i = 0; i < n; i++)
        put(&p, labels[i], 1 + (size_t)labels[i][0]);
    put8(&p, 0);
    size_t at = rr_start(&p, DNS_T_A, 1, 1);
    put(&p, "\x7f\0\0\x01", 4);
    rr_end(&p, at);
    return run(&p);
}

/* A label of n copies of c, length octet first, in buf (>= 64 bytes). */
static const uint8_t *label_of(uint8_t *buf, size_t n, uint8_t c)
{
    buf[0] = (uint8_t)n;
    memset(buf + 1, c, n);
    return buf;
}

static void test_label_length(void **state)
{
    (void)state;
    uint8_t b[1 + 64];
    const uint8_t *l[1] = {label_of(b, 63, 'a')};
    struct got *g = owner_of(l, 1);
    assert_int_equal(g->rc, 0);
    assert_int_equal(strlen(g->rr[0].owner), 63);
    got_free(g);

    label_of(b, 64, 'a');
    g = owner_of(l, 1);
    assert_string_equal(g->err, "answer record 1: label longer than 63 octets");
    got_free(g);
}

/* 63+63+63+61 label octets and 4 length octets and the root: 255. */
static void test_name_length(void **state)
{
    (void)state;
    uint8_t b[4][1 + 64];
    const uint8_t *l[4] = {label_of(b[0], 63, 'a'), label_of(b[1], 63, 'b'),
                           label_of(b[2], 63, 'c'), label_of(b[3], 61, 'd')};
    struct got *g = owner_of(l, 4);
    assert_int_equal(g->rc, 0);
    assert_int_equal(strlen(g->rr[0].owner), 253);
    got_free(g);

    label_of(b[3], 62, 'd');
    g = owner_of(l, 4);
    assert_string_equal(g->err, "answer record 1: name longer than 255 octets");
    got_free(g);

    /* The same limit holds across a compression pointer. */
    struct pkt p;
    put_header(&p, RESP, 1, 1, 0, 0);
    for (size_t i = 0; i < 3; i++)
        put(&p, l[i], 1 + (size_t)l[i][0]);
    put_name(&p, "");
    put32(&p, 0x00010001);
    put(&p, label_of(b[3], 62, 'd'), 63);
    put16(&p, 0xC000 | QNAME_OFF);
    size_t at = rr_start(&p, DNS_T_A, 1, 1);
    put(&p, "\x7f\0\0\x01", 4);
    rr_end(&p, at);
    g = run(&p);
    assert_string_equal(g->err, "answer record 1: name longer than 255 octets");
    got_free(g);
}

static void test_escaping(void **state)
{
    (void)state;
    static const uint8_t odd[] = {14,   'A', '.', 'b', ' ', 'c', 0,   0xFF,
                                  '\\', '_', 'x', '-', 'Y', '9', '\r'};
    static const uint8_t ex[] = {2, 'E', 'x'};
    const uint8_t *l[2] = {odd, ex};
    struct got *g = owner_of(l, 2);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->rr[0].owner,
                        "a\\.b\\032c\\000\\255\\092_x-y9\\013.ex");
    got_free(g);

    /* The longest presentation form fits the buffers exactly. */
    uint8_t b[4][1 + 64];
    const uint8_t *m[4] = {label_of(b[0], 63, '*'), label_of(b[1], 63, 1),
                           label_of(b[2], 63, 0xFF), label_of(b[3], 61, ' ')};
    g = owner_of(m, 4);
    assert_int_equal(g->rc, 0);
    assert_int_equal(strlen(g->rr[0].owner), DNS_NAME_MAX);
    assert_memory_equal(g->rr[0].owner, "\\042\\042", 8);
    got_free(g);

    /* Names inside rdata are escaped too. */
    struct pkt p;
    query(&p, RESP, "example.com", DNS_T_MX, 1, 0);
    put_name_ptr(&p, "", QNAME_OFF);
    size_t at = rr_start(&p, DNS_T_MX, 1, 1);
    put16(&p, 10);
    put(&p, "\x0emx\r\nRCPT TO:<x", 15);
    put_name_ptr(&p, "", QNAME_OFF);
    rr_end(&p, at);
    g = run(&p);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->rr[0].u.mx.host,
                        "mx\\013\\010rcpt\\032to\\058\\060x.example.com");
    got_free(g);
}

/* --- rdata that does not fit its type ---------------------------------- */

struct rdata_case {
    const char *label;
    unsigned type;
    const char *bytes; /* rdata, maybe followed by bytes past rdlength */
    size_t nbytes;
    unsigned rdlen;
    const char *err; /* NULL: valid */
};

#define RD(s) s, sizeof(s) - 1

static const struct rdata_case rdata_cases[] = {
    {"A 4", DNS_T_A, RD("\1\2\3\4"), 4, NULL},
    {"A 5", DNS_T_A, RD("\1\2\3\4\5"), 5,
     "answer record 1 (A, rdlength 5): A rdata must be 4 octets"},
    {"A 3", DNS_T_A, RD("\1\2\3\4"), 3,
     "answer record 1 (A, rdlength 3): A rdata must be 4 octets"},
    {"AAAA 4", DNS_T_AAAA, RD("\1\2\3\4"), 4,
     "answer record 1 (AAAA, rdlength 4): AAAA rdata must be 16 octets"},
    {"MX name overruns rdlength", DNS_T_MX, RD("\0\12\2mx\0"), 5,
     "answer record 1 (MX, rdlength 5): name overruns rdlength"},
    {"MX pointer split by rdlength", DNS_T_MX, RD("\0\12\xc0\x0c"), 3,
     "answer record 1 (MX, rdlength 3): name overruns rdlength"},
    {"MX octet after name", DNS_T_MX, RD("\0\12\0\0"), 4,
     "answer record 1 (MX, rdlength 4): rdata continues after the name"},
    {"MX too short", DNS_T_MX, RD("\0\12"), 2,
     "answer record 1 (MX, rdlength 2): MX rdata shorter than 3 octets"},
    {"MX compressed host", DNS_T_MX, RD("\0\12\2mx\xc0\x0c"), 7, NULL},
    {"CNAME octet after name", DNS_T_CNAME, RD("\xc0\x0c\0"), 3,
     "answer record 1 (CNAME, rdlength 3): rdata continues after the name"},
    {"PTR empty", DNS_T_PTR, RD("\0"), 0,
     "answer record 1 (PTR, rdlength 0): name overruns rdlength"},
    {"TXT string overruns", DNS_T_TXT, RD("\5abc"), 4,
     "answer record 1 (TXT, rdlength 4): "
     "TXT character-string overruns rdlength"},
    {"TXT string one past rdlength", DNS_T_TXT, RD("\4abcd"), 4,
     "answer record 1 (TXT, rdlength 4): "
     "TXT character-string overruns rdlength"},
    {"TXT empty", DNS_T_TXT, RD(""), 0,
     "answer record 1 (TXT, rdlength 0): TXT rdata is empty"},
    {"TXT empty string", DNS_T_TXT, RD("\0"), 1, NULL},
    {"TLSA short", DNS_T_TLSA, RD("\3\1"), 2,
     "answer record 1 (TLSA, rdlength 2): TLSA rdata shorter than 3 octets"},
    {"TLSA no data", DNS_T_TLSA, RD("\3\1\1"), 3, NULL},
    {"SOA short counters", DNS_T_SOA, RD("\0\0\0\0\0\1"), 6,
     "answer record 1 (SOA, rdlength 6): "
     "SOA rdata must end with 20 octets of counters"},
    {"SOA ok", DNS_T_SOA,
     RD("\xc0\x0c\xc0\x0c\0\0\0\1\0\0\0\2\0\0\0\3\0\0\0\4\0\0\0\5"), 24, NULL},
    {"rdata past packet", DNS_T_A, RD("\1\2"), 4,
     "answer record 1 (A, rdlength 4): rdata runs past the end of the "
     "packet"},
    {"unknown type", 65280, RD("\1\2"), 4,
     "answer record 1 (TYPE65280, rdlength 4): rdata runs past the end of "
     "the packet"},
};

static void test_rdata(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(rdata_cases); i++) {
        const struct rdata_case *t = &rdata_cases[i];
        print_message("# rdata: %s\n", t->label);
        struct pkt p;
        query(&p, RESP, "example.com", t->type, 1, 0);
        put_name_ptr(&p, "", QNAME_OFF);
        rr_start(&p, t->type, 1, 1);
        p.b[p.len - 2] = (uint8_t)(t->rdlen >> 8);
        p.b[p.len - 1] = (uint8_t)t->rdlen;
        put(&p, t->bytes, t->nbytes);
        struct got *g = run(&p);
        if (t->err == NULL)
            assert_int_equal(g->rc, 0);
        else
            assert_string_equal(g->err, t->err);
        got_free(g);
    }
}

/* A bad record in the authority section refuses the packet too. */
static void test_authority_error(void **state)
{
    (void)state;
    struct pkt p;
    query(&p, RESP | DNS_R_NXDOMAIN, "example.com", DNS_T_A, 0, 1);
    put_name_ptr(&p, "", QNAME_OFF);
    size_t at = rr_start(&p, DNS_T_SOA, 1, 1);
    put(&p, "\xc0\x0c\xc0\x0c\0\0", 6);
    rr_end(&p, at);
    struct got *g = run(&p);
    assert_string_equal(g->err, "authority record 1 (SOA, rdlength 6): "
                                "SOA rdata must end with 20 octets of "
                                "counters");
    got_free(g);
}

/* --- truncation ----------------------------------------------------------- */

/* Every proper prefix of every valid packet is refused, and the callback
 * never runs (these packets have no additional section, so every prefix
 * lacks something the counts promise). */
static void test_truncation(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(valid_packets); i++) {
        print_message("# truncate: %s\n", valid_packets[i].label);
        struct pkt p;
        valid_packets[i].build(&p);
        struct got *g = run(&p);
        assert_int_equal(g->rc, 0);
        got_free(g);
        for (size_t len = 0; len < p.len; len++) {
            g = run_len(&p, len, 0);
            assert_int_equal(g->rc, -1);
            got_free(g);

            uint8_t *c = exact_copy(p.b, len);
            struct dns_mx mx[2];
            size_t n = 99;
            assert_int_equal(dns_wire_mx(c, len, NULL, mx, 2, &n, NULL, 0), -1);
            assert_int_equal(n, 0);
            free(c);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a),
        cmocka_unit_test(test_aaaa),
        cmocka_unit_test(test_cname_chain),
        cmocka_unit_test(test_mx_records),
        cmocka_unit_test(test_mx_collect),
        cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_nxdomain),
        cmocka_unit_test(test_tlsa),
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_class_type_ttl),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_pointer_into_rdata),
        cmocka_unit_test(test_question_pointer),
        cmocka_unit_test(test_pointer_hops),
        cmocka_unit_test(test_label_length),
        cmocka_unit_test(test_name_length),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_rdata),
        cmocka_unit_test(test_authority_error),
        cmocka_unit_test(test_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
