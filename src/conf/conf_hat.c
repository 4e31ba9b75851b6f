/*
 * conf_hat.c - each listener's Host Access Table: the hat "LISTENER" { }
 * blocks over the appliance's predefined sender groups and mail flow
 * policies.
 *
 * The predefined tables are configuration text (below), parsed like the
 * file; a hat block is laid over them: a sender_group or
 * mail_flow_policy with a predefined name is walked after the predefined
 * one (so it changes what it sets), a new name adds one. Groups written
 * in the block come first in written order, predefined ones not written
 * follow, the implicit ALL (default_policy) is last. A policy's
 * parameters are then resolved: what the policy sets (predefined or
 * written), else the listener's value of the same key.
 */
#include "conf/conf_node.h"
#include "conf/conf_params.h"
#include "policy/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define CONF_MAX_POLICIES 100
#define CONF_MAX_GROUPS 1000
#define CONF_MAX_SENDERS 100000 /* entries in one group */
#define CONF_MAX_DNSLISTS 16    /* = HAT_MAX_ZONES of src/smtp */

const char *const conf_policy_tls_names[] = {"off", "preferred", "required",
                                             NULL};
const char *const conf_policy_auth_names[] = {"off", "preferred", "required",
                                              NULL};
static const char *const access_names[] = {"accept",    "relay",    "reject",
                                           "tcprefuse", "continue", NULL};
static const char *const dnsv_names[] = {"no_ptr", "ptr_tempfail",
                                         "ptr_mismatch", NULL};

const char *conf_access_name(int access)
{
    return access >= 0 && access < (int)ARRAY_LEN(access_names) - 1
               ? access_names[access]
               : "?";
}

const char *conf_access_rule(int access)
{
    static const char *const rules[] = {"ACCEPT", "RELAY", "REJECT",
                                        "TCPREFUSE", "CONTINUE"};
    return access >= 0 && access < (int)ARRAY_LEN(rules) ? rules[access] : "?";
}

const char *conf_tls_name(int tls)
{
    return tls >= 0 && tls < 3 ? conf_policy_tls_names[tls] : "?";
}

const char *conf_auth_name(int auth)
{
    return auth >= 0 && auth < 3 ? conf_policy_auth_names[auth] : "?";
}

const char *conf_dnsv_name(unsigned k)
{
    return k < ARRAY_LEN(dnsv_names) - 1 ? dnsv_names[k] : "?";
}

/* ---- the tables ---- */

#define POL(f) offsetof(struct conf_policy, f)
#define POL_PP(f) offsetof(struct conf_policy, p.f)
#define POL_DEF(x) NULL

/* A sender group while it is being read. */
struct sg_build {
    char *policy;
    size_t nsenders;
    char **senders;
    size_t ndnsv;
    char **dnsv;
    char *comment;
};
#define SGB(f) offsetof(struct sg_build, f)

struct hat_build {
    char *default_policy;
};
#define HB(f) offsetof(struct hat_build, f)

static const char *check_dnsv(const char *s)
{
    for (size_t i = 0; dnsv_names[i]; i++)
        if (strcmp(s, dnsv_names[i]) == 0)
            return NULL;
    return "is not no_ptr, ptr_tempfail or ptr_mismatch";
}

static const char *check_policy_name(const char *s)
{
    return conf_check_listener_name(s);
}

const char *conf_check_sender_entry(const char *s)
{
    static _Thread_local char why[160];
    struct sg_entry e;
    char err[128];
    if (sg_entry_parse(s, &e, err, sizeof(err)))
        return NULL;
    str_copy(why, sizeof(why), err);
    return why;
}

static const struct conf_key policy_keys[] = {
    {.name = "access",
     .type = KT_ENUM,
     .off = POL(access),
     .aux = access_names,
     .help = "accept, relay, reject, tcprefuse or continue (required for "
             "a new policy)"},
    CONF_POLICY_PARAM_KEYS(POL_PP, POL_DEF),
};

const struct conf_table conf_table_policy = {"mail_flow_policy", policy_keys,
                                             ARRAY_LEN(policy_keys)};

