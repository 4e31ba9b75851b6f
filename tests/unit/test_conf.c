/*
 * test_conf.c - unit tests for src/conf: syntax, comments, numbers and
 * suffixes, bounds (driven by the key tables), unknown/duplicate keys,
 * listeners and RATs, includes, input limits, error positions, the
 * built-in default, etc/moat.conf.example and docs/configuration.md.
 *
 * Cases are tables with a label each; a failure names its label and
 * prints the errors the loader returned.
 */
#include "conf/conf_node.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define LIS_IN                                                                 \
    "listener \"In\" { type = public; address = \"127.0.0.1:25\"; }\n"

/* ---- helpers ---- */

static bool has_error(const struct conf_errors *e, const char *want)
{
    for (size_t i = 0; i < e->count; i++)
        if (strstr(e->msgs[i], want))
            return true;
    return false;
}

static void dump(const char *label, const struct conf_errors *e)
{
    fprintf(stderr, "--- %s: %zu error(s)\n", label, e->count);
    conf_errors_print(e, stderr);
}

/* Load text that must be valid; the caller unrefs. */
static struct moat_conf *expect_ok(const char *label, const char *text)
{
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load_string("t.conf", text, &e);
    if (c == NULL || e.count) {
        dump(label, &e);
        fail_msg("%s: expected to load", label);
    }
    conf_errors_free(&e);
    return c;
}

/* Load text that must be refused with an error containing `want`. */
static void expect_error(const char *label, const char *text, const char *want)
{
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load_string("t.conf", text, &e);
    if (c != NULL || !has_error(&e, want)) {
        dump(label, &e);
        conf_unref(c);
        fail_msg("%s: expected an error containing '%s'", label, want);
    }
    conf_errors_free(&e);
}

static void expect_file_error(const char *label, const char *path,
                              const char *want)
{
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load(path, &e);
    if (c != NULL || !has_error(&e, want)) {
        dump(label, &e);
        conf_unref(c);
        fail_msg("%s: expected an error containing '%s'", label, want);
    }
    conf_errors_free(&e);
}

/* Parse only (no validation); returns the tree, or fails. */
static void parse_ok(const char *label, const char *text, struct conf_tree *t)
{
    struct conf_errors e = {0};
    struct conf_diag d = {.errs = &e};
    memset(t, 0, sizeof(*t));
    if (!conf_parse_string(t, "t.conf", text, strlen(text), &d)) {
        dump(label, &e);
        fail_msg("%s: expected to parse", label);
    }
    conf_errors_free(&e);
}

static const struct conf_node *child(const struct conf_node *obj,
                                     const char *key)
{
    for (const struct conf_node *n = obj->child; n; n = n->next)
        if (n->key && strcmp(n->key, key) == 0)
            return n;
    return NULL;
}

static const struct conf_key *row(const struct conf_table *tab,
                                  const char *name)
{
    int i = conf_table_index(tab, name);
    assert_true(i >= 0);
    return &tab->keys[i];
}

/* A numeric or boolean field, read through its table row. */
static uint64_t field(const struct conf_key *k, const void *base)
{
    const char *p = (const char *)base + k->off;
    switch (k->type) {
    case KT_SIZE:
        return *(const uint64_t *)(const void *)p;
    case KT_BOOL:
        return *(const bool *)(const void *)p;
    default:
        return *(const unsigned *)(const void *)p;
    }
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    struct buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    char *s = xstrdup(buf_str(&b));
    buf_free(&b);
    return s;
}

/* ---- syntax ---- */

static const struct {
    const char *label, *text, *key, *want;
} scalar_cases[] = {
    {"equals", "k = v;", "k", "v"},
    {"colon", "k : v", "k", "v"},
    {"colon no space", "k:v", "k", "v"},
    {"no separator", "k v", "k", "v"},
    {"comma separator", "a = 1, k = v,", "k", "v"},
    {"newline only", "a = 1\nk = v\n", "k", "v"},
    {"double quoted", "k = \"v w\"", "k", "v w"},
    {"single quoted", "k = 'v w'", "k", "v w"},
    {"quoted key", "\"k\" = v", "k", "v"},
    {"escapes", "k = \"a\\n\\t\\r\\\\\\\"b\"", "k", "a\n\t\r\\\"b"},
    {"single-quote escapes", "k = 'it\\'s \\\\ \\n'", "k", "it's \\ \\n"},
    {"unicode 2-byte", "k = \"caf\\u00e9\"", "k", "caf\xc3\xa9"},
    {"unicode 3-byte", "k = \"\\u20AC\"", "k", "\xe2\x82\xac"},
    {"surrogate pair", "k = \"\\ud83d\\ude00\"", "k", "\xf0\x9f\x98\x80"},
    {"bare address", "k = 127.0.0.1:25", "k", "127.0.0.1:25"},
    {"bare wildcard", "k *:25", "k", "*:25"},
    {"bare path", "k = var/run/x.pid", "k", "var/run/x.pid"},
    {"number suffix", "k = 10mb;", "k", "10mb"},
    {"hash comment", "# c\nk = v # c\n", "k", "v"},
    {"slash comment", "// c\nk = v // c", "k", "v"},
    {"block comment", "/* c */ k /* c */ = /* c */ v", "k", "v"},
    {"nested comment", "/* a /* b */ c */ k = v", "k", "v"},
    {"multi-line comment", "/*\n k = x\n*/\nk = v", "k", "v"},
    {"comment chars in string", "k = \"#a//b/*c*/\"", "k", "#a//b/*c*/"},
    {"comment at eof", "k = v # no newline", "k", "v"},
    {"CRLF", "a = 1\r\nk = v\r\n", "k", "v"},
};

static void test_syntax_scalars(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(scalar_cases); i++) {
        struct conf_tree t;
        parse_ok(scalar_cases[i].label, scalar_cases[i].text, &t);
        const struct conf_node *n = child(t.root, scalar_cases[i].key);
        if (n == NULL || n->type != NODE_SCALAR ||
            strcmp(n->str, scalar_cases[i].want) != 0)
            fail_msg("%s: got '%s'", scalar_cases[i].label,
                     n && n->str ? n->str : "(none)");
        conf_tree_free(&t);
    }
}

