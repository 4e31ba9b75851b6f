/*
 * conf_delivery.c - the delivery side of moat.conf: the delivery { } and
 * resolver { } blocks, and the smtp_route, destination and bounce_profile
 * named blocks.
 *
 * smtp_route "KEY" { hosts = [ ... ]; } takes the appliance's forms: KEY
 * is a domain, a ".subdomain" or ALL; each host is a name or an IP address
 * with an optional ":port" and "/pri=N" (IPv6 in brackets when a port
 * follows), or the whole list is [ "USEDNS" ] or [ "/dev/null" ].
 * destination "KEY" { } rows take a domain, ".subdomain" or "Default";
 * bounce_profile "NAME" { }; "Default" rows of both exist even when not
 * written, and a destination naming an unknown profile is refused.
 */
#include "conf/conf_node.h"
#include "conf/conf_params.h"
#include "core/buf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <strings.h>

#define CONF_MAX_ROUTES 40000 /* the appliance's limit, ALL included */
#define CONF_MAX_ROUTE_HOSTS 64
#define CONF_MAX_DESTS 10000
#define CONF_MAX_PROFILES 1000
#define CONF_MAX_RESOLVER_ADDRS 32
#define CONF_MAX_STUBS 1000

#define TOP(f) offsetof(struct moat_conf, f)
#define DST(f) offsetof(struct conf_dest, f)
#define BP(f) offsetof(struct conf_bounce_profile, f)
#define PATH_MAX_LEN 4095

static const char *const ip_prefs[] = {"ipv6_preferred", "ipv6_only",
                                       "ipv4_preferred", "ipv4_only", NULL};
static const char *const dest_tls_names[] = {
    "no", "preferred", "required", "preferred_verify", "required_verify",
    "required_verify_hosted", NULL};
static const char *const dest_dane_names[] = {"none", "opportunistic",
                                              "mandatory", NULL};
static const char *const dest_per_names[] = {"domain", "mx_ip", NULL};
static const char *const dest_bv_names[] = {"default", "no", "yes", NULL};

#define ENUM_NAME(arr, v)                                                     \
    ((v) >= 0 && (size_t)(v) < ARRAY_LEN(arr) - 1 ? (arr)[v] : "?")

const char *conf_dest_tls_name(int v)
{
    return ENUM_NAME(dest_tls_names, v);
}

const char *conf_dest_dane_name(int v)
{
    return ENUM_NAME(dest_dane_names, v);
}

const char *conf_dest_per_name(int v)
{
    return ENUM_NAME(dest_per_names, v);
}

const char *conf_dest_bv_name(int v)
{
    return ENUM_NAME(dest_bv_names, v);
}

const char *conf_ip_pref_name(int v)
{
    return ENUM_NAME(ip_prefs, v);
}

static const struct conf_key delivery_keys[] = {
    {.name = "suspended",
     .type = KT_BOOL,
     .def = "false",
     .off = TOP(delivery.suspended),
     .help = "hold every message in the queue (no delivery attempts)"},
    {.name = "helo",
     .type = KT_STRING,
     .min = 1,
     .max = 255,
     .off = TOP(delivery.helo),
     .check = conf_check_hostname,
     .help = "name sent in EHLO/HELO (default: hostname)"},
    {.name = "connect_timeout",
     .type = KT_TIME,
     .def = "30",
     .min = 1,
     .max = 600,
     .off = TOP(delivery.connect_timeout),
     .help = "how long a TCP connection to one address may take"},
    {.name = "greeting_timeout",
     .type = KT_TIME,
     .def = "300",
     .min = 1,
     .max = 3600,
     .off = TOP(delivery.greeting_timeout),
     .help = "how long to wait for the server's 220 greeting"},
    {.name = "command_timeout",
     .type = KT_TIME,
     .def = "300",
     .min = 1,
     .max = 3600,
     .off = TOP(delivery.command_timeout),
     .help = "how long to wait for the reply to EHLO, MAIL, RCPT, DATA"},
    {.name = "data_timeout",
     .type = KT_TIME,
     .def = "180",
     .min = 1,
     .max = 3600,
     .off = TOP(delivery.data_timeout),
     .help = "how long the server may take to read more message data"},
    {.name = "data_done_timeout",
     .type = KT_TIME,
     .def = "600",
     .min = 1,
     .max = 3600,
     .off = TOP(delivery.data_done_timeout),
     .help = "how long to wait for the reply after the final dot"},
    {.name = "max_recipients_per_transaction",
     .type = KT_UINT,
     .def = "100",
     .min = 1,
     .max = 10000,
     .off = TOP(delivery.max_rcpts_per_txn),
     .help = "recipients sent in one MAIL transaction; more go in another"},
    {.name = "tls_ca_file",
     .type = KT_STRING,
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = TOP(delivery.tls_ca_file),
     .help = "PEM bundle of CAs trusted for outbound TLS, besides the "
             "system store (/etc/ssl/certs)"},
    {.name = "tls_ciphers",
     .type = KT_STRING,
     .def = CONF_DEFAULT_CIPHERS,
     .min = 1,
     .max = 2000,
     .off = TOP(delivery.tls_ciphers),
     .help = "OpenSSL cipher string for outbound TLS 1.2 and below"},
    {.name = "tls_min_protocol",
     .type = KT_ENUM,
     .def = "TLSv1.2",
     .off = TOP(delivery.tls_min_protocol),
     .aux = conf_tls_protocols,
     .help = "lowest TLS version used outbound: TLSv1, TLSv1.1, TLSv1.2, "
             "TLSv1.3"},
};