static const struct conf_key group_keys[] = {
    {.name = "policy",
     .type = KT_STRING,
     .min = 1,
     .max = 64,
     .off = SGB(policy),
     .check = check_policy_name,
     .help = "the mail flow policy of hosts in this group (required for "
             "a new group)"},
    {.name = "senders",
     .type = KT_STRINGS,
     .max = CONF_MAX_SENDERS,
     .off = SGB(nsenders),
     .off2 = SGB(senders),
     .check = conf_check_sender_entry,
     .help = "addresses, networks, ranges, host names, .domains, "
             "dnslist[zone], sbrs[none] or ALL"},
    {.name = "dns_verification",
     .type = KT_STRINGS,
     .max = 3,
     .off = SGB(ndnsv),
     .off2 = SGB(dnsv),
     .check = check_dnsv,
     .help = "also match hosts failing these checks: no_ptr, ptr_tempfail, "
             "ptr_mismatch"},
    {.name = "comment",
     .type = KT_STRING,
     .min = 0,
     .max = 200,
     .off = SGB(comment),
     .help = "a note for the administrator, shown by moatctl hat"},
};

const struct conf_table conf_table_sender_group = {"sender_group", group_keys,
                                                   ARRAY_LEN(group_keys)};

static const struct conf_key hat_keys[] = {
    {.name = "sender_group",
     .type = KT_SECTION,
     .help = "sender_group \"NAME\" { ... }: hosts and their policy"},
    {.name = "mail_flow_policy",
     .type = KT_SECTION,
     .help = "mail_flow_policy \"NAME\" { ... }: an access rule and limits"},
    {.name = "default_policy",
     .type = KT_STRING,
     .min = 1,
     .max = 64,
     .off = HB(default_policy),
     .help = "the policy of hosts no group matches (the ALL row)"},
};

const struct conf_table conf_table_hat = {"hat", hat_keys, ARRAY_LEN(hat_keys)};

/* ---- the predefined tables ---- */

static const char predefined_public[] =
    "mail_flow_policy \"TRUSTED\" {\n"
    "    access = accept;\n"
    "    max_messages_per_connection = 5000;\n"
    "    max_recipients = 5000;\n"
    "    max_message_size = 100mb;\n"
    "    max_connections_per_ip = 600;\n"
    "    max_recipients_per_hour = 0;\n"
    "}\n"
    "mail_flow_policy \"BLOCKED\" { access = reject; }\n"
    "mail_flow_policy \"THROTTLED\" {\n"
    "    access = accept;\n"
    "    max_messages_per_connection = 10;\n"
    "    max_recipients = 20;\n"
    "    max_message_size = 1mb;\n"
    "    max_connections_per_ip = 10;\n"
    "    max_recipients_per_hour = 20;\n"
    "}\n"
    "mail_flow_policy \"ACCEPTED\" { access = accept; }\n"
    "sender_group \"ALLOWED_LIST\" { policy = \"TRUSTED\"; }\n"
    "sender_group \"BLOCKED_LIST\" { policy = \"BLOCKED\"; }\n"
    "sender_group \"SUSPECTLIST\" { policy = \"THROTTLED\"; }\n"
    "sender_group \"UNKNOWNLIST\" {\n"
    "    policy = \"ACCEPTED\";\n"
    "    senders = [\"sbrs[none]\"];\n"
    "}\n"
    "default_policy = \"ACCEPTED\";\n";

static const char predefined_private[] =
    "mail_flow_policy \"RELAYED\" {\n"
    "    access = relay;\n"
    "    max_recipients_per_hour = 0;\n"
    "}\n"
    "mail_flow_policy \"BLOCKED\" { access = reject; }\n"
    "sender_group \"RELAYLIST\" { policy = \"RELAYED\"; }\n"
    "default_policy = \"BLOCKED\";\n";

static void listener_auth(struct vctx *v, struct conf_listener *l);

/* Distinct DNS lists are looked up per connection; more than
 * CONF_MAX_DNSLISTS could not all be asked. */
static void hat_zone_count(struct vctx *v, const struct conf_listener *l,
                           const struct conf_node *hat)
{
    const char *zones[CONF_MAX_DNSLISTS + 1];
    size_t n = 0;
    for (size_t g = 0; g < l->ngroups; g++)
        for (size_t i = 0; i < l->groups[g].nsenders; i++) {
            const struct sg_entry *e = &l->groups[g].senders[i];
            bool seen = false;
            for (size_t k = 0; k < n && !seen; k++)
                seen = strcmp(zones[k], e->name) == 0;
            if (e->kind != SG_DNSLIST || seen)
                continue;
            if (n == CONF_MAX_DNSLISTS) {
                struct conf_pos pos = {l->file, l->line, 1};
                conf_diag_error(v->d, hat ? &hat->label_pos : &pos,
                                "hat \"%s\": more than %d different DNS "
                                "lists (dnslist[%s]); each connection asks "
                                "at most %d",
                                l->name, CONF_MAX_DNSLISTS, e->name,
                                CONF_MAX_DNSLISTS);
                return;
            }
            zones[n++] = e->name;
        }
}

