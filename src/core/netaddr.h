/*
 * netaddr.h - IP addresses, host:port pairs and CIDR blocks.
 *
 * Pure parsing and matching, no DNS. Used by the configuration validator
 * (listener addresses, relay senders) and by the session (client address
 * text, sender matching).
 */
#ifndef MOAT_CORE_NETADDR_H
#define MOAT_CORE_NETADDR_H

#include "core/util.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* Longest text form of an address with port: "[v6]:65535". */
#define NETADDR_STRLEN (INET6_ADDRSTRLEN + 8)

struct netaddr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* A CIDR block: family AF_INET or AF_INET6, address bytes, prefix length. */
struct cidr {
    int family;
    unsigned char addr[16];
    unsigned prefix;
};

/* Parse "1.2.3.4:25", "[::1]:25" or "*:25" (all IPv4 addresses) into a
 * socket address. Returns false with a reason in err. */
bool netaddr_parse_hostport(const char *s, struct netaddr *out, char *err,
                            size_t errlen);
/* Parse a bare IPv4/IPv6 address (no port). */
bool netaddr_parse_ip(const char *s, struct netaddr *out);
/* "1.2.3.4" / "::1" (no port); IPv4-mapped IPv6 shown as IPv4. */
void netaddr_ip_str(const struct netaddr *a, char *out, size_t outlen);
/* "1.2.3.4:25" / "[::1]:25". */
void netaddr_str(const struct netaddr *a, char *out, size_t outlen);
unsigned netaddr_port(const struct netaddr *a);

/* Parse "10.0.0.0/8", "2001:db8::/32", or a bare address (full-length
 * prefix). Host bits beyond the prefix must be zero. */
bool cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen);
/* The address's bytes and family (AF_INET for IPv4 and IPv4-mapped IPv6,
 * 4 bytes; else AF_INET6, 16 bytes). */
int netaddr_bytes(const struct netaddr *a, const unsigned char **bytes);
/* True if the address is inside the block (IPv4-mapped IPv6 addresses
 * match IPv4 blocks). */
bool cidr_match(const struct cidr *c, const struct netaddr *a);

#endif
