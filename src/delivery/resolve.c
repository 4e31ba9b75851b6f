/*
 * resolve.c - next-hop resolution over libunbound (see resolve.h).
 *
 * A request holds "targets" (the domain, or a route's hosts), each with
 * the MX hosts found for it, each with its addresses. Every lookup is an
 * asynchronous ub_resolve_event(); `pending` counts those in flight and
 * the request finishes when it drops to zero (or its timer fires). The
 * answer packets are read with dns_wire. libunbound may call back from
 * inside ub_resolve_event (local data), so a request never finishes
 * while it is still issuing lookups (`issuing`), and its callback runs
 * from a zero-delay timer, never inside resolve_nexthop().
 *
 * A request that finished (or was cancelled) while lookups are in flight
 * stays allocated as a zombie until the last answer arrives: libunbound
 * keeps our pointer until then.
 */
#include "delivery/resolve.h"
#include "delivery/dns_wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <unbound-event.h>
#include <unbound.h>

#define MAX_TARGETS 64
#define MAX_MX 16 /* MX hosts used per target */

struct dns_lookup;

struct resolver {
    struct event_base *base;
    struct ub_ctx *ub;
    unsigned timeout;
    uint64_t queries;
    struct dns_lookup *lookups; /* every live single lookup */
};

static void lookups_free_all(struct resolver *r);

struct host {
    char name[NEXTHOP_HOST_MAX];
    unsigned pref;
    uint16_t port;
    size_t n4, n6;
    struct in_addr v4[8];
    struct in6_addr v6[8];
    bool temp, hard; /* an address lookup failed */
    int answered;    /* A and AAAA answers in */
    bool secure4, secure6; /* the A / AAAA answer validated */
};

struct target {
    char name[NEXTHOP_HOST_MAX];
    uint16_t port;
    unsigned pri;
    bool literal;    /* an IP address from a route */
    bool implicit;   /* no MX: the name itself is the host */
    bool temp, hard; /* its MX lookup failed (route hosts) */
    bool mx_secure;  /* the MX answer (or NODATA) validated */
    size_t nhosts;
    struct host hosts[MAX_MX];
};

struct resolve_req {
    struct resolver *r;
    resolve_cb cb;
    void *arg;
    int ip_pref;
    size_t ntargets;
    struct target *targets;
    int pending;   /* lookups in flight */
    bool issuing;  /* inside ub_resolve_event calls */
    bool finished; /* result decided (or cancelled) */
    bool cancelled;
    bool is_route;  /* targets are route hosts: one failing is not fatal */
    bool timed_out; /* the request's timer ran out */
    struct event *timer;
    struct event *done_ev;
    struct nexthop nh;
};

/* One lookup in flight: which part of the request it answers. */
struct query {
    struct resolve_req *q;
    size_t t; /* target index */
    int h;    /* host index, -1 for the target's MX query */
    int type;
};

/* ---- set-up ---- */

static bool is_loopback(const char *addr)
{
    return strncmp(addr, "127.", 4) == 0 || strncmp(addr, "::1", 3) == 0;
}