const struct conf_table conf_table_delivery = {
    "delivery", delivery_keys, ARRAY_LEN(delivery_keys)};

/* "owner [ttl] [IN] DS|DNSKEY rdata": the shape unbound's add_ta takes;
 * libunbound checks the rest when the resolver is made. */
static const char *check_trust_anchor(const char *s)
{
    const char *ds = strstr(s, " DS ");
    const char *key = strstr(s, " DNSKEY ");
    if (ds == NULL && key == NULL)
        return "is not a DS or DNSKEY record (\"zone. DS tag alg digest-type "
               "digest\")";
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == ';')
            return "holds a control character or a comment";
    return NULL;
}

static const struct conf_key resolver_keys[] = {
    {.name = "resolv_conf",
     .type = KT_STRING,
     .def = "/etc/resolv.conf",
     .max = PATH_MAX_LEN,
     .off = TOP(resolver.resolv_conf),
     .help = "name servers to forward to, as the system has them (\"\" for "
             "none: resolve from the root, or through forwarders/stubs)"},
    {.name = "timeout",
     .type = KT_TIME,
     .def = "30",
     .min = 1,
     .max = 600,
     .off = TOP(resolver.timeout),
     .help = "how long a lookup may take before it counts as a temporary "
             "failure"},
    {.name = "trust_anchor_file",
     .type = KT_STRING,
     .def = "/usr/share/dns/root.key",
     .max = PATH_MAX_LEN,
     .off = TOP(resolver.trust_anchor_file),
     .help = "DNSSEC trust anchors (DS or DNSKEY lines) for the lookups "
             "of DANE destinations; \"\" for none"},
    {.name = "trust_anchors",
     .type = KT_STRINGS,
     .max = 64,
     .off = TOP(resolver.ntrust_anchors),
     .off2 = TOP(resolver.trust_anchors),
     .check = check_trust_anchor,
     .help = "more trust anchors, each a DS or DNSKEY record as a zone "
             "file writes it (\". DS 20326 8 2 E06D...\")"},
    {.name = "forwarders",
     .type = KT_SECTION,
     .help = "list of \"IP\" or \"IP@port\" name servers to send every "
             "query to (instead of resolv_conf)"},
    {.name = "stub_zones",
     .type = KT_SECTION,
     .help = "{ \"zone\" = [ \"IP@port\", ... ]; ... }: authoritative servers "
             "to ask for a zone (\".\" for the root)"},
};

const struct conf_table conf_table_resolver = {
    "resolver", resolver_keys, ARRAY_LEN(resolver_keys)};

static const struct conf_key route_keys[] = {
    {.name = "hosts",
     .type = KT_SECTION, /* required; checked by routes_build */
     .help = "list of \"host[:port][/pri=N]\", or [\"USEDNS\"], or "
             "[\"/dev/null\"]"},
};

const struct conf_table conf_table_route = {"smtp_route", route_keys,
                                            ARRAY_LEN(route_keys)};