static void test_syntax_blocks(void **state)
{
    (void)state;
    struct conf_tree t;
    parse_ok("blocks",
             "b { x = 1 }\n"
             "listener \"A\" { y = 2; }\n"
             "listener B { z = 3 }\n"
             "arr = [ 1, \"two\", three, ]\n"
             "ws = [1 2]\n"
             "empty = []\n"
             "nested { inner { deep = [ { q = 1 } ] } }\n",
             &t);
    const struct conf_node *n = child(t.root, "b");
    assert_int_equal(n->type, NODE_OBJECT);
    assert_null(n->label);
    assert_string_equal(child(n, "x")->str, "1");
    n = child(t.root, "listener");
    assert_string_equal(n->label, "A");
    assert_int_equal(n->label_pos.line, 2);
    assert_int_equal(n->label_pos.col, 10);
    assert_string_equal(n->next->label, "B");
    n = child(t.root, "arr");
    assert_int_equal(n->type, NODE_ARRAY);
    assert_int_equal(n->nchildren, 3);
    assert_string_equal(n->child->next->next->str, "three");
    assert_true(n->child->next->quoted);
    assert_int_equal(child(t.root, "ws")->nchildren, 2);
    assert_int_equal(child(t.root, "empty")->nchildren, 0);
    n = child(child(child(t.root, "nested"), "inner"), "deep");
    assert_int_equal(n->child->type, NODE_OBJECT);
    conf_tree_free(&t);
}

static const struct {
    const char *label, *text, *want;
} syntax_errors[] = {
    {"unterminated string", "user = \"abc\n",
     "t.conf:1:8: unterminated "
     "string (started here)"},
    {"unterminated single", "\nuser = 'abc",
     "t.conf:2:8: unterminated "
     "string"},
    {"unterminated comment", "a = 1 /* x /* y */",
     "t.conf:1:7: unterminated "
     "comment"},
    {"unterminated block", "mail_log {\n path = x\n",
     "t.conf:1:10: "
     "unterminated block"},
    {"unterminated list", "a = [1, 2", "t.conf:1:5: unterminated list"},
    {"stray brace", "a = 1\n}", "t.conf:2:1: '}' without a matching '{'"},
    {"missing value", "a = ;", "t.conf:1:5: expected a value, found ';'"},
    {"double comma", "a = [1,,2]", "t.conf:1:8: expected a value"},
    {"key then eq", "= 1", "t.conf:1:1: expected a key"},
    {"unknown escape", "a = \"\\q\"", "t.conf:1:6: unknown escape"},
    {"bad \\u", "a = \"\\u12\"", "\\u needs four hex digits"},
    {"\\u0000", "a = \"\\u0000\"", "NUL byte in the string"},
    {"lone high", "a = \"\\ud800x\"", "lone high surrogate"},
    {"lone low", "a = \"\\udc00\"", "lone low surrogate"},
    {"raw control char", "a = \"x\x01y\"", "control character in a string"},
    {"non-ascii bare", "a = caf\xc3\xa9", "non-ASCII text must be quoted"},
    {"empty key", "\"\" = 1", "empty key"},
    {"include without name", ".include ;", "expected a file name"},
};

static void test_syntax_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(syntax_errors); i++)
        expect_error(syntax_errors[i].label, syntax_errors[i].text,
                     syntax_errors[i].want);
}

/* ---- numbers and suffixes ---- */

static const struct {
    const char *label, *key, *value;
    uint64_t want; /* if err is NULL */
    const char *err;
} number_cases[] = {
    {"bare size", "max_message_size", "2048", 2048, NULL},
    {"k", "max_message_size", "10k", 10000, NULL},
    {"K", "max_message_size", "10K", 10000, NULL},
    {"kb", "max_message_size", "10kb", 10240, NULL},
    {"m", "max_message_size", "10m", 10000000, NULL},
    {"mb", "max_message_size", "10MB", 10485760, NULL},
    {"g", "max_message_size", "1g", 1000000000, NULL},
    {"gb", "max_message_size", "1gb", 1073741824, NULL},
    {"time on size", "max_message_size", "5min", 0, "is a time, but this"},
    {"bad suffix", "max_message_size", "5q", 0, "unknown suffix"},
    {"negative", "max_message_size", "-5", 0, "is not a number"},
    {"fraction", "max_message_size", "1.5m", 0, "unknown suffix"},
    {"quoted number", "max_message_size", "\"2048\"", 0, "remove the quotes"},
    {"size overflow", "max_message_size", "99999999999999999gb", 0,
     "is too large"},
    {"digits overflow", "max_message_size", "99999999999999999999999", 0,
     "is too large"},
    {"bare time", "command_timeout", "90", 90, NULL},
    {"s", "command_timeout", "90s", 90, NULL},
    {"min", "command_timeout", "5min", 300, NULL},
    {"MIN", "command_timeout", "5MIN", 300, NULL},
    {"h", "connection_timeout", "2h", 7200, NULL},
    {"d", "connection_timeout", "1d", 86400, NULL},
    {"w", "connection_timeout", "1w", 0, "out of range"},
    {"ms whole", "command_timeout", "2000ms", 2, NULL},
    {"ms fraction", "command_timeout", "1500ms", 0,
     "\"1500ms\" is not a whole number of seconds"},
    {"m on time", "command_timeout", "5m", 0,
     "\"5m\" is 5,000,000 (mega); for minutes write \"5min\""},
    {"k on time", "command_timeout", "5k", 0, "\"5k\" is 5,000 (kilo)"},
    {"kb on time", "command_timeout", "1kb", 0, "is 1,024 (kibibytes)"},
    {"uint plain", "max_recipients", "50", 50, NULL},
    {"uint suffix", "max_recipients", "5k", 0, "without a suffix"},
    {"uint word", "max_recipients", "many", 0, "\"many\" is not a number"},
    {"bool yes", "chunking", "yes", 1, NULL},
    {"bool off", "chunking", "off", 0, NULL},
    {"bool FALSE", "chunking", "FALSE", 0, NULL},
    {"bool on", "chunking", "on", 1, NULL},
    {"bool quoted", "chunking", "\"true\"", 0, "expects true or false"},
    {"bool word", "chunking", "maybe", 0, "expects true or false"},
    {"number as block", "max_errors", "{ a = 1 }", 0,
     "expects a number, not a block"},
    {"number as list", "max_errors", "[1]", 0, "expects a number, not a list"},
};

static char *listener_with(const char *key, const char *value)
{
    return xasprintf("listener \"In\" {\n  type = public;\n  address = "
                     "\"127.0.0.1:25\";\n  %s = %s;\n}\n",
                     key, value);
}

