/*
 * test_smtp_cmd.c - table-driven tests of the SMTP command and address
 * parser: verbs, control characters, MAIL/RCPT paths at and around every
 * limit, source routes, quoted local parts, address literals, SMTPUTF8,
 * MAIL parameters, HELO and BDAT arguments.
 */
#include "smtp/smtp_cmd.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

/* --- smtp_cmd_parse ------------------------------------------------------ */

struct cmd_case {
    const char *label;
    const char *line;
    size_t len; /* 0: strlen(line) */
    enum smtp_reply_id reply;
    enum smtp_verb verb;
    const char *arg;
};

static const struct cmd_case cmd_cases[] = {
    {"HELO", "HELO mx.example", 0, R_NONE, SMTP_HELO, "mx.example"},
    {"EHLO", "EHLO mx.example", 0, R_NONE, SMTP_EHLO, "mx.example"},
    {"MAIL", "MAIL FROM:<a@b.example>", 0, R_NONE, SMTP_MAIL,
     "FROM:<a@b.example>"},
    {"RCPT", "RCPT TO:<a@b.example>", 0, R_NONE, SMTP_RCPT, "TO:<a@b.example>"},
    {"DATA", "DATA", 0, R_NONE, SMTP_DATA, ""},
    {"BDAT", "BDAT 100 LAST", 0, R_NONE, SMTP_BDAT, "100 LAST"},
    {"RSET", "RSET", 0, R_NONE, SMTP_RSET, ""},
    {"NOOP", "NOOP", 0, R_NONE, SMTP_NOOP, ""},
    {"QUIT", "QUIT", 0, R_NONE, SMTP_QUIT, ""},
    {"VRFY", "VRFY user", 0, R_NONE, SMTP_VRFY, "user"},
    {"EXPN", "EXPN list", 0, R_NONE, SMTP_EXPN, "list"},
    {"HELP", "HELP", 0, R_NONE, SMTP_HELP, ""},
    {"STARTTLS", "STARTTLS", 0, R_NONE, SMTP_STARTTLS, ""},
    {"AUTH", "AUTH PLAIN AGFiAGM=", 0, R_NONE, SMTP_AUTH, "PLAIN AGFiAGM="},
    {"lower case verb", "mail FROM:<>", 0, R_NONE, SMTP_MAIL, "FROM:<>"},
    {"mixed case verb", "StArTtLs", 0, R_NONE, SMTP_STARTTLS, ""},
    {"several spaces", "NOOP    x", 0, R_NONE, SMTP_NOOP, "x"},
    {"tab separator", "NOOP\tx", 0, R_NONE, SMTP_NOOP, "x"},
    {"trailing blanks trimmed", "HELO host \t ", 0, R_NONE, SMTP_HELO, "host"},
    {"trailing blanks only", "DATA  ", 0, R_NONE, SMTP_DATA, ""},
    {"inner blanks kept", "NOOP a  b", 0, R_NONE, SMTP_NOOP, "a  b"},
    {"utf-8 in argument", "NOOP \xc3\xa9t\xc3\xa9", 0, R_NONE, SMTP_NOOP,
     "\xc3\xa9t\xc3\xa9"},
    {"unknown verb", "FOO bar", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, "bar"},
    {"masked STARTTLS", "XXXXXXXX", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, ""},
    {"masked EHLO", "XXXX mx.example", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN,
     "mx.example"},
    {"masked long", "XXXXXXXXXXXXXX", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, ""},
    {"verb prefix", "MAI FROM:<>", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, "FROM:<>"},
    {"verb too long", "MAILX FROM:<>", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN,
     "FROM:<>"},
    {"verb glued", "MAIL:FROM", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, ""},
    {"leading space", " NOOP", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, "NOOP"},
    {"empty line", "", 0, R_UNKNOWN_CMD, SMTP_UNKNOWN, ""},
    {"NUL inside", "NOOP a\0b", 8, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"bare CR", "NOOP a\rb", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"bare LF", "NOOP a\nb", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"escape char", "NOOP \x1b[1m", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"DEL", "NOOP \x7f", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"control in verb", "NO\x01OP", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
    {"control in unknown", "FOO \x02", 0, R_SYNTAX, SMTP_UNKNOWN, ""},
};

/* Each command line gives its verb, canonical name and trimmed argument. */
static void test_cmd_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(cmd_cases); i++) {
        const struct cmd_case *t = &cmd_cases[i];
        struct smtp_cmd cmd;
        size_t len = t->len ? t->len : strlen(t->line);
        print_message("# cmd: %s\n", t->label);
        assert_int_equal(smtp_cmd_parse(t->line, len, &cmd), t->reply);
        assert_int_equal(cmd.verb, t->verb);
        assert_string_equal(cmd.arg, t->arg);
        if (t->reply == R_NONE)
            assert_non_null(cmd.name);
        else
            assert_null(cmd.name);
    }
}