static const struct conf_key dest_keys[] = {
    {.name = "concurrency",
     .type = KT_UINT,
     .def = "500",
     .min = 1,
     .max = 1000,
     .off = DST(concurrency),
     .help = "delivery connections open at once to this destination"},
    {.name = "messages_per_connection",
     .type = KT_UINT,
     .def = "50",
     .min = 1,
     .max = 1000,
     .off = DST(messages_per_connection),
     .help = "messages sent over one connection before it is closed"},
    {.name = "recipient_limit",
     .type = KT_UINT,
     .min = 0,
     .max = 1000000000,
     .off = DST(recipient_limit),
     .help = "recipients sent per recipient_period (not set: no limit)"},
    {.name = "recipient_period",
     .type = KT_TIME,
     .def = "60min",
     .min = 1,
     .max = 3600,
     .off = DST(recipient_period),
     .help = "the window recipient_limit counts over (1s to 60min)"},
    {.name = "limits_per",
     .type = KT_ENUM,
     .def = "domain",
     .off = DST(limits_per),
     .aux = dest_per_names,
     .help = "the limits count for the whole domain, or for each MX IP "
             "address (mx_ip)"},
    {.name = "tls",
     .type = KT_ENUM,
     .def = "no",
     .off = DST(tls),
     .aux = dest_tls_names,
     .help = "STARTTLS: no, preferred, required, preferred_verify, "
             "required_verify, required_verify_hosted"},
    {.name = "dane",
     .type = KT_ENUM,
     .def = "none",
     .off = DST(dane),
     .aux = dest_dane_names,
     .help = "DANE (RFC 7672): none, opportunistic, mandatory"},
    {.name = "bounce_verification",
     .type = KT_ENUM,
     .def = "no",
     .off = DST(bounce_verification),
     .aux = dest_bv_names,
     .help = "bounce verification address tagging: no or yes (default: "
             "the Default row's)"},
    {.name = "ip_preference",
     .type = KT_ENUM,
     .def = "ipv6_preferred",
     .off = DST(ip_preference),
     .aux = ip_prefs,
     .help = "ipv6_preferred, ipv6_only, ipv4_preferred or ipv4_only"},
    {.name = "bounce_profile",
     .type = KT_STRING,
     .def = "Default",
     .min = 1,
     .max = 64,
     .off = DST(bounce_profile),
     .check = conf_check_listener_name,
     .help = "bounce_profile used for this destination"},
};

const struct conf_table conf_table_dest = {"destination", dest_keys,
                                           ARRAY_LEN(dest_keys)};

static const struct conf_key profile_keys[] = {
    {.name = "max_retries",
     .type = KT_UINT,
     .def = "100",
     .min = 0,
     .max = 10000,
     .off = BP(max_retries),
     .help = "temporary failures before a recipient is hard bounced"},
    {.name = "max_queue_lifetime",
     .type = KT_TIME,
     .def = "259200",
     .min = 1,
     .max = 30 * 86400,
     .off = BP(max_queue_lifetime),
     .help = "time in the queue after which a recipient is hard bounced"},
    {.name = "initial_retry",
     .type = KT_TIME,
     .def = "60",
     .min = 1,
     .max = 86400,
     .off = BP(initial_retry),
     .help = "wait before the first retry (doubles each time)"},
    {.name = "max_retry_timeout",
     .type = KT_TIME,
     .def = "3600",
     .min = 1,
     .max = 86400,
     .off = BP(max_retry_timeout),
     .help = "longest wait between two retries"},
    {.name = "send_bounces",
     .type = KT_BOOL,
     .def = "yes",
     .off = BP(send_bounces),
     .help = "send a delivery status notification for hard bounces"},
    {.name = "max_bounce_copy",
     .type = KT_SIZE,
     .def = "10kb",
     .min = 0,
     .max = 10485760,
     .off = BP(max_bounce_copy),
     .help = "the whole original goes in a bounce when smaller than this, "
             "else its headers (cut at this size)"},
    {.name = "bounce_subject",
     .type = KT_STRING,
     .def = "Delivery Status Notification (Failure)",
     .min = 1,
     .max = 200,
     .off = BP(bounce_subject),
     .check = conf_check_reply_text,
     .help = "Subject: of bounce messages"},
};

const struct conf_table conf_table_profile = {
    "bounce_profile", profile_keys, ARRAY_LEN(profile_keys)};

/* ---- small helpers ---- */

static void str_list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void conf_delivery_clear(struct moat_conf *c)
{
    free(c->delivery.helo);
    free(c->delivery.tls_ca_file);
    free(c->delivery.tls_ciphers);
    free(c->resolver.resolv_conf);
    free(c->resolver.trust_anchor_file);
    conf_strings_free(&c->resolver.ntrust_anchors, &c->resolver.trust_anchors);
    str_list_free(c->resolver.forwarders, c->resolver.nforwarders);
    for (size_t i = 0; i < c->resolver.nstubs; i++) {
        free(c->resolver.stubs[i].zone);
        str_list_free(c->resolver.stubs[i].addrs, c->resolver.stubs[i].naddrs);
    }
    free(c->resolver.stubs);
    for (size_t i = 0; i < c->route_count; i++) {
        struct conf_route *r = &c->routes[i];
        for (size_t j = 0; j < r->nhosts; j++)
            free(r->hosts[j].host);
        free(r->hosts);
        free(r->domain);
    }
    free(c->routes);
    for (size_t i = 0; i < c->dest_count; i++) {
        free(c->dests[i].domain);
        free(c->dests[i].bounce_profile);
    }
    free(c->dests);
    for (size_t i = 0; i < c->profile_count; i++) {
        free(c->profiles[i].name);
        free(c->profiles[i].bounce_subject);
    }
    free(c->profiles);
}


