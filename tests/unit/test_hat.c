/*
 * test_hat.c - the Host Access Table: predefined tables per listener type,
 * hat blocks that change, reorder and extend them, policy parameters
 * resolved against the listener's defaults, configuration errors, the
 * verdict for clients with given DNS facts (first match, CONTINUE, DNS
 * lists, host names, DNS verification), and the per-address counters
 * behind rate limits and per-IP session limits.
 */
#include "conf/conf.h"
#include "policy/iptable.h"
#include "smtp/smtp_hat.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define LISTENERS                                                              \
    "listener \"In\" { type = public; address = \"127.0.0.1:25\"; }\n"         \
    "listener \"Out\" { type = private; address = \"127.0.0.1:587\";\n"        \
    "  relay_senders = [\"10.0.0.0/8\"]; }\n"

static struct moat_conf *load(const char *text, struct conf_errors *e)
{
    memset(e, 0, sizeof(*e));
    return conf_load_string("t.conf", text, e);
}

static struct moat_conf *ok(const char *text)
{
    struct conf_errors e;
    struct moat_conf *c = load(text, &e);
    if (c == NULL) {
        conf_errors_print(&e, stderr);
        fail_msg("expected the configuration to load");
    }
    conf_errors_free(&e);
    return c;
}

static void bad(const char *text, const char *want)
{
    struct conf_errors e;
    struct moat_conf *c = load(text, &e);
    bool found = false;
    for (size_t i = 0; i < e.count; i++)
        found |= strstr(e.msgs[i], want) != NULL;
    if (c || !found) {
        conf_errors_print(&e, stderr);
        fail_msg("expected an error containing '%s'", want);
    }
    conf_errors_free(&e);
}

static const char *group_name(const struct conf_listener *l, size_t i)
{
    return l->groups[i].name;
}

static const struct conf_policy *group_policy(const struct conf_listener *l,
                                              size_t i)
{
    return &l->policies[l->groups[i].policy];
}

static void test_predefined_tables(void **state)
{
    (void)state;
    struct moat_conf *c = ok(LISTENERS);
    const struct conf_listener *in = conf_listener_find(c, "In");
    assert_int_equal(in->ngroups, 4);
    const char *want[] = {"ALLOWED_LIST", "BLOCKED_LIST", "SUSPECTLIST",
                          "UNKNOWNLIST"};
    const char *pol[] = {"TRUSTED", "BLOCKED", "THROTTLED", "ACCEPTED"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(group_name(in, i), want[i]);
        assert_string_equal(group_policy(in, i)->name, pol[i]);
    }
    assert_int_equal(in->groups[3].nsenders, 1);
    assert_string_equal(in->groups[3].sender_text[0], "sbrs[none]");
    assert_string_equal(in->policies[in->default_policy].name, "ACCEPTED");

    const struct conf_policy *t = conf_policy_find(in, "TRUSTED");
    assert_int_equal(t->access, HAT_ACCEPT);
    assert_int_equal(t->p.max_messages_per_connection, 5000);
    assert_int_equal(t->p.max_connections_per_ip, 600);
    const struct conf_policy *th = conf_policy_find(in, "THROTTLED");
    assert_int_equal(th->p.max_recipients_per_hour, 20);
    assert_int_equal(th->p.max_message_size, 1024 * 1024);
    assert_int_equal(conf_policy_find(in, "BLOCKED")->access, HAT_REJECT);
    /* ACCEPTED uses the listener's defaults. */
    const struct conf_policy *a = conf_policy_find(in, "ACCEPTED");
    assert_int_equal(a->p.max_message_size, 10485760);
    assert_int_equal(a->p.max_connections_per_ip, 10);
    assert_int_equal(a->p.banner_code, 220);
    assert_int_equal(a->p.reject_code, 554);
    assert_int_equal(a->p.rate_limit_code, 452);
    assert_null(conf_policy_find(in, "RELAYED"));

    const struct conf_listener *out = conf_listener_find(c, "Out");
    assert_int_equal(out->ngroups, 1);
    assert_string_equal(group_name(out, 0), "RELAYLIST");
    assert_int_equal(group_policy(out, 0)->access, HAT_RELAY);
    assert_string_equal(out->groups[0].sender_text[0], "10.0.0.0/8");
    assert_string_equal(out->policies[out->default_policy].name, "BLOCKED");
    conf_unref(c);
}

