/*
 * test_core.c - unit tests for src/core: buffers, addresses, the mail log
 * line shapes (golden), and the persistent ID counters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/ids.h"
#include "core/mlog.h"
#include "core/netaddr.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- buf ---------------------------------------------------------------- */

static void test_buf_basics(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_string_equal(buf_str(&b), "");
    buf_puts(&b, "abc");
    buf_printf(&b, "-%d-", 42);
    buf_putc(&b, 'z');
    assert_string_equal(buf_str(&b), "abc-42-z");
    buf_consume(&b, 4);
    assert_string_equal(buf_str(&b), "42-z");
    for (int i = 0; i < 10000; i++)
        buf_putc(&b, 'x');
    assert_int_equal(b.len, 10004);
    assert_int_equal(b.data[b.len], '\0');
    buf_free(&b);
}

static void test_buf_escape(void **state)
{
    (void)state;
    static const struct {
        const char *label, *in, *out;
        char q;
    } cases[] = {
        {"plain", "hello", "hello", 0},
        {"crlf", "a\r\nb", "a\\r\\nb", 0},
        {"forged log line", "x\nFri Info: MID 1 queued",
         "x\\nFri Info: MID 1 queued", 0},
        {"control", "\x01\x7f", "\\x01\\x7f", 0},
        {"backslash", "a\\b", "a\\\\b", 0},
        {"quote", "it's", "it\\'s", '\''},
        {"utf8 kept", "gr\xc3\xbc\xc3\x9f", "gr\xc3\xbc\xc3\x9f", 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct buf b = {0};
        buf_put_escaped(&b, cases[i].in, strlen(cases[i].in), cases[i].q);
        if (strcmp(buf_str(&b), cases[i].out) != 0)
            fail_msg("case %s: got '%s'", cases[i].label, buf_str(&b));
        buf_free(&b);
    }
}

/* ---- netaddr ------------------------------------------------------------ */

static void test_hostport(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool ok;
        const char *norm;
    } cases[] = {
        {"127.0.0.1:2525", true, "127.0.0.1:2525"},
        {"[::1]:25", true, "[::1]:25"},
        {"*:25", true, "0.0.0.0:25"},
        {"127.0.0.1", false, NULL},
        {"127.0.0.1:0", false, NULL},
        {"127.0.0.1:65536", false, NULL},
        {"::1:25", false, NULL},
        {"mail.example.com:25", false, NULL},
        {"[::1]25", false, NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct netaddr a;
        char err[128], out[NETADDR_STRLEN];
        bool ok = netaddr_parse_hostport(cases[i].in, &a, err, sizeof(err));
        if (ok != cases[i].ok)
            fail_msg("%s: expected %d", cases[i].in, cases[i].ok);
        if (ok) {
            netaddr_str(&a, out, sizeof(out));
            assert_string_equal(out, cases[i].norm);
        } else
            assert_true(err[0] != '\0');
    }
}

static void test_cidr(void **state)
{
    (void)state;
    static const struct {
        const char *block, *ip;
        bool match;
    } cases[] = {
        {"127.0.0.0/8", "127.0.0.1", true},
        {"127.0.0.0/8", "127.255.1.2", true},
        {"127.0.0.0/8", "128.0.0.1", false},
        {"10.1.2.3", "10.1.2.3", true},
        {"10.1.2.3", "10.1.2.4", false},
        {"10.1.2.0/25", "10.1.2.127", true},
        {"10.1.2.0/25", "10.1.2.128", false},
        {"0.0.0.0/0", "192.0.2.1", true},
        {"::1", "::1", true},
        {"2001:db8::/32", "2001:db8:1::5", true},
        {"2001:db8::/32", "2001:db9::5", false},
        {"127.0.0.0/8", "::ffff:127.0.0.1", true},
        {"127.0.0.0/8", "::1", false},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct cidr c;
        struct netaddr a;
        char err[128];
        assert_true(cidr_parse(cases[i].block, &c, err, sizeof(err)));
        assert_true(netaddr_parse_ip(cases[i].ip, &a));
        if (cidr_match(&c, &a) != cases[i].match)
            fail_msg("%s in %s: expected %d", cases[i].ip, cases[i].block,
                     cases[i].match);
    }
    static const char *const bad[] = {"10.0.0.1/8", "10.0.0.0/33", "x/8",
                                      "::/129", "", "10.0.0.0/"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct cidr c;
        char err[128] = "";
        if (cidr_parse(bad[i], &c, err, sizeof(err)))
            fail_msg("'%s' should be refused", bad[i]);
        assert_true(err[0] != '\0');
    }
}

/* ---- mail log golden shapes --------------------------------------------- */

static char captured[8192];

static void capture(void *arg, const char *line)
{
    (void)arg;
    str_copy(captured, sizeof(captured), line);
}

/* The message part of the last captured line (after "Info: "). */
static const char *last_msg(void)
{
    const char *p = strstr(captured, ": ");
    assert_non_null(p);
    static char msg[8192];
    str_copy(msg, sizeof(msg), p + 2);
    msg[strcspn(msg, "\n")] = '\0';
    return msg;
}

static void test_mlog_shapes(void **state)
{
    (void)state;
    mlog_capture(capture, NULL);

    mlog_icid_new(167, "OutgoingMail", "127.0.0.1", "127.0.0.1", NULL,
                  false);
    assert_string_equal(last_msg(),
                        "New SMTP ICID 167 interface OutgoingMail "
                        "(127.0.0.1) address 127.0.0.1 reverse dns host "
                        "unknown verified no");
    mlog_icid_hat(167, "RELAY", "RELAYLIST", "127.0.0.0/8");
    assert_string_equal(last_msg(),
                        "ICID 167 RELAY SG RELAYLIST match 127.0.0.0/8 SBRS "
                        "not enabled country not enabled");
    mlog_icid_hat(163, "ACCEPT", "UNKNOWNLIST", "ALL");
    assert_string_equal(last_msg(),
                        "ICID 163 ACCEPT SG UNKNOWNLIST match ALL SBRS not "
                        "enabled country not enabled");
    mlog_mid_start(319, 167);
    assert_string_equal(last_msg(), "Start MID 319 ICID 167");
    mlog_mid_from(319, 167, "buyu_c@domain.com");
    assert_string_equal(last_msg(),
                        "MID 319 ICID 167 From: <buyu_c@domain.com>");
    mlog_mid_from(320, 167, "");
    assert_string_equal(last_msg(), "MID 320 ICID 167 From: <>");
    mlog_mid_rcpt(319, 167, 0, "charlieb@domain.com");
    assert_string_equal(last_msg(),
                        "MID 319 ICID 167 RID 0 To: <charlieb@domain.com>");
    mlog_mid_rcpt_rejected(319, 167, "x@other.com", "RAT");
    assert_string_equal(last_msg(),
                        "MID 319 ICID 167 To: <x@other.com> Rejected by RAT");
    mlog_mid_message_id(319, "<abc@d>");
    assert_string_equal(last_msg(), "MID 319 Message-ID '<abc@d>'");
    mlog_mid_subject(319, "it's\r\ninjected");
    assert_string_equal(last_msg(), "MID 319 Subject 'it\\'s\\r\\ninjected'");
    mlog_mid_ready(319, 4096, "a@b");
    assert_string_equal(last_msg(), "MID 319 ready 4096 bytes from <a@b>");
    mlog_mid_queued(319);
    assert_string_equal(last_msg(), "MID 319 queued for delivery");
    mlog_mid_aborted(319);
    assert_string_equal(last_msg(),
                        "Message aborted MID 319 Receiving aborted");
    mlog_icid_close(167);
    assert_string_equal(last_msg(), "ICID 167 close");
    mlog_icid_lost(21916);
    assert_string_equal(last_msg(), "ICID 21916 lost");
    mlog_icid_receiving_failed(5, "Message size exceeds limit");
    assert_string_equal(last_msg(),
                        "ICID 5 Receiving Failed: Message size exceeds limit");
    mlog_icid_unknown_command(5, "XXXX", 4);
    assert_string_equal(last_msg(), "ICID 5 Unknown command: XXXX");
    mlog_icid_invalid_sender(5, "missing '<'", "FROM:a@b");
    assert_string_equal(last_msg(),
                        "ICID 5 Invalid sender address: missing '<': "
                        "'FROM:a@b'");
    mlog_icid_invalid_rcpt(5, 7, "bad domain", "TO:<a@-b>");
    assert_string_equal(last_msg(),
                        "ICID 5 MID 7 Invalid recipient address: bad "
                        "domain: 'TO:<a@-b>'");
    mlog_icid_disconnected(5, "10.0.0.1",
                           "exceeded allowable connection time");
    assert_string_equal(last_msg(),
                        "ICID 5 disconnected address 10.0.0.1, exceeded "
                        "allowable connection time");
    mlog_capture(NULL, NULL);
}

static void test_mlog_format(void **state)
{
    (void)state;
    char line[256];
    setenv("TZ", "UTC", 1);
    tzset();
    /* 2024-10-08 13:21:35 UTC, a Tuesday: ctime layout, day padded. */
    mlog_format(line, sizeof(line), 1728393695, MLOG_INFO,
                "Start MID 319 ICID 167");
    assert_string_equal(line,
                        "Tue Oct  8 13:21:35 2024 Info: Start MID 319 ICID "
                        "167\n");
    mlog_format(line, sizeof(line), 1728393695, MLOG_WARNING, "x");
    assert_string_equal(line, "Tue Oct  8 13:21:35 2024 Warning: x\n");
}

/* ---- ids ---------------------------------------------------------------- */

static void test_ids_survive_restart(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-ids-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    str_printf(path, sizeof(path), "%s/ids", dir);
    char err[256];

    struct ids *ids = ids_open(path, 10, 0, err, sizeof(err));
    assert_non_null(ids);
    uint64_t last_mid = 0, last_icid = 0;
    for (int i = 0; i < 25; i++)
        last_mid = ids_next(ids, ID_MID);
    last_icid = ids_next(ids, ID_ICID);
    assert_int_equal(last_mid, 25);
    assert_int_equal(last_icid, 1);
    /* No orderly close: a crash. Reopen and check nothing repeats. */
    ids_close(ids);
    ids = ids_open(path, 10, 0, err, sizeof(err));
    assert_non_null(ids);
    assert_true(ids_next(ids, ID_MID) > last_mid);
    assert_true(ids_next(ids, ID_ICID) > last_icid);
    assert_true(ids_next(ids, ID_DCID) >= 1);
    ids_close(ids);

    /* The spool's highest MID wins over a stale file. */
    ids = ids_open(path, 10, 5000, err, sizeof(err));
    assert_non_null(ids);
    assert_int_equal(ids_next(ids, ID_MID), 5001);
    ids_close(ids);

    /* A corrupt file is refused with its name. */
    FILE *f = fopen(path, "w");
    fputs("garbage\n", f);
    fclose(f);
    assert_null(ids_open(path, 10, 0, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    char cmd[300];
    str_printf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_basics),
        cmocka_unit_test(test_buf_escape),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_mlog_shapes),
        cmocka_unit_test(test_mlog_format),
        cmocka_unit_test(test_ids_survive_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