/* ---- building ---- */

/* The named child blocks of kind `key` in a hat node, in order. */
static size_t named(const struct conf_node *hat, const char *key,
                    const struct conf_node **out, size_t max)
{
    size_t n = 0;
    for (const struct conf_node *e = hat ? hat->child : NULL; e; e = e->next)
        if (strcmp(e->key, key) == 0 && n < max)
            out[n++] = e;
    return n;
}

static const struct conf_node *find_named(const struct conf_node *const *a,
                                          size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (a[i]->label && strcmp(a[i]->label, name) == 0)
            return a[i];
    return NULL;
}

/* The user's named blocks of one kind: well-formed, unique, bounded.
 * Returns how many are usable; bad ones are reported and left out. */
static size_t user_blocks(struct vctx *v, const struct conf_node *hat,
                          const char *key, const char *example,
                          const struct conf_node **out, size_t max)
{
    size_t n = 0;
    char at[300];
    for (const struct conf_node *e = hat ? hat->child : NULL; e; e = e->next) {
        if (strcmp(e->key, key) != 0)
            continue;
        if (!conf_named_block_ok(v, e, key, example))
            continue;
        const char *why = check_policy_name(e->label);
        if (why) {
            conf_diag_error(v->d, &e->label_pos, "%s name \"%s\" %s", key,
                            e->label, why);
            continue;
        }
        const struct conf_node *first = find_named(out, n, e->label);
        if (first) {
            conf_pos_str(&first->label_pos, at, sizeof(at));
            conf_diag_error(v->d, &e->label_pos,
                            "%s \"%s\" is already defined at %s", key, e->label,
                            at);
            continue;
        }
        if (n == max) {
            conf_diag_error(v->d, &e->key_pos, "more than %zu %s blocks", max,
                            key);
            break;
        }
        out[n++] = e;
    }
    return n;
}

/* Walk the predefined block then the user's over one target; seen[i]
 * is set if either set key i. */
static void walk_both(struct vctx *v, const struct conf_table *tab,
                      const struct conf_node *pre, const struct conf_node *user,
                      void *target, const struct conf_node **seen)
{
    const struct conf_node *s2[CONF_MAX_TABLE_KEYS] = {0};
    memset(seen, 0, tab->count * sizeof(*seen));
    if (pre)
        conf_block_walk(v, pre, tab, target, seen);
    if (user) {
        conf_block_walk(v, user, tab, target, s2);
        for (size_t i = 0; i < tab->count; i++)
            if (s2[i])
                seen[i] = s2[i];
    }
}

static void where_in(struct vctx *v, const char *lis, const char *kind,
                     const char *name)
{
    str_printf(v->where, sizeof(v->where), "hat \"%.64s\" %s \"%.64s\"", lis,
               kind, name);
}

/* One policy: predefined and/or written; unset parameters from l. */
static void build_policy(struct vctx *v, struct conf_listener *l,
                         struct conf_policy *p, const char *name,
                         const struct conf_node *pre,
                         const struct conf_node *user)
{
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
    const struct conf_table *tab = &conf_table_policy;
    p->name = xstrdup(name);
    p->predefined = pre != NULL;
    p->access = -1;
    where_in(v, l->name, "mail_flow_policy", name);
    walk_both(v, tab, pre, user, p, seen);
    if (p->access < 0) {
        conf_diag_error(v->d, &user->key_pos,
                        "missing required key 'access' in %s (a new policy "
                        "says accept, relay, reject, tcprefuse or continue)",
                        v->where);
        p->access = HAT_REJECT;
    }
    for (size_t i = 0; i < tab->count; i++) {
        const struct conf_key *k = &tab->keys[i];
        if (seen[i] || strcmp(k->name, "access") == 0)
            continue;
        /* The listener's copy of the parameter: same place inside
         * struct conf_policy_params. */
        size_t to_params = offsetof(struct conf_listener, defaults);
        conf_value_copy(k, p, POL(p), l, to_params);
    }
    v->where[0] = '\0';
}

static size_t policy_index(const struct conf_listener *l, const char *name)
{
    for (size_t i = 0; i < l->npolicies; i++)
        if (strcmp(l->policies[i].name, name) == 0)
            return i;
    return (size_t)-1;
}