static void test_hat_block_changes_and_orders(void **state)
{
    (void)state;
    struct moat_conf *c = ok(
        "listener \"In\" { type = public; address = \"127.0.0.1:25\";\n"
        "  max_message_size = 2mb; max_connections_per_ip = 3; }\n"
        "listener \"Out\" { type = private; address = \"127.0.0.1:587\";\n"
        "  relay_senders = [\"10.0.0.0/8\"]; }\n"
        "hat \"In\" {\n"
        "  sender_group \"SPAMMERS\" { policy = \"REFUSE\";\n"
        "    senders = [\"192.0.2.0/24\", \"dnslist[bl.example]\"]; }\n"
        "  sender_group \"UNKNOWNLIST\" { dns_verification = [\"no_ptr\"]; }\n"
        "  mail_flow_policy \"REFUSE\" { access = tcprefuse; }\n"
        "  mail_flow_policy \"ACCEPTED\" { max_recipients = 7; }\n"
        "  default_policy = \"THROTTLED\";\n"
        "}\n"
        "hat \"Out\" {\n"
        "  sender_group \"RELAY_O365\" { policy = \"RELAYED\";\n"
        "    senders = [\".protection.outlook.com\"]; comment = \"M365\"; }\n"
        "  mail_flow_policy \"RELAYED\" { tls = preferred; }\n"
        "}\n");
    const struct conf_listener *in = conf_listener_find(c, "In");
    assert_int_equal(in->ngroups, 5);
    assert_string_equal(group_name(in, 0), "SPAMMERS");
    assert_string_equal(group_name(in, 1), "UNKNOWNLIST");
    assert_string_equal(group_name(in, 2), "ALLOWED_LIST");
    assert_string_equal(group_name(in, 4), "SUSPECTLIST");
    assert_int_equal(group_policy(in, 0)->access, HAT_TCPREFUSE);
    /* UNKNOWNLIST keeps its predefined senders and policy. */
    assert_string_equal(group_policy(in, 1)->name, "ACCEPTED");
    assert_int_equal(in->groups[1].nsenders, 1);
    assert_int_equal(in->groups[1].dns_verification, SG_DNSV_NO_PTR);
    assert_true(in->hat_uses_dnslist);
    const struct conf_policy *a = conf_policy_find(in, "ACCEPTED");
    assert_int_equal(a->p.max_recipients, 7);
    assert_int_equal(a->p.max_message_size, 2 * 1024 * 1024); /* listener */
    assert_int_equal(a->p.max_connections_per_ip, 3);
    /* A predefined value is not overridden by the listener's default. */
    assert_int_equal(conf_policy_find(in, "THROTTLED")->p.max_message_size,
                     1024 * 1024);
    assert_string_equal(in->policies[in->default_policy].name, "THROTTLED");

    const struct conf_listener *out = conf_listener_find(c, "Out");
    assert_int_equal(out->ngroups, 2);
    assert_string_equal(group_name(out, 0), "RELAY_O365");
    assert_string_equal(out->groups[0].comment, "M365");
    assert_string_equal(group_name(out, 1), "RELAYLIST");
    assert_int_equal(conf_policy_find(out, "RELAYED")->p.tls,
                     POLICY_TLS_PREFERRED);
    conf_unref(c);
}

