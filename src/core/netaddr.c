/*
 * netaddr.c - address, host:port and CIDR parsing (see netaddr.h).
 */
#include "core/netaddr.h"

#include <arpa/inet.h>
#include <stdlib.h>

static bool set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        str_copy(err, errlen, msg);
    return false;
}

bool netaddr_parse_ip(const char *s, struct netaddr *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        out->len = sizeof(*sin);
        return true;
    }
    if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        out->len = sizeof(*sin6);
        return true;
    }
    return false;
}

static bool parse_port(const char *p, unsigned *port)
{
    uint64_t v;
    if (!parse_u64(p, strlen(p), &v) || v == 0 || v > 65535)
        return false;
    *port = (unsigned)v;
    return true;
}

bool netaddr_parse_hostport(const char *s, struct netaddr *out, char *err,
                            size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon;
    size_t hlen;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return set_err(err, errlen,
                           "expected \"[IPv6-address]:port\"");
        hlen = (size_t)(end - s - 1);
        if (hlen == 0 || hlen >= sizeof(host))
            return set_err(err, errlen, "bad IPv6 address");
        memcpy(host, s + 1, hlen);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return set_err(err, errlen, "expected \"address:port\"");
        hlen = (size_t)(colon - s);
        if (hlen == 0 || hlen >= sizeof(host))
            return set_err(err, errlen, "bad address");
        memcpy(host, s, hlen);
        if (memchr(host, ':', hlen))
            return set_err(err, errlen,
                           "IPv6 addresses must be written \"[addr]:port\"");
    }
    host[hlen] = '\0';

    unsigned port;
    if (!parse_port(colon + 1, &port))
        return set_err(err, errlen, "port must be a number from 1 to 65535");
    if (strcmp(host, "*") == 0)
        str_copy(host, sizeof(host), "0.0.0.0");
    if (!netaddr_parse_ip(host, out))
        return set_err(err, errlen,
                       "not an IP address (host names are not allowed here)");
    if (out->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&out->ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)&out->ss)->sin6_port = htons((uint16_t)port);
    return true;
}

/* Point at the raw address bytes; IPv4-mapped IPv6 is reduced to IPv4. */
static int addr_bytes(const struct netaddr *a, const unsigned char **bytes)
{
    if (a->ss.ss_family == AF_INET) {
        *bytes = (const unsigned char *)&((const struct sockaddr_in *)&a->ss)
                     ->sin_addr;
        return AF_INET;
    }
    const struct in6_addr *in6 =
        &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(in6)) {
        *bytes = in6->s6_addr + 12;
        return AF_INET;
    }
    *bytes = in6->s6_addr;
    return AF_INET6;
}

int netaddr_bytes(const struct netaddr *a, const unsigned char **bytes)
{
    return addr_bytes(a, bytes);
}

void netaddr_ip_str(const struct netaddr *a, char *out, size_t outlen)
{
    const unsigned char *bytes;
    int fam = addr_bytes(a, &bytes);
    if (inet_ntop(fam, bytes, out, (socklen_t)outlen) == NULL)
        str_copy(out, outlen, "?");
}

unsigned netaddr_port(const struct netaddr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

void netaddr_str(const struct netaddr *a, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN];
    netaddr_ip_str(a, ip, sizeof(ip));
    if (strchr(ip, ':'))
        str_printf(out, outlen, "[%s]:%u", ip, netaddr_port(a));
    else
        str_printf(out, outlen, "%s:%u", ip, netaddr_port(a));
}

bool cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    if (hlen == 0 || hlen >= sizeof(host))
        return set_err(err, errlen, "bad address");
    memcpy(host, s, hlen);
    host[hlen] = '\0';

    struct netaddr a;
    if (!netaddr_parse_ip(host, &a))
        return set_err(err, errlen, "not an IPv4 or IPv6 address");
    const unsigned char *bytes;
    memset(out, 0, sizeof(*out));
    out->family = addr_bytes(&a, &bytes);
    unsigned maxbits = out->family == AF_INET ? 32 : 128;
    memcpy(out->addr, bytes, maxbits / 8);

    out->prefix = maxbits;
    if (slash) {
        uint64_t v;
        if (!parse_u64(slash + 1, strlen(slash + 1), &v) || v > maxbits)
            return set_err(err, errlen, out->family == AF_INET
                                            ? "prefix length must be 0-32"
                                            : "prefix length must be 0-128");
        out->prefix = (unsigned)v;
    }
    for (unsigned bit = out->prefix; bit < maxbits; bit++)
        if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
            return set_err(err, errlen,
                           "address has bits set beyond the prefix length");
    return true;
}

bool cidr_match(const struct cidr *c, const struct netaddr *a)
{
    const unsigned char *bytes;
    if (addr_bytes(a, &bytes) != c->family)
        return false;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(bytes, c->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (bytes[full] & mask) == (c->addr[full] & mask);
}
