/*
 * dns_wire.h - a strictly bounded parser of DNS response packets.
 *
 * libunbound's event API hands its callback the raw response packet; this
 * module reads that packet and nothing else: the header, the question
 * section (validated and skipped), the answer section (each class IN
 * record handed to a callback) and the authority section (validated; an
 * SOA there gives the negative-caching TTL). The additional section is not
 * read. Every length is checked against the packet; a packet that is
 * malformed anywhere in those sections is refused as a whole, before the
 * callback sees a single record.
 *
 * Names come back in presentation form: lower case, no trailing dot, the
 * root as "". Inside a label every byte outside [a-z0-9_-] is written as
 * \DDD (a dot as "\."), so a hostile name cannot carry spaces, control
 * bytes or CR LF into a log line or an SMTP command.
 */
#ifndef MOAT_DELIVERY_DNS_WIRE_H
#define MOAT_DELIVERY_DNS_WIRE_H

#include "core/util.h"

/* Longest name in presentation form. A wire name is at most 255 octets
 * (RFC 1035 2.3.4), so at most 250 label octets in 4 labels; each octet
 * escaped as \DDD takes 4 characters: 250 * 4 + 3 dots = 1003. */
#define DNS_NAME_MAX 1003

enum {
    DNS_T_A = 1,
    DNS_T_NS = 2,
    DNS_T_CNAME = 5,
    DNS_T_SOA = 6,
    DNS_T_PTR = 12,
    DNS_T_MX = 15,
    DNS_T_TXT = 16,
    DNS_T_AAAA = 28,
    DNS_T_TLSA = 52
};

/* Header RCODEs moat tells apart (RFC 1035 4.1.1). */
enum { DNS_R_NOERROR = 0, DNS_R_SERVFAIL = 2, DNS_R_NXDOMAIN = 3 };

struct dns_msg_info {
    uint16_t id;
    uint16_t flags; /* the header's second word, as sent */
    unsigned rcode; /* the 4-bit header RCODE */
    bool aa, tc;
    uint16_t qdcount, ancount, nscount, arcount;
    bool has_soa;     /* an IN SOA was in the authority section */
    uint32_t neg_ttl; /* then min(its TTL, its MINIMUM), RFC 2308 5 */
};

/* One class IN answer record. Pointers point into the packet. TXT rdata
 * (raw) has been checked to be a sequence of whole character-strings. */
struct dns_rr {
    uint16_t type;
    uint32_t ttl; /* a TTL with the top bit set reads as 0 (RFC 2181 8) */
    char owner[DNS_NAME_MAX + 1];
    union {
        struct {
            uint16_t pref;
            char host[DNS_NAME_MAX + 1]; /* "" with pref 0: null MX */
        } mx;
        uint8_t a[4];
        uint8_t aaaa[16];
        char name[DNS_NAME_MAX + 1]; /* CNAME, PTR, NS */
        struct {
            uint32_t serial, refresh, retry, expire, minimum;
        } soa; /* the two names are checked, not returned */
        struct {
            uint8_t usage, selector, mtype;
            const uint8_t *data;
            size_t len;
        } tlsa;
        struct {
            const uint8_t *data;
            size_t len;
        } raw; /* TXT and every other type */
    } u;
};

/* Called for each class IN answer record in packet order; return false
 * to stop. `rr` is valid only during the call. */
typedef bool (*dns_rr_fn)(void *arg, const struct dns_rr *rr);

/* Parse a response packet. Returns 0, or -1 with a reason in err (which
 * names the section, record and type at fault); on -1 `fn` has not been
 * called. `info` and `fn` may be NULL. */
int dns_wire_parse(const uint8_t *pkt, size_t len, struct dns_msg_info *info,
                   dns_rr_fn fn, void *arg, char *err, size_t errlen);

struct dns_mx {
    uint16_t pref;
    char host[DNS_NAME_MAX + 1];
};

/* Parse a response and keep the `cap` most preferred MX answers (of any
 * owner: libunbound's answer holds only the query's CNAME chain), sorted
 * by preference, equal preferences in packet order; *n says how many.
 * Shuffling equal preferences (RFC 5321 5.1) and refusing a null MX
 * mixed with others (RFC 7505 3) are left to the caller. Returns as
 * dns_wire_parse. */
int dns_wire_mx(const uint8_t *pkt, size_t len, struct dns_msg_info *info,
                struct dns_mx *mx, size_t cap, size_t *n, char *err,
                size_t errlen);

#endif