static struct resolver *resolver_make(struct event_base *base,
                                      const struct conf_resolver *rc,
                                      bool dnssec, char *err, size_t errlen)
{
    /* Equal MX preferences and route priorities are shuffled with
     * random(): seed it, so gateways do not all pick the same host. */
    unsigned seed;
    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srandom(seed);
    struct resolver *r = xcalloc(1, sizeof(*r));
    r->base = base;
    r->timeout = rc->timeout ? rc->timeout : 30;
    r->ub = ub_ctx_create_event(base);
    if (r->ub == NULL) {
        str_printf(err, errlen, "resolver: cannot create libunbound context");
        free(r);
        return NULL;
    }
    int rc2 = 0;
    const char *what = "";
    bool loop = false;
    for (size_t i = 0; i < rc->nforwarders && rc2 == 0; i++) {
        rc2 = ub_ctx_set_fwd(r->ub, rc->forwarders[i]);
        what = rc->forwarders[i];
        loop |= is_loopback(rc->forwarders[i]);
    }
    for (size_t i = 0; i < rc->nstubs && rc2 == 0; i++)
        for (size_t j = 0; j < rc->stubs[i].naddrs && rc2 == 0; j++) {
            rc2 = ub_ctx_set_stub(r->ub, rc->stubs[i].zone,
                                  rc->stubs[i].addrs[j], 0);
            what = rc->stubs[i].addrs[j];
            loop |= is_loopback(rc->stubs[i].addrs[j]);
        }
    /* A stub for a zone unbound answers itself by default (localhost,
     * 127.in-addr.arpa, the RFC 1918 reverse zones, test., ...) must
     * reach the stub: make that built-in zone transparent. */
    for (size_t i = 0; i < rc->nstubs && rc2 == 0; i++) {
        if (strcmp(rc->stubs[i].zone, ".") == 0)
            continue;
        char opt[300];
        str_printf(opt, sizeof(opt), "%s transparent", rc->stubs[i].zone);
        rc2 = ub_ctx_set_option(r->ub, "local-zone:", opt);
        what = rc->stubs[i].zone;
    }
    if (rc2 == 0 && rc->nforwarders == 0 && rc->resolv_conf &&
        rc->resolv_conf[0]) {
        rc2 = ub_ctx_resolvconf(r->ub, rc->resolv_conf);
        what = rc->resolv_conf;
        /* A local caching resolver (systemd-resolved, dnsmasq) is the
         * usual entry in resolv.conf. */
        loop = true;
    }
    /* libunbound refuses to send queries to loopback addresses unless
     * told otherwise; forwarders and stubs on 127.0.0.1 are normal. */
    if (rc2 == 0 && loop) {
        rc2 = ub_ctx_set_option(r->ub, "do-not-query-localhost:", "no");
        what = "do-not-query-localhost";
    }
    size_t anchors = 0;
    if (dnssec && rc2 == 0 && rc->trust_anchor_file &&
        rc->trust_anchor_file[0]) {
        what = rc->trust_anchor_file;
        if (access(rc->trust_anchor_file, R_OK) != 0) {
            str_printf(err, errlen, "resolver: trust_anchor_file %s: %s",
                       rc->trust_anchor_file, strerror(errno));
            ub_ctx_delete(r->ub);
            free(r);
            return NULL;
        }
        rc2 = ub_ctx_add_ta_file(r->ub, rc->trust_anchor_file);
        anchors++;
    }
    for (size_t i = 0; dnssec && rc2 == 0 && i < rc->ntrust_anchors; i++) {
        what = rc->trust_anchors[i];
        rc2 = ub_ctx_add_ta(r->ub, rc->trust_anchors[i]);
        anchors++;
    }
    if (dnssec && rc2 == 0 && anchors == 0) {
        str_printf(err, errlen, "resolver: no DNSSEC trust anchor "
                                "(trust_anchor_file, trust_anchors)");
        ub_ctx_delete(r->ub);
        free(r);
        return NULL;
    }
    if (rc2 != 0) {
        str_printf(err, errlen, "resolver: %s: %s", what, ub_strerror(rc2));
        ub_ctx_delete(r->ub);
        free(r);
        return NULL;
    }
    return r;
}

struct resolver *resolver_new(struct event_base *base,
                              const struct conf_resolver *rc, char *err,
                              size_t errlen)
{
    return resolver_make(base, rc, false, err, errlen);
}

struct resolver *resolver_new_dnssec(struct event_base *base,
                                     const struct conf_resolver *rc, char *err,
                                     size_t errlen)
{
    return resolver_make(base, rc, true, err, errlen);
}

void resolver_free(struct resolver *r)
{
    if (r == NULL)
        return;
    ub_ctx_delete(r->ub);
    lookups_free_all(r); /* libunbound will not call back any more */
    free(r);
}

uint64_t resolver_queries(const struct resolver *r)
{
    return r->queries;
}

/* ---- finishing ---- */

static void req_free(struct resolve_req *q)
{
    if (q->timer)
        event_free(q->timer);
    if (q->done_ev)
        event_free(q->done_ev);
    free(q->targets);
    free(q);
}