/* First entry `key` of an object, or NULL. */
static const struct conf_node *child(const struct conf_node *obj,
                                     const char *key)
{
    for (const struct conf_node *n = obj->child; n; n = n->next)
        if (strcmp(n->key, key) == 0)
            return n;
    return NULL;
}

/* Is s a domain (or, when dot_ok, a ".domain")? NULL or why not. */
static const char *check_domain_key(const char *s, bool dot_ok)
{
    if (s[0] == '.') {
        if (!dot_ok)
            return "must not start with '.'";
        s++;
    }
    if (strlen(s) > 253)
        return "is longer than 253 characters";
    return conf_check_hostname(s);
}

/* Lower-case copy. */
static char *lower_dup(const char *s)
{
    char *d = xstrdup(s);
    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

/* "IP" or "IP@port": the resolver's server address form. */
static const char *check_server_addr(const char *s)
{
    char ip[INET6_ADDRSTRLEN + 1];
    unsigned char bin[16];
    const char *at = strchr(s, '@');
    size_t n = at ? (size_t)(at - s) : strlen(s);
    if (n == 0 || n >= sizeof(ip))
        return "is not \"IP\" or \"IP@port\"";
    memcpy(ip, s, n);
    ip[n] = '\0';
    if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, bin) != 1)
        return "is not an IP address (\"IP\" or \"IP@port\")";
    if (at) {
        uint64_t port;
        if (!parse_u64(at + 1, strlen(at + 1), &port) || port == 0 ||
            port > 65535)
            return "has a bad port (1-65535 after '@')";
    }
    return NULL;
}

/* A list node of strings checked by fn into a new array; false if any is
 * bad (reported). */
static bool string_list(struct vctx *v, const struct conf_node *n,
                        const char *what, size_t max,
                        const char *(*fn)(const char *), char ***out,
                        size_t *count)
{
    if (n->type != NODE_ARRAY) {
        conf_diag_error(v->d, &n->pos, "%s must be a list, e.g. [ \"...\" ]",
                        what);
        return false;
    }
    if (n->nchildren > max) {
        conf_diag_error(v->d, &n->pos, "%s: at most %zu entries", what, max);
        return false;
    }
    bool ok = true;
    char **v2 = xcalloc(n->nchildren + 1, sizeof(*v2));
    size_t k = 0;
    for (const struct conf_node *e = n->child; e; e = e->next) {
        const char *why = e->type != NODE_SCALAR ? "must be a string" : fn(e->str);
        if (why) {
            conf_diag_error(v->d, &e->pos, "%s: \"%s\" %s", what,
                            e->type == NODE_SCALAR ? e->str : "", why);
            ok = false;
            continue;
        }
        v2[k++] = xstrdup(e->str);
    }
    *out = v2;
    *count = k;
    return ok;
}

/* ---- resolver ---- */

