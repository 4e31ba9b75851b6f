/*
 * resolve.h - where a destination's mail goes: SMTP route hosts or MX
 * hosts, resolved to an ordered list of addresses, through libunbound in
 * event mode on the daemon's loop.
 *
 * Order (RFC 5321 5.1, RFC 7505, the appliance's SMTP routes):
 *   - a route's hosts by priority, equal priorities shuffled; a host name
 *     in a route is resolved like a domain (MX, then its addresses);
 *   - otherwise the domain's MX records by preference, equal preferences
 *     shuffled; no MX record: the domain itself (implicit MX);
 *   - each host's addresses as the destination's IP preference says.
 * Outcomes: addresses; a hard failure (NXDOMAIN, null MX, no address
 * anywhere and no temporary error); or a temporary failure (SERVFAIL,
 * timeout, a temporary error on the way with nothing usable).
 */
#ifndef MOAT_DELIVERY_RESOLVE_H
#define MOAT_DELIVERY_RESOLVE_H

#include "conf/conf.h"
#include "core/util.h"

#include <netinet/in.h>
#include <sys/socket.h>

struct event_base;
struct resolver;
struct resolve_req;

#define NEXTHOP_MAX_ADDRS 32
#define NEXTHOP_HOST_MAX 256

enum nexthop_status {
    NH_OK,
    NH_TEMP,     /* try again later */
    NH_HARD,     /* bounce: the destination cannot exist */
};

struct nexthop_addr {
    struct sockaddr_storage ss;
    socklen_t sslen;
    char ip[INET6_ADDRSTRLEN];
    char host[NEXTHOP_HOST_MAX]; /* MX host (or route host) it belongs to */
    uint16_t port;
    bool dnssec; /* a validating resolver found the MX RRset (or its
                    absence) and this address record secure (RFC 7672
                    2.2: DANE applies); never for route hosts */
};

struct nexthop {
    enum nexthop_status status;
    /* Failures: the lookup that failed, for the log lines "DNS Error
     * <qname> <qtype> - <what>" and the bounce text. */
    char qname[NEXTHOP_HOST_MAX];
    char qtype[8];
    char what[64];   /* "NXDomain", "ServFail", "timeout", "null MX", ... */
    char enh[8];     /* enhanced code for a hard failure: 5.1.2, 5.1.10 */
    size_t naddrs;
    struct nexthop_addr addrs[NEXTHOP_MAX_ADDRS];
};

/* The callback owns nothing: nh is valid during the call only. */
typedef void (*resolve_cb)(void *arg, const struct nexthop *nh);

/* Create the resolver from the configuration. NULL with a reason. */
struct resolver *resolver_new(struct event_base *base,
                              const struct conf_resolver *rc, char *err,
                              size_t errlen);
/* The same, validating DNSSEC with the configured trust anchors (for
 * DANE destinations: their MX, address and TLSA lookups). NULL with a
 * reason, e.g. when no trust anchor is configured or readable. */
struct resolver *resolver_new_dnssec(struct event_base *base,
                                     const struct conf_resolver *rc, char *err,
                                     size_t errlen);
void resolver_free(struct resolver *r);

/* Resolve where mail for `domain` goes (route may be NULL or USEDNS).
 * The callback is never called from inside this function. */
struct resolve_req *resolve_nexthop(struct resolver *r, const char *domain,
                                    const struct conf_route *route,
                                    int ip_preference, resolve_cb cb,
                                    void *arg);
/* Forget a request: its callback will not be called. */
void resolve_cancel(struct resolve_req *q);

/* ---- single lookups (the SMTP side: FCrDNS, DNS lists, senders) ---- */

enum dnsl_status {
    DNSL_OK,       /* records of the type asked for (see the counts) */
    DNSL_NODATA,   /* the name exists, no record of that type */
    DNSL_NXDOMAIN, /* the name does not exist */
    DNSL_TEMP,     /* SERVFAIL, timeout, a packet we could not read */
};

#define DNSL_MAX_NAMES 4
#define DNSL_MAX_ADDRS 16
#define DNSL_MAX_TLSA 8
#define DNSL_TLSA_DATA_MAX 512

/* A TLSA record (RFC 6698); data longer than DNSL_TLSA_DATA_MAX is not
 * kept (len 0, too_long). */
struct dnsl_tlsa {
    uint8_t usage, selector, mtype;
    bool too_long;
    uint16_t len;
    uint8_t data[DNSL_TLSA_DATA_MAX];
};

struct dnsl_result {
    enum dnsl_status status;
    size_t nnames;                            /* PTR, CNAME targets */
    char names[DNSL_MAX_NAMES][NEXTHOP_HOST_MAX];
    size_t n4, n6;                            /* A, AAAA */
    struct in_addr v4[DNSL_MAX_ADDRS];
    struct in6_addr v6[DNSL_MAX_ADDRS];
    size_t nrecords;                          /* of the type, in all */
    size_t ntlsa;                             /* TLSA */
    struct dnsl_tlsa tlsa[DNSL_MAX_TLSA];
    bool secure;   /* DNSSEC-validated (answer or denial) */
    bool bogus;    /* validation failed (status is DNSL_TEMP) */
    char why_bogus[160];
};

struct dns_lookup;
typedef void (*dnsl_cb)(void *arg, const struct dnsl_result *res);

/* Look up one name and type (DNS_T_A, DNS_T_AAAA, DNS_T_PTR, DNS_T_MX,
 * ...). The callback is called exactly once, never from inside this
 * function, within the resolver's timeout (then DNSL_TEMP) unless the
 * lookup is cancelled first. Names returned are in dns_wire's
 * presentation form (lower case, no final dot, odd bytes as \DDD). */
struct dns_lookup *resolver_lookup(struct resolver *r, const char *name,
                                   int type, dnsl_cb cb, void *arg);
/* Forget a lookup: its callback will not be called. */
void resolver_lookup_cancel(struct dns_lookup *l);

/* Lookups made, for status. */
uint64_t resolver_queries(const struct resolver *r);

#endif