/* Shuffle a[lo..hi) (equal preferences; RFC 5321 5.1). */
static void shuffle_hosts(struct host *a, size_t lo, size_t hi)
{
    for (size_t i = hi; i > lo + 1; i--) {
        size_t j = lo + (size_t)random() % (i - lo);
        struct host t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static int host_cmp(const void *x, const void *y)
{
    const struct host *a = x, *b = y;
    return a->pref < b->pref ? -1 : a->pref > b->pref;
}

static void add_addr(struct nexthop *nh, const struct host *h, int family,
                     const void *bin, bool dnssec)
{
    if (nh->naddrs >= NEXTHOP_MAX_ADDRS)
        return;
    struct nexthop_addr *a = &nh->addrs[nh->naddrs];
    memset(a, 0, sizeof(*a));
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&a->ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(h->port);
        memcpy(&s->sin_addr, bin, 4);
        a->sslen = sizeof(*s);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a->ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(h->port);
        memcpy(&s->sin6_addr, bin, 16);
        a->sslen = sizeof(*s);
    }
    for (size_t i = 0; i < nh->naddrs; i++)
        if (nh->addrs[i].sslen == a->sslen &&
            memcmp(&nh->addrs[i].ss, &a->ss, a->sslen) == 0)
            return; /* the same address under two names: once is enough */
    inet_ntop(family, bin, a->ip, sizeof(a->ip));
    str_copy(a->host, sizeof(a->host), h->name);
    a->port = h->port;
    a->dnssec = dnssec;
    nh->naddrs++;
}

static void host_addrs(struct nexthop *nh, const struct host *h, int pref,
                       bool mx_secure)
{
    bool v6 = pref != IPPREF_V4_ONLY, v4 = pref != IPPREF_V6_ONLY;
    bool v6_first = pref == IPPREF_V6_PREFERRED || pref == IPPREF_V6_ONLY;
    if (v6 && v6_first)
        for (size_t i = 0; i < h->n6; i++)
            add_addr(nh, h, AF_INET6, &h->v6[i], mx_secure && h->secure6);
    if (v4)
        for (size_t i = 0; i < h->n4; i++)
            add_addr(nh, h, AF_INET, &h->v4[i], mx_secure && h->secure4);
    if (v6 && !v6_first)
        for (size_t i = 0; i < h->n6; i++)
            add_addr(nh, h, AF_INET6, &h->v6[i], mx_secure && h->secure6);
}

/* Build the address list once every lookup is in. */
static void build_result(struct resolve_req *q)
{
    struct nexthop *nh = &q->nh;
    bool temp = false;
    for (size_t t = 0; t < q->ntargets; t++) {
        struct target *tg = &q->targets[t];
        if (tg->nhosts > 1) {
            qsort(tg->hosts, tg->nhosts, sizeof(tg->hosts[0]), host_cmp);
            for (size_t i = 0, j; i < tg->nhosts; i = j) {
                for (j = i + 1;
                     j < tg->nhosts && tg->hosts[j].pref == tg->hosts[i].pref;
                     j++)
                    ;
                shuffle_hosts(tg->hosts, i, j);
            }
        }
        for (size_t h = 0; h < tg->nhosts; h++) {
            host_addrs(nh, &tg->hosts[h], q->ip_pref,
                       tg->mx_secure && !q->is_route);
            temp |= tg->hosts[h].temp;
        }
        temp |= tg->temp;
    }
    if (nh->naddrs > 0) {
        nh->status = NH_OK;
        return;
    }
    if (nh->status == NH_OK) {
        /* Nothing usable: temporary if any lookup on the way was. */
        nh->status = temp ? NH_TEMP : NH_HARD;
        if (nh->qname[0] == '\0' || q->is_route || q->timed_out) {
            str_copy(nh->what, sizeof(nh->what),
                     q->timed_out ? "timeout"
                     : temp       ? "ServFail"
                                  : "no address record");
            if (nh->qname[0] == '\0' && q->ntargets > 0) {
                str_copy(nh->qname, sizeof(nh->qname), q->targets[0].name);
                str_copy(nh->qtype, sizeof(nh->qtype), "A");
            }
        }
        str_copy(nh->enh, sizeof(nh->enh), temp ? "4.4.3" : "5.1.2");
    }
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct resolve_req *q = arg;
    (void)fd;
    (void)what;
    if (!q->cancelled)
        q->cb(q->arg, &q->nh);
    q->cancelled = true; /* the callback may not be called twice */
    if (q->pending == 0)
        req_free(q);
}

/* Decide the result (once) and schedule the callback. */
static void finish(struct resolve_req *q)
{
    if (q->finished)
        return;
    q->finished = true;
    if (q->nh.status == NH_OK)
        build_result(q);
    evtimer_del(q->timer);
    struct timeval now = {0, 0};
    evtimer_add(q->done_ev, &now);
}

static void check_done(struct resolve_req *q)
{
    if (q->pending == 0 && !q->issuing)
        finish(q);
}

/* Record the first failure that decides the request. A hard failure of
 * the destination itself ends it at once. */
static void set_fail(struct resolve_req *q, enum nexthop_status st,
                     const char *qname, const char *qtype, const char *what,
                     const char *enh)
{
    if (q->nh.status == NH_HARD)
        return;
    q->nh.status = st;
    str_copy(q->nh.qname, sizeof(q->nh.qname), qname);
    str_copy(q->nh.qtype, sizeof(q->nh.qtype), qtype);
    str_copy(q->nh.what, sizeof(q->nh.what), what);
    str_copy(q->nh.enh, sizeof(q->nh.enh), enh);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct resolve_req *q = arg;
    (void)fd;
    (void)what;
    /* What has answered counts: a dead backup MX must not hide a live
     * primary. Whatever is still out is a temporary failure. */
    for (size_t t = 0; t < q->ntargets; t++) {
        struct target *tg = &q->targets[t];
        if (tg->nhosts == 0 && !tg->literal && !tg->hard) {
            tg->temp = true;
            if (q->nh.qname[0] == '\0') {
                str_copy(q->nh.qname, sizeof(q->nh.qname), tg->name);
                str_copy(q->nh.qtype, sizeof(q->nh.qtype), "MX");
            }
        }
        for (size_t h = 0; h < tg->nhosts; h++)
            if (tg->hosts[h].answered < 2) {
                tg->hosts[h].temp = true;
                if (q->nh.qname[0] == '\0') {
                    str_copy(q->nh.qname, sizeof(q->nh.qname),
                             tg->hosts[h].name);
                    str_copy(q->nh.qtype, sizeof(q->nh.qtype), "A");
                }
            }
    }
    q->timed_out = true;
    finish(q);
}

/* ---- lookups ---- */

static void on_answer(void *arg, int rcode, void *pkt, int len, int sec,
                      char *why_bogus, int ratelimited);

static void lookup(struct resolve_req *q, size_t t, int h, int type)
{
    struct query *qq = xcalloc(1, sizeof(*qq));
    qq->q = q;
    qq->t = t;
    qq->h = h;
    qq->type = type;
    const char *name = h < 0 ? q->targets[t].name : q->targets[t].hosts[h].name;
    q->pending++;
    q->r->queries++;
    int rc = ub_resolve_event(q->r->ub, name, type, 1, qq, on_answer, NULL);
    if (rc != 0) {
        /* Not sent: count it as a temporary failure of that lookup. */
        on_answer(qq, 2, NULL, 0, 0, NULL, 0);
    }
}

/* Collect MX answers into target t; start address lookups. */
static void got_mx(struct resolve_req *q, size_t t, const uint8_t *pkt,
                   size_t len)
{
    struct target *tg = &q->targets[t];
    struct dns_mx mx[MAX_MX];
    size_t n = 0;
    char err[128];
    if (dns_wire_mx(pkt, len, NULL, mx, MAX_MX, &n, err, sizeof(err)) != 0) {
        if (q->is_route)
            tg->temp = true;
        else
            set_fail(q, NH_TEMP, tg->name, "MX", "bad answer", "4.4.3");
        return;
    }
    if (n == 1 && mx[0].host[0] == '\0') {
        /* RFC 7505: this domain accepts no mail. */
        if (q->is_route) {
            tg->hard = true;
            return;
        }
        set_fail(q, NH_HARD, tg->name, "MX", "null MX", "5.1.10");
        return;
    }
    if (n == 0) {
        tg->implicit = true; /* RFC 5321 5.1: the domain itself */
        tg->nhosts = 1;
        str_copy(tg->hosts[0].name, sizeof(tg->hosts[0].name), tg->name);
        tg->hosts[0].port = tg->port;
    }
    for (size_t i = 0; i < n; i++) {
        if (mx[i].host[0] == '\0' || strchr(mx[i].host, '\\'))
            continue; /* a null MX among others, or a name we cannot use */
        struct host *h = &tg->hosts[tg->nhosts++];
        str_copy(h->name, sizeof(h->name), mx[i].host);
        h->pref = mx[i].pref;
        h->port = tg->port;
    }
    if (tg->nhosts == 0) {
        if (q->is_route)
            tg->hard = true;
        else
            set_fail(q, NH_HARD, tg->name, "MX", "no usable MX host", "5.1.2");
        return;
    }
    bool was = q->issuing;
    q->issuing = true;
    for (size_t i = 0; i < tg->nhosts; i++) {
        if (q->ip_pref != IPPREF_V6_ONLY)
            lookup(q, t, (int)i, DNS_T_A);
        else
            tg->hosts[i].answered++;
        if (q->ip_pref != IPPREF_V4_ONLY)
            lookup(q, t, (int)i, DNS_T_AAAA);
        else
            tg->hosts[i].answered++;
    }
    q->issuing = was;
}

struct addr_acc {
    struct host *h;
    int type;
};

static bool take_addr(void *arg, const struct dns_rr *rr)
{
    struct addr_acc *acc = arg;
    struct host *h = acc->h;
    if (rr->type == DNS_T_A && acc->type == DNS_T_A && h->n4 < ARRAY_LEN(h->v4))
        memcpy(&h->v4[h->n4++], rr->u.a, 4);
    else if (rr->type == DNS_T_AAAA && acc->type == DNS_T_AAAA &&
             h->n6 < ARRAY_LEN(h->v6))
        memcpy(&h->v6[h->n6++], rr->u.aaaa, 16);
    return true;
}

static void on_answer(void *arg, int rcode, void *pkt, int len, int sec,
                      char *why_bogus, int ratelimited)
{
    struct query *qq = arg;
    struct resolve_req *q = qq->q;
    (void)why_bogus;
    (void)ratelimited;
    q->pending--;
    if (q->finished) {
        /* A zombie: only waiting for its lookups to drain. */
        free(qq);
        if (q->pending == 0 && q->cancelled)
            req_free(q);
        return;
    }
    struct target *tg = &q->targets[qq->t];
    if (rcode == 0 && pkt != NULL) {
        /* The event API reports NXDOMAIN in the packet's header, not in
         * rcode: read it from there. */
        struct dns_msg_info info;
        char err[128];
        if (dns_wire_parse(pkt, (size_t)len, &info, NULL, NULL, err,
                           sizeof(err)) != 0)
            rcode = DNS_R_SERVFAIL;
        else
            rcode = (int)info.rcode;
    }
    const char *qtype = qq->type == DNS_T_MX  ? "MX"
                        : qq->type == DNS_T_A ? "A"
                                              : "AAAA";
    if (qq->h < 0 && q->is_route && (rcode != 0 || pkt == NULL)) {
        /* One route host failing leaves the others; remember why. */
        bool nx = rcode == DNS_R_NXDOMAIN;
        tg->hard |= nx;
        tg->temp |= !nx;
        str_copy(q->nh.qname, sizeof(q->nh.qname), tg->name);
        str_copy(q->nh.qtype, sizeof(q->nh.qtype), qtype);
        str_copy(q->nh.what, sizeof(q->nh.what), nx ? "NXDomain" : "ServFail");
    } else if (qq->h < 0) {
        if (rcode == DNS_R_NXDOMAIN)
            set_fail(q, NH_HARD, tg->name, qtype, "NXDomain", "5.1.2");
        else if (rcode != 0 || pkt == NULL)
            set_fail(q, NH_TEMP, tg->name, qtype, "ServFail", "4.4.3");
        else {
            tg->mx_secure = sec == 2;
            got_mx(q, qq->t, pkt, (size_t)len);
        }
    } else {
        struct host *h = &tg->hosts[qq->h];
        h->answered++;
        if (rcode == DNS_R_NXDOMAIN) {
            h->hard = true;
            if (tg->implicit)
                set_fail(q, NH_HARD, h->name, qtype, "NXDomain", "5.1.2");
        } else if (rcode != 0 || pkt == NULL) {
            h->temp = true;
        } else {
            struct addr_acc acc = {h, qq->type};
            char err[128];
            if (dns_wire_parse(pkt, (size_t)len, NULL, take_addr, &acc, err,
                               sizeof(err)) != 0)
                h->temp = true;
            else if (qq->type == DNS_T_A)
                h->secure4 = sec == 2;
            else
                h->secure6 = sec == 2;
        }
    }
    free(qq);
    if (q->nh.status == NH_HARD && !tg->implicit && !q->is_route)
        finish(q);
    else
        check_done(q);
}

/* ---- requests ---- */

struct resolve_req *resolve_nexthop(struct resolver *r, const char *domain,
                                    const struct conf_route *route,
                                    int ip_preference, resolve_cb cb, void *arg)
{
    struct resolve_req *q = xcalloc(1, sizeof(*q));
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->ip_pref = ip_preference;
    q->timer = evtimer_new(r->base, on_timeout, q);
    q->done_ev = evtimer_new(r->base, on_done, q);
    if (route && route->kind == ROUTE_HOSTS) {
        q->is_route = true;
        size_t n = route->nhosts < MAX_TARGETS ? route->nhosts : MAX_TARGETS;
        q->targets = xcalloc(n, sizeof(*q->targets));
        for (size_t i = 0; i < n; i++) {
            struct target *tg = &q->targets[i];
            const struct conf_route_host *rh = &route->hosts[i];
            str_copy(tg->name, sizeof(tg->name), rh->host);
            tg->port = rh->port;
            tg->pri = rh->pri;
            tg->literal = rh->is_ip;
        }
        q->ntargets = n;
        /* Lowest priority first, ties shuffled per request (the
         * appliance spreads equal priorities per connection). */
        for (size_t i = n; i > 1; i--) {
            size_t j = (size_t)random() % i;
            struct target t = q->targets[i - 1];
            q->targets[i - 1] = q->targets[j];
            q->targets[j] = t;
        }
        for (size_t i = 1; i < n; i++)
            for (size_t j = i;
                 j > 0 && q->targets[j - 1].pri > q->targets[j].pri; j--) {
                struct target t = q->targets[j];
                q->targets[j] = q->targets[j - 1];
                q->targets[j - 1] = t;
            }
    } else {
        q->targets = xcalloc(1, sizeof(*q->targets));
        str_copy(q->targets[0].name, sizeof(q->targets[0].name), domain);
        q->targets[0].port = 25;
        q->ntargets = 1;
    }
    struct timeval tv = {(time_t)r->timeout, 0};
    evtimer_add(q->timer, &tv);
    q->issuing = true;
    for (size_t i = 0; i < q->ntargets; i++) {
        struct target *tg = &q->targets[i];
        if (tg->literal) {
            struct host *h = &tg->hosts[0];
            tg->nhosts = 1;
            str_copy(h->name, sizeof(h->name), tg->name);
            h->port = tg->port;
            h->pref = 0;
            if (inet_pton(AF_INET, tg->name, &h->v4[0]) == 1)
                h->n4 = 1;
            else if (inet_pton(AF_INET6, tg->name, &h->v6[0]) == 1)
                h->n6 = 1;
            continue;
        }
        lookup(q, i, -1, DNS_T_MX);
    }
    q->issuing = false;
    check_done(q);
    return q;
}

void resolve_cancel(struct resolve_req *q)
{
    if (q == NULL)
        return;
    q->cancelled = true;
    if (!q->finished) {
        q->finished = true;
        evtimer_del(q->timer);
    }
    evtimer_del(q->done_ev);
    if (q->pending == 0)
        req_free(q);
}

/* ---- single lookups ---- */

struct dns_lookup {
    struct dns_lookup *next, **prevp; /* in r->lookups */
    struct resolver *r;
    dnsl_cb cb;
    void *arg;
    int type;
    bool in_flight; /* libunbound still holds our pointer */
    bool finished;  /* result decided (or cancelled) */
    bool cancelled;
    struct event *timer;
    struct event *done_ev;
    struct dnsl_result res;
};

static void lookup_free(struct dns_lookup *l)
{
    *l->prevp = l->next;
    if (l->next)
        l->next->prevp = l->prevp;
    event_free(l->timer);
    event_free(l->done_ev);
    free(l);
}

static void lookup_done(evutil_socket_t fd, short what, void *arg)
{
    struct dns_lookup *l = arg;
    (void)fd;
    (void)what;
    if (!l->cancelled)
        l->cb(l->arg, &l->res);
    l->cancelled = true;
    if (!l->in_flight)
        lookup_free(l);
}

static void lookup_finish(struct dns_lookup *l)
{
    if (l->finished)
        return;
    l->finished = true;
    evtimer_del(l->timer);
    struct timeval now = {0, 0};
    evtimer_add(l->done_ev, &now);
}

static void lookup_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct dns_lookup *l = arg;
    (void)fd;
    (void)what;
    l->res.status = DNSL_TEMP;
    lookup_finish(l);
}

