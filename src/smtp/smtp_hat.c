/*
 * smtp_hat.c - Host Access Table lookups and verdicts (see smtp_hat.h).
 */
#include "smtp/smtp_hat.h"
#include "delivery/dns_wire.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* ---- the verdict ---- */

/* Does one group match? Sets *match to the entry (or check) that did. */
static bool group_matches(const struct conf_sender_group *g,
                          const struct hat_facts *f, const char **match)
{
    const char *vname = f->verified ? f->name : NULL;
    for (size_t i = 0; i < g->nsenders; i++) {
        const struct sg_entry *e = &g->senders[i];
        bool hit = false;
        switch (e->kind) {
        case SG_HOST:
        case SG_DOMAIN:
            hit = sg_match_host(e, vname);
            break;
        case SG_DNSLIST:
            for (size_t z = 0; z < f->nzones; z++)
                if (strcmp(f->zones[z], e->name) == 0)
                    hit = f->listed[z] == 1;
            break;
        default:
            hit = sg_match_addr(e, &f->peer);
        }
        if (hit) {
            *match = g->sender_text[i];
            return true;
        }
    }
    bool checks[3] = {
        f->ptr == HAT_PTR_NONE,
        f->ptr == HAT_PTR_TEMP || (f->forward_temp && !f->verified),
        f->ptr == HAT_PTR_FOUND && !f->verified && !f->forward_temp,
    };
    for (unsigned k = 0; k < 3; k++)
        if ((g->dns_verification & (1u << k)) && checks[k]) {
            *match = conf_dnsv_name(k);
            return true;
        }
    return false;
}

void hat_evaluate(const struct conf_listener *l, const struct hat_facts *f,
                  struct hat_verdict *v)
{
    for (size_t i = 0; i < l->ngroups; i++) {
        const struct conf_sender_group *g = &l->groups[i];
        const char *match = NULL;
        if (!group_matches(g, f, &match))
            continue;
        const struct conf_policy *p = &l->policies[g->policy];
        if (p->access == HAT_CONTINUE)
            continue;
        v->group = g;
        v->policy = p;
        v->match = match;
        return;
    }
    v->group = NULL;
    v->policy = &l->policies[l->default_policy];
    v->match = "ALL";
}

/* ---- gathering the facts ---- */

#define HAT_MAX_FORWARD 2 /* PTR names whose addresses are looked up */

struct hat_dns;

struct hat_q {
    struct hat_dns *h;
    struct dns_lookup *l;
    int zone; /* DNS list index, -1 for PTR and forward lookups */
    int fwd;  /* forward lookup of PTR name index, -1 otherwise */
};

struct hat_dns {
    struct resolver *r;
    void (*done)(void *);
    void *arg;
    struct hat_facts f;
    size_t nptr;
    char ptr_names[DNSL_MAX_NAMES][NEXTHOP_HOST_MAX];
    int pending;
    bool starting;
    bool finished;
    struct hat_q qs[1 + HAT_MAX_FORWARD + HAT_MAX_ZONES];
    size_t nq;
};

static void hat_on_answer(void *arg, const struct dnsl_result *res);

static void hat_query(struct hat_dns *h, const char *name, int type, int zone,
                      int fwd)
{
    if (h->nq >= ARRAY_LEN(h->qs))
        return;
    struct hat_q *q = &h->qs[h->nq++];
    q->h = h;
    q->zone = zone;
    q->fwd = fwd;
    h->pending++;
    q->l = resolver_lookup(h->r, name, type, hat_on_answer, q);
}

static void hat_maybe_done(struct hat_dns *h)
{
    if (h->pending > 0 || h->starting || h->finished)
        return;
    h->finished = true;
    if (h->f.name[0] == '\0' && h->nptr > 0)
        str_copy(h->f.name, sizeof(h->f.name), h->ptr_names[0]);
    h->done(h->arg);
}

/* Is the client's address among a forward answer's? */
static bool has_peer(const struct hat_facts *f, const struct dnsl_result *res)
{
    const unsigned char *b;
    int fam = netaddr_bytes(&f->peer, &b);
    if (fam == AF_INET) {
        for (size_t i = 0; i < res->n4; i++)
            if (memcmp(&res->v4[i], b, 4) == 0)
                return true;
    } else {
        for (size_t i = 0; i < res->n6; i++)
            if (memcmp(&res->v6[i], b, 16) == 0)
                return true;
    }
    return false;
}

static void got_ptr(struct hat_dns *h, const struct dnsl_result *res)
{
    struct hat_facts *f = &h->f;
    if (res->status == DNSL_TEMP) {
        f->ptr = HAT_PTR_TEMP;
        return;
    }
    if (res->status != DNSL_OK) {
        f->ptr = HAT_PTR_NONE;
        return;
    }
    f->ptr = HAT_PTR_FOUND;
    const unsigned char *b;
    int type = netaddr_bytes(&f->peer, &b) == AF_INET ? DNS_T_A : DNS_T_AAAA;
    for (size_t i = 0; i < res->nnames; i++) {
        /* A name with escaped bytes cannot be a host name. */
        if (res->names[i][0] == '\0' || strchr(res->names[i], '\\'))
            continue;
        str_copy(h->ptr_names[h->nptr], sizeof(h->ptr_names[0]), res->names[i]);
        if (h->nptr < HAT_MAX_FORWARD)
            hat_query(h, res->names[i], type, -1, (int)h->nptr);
        h->nptr++;
    }
}

/* A DNS list lists an address with an A record in 127.0.0.0/8. Answers
 * in 127.255.255.0/24 are the lists' error codes (Spamhaus: "query
 * through a public resolver", "over quota"), not listings; anything
 * outside 127/8 is a wildcard or a hijacking resolver. */