static void test_numbers(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(number_cases); i++) {
        char *text = listener_with(number_cases[i].key, number_cases[i].value);
        if (number_cases[i].err) {
            expect_error(number_cases[i].label, text, number_cases[i].err);
        } else {
            struct moat_conf *c = expect_ok(number_cases[i].label, text);
            uint64_t got = field(row(&conf_table_listener, number_cases[i].key),
                                 &c->listeners[0]);
            if (got != number_cases[i].want)
                fail_msg("%s: got %llu", number_cases[i].label,
                         (unsigned long long)got);
            conf_unref(c);
        }
        free(text);
    }
}

/* ---- bounds, from the tables ---- */

static void bound_case(const struct conf_table *tab, const struct conf_key *k,
                       uint64_t value, bool ok)
{
    char label[128], num[32];
    str_printf(label, sizeof(label), "%s %s = %llu", tab->name, k->name,
               (unsigned long long)value);
    str_printf(num, sizeof(num), "%llu", (unsigned long long)value);
    char *text = tab == &conf_table_top
                     ? xasprintf("%s = %s;\n" LIS_IN, k->name, num)
                     : listener_with(k->name, num);
    if (!ok) {
        expect_error(label, text, "out of range");
    } else {
        struct moat_conf *c = expect_ok(label, text);
        const void *base =
            tab == &conf_table_top ? (void *)c : (void *)c->listeners;
        if (field(k, base) != value)
            fail_msg("%s: stored %llu", label,
                     (unsigned long long)field(k, base));
        conf_unref(c);
    }
    free(text);
}

static void test_bounds_numeric(void **state)
{
    (void)state;
    const struct conf_table *tabs[] = {&conf_table_top, &conf_table_listener};
    size_t tested = 0;
    for (size_t t = 0; t < ARRAY_LEN(tabs); t++) {
        for (size_t i = 0; i < tabs[t]->count; i++) {
            const struct conf_key *k = &tabs[t]->keys[i];
            if (k->type != KT_UINT && k->type != KT_SIZE && k->type != KT_TIME)
                continue;
            bound_case(tabs[t], k, k->min, true);
            bound_case(tabs[t], k, k->max, true);
            bound_case(tabs[t], k, k->min - 1, false);
            bound_case(tabs[t], k, k->max + 1, false);
            tested++;
        }
    }
    assert_true(tested >= 10);
}

