/*
 * test_filter.c - the message filter language's lexer and parser: a
 * corpus of filters (each rule, each action, nesting, inactive filters,
 * comments, quoting, the CLI's "." lines, seed 002's filter verbatim)
 * and of errors with their line and column.
 */
#include "policy/filter.h"
#include "core/buf.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static bool parse(const char *text, struct filter_set *set, char *err,
                  size_t errlen)
{
    return filter_parse("t.flt", text, strlen(text), set, err, errlen);
}

static void expect_ok(const char *text, size_t nfilters)
{
    struct filter_set set;
    char err[512] = "";
    bool ok = parse(text, &set, err, sizeof(err));
    if (!ok)
        print_error("unexpected error for:\n%s\n%s\n", text, err);
    assert_true(ok);
    assert_int_equal(set.count, nfilters);
    filter_set_free(&set);
}

static void expect_error(const char *text, const char *want)
{
    struct filter_set set;
    char err[512] = "";
    bool ok = parse(text, &set, err, sizeof(err));
    if (ok || strstr(err, want) == NULL)
        print_error("for:\n%s\nwanted \"%s\", got \"%s\"\n", text, want,
                    ok ? "(no error)" : err);
    assert_false(ok);
    assert_non_null(strstr(err, want));
    assert_int_equal(set.count, 0);
}

/* Seed 002's filter, as the appliance's CLI takes it. */
static const char seed002[] =
    "office365_outbound: if sendergroup == \"RELAYLIST\" {\n"
    "    if header(\"X-OUTBOUND-AUTH\") == \"^mysecretkey$\" {\n"
    "        strip-header(\"X-OUTBOUND-AUTH\");\n"
    "    } else {\n"
    "        drop();\n"
    "    }\n"
    "}\n"
    ".\n";

static void test_seed_filter(void **state)
{
    (void)state;
    struct filter_set set;
    char err[256];
    assert_true(parse(seed002, &set, err, sizeof(err)));
    assert_int_equal(set.count, 1);
    const struct filter *f = &set.filters[0];
    assert_string_equal(f->name, "office365_outbound");
    assert_true(f->active);
    assert_int_equal(f->cond->kind, FE_RULE);
    assert_string_equal(f->cond->rule->name, "sendergroup");
    assert_int_equal(f->cond->op, FOP_EQ);
    assert_string_equal(f->cond->rhs.s, "RELAYLIST");
    assert_non_null(f->cond->re);
    const struct filter_stmt *s = f->then_;
    assert_int_equal(s->kind, FS_IF);
    assert_null(s->next);
    assert_string_equal(s->cond->rule->name, "header");
    assert_string_equal(s->cond->args[0].s, "X-OUTBOUND-AUTH");
    assert_string_equal(s->then_->action->name, "strip-header");
    assert_string_equal(s->else_->action->name, "drop");
    assert_true(s->else_->action->final);
    assert_null(f->else_);
    filter_set_free(&set);
}

static void test_corpus(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t n;
    } ok[] = {
        {"", 0},
        {"# only a comment\n\n", 0},
        {"a: if true { no-op(); }", 1},
        {"a: if (true) { no-op(); }", 1},
        {"a! if true { drop(); }", 1},
        {"a: if true { drop(); } else { deliver(); }", 1},
        {"a: if true { skip-filters(); }\n.\nb: if true { bounce(); }\n.\n", 2},
        {"a: if true { no-op(); };", 1},
        {"a: if subject == '^hi$' AND NOT rcpt-count > 5 OR body-size < 10k "
         "{ no-op(); }", 1},
        {"a: if (mail-from == \"@example\\\\.com$\") or "
         "(rcpt-to != \"(?i)^postmaster@\") { no-op(); }", 1},
        {"a: if header('X-Spam') { strip-header('X-Spam'); }", 1},
        {"a: if header(\"X\") != \".\" { insert-header(\"X\", \"y\"); }", 1},
        {"a: if body-contains(\"viagra\") { tag-message(\"spam\"); }", 1},
        {"a: if only-body-contains(\"x\", 3) { log-entry(\"hit\"); }", 1},
        {"a: if attachment-filename == \"\\\\.exe$\" { drop(); }", 1},
        {"a: if attachment-type == \"application/zip\" { drop(); }", 1},
        {"a: if attachment-size >= 5M { bounce(); }", 1},
        {"a: if body-size > 100b and body-size <= 2G { no-op(); }", 1},
        {"a: if remote-ip == \"10.1.1.0/24\" { no-op(); }", 1},
        {"a: if remote-ip != '10.1.1.50-55' { no-op(); }", 1},
        {"a: if remote-ip == \"2001:db8::/32\" { no-op(); }", 1},
        {"a: if recv-listener == \"IncomingMail\" { no-op(); }", 1},
        {"a: if recv-int != \"Management\" { no-op(); }", 1},
        {"a: if sendergroup == \"^RELAY\" { no-op(); }", 1},
        {"a: if smtp-auth-id-matches(\"*EnvelopeFrom\", \"+\") { no-op(); }",
         1},
        {"a: if header-repeats(\"subject\", 10, \"incoming\") { no-op(); }", 1},
        {"a: if date > \"01/31/2026 23:59:00\" { no-op(); }", 1},
        {"a: if dnslist('zen.example') { no-op(); }", 1},
        {"a: if dnslist('zen.example') == '127.0.0.2' { no-op(); }", 1},
        {"a: if random(10) < 5 { no-op(); }", 1},
        {"a: if random(2) { no-op(); }", 1},
        {"a: if valid { no-op(); }", 1},
        {"a: if true { edit-header-text(\"Subject\", \"^\\\\[EXT\\\\] \", \"\"); "
         "add-footer(\"disclaimer\"); alt-rcpt-to(\"x@example.com\"); "
         "alt-mailhost(\"[10.0.0.1]\"); bcc(\"audit@example.com\"); "
         "notify(\"admin@example.com\", \"Filter hit\"); }", 1},
        {"a: if true { if rcpt-count > 1 { if subject == \"x\" { drop(); } "
         "else if subject == \"y\" { bounce(); } else { no-op(); } } }", 1},
        {"A-1_b: if TRUE { DROP(); }", 1},
        {"a: if valid { no-op(); } else if true { drop(); } else { bounce(); }",
         1},
        {"a: if date == \"02/29/2024 00:00:00\" { no-op(); }", 1},
    };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++)
        expect_ok(ok[i].text, ok[i].n);
}