/* Line length: 510 octets (512 with CRLF) is accepted, 511 is not. */
static void test_cmd_line_limit(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        size_t len;
        enum smtp_reply_id reply;
    } cases[] = {
        {"510 octets", SMTP_CMD_LINE_MAX - 2, R_NONE},
        {"511 octets", SMTP_CMD_LINE_MAX - 1, R_LINE_TOO_LONG},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char line[SMTP_CMD_LINE_MAX + 1];
        struct smtp_cmd cmd;
        print_message("# line limit: %s\n", cases[i].label);
        memset(line, 'x', sizeof(line));
        memcpy(line, "NOOP ", 5);
        line[cases[i].len] = '\0';
        assert_int_equal(smtp_cmd_parse(line, cases[i].len, &cmd),
                         cases[i].reply);
        if (cases[i].reply == R_NONE)
            assert_int_equal(strlen(cmd.arg), cases[i].len - 5);
    }
}

/* --- MAIL FROM ----------------------------------------------------------- */

struct mail_case {
    const char *label;
    const char *arg;
    enum smtp_reply_id reply;
    const char *addr;   /* expected addr on success */
    const char *domain; /* expected domain, NULL for none */
    bool utf8;
    const char *why; /* expected reason on failure, NULL: don't check */
};

#define OK(l, a, ad, d)                                                        \
    {                                                                          \
        l, a, R_NONE, ad, d, false, NULL                                       \
    }
#define OKU(l, a, ad, d)                                                       \
    {                                                                          \
        l, a, R_NONE, ad, d, true, NULL                                        \
    }
#define BAD(l, a, r, w)                                                        \
    {                                                                          \
        l, a, r, NULL, NULL, false, w                                          \
    }