static void resolver_build(struct vctx *v)
{
    struct conf_resolver *r = &v->c->resolver;
    const struct conf_node *blk = child(v->root, "resolver");
    if (blk == NULL || blk->type != NODE_OBJECT)
        return; /* absent, or already reported as the wrong kind */
    const struct conf_node *fw = child(blk, "forwarders");
    if (fw)
        string_list(v, fw, "resolver forwarders", CONF_MAX_RESOLVER_ADDRS,
                    check_server_addr, &r->forwarders, &r->nforwarders);
    const struct conf_node *st = child(blk, "stub_zones");
    if (st == NULL)
        return;
    if (st->type != NODE_OBJECT) {
        conf_diag_error(v->d, &st->pos,
                        "resolver stub_zones must be a block: "
                        "{ \"example.com\" = [ \"192.0.2.53\" ]; }");
        return;
    }
    if (st->nchildren > CONF_MAX_STUBS) {
        conf_diag_error(v->d, &st->pos, "stub_zones: at most %d zones",
                        CONF_MAX_STUBS);
        return;
    }
    r->stubs = xcalloc(st->nchildren + 1, sizeof(*r->stubs));
    for (const struct conf_node *z = st->child; z; z = z->next) {
        const char *why =
            strcmp(z->key, ".") == 0 ? NULL : check_domain_key(z->key, false);
        if (why) {
            conf_diag_error(v->d, &z->key_pos, "stub zone \"%s\" %s", z->key,
                            why);
            continue;
        }
        for (size_t i = 0; i < r->nstubs; i++)
            if (strcasecmp(r->stubs[i].zone, z->key) == 0) {
                conf_diag_error(v->d, &z->key_pos,
                                "stub zone \"%s\" is listed twice", z->key);
                why = "dup";
            }
        struct conf_stub_zone sz = {0};
        if (why ||
            !string_list(v, z, "stub zone servers", CONF_MAX_RESOLVER_ADDRS,
                         check_server_addr, &sz.addrs, &sz.naddrs)) {
            str_list_free(sz.addrs, sz.naddrs);
            continue;
        }
        if (sz.naddrs == 0) {
            conf_diag_error(v->d, &z->pos, "stub zone \"%s\" has no servers",
                            z->key);
            str_list_free(sz.addrs, sz.naddrs);
            continue;
        }
        sz.zone = lower_dup(z->key);
        r->stubs[r->nstubs++] = sz;
    }
}

/* ---- smtp_route ---- */

/* Parse "host[:port][/pri=N]" (IPv6 as "[addr]:port" or bare). */
static const char *parse_route_host(const char *s, struct conf_route_host *h)
{
    char buf[300];
    unsigned char bin[16];
    uint64_t num;
    if (strlen(s) >= sizeof(buf))
        return "is too long";
    str_copy(buf, sizeof(buf), s);
    h->port = 25;
    h->pri = 0;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = '\0';
        const char *p = slash + 1;
        if (strncasecmp(p, "pri=", 4) != 0 || !parse_u64(p + 4, strlen(p + 4), &num) ||
            num > 65535)
            return "has a bad priority (\"/pri=N\", N from 0 to 65535)";
        h->pri = (unsigned)num;
    }
    char *host = buf, *port = NULL;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (close == NULL)
            return "has '[' without ']'";
        *close = '\0';
        host = buf + 1;
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != '\0')
            return "has text after ']' (expected \":port\")";
        if (inet_pton(AF_INET6, host, bin) != 1)
            return "has a bad IPv6 address in brackets";
    } else {
        char *colon = strchr(buf, ':');
        if (colon && strchr(colon + 1, ':') == NULL) {
            *colon = '\0';
            port = colon + 1;
        }
    }
    if (port) {
        if (!parse_u64(port, strlen(port), &num) || num == 0 || num > 65535)
            return "has a bad port (1-65535)";
        h->port = (uint16_t)num;
    }
    h->is_ip = inet_pton(AF_INET, host, bin) == 1 ||
               inet_pton(AF_INET6, host, bin) == 1;
    if (!h->is_ip) {
        const char *why = conf_check_hostname(host);
        if (why)
            return "is not a host name or an IP address";
        if (strlen(host) > 253)
            return "is longer than 253 characters";
    }
    h->host = h->is_ip ? xstrdup(host) : lower_dup(host);
    return NULL;
}

/* The hosts of one route; false on error (reported). */
static bool route_hosts(struct vctx *v, const struct conf_node *list,
                        struct conf_route *r)
{
    if (list->type != NODE_ARRAY || list->nchildren == 0) {
        conf_diag_error(v->d, &list->pos,
                        "hosts must be a non-empty list, e.g. [ "
                        "\"mx.example.com:25/pri=10\" ]");
        return false;
    }
    if (list->nchildren > CONF_MAX_ROUTE_HOSTS) {
        conf_diag_error(v->d, &list->pos, "hosts: at most %d entries",
                        CONF_MAX_ROUTE_HOSTS);
        return false;
    }
    const struct conf_node *first = list->child;
    if (first->type == NODE_SCALAR && (strcmp(first->str, "USEDNS") == 0 ||
                                       strcmp(first->str, "/dev/null") == 0)) {
        if (list->nchildren != 1) {
            conf_diag_error(v->d, &first->pos,
                            "\"%s\" must be the route's only destination",
                            first->str);
            return false;
        }
        r->kind = first->str[0] == '/' ? ROUTE_DEVNULL : ROUTE_USEDNS;
        return true;
    }
    r->kind = ROUTE_HOSTS;
    r->hosts = xcalloc(list->nchildren, sizeof(*r->hosts));
    bool ok = true;
    for (const struct conf_node *e = list->child; e; e = e->next) {
        const char *why = "must be a string";
        if (e->type == NODE_SCALAR) {
            if (strcmp(e->str, "USEDNS") == 0 ||
                strcmp(e->str, "/dev/null") == 0)
                why = "must be the route's only destination";
            else
                why = parse_route_host(e->str, &r->hosts[r->nhosts]);
        }
        if (why) {
            conf_diag_error(v->d, &e->pos, "route host \"%s\" %s",
                            e->type == NODE_SCALAR ? e->str : "", why);
            ok = false;
            continue;
        }
        r->nhosts++;
    }
    return ok;
}