static char *repeat(char ch, size_t n)
{
    char *s = xmalloc(n + 1);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

static void test_bounds_strings(void **state)
{
    (void)state;
    char *p107 = repeat('s', 107), *p108 = repeat('s', 108);
    char *l63 = repeat('a', 63), *l64 = repeat('a', 64);
    char *t200 = repeat('x', 200), *t201 = repeat('x', 201);
    char *txt;

    txt = xasprintf("control_socket = \"%s\"\n" LIS_IN, p107);
    conf_unref(expect_ok("control_socket 107", txt));
    free(txt);
    txt = xasprintf("control_socket = \"%s\"\n" LIS_IN, p108);
    expect_error("control_socket 108", txt, "is longer than 107 bytes");
    free(txt);

    txt = xasprintf("hostname = \"%s.%s.%s.%s\"\n" LIS_IN, l63, l63, l63, l63);
    conf_unref(expect_ok("hostname 255", txt));
    free(txt);
    txt =
        xasprintf("hostname = \"%s.%s.%s.%s.a\"\n" LIS_IN, l63, l63, l63, l63);
    expect_error("hostname 257", txt, "is longer than 255 bytes");
    free(txt);
    txt = xasprintf("hostname = \"%s.example\"\n" LIS_IN, l64);
    expect_error("hostname label 64", txt, "not a valid host name");
    free(txt);

    txt = xasprintf(LIS_IN "rat In { a.com { action = reject; code = 550; "
                           "text = \"%s\" } }",
                    t200);
    conf_unref(expect_ok("reply text 200", txt));
    free(txt);
    txt = xasprintf(LIS_IN "rat In { a.com { action = reject; code = 550; "
                           "text = \"%s\" } }",
                    t201);
    expect_error("reply text 201", txt, "is longer than 200 bytes");
    free(txt);

    expect_error("empty spool_dir", "spool_dir = \"\"\n" LIS_IN,
                 "must not be empty");
    expect_error("control char", "user = \"a\\tb\"\n" LIS_IN,
                 "contains a control character");
    expect_error("bad hostname", "hostname = \"-x.example\"\n" LIS_IN,
                 "starts with '-'");
    free(p107);
    free(p108);
    free(l63);
    free(l64);
    free(t200);
    free(t201);
}

/* ---- semantics ---- */

static const struct {
    const char *label, *text, *want;
} semantic_errors[] = {
    {"unknown key with suggestion",
     "listener \"IncomingMail\" {\n  type = public\n  address = "
     "\"127.0.0.1:25\"\n  max_mesage_size = 10\n}\n",
     "t.conf:4:3: unknown key 'max_mesage_size' in listener \"IncomingMail\" "
     "(did you mean 'max_message_size'?)"},
    {"unknown top key", "hostnmae = \"a.b\"\n" LIS_IN,
     "t.conf:1:1: unknown key 'hostnmae' (did you mean 'hostname'?)"},
    {"unknown key no suggestion", LIS_IN "frobnicate = 1",
     "t.conf:2:1: unknown key 'frobnicate'"},
    {"unknown mail_log key", "mail_log { sislog = yes }\n" LIS_IN,
     "unknown key 'sislog' in mail_log (did you mean 'syslog'?)"},
    {"duplicate scalar", "user = a\nuser = b\n" LIS_IN,
     "t.conf:2:1: duplicate key 'user' (first set at t.conf:1:1)"},
    {"duplicate in listener",
     "listener \"In\" { type = public; address = \"127.0.0.1:25\";\n"
     "  type = private }",
     "t.conf:2:3: duplicate key 'type' in listener \"In\" (first set at "
     "t.conf:1:17)"},
    {"duplicate block", "mail_log {}\nmail_log {}\n" LIS_IN,
     "duplicate key 'mail_log'"},
    {"string as block", "user { }\n" LIS_IN,
     "t.conf:1:6: user: expects a string, not a block"},
    {"block as string", "mail_log = \"x\"\n" LIS_IN,
     "mail_log: expects a block { ... }, not a value"},
    {"label on plain block", "mail_log \"x\" { }\n" LIS_IN,
     "t.conf:1:10: mail_log: takes no name"},
    {"no listener", "user = moat\n", "t.conf:1:1: no listener defined"},
    {"listener without name", "listener { type = public }",
     "listener must be a named block"},
    {"listener as value", "listener = 1", "listener must be a named block"},
    {"bad listener name", "listener \"a b\" { }",
     "t.conf:1:10: listener name \"a b\" may contain only"},
    {"duplicate listener",
     LIS_IN "listener \"In\" { type = public; address = \"127.0.0.1:26\" }",
     "t.conf:2:10: listener \"In\" is already defined at t.conf:1:10"},
    {"missing type", "listener \"In\" { address = \"127.0.0.1:25\" }",
     "t.conf:1:1: missing required key 'type' in listener \"In\""},
    {"missing address", "listener \"In\" { type = public }",
     "missing required key 'address' in listener \"In\""},
    {"bad type", "listener \"In\" { type = open; address = \"1.2.3.4:25\" }",
     "type in listener \"In\": expects public or private, not \"open\""},
    {"bad address",
     "listener \"In\" {\n type = public\n address = "
     "\"1.2.3.4\" }",
     "t.conf:3:12: address in listener \"In\": \"1.2.3.4\": expected"},
    {"host name address",
     "listener \"In\" { type = public; address = "
     "\"mx.example:25\" }",
     "not an IP address"},
    {"bad port", "listener \"In\" { type = public; address = \"1.2.3.4:0\" }",
     "port must be a number"},
    {"same address",
     LIS_IN "listener \"B\" { type = private; address = "
            "\"127.0.0.1:25\" }",
     "t.conf:2:42: listener \"B\": address 127.0.0.1:25 clashes with "
     "listener \"In\" (127.0.0.1:25 at t.conf:1:42)"},
    {"wildcard clash",
     LIS_IN "listener \"B\" { type = private; address = "
            "\"*:25\" }",
     "clashes with listener \"In\""},
    {"relay_senders on public",
     "listener \"In\" { type = public; address = \"127.0.0.1:25\";\n"
     "  relay_senders = [\"10.0.0.0/8\"] }",
     "t.conf:2:3: relay_senders in listener \"In\": only private listeners"},
    {"bad relay sender",
     "listener \"Out\" { type = private; address = "
     "\"127.0.0.1:25\"; relay_senders = [\"10.0.0.1/8\", "
     "\"300.1.1.1\"] }",
     "\"300.1.1.1\" is not an IPv4 address, partial address or range"},
    {"relay sender block",
     "listener \"Out\" { type = private; address = "
     "\"127.0.0.1:25\"; relay_senders = [{}] }",
     "expects strings, not a block"},
    {"dangling rat", LIS_IN "rat \"Incoming\" { \"a.com\" = accept }",
     "t.conf:2:5: rat \"Incoming\": no listener named \"Incoming\""},
    {"rat suggestion", LIS_IN "rat \"in\" { }", "(did you mean \"In\"?)"},
    {"rat on private",
     "listener \"Out\" { type = private; address = \"127.0.0.1:25\" }\n"
     "rat Out { ALL = accept }",
     "t.conf:2:5: rat \"Out\": listener \"Out\" is private"},
    {"rat without name", LIS_IN "rat { a = accept }",
     "rat must be a named block"},
    {"two rats", LIS_IN "rat In { }\nrat In { }",
     "t.conf:3:5: rat \"In\" is already defined at t.conf:2:5"},
    {"rat bad action", LIS_IN "rat In { \"a.com\" = acept }",
     "t.conf:2:20: rat \"In\": row \"a.com\" expects accept, reject"},
    {"rat quoted action", LIS_IN "rat In { \"a.com\" = \"accept\" }",
     "row \"a.com\" expects accept"},
    {"rat after ALL", LIS_IN "rat In {\n ALL = reject\n \"a.com\" = accept\n}",
     "t.conf:4:2: rat \"In\": row \"a.com\" never matches"},
    {"rat duplicate", LIS_IN "rat In {\n a.com = accept\n A.COM = reject\n}",
     "t.conf:4:2: rat \"In\": duplicate pattern \"A.COM\" (first at "
     "t.conf:3:2)"},
    {"rat duplicate same line",
     LIS_IN "rat In { a.com = accept; A.com = "
            "reject; a.COM = accept }",
     "t.conf:2:42: rat \"In\": duplicate pattern \"a.COM\" (first at "
     "t.conf:2:10)"},
    {"rat code with accept",
     LIS_IN "rat In { a.com { action = accept; "
            "code = 550 } }",
     "550 is an error code; it needs action = reject"},
    {"rat 2xx with reject",
     LIS_IN "rat In { a.com { action = reject; "
            "code = 250 } }",
     "250 is a success code"},
    {"rat 3xx", LIS_IN "rat In { a.com { action = reject; code = 354 } }",
     "3xx is not a final reply"},
    {"rat code low", LIS_IN "rat In { a.com { action = accept; code = 249 } }",
     "out of range (250..599)"},
    {"rat code high", LIS_IN "rat In { a.com { action = reject; code = 600 } }",
     "out of range (250..599)"},
    {"rat row no action", LIS_IN "rat In { a.com { code = 550 } }",
     "missing required key 'action' in rat \"In\" row \"a.com\""},
    {"rat text non-ascii",
     LIS_IN "rat In { a.com { action = reject; "
            "text = \"caf\\u00e9\" } }",
     "must be printable ASCII"},
    {"rat unknown row key",
     LIS_IN "rat In { a.com { action = reject; "
            "txt = \"x\" } }",
     "unknown key 'txt' in rat \"In\" row \"a.com\" (did you mean 'text'?)"},
};

static void test_semantic_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(semantic_errors); i++)
        expect_error(semantic_errors[i].label, semantic_errors[i].text,
                     semantic_errors[i].want);
}

static void test_all_errors_collected(void **state)
{
    (void)state;
    struct conf_errors e = {0};
    const char *text = "user = \"\"\n"
                       "id_block = 0\n"
                       "listener \"In\" { type = public; address = \"x\";"
                       " max_errors = 0 }\n";
    assert_null(conf_load_string("t.conf", text, &e));
    assert_int_equal(e.count, 4);
    assert_true(strncmp(e.msgs[0], "t.conf:1:8: ", 12) == 0);
    assert_true(strncmp(e.msgs[1], "t.conf:2:12: ", 13) == 0);
    conf_errors_free(&e);

    struct buf b = {0};
    for (int i = 0; i < 150; i++)
        buf_printf(&b, "bad%d = 1\n", i);
    buf_puts(&b, LIS_IN);
    assert_null(conf_load_string("t.conf", buf_str(&b), &e));
    assert_int_equal(e.count, CONF_MAX_ERRORS + 1);
    assert_non_null(strstr(e.msgs[CONF_MAX_ERRORS], "too many errors"));
    conf_errors_free(&e);
    buf_free(&b);
}

