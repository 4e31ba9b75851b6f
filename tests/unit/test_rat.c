/*
 * test_rat.c - table-driven tests of the Recipient Access Table: pattern
 * syntax, each pattern form against matching and non-matching addresses
 * in mixed case, relay tricks (percent hack, quoted '@', address
 * literals, look-alike domains), and first-match-wins ordering.
 */
#include "policy/rat.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

/* --- rat_pattern_check ---------------------------------------------------- */

struct check_case {
    const char *label;
    const char *pattern;
    const char *why; /* NULL: valid */
};

#define L63 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc"
#define L64 L63 "d"

static const struct check_case check_cases[] = {
    {"ALL", "ALL", NULL},
    {"domain", "example.com", NULL},
    {"domain upper case", "EXAMPLE.COM", NULL},
    {"single label", "localhost", NULL},
    {"hyphen and digits", "mx-1.0a.example", NULL},
    {"xn-- label", "xn--bcher-kva.example", NULL},
    {"label 63", L63 ".example", NULL},
    {"subdomain", ".example.com", NULL},
    {"subdomain of tld", ".com", NULL},
    {"user@", "user@", NULL},
    {"dotted user@", "first.last@", NULL},
    {"atext user@", "a+b=c!d@", NULL},
    {"quoted user@", "\"john doe\"@", NULL},
    {"quoted with @ user@", "\"a@b\"@", NULL},
    {"address", "user@example.com", NULL},
    {"quoted address", "\"john doe\"@example.com", NULL},
    {"local 64", L63 "x@example.com", NULL},

    {"NULL", NULL, "empty pattern"},
    {"empty", "", "empty pattern"},
    {"all lower case", "all", "write the catch-all row as 'ALL'"},
    {"All mixed case", "All", "write the catch-all row as 'ALL'"},
    {"trailing dot", "example.com.", "trailing dot in domain"},
    {"empty label", "ex..ample", "empty label in domain"},
    {"dot alone", ".", "empty domain"},
    {"double leading dot", "..example.com", "empty label in domain"},
    {"hyphen first", "-ex.com", "hyphen at label edge"},
    {"hyphen last", "ex-.com", "hyphen at label edge"},
    {"underscore", "ex_ample.com", "bad character in domain"},
    {"space", "exa mple.com", "bad character in domain"},
    {"wildcard", "*.example.com", "bad character in domain"},
    {"label 64", L64 ".example", "label too long"},
    {"non-ascii",
     "b\xc3\xbc"
     "cher.example",
     "non-ASCII pattern (write domains in xn-- form)"},
    {"@domain", "@example.com", "empty local part"},
    {"@ alone", "@", "empty local part"},
    {"user@.domain", "user@.example.com", "address rows take a plain domain"},
    {"user@literal", "user@[192.0.2.1]", "address rows take a plain domain"},
    {"literal", "[192.0.2.1]", "address literals are not supported"},
    {".literal", ".[192.0.2.1]", "address literals are not supported"},
    {"double dot local", "us..er@", "double dot in local part"},
    {"leading dot local", ".user@", "dot at edge of local part"},
    {"space in local", "us er@", "bad character in local part"},
    {"two @", "a@b@example.com", "bad character in local part"},
    {"unterminated quote", "\"john@", "unterminated quoted local part"},
    {"local 65", L64 "x@example.com", "local part too long"},
    {"bad domain in address", "user@exa mple.com", "bad character in domain"},
    {"trailing dot in address", "user@example.com.", "trailing dot in domain"},
    {"ALL with domain", "ALL.example", NULL},
};

static void test_pattern_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(check_cases); i++) {
        const struct check_case *t = &check_cases[i];
        const char *why = rat_pattern_check(t->pattern);
        print_message("# check: %s\n", t->label);
        if (t->why == NULL)
            assert_null(why);
        else {
            assert_non_null(why);
            assert_string_equal(why, t->why);
        }
    }
}

