/*
 * fuzz_dns_wire.c - libFuzzer target for the DNS response parser.
 *
 * Parses arbitrary bytes as a response packet (from a heap copy of exactly
 * the input's length, so ASan sees any over-read) and checks what the
 * header promises: a refused packet says why and never reached the
 * callback; a validation-only parse agrees with a full one; every name is
 * made only of [a-z0-9_-], dots and backslash escapes, and fits its
 * buffer; rdata pointers stay inside the packet; dns_wire_mx returns its
 * records sorted. Seeds: fuzz/corpus/dns_wire/.
 */
#include "delivery/dns_wire.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
    const uint8_t *pkt;
    size_t len, n;
};

/* A name as dns_wire.h promises it. */
static void check_name(const char *s)
{
    size_t n = strnlen(s, DNS_NAME_MAX + 1);
    if (n > DNS_NAME_MAX)
        abort();
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_' || c == '.' || c == '\\'))
            abort();
    }
}

/* `p[0..n)` lies inside the packet. */
static void check_span(const struct seen *s, const uint8_t *p, size_t n)
{
    if (p < s->pkt || n > s->len || (size_t)(p - s->pkt) > s->len - n)
        abort();
}

static bool on_rr(void *arg, const struct dns_rr *rr)
{
    struct seen *s = arg;
    s->n++;
    check_name(rr->owner);
    switch (rr->type) {
    case DNS_T_MX:
        check_name(rr->u.mx.host);
        break;
    case DNS_T_CNAME:
    case DNS_T_NS:
    case DNS_T_PTR:
        check_name(rr->u.name);
        break;
    case DNS_T_TLSA:
        check_span(s, rr->u.tlsa.data, rr->u.tlsa.len);
        break;
    case DNS_T_A:
    case DNS_T_AAAA:
    case DNS_T_SOA:
        break;
    default:
        check_span(s, rr->u.raw.data, rr->u.raw.len);
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *pkt = xmalloc(size ? size : 1);
    memcpy(pkt, data, size);
    struct seen s = {.pkt = pkt, .len = size};
    struct dns_msg_info info;
    char err[256];
    int rc = dns_wire_parse(pkt, size, &info, on_rr, &s, err, sizeof(err));
    if (rc != 0 && (rc != -1 || s.n != 0 || err[0] == '\0'))
        abort(); /* refused: says why, and no record was handed out */
    if (rc == 0 && s.n > info.ancount)
        abort();
    if (dns_wire_parse(pkt, size, NULL, NULL, NULL, NULL, 0) != rc)
        abort(); /* validation alone agrees */

    struct dns_mx mx[3];
    size_t n = 0;
    if (dns_wire_mx(pkt, size, NULL, mx, ARRAY_LEN(mx), &n, NULL, 0) != rc)
        abort();
    for (size_t i = 0; i < n; i++) {
        check_name(mx[i].host);
        if (i > 0 && mx[i - 1].pref > mx[i].pref)
            abort();
    }
    free(pkt);
    return 0;
}