/* ---- what a good configuration gives ---- */

static void test_values_and_defaults(void **state)
{
    (void)state;
    struct moat_conf *c = expect_ok(
        "full",
        "hostname = gw1.example.com\nuser = mail\nid_block = 5\n"
        "shutdown_timeout = 1min\nmail_log { path = /tmp/m.log; syslog = yes "
        "}\n"
        "listener \"In\" { type = public; address = \"[::1]:2525\";\n"
        "  hostname = mx.example.com; max_message_size = 20mb; }\n"
        "listener Out { type = private; address = \"0.0.0.0:587\";\n"
        "  relay_senders = [\"10.0.0.0/8\", \"::1\", 192.0.2.7] }\n"
        "rat \"In\" {\n  \"example.com\" = accept\n"
        "  \".example.com\" { action = accept; code = 250; text = \"ok\" }\n"
        "  \"spam@\" { action = reject; code = 550; text = \"go away\" }\n"
        "}\n");
    assert_string_equal(c->path, "t.conf");
    assert_int_equal(c->refcount, 1);
    assert_string_equal(c->hostname, "gw1.example.com");
    assert_string_equal(c->user, "mail");
    assert_string_equal(c->pidfile, "var/run/moatd.pid");
    assert_string_equal(c->control_socket, "var/run/moatd.sock");
    assert_string_equal(c->spool_dir, "var/spool");
    assert_string_equal(c->log_file, "/tmp/m.log");
    assert_true(c->log_syslog);
    assert_int_equal(c->id_block, 5);
    assert_int_equal(c->shutdown_timeout, 60);
    assert_int_equal(c->listener_count, 2);

    const struct conf_listener *in = conf_listener_find(c, "In");
    assert_non_null(in);
    assert_int_equal(in->type, LISTENER_PUBLIC);
    assert_string_equal(in->address, "[::1]:2525");
    assert_int_equal(netaddr_port(&in->addr), 2525);
    assert_string_equal(in->hostname, "mx.example.com");
    assert_int_equal(in->defaults.max_message_size, 20 * 1024 * 1024);
    assert_int_equal(in->max_connections, 2000);
    assert_int_equal(in->defaults.max_recipients, 1000);
    assert_int_equal(in->defaults.max_messages_per_connection, 1000);
    assert_int_equal(in->max_errors, 20);
    assert_int_equal(in->command_timeout, 300);
    assert_int_equal(in->data_timeout, 600);
    assert_int_equal(in->connection_timeout, 3600);
    assert_true(in->chunking);
    assert_int_equal(in->relay_sender_count, 0);
    assert_int_equal(in->line, 6);
    assert_int_equal(in->rat_count, 4);
    assert_string_equal(in->rat[0].pattern, "example.com");
    assert_int_equal(in->rat[0].action, RAT_ACCEPT);
    assert_int_equal(in->rat[0].code, 0);
    assert_null(in->rat[0].text);
    assert_int_equal(in->rat[1].code, 250);
    assert_string_equal(in->rat[1].text, "ok");
    assert_int_equal(in->rat[2].action, RAT_REJECT);
    assert_int_equal(in->rat[2].code, 550);
    assert_string_equal(in->rat[2].text, "go away");
    assert_int_equal(in->rat[2].line, 13);
    assert_string_equal(in->rat[3].pattern, "ALL");
    assert_int_equal(in->rat[3].action, RAT_REJECT);
    assert_string_equal(in->rat[3].file, "t.conf");
    assert_int_equal(in->rat[3].line, 10); /* the rat block */

    const struct conf_listener *out = conf_listener_find(c, "Out");
    assert_int_equal(out->type, LISTENER_PRIVATE);
    assert_string_equal(out->hostname, "gw1.example.com");
    assert_int_equal(out->relay_sender_count, 3);
    assert_string_equal(out->relay_senders[2], "192.0.2.7");
    /* relay_senders are the predefined RELAYLIST group's senders. */
    assert_int_equal(out->ngroups, 1);
    assert_string_equal(out->groups[0].name, "RELAYLIST");
    assert_int_equal(out->groups[0].nsenders, 3);
    assert_int_equal(out->groups[0].senders[0].cidr.prefix, 8);
    assert_int_equal(out->groups[0].senders[1].kind, SG_ADDR);
    assert_int_equal(out->rat_count, 0);
    assert_null(conf_listener_find(c, "in"));

    assert_ptr_equal(conf_ref(c), c);
    assert_int_equal(c->refcount, 2);
    conf_unref(c);
    assert_int_equal(c->refcount, 1);
    conf_unref(c);
    conf_unref(NULL);
}

static void test_rat_implicit_and_explicit_all(void **state)
{
    (void)state;
    struct moat_conf *c = expect_ok("no rat", LIS_IN);
    assert_int_equal(c->listeners[0].rat_count, 1);
    assert_string_equal(c->listeners[0].rat[0].pattern, "ALL");
    assert_int_equal(c->listeners[0].rat[0].action, RAT_REJECT);
    assert_int_equal(c->listeners[0].rat[0].line, 1);
    assert_non_null(c->hostname); /* the system's */
    assert_string_equal(c->listeners[0].hostname, c->hostname);
    conf_unref(c);

    c = expect_ok("explicit ALL accept",
                  LIS_IN "rat In { \"a.com\" = reject; \"ALL\" = accept }");
    assert_int_equal(c->listeners[0].rat_count, 2);
    assert_int_equal(c->listeners[0].rat[1].action, RAT_ACCEPT);
    conf_unref(c);
}

/* ---- limits ---- */