/* A domain of 256 octets is refused, 255 accepted. */
static void test_pattern_domain_length(void **state)
{
    (void)state;
    char d[300];
    /* 63 + 1 + 63 + 1 + 63 + 1 + 63 = 255 */
    assert_true(str_printf(d, sizeof(d), "%s.%s.%s.%s", L63, L63, L63, L63));
    assert_int_equal(strlen(d), 255);
    assert_null(rat_pattern_check(d));
    assert_true(str_printf(d, sizeof(d), "%s.%s.%s.%sx", L63, L63, L63, L63));
    assert_string_equal(rat_pattern_check(d), "domain too long");
}

/* --- rat_match, one row at a time ------------------------------------------
 */

struct match_case {
    const char *label;
    const char *pattern;
    const char *addr;
    bool match;
};

static const struct match_case match_cases[] = {
    /* domain */
    {"domain exact", "example.com", "user@example.com", true},
    {"domain addr upper", "example.com", "User@EXAMPLE.COM", true},
    {"domain pattern mixed", "EXAMPLE.com", "user@example.COM", true},
    {"domain vs subdomain", "example.com", "user@a.example.com", false},
    {"domain look-alike prefix", "example.com", "user@badexample.com", false},
    {"domain look-alike suffix", "example.com", "user@example.com.evil", false},
    {"domain shorter", "example.com", "user@example.co", false},
    {"domain trailing dot refused", "example.com", "user@example.com.", false},
    {"domain percent hack real domain", "example.com",
     "user%other.example@example.com", true},
    {"domain percent hack not inner", "other.example",
     "user%other.example@example.com", false},
    {"domain quoted @ real domain", "example.com",
     "\"user@other.example\"@example.com", true},
    {"domain quoted @ not inner", "other.example",
     "\"user@other.example\"@example.com", false},
    {"domain bang path", "example.com", "other.example!user@example.com", true},
    {"domain vs ipv4 literal", "example.com", "user@[192.0.2.1]", false},
    {"domain vs ipv6 literal", "example.com", "user@[IPv6:2001:db8::1]", false},
    {"domain vs postmaster", "example.com", "postmaster", false},
    {"domain vs utf-8 local", "example.com", "\xc3\xa9l\xc3\xa8ve@example.com",
     true},
    {"single label", "localhost", "root@LOCALHOST", true},
    /* .domain */
    {"sub one level", ".example.com", "a@a.example.com", true},
    {"sub two levels", ".example.com", "a@x.a.example.com", true},
    {"sub mixed case", ".Example.COM", "a@X.A.EXAMPLE.com", true},
    {"sub not the domain", ".example.com", "a@example.com", false},
    {"sub look-alike", ".example.com", "a@badexample.com", false},
    {"sub look-alike deeper", ".example.com", "a@a.badexample.com", false},
    {"sub suffix", ".example.com", "a@a.example.com.evil", false},
    {"sub vs literal", ".example.com", "a@[192.0.2.1]", false},
    {"sub vs postmaster", ".example.com", "postmaster", false},
    {"sub percent hack", ".example.com", "a%b.example.com@evil.example", false},
    {"sub quoted @", ".example.com", "\"a@b.example.com\"@evil.example", false},
    {"tld", ".com", "a@example.com", true},
    /* user@ */
    {"user@ bare postmaster", "postmaster@", "postmaster", true},
    {"user@ mixed pattern", "PostMaster@", "postmaster", true},
    {"user@ any domain", "postmaster@", "POSTMASTER@example.com", true},
    {"user@ literal", "postmaster@", "postmaster@[192.0.2.1]", true},
    {"user@ longer local", "postmaster@", "postmasters@example.com", false},
    {"user@ prefixed local", "postmaster@", "xpostmaster@example.com", false},
    {"user@ percent hack", "user@", "user%other.example@example.com", false},
    {"user@ percent pattern", "user%other.example@",
     "user%other.example@example.com", true},
    {"user@ quoted case", "\"john doe\"@", "\"John Doe\"@example.com", true},
    {"user@ quoted vs dotted", "\"john doe\"@", "john.doe@example.com", false},
    {"user@ quoted vs unquoted", "\"john\"@", "john@example.com", false},
    {"user@ quoted with @", "\"a@b\"@", "\"a@b\"@example.com", true},
    /* user@domain */
    {"address exact", "user@example.com", "user@example.com", true},
    {"address mixed case", "user@example.com", "USER@Example.Com", true},
    {"address pattern mixed", "User@EXAMPLE.com", "user@example.com", true},
    {"address subdomain", "user@example.com", "user@a.example.com", false},
    {"address other user", "user@example.com", "user2@example.com", false},
    {"address suffix", "user@example.com", "user@example.com.evil", false},
    {"address percent", "user@example.com", "user%x@example.com", false},
    {"address vs postmaster", "postmaster@example.com", "postmaster", false},
    {"address vs literal", "user@example.com", "user@[192.0.2.1]", false},
    {"address quoted", "\"a b\"@example.com", "\"A B\"@EXAMPLE.com", true},
    {"address quoted @", "\"a@b\"@example.com", "\"a@b\"@example.com", true},
    {"address quoted @ inner", "b@example.com",
     "\"a@b@example.com\"@evil.example", false},
    /* ALL */
    {"ALL address", "ALL", "user@example.com", true},
    {"ALL postmaster", "ALL", "postmaster", true},
    {"ALL literal", "ALL", "user@[192.0.2.1]", true},
    {"ALL utf-8", "ALL", "\xc3\xa9@\xc3\xa9.example", true},
};