static void test_hat_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"hat \"Nope\" { }", "hat \"Nope\": no listener named \"Nope\""},
        {"hat \"In\" { }\nhat \"In\" { }", "is already defined at t.conf:4"},
        {"hat \"In\" { sender_group \"X\" { senders = [\"1.2.3.4\"]; } }",
         "missing required key 'policy'"},
        {"hat \"In\" { sender_group \"X\" { policy = \"NOPE\"; } }",
         "no mail_flow_policy \"NOPE\" on listener \"In\""},
        {"hat \"In\" { sender_group \"X\" { policy = \"TRUSTD\"; } }",
         "did you mean \"TRUSTED\""},
        {"hat \"In\" { sender_group \"X\" { policy = \"TRUSTED\"; }\n"
         "  sender_group \"X\" { policy = \"TRUSTED\"; } }",
         "sender_group \"X\" is already defined at t.conf:4"},
        {"hat \"In\" { mail_flow_policy \"P\" { max_recipients = 5; } }",
         "missing required key 'access'"},
        {"hat \"In\" { mail_flow_policy \"P\" { access = maybe; } }",
         "expects accept or relay or reject or tcprefuse or continue"},
        {"hat \"In\" { sender_group \"X\" { policy = \"TRUSTED\";\n"
         "  senders = [\"sbrs[-10:-3]\"]; } }",
         "moat has no reputation service"},
        {"hat \"In\" { sender_group \"X\" { policy = \"TRUSTED\";\n"
         "  senders = [\"10.1.1.300\"]; } }",
         "is not an IPv4 address"},
        {"hat \"In\" { sender_group \"X\" { policy = \"TRUSTED\";\n"
         "  dns_verification = [\"no_a\"]; } }",
         "is not no_ptr, ptr_tempfail or ptr_mismatch"},
        {"hat \"In\" { mail_flow_policy \"C\" { access = continue; }\n"
         "  default_policy = \"C\"; }",
         "says continue"},
        {"hat \"Out\" { sender_group \"RELAYLIST\" { senders = "
         "[\"10.1.0.0/16\"]; } }",
         "already given by the listener's relay_senders"},
        {"hat \"In\" { mail_flow_policy \"ACCEPTED\" { smtp_auth = "
         "required; } }",
         "has smtp_auth = required but the listener has no "
         "smtp_auth_profile"},
        {"hat \"In\" { mail_flow_policy \"ACCEPTED\" { banner_code = 250; } }",
         "out of range"},
        {"hat \"In\" { colour = blue; }", "unknown key 'colour'"},
        {"hat \"In\" { sender_group \"X\" { policy = \"BLOCKED\"; senders = "
         "[\"dnslist[a.example]\", \"dnslist[b.example]\", "
         "\"dnslist[c.example]\", \"dnslist[d.example]\", "
         "\"dnslist[e.example]\", \"dnslist[f.example]\", "
         "\"dnslist[g.example]\", \"dnslist[h.example]\", "
         "\"dnslist[i.example]\", \"dnslist[j.example]\", "
         "\"dnslist[k.example]\", \"dnslist[l.example]\", "
         "\"dnslist[m.example]\", \"dnslist[n.example]\", "
         "\"dnslist[o.example]\", \"dnslist[p.example]\", "
         "\"dnslist[A.example]\", \"dnslist[q.example]\"]; } }",
         "more than 16 different DNS lists (dnslist[q.example])"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[2048];
        snprintf(text, sizeof(text), "%s%s\n", LISTENERS, cases[i].text);
        bad(text, cases[i].want);
    }
}

/* ---- verdicts ---- */

static void facts_for(struct hat_facts *f, const char *ip)
{
    memset(f, 0, sizeof(*f));
    assert_true(netaddr_parse_ip(ip, &f->peer));
    f->ptr = HAT_PTR_NONE;
}

static void test_verdicts(void **state)
{
    (void)state;
    struct moat_conf *c = ok(
        LISTENERS
        "hat \"In\" {\n"
        "  sender_group \"SKIP\" { policy = \"NEXT\"; senders = [\"ALL\"]; }\n"
        "  sender_group \"LISTED\" { policy = \"BLOCKED\";\n"
        "    senders = [\"dnslist[bl.example]\"]; }\n"
        "  sender_group \"PARTNERS\" { policy = \"TRUSTED\";\n"
        "    senders = [\"192.0.2.10-20\", \".partner.example\"]; }\n"
        "  sender_group \"NOPTR\" { policy = \"THROTTLED\";\n"
        "    dns_verification = [\"no_ptr\", \"ptr_mismatch\"]; }\n"
        "  mail_flow_policy \"NEXT\" { access = continue; }\n"
        "}\n"
        "hat \"Out\" {\n"
        "  sender_group \"RELAY_O365\" { policy = \"RELAYED\";\n"
        "    senders = [\".protection.outlook.com\"]; }\n"
        "}\n");
    const struct conf_listener *in = conf_listener_find(c, "In");
    const struct conf_listener *out = conf_listener_find(c, "Out");
    struct hat_facts f;
    struct hat_verdict v;

    /* CONTINUE passes on; an address range matches. */
    facts_for(&f, "192.0.2.15");
    f.ptr = HAT_PTR_FOUND;
    f.verified = true;
    str_copy(f.name, sizeof(f.name), "mx.somewhere.example");
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "PARTNERS");
    assert_string_equal(v.match, "192.0.2.10-20");

    /* A DNS list hit comes first. */
    f.nzones = 1;
    str_copy(f.zones[0], sizeof(f.zones[0]), "bl.example");
    f.listed[0] = 1;
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "LISTED");
    assert_string_equal(v.match, "dnslist[bl.example]");
    assert_int_equal(v.policy->access, HAT_REJECT);
    f.listed[0] = -1; /* a failed lookup is not a listing */
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "PARTNERS");

    /* A .domain needs a verified name. */
    facts_for(&f, "198.51.100.7");
    f.ptr = HAT_PTR_FOUND;
    str_copy(f.name, sizeof(f.name), "a.partner.example");
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "NOPTR"); /* ptr_mismatch */
    assert_string_equal(v.match, "ptr_mismatch");
    f.verified = true;
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "PARTNERS");
    assert_string_equal(v.match, ".partner.example");

    /* No PTR: no_ptr. A lookup failure matches neither check. */
    facts_for(&f, "198.51.100.8");
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.match, "no_ptr");
    f.ptr = HAT_PTR_TEMP;
    hat_evaluate(in, &f, &v);
    assert_string_equal(v.group->name, "UNKNOWNLIST");
    assert_string_equal(v.match, "sbrs[none]");

    /* Private: the seed-002 group by partial host name, else ALL. */
    facts_for(&f, "203.0.113.5");
    f.ptr = HAT_PTR_FOUND;
    f.verified = true;
    str_copy(f.name, sizeof(f.name),
             "mail-db8eur05.outbound.protection.outlook.com");
    hat_evaluate(out, &f, &v);
    assert_string_equal(v.group->name, "RELAY_O365");
    assert_string_equal(v.match, ".protection.outlook.com");
    assert_int_equal(v.policy->access, HAT_RELAY);
    str_copy(f.name, sizeof(f.name), "protection.outlook.com.evil.example");
    hat_evaluate(out, &f, &v);
    assert_null(v.group);
    assert_string_equal(v.match, "ALL");
    assert_int_equal(v.policy->access, HAT_REJECT);
    facts_for(&f, "10.9.8.7");
    hat_evaluate(out, &f, &v);
    assert_string_equal(v.group->name, "RELAYLIST");
    conf_unref(c);
}