static void test_values(void **state)
{
    (void)state;
    struct filter_set set;
    char err[256];
    assert_true(parse("a: if body-size >= 13k and attachment-size < 5M "
                      "and subject == 'it''s' { no-op(); }",
                      &set, err, sizeof(err)) == false);
    assert_true(parse("a: if body-size >= 13k and attachment-size < 5M { "
                      "insert-header(\"X\", \"a\\\"b\\\\c\\.d\\n\"); }",
                      &set, err, sizeof(err)));
    const struct filter_expr *e = set.filters[0].cond;
    assert_int_equal(e->kind, FE_AND);
    assert_int_equal(e->a->rhs.n, 13 * 1024);
    assert_int_equal(e->a->op, FOP_GE);
    assert_int_equal(e->b->rhs.n, 5 * 1024 * 1024);
    assert_int_equal(e->b->op, FOP_LT);
    assert_string_equal(set.filters[0].then_->args[1].s, "a\"b\\c\\.d\n");
    filter_set_free(&set);

    /* and binds tighter than or; left to right. */
    assert_true(parse("a: if true or true and not valid { no-op(); }", &set,
                      err, sizeof(err)));
    e = set.filters[0].cond;
    assert_int_equal(e->kind, FE_OR);
    assert_int_equal(e->b->kind, FE_AND);
    assert_int_equal(e->b->b->kind, FE_NOT);
    filter_set_free(&set);
    assert_true(parse("a: if true and valid and true { no-op(); }", &set, err,
                      sizeof(err)));
    e = set.filters[0].cond;
    assert_int_equal(e->kind, FE_AND);
    assert_int_equal(e->a->kind, FE_AND); /* (true and valid) and true */
    filter_set_free(&set);

    assert_true(parse("x! if true { drop(); }\ny: if true { no-op(); }", &set,
                      err, sizeof(err)));
    assert_false(set.filters[0].active);
    assert_true(set.filters[1].active);
    assert_int_equal(set.filters[1].line, 2);
    assert_int_equal(set.filters[1].col, 1);
    filter_set_free(&set);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"a if true { drop(); }", "t.flt:1:3: expected ':'"},
        {"a: true { drop(); }", "t.flt:1:4: expected 'if'"},
        {"a: if foo { drop(); }", "t.flt:1:7: unknown rule 'foo'"},
        {"a: if true { zap(); }", "t.flt:1:14: unknown action 'zap'"},
        {"a: if true { drop() }", "t.flt:1:21: expected ';' after the action"},
        {"a: if true { drop(); ", "expected an action, 'if' or '}'"},
        {"a: if true\n{ drop(\"x\"); }", "t.flt:2:3: drop takes 0 arguments"},
        {"a: if subject { drop(); }", "t.flt:1:7: subject needs a comparison"},
        {"a: if subject > \"x\" { drop(); }", "compares only with == or !="},
        {"a: if subject == 5 { drop(); }", "compares with a quoted string"},
        {"a: if rcpt-count == \"5\" { drop(); }", "compares with a number"},
        {"a: if subject == \"(\" { drop(); }",
         "t.flt:1:18: bad regular expression: missing closing parenthesis"},
        {"a: if body-contains(\"[\") { drop(); }", "bad regular expression"},
        {"a: if true { edit-header-text(\"S\", \"*\", \"\"); }",
         "bad regular expression"},
        {"a: if subject == \"x' { drop(); }", "t.flt:1:18: unterminated string"},
        {"a: if header() { drop(); }", "header takes 1 argument, not 0"},
        {"a: if header(\"a\", \"b\") { drop(); }", "header takes 1 argument"},
        {"a: if true == \"x\" { drop(); }", "true takes no comparison"},
        {"a: if remote-ip == \"mail.example.com\" { drop(); }",
         "remote-ip takes addresses"},
        {"a: if remote-ip == \"10.1.1.300\" { drop(); }", "remote-ip:"},
        {"a: if date > \"2026-01-01\" { drop(); }", "MM/DD/YYYY hh:mm:ss"},
        {"a: if dnslist(\"z\") == \"x\" { drop(); }", "an IPv4 address"},
        {"a: if body-size > 5X { drop(); }", "bad number"},
        {"a: if body-size > 99999999999999999999 { drop(); }",
         "number too large"},
        {"a: if true { drop(); }\nA: if true { drop(); }",
         "t.flt:2:1: duplicate filter name 'A' (line 1)"},
        {"drop: if true { drop(); }", "reserved word"},
        {"if: if true { drop(); }", "reserved word"},
        {"a: if (true { drop(); }", "expected ')'"},
        {"a: if true { insert-header(\"X\", 5); }", "takes quoted strings"},
        {"a: if true { drop(); } else drop();", "expected '{'"},
        {"a: if true { drop(); }\n  .\n@", "t.flt:3:1: unexpected '@'"},
        {"a: if subject == \"\\\" { drop(); }", "unterminated string"},
        /* found in review */
        {"a: if header(5) { drop(); }", "argument 1 of header is a quoted string"},
        {"a: if random(\"x\") { drop(); }", "argument 1 of random is a number"},
        {"a: if header(\"X\",) { drop(); }", "expected an argument after ','"},
        {"a: if true { insert-header(\"X\", \"y\",); }",
         "expected an argument after ','"},
        {"a: if date > \"02/31/2024 00:00:00\" { drop(); }", "MM/DD/YYYY"},
        {"a: if date > \"02/01/2024 -1:00:00\" { drop(); }", "MM/DD/YYYY"},
        {"a: if subject == \"x\\\ny\" { drop(); }", "a backslash before a line end"},
        /* found by fuzz_filter: a lexing error left a freed token */
        {"cebound: if 3bounecs", "t.flt:1:13: bad number"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        expect_error(bad[i].text, bad[i].want);
}