static void test_match_forms(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(match_cases); i++) {
        const struct match_case *t = &match_cases[i];
        struct rat_entry row = {.pattern = (char *)t->pattern,
                                     .action = RAT_ACCEPT};
        print_message("# match: %s\n", t->label);
        assert_null(rat_pattern_check(t->pattern));
        const struct rat_entry *m = rat_match(&row, 1, t->addr);
        if (t->match)
            assert_ptr_equal(m, &row);
        else
            assert_null(m);
    }
}

/* --- ordering ------------------------------------------------------------ */

static const struct rat_entry table[] = {
    {.pattern = "postmaster@", .action = RAT_ACCEPT},
    {.pattern = "spam@example.com", .action = RAT_REJECT},
    {.pattern = "example.com", .action = RAT_ACCEPT},
    {.pattern = ".example.com", .action = RAT_ACCEPT},
    {.pattern = "EXAMPLE.ORG", .action = RAT_ACCEPT},
    {.pattern = "ALL", .action = RAT_REJECT},
};

static const struct {
    const char *label;
    const char *addr;
    int row; /* index in table, -1 for no match without ALL */
} order_cases[] = {
    {"postmaster first", "postmaster", 0},
    {"postmaster at other domain", "Postmaster@evil.example", 0},
    {"specific reject before domain", "Spam@EXAMPLE.com", 1},
    {"domain", "ham@example.com", 2},
    {"subdomain", "x@mail.example.com", 3},
    {"address row is exact", "spam@mail.example.com", 3},
    {"upper case row", "u@example.org", 4},
    {"everything else", "u@evil.example", 5},
    {"literal falls to ALL", "u@[192.0.2.1]", 5},
    {"look-alike falls to ALL", "u@notexample.com", 5},
    {"percent hack falls to ALL", "u%example.com@evil.example", 5},
};

/* First match wins; the row found is the first that matches. */
static void test_order(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(table); i++)
        assert_null(rat_pattern_check(table[i].pattern));
    for (size_t i = 0; i < ARRAY_LEN(order_cases); i++) {
        print_message("# order: %s\n", order_cases[i].label);
        const struct rat_entry *m =
            rat_match(table, ARRAY_LEN(table), order_cases[i].addr);
        assert_ptr_equal(m, &table[order_cases[i].row]);
        /* Without the ALL row, the ALL cases match nothing. */
        m = rat_match(table, ARRAY_LEN(table) - 1, order_cases[i].addr);
        if (order_cases[i].row == (int)ARRAY_LEN(table) - 1)
            assert_null(m);
        else
            assert_ptr_equal(m, &table[order_cases[i].row]);
    }
    assert_null(rat_match(table, 0, "user@example.com"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pattern_check),
        cmocka_unit_test(test_pattern_domain_length),
        cmocka_unit_test(test_match_forms),
        cmocka_unit_test(test_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
