/*
 * test_filter_eval.c - running filters: seed 002's filter (right secret:
 * header stripped; wrong or missing: dropped), each rule true and false,
 * actions and their order, final actions ending the run, later filters
 * seeing earlier header changes, inactive filters, nested ifs, the
 * header-repeats ordering, and a catastrophic regex stopped by the match
 * limit without stopping the message.
 */
#include "policy/filter_eval.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

static const char *rcpts1[] = {"user@example.com"};

static bool fake_dnslist(void *arg, const char *zone, char *answer,
                         size_t len);
static uint64_t fake_random(void *arg, uint64_t n);

static struct filter_env base_env(void)
{
    return (struct filter_env){
        .mail_from = "alice@corp.example",
        .nrcpt = 1,
        .rcpts = rcpts1,
        .sendergroup = "RELAYLIST",
        .listener = "OutgoingMail",
        .interface = "Data1",
        .now = 1800000000,
        .dnslist = fake_dnslist,
        .random = fake_random,
    };
}

struct outcome {
    enum filter_final final;
    size_t nsteps, nmatched, nerrors;
};

/* The set of the last run: a kept result points into it. */
static struct filter_set set;

static int free_set(void **state)
{
    (void)state;
    filter_set_free(&set);
    return 0;
}

static struct outcome run(const char *filters, const char *msg,
                          const struct filter_env *env,
                          struct filter_result *keep)
{
    char err[512];
    filter_set_free(&set);
    if (!filter_parse("t.flt", filters, strlen(filters), &set, err,
                      sizeof(err))) {
        print_error("%s\n", err);
        fail();
    }
    struct filter_result res;
    filter_run(&set, msg, strlen(msg), env, &res);
    struct outcome o = {res.final, res.nsteps, res.nmatched, res.nerrors};
    if (keep)
        *keep = res;
    else
        filter_result_free(&res);
    return o;
}

static const char seed002[] =
    "office365_outbound: if sendergroup == \"RELAYLIST\" {\n"
    "    if header(\"X-OUTBOUND-AUTH\") == \"^mysecretkey$\" {\n"
    "        strip-header(\"X-OUTBOUND-AUTH\");\n"
    "    } else {\n"
    "        drop();\n"
    "    }\n"
    "}\n"
    ".\n";

static const char *header_value(const struct filter_result *res,
                                const char *name)
{
    for (size_t i = 0; i < res->nheaders; i++)
        if (strcasecmp(res->headers[i].name, name) == 0)
            return res->headers[i].value;
    return NULL;
}

static void test_seed002(void **state)
{
    (void)state;
    struct filter_env env = base_env();
    struct filter_result res;
    run(seed002,
        "From: a@corp.example\r\nX-OUTBOUND-AUTH: mysecretkey\r\n"
        "Subject: hi\r\n\r\nbody\r\n",
        &env, &res);
    assert_int_equal(res.final, FF_NONE);
    assert_null(header_value(&res, "X-OUTBOUND-AUTH"));
    assert_true(res.headers_changed);
    assert_string_equal(header_value(&res, "Subject"), "hi");
    assert_int_equal(res.nsteps, 1);
    assert_string_equal(res.steps[0].stmt->action->name, "strip-header");
    filter_result_free(&res);

    run(seed002, "X-OUTBOUND-AUTH: wrong\r\n\r\nbody\r\n", &env, &res);
    assert_int_equal(res.final, FF_DROP);
    assert_string_equal(res.final_filter->name, "office365_outbound");
    filter_result_free(&res);
    assert_int_equal(run(seed002, "Subject: x\r\n\r\nbody\r\n", &env, NULL).final,
                     FF_DROP);
    /* Not relayed from the group: the filter does nothing. */
    env.sendergroup = "UNKNOWNLIST";
    struct outcome o = run(seed002, "Subject: x\r\n\r\nb\r\n", &env, NULL);
    assert_int_equal(o.final, FF_NONE);
    assert_int_equal(o.nsteps, 0);
}

