/*
 * hat_admin.c - `moatctl hat list|detail|export` (see hat_admin.h).
 */
#include "admin/hat_admin.h"

#include <string.h>

static const struct conf_listener *find(const struct moat_conf *c,
                                        const char *name, struct buf *out)
{
    const struct conf_listener *l = conf_listener_find(c, name);
    if (l == NULL) {
        buf_printf(out, "no listener named \"%s\"; listeners:", name);
        for (size_t i = 0; i < c->listener_count; i++)
            buf_printf(out, " %s", c->listeners[i].name);
        buf_puts(out, "\n");
    }
    return l;
}

static void list_one(const struct conf_listener *l, struct buf *out)
{
    buf_printf(out, "Listener %s (%s)\n", l->name,
               l->type == LISTENER_PUBLIC ? "public" : "private");
    buf_printf(out, "%-5s %-20s %-16s %-9s %7s  %s\n", "Order", "Sender Group",
               "Policy", "Rule", "Senders", "Comment");
    for (size_t i = 0; i < l->ngroups; i++) {
        const struct conf_sender_group *g = &l->groups[i];
        const struct conf_policy *p = &l->policies[g->policy];
        buf_printf(out, "%-5zu %-20s %-16s %-9s %7zu  %s\n", i + 1, g->name,
                   p->name, conf_access_rule(p->access), g->nsenders,
                   g->comment ? g->comment : "");
    }
    const struct conf_policy *d = &l->policies[l->default_policy];
    buf_printf(out, "%-5s %-20s %-16s %-9s %7s  %s\n", "-", "ALL", d->name,
               conf_access_rule(d->access), "-", "hosts no group matches");
}

bool hat_admin_list(const struct moat_conf *c, const char *name,
                    struct buf *out)
{
    if (name && name[0]) {
        const struct conf_listener *l = find(c, name, out);
        if (l)
            list_one(l, out);
        return l != NULL;
    }
    for (size_t i = 0; i < c->listener_count; i++) {
        if (i)
            buf_puts(out, "\n");
        list_one(&c->listeners[i], out);
    }
    return true;
}

/* A string as the configuration writes it: quoted, escaped. */
static void quoted(struct buf *out, const char *s)
{
    buf_putc(out, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            buf_putc(out, '\\');
        buf_putc(out, *s);
    }
    buf_putc(out, '"');
}

static void text_param(struct buf *out, const char *ind, const char *key,
                       const char *v)
{
    if (v == NULL)
        return;
    buf_printf(out, "%s%s = ", ind, key);
    quoted(out, v);
    buf_puts(out, ";\n");
}

/* Every parameter of a policy, as configuration lines. */
static void params(struct buf *out, const char *ind,
                   const struct conf_policy_params *p)
{
    buf_printf(out, "%smax_message_size = %llu;\n", ind,
               (unsigned long long)p->max_message_size);
    buf_printf(out, "%smax_recipients = %u;\n", ind, p->max_recipients);
    buf_printf(out, "%smax_messages_per_connection = %u;\n", ind,
               p->max_messages_per_connection);
    buf_printf(out, "%smax_connections_per_ip = %u;\n", ind,
               p->max_connections_per_ip);
    buf_printf(out, "%smax_recipients_per_hour = %u;\n", ind,
               p->max_recipients_per_hour);
    buf_printf(out, "%srate_limit_code = %u;\n", ind, p->rate_limit_code);
    text_param(out, ind, "rate_limit_text", p->rate_limit_text);
    buf_printf(out, "%sbanner_code = %u;\n", ind, p->banner_code);
    text_param(out, ind, "banner_text", p->banner_text);
    text_param(out, ind, "banner_hostname", p->banner_hostname);
    buf_printf(out, "%sreject_code = %u;\n", ind, p->reject_code);
    text_param(out, ind, "reject_text", p->reject_text);
    buf_printf(out, "%ssender_dns_verification = %s;\n", ind,
               p->sender_dns_verification ? "true" : "false");
    buf_printf(out, "%ssender_dns_malformed_code = %u;\n", ind,
               p->sdv_malformed_code);
    text_param(out, ind, "sender_dns_malformed_text", p->sdv_malformed_text);
    buf_printf(out, "%ssender_dns_nxdomain_code = %u;\n", ind,
               p->sdv_nxdomain_code);
    text_param(out, ind, "sender_dns_nxdomain_text", p->sdv_nxdomain_text);
    buf_printf(out, "%ssender_dns_tempfail_code = %u;\n", ind,
               p->sdv_tempfail_code);
    text_param(out, ind, "sender_dns_tempfail_text", p->sdv_tempfail_text);
    buf_printf(out, "%stls = %s;\n", ind, conf_tls_name(p->tls));
    buf_printf(out, "%ssmtp_auth = %s;\n", ind, conf_auth_name(p->smtp_auth));
    buf_printf(out, "%sauth_requires_tls = %s;\n", ind,
               p->auth_requires_tls ? "true" : "false");
    buf_printf(out, "%stls_verify_client = %s;\n", ind,
               p->tls_verify_client ? "true" : "false");
    buf_printf(out, "%stls_mandatory_senders = [", ind);
    for (size_t k = 0; k < p->ntls_mandatory; k++) {
        buf_puts(out, k ? ", " : " ");
        quoted(out, p->tls_mandatory[k]);
    }
    buf_puts(out, p->ntls_mandatory ? " ];\n" : "];\n");
}