/* The policy named by `name` (set at node n), or report it. */
static size_t resolve_policy(struct vctx *v, const struct conf_listener *l,
                             const char *name, const struct conf_node *n,
                             const char *what)
{
    size_t i = policy_index(l, name);
    if (i != (size_t)-1)
        return i;
    const char *names[CONF_MAX_POLICIES];
    for (size_t k = 0; k < l->npolicies; k++)
        names[k] = l->policies[k].name;
    const char *s = conf_suggest(name, names, l->npolicies);
    conf_diag_error(v->d, &n->pos,
                    "%s: no mail_flow_policy \"%s\" on listener \"%s\"%s%s%s",
                    what, name, l->name, s ? " (did you mean \"" : "",
                    s ? s : "", s ? "\"?)" : "");
    return 0;
}

/* Find the node that set key `key` in a block (for error positions). */
static const struct conf_node *key_node(const struct conf_node *blk,
                                        const char *key)
{
    for (const struct conf_node *e = blk ? blk->child : NULL; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void build_group(struct vctx *v, struct conf_listener *l,
                        struct conf_sender_group *g, const char *name,
                        const struct conf_node *pre,
                        const struct conf_node *user)
{
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
    struct sg_build b = {0};
    g->name = xstrdup(name);
    g->predefined = pre != NULL;
    where_in(v, l->name, "sender_group", name);
    walk_both(v, &conf_table_sender_group, pre, user, &b, seen);
    if (b.policy == NULL) {
        conf_diag_error(v->d, &user->key_pos,
                        "missing required key 'policy' in %s", v->where);
    } else {
        const struct conf_node *pn = key_node(user, "policy");
        g->policy = resolve_policy(v, l, b.policy, pn ? pn : user, v->where);
    }
    g->senders = xcalloc(b.nsenders + 1, sizeof(*g->senders));
    g->sender_text = b.senders;
    b.senders = NULL;
    for (size_t i = 0; i < b.nsenders; i++) {
        /* Checked by conf_check_sender_entry already. */
        if (sg_entry_parse(g->sender_text[i], &g->senders[i], NULL, 0) &&
            g->senders[i].kind == SG_DNSLIST)
            l->hat_uses_dnslist = true;
    }
    g->nsenders = b.nsenders;
    for (size_t i = 0; i < b.ndnsv; i++)
        for (unsigned k = 0; dnsv_names[k]; k++)
            if (strcmp(b.dnsv[i], dnsv_names[k]) == 0)
                g->dns_verification |= 1u << k;
    g->comment = b.comment;
    free(b.policy);
    conf_strings_free(&b.ndnsv, &b.dnsv);
    v->where[0] = '\0';
}

/* Build listener l's table from the predefined text and its hat block
 * (NULL if none). */
static void hat_build(struct vctx *v, struct conf_listener *l,
                      const struct conf_node *pre_root,
                      const struct conf_node *hat)
{
    const struct conf_node *pp[8], *pg[8];
    const struct conf_node **up = xcalloc(CONF_MAX_POLICIES, sizeof(*up));
    const struct conf_node **ug = xcalloc(CONF_MAX_GROUPS, sizeof(*ug));
    size_t npp = named(pre_root, "mail_flow_policy", pp, ARRAY_LEN(pp));
    size_t npg = named(pre_root, "sender_group", pg, ARRAY_LEN(pg));
    size_t nup = user_blocks(v, hat, "mail_flow_policy",
                             "mail_flow_policy \"NAME\" { access = accept; }",
                             up, CONF_MAX_POLICIES - npp);
    size_t nug = user_blocks(v, hat, "sender_group",
                             "sender_group \"NAME\" { policy = \"ACCEPTED\"; "
                             "senders = [\"192.0.2.0/24\"]; }",
                             ug, CONF_MAX_GROUPS - npg);

    /* Policies: predefined (changed where written), then new ones. */
    l->policies = xcalloc(npp + nup, sizeof(*l->policies));
    for (size_t i = 0; i < npp; i++)
        build_policy(v, l, &l->policies[l->npolicies++], pp[i]->label, pp[i],
                     find_named(up, nup, pp[i]->label));
    for (size_t i = 0; i < nup; i++)
        if (!find_named(pp, npp, up[i]->label))
            build_policy(v, l, &l->policies[l->npolicies++], up[i]->label, NULL,
                         up[i]);

    /* Groups: written ones in order, then predefined ones not written. */
    l->groups = xcalloc(nug + npg, sizeof(*l->groups));
    for (size_t i = 0; i < nug; i++)
        build_group(v, l, &l->groups[l->ngroups++], ug[i]->label,
                    find_named(pg, npg, ug[i]->label), ug[i]);
    for (size_t i = 0; i < npg; i++)
        if (!find_named(ug, nug, pg[i]->label))
            build_group(v, l, &l->groups[l->ngroups++], pg[i]->label, pg[i],
                        NULL);

    /* The ALL row. */
    struct hat_build hb = {0};
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS];
    str_printf(v->where, sizeof(v->where), "hat \"%.64s\"", l->name);
    walk_both(v, &conf_table_hat, pre_root, hat, &hb, seen);
    const struct conf_node *dn =
        seen[conf_table_index(&conf_table_hat, "default_policy")];
    l->default_policy =
        resolve_policy(v, l, hb.default_policy, dn, "default_policy");
    if (l->policies[l->default_policy].access == HAT_CONTINUE)
        conf_diag_error(v->d, &dn->pos,
                        "default_policy: \"%s\" says continue, but no group "
                        "follows the ALL row",
                        hb.default_policy);
    free(hb.default_policy);
    v->where[0] = '\0';
    free(up);
    free(ug);
    /* The ceiling before the verdict: the largest limit of a policy that
     * lets a session go on (reject and tcprefuse sessions end at once). */
    for (size_t i = 0; i < l->npolicies; i++) {
        const struct conf_policy *p = &l->policies[i];
        bool goes_on = p->access == HAT_ACCEPT || p->access == HAT_RELAY ||
                       (p->access == HAT_REJECT && v->c->hat_reject_at_rcpt);
        if (goes_on &&
            p->p.max_connections_per_ip > l->max_connections_per_ip_any)
            l->max_connections_per_ip_any = p->p.max_connections_per_ip;
    }
    if (l->max_connections_per_ip_any == 0)
        l->max_connections_per_ip_any = l->defaults.max_connections_per_ip;
    hat_zone_count(v, l, hat);
}

/* The listener a hat block belongs to, or -1 (reported). */
static int hat_target(struct vctx *v, const struct conf_node *n)
{
    const char *names[64];
    const struct moat_conf *c = v->c;
    if (!conf_named_block_ok(v, n, "hat",
                             "hat \"LISTENER\" { sender_group \"NAME\" { "
                             "policy = \"RELAYED\"; senders = [...]; } }"))
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < c->listener_count; i++) {
        if (strcmp(c->listeners[i].name, n->label) == 0)
            return (int)i;
        if (k < ARRAY_LEN(names))
            names[k++] = c->listeners[i].name;
    }
    const char *s =
        conf_diag_full(v->d) ? NULL : conf_suggest(n->label, names, k);
    conf_diag_error(v->d, &n->label_pos,
                    "hat \"%s\": no listener named \"%s\"%s%s%s", n->label,
                    n->label, s ? " (did you mean \"" : "", s ? s : "",
                    s ? "\"?)" : "");
    return -1;
}

