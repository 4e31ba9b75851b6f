/*
 * test_sender.c - table-driven tests of sender group entries: every form
 * of the appliance's HAT syntax parsed or refused, and matched against
 * addresses on both sides of each boundary and against host names.
 */
#include "policy/sender.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

struct parse_case {
    const char *text;
    bool ok;
    enum sg_kind kind;
};

static const struct parse_case parse_cases[] = {
    {"ALL", true, SG_ALL},
    {"192.0.2.7", true, SG_ADDR},
    {"2001:db8::7", true, SG_ADDR},
    {"10.0.0.0/8", true, SG_CIDR},
    {"2001:db8::/32", true, SG_CIDR},
    {"10.1.1.10-20", true, SG_RANGE4},
    {"10.1.1-5.", true, SG_RANGE4},
    {"10.1.1-5", true, SG_RANGE4},
    {"10-11", true, SG_RANGE4},
    {"10-11.", true, SG_RANGE4},
    {"10.2.3.", true, SG_RANGE4},
    {"10.2.3", true, SG_RANGE4},
    {"10.", true, SG_RANGE4},
    {"10", true, SG_RANGE4},
    {"2001:db8::1-2001:db8::ff", true, SG_RANGE6},
    {"mail.Example.com", true, SG_HOST},
    {".protection.outlook.com", true, SG_DOMAIN},
    {"dnslist[bl.example.net]", true, SG_DNSLIST},
    {"sbrs[none]", true, SG_SBRS_NONE},
    {"SBRS[None]", true, SG_SBRS_NONE},
    {"sbrs[-10.0:-3.0]", false, 0}, /* no reputation service */
    {"", false, 0},
    {"all", true, SG_HOST}, /* only upper-case ALL is the keyword */
    {"10.1.1.300", false, 0},
    {"10.1.1.20-10", false, 0},
    {"10.1-2.3", false, 0},
    {"10..2", false, 0},
    {"10.1.1.1.1", false, 0},
    {"1.2.3.4/33", false, 0},
    {"2001:db8::ff-2001:db8::1", false, 0},
    {"2001:db8::zz", false, 0},
    {"bad host.example", false, 0},
    {"..example", false, 0},
    {"dnslist[]", false, 0},
    {"dnslist[bl example]", false, 0},
    {"-.example", true, SG_HOST}, /* a label may hold '-' anywhere here */
};

static void test_parse(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        struct sg_entry e;
        char err[128] = "";
        bool ok = sg_entry_parse(c->text, &e, err, sizeof(err));
        if (ok != c->ok)
            fail_msg("\"%s\": parsed %d, expected %d (%s)", c->text, ok,
                     c->ok, err);
        if (ok && e.kind != c->kind)
            fail_msg("\"%s\": kind %d, expected %d", c->text, e.kind, c->kind);
        if (!ok && err[0] == '\0')
            fail_msg("\"%s\": refused without a reason", c->text);
    }
}

struct match_case {
    const char *entry;
    const char *ip;
    bool match;
};

static const struct match_case match_cases[] = {
    {"ALL", "198.51.100.1", true},
    {"ALL", "::1", true},
    {"sbrs[none]", "198.51.100.1", true},
    {"sbrs[none]", "2001:db8::1", true},
    {"192.0.2.7", "192.0.2.7", true},
    {"192.0.2.7", "192.0.2.8", false},
    {"192.0.2.7", "::ffff:192.0.2.7", true},
    {"2001:db8::7", "2001:db8::7", true},
    {"2001:db8::7", "2001:db8::8", false},
    {"10.0.0.0/8", "10.255.1.1", true},
    {"10.0.0.0/8", "11.0.0.1", false},
    {"2001:db8::/32", "2001:db8:ffff::1", true},
    {"2001:db8::/32", "2001:db9::1", false},
    {"10.1.1.10-20", "10.1.1.10", true},
    {"10.1.1.10-20", "10.1.1.20", true},
    {"10.1.1.10-20", "10.1.1.9", false},
    {"10.1.1.10-20", "10.1.1.21", false},
    {"10.1.1.10-20", "10.1.2.15", false},
    {"10.1.1-5.", "10.1.5.200", true},
    {"10.1.1-5.", "10.1.6.1", false},
    {"10.1.1-5", "10.1.3.3", true},
    {"10-11", "11.200.0.1", true},
    {"10-11", "12.0.0.1", false},
    {"10.2.3.", "10.2.3.99", true},
    {"10.2.3.", "10.2.4.99", false},
    {"10.2.3", "10.2.3.0", true},
    {"10.", "10.9.9.9", true},
    {"10.", "100.9.9.9", false},
    {"10.2.3.", "::ffff:10.2.3.4", true},
    {"10.2.3.", "2001:db8::1", false},
    {"2001:db8::1-2001:db8::ff", "2001:db8::80", true},
    {"2001:db8::1-2001:db8::ff", "2001:db8::100", false},
    {"2001:db8::1-2001:db8::ff", "2001:db8::", false},
    {"2001:db8::1-2001:db8::ff", "10.0.0.1", false},
    {"mail.example.com", "192.0.2.7", false}, /* names need a name */
    {".example.com", "192.0.2.7", false},
    {"dnslist[bl.example.net]", "192.0.2.7", false},
};

static void test_match_addr(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(match_cases); i++) {
        const struct match_case *c = &match_cases[i];
        struct sg_entry e;
        struct netaddr a;
        char err[128];
        assert_true(sg_entry_parse(c->entry, &e, err, sizeof(err)));
        assert_true(netaddr_parse_ip(c->ip, &a));
        if (sg_match_addr(&e, &a) != c->match)
            fail_msg("%s vs %s: expected %s", c->entry, c->ip,
                     c->match ? "a match" : "no match");
    }
}

struct host_case {
    const char *entry;
    const char *name; /* NULL: no verified name */
    bool match;
};

static const struct host_case host_cases[] = {
    {"mail.example.com", "mail.example.com", true},
    {"mail.example.com", "MAIL.Example.COM.", true},
    {"mail.example.com", "xmail.example.com", false},
    {"mail.example.com", NULL, false},
    {".protection.outlook.com", "mail-db5eur03.protection.outlook.com", true},
    {".protection.outlook.com", "a.b.PROTECTION.outlook.com", true},
    {".protection.outlook.com", "protection.outlook.com", false},
    {".protection.outlook.com", "evilprotection.outlook.com", false},
    {".protection.outlook.com", "protection.outlook.com.evil.net", false},
    {".protection.outlook.com", NULL, false},
    {".protection.outlook.com", "", false},
    {"ALL", "mail.example.com", false}, /* ALL is an address match */
    {"10.0.0.0/8", "mail.example.com", false},
};

static void test_match_host(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(host_cases); i++) {
        const struct host_case *c = &host_cases[i];
        struct sg_entry e;
        char err[128];
        assert_true(sg_entry_parse(c->entry, &e, err, sizeof(err)));
        if (sg_match_host(&e, c->name) != c->match)
            fail_msg("%s vs %s: expected %s", c->entry,
                     c->name ? c->name : "(none)",
                     c->match ? "a match" : "no match");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_match_addr),
        cmocka_unit_test(test_match_host),
    };
    return cmocka_run_group_tests_name("sender", tests, NULL, NULL);
}