static const struct mail_case mail_cases[] = {
    OK("simple", "FROM:<user@example.com>", "user@example.com", "example.com"),
    OK("keyword lower case", "from:<user@example.com>", "user@example.com",
       "example.com"),
    OK("keyword mixed case", "FrOm:<user@example.com>", "user@example.com",
       "example.com"),
    OK("space after colon", "FROM: <user@example.com>", "user@example.com",
       "example.com"),
    OK("spaces after colon", "FROM:   <a@b>", "a@b", "b"),
    OK("mixed case kept", "FROM:<User@Example.COM>", "User@Example.COM",
       "Example.COM"),
    OK("single label domain", "FROM:<root@localhost>", "root@localhost",
       "localhost"),
    OK("atext specials", "FROM:<a!#$%&'*+-/=?^_`{|}~z@example.com>",
       "a!#$%&'*+-/=?^_`{|}~z@example.com", "example.com"),
    OK("dots in local part", "FROM:<first.middle.last@example.com>",
       "first.middle.last@example.com", "example.com"),
    OK("percent hack kept", "FROM:<user%other.example@example.com>",
       "user%other.example@example.com", "example.com"),
    OK("hyphen and digits", "FROM:<a@x-1.0-y.example>", "a@x-1.0-y.example",
       "x-1.0-y.example"),
    OK("quoted local part", "FROM:<\"john doe\"@example.com>",
       "\"john doe\"@example.com", "example.com"),
    OK("quoted with @", "FROM:<\"a@b\"@example.com>", "\"a@b\"@example.com",
       "example.com"),
    OK("quoted with >", "FROM:<\"a>b\"@example.com>", "\"a>b\"@example.com",
       "example.com"),
    OK("quoted pair quote", "FROM:<\"a\\\"b\"@example.com>",
       "\"a\\\"b\"@example.com", "example.com"),
    OK("quoted pair backslash", "FROM:<\"a\\\\b\"@example.com>",
       "\"a\\\\b\"@example.com", "example.com"),
    OK("quoted empty", "FROM:<\"\"@example.com>", "\"\"@example.com",
       "example.com"),
    OK("quoted dots", "FROM:<\"..a.\"@example.com>", "\"..a.\"@example.com",
       "example.com"),
    OK("source route", "FROM:<@a.example:user@example.com>", "user@example.com",
       "example.com"),
    OK("source route two hops", "FROM:<@a.example,@b.example:user@example.com>",
       "user@example.com", "example.com"),
    OK("ipv4 literal", "FROM:<user@[192.0.2.1]>", "user@[192.0.2.1]",
       "[192.0.2.1]"),
    OK("ipv6 literal", "FROM:<user@[IPv6:2001:db8::1]>",
       "user@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    OK("ipv6 literal lower tag", "FROM:<user@[ipv6:::1]>", "user@[ipv6:::1]",
       "[ipv6:::1]"),
    OK("ipv6 v4 tail", "FROM:<user@[IPv6:::ffff:192.0.2.1]>",
       "user@[IPv6:::ffff:192.0.2.1]", "[IPv6:::ffff:192.0.2.1]"),
    OK("trailing blank after path", "FROM:<a@b.example>  ", "a@b.example",
       "b.example"),
    OKU("utf-8 local with SMTPUTF8",
        "FROM:<\xc3\xa9l\xc3\xa8ve@example.com> SMTPUTF8",
        "\xc3\xa9l\xc3\xa8ve@example.com", "example.com"),
    OKU("utf-8 domain with SMTPUTF8",
        "FROM:<a@\xe4\xbe\x8b\xe3\x81\x88.example> smtputf8",
        "a@\xe4\xbe\x8b\xe3\x81\x88.example",
        "\xe4\xbe\x8b\xe3\x81\x88.example"),
    OKU("4-byte utf-8", "FROM:<\xf0\x9f\x98\x80@example.com> SMTPUTF8",
        "\xf0\x9f\x98\x80@example.com", "example.com"),
    OKU("utf-8 quoted", "FROM:<\"\xc3\xa9 x\"@example.com> SMTPUTF8",
        "\"\xc3\xa9 x\"@example.com", "example.com"),

    BAD("no FROM:", "<a@b>", R_SYNTAX, "missing 'FROM:'"),
    BAD("FROM without colon", "FROM <a@b>", R_SYNTAX, "missing 'FROM:'"),
    BAD("TO: in MAIL", "TO:<a@b>", R_SYNTAX, "missing 'FROM:'"),
    BAD("empty argument", "", R_SYNTAX, "missing 'FROM:'"),
    BAD("missing <", "FROM:a@b.example", R_SYNTAX_MAIL, "missing '<'"),
    BAD("nothing after colon", "FROM:", R_SYNTAX_MAIL, "missing '<'"),
    BAD("missing >", "FROM:<a@b.example", R_SYNTAX_MAIL, "missing '>'"),
    BAD("missing > with param", "FROM:<a@b.example SIZE=1", R_SYNTAX_MAIL,
        "missing '>'"),
    BAD("unterminated quote", "FROM:<\"a@b.example>", R_SYNTAX_MAIL,
        "missing '>'"),
    BAD("junk after >", "FROM:<a@b.example>x", R_SYNTAX_MAIL,
        "junk after path"),
    BAD("no domain", "FROM:<user>", R_SYNTAX_MAIL, "missing domain"),
    BAD("postmaster in MAIL", "FROM:<postmaster>", R_SYNTAX_MAIL,
        "missing domain"),
    BAD("empty domain", "FROM:<user@>", R_SYNTAX_MAIL, "missing domain"),
    BAD("empty local part", "FROM:<@example.com>", R_SYNTAX_MAIL,
        "source route syntax"),
    BAD("leading dot", "FROM:<.a@example.com>", R_SYNTAX_MAIL,
        "leading dot in local part"),
    BAD("trailing dot local", "FROM:<a.@example.com>", R_SYNTAX_MAIL,
        "trailing dot in local part"),
    BAD("double dot", "FROM:<a..b@example.com>", R_SYNTAX_MAIL,
        "double dot in local part"),
    BAD("space in local", "FROM:<a b@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("comma in local", "FROM:<a,b@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("two @", "FROM:<a@b@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("paren in local", "FROM:<a(b)@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("tab in local", "FROM:<a\tb@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("control in quoted", "FROM:<\"a\x01\"@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("quote mid local", "FROM:<a\"b\"@example.com>", R_SYNTAX_MAIL,
        "bad character in local part"),
    BAD("text after quote", "FROM:<\"a\"b@example.com>", R_SYNTAX_MAIL,
        "unterminated quoted local part"),
    BAD("quoted pair control", "FROM:<\"a\\\x01\"@example.com>", R_SYNTAX_MAIL,
        "bad quoted pair in local part"),
    BAD("trailing dot domain", "FROM:<a@example.com.>", R_SYNTAX_MAIL,
        "trailing dot in domain"),
    BAD("empty label", "FROM:<a@example..com>", R_SYNTAX_MAIL,
        "empty label in domain"),
    BAD("leading dot domain", "FROM:<a@.example.com>", R_SYNTAX_MAIL,
        "empty label in domain"),
    BAD("hyphen first", "FROM:<a@-x.example>", R_SYNTAX_MAIL,
        "hyphen at label edge"),
    BAD("hyphen last", "FROM:<a@x-.example>", R_SYNTAX_MAIL,
        "hyphen at label edge"),
    BAD("underscore domain", "FROM:<a@my_host.example>", R_SYNTAX_MAIL,
        "bad character in domain"),
    BAD("space in domain", "FROM:<a@exa mple.com>", R_SYNTAX_MAIL,
        "bad character in domain"),
    BAD("ipv4 literal bad octet", "FROM:<a@[192.0.2.256]>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("ipv4 literal short", "FROM:<a@[192.0.2]>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("literal unclosed", "FROM:<a@[192.0.2.1>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("literal empty", "FROM:<a@[]>", R_SYNTAX_MAIL, "bad address literal"),
    BAD("literal name", "FROM:<a@[example.com]>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("ipv6 without tag", "FROM:<a@[2001:db8::1]>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("ipv6 bad", "FROM:<a@[IPv6:2001:db8:::1]>", R_SYNTAX_MAIL,
        "bad ipv6 address literal"),
    BAD("ipv6 tag with ipv4", "FROM:<a@[IPv6:192.0.2.1]>", R_SYNTAX_MAIL,
        "bad ipv6 address literal"),
    BAD("general literal", "FROM:<a@[x-tag:abc]>", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("route without colon", "FROM:<@a.example,user@example.com>",
        R_SYNTAX_MAIL, "source route syntax"),
    BAD("route trailing comma", "FROM:<@a.example,:user@example.com>",
        R_SYNTAX_MAIL, "source route syntax"),
    BAD("route missing @", "FROM:<@a.example,b.example:user@example.com>",
        R_SYNTAX_MAIL, "source route syntax"),
    BAD("route bad domain", "FROM:<@a..example:user@example.com>",
        R_SYNTAX_MAIL, "source route syntax"),
    BAD("route literal", "FROM:<@[192.0.2.1]:user@example.com>", R_SYNTAX_MAIL,
        "source route syntax"),
    BAD("route only", "FROM:<@a.example:>", R_SYNTAX_MAIL, "empty mailbox"),
    BAD("route then bad mailbox", "FROM:<@a.example:user>", R_SYNTAX_MAIL,
        "missing domain"),
    BAD("utf-8 without SMTPUTF8", "FROM:<\xc3\xa9@example.com>",
        R_UTF8_NEEDS_SMTPUTF8, NULL),
    BAD("utf-8 domain without SMTPUTF8", "FROM:<a@\xc3\xa9.example>",
        R_UTF8_NEEDS_SMTPUTF8, NULL),
    BAD("utf-8 in route without SMTPUTF8",
        "FROM:<@\xc3\xa9.example:a@example.com>", R_UTF8_NEEDS_SMTPUTF8, NULL),
    BAD("malformed utf-8 lone continuation", "FROM:<\x80@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("malformed utf-8 truncated", "FROM:<\xc3@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("malformed utf-8 overlong", "FROM:<\xc0\xaf@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("malformed utf-8 overlong 3",
        "FROM:<\xe0\x80\xaf@example.com> SMTPUTF8", R_SYNTAX_MAIL,
        "malformed utf-8"),
    BAD("malformed utf-8 surrogate", "FROM:<\xed\xa0\x80@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("malformed utf-8 too big",
        "FROM:<\xf4\x90\x80\x80@example.com> SMTPUTF8", R_SYNTAX_MAIL,
        "malformed utf-8"),
    BAD("malformed utf-8 F5", "FROM:<\xf5\x80\x80\x80@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("malformed utf-8 without SMTPUTF8", "FROM:<\xff@example.com>",
        R_SYNTAX_MAIL, "malformed utf-8"),
    BAD("utf-8 in literal", "FROM:<a@[\xc3\xa9]> SMTPUTF8", R_SYNTAX_MAIL,
        "bad address literal"),
    BAD("utf-8 quoted pair", "FROM:<\"\\\xc3\xa9\"@example.com> SMTPUTF8",
        R_SYNTAX_MAIL, "bad quoted pair in local part"),
};

/* MAIL paths: accepted forms and every syntax error, with the reason. */
static void test_mail_paths(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(mail_cases); i++) {
        const struct mail_case *t = &mail_cases[i];
        struct smtp_path path;
        struct smtp_mail_params params;
        const char *why = NULL;
        print_message("# mail: %s\n", t->label);
        assert_int_equal(smtp_parse_mail(t->arg, &path, &params, &why),
                         t->reply);
        if (t->reply != R_NONE) {
            assert_non_null(why);
            if (t->why)
                assert_string_equal(why, t->why);
            continue;
        }
        assert_false(path.is_null);
        assert_string_equal(path.addr, t->addr);
        assert_int_equal(path.utf8, t->utf8);
        if (t->domain) {
            assert_non_null(path.domain);
            assert_string_equal(path.domain, t->domain);
            assert_int_equal(path.local_len,
                             (size_t)(path.domain - path.addr - 1));
        } else
            assert_null(path.domain);
    }
}

/* The null reverse path, with and without parameters. */
static void test_mail_null_path(void **state)
{
    (void)state;
    static const char *const args[] = {
        "FROM:<>", "from: <>", "FROM:<> SIZE=100", "FROM:<> BODY=8BITMIME"};
    for (size_t i = 0; i < ARRAY_LEN(args); i++) {
        struct smtp_path path;
        struct smtp_mail_params params;
        print_message("# null path: %s\n", args[i]);
        assert_int_equal(smtp_parse_mail(args[i], &path, &params, NULL),
                         R_NONE);
        assert_true(path.is_null);
        assert_string_equal(path.addr, "");
        assert_null(path.domain);
        assert_false(path.utf8);
    }
}

struct param_case {
    const char *label;
    const char *arg;
    enum smtp_reply_id reply;
    uint64_t size;
    bool size_given;
    enum smtp_body body;
    bool smtputf8;
    const char *why;
};

static const struct param_case param_cases[] = {
    {"none", "FROM:<a@b>", R_NONE, 0, false, SMTP_BODY_7BIT, false, NULL},
    {"SIZE", "FROM:<a@b> SIZE=12345", R_NONE, 12345, true, SMTP_BODY_7BIT,
     false, NULL},
    {"size lower case", "FROM:<a@b> size=1", R_NONE, 1, true, SMTP_BODY_7BIT,
     false, NULL},
    {"SIZE=0", "FROM:<a@b> SIZE=0", R_NONE, 0, true, SMTP_BODY_7BIT, false,
     NULL},
    {"SIZE 20 digits", "FROM:<a@b> SIZE=18446744073709551615", R_NONE,
     UINT64_MAX, true, SMTP_BODY_7BIT, false, NULL},
    {"SIZE leading zeros", "FROM:<a@b> SIZE=00000000000000000001", R_NONE, 1,
     true, SMTP_BODY_7BIT, false, NULL},
    {"BODY=7BIT", "FROM:<a@b> BODY=7BIT", R_NONE, 0, false, SMTP_BODY_7BIT,
     false, NULL},
    {"BODY=8BITMIME", "FROM:<a@b> BODY=8BITMIME", R_NONE, 0, false,
     SMTP_BODY_8BITMIME, false, NULL},
    {"BODY=BINARYMIME", "FROM:<a@b> BODY=BINARYMIME", R_NONE, 0, false,
     SMTP_BODY_BINARYMIME, false, NULL},
    {"body lower case", "FROM:<a@b> body=8bitmime", R_NONE, 0, false,
     SMTP_BODY_8BITMIME, false, NULL},
    {"SMTPUTF8", "FROM:<a@b> SMTPUTF8", R_NONE, 0, false, SMTP_BODY_7BIT, true,
     NULL},
    {"all three", "FROM:<a@b> SIZE=9 BODY=8BITMIME SMTPUTF8", R_NONE, 9, true,
     SMTP_BODY_8BITMIME, true, NULL},
    {"all three reordered", "FROM:<a@b>   smtputf8  Body=7bit  Size=7", R_NONE,
     7, true, SMTP_BODY_7BIT, true, NULL},
    {"SIZE 21 digits", "FROM:<a@b> SIZE=000000000000000000001", R_BAD_PARAM, 0,
     false, 0, false, "bad parameter value"},
    {"SIZE overflow", "FROM:<a@b> SIZE=18446744073709551616", R_BAD_PARAM, 0,
     false, 0, false, "bad parameter value"},
    {"SIZE empty", "FROM:<a@b> SIZE=", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"SIZE no value", "FROM:<a@b> SIZE", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"SIZE negative", "FROM:<a@b> SIZE=-1", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"SIZE hex", "FROM:<a@b> SIZE=0x10", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"SIZE twice", "FROM:<a@b> SIZE=1 SIZE=2", R_BAD_PARAM, 0, false, 0, false,
     "duplicate parameter"},
    {"BODY bad", "FROM:<a@b> BODY=9BIT", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"BODY empty", "FROM:<a@b> BODY=", R_BAD_PARAM, 0, false, 0, false,
     "bad parameter value"},
    {"BODY twice", "FROM:<a@b> BODY=7BIT body=8BITMIME", R_BAD_PARAM, 0, false,
     0, false, "duplicate parameter"},
    {"SMTPUTF8 value", "FROM:<a@b> SMTPUTF8=yes", R_BAD_PARAM, 0, false, 0,
     false, "bad parameter value"},
    {"SMTPUTF8 twice", "FROM:<a@b> SMTPUTF8 SMTPUTF8", R_BAD_PARAM, 0, false, 0,
     false, "duplicate parameter"},
    {"unknown", "FROM:<a@b> ENVID=x", R_BAD_PARAM, 0, false, 0, false,
     "unknown parameter"},
    /* AUTH= (RFC 4954 5) is accepted when it is "<>" or xtext. */
    {"AUTH empty", "FROM:<a@b> AUTH=<>", R_NONE, 0, false, SMTP_BODY_7BIT,
     false, NULL},
    {"AUTH xtext", "FROM:<a@b> AUTH=alice+2Bx@example.com", R_NONE, 0, false,
     SMTP_BODY_7BIT, false, NULL},
    {"AUTH bad escape", "FROM:<a@b> AUTH=a+2", R_BAD_PARAM, 0, false, 0,
     false, "bad parameter value"},
    {"AUTH raw plus-equals", "FROM:<a@b> AUTH=a=b", R_BAD_PARAM, 0, false, 0,
     false, "bad parameter value"},
    {"unknown RET", "FROM:<a@b> RET=HDRS", R_BAD_PARAM, 0, false, 0, false,
     "unknown parameter"},
    {"bare =", "FROM:<a@b> =", R_BAD_PARAM, 0, false, 0, false,
     "unknown parameter"},
    {"tab separated", "FROM:<a@b> SIZE=1\tBODY=7BIT", R_BAD_PARAM, 0, false, 0,
     false, "bad parameter value"},
};

/* MAIL parameters: SIZE, BODY, SMTPUTF8 and every refusal. */
static void test_mail_params(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(param_cases); i++) {
        const struct param_case *t = &param_cases[i];
        struct smtp_path path;
        struct smtp_mail_params p;
        const char *why = NULL;
        print_message("# param: %s\n", t->label);
        assert_int_equal(smtp_parse_mail(t->arg, &path, &p, &why), t->reply);
        if (t->reply != R_NONE) {
            assert_string_equal(why, t->why);
            continue;
        }
        assert_int_equal(p.size, t->size);
        assert_int_equal(p.size_given, t->size_given);
        assert_int_equal(p.body, t->body);
        assert_int_equal(p.smtputf8, t->smtputf8);
    }
}

/* --- limits ----------------------------------------------------------------
 */

struct limit_case {
    const char *label;
    size_t local;     /* local part length */
    bool quoted;      /* local part is a quoted string of that length */
    size_t labels[5]; /* domain label lengths, 0-terminated */
    enum smtp_reply_id reply;
};

static const struct limit_case limit_cases[] = {
    {"path 256", 64, false, {63, 63, 61}, R_NONE},
    {"path 257", 64, false, {63, 63, 62}, R_PATH_TOO_LONG},
    {"path 256 short local", 1, false, {63, 63, 63, 60}, R_NONE},
    {"path 257 short local", 1, false, {63, 63, 63, 61}, R_PATH_TOO_LONG},
    {"local 64", 64, false, {7, 3}, R_NONE},
    {"local 65", 65, false, {7, 3}, R_LOCAL_TOO_LONG},
    {"quoted local 64", 64, true, {7, 3}, R_NONE},
    {"quoted local 65", 65, true, {7, 3}, R_LOCAL_TOO_LONG},
    {"label 63", 4, false, {63, 3}, R_NONE},
    {"label 64", 4, false, {64, 3}, R_DOMAIN_TOO_LONG},
    {"last label 64", 4, false, {3, 64}, R_DOMAIN_TOO_LONG},
    /* The path limit (256 with <>) caps a domain at 252 octets, so the
     * 255-octet domain limit is reached only through HELO. */
    {"domain 255", 1, false, {63, 63, 63, 63}, R_PATH_TOO_LONG},
};

/* Build "<local@labels>" into out (which must be large enough). */
static void build_path(char *out, const struct limit_case *t)
{
    size_t n = 0;
    out[n++] = '<';
    memset(out + n, 'l', t->local);
    if (t->quoted) {
        out[n] = '"';
        out[n + t->local - 1] = '"';
    }
    n += t->local;
    out[n++] = '@';
    for (size_t i = 0; t->labels[i]; i++) {
        if (i)
            out[n++] = '.';
        memset(out + n, (int)('a' + i), t->labels[i]);
        n += t->labels[i];
    }
    out[n++] = '>';
    out[n] = '\0';
}

/* Every length limit just inside and just outside, for MAIL and RCPT. */
static void test_limits(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(limit_cases); i++) {
        const struct limit_case *t = &limit_cases[i];
        char p[600], arg[620];
        struct smtp_path path;
        struct smtp_mail_params params;
        enum smtp_reply_id want_rcpt = t->reply;
        print_message("# limit: %s\n", t->label);
        build_path(p, t);
        assert_true(str_printf(arg, sizeof(arg), "FROM:%s", p));
        assert_int_equal(smtp_parse_mail(arg, &path, &params, NULL), t->reply);
        if (t->reply == R_NONE)
            assert_int_equal(strlen(path.addr), strlen(p) - 2);
        assert_true(str_printf(arg, sizeof(arg), "TO:%s", p));
        assert_int_equal(smtp_parse_rcpt(arg, false, &path, NULL), want_rcpt);
    }
}

/* --- RCPT TO ----------------------------------------------------------- */

struct rcpt_case {
    const char *label;
    const char *arg;
    bool smtputf8;
    enum smtp_reply_id reply;
    const char *addr;
    const char *domain;
    const char *why;
};

static const struct rcpt_case rcpt_cases[] = {
    {"simple", "TO:<user@example.com>", false, R_NONE, "user@example.com",
     "example.com", NULL},
    {"keyword lower", "to:<user@example.com>", false, R_NONE,
     "user@example.com", "example.com", NULL},
    {"space after colon", "TO: <a@b.example>", false, R_NONE, "a@b.example",
     "b.example", NULL},
    {"postmaster", "TO:<postmaster>", false, R_NONE, "postmaster", NULL, NULL},
    {"Postmaster mixed", "TO:<PostMaster>", false, R_NONE, "postmaster", NULL,
     NULL},
    {"postmaster with domain", "TO:<Postmaster@Example.com>", false, R_NONE,
     "Postmaster@Example.com", "Example.com", NULL},
    {"postmaster route", "TO:<@a.example:postmaster>", false, R_NONE,
     "postmaster", NULL, NULL},
    {"source route", "TO:<@a.example,@b.example:u@c.example>", false, R_NONE,
     "u@c.example", "c.example", NULL},
    {"quoted with @", "TO:<\"u@other.example\"@example.com>", false, R_NONE,
     "\"u@other.example\"@example.com", "example.com", NULL},
    {"percent hack", "TO:<u%other.example@example.com>", false, R_NONE,
     "u%other.example@example.com", "example.com", NULL},
    {"ipv4 literal", "TO:<u@[10.0.0.1]>", false, R_NONE, "u@[10.0.0.1]",
     "[10.0.0.1]", NULL},
    {"utf-8 with smtputf8", "TO:<\xc3\xa9@example.com>", true, R_NONE,
     "\xc3\xa9@example.com", "example.com", NULL},
    {"utf-8 without smtputf8", "TO:<\xc3\xa9@example.com>", false,
     R_UTF8_NEEDS_SMTPUTF8, NULL, NULL, NULL},
    {"malformed utf-8", "TO:<\xc3\x28@example.com>", true, R_SYNTAX_RCPT, NULL,
     NULL, "malformed utf-8"},
    {"null path", "TO:<>", false, R_SYNTAX_RCPT, NULL, NULL, "null path"},
    {"postmaster quoted", "TO:<\"postmaster\">", false, R_SYNTAX_RCPT, NULL,
     NULL, "missing domain"},
    {"postmasters", "TO:<postmasters>", false, R_SYNTAX_RCPT, NULL, NULL,
     "missing domain"},
    {"no domain", "TO:<user>", false, R_SYNTAX_RCPT, NULL, NULL,
     "missing domain"},
    {"trailing dot", "TO:<user@example.com.>", false, R_SYNTAX_RCPT, NULL, NULL,
     "trailing dot in domain"},
    {"bang path", "TO:<a!b@example.com>", false, R_NONE, "a!b@example.com",
     "example.com", NULL},
    {"double @", "TO:<u@other.example@example.com>", false, R_SYNTAX_RCPT, NULL,
     NULL, "bad character in local part"},
    {"route missing colon", "TO:<@a:b@c>", false, R_NONE, "b@c", "c", NULL},
    {"route bad", "TO:<@a,b@c>", false, R_SYNTAX_RCPT, NULL, NULL,
     "source route syntax"},
    {"missing <", "TO:user@example.com", false, R_SYNTAX_RCPT, NULL, NULL,
     "missing '<'"},
    {"missing >", "TO:<user@example.com", false, R_SYNTAX_RCPT, NULL, NULL,
     "missing '>'"},
    {"no TO:", "<user@example.com>", false, R_SYNTAX, NULL, NULL,
     "missing 'TO:'"},
    {"FROM: in RCPT", "FROM:<user@example.com>", false, R_SYNTAX, NULL, NULL,
     "missing 'TO:'"},
    {"junk after >", "TO:<a@b.example>junk", false, R_SYNTAX_RCPT, NULL, NULL,
     "junk after path"},
    {"NOTIFY param", "TO:<a@b.example> NOTIFY=NEVER", false, R_BAD_PARAM, NULL,
     NULL, "rcpt parameters not supported"},
    {"ORCPT param", "TO:<a@b.example> ORCPT=rfc822;a@b.example", false,
     R_BAD_PARAM, NULL, NULL, "rcpt parameters not supported"},
    {"SMTPUTF8 param", "TO:<a@b.example> SMTPUTF8", true, R_BAD_PARAM, NULL,
     NULL, "rcpt parameters not supported"},
    {"trailing spaces", "TO:<a@b.example>   ", false, R_NONE, "a@b.example",
     "b.example", NULL},
};

/* RCPT paths: postmaster, null path, parameters, SMTPUTF8 from MAIL. */
static void test_rcpt(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(rcpt_cases); i++) {
        const struct rcpt_case *t = &rcpt_cases[i];
        struct smtp_path path;
        const char *why = NULL;
        print_message("# rcpt: %s\n", t->label);
        assert_int_equal(smtp_parse_rcpt(t->arg, t->smtputf8, &path, &why),
                         t->reply);
        if (t->reply != R_NONE) {
            assert_non_null(why);
            if (t->why)
                assert_string_equal(why, t->why);
            continue;
        }
        assert_false(path.is_null);
        assert_string_equal(path.addr, t->addr);
        if (t->domain)
            assert_string_equal(path.domain, t->domain);
        else
            assert_null(path.domain);
    }
}

/* --- HELO and BDAT ---------------------------------------------------------
 */

static void test_helo(void **state)
{
    (void)state;
    char long_name[300];
    static const struct {
        const char *label;
        const char *arg;
        enum smtp_reply_id reply;
    } cases[] = {
        {"domain", "mx.example.com", R_NONE},
        {"localhost", "localhost", R_NONE},
        {"underscore", "my_host", R_NONE},
        {"ipv4 literal", "[192.0.2.1]", R_NONE},
        {"ipv6 literal", "[IPv6:2001:db8::1]", R_NONE},
        {"trailing dot", "mx.example.com.", R_NONE},
        {"utf-8", "\xc3\xa9.example", R_NONE},
        {"empty", "", R_HELO_SYNTAX},
        {"space", "mx example", R_HELO_SYNTAX},
        {"tab", "mx\texample", R_HELO_SYNTAX},
        {"control", "mx\x01", R_HELO_SYNTAX},
        {"DEL", "mx\x7f", R_HELO_SYNTAX},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        print_message("# helo: %s\n", cases[i].label);
        assert_int_equal(smtp_parse_helo(cases[i].arg), cases[i].reply);
    }
    print_message("# helo: 255 octets\n");
    memset(long_name, 'h', sizeof(long_name));
    long_name[255] = '\0';
    assert_int_equal(smtp_parse_helo(long_name), R_NONE);
    print_message("# helo: 256 octets\n");
    long_name[255] = 'h';
    long_name[256] = '\0';
    assert_int_equal(smtp_parse_helo(long_name), R_HELO_SYNTAX);
}

static void test_bdat(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *arg;
        enum smtp_reply_id reply;
        uint64_t size;
        bool last;
    } cases[] = {
        {"size", "100", R_NONE, 100, false},
        {"zero", "0", R_NONE, 0, false},
        {"size LAST", "100 LAST", R_NONE, 100, true},
        {"last lower", "5 last", R_NONE, 5, true},
        {"last mixed", "5 LaSt", R_NONE, 5, true},
        {"two spaces", "5  LAST", R_NONE, 5, true},
        {"20 digits", "18446744073709551615", R_NONE, UINT64_MAX, false},
        {"21 digits", "000000000000000000001", R_SYNTAX, 0, false},
        {"overflow", "18446744073709551616", R_SYNTAX, 0, false},
        {"empty", "", R_SYNTAX, 0, false},
        {"LAST only", "LAST", R_SYNTAX, 0, false},
        {"negative", "-1", R_SYNTAX, 0, false},
        {"plus", "+1", R_SYNTAX, 0, false},
        {"junk", "10 MORE", R_SYNTAX, 0, false},
        {"LAST junk", "10 LAST x", R_SYNTAX, 0, false},
        {"LASTX", "10 LASTX", R_SYNTAX, 0, false},
        {"glued", "10LAST", R_SYNTAX, 0, false},
        {"tab", "10\tLAST", R_SYNTAX, 0, false},
        {"leading space", " 10", R_SYNTAX, 0, false},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint64_t size = 42;
        bool last = true;
        print_message("# bdat: %s\n", cases[i].label);
        assert_int_equal(smtp_parse_bdat(cases[i].arg, &size, &last),
                         cases[i].reply);
        if (cases[i].reply != R_NONE)
            continue;
        assert_int_equal(size, cases[i].size);
        assert_int_equal(last, cases[i].last);
    }
}

/* A command line goes through smtp_cmd_parse then the argument parser. */
static void test_pipeline(void **state)
{
    (void)state;
    struct smtp_cmd cmd;
    struct smtp_path path;
    struct smtp_mail_params params;
    const char *line = "mail from: <Alice@Example.ORG> size=10 \t ";
    assert_int_equal(smtp_cmd_parse(line, strlen(line), &cmd), R_NONE);
    assert_int_equal(cmd.verb, SMTP_MAIL);
    assert_string_equal(cmd.name, "MAIL");
    assert_int_equal(smtp_parse_mail(cmd.arg, &path, &params, NULL), R_NONE);
    assert_string_equal(path.addr, "Alice@Example.ORG");
    assert_int_equal(params.size, 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmd_table),
        cmocka_unit_test(test_cmd_line_limit),
        cmocka_unit_test(test_mail_paths),
        cmocka_unit_test(test_mail_null_path),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_rcpt),
        cmocka_unit_test(test_helo),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_pipeline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