static bool listed_answer(const struct dnsl_result *res)
{
    if (res->status != DNSL_OK)
        return false;
    for (size_t i = 0; i < res->n4; i++) {
        const unsigned char *b = (const unsigned char *)&res->v4[i];
        if (b[0] == 127 && !(b[1] == 255 && b[2] == 255))
            return true;
    }
    return false;
}

static void hat_on_answer(void *arg, const struct dnsl_result *res)
{
    struct hat_q *q = arg;
    struct hat_dns *h = q->h;
    struct hat_facts *f = &h->f;
    q->l = NULL;
    h->pending--;
    h->starting = true; /* got_ptr may start more lookups */
    if (q->zone >= 0) {
        f->listed[q->zone] = res->status == DNSL_TEMP ? -1
                             : listed_answer(res)     ? 1
                                                      : 0;
    } else if (q->fwd < 0) {
        got_ptr(h, res);
    } else if (res->status == DNSL_TEMP) {
        f->forward_temp = true;
    } else if (!f->verified && has_peer(f, res)) {
        f->verified = true;
        str_copy(f->name, sizeof(f->name), h->ptr_names[q->fwd]);
    }
    h->starting = false;
    hat_maybe_done(h);
}

/* The reversed-address query name under a DNS list zone. */
static void dnsbl_name(const struct netaddr *a, const char *zone, char *out,
                       size_t outlen)
{
    const unsigned char *b;
    size_t n = 0;
    if (netaddr_bytes(a, &b) == AF_INET) {
        str_printf(out, outlen, "%u.%u.%u.%u.%s", b[3], b[2], b[1], b[0], zone);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0 && n + 4 < outlen; i--) {
        out[n++] = hex[b[i] & 15];
        out[n++] = '.';
        out[n++] = hex[b[i] >> 4];
        out[n++] = '.';
    }
    out[n] = '\0';
    str_printf(out + n, outlen - n, "%s", zone);
}

/* The reverse-DNS name of an address. */
static void ptr_name(const struct netaddr *a, char *out, size_t outlen)
{
    const unsigned char *b;
    if (netaddr_bytes(a, &b) == AF_INET) {
        str_printf(out, outlen, "%u.%u.%u.%u.in-addr.arpa", b[3], b[2], b[1],
                   b[0]);
        return;
    }
    dnsbl_name(a, "ip6.arpa", out, outlen);
}

struct hat_dns *hat_dns_start(struct resolver *r, const struct conf_listener *l,
                              const struct netaddr *peer,
                              void (*done)(void *arg), void *arg)
{
    struct hat_dns *h = xcalloc(1, sizeof(*h));
    char qname[NEXTHOP_HOST_MAX + 80];
    h->r = r;
    h->done = done;
    h->arg = arg;
    h->f.peer = *peer;
    h->starting = true;
    ptr_name(peer, qname, sizeof(qname));
    hat_query(h, qname, DNS_T_PTR, -1, -1);
    for (size_t g = 0; l->hat_uses_dnslist && g < l->ngroups; g++) {
        for (size_t i = 0; i < l->groups[g].nsenders; i++) {
            const struct sg_entry *e = &l->groups[g].senders[i];
            if (e->kind != SG_DNSLIST || h->f.nzones == HAT_MAX_ZONES)
                continue;
            bool dup = false;
            for (size_t z = 0; z < h->f.nzones; z++)
                dup |= strcmp(h->f.zones[z], e->name) == 0;
            if (dup)
                continue;
            size_t z = h->f.nzones++;
            str_copy(h->f.zones[z], sizeof(h->f.zones[z]), e->name);
            h->f.listed[z] = -1;
            dnsbl_name(peer, e->name, qname, sizeof(qname));
            hat_query(h, qname, DNS_T_A, (int)z, -1);
        }
    }
    h->starting = false;
    /* Answers come later (resolver_lookup never calls back at once). */
    return h;
}

const struct hat_facts *hat_dns_facts(const struct hat_dns *h)
{
    return &h->f;
}

void hat_dns_free(struct hat_dns *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->nq; i++)
        resolver_lookup_cancel(h->qs[i].l);
    free(h);
}

/* ---- envelope sender domains ---- */

struct sender_check {
    struct resolver *r;
    char domain[NEXTHOP_HOST_MAX];
    int step; /* 0 MX, 1 A, 2 AAAA */
    struct dns_lookup *l;
    void (*cb)(void *, enum dnsl_status);
    void *arg;
};

static void sender_on_answer(void *arg, const struct dnsl_result *res)
{
    static const int types[] = {DNS_T_MX, DNS_T_A, DNS_T_AAAA};
    struct sender_check *c = arg;
    c->l = NULL;
    enum dnsl_status st = res->status;
    if (st == DNSL_NODATA && c->step + 1 < (int)ARRAY_LEN(types)) {
        c->step++;
        c->l = resolver_lookup(c->r, c->domain, types[c->step],
                               sender_on_answer, c);
        return;
    }
    if (st == DNSL_NODATA)
        st = DNSL_NXDOMAIN; /* no MX, A or AAAA record */
    void (*cb)(void *, enum dnsl_status) = c->cb;
    void *cbarg = c->arg;
    free(c);
    cb(cbarg, st);
}

struct sender_check *
sender_check_start(struct resolver *r, const char *domain,
                   void (*cb)(void *arg, enum dnsl_status st), void *arg)
{
    struct sender_check *c = xcalloc(1, sizeof(*c));
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    str_copy(c->domain, sizeof(c->domain), domain);
    c->l = resolver_lookup(r, domain, DNS_T_MX, sender_on_answer, c);
    return c;
}

void sender_check_cancel(struct sender_check *c)
{
    if (c == NULL)
        return;
    resolver_lookup_cancel(c->l);
    free(c);
}
