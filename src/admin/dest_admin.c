/*
 * dest_admin.c - `moatctl destconfig list|detail|export` (see
 * dest_admin.h).
 */
#include "admin/dest_admin.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static bool is_set(const struct conf_dest *d, const char *key)
{
    return conf_dest_key_set(d, key);
}

static const char *tls_label(int tls)
{
    static const char *const names[] = {"No",
                                        "Preferred",
                                        "Required",
                                        "Preferred (Verify)",
                                        "Required (Verify)",
                                        "Required - Verify Hosted Domains"};
    return tls >= 0 && tls < (int)ARRAY_LEN(names) ? names[tls] : "?";
}

static const char *ip_label(int pref)
{
    static const char *const names[] = {"Prefer IPv6", "IPv6 Only",
                                        "Prefer IPv4", "IPv4 Only"};
    return pref >= 0 && pref < (int)ARRAY_LEN(names) ? names[pref] : "?";
}

static const char *dane_label(int dane)
{
    static const char *const names[] = {"None", "Opportunistic", "Mandatory"};
    return dane >= 0 && dane < (int)ARRAY_LEN(names) ? names[dane] : "?";
}

/* "100 per 5 minutes", "7 per 30 seconds", "No Limit". */
static void rcpt_limit_text(const struct conf_dest *d, char *buf, size_t len)
{
    if (!d->rcpt_limited)
        str_copy(buf, len, "No Limit");
    else if (d->recipient_period % 60 == 0)
        str_printf(buf, len, "%u per %u minute%s", d->recipient_limit,
                   d->recipient_period / 60,
                   d->recipient_period == 60 ? "" : "s");
    else
        str_printf(buf, len, "%u per %u second%s", d->recipient_limit,
                   d->recipient_period, d->recipient_period == 1 ? "" : "s");
}

void dest_admin_list(const struct moat_conf *c, struct buf *out)
{
    size_t w = strlen("(Default)");
    for (size_t i = 1; i < c->dest_count; i++)
        if (strlen(c->dests[i].domain) > w)
            w = strlen(c->dests[i].domain);
    int dw = (int)w;
    buf_printf(out, "%-*s  %-8s  %-32s  %-12s  %-16s  %s\n", dw, "", "Rate", "",
               "Bounce", "Bounce", "IP Version");
    buf_printf(out, "%-*s  %-8s  %-32s  %-12s  %-16s  %s\n", dw, "Domain",
               "Limiting", "TLS", "Verification", "Profile", "Preference");
    for (size_t i = 1; i <= c->dest_count; i++) {
        /* Domain rows first, the Default row last (as destconfig lists). */
        const struct conf_dest *d = &c->dests[i < c->dest_count ? i : 0];
        bool dflt = d == &c->dests[0];
        bool rate = dflt || is_set(d, "concurrency") ||
                    is_set(d, "messages_per_connection") ||
                    is_set(d, "recipient_limit") ||
                    is_set(d, "recipient_period") || is_set(d, "limits_per");
        const char *bv = d->bounce_verification == DEST_BV_YES ? "On" : "Off";
        buf_printf(out, "%-*s  %-8s  %-32s  %-12s  %-16s  %s\n", dw,
                   dflt ? "(Default)" : d->domain, rate ? "On" : "Default",
                   dflt || is_set(d, "tls") ? tls_label(d->tls) : "Default",
                   dflt || is_set(d, "bounce_verification") ? bv : "Default",
                   dflt                          ? "(Default)"
                   : is_set(d, "bounce_profile") ? d->bounce_profile
                                                 : "Default",
                   dflt || is_set(d, "ip_preference")
                       ? ip_label(d->ip_preference)
                       : "Default");
    }
    buf_printf(out, "\nThere are currently %zu entries configured.\n",
               c->dest_count - 1);
}

/* One setting: the row's own value, or "Default (value)". */
static void setting(struct buf *out, const struct conf_dest *d, const char *key,
                    const char *label, const char *value)
{
    bool dflt = strcmp(d->domain, "Default") == 0;
    if (dflt || is_set(d, key))
        buf_printf(out, "    %s: %s\n", label, value);
    else
        buf_printf(out, "    %s: Default (%s)\n", label, value);
}

static void detail_one(const struct conf_dest *d, struct buf *out)
{
    char v[128];
    buf_printf(out, "%s\n",
               strcmp(d->domain, "Default") == 0 ? "(Default)" : d->domain);
    setting(out, d, "ip_preference", "IP Address Preference",
            ip_label(d->ip_preference));
    str_printf(v, sizeof(v), "%u", d->concurrency);
    setting(out, d, "concurrency", "Maximum Concurrent Connections", v);
    str_printf(v, sizeof(v), "%u", d->messages_per_connection);
    setting(out, d, "messages_per_connection",
            "Maximum Messages Per Connection", v);
    rcpt_limit_text(d, v, sizeof(v));
    setting(out, d,
            is_set(d, "recipient_period") ? "recipient_period"
                                          : "recipient_limit",
            "Recipient Limit", v);
    setting(out, d, "limits_per", "Apply Limits Per Destination",
            d->limits_per == DEST_PER_MX_IP
                ? "Each Mail Exchanger (MX Record) IP address"
                : "Entire Domain");
    setting(out, d, "tls", "TLS Support", tls_label(d->tls));
    setting(out, d, "dane", "DANE Support", dane_label(d->dane));
    setting(out, d, "bounce_verification",
            "Bounce Verification Address Tagging",
            d->bounce_verification == DEST_BV_YES ? "Yes" : "No");
    setting(out, d, "bounce_profile", "Bounce Profile", d->bounce_profile);
}

bool dest_admin_detail(const struct moat_conf *c, const char *domain,
                       struct buf *out)
{
    if (domain && domain[0]) {
        const struct conf_dest *d = NULL;
        for (size_t i = 0; i < c->dest_count && d == NULL; i++)
            if (strcasecmp(c->dests[i].domain, domain) == 0)
                d = &c->dests[i];
        if (d == NULL) {
            char low[256];
            size_t n = strlen(domain);
            if (n >= sizeof(low)) {
                buf_puts(out, "domain name too long\n");
                return false;
            }
            for (size_t i = 0; i <= n; i++)
                low[i] = (char)tolower((unsigned char)domain[i]);
            d = conf_dest_find(c, low);
            buf_printf(out, "%s has no row of its own; the row that applies:\n",
                       domain);
        }
        detail_one(d, out);
        return true;
    }
    for (size_t i = 0; i < c->dest_count; i++) {
        if (i)
            buf_puts(out, "\n");
        detail_one(&c->dests[i], out);
    }
    return true;
}

void dest_admin_export(const struct moat_conf *c, struct buf *out)
{
    buf_puts(out, "# Destination controls exported by moatctl destconfig "
                  "export.\n# Rows other than Default write only what "
                  "they set; the rest is \"Use Default\".\n");
    for (size_t i = 0; i < c->dest_count; i++)
        conf_dest_write(&c->dests[i], i == 0, out);
}