static void test_limits(void **state)
{
    (void)state;
    char *s = repeat('[', CONF_MAX_DEPTH + 1), *e;
    char *txt = xasprintf("a = %s", s);
    expect_error("depth 65", txt, "nested more than 64 deep");
    free(txt);
    free(s);

    struct conf_tree t;
    s = repeat('[', CONF_MAX_DEPTH);
    e = repeat(']', CONF_MAX_DEPTH);
    txt = xasprintf("a = %s%s", s, e);
    parse_ok("depth 64", txt, &t);
    conf_tree_free(&t);
    free(txt);
    free(s);
    free(e);

    s = repeat('x', CONF_MAX_STRING);
    txt = xasprintf("a = \"%s\" b = %s", s, s);
    parse_ok("string 65536", txt, &t);
    assert_int_equal(child(t.root, "a")->len, CONF_MAX_STRING);
    conf_tree_free(&t);
    free(txt);
    free(s);
    s = repeat('x', CONF_MAX_STRING + 1);
    txt = xasprintf("a = \"%s\"", s);
    expect_error("string 65537", txt, "string longer than 65536 bytes");
    free(txt);
    txt = xasprintf("a = %s", s);
    expect_error("word 65537", txt, "word longer than 65536 bytes");
    free(txt);
    free(s);

    struct buf b = {0};
    buf_puts(&b, "a = [");
    for (unsigned i = 0; i < CONF_MAX_NODES; i++)
        buf_puts(&b, "1,");
    buf_puts(&b, "]");
    expect_error("too many nodes", buf_str(&b), "more than 1000000 entries");
    buf_free(&b);

    s = repeat(' ', CONF_MAX_FILE_SIZE + 1);
    expect_error("file too large", s, "t.conf: file is larger than 16 MiB");
    free(s);
}

/* ---- files and includes ---- */

struct tmpdir {
    char path[64];
};

static void tmp_make(struct tmpdir *d)
{
    str_copy(d->path, sizeof(d->path), "/tmp/test_conf.XXXXXX");
    assert_non_null(mkdtemp(d->path));
}

static char *tmp_write(const struct tmpdir *d, const char *name,
                       const char *text)
{
    char *p = xasprintf("%s/%s", d->path, name);
    write_file(p, text, strlen(text));
    return p;
}

static void tmp_remove(const struct tmpdir *d)
{
    char *cmd = xasprintf("rm -rf '%s'", d->path);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static void test_include(void **state)
{
    (void)state;
    struct tmpdir d;
    tmp_make(&d);
    char *sub = xasprintf("%s/sub", d.path);
    assert_int_equal(mkdir(sub, 0700), 0);
    free(sub);
    free(tmp_write(&d, "sub/inc.conf", "user = inc\n.include \"more.conf\"\n"));
    free(tmp_write(&d, "sub/more.conf", "spool_dir = s2\n"));
    free(tmp_write(&d, "lbody.conf",
                   "type = public\n"
                   "address = \"127.0.0.1:25\"\n"));
    char *main_conf = tmp_write(&d, "main.conf",
                                ".include \"sub/inc.conf\"\n"
                                "listener In { .include \"lbody.conf\" }\n");
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load(main_conf, &e);
    if (c == NULL)
        dump("relative include", &e);
    assert_non_null(c);
    assert_string_equal(c->user, "inc");
    assert_string_equal(c->spool_dir, "s2");
    assert_string_equal(c->path, main_conf);
    conf_unref(c);
    free(main_conf);

    char *p = tmp_write(&d, "missing.conf", "# x\n  .include \"nope.conf\"\n");
    char *want = xasprintf("%s/missing.conf:2:3: cannot include "
                           "\"%s/nope.conf\": No such file",
                           d.path, d.path);
    expect_file_error("missing include", p, want);
    free(want);
    free(p);

    free(tmp_write(&d, "a.conf", LIS_IN ".include \"b.conf\"\n"));
    free(tmp_write(&d, "b.conf", "\n.include \"a.conf\"\n"));
    p = xasprintf("%s/a.conf", d.path);
    want = xasprintf("%s/b.conf:2:1: include cycle", d.path);
    expect_file_error("include cycle", p, want);
    free(want);
    free(p);

    free(tmp_write(&d, "self.conf", ".include \"self.conf\"\n"));
    p = xasprintf("%s/self.conf", d.path);
    expect_file_error("self include", p, "include cycle");
    free(p);

    p = xasprintf("%s/none.conf", d.path);
    want = xasprintf("%s/none.conf: cannot read", d.path);
    expect_file_error("missing main file", p, want);
    free(want);
    free(p);
    expect_file_error("directory", d.path, "not a regular file");

    free(tmp_write(&d, "empty.conf", ""));
    struct buf many = {0};
    for (int i = 0; i <= CONF_MAX_INCLUDES; i++)
        buf_puts(&many, ".include \"empty.conf\"\n");
    p = tmp_write(&d, "many.conf", buf_str(&many));
    want = xasprintf("%s:1001:1: more than 1000 .include directives", p);
    expect_file_error("include count", p, want);
    buf_free(&many);
    free(want);
    free(p);

    /* string source: relative to the current directory */
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(d.path), 0);
    c = expect_ok("string include", "listener In { .include \"lbody.conf\" }");
    conf_unref(c);
    assert_int_equal(chdir(cwd), 0);
    tmp_remove(&d);
}

static void test_include_depth(void **state)
{
    (void)state;
    struct tmpdir d;
    tmp_make(&d);
    /* c0 -> c1 -> ... -> c16: sixteen nested includes are fine. */
    for (int i = 0; i < CONF_MAX_INCLUDE_DEPTH; i++) {
        char name[32], text[64];
        str_printf(name, sizeof(name), "c%d.conf", i);
        str_printf(text, sizeof(text), ".include \"c%d.conf\"\n", i + 1);
        free(tmp_write(&d, name, text));
    }
    free(tmp_write(&d, "c16.conf", LIS_IN));
    char *p = xasprintf("%s/c0.conf", d.path);
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load(p, &e);
    if (c == NULL)
        dump("depth 16", &e);
    assert_non_null(c);
    conf_unref(c);

    free(tmp_write(&d, "c16.conf", LIS_IN "\n.include \"c17.conf\"\n"));
    free(tmp_write(&d, "c17.conf", "\n"));
    char *want =
        xasprintf("%s/c16.conf:3:1: .include nested more than 16", d.path);
    expect_file_error("depth 17", p, want);
    free(want);
    free(p);
    tmp_remove(&d);
}

static void test_nul_byte(void **state)
{
    (void)state;
    struct tmpdir d;
    tmp_make(&d);
    char *p = xasprintf("%s/nul.conf", d.path);
    write_file(p, "user = a\nus\0er = b\n", 19);
    char *want = xasprintf("%s:2:3: NUL byte", p);
    expect_file_error("NUL byte", p, want);
    free(want);
    free(p);
    tmp_remove(&d);
}

/* ---- shipped texts ---- */

