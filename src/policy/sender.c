/*
 * sender.c - sender group entries (see sender.h).
 */
#include "policy/sender.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

static bool fail(char *err, size_t errlen, const char *why)
{
    if (err && errlen)
        str_copy(err, errlen, why);
    return false;
}

/* A decimal octet 0-255 at s[0..n). */
static bool octet(const char *s, size_t n, unsigned char *out)
{
    unsigned v = 0;
    if (n == 0 || n > 3)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 255)
        return false;
    *out = (unsigned char)v;
    return true;
}

/* Partial IPv4 and IPv4 ranges: up to four dot-separated parts, each an
 * octet, the last given one possibly "lo-hi"; a trailing dot or fewer
 * than four parts leaves the rest free. */
static bool parse_range4(const char *s, struct sg_entry *e)
{
    size_t len = strlen(s);
    if (len == 0 || strspn(s, "0123456789.-") != len || s[0] == '.')
        return false;
    if (len > 0 && s[len - 1] == '.')
        len--; /* "10.2.3." is "10.2.3" */
    unsigned n = 0;
    bool ranged = false;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && s[j] != '.')
            j++;
        if (n == 4 || ranged)
            return false; /* a range only on the last octet given */
        const char *dash = memchr(s + i, '-', j - i);
        if (dash) {
            size_t a = (size_t)(dash - (s + i));
            if (!octet(s + i, a, &e->lo4[n]) ||
                !octet(dash + 1, j - i - a - 1, &e->hi4[n]) ||
                e->lo4[n] > e->hi4[n])
                return false;
            ranged = true;
        } else {
            if (!octet(s + i, j - i, &e->lo4[n]))
                return false;
            e->hi4[n] = e->lo4[n];
        }
        n++;
        i = j + 1;
        if (j < len && j + 1 == len)
            return false; /* "10..": an empty part */
    }
    if (n == 0)
        return false;
    e->kind = SG_RANGE4;
    e->noctets = n;
    return true;
}

/* "v6-v6" */
static bool parse_range6(const char *s, struct sg_entry *e)
{
    const char *dash = strchr(s, '-');
    char a[INET6_ADDRSTRLEN + 1], b[INET6_ADDRSTRLEN + 1];
    if (dash == NULL || strchr(s, ':') == NULL ||
        (size_t)(dash - s) >= sizeof(a) || strlen(dash + 1) >= sizeof(b))
        return false;
    memcpy(a, s, (size_t)(dash - s));
    a[dash - s] = '\0';
    str_copy(b, sizeof(b), dash + 1);
    if (inet_pton(AF_INET6, a, e->lo6) != 1 ||
        inet_pton(AF_INET6, b, e->hi6) != 1 ||
        memcmp(e->lo6, e->hi6, 16) > 0)
        return false;
    e->kind = SG_RANGE6;
    return true;
}

/* A host or domain name: labels of letters, digits, '-' and '_'. */
static bool name_ok(const char *s)
{
    size_t label = 0, n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i <= n; i++) {
        if (s[i] == '.' || s[i] == '\0') {
            if (label == 0 || label > 63)
                return false;
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
            return false;
        label++;
    }
    return true;
}

static void lower_copy(char *out, size_t outlen, const char *s)
{
    str_copy(out, outlen, s);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

bool sg_entry_parse(const char *s, struct sg_entry *e, char *err,
                    size_t errlen)
{
    memset(e, 0, sizeof(*e));
    size_t n = strlen(s);
    if (n == 0 || n > SG_ENTRY_MAX)
        return fail(err, errlen, "is empty or too long");
    if (strcmp(s, "ALL") == 0) {
        e->kind = SG_ALL;
        return true;
    }
    if (strcasecmp(s, "sbrs[none]") == 0) {
        e->kind = SG_SBRS_NONE;
        return true;
    }
    if (strncasecmp(s, "sbrs[", 5) == 0)
        return fail(err, errlen,
                    "is a reputation score range; moat has no reputation "
                    "service, so only sbrs[none] (no score: every host) can "
                    "match");
    if (strncasecmp(s, "dnslist[", 8) == 0) {
        if (s[n - 1] != ']' || n - 9 >= sizeof(e->name))
            return fail(err, errlen, "is not dnslist[zone]");
        char zone[256];
        memcpy(zone, s + 8, n - 9);
        zone[n - 9] = '\0';
        if (!name_ok(zone))
            return fail(err, errlen, "names a DNS list zone that is not a "
                                     "valid domain");
        lower_copy(e->name, sizeof(e->name), zone);
        e->kind = SG_DNSLIST;
        return true;
    }
    if (strchr(s, '/')) {
        char why[128];
        if (!cidr_parse(s, &e->cidr, why, sizeof(why)))
            return fail(err, errlen, "is not a valid CIDR block");
        e->kind = SG_CIDR;
        return true;
    }
    struct netaddr a;
    if (netaddr_parse_ip(s, &a)) {
        const unsigned char *bytes;
        int fam = netaddr_bytes(&a, &bytes);
        e->cidr.family = fam;
        memcpy(e->cidr.addr, bytes, fam == AF_INET ? 4 : 16);
        e->cidr.prefix = fam == AF_INET ? 32 : 128;
        e->kind = SG_ADDR;
        return true;
    }
    if (strchr(s, ':'))
        return parse_range6(s, e)
                   ? true
                   : fail(err, errlen, "is not an IPv6 address or range");
    if (isdigit((unsigned char)s[0]) && strspn(s, "0123456789.-") == n)
        return parse_range4(s, e)
                   ? true
                   : fail(err, errlen,
                          "is not an IPv4 address, partial address or "
                          "range (e.g. 10.1.1.10-20, 10.2.3.)");
    if (s[0] == '.') {
        if (!name_ok(s + 1))
            return fail(err, errlen, "is not a valid .domain");
        lower_copy(e->name, sizeof(e->name), s);
        e->kind = SG_DOMAIN;
        return true;
    }
    if (!name_ok(s))
        return fail(err, errlen, "is not an address, a range, a host name, "
                                 "a .domain, dnslist[zone] or ALL");
    lower_copy(e->name, sizeof(e->name), s);
    e->kind = SG_HOST;
    return true;
}

bool sg_match_addr(const struct sg_entry *e, const struct netaddr *addr)
{
    const unsigned char *b;
    int fam = netaddr_bytes(addr, &b);
    switch (e->kind) {
    case SG_ALL:
    case SG_SBRS_NONE:
        return true;
    case SG_ADDR:
    case SG_CIDR:
        return cidr_match(&e->cidr, addr);
    case SG_RANGE4:
        if (fam != AF_INET)
            return false;
        for (unsigned i = 0; i < e->noctets; i++)
            if (b[i] < e->lo4[i] || b[i] > e->hi4[i])
                return false;
        return true;
    case SG_RANGE6:
        return fam == AF_INET6 && memcmp(b, e->lo6, 16) >= 0 &&
               memcmp(b, e->hi6, 16) <= 0;
    default:
        return false;
    }
}

bool sg_match_host(const struct sg_entry *e, const char *name)
{
    if (name == NULL || name[0] == '\0')
        return false;
    char n[256];
    lower_copy(n, sizeof(n), name);
    size_t len = strlen(n);
    if (len > 0 && n[len - 1] == '.')
        n[--len] = '\0'; /* "mail.example.com." */
    if (e->kind == SG_HOST)
        return strcmp(n, e->name) == 0;
    if (e->kind == SG_DOMAIN) {
        size_t k = strlen(e->name); /* with its leading dot */
        return len > k && strcmp(n + len - k, e->name) == 0;
    }
    return false;
}
