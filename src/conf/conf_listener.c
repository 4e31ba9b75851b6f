/*
 * conf_listener.c - the listener "NAME" { } and rat "LISTENER" { } blocks.
 *
 * Listeners: 1 to CONF_MAX_LISTENERS, names unique and well-formed, no
 * two on the same address (a wildcard clashes with any address of its
 * family on the same port), relay_senders only on private listeners.
 * RATs: one per public listener, rows kept in order, patterns checked by
 * rat_pattern_check(), duplicates refused, nothing after "ALL"; a table
 * without "ALL" gets an implicit final ALL = reject row at the rat
 * block's position (at the listener's if it has no rat block).
 */
#include "conf/conf_node.h"
#include "policy/rat.h"

#include <stdlib.h>
#include <strings.h>

#define CONF_MAX_LISTENERS 64

/* Per listener while building: the nodes errors point at. */
struct lnodes {
    const struct conf_node *block;
    const struct conf_node *address;
    const struct conf_node *rat;
};

void conf_listener_clear(struct conf_listener *l)
{
    free(l->name);
    free(l->address);
    free(l->hostname);
    free(l->smtp_auth_profile);
    free(l->tls_certificate);
    free(l->tls_key);
    free(l->tls_ciphers);
    free(l->tls_client_ca);
    conf_strings_free(&l->relay_sender_count, &l->relay_senders);
    conf_params_clear(&l->defaults);
    conf_hat_clear(l);
    for (size_t i = 0; i < l->rat_count; i++) {
        free(l->rat[i].pattern);
        free(l->rat[i].text);
        free(l->rat[i].file);
    }
    free(l->rat);
    free(l->file);
    memset(l, 0, sizeof(*l));
}


static const struct conf_node *
listener_node(const struct vctx *v, const struct lnodes *ln, const char *name)
{
    for (size_t i = 0; i < v->c->listener_count; i++)
        if (strcmp(v->c->listeners[i].name, name) == 0)
            return ln[i].block;
    return NULL;
}

/* The block and its name can become a listener. */
static bool listener_acceptable(struct vctx *v, const struct conf_node *n,
                                const struct lnodes *ln)
{
    char at[300];
    if (!conf_named_block_ok(v, n, "listener",
                        "listener \"NAME\" { type = public; address = "
                        "\"0.0.0.0:25\"; }"))
        return false;
    const char *why = conf_check_listener_name(n->label);
    if (why) {
        conf_diag_error(v->d, &n->label_pos, "listener name \"%s\" %s",
                        n->label, why);
        return false;
    }
    const struct conf_node *first = listener_node(v, ln, n->label);
    if (first) {
        conf_pos_str(&first->label_pos, at, sizeof(at));
        conf_diag_error(v->d, &n->label_pos,
                        "listener \"%s\" is already defined at %s", n->label,
                        at);
        return false;
    }
    return true;
}

/* Defaults, the block's keys, and the cross-key checks. */
static void listener_fill(struct vctx *v, const struct conf_node *n,
                          struct conf_listener *l, struct lnodes *ln)
{
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
    const struct conf_table *tab = &conf_table_listener;
    l->name = xstrdup(n->label);
    l->file = xstrdup(n->key_pos.file);
    l->line = n->key_pos.line;
    conf_block_defaults(tab, l);
    conf_where_set(v, "listener", l->name);
    conf_block_walk(v, n, tab, l, seen);
    const struct conf_node *relay =
        seen[conf_table_index(tab, "relay_senders")];
    if (relay && l->type == LISTENER_PUBLIC &&
        seen[conf_table_index(tab, "type")])
        conf_key_error(v, &relay->key_pos, "relay_senders",
                       "only private listeners take relay_senders (a public "
                       "listener's recipients are controlled by its rat)");
    if (l->hostname == NULL)
        l->hostname = xstrdup(v->c->hostname);
    ln->block = n;
    ln->address = l->address ? seen[conf_table_index(tab, "address")] : NULL;
    v->where[0] = '\0';
}

/* Would binding both fail? Same port and family, and the same address
 * or a wildcard on either side. */
static bool addresses_clash(const struct netaddr *a, const struct netaddr *b)
{
    char ia[NETADDR_STRLEN], ib[NETADDR_STRLEN];
    if (netaddr_port(a) != netaddr_port(b) ||
        a->ss.ss_family != b->ss.ss_family)
        return false;
    netaddr_ip_str(a, ia, sizeof(ia));
    netaddr_ip_str(b, ib, sizeof(ib));
    return strcmp(ia, ib) == 0 || strcmp(ia, "0.0.0.0") == 0 ||
           strcmp(ib, "0.0.0.0") == 0 || strcmp(ia, "::") == 0 ||
           strcmp(ib, "::") == 0;
}