static void routes_build(struct vctx *v)
{
    struct moat_conf *c = v->c;
    size_t n = 0;
    for (const struct conf_node *x = v->root->child; x; x = x->next)
        n += strcmp(x->key, "smtp_route") == 0;
    if (n > CONF_MAX_ROUTES) {
        conf_diag_error(v->d, &v->root->pos, "more than %d smtp_route blocks",
                        CONF_MAX_ROUTES);
        return;
    }
    c->routes = xcalloc(n + 1, sizeof(*c->routes));
    for (const struct conf_node *x = v->root->child; x; x = x->next) {
        if (strcmp(x->key, "smtp_route") != 0 ||
            !conf_named_block_ok(v, x, "smtp_route",
                      "smtp_route \"example.com\" { hosts = [ "
                      "\"10.0.0.25\" ]; }"))
            continue;
        const char *why = strcmp(x->label, "ALL") == 0
                              ? NULL
                              : check_domain_key(x->label, true);
        if (why) {
            conf_diag_error(v->d, &x->label_pos,
                            "smtp_route \"%s\" %s (a domain, \".domain\" or "
                            "ALL)",
                            x->label, why);
            continue;
        }
        char *key = strcmp(x->label, "ALL") == 0 ? xstrdup("ALL")
                                                  : lower_dup(x->label);
        bool dup = false;
        for (size_t i = 0; i < c->route_count; i++)
            dup |= strcmp(c->routes[i].domain, key) == 0;
        if (dup) {
            conf_diag_error(v->d, &x->label_pos,
                            "smtp_route \"%s\" is defined twice", x->label);
            free(key);
            continue;
        }
        conf_where_set(v, "smtp_route", x->label);
        conf_block_walk(v, x, &conf_table_route, NULL, NULL);
        struct conf_route *r = &c->routes[c->route_count];
        r->domain = key;
        const struct conf_node *hosts = child(x, "hosts");
        c->route_count++;
        if (hosts)
            route_hosts(v, hosts, r);
        else
            conf_diag_error(v->d, &x->key_pos,
                            "missing required key 'hosts' in smtp_route "
                            "\"%s\"",
                            x->label);
        v->where[0] = '\0';
    }
}

/* ---- bounce_profile and destination ---- */

static void profiles_build(struct vctx *v)
{
    struct moat_conf *c = v->c;
    size_t n = 1;
    for (const struct conf_node *x = v->root->child; x; x = x->next)
        n += strcmp(x->key, "bounce_profile") == 0;
    if (n > CONF_MAX_PROFILES) {
        conf_diag_error(v->d, &v->root->pos, "more than %d bounce profiles",
                        CONF_MAX_PROFILES);
        return;
    }
    c->profiles = xcalloc(n, sizeof(*c->profiles));
    /* "Default" first, with the appliance's defaults unless written. */
    conf_block_defaults(&conf_table_profile, &c->profiles[0]);
    c->profiles[0].name = xstrdup("Default");
    c->profile_count = 1;
    bool default_seen = false;
    for (const struct conf_node *x = v->root->child; x; x = x->next) {
        if (strcmp(x->key, "bounce_profile") != 0 ||
            !conf_named_block_ok(v, x, "bounce_profile",
                      "bounce_profile \"NAME\" { max_retries = 100; }"))
            continue;
        const char *why = conf_check_listener_name(x->label);
        if (why) {
            conf_diag_error(v->d, &x->label_pos, "bounce_profile name \"%s\" %s",
                            x->label, why);
            continue;
        }
        struct conf_bounce_profile *p = NULL;
        if (strcmp(x->label, "Default") == 0 && !default_seen) {
            default_seen = true;
            p = &c->profiles[0];
        } else if (conf_profile_find(c, x->label)) {
            conf_diag_error(v->d, &x->label_pos,
                            "bounce_profile \"%s\" is defined twice", x->label);
            continue;
        } else {
            p = &c->profiles[c->profile_count++];
            conf_block_defaults(&conf_table_profile, p);
            p->name = xstrdup(x->label);
        }
        conf_where_set(v, "bounce_profile", x->label);
        conf_block_walk(v, x, &conf_table_profile, p, NULL);
        if (p->initial_retry > p->max_retry_timeout)
            conf_diag_error(v->d, &x->key_pos,
                            "bounce_profile \"%s\": initial_retry (%u s) is "
                            "longer than max_retry_timeout (%u s)",
                            x->label, p->initial_retry, p->max_retry_timeout);
        v->where[0] = '\0';
    }
}