/* relay_senders is the predefined RELAYLIST group's senders. */
static void apply_relay_senders(struct vctx *v, struct conf_listener *l,
                                const struct conf_node *hat)
{
    if (l->relay_sender_count == 0)
        return;
    for (size_t i = 0; i < l->ngroups; i++) {
        struct conf_sender_group *g = &l->groups[i];
        if (strcmp(g->name, "RELAYLIST") != 0)
            continue;
        const struct conf_node *un = NULL;
        for (const struct conf_node *e = hat ? hat->child : NULL; e;
             e = e->next)
            if (strcmp(e->key, "sender_group") == 0 && e->label &&
                strcmp(e->label, "RELAYLIST") == 0)
                un = key_node(e, "senders");
        if (un) {
            conf_diag_error(v->d, &un->key_pos,
                            "hat \"%s\" sender_group \"RELAYLIST\": senders "
                            "are already given by the listener's "
                            "relay_senders; keep one of the two",
                            l->name);
            return;
        }
        conf_strings_free(&g->nsenders, &g->sender_text);
        free(g->senders);
        g->nsenders = l->relay_sender_count;
        g->sender_text = xcalloc(g->nsenders + 1, sizeof(char *));
        g->senders = xcalloc(g->nsenders + 1, sizeof(*g->senders));
        for (size_t k = 0; k < g->nsenders; k++) {
            g->sender_text[k] = xstrdup(l->relay_senders[k]);
            if (sg_entry_parse(g->sender_text[k], &g->senders[k], NULL, 0) &&
                g->senders[k].kind == SG_DNSLIST)
                l->hat_uses_dnslist = true;
        }
        return;
    }
}