static void check_addresses(struct vctx *v, const struct lnodes *ln)
{
    const struct moat_conf *c = v->c;
    char at[300];
    for (size_t i = 0; i < c->listener_count; i++) {
        for (size_t j = 0; ln[i].address && j < i; j++) {
            if (!ln[j].address ||
                !addresses_clash(&c->listeners[i].addr, &c->listeners[j].addr))
                continue;
            conf_pos_str(&ln[j].address->pos, at, sizeof(at));
            conf_diag_error(v->d, &ln[i].address->pos,
                            "listener \"%s\": "
                            "address %s clashes with listener \"%s\" "
                            "(%s at %s)",
                            c->listeners[i].name, c->listeners[i].address,
                            c->listeners[j].name, c->listeners[j].address, at);
            break;
        }
    }
}

static struct lnodes *listeners_collect(struct vctx *v)
{
    struct moat_conf *c = v->c;
    c->listeners = xcalloc(CONF_MAX_LISTENERS, sizeof(*c->listeners));
    struct lnodes *ln = xcalloc(CONF_MAX_LISTENERS, sizeof(*ln));
    for (const struct conf_node *n = v->root->child; n; n = n->next) {
        if (strcmp(n->key, "listener") != 0)
            continue;
        if (c->listener_count == CONF_MAX_LISTENERS) {
            conf_diag_error(v->d, &n->key_pos, "more than %d listeners",
                            CONF_MAX_LISTENERS);
            break;
        }
        if (!listener_acceptable(v, n, ln))
            continue;
        size_t i = c->listener_count++;
        listener_fill(v, n, &c->listeners[i], &ln[i]);
    }
    return ln;
}

/* ---- recipient access tables ---- */

/* The listener a rat block belongs to, or -1 (reported). */
static int rat_target(struct vctx *v, const struct conf_node *n)
{
    const char *names[CONF_MAX_LISTENERS];
    const struct moat_conf *c = v->c;
    if (!conf_named_block_ok(v, n, "rat",
                        "rat \"LISTENER\" { \"example.com\" = "
                        "accept; \"ALL\" = reject; }"))
        return -1;
    for (size_t i = 0; i < c->listener_count; i++) {
        names[i] = c->listeners[i].name;
        if (strcmp(names[i], n->label) != 0)
            continue;
        if (c->listeners[i].type == LISTENER_PUBLIC)
            return (int)i;
        conf_diag_error(v->d, &n->label_pos,
                        "rat \"%s\": listener \"%s\" is private; a rat "
                        "applies only to public listeners (private "
                        "listeners use relay_senders)",
                        n->label, n->label);
        return -1;
    }
    const char *s = conf_diag_full(v->d)
                        ? NULL
                        : conf_suggest(n->label, names, c->listener_count);
    conf_diag_error(v->d, &n->label_pos,
                    "rat \"%s\": no listener named \"%s\"%s%s%s", n->label,
                    n->label, s ? " (did you mean \"" : "", s ? s : "",
                    s ? "\"?)" : "");
    return -1;
}

/* code/action agree: 2xx accepts, 4xx/5xx reject. `cn` set the code. */
static void rat_code_check(struct vctx *v, const struct conf_node *cn,
                           const struct rat_entry *r)
{
    unsigned cls = r->code / 100;
    if (r->code == 0 || cn == NULL)
        return;
    if (cls == 3)
        conf_key_error(v, &cn->pos, "code", "%u: 3xx is not a final reply",
                       r->code);
    else if (cls == 2 && r->action != RAT_ACCEPT)
        conf_key_error(v, &cn->pos, "code",
                       "%u is a success code; it needs action = accept",
                       r->code);
    else if (cls >= 4 && r->action != RAT_REJECT)
        conf_key_error(v, &cn->pos, "code",
                       "%u is an error code; it needs action = reject",
                       r->code);
}

/* `"pattern" = accept` or `"pattern" { action = ...; code; text }`. */
static void rat_row(struct vctx *v, const struct conf_node *e,
                    struct rat_entry *r, const char *rat_where)
{
    const char *why = rat_pattern_check(e->key);
    if (why)
        conf_diag_error(v->d, &e->key_pos, "%s: bad pattern \"%s\": %s",
                        rat_where, e->key, why);
    if (e->type == NODE_SCALAR && !e->quoted &&
        (strcmp(e->str, "accept") == 0 || strcmp(e->str, "reject") == 0)) {
        r->action = strcmp(e->str, "accept") == 0 ? RAT_ACCEPT : RAT_REJECT;
    } else if (e->type == NODE_OBJECT && e->label == NULL) {
        str_printf(v->where, sizeof(v->where), "%s row \"%.64s\"", rat_where,
                   e->key);
        const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
        conf_block_walk(v, e, &conf_table_rat_row, r, seen);
        rat_code_check(v, seen[conf_table_index(&conf_table_rat_row, "code")],
                       r);
        v->where[0] = '\0';
    } else {
        conf_diag_error(v->d, e->type == NODE_SCALAR ? &e->pos : &e->key_pos,
                        "%s: row \"%s\" expects accept, reject or { action = "
                        "...; code = ...; text = \"...\"; }",
                        rat_where, e->key);
    }
    r->pattern = xstrdup(e->key);
    r->file = xstrdup(e->key_pos.file);
    r->line = e->key_pos.line;
}