/* One destination row from its block: keys written are stored, the
 * others come from the Default row (dflt NULL: this is the Default row,
 * the table's defaults stay). */
static void dest_fill(struct vctx *v, const struct conf_node *x,
                      struct conf_dest *d, const struct conf_dest *dflt)
{
    struct moat_conf *c = v->c;
    const struct conf_table *t = &conf_table_dest;
    conf_where_set(v, "destination", x->label);
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
    conf_block_walk(v, x, t, d, seen);
    int bv = conf_table_index(t, "bounce_verification");
    if (seen[bv] && d->bounce_verification == DEST_BV_DEFAULT) {
        if (dflt == NULL)
            conf_key_error(v, &seen[bv]->pos, "bounce_verification",
                           "the Default row says no or yes");
        seen[bv] = NULL; /* "default": as the Default row */
    }
    d->set = 0;
    for (size_t k = 0; k < t->count; k++) {
        if (seen[k])
            d->set |= 1u << k;
        else if (dflt)
            conf_value_copy(&t->keys[k], d, 0, dflt, 0);
    }
    int rl = conf_table_index(t, "recipient_limit");
    d->rcpt_limited = seen[rl] ? true : dflt ? dflt->rcpt_limited : false;
    const struct conf_node *bp =
        seen[conf_table_index(t, "bounce_profile")];
    if (bp && d->bounce_profile && !conf_profile_find(c, d->bounce_profile))
        conf_key_error(v, &bp->pos, "bounce_profile",
                       "no bounce_profile \"%s\" is defined",
                       d->bounce_profile);
    v->where[0] = '\0';
}

static void dests_build(struct vctx *v)
{
    struct moat_conf *c = v->c;
    size_t n = 1;
    for (const struct conf_node *x = v->root->child; x; x = x->next)
        n += strcmp(x->key, "destination") == 0;
    if (n > CONF_MAX_DESTS) {
        conf_diag_error(v->d, &v->root->pos, "more than %d destination blocks",
                        CONF_MAX_DESTS);
        return;
    }
    c->dests = xcalloc(n, sizeof(*c->dests));
    conf_block_defaults(&conf_table_dest, &c->dests[0]);
    c->dests[0].domain = xstrdup("Default");
    c->dest_count = 1;
    /* The Default row first, wherever it is written: the others take
     * what they do not say from it. */
    const struct conf_node *dflt = NULL;
    for (const struct conf_node *x = v->root->child; x; x = x->next) {
        if (strcmp(x->key, "destination") != 0 || x->label == NULL ||
            strcmp(x->label, "Default") != 0)
            continue;
        if (dflt) {
            conf_diag_error(v->d, &x->label_pos,
                            "destination \"%s\" is defined twice", x->label);
            continue;
        }
        dflt = x;
        if (conf_named_block_ok(v, x, "destination",
                    "destination \"Default\" { concurrency = 10; }"))
            dest_fill(v, x, &c->dests[0], NULL);
    }
    for (const struct conf_node *x = v->root->child; x; x = x->next) {
        if (strcmp(x->key, "destination") != 0 ||
            (x->label && strcmp(x->label, "Default") == 0) ||
            !conf_named_block_ok(v, x, "destination",
                      "destination \"example.com\" { concurrency = 10; }"))
            continue;
        const char *why = check_domain_key(x->label, true);
        if (why) {
            conf_diag_error(v->d, &x->label_pos,
                            "destination \"%s\" %s (a domain, \".domain\" or "
                            "Default)",
                            x->label, why);
            continue;
        }
        char *key = lower_dup(x->label);
        bool dup = false;
        for (size_t i = 1; i < c->dest_count && !dup; i++)
            dup = strcmp(c->dests[i].domain, key) == 0;
        if (dup) {
            conf_diag_error(v->d, &x->label_pos,
                            "destination \"%s\" is defined twice", x->label);
            free(key);
            continue;
        }
        struct conf_dest *d = &c->dests[c->dest_count++];
        conf_block_defaults(&conf_table_dest, d);
        d->domain = key;
        dest_fill(v, x, d, &c->dests[0]);
    }
}