static void group_block(struct buf *out, const struct conf_listener *l,
                        const struct conf_sender_group *g)
{
    buf_puts(out, "    sender_group ");
    quoted(out, g->name);
    buf_puts(out, " {\n        policy = ");
    quoted(out, l->policies[g->policy].name);
    buf_puts(out, ";\n");
    if (l->relay_sender_count && strcmp(g->name, "RELAYLIST") == 0) {
        /* Written there; writing them here too would be refused. */
        buf_puts(out, "        # senders: the listener's relay_senders\n");
    } else {
        buf_puts(out, "        senders = [");
        for (size_t k = 0; k < g->nsenders; k++) {
            buf_puts(out, k ? ", " : " ");
            quoted(out, g->sender_text[k]);
        }
        buf_puts(out, g->nsenders ? " ];\n" : "];\n");
    }
    if (g->dns_verification) {
        buf_puts(out, "        dns_verification = [");
        bool first = true;
        for (unsigned k = 0; k < 3; k++)
            if (g->dns_verification & (1u << k)) {
                buf_printf(out, "%s\"%s\"", first ? " " : ", ",
                           conf_dnsv_name(k));
                first = false;
            }
        buf_puts(out, " ];\n");
    }
    text_param(out, "        ", "comment", g->comment);
    buf_puts(out, "    }\n");
}

bool hat_admin_export(const struct moat_conf *c, const char *name,
                      struct buf *out)
{
    const struct conf_listener *l = find(c, name, out);
    if (l == NULL)
        return false;
    buf_printf(out,
               "# Host Access Table of listener %s, exported by moatctl.\n"
               "# Every group and policy is written in full, so loading "
               "this block\n# reproduces the table exactly.\n",
               l->name);
    buf_puts(out, "hat ");
    quoted(out, l->name);
    buf_puts(out, " {\n");
    for (size_t i = 0; i < l->npolicies; i++) {
        const struct conf_policy *p = &l->policies[i];
        buf_puts(out, "    mail_flow_policy ");
        quoted(out, p->name);
        buf_printf(out, " {\n        access = %s;\n",
                   conf_access_name(p->access));
        params(out, "        ", &p->p);
        buf_puts(out, "    }\n");
    }
    for (size_t i = 0; i < l->ngroups; i++)
        group_block(out, l, &l->groups[i]);
    buf_puts(out, "    default_policy = ");
    quoted(out, l->policies[l->default_policy].name);
    buf_puts(out, ";\n}\n");
    return true;
}

bool hat_admin_detail(const struct moat_conf *c, const char *name,
                      struct buf *out)
{
    const struct conf_listener *l = find(c, name, out);
    if (l == NULL)
        return false;
    list_one(l, out);
    for (size_t i = 0; i < l->ngroups; i++) {
        const struct conf_sender_group *g = &l->groups[i];
        buf_printf(out, "\nSender group %s (policy %s)%s\n", g->name,
                   l->policies[g->policy].name,
                   g->predefined ? ", predefined" : "");
        for (size_t k = 0; k < g->nsenders; k++)
            buf_printf(out, "    %s\n", g->sender_text[k]);
        for (unsigned k = 0; k < 3; k++)
            if (g->dns_verification & (1u << k))
                buf_printf(out, "    DNS verification: %s\n",
                           conf_dnsv_name(k));
        if (g->nsenders == 0 && g->dns_verification == 0)
            buf_puts(out, "    (no senders: matches nothing)\n");
    }
    for (size_t i = 0; i < l->npolicies; i++) {
        const struct conf_policy *p = &l->policies[i];
        buf_printf(out, "\nMail flow policy %s: %s%s\n", p->name,
                   conf_access_name(p->access),
                   p->predefined ? " (predefined)" : "");
        params(out, "    ", &p->p);
    }
    return true;
}