void conf_hats_build(struct vctx *v)
{
    struct moat_conf *c = v->c;
    const struct conf_node **hats =
        xcalloc(c->listener_count + 1, sizeof(*hats));
    char at[300];
    for (const struct conf_node *n = v->root->child; n; n = n->next) {
        if (strcmp(n->key, "hat") != 0)
            continue;
        int i = hat_target(v, n);
        if (i < 0)
            continue;
        if (hats[i]) {
            conf_pos_str(&hats[i]->label_pos, at, sizeof(at));
            conf_diag_error(v->d, &n->label_pos,
                            "hat \"%s\" is already defined at %s", n->label,
                            at);
            continue;
        }
        str_printf(v->where, sizeof(v->where), "hat \"%.64s\"", n->label);
        hats[i] = n;
    }
    v->where[0] = '\0';
    struct conf_diag quiet = {0};
    struct conf_tree pub = {0}, priv = {0};
    if (!conf_parse_string(&pub, "(predefined public HAT)", predefined_public,
                           strlen(predefined_public), &quiet) ||
        !conf_parse_string(&priv, "(predefined private HAT)",
                           predefined_private, strlen(predefined_private),
                           &quiet))
        fatal("conf: the predefined host access tables do not parse");
    for (size_t i = 0; i < c->listener_count; i++) {
        struct conf_listener *l = &c->listeners[i];
        const struct conf_node *pre =
            l->type == LISTENER_PUBLIC ? pub.root : priv.root;
        hat_build(v, l, pre, hats[i]);
        if (l->type == LISTENER_PRIVATE)
            apply_relay_senders(v, l, hats[i]);
        listener_auth(v, l);
    }
    conf_tree_free(&pub);
    conf_tree_free(&priv);
    free(hats);
}

const struct conf_policy *conf_policy_find(const struct conf_listener *l,
                                           const char *name)
{
    size_t i = policy_index(l, name);
    return i == (size_t)-1 ? NULL : &l->policies[i];
}

void conf_params_clear(struct conf_policy_params *p)
{
    free(p->rate_limit_text);
    free(p->banner_text);
    free(p->banner_hostname);
    free(p->reject_text);
    free(p->sdv_malformed_text);
    free(p->sdv_nxdomain_text);
    free(p->sdv_tempfail_text);
    conf_strings_free(&p->ntls_mandatory, &p->tls_mandatory);
    memset(p, 0, sizeof(*p));
}

void conf_hat_clear(struct conf_listener *l)
{
    for (size_t i = 0; i < l->npolicies; i++) {
        free(l->policies[i].name);
        conf_params_clear(&l->policies[i].p);
    }
    free(l->policies);
    for (size_t i = 0; i < l->ngroups; i++) {
        struct conf_sender_group *g = &l->groups[i];
        free(g->name);
        free(g->senders);
        conf_strings_free(&g->nsenders, &g->sender_text);
        free(g->comment);
    }
    free(l->groups);
    l->policies = NULL;
    l->groups = NULL;
    l->npolicies = l->ngroups = 0;
}

/* ---- SMTP AUTH profiles ---- */

#define CONF_MAX_AUTH_PROFILES 100
#define AP(f) offsetof(struct conf_auth_profile, f)

static const struct conf_key auth_profile_keys[] = {
    {.name = "password_file",
     .type = KT_STRING,
     .min = 1,
     .max = 4095,
     .off = AP(password_file),
     .flags = KF_REQUIRED,
     .help = "file of user:crypt-hash lines (yescrypt, bcrypt, "
             "sha512-crypt, sha256-crypt)"},
};

const struct conf_table conf_table_auth_profile = {
    "smtp_auth_profile", auth_profile_keys, ARRAY_LEN(auth_profile_keys)};

void conf_auth_profiles_build(struct vctx *v)
{
    struct moat_conf *c = v->c;
    for (const struct conf_node *n = v->root->child; n; n = n->next) {
        if (strcmp(n->key, "smtp_auth_profile") != 0)
            continue;
        if (!conf_named_block_ok(v, n, "smtp_auth_profile",
                                 "smtp_auth_profile \"NAME\" { "
                                 "password_file = \"/etc/moat/passwd\"; }"))
            continue;
        const char *why = check_policy_name(n->label);
        if (why) {
            conf_diag_error(v->d, &n->label_pos,
                            "smtp_auth_profile name \"%s\" %s", n->label, why);
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < c->auth_profile_count && !dup; i++)
            dup = strcmp(c->auth_profiles[i].name, n->label) == 0;
        if (dup) {
            conf_diag_error(v->d, &n->label_pos,
                            "smtp_auth_profile \"%s\" is defined twice",
                            n->label);
            continue;
        }
        if (c->auth_profile_count == CONF_MAX_AUTH_PROFILES) {
            conf_diag_error(v->d, &n->key_pos,
                            "more than %d smtp_auth_profile blocks",
                            CONF_MAX_AUTH_PROFILES);
            break;
        }
        c->auth_profiles =
            xrealloc(c->auth_profiles,
                     (c->auth_profile_count + 1) * sizeof(*c->auth_profiles));
        struct conf_auth_profile *p =
            &c->auth_profiles[c->auth_profile_count++];
        memset(p, 0, sizeof(*p));
        p->name = xstrdup(n->label);
        conf_where_set(v, "smtp_auth_profile", n->label);
        conf_block_walk(v, n, &conf_table_auth_profile, p, NULL);
        v->where[0] = '\0';
        if (p->password_file == NULL)
            continue;
        char err[600];
        p->db = auth_db_load(p->password_file, err, sizeof(err));
        if (p->db == NULL) {
            conf_diag_error(v->d, &n->label_pos, "smtp_auth_profile \"%s\": %s",
                            n->label, err);
        }
    }
}