static bool take_record(void *arg, const struct dns_rr *rr)
{
    struct dns_lookup *l = arg;
    struct dnsl_result *res = &l->res;
    if (rr->type != l->type)
        return true; /* the CNAME chain on the way */
    res->nrecords++;
    if (rr->type == DNS_T_A && res->n4 < DNSL_MAX_ADDRS)
        memcpy(&res->v4[res->n4++], rr->u.a, 4);
    else if (rr->type == DNS_T_AAAA && res->n6 < DNSL_MAX_ADDRS)
        memcpy(&res->v6[res->n6++], rr->u.aaaa, 16);
    else if ((rr->type == DNS_T_PTR || rr->type == DNS_T_CNAME) &&
             res->nnames < DNSL_MAX_NAMES &&
             strlen(rr->u.name) < sizeof(res->names[0]))
        str_copy(res->names[res->nnames++], sizeof(res->names[0]), rr->u.name);
    else if (rr->type == DNS_T_TLSA && res->ntlsa < DNSL_MAX_TLSA) {
        struct dnsl_tlsa *t = &res->tlsa[res->ntlsa++];
        t->usage = rr->u.tlsa.usage;
        t->selector = rr->u.tlsa.selector;
        t->mtype = rr->u.tlsa.mtype;
        t->too_long = rr->u.tlsa.len > sizeof(t->data);
        t->len = t->too_long ? 0 : (uint16_t)rr->u.tlsa.len;
        if (t->len)
            memcpy(t->data, rr->u.tlsa.data, t->len);
    }
    return true;
}

