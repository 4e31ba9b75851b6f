/*
 * smtp_hat.h - the Host Access Table at connection time (private to
 * src/smtp): what the DNS says about the client (forward-confirmed
 * reverse DNS, DNS lists), the table's verdict, and the envelope-sender
 * domain check of a mail flow policy.
 */
#ifndef MOAT_SMTP_HAT_H
#define MOAT_SMTP_HAT_H

#include "conf/conf.h"
#include "delivery/resolve.h"

#define HAT_MAX_ZONES 16 /* DNS lists looked up per connection */

enum hat_ptr { HAT_PTR_FOUND, HAT_PTR_NONE, HAT_PTR_TEMP };

/* What is known about the client when the table is consulted. */
struct hat_facts {
    struct netaddr peer;
    enum hat_ptr ptr;            /* the PTR lookup */
    char name[NEXTHOP_HOST_MAX]; /* the verified name, else the first PTR
                                    name, else "" */
    bool verified;               /* name leads back to the address */
    bool forward_temp;           /* a forward lookup failed temporarily */
    size_t nzones;
    char zones[HAT_MAX_ZONES][NEXTHOP_HOST_MAX];
    int listed[HAT_MAX_ZONES]; /* 1 listed, 0 not, -1 lookup failed */
};

struct hat_verdict {
    const struct conf_sender_group *group; /* NULL: the ALL row */
    const struct conf_policy *policy;
    const char *match; /* the entry, as written */
};

/* First match wins; CONTINUE policies pass on to the next group. */
void hat_evaluate(const struct conf_listener *l, const struct hat_facts *f,
                  struct hat_verdict *v);

/* Gather the facts for a client: PTR, then the forward lookups of the
 * names found, and every DNS list the listener's groups use, in
 * parallel. done(arg) is called once, never from inside hat_dns_start. */
struct hat_dns;
struct hat_dns *hat_dns_start(struct resolver *r, const struct conf_listener *l,
                              const struct netaddr *peer,
                              void (*done)(void *arg), void *arg);
const struct hat_facts *hat_dns_facts(const struct hat_dns *h);
/* Free (cancelling lookups still out; done will not be called). */
void hat_dns_free(struct hat_dns *h);

/* Does an envelope sender's domain exist in the DNS? MX, then A, then
 * AAAA. cb gets DNSL_OK (it has one of them), DNSL_NXDOMAIN (no such
 * domain, or none of the three), or DNSL_TEMP. */
struct sender_check;
struct sender_check *
sender_check_start(struct resolver *r, const char *domain,
                   void (*cb)(void *arg, enum dnsl_status st), void *arg);
void sender_check_cancel(struct sender_check *c);

#endif