static const char mixed[] =
    "From: Alice <alice@corp.example>\r\n"
    "Subject: Quarterly REPORT\r\n"
    "X-Tag: a\r\n"
    "X-Tag: b\r\n"
    "Content-Type: multipart/mixed; boundary=zz\r\n"
    "\r\n"
    "--zz\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "Hello there,\r\n"
    "buy cheap stuff\r\n"
    "cheap again\r\n"
    "--zz\r\n"
    "Content-Type: application/x-msdownload; name=\"setup.exe\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "Y2hlYXAgaW5zaWRl\r\n"
    "--zz--\r\n";

static void test_rules(void **state)
{
    (void)state;
    static const struct {
        const char *cond;
        bool want;
    } cases[] = {
        {"true", true},
        {"valid", true},
        {"subject == \"REPORT\"", true},
        {"subject == \"report\"", false},
        {"subject == \"(?i)report\"", true},
        {"subject != \"REPORT\"", false},
        {"header(\"X-Tag\")", true},
        {"header(\"x-tag\") == \"^b$\"", true},
        {"header(\"X-Missing\")", false},
        {"header(\"X-Missing\") != \".\"", true},
        {"mail-from == \"@corp\\\\.example$\"", true},
        {"rcpt-to == \"^user@\"", true},
        {"rcpt-to != \"^user@\"", false},
        {"sendergroup == \"^RELAY\"", true},
        {"rcpt-count == 1", true},
        {"rcpt-count > 1", false},
        {"body-size > 100", true},
        {"body-size > 1M", false},
        {"attachment-filename == \"\\\\.exe$\"", true},
        {"attachment-filename == \"\\\\.zip$\"", false},
        {"attachment-type == \"^application/x-msdownload$\"", true},
        {"attachment-size >= 16", true},
        {"attachment-size > 1k", false},
        {"body-contains(\"cheap\")", true},
        {"body-contains(\"cheap\", 3)", true},
        {"body-contains(\"cheap\", 4)", false},
        {"only-body-contains(\"cheap\", 2)", true},
        {"only-body-contains(\"inside\")", false},
        {"body-contains(\"inside\")", true},
        {"body-contains(\"stuff.cheap\")", false},
        {"remote-ip == \"192.0.2.0/24\"", true},
        {"remote-ip == \"10.0.0.0/8\"", false},
        {"remote-ip != \"10.0.0.0/8\"", true},
        {"recv-listener == \"OutgoingMail\"", true},
        {"recv-listener == \"outgoingmail\"", false},
        {"recv-int != \"Data1\"", false},
        {"smtp-auth-id-matches(\"*EnvelopeFrom\")", true},
        {"smtp-auth-id-matches(\"*FromAddress\")", true},
        {"smtp-auth-id-matches(\"*Sender\")", false},
        {"date > \"01/01/2020 00:00:00\"", true},
        {"date < \"01/01/2020 00:00:00\"", false},
        {"dnslist(\"zen.example\")", true},
        {"dnslist(\"zen.example\") == \"127.0.0.2\"", true},
        {"dnslist(\"zen.example\") == \"127.0.0.4\"", false},
        {"dnslist(\"other.example\")", false},
        {"random(10) == 7", true},
        {"random(10)", true},
        {"not true", false},
        {"true and not valid", false},
        {"(subject == \"x\" or rcpt-count == 1) and true", true},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *f = xasprintf("t: if %s { tag-message(\"yes\"); } else { "
                            "tag-message(\"no\"); }",
                            cases[i].cond);
        struct filter_env env = base_env();
        struct netaddr ip;
        assert_true(netaddr_parse_ip("192.0.2.7", &ip));
        env.remote = &ip;
        env.auth_id = "Alice";
        struct filter_result res;
        run(f, mixed, &env, &res);
        bool got = strcmp(res.steps[0].stmt->args[0].s, "yes") == 0;
        if (got != cases[i].want)
            print_error("%s: got %d\n", cases[i].cond, got);
        assert_int_equal(got, cases[i].want);
        assert_int_equal(res.nmatched, cases[i].want ? 1 : 0);
        filter_result_free(&res);
        free(f);
    }
}

static bool fake_dnslist(void *arg, const char *zone, char *answer,
                         size_t len)
{
    (void)arg;
    if (strcmp(zone, "zen.example") != 0)
        return false;
    str_copy(answer, len, "127.0.0.2");
    return true;
}