static void test_default_text(void **state)
{
    (void)state;
    struct conf_errors e = {0};
    struct moat_conf *c = conf_load_string("(built-in)", conf_default_text, &e);
    if (c == NULL)
        dump("default", &e);
    assert_non_null(c);
    assert_string_equal(c->path, "(built-in)");
    assert_string_equal(c->spool_dir, "var/spool");
    assert_string_equal(c->log_file, "var/log/mail_logs/mail.current");
    const struct conf_listener *in = conf_listener_find(c, "IncomingMail");
    const struct conf_listener *out = conf_listener_find(c, "OutgoingMail");
    assert_non_null(in);
    assert_non_null(out);
    assert_string_equal(in->address, "127.0.0.1:2525");
    assert_string_equal(out->address, "127.0.0.1:2587");
    assert_int_equal(out->relay_sender_count, 2);
    assert_int_equal(in->rat_count, 2);
    assert_string_equal(in->rat[0].pattern, "example.com");
    conf_unref(c);
}

static void test_example_file(void **state)
{
    (void)state;
    struct conf_errors e = {0};
    struct moat_conf *c =
        conf_load(MOAT_SOURCE_DIR "/etc/moat.conf.example", &e);
    if (c == NULL)
        dump("example", &e);
    assert_non_null(c);
    assert_non_null(conf_listener_find(c, "IncomingMail"));
    assert_non_null(conf_listener_find(c, "OutgoingMail"));
    conf_unref(c);
}