/* ---- counters ---- */

static void test_iptable(void **state)
{
    (void)state;
    struct iptable *t = iptable_new(3);
    struct netaddr a, b, m;
    assert_true(netaddr_parse_ip("192.0.2.1", &a));
    assert_true(netaddr_parse_ip("2001:db8::1", &b));
    assert_true(netaddr_parse_ip("::ffff:192.0.2.1", &m));

    uint64_t *n = iptable_counter(t, &a, 0, 1000, 3600);
    assert_non_null(n);
    *n += 5;
    /* An IPv4-mapped client is the same client. */
    assert_int_equal(iptable_peek(t, &m, 0, 1000, 3600), 5);
    assert_int_equal(iptable_peek(t, &a, 7, 1000, 3600), 0); /* other tag */
    /* The window is kept until the period runs out, then starts again. */
    assert_int_equal(*iptable_counter(t, &a, 0, 4599, 3600), 5);
    assert_int_equal(iptable_peek(t, &a, 0, 4600, 3600), 0);
    n = iptable_counter(t, &a, 0, 4600, 3600);
    assert_int_equal(*n, 0);
    *n = 1;

    /* Bounded: a full table drops expired entries, else refuses. */
    *iptable_counter(t, &b, 0, 4600, 3600) = 1;
    *iptable_counter(t, &b, 1, 4600, 3600) = 1;
    assert_int_equal(iptable_count(t), 3);
    struct netaddr c4;
    assert_true(netaddr_parse_ip("198.51.100.1", &c4));
    assert_null(iptable_counter(t, &c4, 0, 4601, 3600));
    assert_non_null(iptable_counter(t, &c4, 0, 9000, 3600));

    /* Session counts: released to zero they disappear. */
    struct iptable *s = iptable_new(100);
    uint32_t tag = iptable_tag("In");
    for (int i = 0; i < 3; i++)
        (*iptable_counter(s, &a, tag, 0, 0))++;
    assert_int_equal(iptable_peek(s, &a, tag, 0, 0), 3);
    for (int i = 0; i < 4; i++)
        iptable_release(s, &a, tag);
    assert_int_equal(iptable_count(s), 0);
    /* Many addresses: the table grows. */
    for (unsigned i = 0; i < 90; i++) {
        char ip[32];
        struct netaddr x;
        snprintf(ip, sizeof(ip), "10.0.%u.%u", i / 250, i % 250);
        assert_true(netaddr_parse_ip(ip, &x));
        assert_non_null(iptable_counter(s, &x, tag, 0, 0));
    }
    assert_int_equal(iptable_count(s), 90);
    iptable_free(s);
    iptable_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_predefined_tables),
        cmocka_unit_test(test_hat_block_changes_and_orders),
        cmocka_unit_test(test_hat_errors),
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_iptable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