static uint64_t fake_random(void *arg, uint64_t n)
{
    (void)arg;
    return 7 % n;
}

static unsigned repeats_calls;

static unsigned fake_repeats(void *arg, const char *target, const char *value,
                             const char *direction)
{
    (void)arg;
    (void)target;
    (void)direction;
    repeats_calls++;
    return strcmp(value, "Quarterly REPORT") == 0 ? 12 : 1;
}

static void test_actions(void **state)
{
    (void)state;
    struct filter_env env = base_env();
    struct filter_result res;
    /* Later filters see earlier changes; inactive ones do not run; a
     * final action ends everything. */
    run("a: if true { insert-header(\"X-New\", \"1\"); "
        "edit-header-text(\"Subject\", \"(?i)quarterly\", \"Q\"); }\n"
        "b! if true { drop(); }\n"
        "c: if header(\"X-New\") == \"^1$\" and subject == \"^Q REPORT$\" "
        "{ log-entry(\"seen\"); strip-header(\"X-Tag\"); deliver(); "
        "insert-header(\"X-Never\", \"x\"); }\n"
        "d: if true { bounce(); }\n",
        mixed, &env, &res);
    assert_int_equal(res.final, FF_DELIVER);
    assert_string_equal(res.final_filter->name, "c");
    assert_int_equal(res.nsteps, 5);
    assert_string_equal(res.steps[0].stmt->action->name, "insert-header");
    assert_string_equal(res.steps[4].stmt->action->name, "deliver");
    assert_string_equal(header_value(&res, "Subject"), "Q REPORT");
    assert_string_equal(header_value(&res, "X-New"), "1");
    assert_null(header_value(&res, "X-Tag"));
    assert_null(header_value(&res, "X-Never"));
    assert_int_equal(res.nmatched, 2);
    filter_result_free(&res);

    /* skip-filters is final too; nested ifs choose their branch. */
    struct outcome o =
        run("a: if true { if rcpt-count > 5 { drop(); } else if true { "
            "skip-filters(); } }\nb: if true { bounce(); }",
            mixed, &env, NULL);
    assert_int_equal(o.final, FF_SKIP);
    assert_int_equal(o.nsteps, 1);
}

static void test_repeats_last(void **state)
{
    (void)state;
    struct filter_env env = base_env();
    env.repeats = fake_repeats;
    repeats_calls = 0;
    /* The other side is false: header-repeats is not evaluated (the
     * message is not counted). */
    struct outcome o = run("a: if header-repeats(\"subject\", 10) and "
                           "rcpt-count > 5 { drop(); }",
                           mixed, &env, NULL);
    assert_int_equal(o.final, FF_NONE);
    assert_int_equal(repeats_calls, 0);
    o = run("a: if header-repeats(\"subject\", 10) and rcpt-count == 1 "
            "{ drop(); }",
            mixed, &env, NULL);
    assert_int_equal(o.final, FF_DROP);
    assert_int_equal(repeats_calls, 1);
}

static void test_match_limit(void **state)
{
    (void)state;
    struct filter_env env = base_env();
    /* Catastrophic backtracking against a long subject: stopped by the
     * match limit, reported, counted as no match; the next filter runs. */
    struct buf b = {0};
    buf_puts(&b, "Subject: ");
    for (int i = 0; i < 40; i++)
        buf_putc(&b, 'a');
    buf_puts(&b, "!\r\n\r\nbody\r\n");
    buf_putc(&b, '\0');
    struct filter_result res;
    run("a: if subject == \"^(a+)+$\" { drop(); }\n"
        "b: if true { tag-message(\"after\"); }",
        b.data, &env, &res);
    assert_int_equal(res.final, FF_NONE);
    assert_int_equal(res.nerrors, 1);
    assert_non_null(strstr(res.errors[0], "filter a: 1:7: regex not evaluated"));
    assert_int_equal(res.nsteps, 1);
    filter_result_free(&res);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed002),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_actions),
        cmocka_unit_test(test_repeats_last),
        cmocka_unit_test(test_match_limit),
    };
    return cmocka_run_group_tests(tests, NULL, free_set);
}