struct rat_sort {
    const char *pattern;
    const struct conf_node *node;
    size_t order; /* row number: the first of equals comes first */
};

static int rat_sort_cmp(const void *a, const void *b)
{
    const struct rat_sort *x = a, *y = b;
    int r = strcasecmp(x->pattern, y->pattern);
    if (r)
        return r;
    return (x->order > y->order) - (x->order < y->order);
}

/* Duplicate patterns (case-insensitive), by sorting a copy. */
static void rat_duplicates(struct vctx *v, const struct conf_node *rat,
                           const char *rat_where)
{
    char at[300];
    struct rat_sort *s = xcalloc(rat->nchildren, sizeof(*s));
    size_t n = 0;
    for (const struct conf_node *e = rat->child; e; e = e->next) {
        s[n] = (struct rat_sort){e->key, e, n};
        n++;
    }
    qsort(s, n, sizeof(*s), rat_sort_cmp);
    for (size_t i = 1, first = 0; i < n; i++) {
        if (strcasecmp(s[i].pattern, s[first].pattern) != 0) {
            first = i;
            continue;
        }
        conf_pos_str(&s[first].node->key_pos, at, sizeof(at));
        conf_diag_error(v->d, &s[i].node->key_pos,
                        "%s: duplicate pattern \"%s\" (first at %s)", rat_where,
                        s[i].pattern, at);
    }
    free(s);
}

static void rat_add_all(struct conf_listener *l, const struct conf_pos *pos)
{
    struct rat_entry *r = &l->rat[l->rat_count++];
    r->pattern = xstrdup("ALL");
    r->action = RAT_REJECT;
    r->file = xstrdup(pos->file);
    r->line = pos->line;
}

/* The rows of one rat block into its listener. */
static void rat_fill(struct vctx *v, const struct conf_node *n,
                     struct conf_listener *l)
{
    char rat_where[100], at[300];
    const struct conf_node *all = NULL;
    str_printf(rat_where, sizeof(rat_where), "rat \"%s\"", l->name);
    l->rat = xcalloc(n->nchildren + 1, sizeof(*l->rat));
    for (const struct conf_node *e = n->child; e; e = e->next) {
        if (all) {
            conf_pos_str(&all->key_pos, at, sizeof(at));
            conf_diag_error(v->d, &e->key_pos,
                            "%s: row \"%s\" never "
                            "matches: \"ALL\" above it (at %s) matches "
                            "everything",
                            rat_where, e->key, at);
            break;
        }
        rat_row(v, e, &l->rat[l->rat_count++], rat_where);
        if (strcmp(e->key, "ALL") == 0)
            all = e;
    }
    rat_duplicates(v, n, rat_where);
    if (all == NULL)
        rat_add_all(l, &n->key_pos);
}

/* Every rat block, then the implicit table of public listeners
 * without one. */
static void rats_build(struct vctx *v, struct lnodes *ln)
{
    struct moat_conf *c = v->c;
    char at[300];
    for (const struct conf_node *n = v->root->child; n; n = n->next) {
        if (strcmp(n->key, "rat") != 0)
            continue;
        int i = rat_target(v, n);
        if (i >= 0 && ln[i].rat) {
            conf_pos_str(&ln[i].rat->label_pos, at, sizeof(at));
            conf_diag_error(v->d, &n->label_pos,
                            "rat \"%s\" is already defined at %s", n->label,
                            at);
        } else if (i >= 0) {
            ln[i].rat = n;
            rat_fill(v, n, &c->listeners[i]);
        }
    }
    for (size_t i = 0; i < c->listener_count; i++) {
        struct conf_listener *l = &c->listeners[i];
        if (l->type != LISTENER_PUBLIC || ln[i].rat)
            continue;
        l->rat = xcalloc(1, sizeof(*l->rat));
        rat_add_all(l, &ln[i].block->key_pos);
    }
}

void conf_sections_build(struct vctx *v)
{
    struct lnodes *ln = listeners_collect(v);
    const struct conf_node *n = v->root->child;
    while (n && strcmp(n->key, "listener") != 0)
        n = n->next;
    if (n == NULL)
        conf_diag_error(v->d, &v->root->pos,
                        "no listener defined: at least "
                        "one listener \"NAME\" { type = ...; address = ...; "
                        "} is required");
    check_addresses(v, ln);
    rats_build(v, ln);
    conf_hats_build(v);
    free(ln);
}