static void lookup_answer(void *arg, int rcode, void *pkt, int len, int sec,
                          char *why_bogus, int ratelimited)
{
    struct dns_lookup *l = arg;
    (void)ratelimited;
    l->in_flight = false;
    if (l->finished) {
        /* Timed out or cancelled: only waiting for this answer. */
        if (l->cancelled)
            lookup_free(l);
        return;
    }
    struct dnsl_result *res = &l->res;
    struct dns_msg_info info;
    char err[128];
    if (rcode != 0 || pkt == NULL ||
        dns_wire_parse(pkt, (size_t)len, &info, take_record, l, err,
                       sizeof(err)) != 0) {
        memset(res, 0, sizeof(*res));
        res->status = DNSL_TEMP;
    } else if (info.rcode == DNS_R_NXDOMAIN) {
        res->status = DNSL_NXDOMAIN;
    } else if (info.rcode != DNS_R_NOERROR) {
        memset(res, 0, sizeof(*res));
        res->status = DNSL_TEMP;
    } else {
        res->status = res->nrecords ? DNSL_OK : DNSL_NODATA;
    }
    res->secure = sec == 2 && res->status != DNSL_TEMP;
    if (sec == 1) {
        /* Bogus: whatever came back is not to be used. */
        memset(res, 0, sizeof(*res));
        res->status = DNSL_TEMP;
        res->bogus = true;
        str_copy(res->why_bogus, sizeof(res->why_bogus),
                 why_bogus ? why_bogus : "validation failed");
    }
    lookup_finish(l);
}

