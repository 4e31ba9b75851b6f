/*
 * sender.h - sender group entries of the Host Access Table: the forms the
 * appliance accepts for a connecting host, parsed and matched.
 *
 *   192.0.2.7, 2001:db8::7          one address
 *   10.0.0.0/8, 2001:db8::/32        CIDR block
 *   10.1.1.10-20, 10.1.1-5., 10-11   IPv4 range on the last octet given
 *                                    (octets after it match anything)
 *   10.2.3., 10.2.3, 10.             partial IPv4: the octets given
 *   2001:db8::1-2001:db8::ff         IPv6 range
 *   mail.example.com                 the client's verified host name
 *   .protection.outlook.com          any verified name inside that domain
 *   dnslist[zone.example]            listed in that DNS list
 *   sbrs[none]                       no reputation score: moat has no
 *                                    reputation service, so every host
 *   ALL                              every host
 *
 * Host names and dnslist entries need lookups (forward-confirmed reverse
 * DNS; the DNS list query) that the caller makes; the matchers here only
 * compare. Pure: no I/O.
 */
#ifndef MOAT_POLICY_SENDER_H
#define MOAT_POLICY_SENDER_H

#include "core/netaddr.h"
#include "core/util.h"

#define SG_ENTRY_MAX 300 /* longest entry text accepted */

enum sg_kind {
    SG_ADDR,    /* one address: a CIDR block of full length */
    SG_CIDR,    /* CIDR block */
    SG_RANGE4,  /* IPv4 octets lo[i]..hi[i] for i < noctets */
    SG_RANGE6,  /* IPv6 lo..hi */
    SG_HOST,    /* exact verified host name */
    SG_DOMAIN,  /* .domain: a verified name strictly inside it */
    SG_DNSLIST, /* dnslist[zone] */
    SG_SBRS_NONE, /* sbrs[none]: no reputation score, i.e. every host */
    SG_ALL,
};

struct sg_entry {
    enum sg_kind kind;
    struct cidr cidr;                 /* SG_ADDR, SG_CIDR */
    unsigned noctets;                 /* SG_RANGE4: octets constrained */
    unsigned char lo4[4], hi4[4];     /* SG_RANGE4 */
    unsigned char lo6[16], hi6[16];   /* SG_RANGE6 */
    char name[256];                   /* SG_HOST, SG_DOMAIN (with the
                                         dot), SG_DNSLIST (the zone);
                                         lower case */
};

/* Parse one entry. Returns false with a reason in err. */
bool sg_entry_parse(const char *s, struct sg_entry *e, char *err,
                    size_t errlen);

/* Does the entry match the client at addr? Address forms only (and ALL);
 * host-name and dnslist entries answer false here. IPv4-mapped IPv6
 * clients match IPv4 forms. */
bool sg_match_addr(const struct sg_entry *e, const struct netaddr *addr);

/* Does a host-name entry match the client's verified (forward-confirmed)
 * name? false for other kinds, and when name is NULL (no verified name). */
bool sg_match_host(const struct sg_entry *e, const char *name);

#endif