void conf_auth_profiles_clear(struct moat_conf *c)
{
    for (size_t i = 0; i < c->auth_profile_count; i++) {
        free(c->auth_profiles[i].name);
        free(c->auth_profiles[i].password_file);
        auth_db_free(c->auth_profiles[i].db);
    }
    free(c->auth_profiles);
    c->auth_profiles = NULL;
    c->auth_profile_count = 0;
}

/* A listener's smtp_auth_profile, and policies that need one; client
 * certificate verification needs tls_client_ca. */
static void listener_auth(struct vctx *v, struct conf_listener *l)
{
    for (size_t i = 0; i < l->npolicies && !l->tls_client_ca; i++)
        if (l->policies[i].p.tls_verify_client) {
            struct conf_pos pos = {l->file, l->line, 1};
            conf_diag_error(v->d, &pos,
                            "listener \"%s\": mail_flow_policy \"%s\" has "
                            "tls_verify_client but the listener has no "
                            "tls_client_ca to verify against",
                            l->name, l->policies[i].name);
            break;
        }
    const struct moat_conf *c = v->c;
    if (l->smtp_auth_profile) {
        for (size_t i = 0; i < c->auth_profile_count; i++)
            if (strcmp(c->auth_profiles[i].name, l->smtp_auth_profile) == 0)
                l->auth = &c->auth_profiles[i];
        if (l->auth == NULL) {
            struct conf_pos pos = {l->file, l->line, 1};
            conf_diag_error(v->d, &pos,
                            "listener \"%s\": no smtp_auth_profile \"%s\"",
                            l->name, l->smtp_auth_profile);
        }
        return;
    }
    for (size_t i = 0; i < l->npolicies; i++)
        if (l->policies[i].p.smtp_auth != POLICY_AUTH_OFF) {
            struct conf_pos pos = {l->file, l->line, 1};
            conf_diag_error(v->d, &pos,
                            "listener \"%s\": mail_flow_policy \"%s\" has "
                            "smtp_auth = %s but the listener has no "
                            "smtp_auth_profile",
                            l->name, l->policies[i].name,
                            conf_policy_auth_names[l->policies[i].p.smtp_auth]);
            return;
        }
}

/* ---- importing a table (moatctl hat import) ---- */

/* Byte offset of a line/column (1-based, columns in bytes) in text. */
static size_t offset_of(const char *text, size_t len, unsigned line,
                        unsigned col)
{
    size_t off = 0;
    for (unsigned l = 1; l < line && off < len; off++)
        if (text[off] == '\n')
            l++;
    off += col ? col - 1 : 0;
    return off < len ? off : len;
}

/* End of the block whose key starts at `start`: just past its closing
 * brace (and a ';' right after it). */
static size_t block_end(const char *file, const char *text, size_t len,
                        size_t start, struct conf_diag *d)
{
    struct lexer lx;
    struct conf_pos pos;
    lex_init(&lx, file, text + start, len - start, d);
    int depth = 0;
    size_t end = len;
    for (;;) {
        enum conf_tok t = lex_next(&lx, LEX_VALUE, &pos);
        if (t == TOK_EOF || t == TOK_ERROR)
            break;
        if (t == TOK_LBRACE)
            depth++;
        if (t == TOK_RBRACE && --depth == 0) {
            end = start + lx.at.off;
            struct lexer peek = lx;
            if (lex_next(&peek, LEX_VALUE, &pos) == TOK_SEMI)
                end = start + peek.at.off;
            break;
        }
    }
    lex_free(&lx);
    return end;
}