void conf_delivery_build(struct vctx *v)
{
    if (v->c->delivery.helo == NULL && v->c->hostname)
        v->c->delivery.helo = xstrdup(v->c->hostname);
    resolver_build(v);
    routes_build(v);
    profiles_build(v);
    dests_build(v);
}

/* ---- lookups ---- */

/* Longest-match lookup over keys "domain", ".parent" (any depth). */
static const void *match_domain(const void *rows, size_t count, size_t size,
                                size_t key_off, const char *domain)
{
    const char *best_key = NULL;
    const void *best = NULL;
    size_t dlen = strlen(domain);
    for (size_t i = 0; i < count; i++) {
        const void *row = (const char *)rows + i * size;
        const char *key = *(char *const *)((const char *)row + key_off);
        size_t klen = strlen(key);
        bool hit;
        if (key[0] == '.')
            hit = dlen > klen - 1 && strcasecmp(domain + dlen - klen, key) == 0;
        else
            hit = strcasecmp(domain, key) == 0;
        if (!hit)
            continue;
        /* An exact entry beats any .parent; a longer .parent beats a
         * shorter one. */
        if (key[0] != '.')
            return row;
        if (best_key == NULL || klen > strlen(best_key)) {
            best_key = key;
            best = row;
        }
    }
    return best;
}

const struct conf_route *conf_route_find(const struct moat_conf *c,
                                         const char *domain)
{
    const struct conf_route *r =
        match_domain(c->routes, c->route_count, sizeof(*c->routes),
                     offsetof(struct conf_route, domain), domain);
    if (r)
        return r;
    for (size_t i = 0; i < c->route_count; i++)
        if (strcmp(c->routes[i].domain, "ALL") == 0)
            return &c->routes[i];
    return NULL;
}

const struct conf_dest *conf_dest_find(const struct moat_conf *c,
                                       const char *domain)
{
    if (c->dest_count > 1) {
        const struct conf_dest *d =
            match_domain(c->dests + 1, c->dest_count - 1, sizeof(*c->dests),
                         offsetof(struct conf_dest, domain), domain);
        if (d)
            return d;
    }
    return &c->dests[0];
}

const struct conf_bounce_profile *
conf_profile_find(const struct moat_conf *c, const char *name)
{
    for (size_t i = 0; i < c->profile_count; i++)
        if (strcmp(c->profiles[i].name, name) == 0)
            return &c->profiles[i];
    return NULL;
}

bool conf_dest_key_set(const struct conf_dest *d, const char *key)
{
    int k = conf_table_index(&conf_table_dest, key);
    return k >= 0 && (d->set & (1u << k)) != 0;
}

void conf_dest_write(const struct conf_dest *d, bool all, struct buf *out)
{
    const struct conf_table *t = &conf_table_dest;
    buf_printf(out, "destination \"%s\" {\n", d->domain);
    for (size_t k = 0; k < t->count; k++) {
        const char *key = t->keys[k].name;
        if (!(d->set & (1u << k)) &&
            !(all && (strcmp(key, "recipient_limit") != 0 || d->rcpt_limited)))
            continue;
        buf_printf(out, "    %s = ", key);
        if (strcmp(key, "concurrency") == 0)
            buf_printf(out, "%u", d->concurrency);
        else if (strcmp(key, "messages_per_connection") == 0)
            buf_printf(out, "%u", d->messages_per_connection);
        else if (strcmp(key, "recipient_limit") == 0)
            buf_printf(out, "%u", d->recipient_limit);
        else if (strcmp(key, "recipient_period") == 0)
            buf_printf(out, d->recipient_period % 60 ? "%us" : "%umin",
                       d->recipient_period % 60 ? d->recipient_period
                                                : d->recipient_period / 60);
        else if (strcmp(key, "limits_per") == 0)
            buf_puts(out, conf_dest_per_name(d->limits_per));
        else if (strcmp(key, "tls") == 0)
            buf_puts(out, conf_dest_tls_name(d->tls));
        else if (strcmp(key, "dane") == 0)
            buf_puts(out, conf_dest_dane_name(d->dane));
        else if (strcmp(key, "bounce_verification") == 0)
            buf_puts(out, conf_dest_bv_name(d->bounce_verification));
        else if (strcmp(key, "ip_preference") == 0)
            buf_puts(out, conf_ip_pref_name(d->ip_preference));
        else if (strcmp(key, "bounce_profile") == 0)
            buf_printf(out, "\"%s\"", d->bounce_profile);
        else
            buf_puts(out, "?");
        buf_puts(out, ";\n");
    }
    buf_puts(out, "}\n");
}