struct dns_lookup *resolver_lookup(struct resolver *r, const char *name,
                                   int type, dnsl_cb cb, void *arg)
{
    struct dns_lookup *l = xcalloc(1, sizeof(*l));
    l->r = r;
    l->cb = cb;
    l->arg = arg;
    l->type = type;
    l->timer = evtimer_new(r->base, lookup_timeout, l);
    l->done_ev = evtimer_new(r->base, lookup_done, l);
    l->next = r->lookups;
    if (l->next)
        l->next->prevp = &l->next;
    l->prevp = &r->lookups;
    r->lookups = l;
    struct timeval tv = {(time_t)r->timeout, 0};
    evtimer_add(l->timer, &tv);
    r->queries++;
    l->in_flight = true;
    if (ub_resolve_event(r->ub, name, type, 1, l, lookup_answer, NULL) != 0) {
        /* Not sent (a name libunbound refuses, no memory). */
        l->in_flight = false;
        l->res.status = DNSL_TEMP;
        lookup_finish(l);
    }
    return l;
}

void resolver_lookup_cancel(struct dns_lookup *l)
{
    if (l == NULL)
        return;
    l->cancelled = true;
    if (!l->finished) {
        l->finished = true;
        evtimer_del(l->timer);
    }
    evtimer_del(l->done_ev);
    if (!l->in_flight)
        lookup_free(l);
}

static void lookups_free_all(struct resolver *r)
{
    while (r->lookups)
        lookup_free(r->lookups);
}