static char *read_small(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        str_printf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct buf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > CONF_MAX_FILE_SIZE) {
            str_printf(err, errlen, "%s: larger than %u MiB", path,
                       CONF_MAX_FILE_SIZE >> 20);
            fclose(f);
            buf_free(&b);
            return NULL;
        }
        buf_append(&b, chunk, n);
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        str_printf(err, errlen, "%s: read error", path);
        buf_free(&b);
        return NULL;
    }
    *len = b.len;
    char *s = xstrndup(b.len ? (const char *)b.data : "", b.len);
    buf_free(&b);
    return s;
}

bool conf_import_blocks(const char *conf_path, const char *key,
                        const char *label, const char *import_path,
                        struct buf *out, struct conf_errors *errs)
{
    struct conf_diag d = {.errs = errs};
    struct conf_pos whole = {import_path, 0, 0};
    char err[600];
    size_t ilen = 0, mlen = 0;
    char *itext = read_small(import_path, &ilen, err, sizeof(err));
    if (itext == NULL) {
        conf_diag_error(&d, &whole, "%s", err);
        return false;
    }
    /* The file holds only such blocks: exactly one for a label (hat
     * "LISTENER"), any number otherwise (destination rows). */
    struct conf_tree it = {0};
    bool ok = conf_parse_string(&it, import_path, itext, ilen, &d);
    size_t nblk = 0;
    for (const struct conf_node *b = ok ? it.root->child : NULL; b && ok;
         b = b->next) {
        nblk++;
        if (strcmp(b->key, key) != 0 || b->type != NODE_OBJECT ||
            b->label == NULL || (label && strcmp(b->label, label) != 0)) {
            if (label)
                conf_diag_error(&d, &b->key_pos,
                                "the file must hold exactly one block: %s "
                                "\"%s\" { ... } (what moatctl %s export "
                                "writes)",
                                key, label, key);
            else
                conf_diag_error(&d, &b->key_pos,
                                "the file may hold only %s \"NAME\" { ... } "
                                "blocks, not \"%s\"",
                                key, b->key);
            ok = false;
        }
    }
    if (ok && label && nblk != 1) {
        conf_diag_error(&d, &whole,
                        "the file must hold exactly one block: %s \"%s\" "
                        "{ ... }",
                        key, label);
        ok = false;
    }
    conf_tree_free(&it);
    struct conf_tree mt = {0};
    char *mtext = NULL;
    if (ok) {
        mtext = read_small(conf_path, &mlen, err, sizeof(err));
        if (mtext == NULL) {
            struct conf_pos mw = {conf_path, 0, 0};
            conf_diag_error(&d, &mw, "%s", err);
            ok = false;
        }
    }
    if (ok)
        ok = conf_parse_file(&mt, conf_path, &d);
    /* The blocks replaced, in file order: [start, end) each. */
    size_t nold = 0, cap = 0;
    size_t(*spans)[2] = NULL;
    for (const struct conf_node *n = ok ? mt.root->child : NULL; n && ok;
         n = n->next) {
        if (strcmp(n->key, key) != 0 || n->label == NULL ||
            (label && strcmp(n->label, label) != 0))
            continue;
        if (strcmp(n->key_pos.file, conf_path) != 0) {
            conf_diag_error(&d, &n->key_pos,
                            "%s \"%s\" is defined in an included file; "
                            "import it there by hand, or move it to %s",
                            key, n->label, conf_path);
            ok = false;
            break;
        }
        spans = xgrow(spans, &cap, nold + 1, sizeof(*spans));
        spans[nold][0] =
            offset_of(mtext, mlen, n->key_pos.line, n->key_pos.col);
        spans[nold][1] = block_end(conf_path, mtext, mlen, spans[nold][0], &d);
        nold++;
    }
    if (ok) {
        buf_reset(out);
        size_t at = 0;
        for (size_t k = 0; k < nold; k++) {
            buf_append(out, mtext + at, spans[k][0] - at);
            if (k == 0)
                buf_append(out, itext, ilen);
            at = spans[k][1];
            /* A removed block's line end goes with it. */
            if (k > 0 && at < mlen && mtext[at] == '\n')
                at++;
        }
        if (nold == 0) {
            buf_append(out, mtext, mlen);
            if (mlen && mtext[mlen - 1] != '\n')
                buf_putc(out, '\n');
            buf_putc(out, '\n');
            buf_append(out, itext, ilen);
        } else {
            buf_append(out, mtext + at, mlen - at);
        }
    }
    free(spans);
    conf_tree_free(&mt);
    free(mtext);
    free(itext);
    return ok && d.count == 0;
}

bool conf_import_hat(const char *conf_path, const char *listener,
                     const char *import_path, struct buf *out,
                     struct conf_errors *errs)
{
    return conf_import_blocks(conf_path, "hat", listener, import_path, out,
                              errs);
}