/* Delivery side: routes, destinations, bounce profiles, resolver. */
static void test_delivery_blocks(void **state)
{
    (void)state;
    struct moat_conf *c = expect_ok(
        "delivery",
        LIS_IN "delivery { helo = \"out.example.net\"; connect_timeout = 5s; }\n"
        "resolver { resolv_conf = \"\"; forwarders = [ \"192.0.2.1\" ];\n"
        "  stub_zones = { \".\" = [ \"127.0.0.1@5353\" ]; "
        "\"Corp.Example\" = [ \"::1@53\", \"10.0.0.1\" ]; } }\n"
        "smtp_route \"Example.COM\" { hosts = [ \"mx1.example.net\", "
        "\"10.1.1.2:2525/pri=10\", \"[2001:db8::1]:26\", \"2001:db8::2\" ]; }\n"
        "smtp_route \".example.com\" { hosts = [ \"USEDNS\" ]; }\n"
        "smtp_route \".b.example.com\" { hosts = [ \"/dev/null\" ]; }\n"
        "smtp_route \"ALL\" { hosts = [ \"smart.example.net:587\" ]; }\n"
        "bounce_profile \"Fast\" { max_retries = 2; initial_retry = 1s; "
        "max_retry_timeout = 2s; }\n"
        "bounce_profile \"Default\" { max_queue_lifetime = 1d; }\n"
        "destination \"example.org\" { concurrency = 10; bounce_profile = "
        "\"Fast\"; ip_preference = ipv4_only; }\n"
        "destination \".example.org\" { messages_per_connection = 7; }\n");
    assert_string_equal(c->delivery.helo, "out.example.net");
    assert_int_equal(c->delivery.connect_timeout, 5);
    assert_int_equal(c->delivery.max_rcpts_per_txn, 100);
    assert_string_equal(c->resolver.resolv_conf, "");
    assert_int_equal(c->resolver.nforwarders, 1);
    assert_int_equal(c->resolver.nstubs, 2);
    assert_string_equal(c->resolver.stubs[1].zone, "corp.example");
    assert_int_equal(c->resolver.stubs[1].naddrs, 2);
    const struct conf_route *r = conf_route_find(c, "example.com");
    assert_non_null(r);
    assert_int_equal(r->kind, ROUTE_HOSTS);
    assert_int_equal(r->nhosts, 4);
    assert_string_equal(r->hosts[0].host, "mx1.example.net");
    assert_false(r->hosts[0].is_ip);
    assert_int_equal(r->hosts[0].port, 25);
    assert_int_equal(r->hosts[1].port, 2525);
    assert_int_equal(r->hosts[1].pri, 10);
    assert_string_equal(r->hosts[2].host, "2001:db8::1");
    assert_int_equal(r->hosts[2].port, 26);
    assert_string_equal(r->hosts[3].host, "2001:db8::2");
    assert_int_equal(r->hosts[3].port, 25);
    assert_int_equal(conf_route_find(c, "a.example.com")->kind, ROUTE_USEDNS);
    assert_int_equal(conf_route_find(c, "x.b.example.com")->kind, ROUTE_DEVNULL);
    assert_string_equal(conf_route_find(c, "other.net")->domain, "ALL");
    const struct conf_dest *d = conf_dest_find(c, "EXAMPLE.org");
    assert_int_equal(d->concurrency, 10);
    assert_int_equal(d->ip_preference, IPPREF_V4_ONLY);
    assert_int_equal(conf_profile_find(c, d->bounce_profile)->max_retries, 2);
    d = conf_dest_find(c, "a.example.org");
    assert_int_equal(d->messages_per_connection, 7);
    assert_int_equal(d->concurrency, 500);
    d = conf_dest_find(c, "example.net");
    assert_string_equal(d->domain, "Default");
    assert_int_equal(d->concurrency, 500);
    assert_int_equal(d->messages_per_connection, 50);
    const struct conf_bounce_profile *p = conf_profile_find(c, "Default");
    assert_int_equal(p->max_queue_lifetime, 86400);
    assert_int_equal(p->max_retries, 100);
    assert_int_equal(p->initial_retry, 60);
    assert_int_equal(p->max_retry_timeout, 3600);
    assert_int_equal(p->max_bounce_copy, 10240);
    conf_unref(c);

    /* Destination rows take what they do not say from the Default row,
     * written before or after them. */
    c = expect_ok(
        "dest inherit",
        LIS_IN "destination \"a.com\" { tls = required_verify; "
        "recipient_limit = 0; bounce_verification = default; }\n"
        "destination \"Default\" { concurrency = 20; tls = preferred; "
        "recipient_limit = 100; recipient_period = 5min; limits_per = mx_ip; "
        "dane = opportunistic; bounce_verification = yes; }\n"
        "destination \"b.com\" { concurrency = 3; }\n"
        "delivery { tls_min_protocol = TLSv1.3; }\n");
    d = conf_dest_find(c, "a.com");
    assert_int_equal(d->tls, DEST_TLS_REQUIRED_VERIFY);
    assert_int_equal(d->concurrency, 20);
    assert_true(d->rcpt_limited);
    assert_int_equal(d->recipient_limit, 0);
    assert_int_equal(d->recipient_period, 300);
    assert_int_equal(d->limits_per, DEST_PER_MX_IP);
    assert_int_equal(d->dane, DEST_DANE_OPPORTUNISTIC);
    assert_int_equal(d->bounce_verification, DEST_BV_YES);
    assert_true(d->set & (1u << conf_table_index(&conf_table_dest, "tls")));
    assert_false(d->set &
                 (1u << conf_table_index(&conf_table_dest, "concurrency")));
    assert_false(d->set & (1u << conf_table_index(&conf_table_dest,
                                                  "bounce_verification")));
    d = conf_dest_find(c, "b.com");
    assert_int_equal(d->concurrency, 3);
    assert_int_equal(d->tls, DEST_TLS_PREFERRED);
    assert_true(d->rcpt_limited);
    assert_int_equal(d->recipient_limit, 100);
    d = conf_dest_find(c, "c.com");
    assert_string_equal(d->domain, "Default");
    assert_int_equal(c->delivery.tls_min_protocol, 3);
    assert_non_null(c->delivery.tls_ciphers);
    conf_unref(c);
    c = expect_ok("dest plain", LIS_IN "destination \"a.com\" { }\n");
    d = conf_dest_find(c, "a.com");
    assert_false(d->rcpt_limited);
    assert_int_equal(d->tls, DEST_TLS_NO);
    assert_int_equal(d->dane, DEST_DANE_NONE);
    assert_int_equal(d->bounce_verification, DEST_BV_NO);
    assert_int_equal(d->recipient_period, 3600);
    conf_unref(c);

    c = expect_ok("no routes", LIS_IN);
    assert_null(conf_route_find(c, "example.com"));
    assert_string_equal(c->delivery.helo, c->hostname);
    conf_unref(c);

    static const struct {
        const char *label, *text, *want;
    } bad[] = {
        {"usedns not alone", "smtp_route \"a.com\" { hosts = [ \"USEDNS\", "
         "\"b.com\" ]; }", "must be the route's only destination"},
        {"bad port", "smtp_route \"a.com\" { hosts = [ \"b.com:0\" ]; }",
         "bad port"},
        {"bad pri", "smtp_route \"a.com\" { hosts = [ \"b.com/pri=70000\" ]; }",
         "bad priority"},
        {"bad host", "smtp_route \"a.com\" { hosts = [ \"b_c.com\" ]; }",
         "not a host name"},
        {"bad v6", "smtp_route \"a.com\" { hosts = [ \"[zz::1]:25\" ]; }",
         "bad IPv6"},
        {"no hosts", "smtp_route \"a.com\" { }", "missing required key 'hosts'"},
        {"empty hosts", "smtp_route \"a.com\" { hosts = [ ]; }", "non-empty"},
        {"route key", "smtp_route \"a..com\" { hosts = [ \"b.com\" ]; }",
         "not a valid host name"},
        {"route twice", "smtp_route \"a.com\" { hosts = [ \"b.com\" ]; }\n"
         "smtp_route \"A.com\" { hosts = [ \"c.com\" ]; }", "defined twice"},
        {"dangling profile", "destination \"a.com\" { bounce_profile = "
         "\"Nope\"; }", "no bounce_profile \"Nope\""},
        {"dest twice", "destination \"a.com\" { }\ndestination \"a.com\" { }",
         "defined twice"},
        {"concurrency 1001", "destination \"a.com\" { concurrency = 1001; }",
         "out of range"},
        {"tls value", "destination \"a.com\" { tls = yes; }",
         "required_verify_hosted"},
        {"period 61min", "destination \"a.com\" { recipient_period = 61min; }",
         "out of range"},
        {"default bv", "destination \"Default\" { bounce_verification = "
         "default; }", "the Default row says no or yes"},
        {"default twice", "destination \"Default\" { }\n"
         "destination \"Default\" { }", "defined twice"},
        {"min protocol", "delivery { tls_min_protocol = SSLv3; }", "TLSv1.2"},
        {"trust anchor", "resolver { trust_anchors = [ \"example. A 1.2.3.4\" ]; }",
         "is not a DS or DNSKEY record"},
        {"retry order", "bounce_profile \"X\" { initial_retry = 2h; }",
         "longer than max_retry_timeout"},
        {"stub addr", "resolver { stub_zones = { \".\" = [ \"localhost\" ]; } }",
         "not an IP address"},
        {"fwd port", "resolver { forwarders = [ \"127.0.0.1@99999\" ]; }",
         "bad port"},
        {"resolver key", "resolver { forwarder = [ \"127.0.0.1\" ]; }",
         "did you mean 'forwarders'"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char *t = xasprintf(LIS_IN "%s\n", bad[i].text);
        expect_error(bad[i].label, t, bad[i].want);
        free(t);
    }
}

/* docs/configuration.md names every key (as `name`) and its default. */
static void test_docs_name_every_key(void **state)
{
    (void)state;
    char *doc = read_text(MOAT_SOURCE_DIR "/docs/configuration.md");
    size_t ntab, checked = 0;
    const struct conf_table *const *tabs = conf_key_tables(&ntab);
    for (size_t t = 0; t < ntab; t++) {
        for (size_t i = 0; i < tabs[t]->count; i++) {
            const struct conf_key *k = &tabs[t]->keys[i];
            char *name = xasprintf("`%s`", k->name);
            char *def = xasprintf("`%s`", k->def ? k->def : "");
            if (!strstr(doc, name))
                fail_msg("docs/configuration.md does not name %s (%s)", name,
                         tabs[t]->name);
            if (k->def && !strstr(doc, def))
                fail_msg("docs/configuration.md lacks default %s of %s", def,
                         k->name);
            free(name);
            free(def);
            checked++;
        }
    }
    assert_true(checked > 20);
    free(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax_scalars),
        cmocka_unit_test(test_syntax_blocks),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_bounds_numeric),
        cmocka_unit_test(test_bounds_strings),
        cmocka_unit_test(test_semantic_errors),
        cmocka_unit_test(test_all_errors_collected),
        cmocka_unit_test(test_values_and_defaults),
        cmocka_unit_test(test_rat_implicit_and_explicit_all),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_include),
        cmocka_unit_test(test_include_depth),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_default_text),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_docs_name_every_key),
        cmocka_unit_test(test_delivery_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