static void test_limits(void **state)
{
    (void)state;
    /* Nesting is bounded, not a stack overflow. */
    struct buf b = {0};
    buf_puts(&b, "a: if ");
    for (int i = 0; i < 100; i++)
        buf_puts(&b, "(");
    buf_puts(&b, "true");
    for (int i = 0; i < 100; i++)
        buf_puts(&b, ")");
    buf_puts(&b, " { drop(); }");
    buf_putc(&b, '\0');
    expect_error(b.data, "nested more than");
    buf_free(&b);
    for (int i = 0; i < 40; i++)
        buf_puts(&b, "a: if true { if true { ");
    buf_reset(&b);
    buf_puts(&b, "a: if true ");
    for (int i = 0; i < 40; i++)
        buf_puts(&b, "{ if true ");
    buf_puts(&b, "{ drop(); }");
    for (int i = 0; i < 40; i++)
        buf_puts(&b, "}");
    buf_putc(&b, '\0');
    expect_error(b.data, "nested more than");
    buf_free(&b);
    /* Long else-if chains and and/or chains are bounded too. */
    buf_puts(&b, "a: if true { drop(); }");
    for (int i = 0; i < 200; i++)
        buf_puts(&b, " else if true { drop(); }");
    buf_putc(&b, '\0');
    expect_error(b.data, "nested more than");
    buf_free(&b);
    buf_puts(&b, "a: if true");
    for (int i = 0; i < 3000; i++)
        buf_puts(&b, " or true");
    buf_puts(&b, " { drop(); }");
    buf_putc(&b, '\0');
    expect_error(b.data, "filter longer than 2000");
    buf_free(&b);
    /* A long string is refused. */
    buf_puts(&b, "a: if subject == \"");
    for (int i = 0; i < FILTER_STRING_MAX + 10; i++)
        buf_putc(&b, 'x');
    buf_puts(&b, "\" { drop(); }");
    buf_putc(&b, '\0');
    expect_error(b.data, "string longer than");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_filter),
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
