/*
 * test_dsn.c - delivery status notifications. Every report built here is
 * parsed back by a small MIME splitter (top header, boundary, parts,
 * delivery-status blocks) and checked line by line: CRLF only, no line
 * over 998 octets, 7-bit unless the original was 8-bit or SMTPUTF8.
 * Cases: structure, failure vs delay, whole message vs headers around
 * max_copy, headers cut at field boundaries, several recipients, CR/LF
 * injection, long diagnostics, boundary collisions, SMTPUTF8, bare-LF and
 * empty-body originals, undeclared 8-bit content, refused input, zones.
 */
#include "queue/dsn.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include <cmocka.h>

#define T0 INT64_C(1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */

/* --- a small MIME reader ------------------------------------------------ */

/* Every line ends in CRLF, is at most 998 octets, holds no NUL, and is
 * ASCII when `seven`. */
static void check_lines(const char *s, size_t n, bool seven)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        assert_true(c != 0);
        if (seven)
            assert_true(c < 0x80);
        if (c == '\r') {
            assert_true(i + 1 < n && s[i + 1] == '\n');
            continue;
        }
        if (c == '\n') {
            assert_true(i > 0 && s[i - 1] == '\r');
            assert_true(col <= 998);
            col = 0;
            continue;
        }
        col++;
    }
    assert_int_equal(col, 0);
}

/* The unfolded value of the first field `name` in a header section
 * (leading white space trimmed), or NULL; *count gets how many there are.
 * The caller frees the value. */
static char *field(const char *h, const char *name, int *count)
{
    size_t nl = strlen(name);
    char *val = NULL;
    int cnt = 0;
    for (const char *p = h; *p;) {
        const char *eol = strstr(p, "\r\n");
        assert_non_null(eol);
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            cnt++;
            if (val == NULL) {
                struct buf v = {0};
                const char *q = p + nl + 1;
                while (*q == ' ' || *q == '\t')
                    q++;
                for (;;) {
                    buf_append(&v, q, (size_t)(eol - q));
                    if (eol[2] != ' ' && eol[2] != '\t')
                        break;
                    q = eol + 2;
                    eol = strstr(q, "\r\n");
                }
                val = xstrdup(buf_str(&v));
                buf_free(&v);
            }
        }
        p = eol + 2;
    }
    if (count)
        *count = cnt;
    return val;
}

/* Assert a field's unfolded value. */
static void expect_field(const char *h, const char *name, const char *want)
{
    int n;
    char *v = field(h, name, &n);
    if (want == NULL) {
        assert_null(v);
        return;
    }
    if (v == NULL || strcmp(v, want) != 0)
        print_message("# %s: %s\n", name, v ? v : "(none)");
    assert_non_null(v);
    assert_int_equal(n, 1);
    assert_string_equal(v, want);
    free(v);
}

/* Runs of white space made one space (to compare folded text). */
static char *squash(const char *s)
{
    struct buf b = {0};
    bool sp = false;
    for (; *s; s++) {
        if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
            sp = true;
            continue;
        }
        if (sp && b.len)
            buf_putc(&b, ' ');
        sp = false;
        buf_putc(&b, *s);
    }
    char *r = xstrdup(buf_str(&b));
    buf_free(&b);
    return r;
}

/* Split an entity at its first empty line. */
static void split_entity(const char *s, char **head, char **body)
{
    if (strncmp(s, "\r\n", 2) == 0) {
        *head = xstrdup("");
        *body = xstrdup(s + 2);
        return;
    }
    const char *e = strstr(s, "\r\n\r\n");
    assert_non_null(e);
    *head = xstrndup(s, (size_t)(e - s) + 2);
    *body = xstrdup(e + 4);
}

#define MAX_PARTS 4

struct mime {
    char *head; /* top header section */
    char bd[128];
    size_t n; /* parts */
    char *phead[MAX_PARTS];
    char *pbody[MAX_PARTS]; /* without the CRLF of the next delimiter */
};

static size_t count_str(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* Parse a report that starts at out->data + off. */
static void mime_parse(const struct buf *out, size_t off, bool seven,
                       struct mime *m)
{
    memset(m, 0, sizeof(*m));
    const char *s = out->data + off;
    check_lines(s, out->len - off, seven);
    char *body;
    split_entity(s, &m->head, &body);
    char *ct = field(m->head, "Content-Type", NULL);
    assert_non_null(ct);
    const char *b = strstr(ct, "boundary=\"");
    assert_non_null(b);
    b += strlen("boundary=\"");
    const char *e = strchr(b, '"');
    assert_non_null(e);
    assert_true((size_t)(e - b) < sizeof(m->bd) && e - b > 0);
    memcpy(m->bd, b, (size_t)(e - b));
    free(ct);

    char dl[140];
    assert_true(str_printf(dl, sizeof(dl), "\r\n--%s", m->bd));
    const char *p = strstr(body, dl);
    assert_non_null(p);
    p += strlen(dl);
    for (;;) {
        assert_memory_equal(p, "\r\n", 2);
        p += 2;
        const char *next = strstr(p, dl);
        assert_non_null(next);
        assert_true(m->n < MAX_PARTS);
        char *part = xstrndup(p, (size_t)(next - p));
        split_entity(part, &m->phead[m->n], &m->pbody[m->n]);
        free(part);
        m->n++;
        p = next + strlen(dl);
        if (strncmp(p, "--", 2) == 0) {
            assert_string_equal(p, "--\r\n");
            break;
        }
    }
    /* The boundary occurs only in the delimiter lines. */
    assert_int_equal(count_str(body, m->bd), m->n + 1);
    free(body);
}

static void mime_free(struct mime *m)
{
    free(m->head);
    for (size_t i = 0; i < m->n; i++) {
        free(m->phead[i]);
        free(m->pbody[i]);
    }
}

/* The delivery-status blocks of a part body (each ends with CRLF). */
static size_t status_blocks(const char *body, char **blk, size_t max)
{
    size_t n = 0;
    const char *p = body;
    for (;;) {
        assert_true(n < max);
        const char *e = strstr(p, "\r\n\r\n");
        if (e == NULL) {
            blk[n++] = xstrdup(p);
            return n;
        }
        blk[n++] = xstrndup(p, (size_t)(e - p) + 2);
        p = e + 4;
    }
}

static void free_blocks(char **blk, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(blk[i]);
}

/* --- fixtures ----------------------------------------------------------- */

static const char small_orig[] = "Received: from mail.example.org\r\n"
                                 "From: alice@example.org\r\n"
                                 "To: bob@example.net\r\n"
                                 "Subject: hello\r\n"
                                 "Message-ID: <orig.1@example.org>\r\n"
                                 "\r\n"
                                 "Hi Bob,\r\n"
                                 "see you.\r\n";
#define SMALL_HDR_LEN                                                          \
    (sizeof(small_orig) - 1 - strlen("\r\nHi Bob,\r\nsee you.\r\n"))

static const struct dsn_rcpt rc_bob = {
    .addr = "bob@example.net",
    .status = "5.1.1",
    .remote_mta = "mx.example.net",
    .reply = "550 5.1.1 <bob@example.net>: Recipient address rejected",
    .last_attempt = T0 + 60,
};

static void base_input(struct dsn_input *in, const struct dsn_rcpt *r, size_t n)
{
    memset(in, 0, sizeof(*in));
    in->kind = DSN_FAILURE;
    in->reporting_mta = "gw1.example.com";
    in->postmaster = "MAILER-DAEMON@gw1.example.com";
    in->message_id = "<mid.123.bounce@gw1.example.com>";
    in->now = T0 + 3600;
    in->mid = 123;
    in->sender = "alice@example.org";
    in->arrival = T0;
    in->client_ip = "192.0.2.7";
    in->helo = "mail.example.org";
    in->orig = small_orig;
    in->orig_len = sizeof(small_orig) - 1;
    in->orig_size = sizeof(small_orig) - 1;
    in->max_copy = DSN_COPY_DEFAULT;
    in->rcpts = r;
    in->nrcpt = n;
}

static void build_ok(const struct dsn_input *in, struct buf *out)
{
    char err[256] = "";
    bool ok = dsn_build(in, out, err, sizeof(err));
    if (!ok)
        print_message("# refused: %s\n", err);
    assert_true(ok);
}

/* Build and parse in one go (7-bit expected unless the input is 8-bit). */
static void build_parse(const struct dsn_input *in, struct buf *out,
                        struct mime *m)
{
    buf_reset(out);
    build_ok(in, out);
    mime_parse(out, 0, !in->eightbit && !in->utf8, m);
}

/* --- structure ---------------------------------------------------------- */

static void test_failure_structure(void **state)
{
    (void)state;
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    in.envid = "QQ314159";
    struct buf out = {0};
    buf_puts(&out, "KEEP");
    build_ok(&in, &out);
    assert_memory_equal(out.data, "KEEP", 4); /* appended, not replaced */
    struct mime m;
    mime_parse(&out, 4, true, &m);

    expect_field(m.head, "Date", "Tue, 14 Nov 2023 23:13:20 +0000");
    expect_field(m.head, "From",
                 "Mail Delivery System <MAILER-DAEMON@gw1.example.com>");
    expect_field(m.head, "To", "<alice@example.org>");
    expect_field(m.head, "Subject", "Delivery Status Notification (Failure)");
    expect_field(m.head, "Message-ID", "<mid.123.bounce@gw1.example.com>");
    expect_field(m.head, "Auto-Submitted", "auto-replied");
    expect_field(m.head, "MIME-Version", "1.0");
    expect_field(m.head, "Content-Transfer-Encoding", "7bit");
    char want[200];
    assert_true(str_printf(want, sizeof(want),
                           "multipart/report; report-type=delivery-status;"
                           "\tboundary=\"%s\"",
                           m.bd));
    expect_field(m.head, "Content-Type", want);
    assert_string_equal(m.bd, "=_moat_0.123.1700003600");

    assert_int_equal(m.n, 3);
    expect_field(m.phead[0], "Content-Type", "text/plain; charset=us-ascii");
    expect_field(m.phead[1], "Content-Type", "message/delivery-status");
    expect_field(m.phead[2], "Content-Type", "message/rfc822");
    expect_field(m.phead[2], "Content-Description", "Undelivered Message");
    for (size_t i = 0; i < 3; i++)
        expect_field(m.phead[i], "Content-Transfer-Encoding", "7bit");

    /* The human-readable part names the recipient and the reply. */
    const char *t = m.pbody[0];
    assert_non_null(strstr(t, "This is the mail system at gw1.example.com."));
    assert_non_null(strstr(t, "\r\n<bob@example.net>\r\n"));
    assert_non_null(strstr(t, "    mx.example.net said: 550 5.1.1 "
                              "<bob@example.net>: Recipient address\r\n"
                              "    rejected\r\n"));
    assert_non_null(strstr(t, "A copy of it is attached."));
    assert_null(strstr(t, "warning"));

    char *blk[8];
    size_t nb = status_blocks(m.pbody[1], blk, 8);
    assert_int_equal(nb, 2);
    expect_field(blk[0], "Original-Envelope-Id", "QQ314159");
    expect_field(blk[0], "Reporting-MTA", "dns; gw1.example.com");
    expect_field(blk[0], "Received-From-MTA",
                 "dns; mail.example.org ([192.0.2.7])");
    expect_field(blk[0], "Arrival-Date", "Tue, 14 Nov 2023 22:13:20 +0000");
    expect_field(blk[0], "X-Moat-MID", "123");
    expect_field(blk[0], "X-Moat-Sender", "rfc822; alice@example.org");
    assert_true(strncmp(blk[0], "Original-Envelope-Id:", 21) == 0);
    expect_field(blk[1], "Original-Recipient", NULL);
    expect_field(blk[1], "Final-Recipient", "rfc822; bob@example.net");
    expect_field(blk[1], "Action", "failed");
    expect_field(blk[1], "Status", "5.1.1");
    expect_field(blk[1], "Remote-MTA", "dns; mx.example.net");
    expect_field(blk[1], "Diagnostic-Code",
                 "smtp; 550 5.1.1 <bob@example.net>: Recipient address "
                 "rejected");
    expect_field(blk[1], "Last-Attempt-Date",
                 "Tue, 14 Nov 2023 22:14:20 +0000");
    expect_field(blk[1], "Will-Retry-Until", NULL);
    free_blocks(blk, nb);

    assert_string_equal(m.pbody[2], small_orig);
    mime_free(&m);
    buf_free(&out);
}

static void test_delay(void **state)
{
    (void)state;
    struct dsn_rcpt r = {.addr = "bob@example.net",
                         .status = "4.4.1",
                         .remote_mta = "mx.example.net",
                         .reply = "451 4.4.1 Try again later",
                         .last_attempt = T0 + 1800};
    struct dsn_input in;
    base_input(&in, &r, 1);
    in.kind = DSN_DELAY;
    in.retry_until = T0 + 259200;
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    expect_field(m.head, "Subject", "Delivery Status Notification (Delay)");
    assert_int_equal(m.n, 3);
    expect_field(m.phead[2], "Content-Description", "Delayed Message");
    assert_non_null(strstr(m.pbody[0], "only a warning"));
    assert_non_null(strstr(m.pbody[0], "keeps trying until\r\n"
                                       "    Fri, 17 Nov 2023 22:13:20 +0000"));
    char *blk[4];
    size_t nb = status_blocks(m.pbody[1], blk, 4);
    assert_int_equal(nb, 2);
    expect_field(blk[1], "Action", "delayed");
    expect_field(blk[1], "Status", "4.4.1");
    expect_field(blk[1], "Will-Retry-Until", "Fri, 17 Nov 2023 22:13:20 +0000");
    free_blocks(blk, nb);
    mime_free(&m);

    /* A configured subject replaces the default. */
    in.subject = "Delayed mail";
    build_parse(&in, &out, &m);
    expect_field(m.head, "Subject", "Delayed mail");
    mime_free(&m);
    buf_free(&out);
}

/* --- the copy of the original ------------------------------------------- */

struct copy_case {
    const char *label;
    size_t max_copy;
    size_t give; /* bytes passed; 0 = max_copy + 1 (capped) */
    bool hdrs_only;
    const char *type; /* NULL: no third part */
};

static void test_copy_limit(void **state)
{
    (void)state;
    const size_t size = sizeof(small_orig) - 1;
    const struct copy_case cases[] = {
        {"size == max_copy: whole", size, 0, false, "message/rfc822"},
        {"size < max_copy: whole", size + 1, 0, false, "message/rfc822"},
        {"size == max_copy + 1: headers", size - 1, 0, false,
         "text/rfc822-headers"},
        {"only max_copy bytes given", size - 1, size - 1, false,
         "text/rfc822-headers"},
        {"RET=HDRS", size + 100, 0, true, "text/rfc822-headers"},
        {"max_copy 0: no copy", 0, 0, false, NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const struct copy_case *c = &cases[i];
        print_message("# copy: %s\n", c->label);
        struct dsn_input in;
        base_input(&in, &rc_bob, 1);
        in.max_copy = c->max_copy;
        in.hdrs_only = c->hdrs_only;
        size_t give = c->give ? c->give : c->max_copy + 1;
        in.orig_len = give < size ? give : size;
        struct buf out = {0};
        struct mime m;
        build_parse(&in, &out, &m);
        if (c->type == NULL) {
            assert_int_equal(m.n, 2);
            assert_null(strstr(m.pbody[0], "attached"));
        } else {
            assert_int_equal(m.n, 3);
            expect_field(m.phead[2], "Content-Type", c->type);
            if (strcmp(c->type, "message/rfc822") == 0)
                assert_string_equal(m.pbody[2], small_orig);
            else {
                assert_int_equal(strlen(m.pbody[2]), SMALL_HDR_LEN);
                assert_memory_equal(m.pbody[2], small_orig, SMALL_HDR_LEN);
                assert_non_null(strstr(m.pbody[0], "header section"));
            }
        }
        mime_free(&m);
        buf_free(&out);
    }
}

/* Headers longer than max_copy are cut at the last field boundary that
 * fits, never inside a folded field, whatever max_copy is and whether the
 * caller passes max_copy or max_copy + 1 bytes. */
static void test_headers_cut(void **state)
{
    (void)state;
    static const char orig[] = "A: 1\r\n"
                               "B: 22\r\n"
                               "C: long\r\n continued\r\n\tmore\r\n"
                               "D: 4444\r\n"
                               "\r\n"
                               "body\r\n";
    const size_t hlen = (size_t)(strstr(orig, "\r\n\r\n") - orig) + 2;
    for (size_t max = 1; max < sizeof(orig) - 1; max++) {
        for (size_t extra = 0; extra < 2; extra++) {
            struct dsn_input in;
            base_input(&in, &rc_bob, 1);
            in.orig = orig;
            in.orig_size = sizeof(orig) - 1;
            in.orig_len = max + extra;
            in.max_copy = max;
            /* The model: the longest prefix ending a field whose next
             * byte was given (so it is known not to be a continuation);
             * failing that, the longest prefix ending a line. */
            size_t want_field = 0, want_line = 0;
            for (size_t e = 1; e <= hlen && e <= max; e++) {
                if (orig[e - 1] != '\n')
                    continue;
                want_line = e;
                if (e < max + extra && orig[e] != ' ' && orig[e] != '\t')
                    want_field = e;
            }
            size_t want = want_field ? want_field : want_line;
            struct buf out = {0};
            struct mime m;
            build_parse(&in, &out, &m);
            if (want == 0) {
                assert_int_equal(m.n, 2);
            } else {
                assert_int_equal(m.n, 3);
                expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
                if (strlen(m.pbody[2]) != want)
                    print_message("# max %zu extra %zu: got %zu want %zu\n",
                                  max, extra, strlen(m.pbody[2]), want);
                assert_int_equal(strlen(m.pbody[2]), want);
                assert_memory_equal(m.pbody[2], orig, want);
            }
            mime_free(&m);
            buf_free(&out);
        }
    }
}

static void test_bare_lf(void **state)
{
    (void)state;
    static const char orig[] = "Subject: x\nFrom: a@example.org\n\n"
                               "body line\nlast";
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    in.orig = orig;
    in.orig_len = in.orig_size = sizeof(orig) - 1;
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "message/rfc822");
    assert_string_equal(m.pbody[2], "Subject: x\r\nFrom: a@example.org\r\n\r\n"
                                    "body line\r\nlast\r\n");
    mime_free(&m);

    in.max_copy = 11;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
    assert_string_equal(m.pbody[2], "Subject: x\r\n");
    mime_free(&m);

    in.max_copy = 40;
    build_parse(&in, &out, &m);
    assert_string_equal(m.pbody[2], "Subject: x\r\nFrom: a@example.org\r\n");
    mime_free(&m);

    /* CRLF header lines ended by a bare LF empty line. */
    static const char mixed[] = "A: 1\r\nB: 2\r\n\nbody\r\n";
    in.orig = mixed;
    in.orig_len = in.orig_size = sizeof(mixed) - 1;
    in.hdrs_only = true;
    build_parse(&in, &out, &m);
    assert_string_equal(m.pbody[2], "A: 1\r\nB: 2\r\n");
    mime_free(&m);
    buf_free(&out);
}

static void test_empty_body(void **state)
{
    (void)state;
    static const char orig[] = "Subject: x\r\nFrom: a@example.org\r\n\r\n";
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    in.orig = orig;
    in.orig_len = in.orig_size = sizeof(orig) - 1;
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "message/rfc822");
    assert_string_equal(m.pbody[2], orig);
    mime_free(&m);

    in.hdrs_only = true;
    build_parse(&in, &out, &m);
    assert_string_equal(m.pbody[2], "Subject: x\r\nFrom: a@example.org\r\n");
    mime_free(&m);

    /* No empty line and no final line end: all header, line ended. */
    static const char bare[] = "Subject: x";
    in.orig = bare;
    in.orig_len = in.orig_size = sizeof(bare) - 1;
    in.hdrs_only = false;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "message/rfc822");
    assert_string_equal(m.pbody[2], "Subject: x\r\n");
    mime_free(&m);

    /* An empty original: nothing to attach. */
    in.orig = "";
    in.orig_len = in.orig_size = 0;
    build_parse(&in, &out, &m);
    assert_int_equal(m.n, 2);
    mime_free(&m);
    buf_free(&out);
}

/* Content that MIME cannot carry as it is falls back to the headers,
 * which are rewritten; declared 8-bit content goes out whole. */
static void test_unsafe_original(void **state)
{
    (void)state;
    static const char eight[] =
        "Subject: caf\xc3\xa9\r\n\r\nd\xc3\xa9j\xc3\xa0\r\n";
    static const char nul[] = "Subject: n\r\n\r\na\0b\r\n";
    static const char cr[] = "Subject: c\rX\r\n\r\na\rb\r\n";
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    struct buf out = {0};
    struct mime m;

    in.orig = eight;
    in.orig_len = in.orig_size = sizeof(eight) - 1;
    build_parse(&in, &out, &m); /* 7-bit checked */
    expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
    assert_string_equal(m.pbody[2], "Subject: caf??\r\n");
    expect_field(m.head, "Content-Transfer-Encoding", "7bit");
    mime_free(&m);

    in.eightbit = true;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "message/rfc822");
    expect_field(m.phead[2], "Content-Transfer-Encoding", "8bit");
    expect_field(m.head, "Content-Transfer-Encoding", "8bit");
    assert_string_equal(m.pbody[2], eight);
    mime_free(&m);

    in.orig = nul;
    in.orig_len = in.orig_size = sizeof(nul) - 1;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
    assert_string_equal(m.pbody[2], "Subject: n\r\n");
    mime_free(&m);

    in.orig = cr;
    in.orig_len = in.orig_size = sizeof(cr) - 1;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
    assert_string_equal(m.pbody[2], "Subject: c?X\r\n");
    mime_free(&m);

    /* A body line over 998 octets: headers only. A header line over 998
     * octets: folded in the copy. */
    struct buf big = {0};
    buf_puts(&big, "Subject: ");
    for (int i = 0; i < 1500; i++)
        buf_putc(&big, 'h');
    buf_puts(&big, "\r\n\r\n");
    for (int i = 0; i < 1200; i++)
        buf_putc(&big, 'b');
    buf_puts(&big, "\r\n");
    in.orig = big.data;
    in.orig_len = in.orig_size = big.len;
    in.eightbit = false;
    build_parse(&in, &out, &m); /* lines <= 998 checked */
    expect_field(m.phead[2], "Content-Type", "text/rfc822-headers");
    char *subj = field(m.pbody[2], "Subject", NULL);
    assert_non_null(subj);
    assert_int_equal(strlen(subj), 1501); /* one folding space added */
    free(subj);
    mime_free(&m);
    buf_free(&big);
    buf_free(&out);
}

/* --- recipients and diagnostics ----------------------------------------- */

static void test_multi_rcpt(void **state)
{
    (void)state;
    const struct dsn_rcpt r[] = {
        rc_bob,
        {.addr = "carol@example.net",
         .orcpt = "rfc822;Carol@Example.NET",
         .status = "5.4.7",
         .reason = "5.4.7 - Delivery expired (message too old)",
         .last_attempt = T0 + 7200},
        {.addr = "dave@example.com",
         .orcpt = "dave@example.com",
         .status = "5.1.2"},
    };
    struct dsn_input in;
    base_input(&in, r, ARRAY_LEN(r));
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    char *blk[8];
    size_t nb = status_blocks(m.pbody[1], blk, 8);
    assert_int_equal(nb, 4);
    expect_field(blk[1], "Final-Recipient", "rfc822; bob@example.net");
    expect_field(blk[2], "Original-Recipient", "rfc822;Carol@Example.NET");
    expect_field(blk[2], "Final-Recipient", "rfc822; carol@example.net");
    expect_field(blk[2], "Status", "5.4.7");
    expect_field(blk[2], "Remote-MTA", NULL);
    expect_field(blk[2], "Diagnostic-Code",
                 "X-Moat; 5.4.7 - Delivery expired (message too old)");
    expect_field(blk[3], "Original-Recipient", "rfc822; dave@example.com");
    expect_field(blk[3], "Final-Recipient", "rfc822; dave@example.com");
    expect_field(blk[3], "Diagnostic-Code", NULL);
    expect_field(blk[3], "Last-Attempt-Date", NULL);
    for (size_t i = 1; i < nb; i++)
        expect_field(blk[i], "Action", "failed");
    free_blocks(blk, nb);
    const char *t = m.pbody[0];
    const char *b = strstr(t, "<bob@example.net>");
    const char *c = strstr(t, "<carol@example.net>\r\n"
                              "    5.4.7 - Delivery expired (message too "
                              "old)\r\n");
    const char *d = strstr(t, "<dave@example.com>\r\n    Status 5.1.2\r\n");
    assert_true(b && c && d && b < c && c < d);
    mime_free(&m);
    buf_free(&out);
}

/* Line breaks and controls in free text cannot add fields, parts or
 * header lines; identifiers holding them are refused. */
static void test_injection(void **state)
{
    (void)state;
    struct dsn_rcpt r = rc_bob;
    r.reply = "550 bad\r\nAction: delivered\r\n\r\n"
              "Final-Recipient: rfc822; evil@example\r\n"
              "--=_moat_0.123.1700003600--\r\n\x01\x7f end";
    r.reason = "5.1.1\nStatus: 2.0.0";
    struct dsn_input in;
    base_input(&in, &r, 1);
    in.subject = "Bounce\r\nBcc: victim@example.com";
    in.helo = "evil\r\nX-Injected: 1";
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    /* The first candidate boundary appears in the reply: skipped. */
    assert_string_equal(m.bd, "=_moat_1.123.1700003600");
    expect_field(m.head, "Bcc", NULL);
    expect_field(m.head, "Subject", "Bounce Bcc: victim@example.com");
    char *blk[8];
    size_t nb = status_blocks(m.pbody[1], blk, 8);
    assert_int_equal(nb, 2);
    expect_field(blk[0], "X-Injected", NULL);
    expect_field(blk[0], "Received-From-MTA",
                 "dns; evil X-Injected: 1 ([192.0.2.7])");
    expect_field(blk[1], "Action", "failed");
    expect_field(blk[1], "Final-Recipient", "rfc822; bob@example.net");
    expect_field(blk[1], "Status", "5.1.1");
    char *diag = field(blk[1], "Diagnostic-Code", NULL);
    char *sq = squash(diag);
    assert_string_equal(sq, "smtp; 550 bad Action: delivered "
                            "Final-Recipient: rfc822; evil@example "
                            "--=_moat_0.123.1700003600-- ?? end");
    free(sq);
    free(diag);
    free_blocks(blk, nb);
    assert_null(strstr(m.pbody[0], "\r\nStatus: 2.0.0"));
    mime_free(&m);

    /* Identifiers with line breaks are refused, and out is untouched. */
    const char *bad[] = {"bob@example.net\r\nBcc: x@example.com",
                         "bob@example.net\n", "bob\t@example.net"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        r.addr = bad[i];
        size_t len = out.len;
        char err[128];
        assert_false(dsn_build(&in, &out, err, sizeof(err)));
        assert_string_equal(err,
                            "recipient 0 address holds a control character");
        assert_int_equal(out.len, len);
    }
    buf_free(&out);
}

/* A long reply folds at 78 where words allow and never passes 998. */
static void test_long_diag(void **state)
{
    (void)state;
    struct buf reply = {0};
    buf_puts(&reply, "550-5.7.1 ");
    for (int i = 0; i < 80; i++)
        buf_printf(&reply, "word%03d ", i);
    for (int i = 0; i < 1100; i++)
        buf_putc(&reply, (char)('a' + i % 26));
    buf_puts(&reply, "\r\n550 5.7.1 tail");
    struct dsn_rcpt r = rc_bob;
    r.reply = reply.data;
    struct dsn_input in;
    base_input(&in, &r, 1);
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m); /* all lines <= 998 */

    char *blk[4];
    size_t nb = status_blocks(m.pbody[1], blk, 4);
    const char *d = strstr(blk[1], "Diagnostic-Code:");
    assert_non_null(d);
    size_t lines = 0, long_lines = 0;
    for (const char *p = d; *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t len = (size_t)(eol - p);
        if (p != d && *p != ' ')
            break; /* next field */
        lines++;
        if (len > 78)
            long_lines++; /* only the pieces of the 1100-octet word */
        p = eol + 2;
    }
    assert_true(lines > 10);
    assert_int_equal(long_lines, 2);
    /* Nothing lost: the words come back in order once unfolded. */
    char *diag = field(blk[1], "Diagnostic-Code", NULL);
    char *a = squash(diag);
    char *want_s = squash(reply.data);
    struct buf want = {0};
    buf_printf(&want, "smtp; %s", want_s);
    /* Unfolding the cut word gives it an extra space; drop spaces. */
    struct buf x = {0}, y = {0};
    for (const char *p = a; *p; p++)
        if (*p != ' ')
            buf_putc(&x, *p);
    for (const char *p = buf_str(&want); *p; p++)
        if (*p != ' ')
            buf_putc(&y, *p);
    assert_string_equal(buf_str(&x), buf_str(&y));
    free(a);
    free(want_s);
    free(diag);
    buf_free(&want);
    buf_free(&x);
    buf_free(&y);
    free_blocks(blk, nb);
    mime_free(&m);

    /* Past DSN_TEXT_MAX the text is cut with "...". */
    buf_reset(&reply);
    for (int i = 0; i < 400; i++)
        buf_puts(&reply, "0123456789 ");
    r.reply = reply.data;
    build_parse(&in, &out, &m);
    nb = status_blocks(m.pbody[1], blk, 4);
    diag = field(blk[1], "Diagnostic-Code", NULL);
    a = squash(diag);
    assert_true(strlen(a) < DSN_TEXT_MAX + 20);
    assert_string_equal(a + strlen(a) - 3, "...");
    free(a);
    free(diag);
    free_blocks(blk, nb);
    mime_free(&m);
    buf_free(&reply);
    buf_free(&out);
}

/* The original holds the first candidate boundaries: the next free one
 * is used, and the original still comes back intact. */
static void test_boundary_collision(void **state)
{
    (void)state;
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    char first[128];
    assert_true(str_copy(first, sizeof(first), m.bd));
    mime_free(&m);

    struct buf orig = {0};
    buf_printf(&orig,
               "Subject: trap\r\n\r\n--%s\r\nContent-Type: text/plain"
               "\r\n\r\nfake\r\n--%s--\r\n=_moat_1.123.1700003600\r\n"
               "x=_moat_2.123.1700003600y\r\n",
               first, first);
    in.orig = orig.data;
    in.orig_len = in.orig_size = orig.len;
    build_parse(&in, &out, &m);
    assert_string_equal(m.bd, "=_moat_3.123.1700003600");
    assert_int_equal(m.n, 3);
    assert_string_equal(m.pbody[2], orig.data);
    mime_free(&m);
    buf_free(&orig);
    buf_free(&out);
}

/* --- SMTPUTF8 ----------------------------------------------------------- */

static void test_smtputf8(void **state)
{
    (void)state;
    static const char orig[] = "From: j\xc3\xbcrgen@example.org\r\n"
                               "Subject: Gr\xc3\xbc\xc3\x9f"
                               "e\r\n\r\n"
                               "Hallo \xe4\xbd\xa0\xe5\xa5\xbd\r\n";
    struct dsn_rcpt r = {
        .addr = "\xe7\x94\xa8\xe6\x88\xb7@example.net", /* 用户@ */
        .status = "5.1.1",
        .remote_mta = "mx.example.net",
        .reply = "550 5.1.1 \xe7\x94\xa8\xe6\x88\xb7 unknown \xff!",
    };
    struct dsn_input in;
    base_input(&in, &r, 1);
    in.utf8 = true;
    in.sender = "j\xc3\xbcrgen@example.org";
    in.orig = orig;
    in.orig_len = in.orig_size = sizeof(orig) - 1;
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    expect_field(m.head, "To", "<j\xc3\xbcrgen@example.org>");
    char *ct = field(m.head, "Content-Type", NULL);
    assert_non_null(strstr(ct, "report-type=global-delivery-status;"));
    free(ct);
    expect_field(m.head, "Content-Transfer-Encoding", "8bit");
    expect_field(m.phead[0], "Content-Type", "text/plain; charset=utf-8");
    expect_field(m.phead[1], "Content-Type", "message/global-delivery-status");
    expect_field(m.phead[1], "Content-Transfer-Encoding", "8bit");
    expect_field(m.phead[2], "Content-Type", "message/global");
    assert_string_equal(m.pbody[2], orig);
    char *blk[4];
    size_t nb = status_blocks(m.pbody[1], blk, 4);
    expect_field(blk[0], "X-Moat-Sender", "utf-8; j\xc3\xbcrgen@example.org");
    expect_field(blk[1], "Final-Recipient",
                 "utf-8; \xe7\x94\xa8\xe6\x88\xb7@example.net");
    /* Valid UTF-8 kept, the invalid byte masked. */
    expect_field(blk[1], "Diagnostic-Code",
                 "smtp; 550 5.1.1 \xe7\x94\xa8\xe6\x88\xb7 unknown ?!");
    free_blocks(blk, nb);
    mime_free(&m);

    in.hdrs_only = true;
    build_parse(&in, &out, &m);
    expect_field(m.phead[2], "Content-Type", "message/global-headers");
    assert_string_equal(m.pbody[2], "From: j\xc3\xbcrgen@example.org\r\n"
                                    "Subject: Gr\xc3\xbc\xc3\x9f"
                                    "e\r\n");
    mime_free(&m);

    /* Without SMTPUTF8 a UTF-8 address is refused, and in free text
     * non-ASCII becomes '?'. */
    char err[128];
    in.utf8 = false;
    in.sender = "alice@example.org";
    assert_false(dsn_build(&in, &out, err, sizeof(err)));
    assert_string_equal(err, "recipient 0 address is not ASCII (no SMTPUTF8)");
    r.addr = "bob@example.net";
    in.hdrs_only = false;
    in.eightbit = true;
    build_parse(&in, &out, &m);
    expect_field(m.phead[1], "Content-Type", "message/delivery-status");
    expect_field(m.phead[1], "Content-Transfer-Encoding", "7bit");
    nb = status_blocks(m.pbody[1], blk, 4);
    expect_field(blk[1], "Diagnostic-Code", "smtp; 550 5.1.1 ?? unknown ?!");
    free_blocks(blk, nb);
    mime_free(&m);

    /* Invalid UTF-8 in an identifier is refused even with SMTPUTF8. */
    in.utf8 = true;
    r.addr = "bad\xc3(@example.net";
    assert_false(dsn_build(&in, &out, err, sizeof(err)));
    assert_string_equal(err, "recipient 0 address is not valid UTF-8");
    buf_free(&out);
}

/* --- refusals and dates ------------------------------------------------- */

static const struct dsn_rcpt bad_status = {.addr = "b@example.net",
                                           .status = "5.1"};
static const struct dsn_rcpt long_status = {.addr = "b@example.net",
                                            .status = "5.1.1000"};
static const struct dsn_rcpt two_status = {.addr = "b@example.net",
                                           .status = "2.0.0"};
static const struct dsn_rcpt four_status = {.addr = "b@example.net",
                                            .status = "4.0.0"};
static const struct dsn_rcpt space_mta = {
    .addr = "b@example.net", .status = "5.0.0", .remote_mta = "mx example"};

#define REFUSALS 14

/* Spoil the base input in way i; returns the reason expected. */
static const char *spoil(int i, struct dsn_input *in)
{
    static char longid[DSN_ID_MAX + 10];
    memset(longid, 'a', sizeof(longid) - 1);
    switch (i) {
    case 0:
        in->reporting_mta = NULL;
        return "reporting MTA is empty";
    case 1:
        in->message_id = "no-brackets@x";
        return "Message-ID is not in <...>";
    case 2:
        in->sender = "";
        return "null sender: no report for a bounce";
    case 3:
        in->nrcpt = 0;
        return "no recipients";
    case 4:
        in->rcpts = &bad_status;
        return "recipient 0: bad status for a failure";
    case 5:
        in->rcpts = &long_status;
        return "recipient 0: bad status for a failure";
    case 6:
        in->rcpts = &two_status;
        return "recipient 0: bad status for a failure";
    case 7:
        in->kind = DSN_DELAY;
        in->retry_until = T0 + 10;
        return "recipient 0: bad status for a delay";
    case 8:
        in->kind = DSN_DELAY;
        in->rcpts = &four_status;
        return "a delay warning needs its retry end";
    case 9:
        in->rcpts = &space_mta;
        return "recipient 0 remote MTA holds a space";
    case 10:
        in->sender = longid;
        return "sender is longer than 512 octets";
    case 11:
        in->orig_len = 10;
        return "original: 10 bytes given, 150 needed";
    case 12:
        in->arrival = 0;
        return "bad report or arrival time";
    default:
        in->envid = "id\r\nX: y";
        return "ENVID holds a control character";
    }
}

static void test_refusals(void **state)
{
    (void)state;
    for (int i = 0; i < REFUSALS; i++) {
        struct dsn_input in;
        base_input(&in, &rc_bob, 1);
        const char *want = spoil(i, &in);
        print_message("# refuse: %s\n", want);
        struct buf out = {0};
        char err[128] = "";
        assert_false(dsn_build(&in, &out, err, sizeof(err)));
        assert_string_equal(err, want);
        assert_int_equal(out.len, 0);
    }
    /* A bounce of a bounce is fine when an alternate address is set. */
    struct dsn_input in;
    base_input(&in, &rc_bob, 1);
    in.sender = "";
    in.to = "bounces@example.org";
    struct buf out = {0};
    struct mime m;
    build_parse(&in, &out, &m);
    expect_field(m.head, "To", "<bounces@example.org>");
    char *blk[4];
    size_t nb = status_blocks(m.pbody[1], blk, 4);
    expect_field(blk[0], "X-Moat-Sender", NULL);
    free_blocks(blk, nb);
    mime_free(&m);
    buf_free(&out);
}

/* Dates use the local zone as a numeric offset, whatever the locale. */
static void test_date_zone(void **state)
{
    (void)state;
    static const struct {
        const char *tz, *date;
    } zones[] = {
        {"<+0530>-5:30", "Wed, 15 Nov 2023 04:43:20 +0530"},
        {"<-0330>3:30", "Tue, 14 Nov 2023 19:43:20 -0330"},
        {"UTC0", "Tue, 14 Nov 2023 23:13:20 +0000"},
    };
    for (size_t i = 0; i < ARRAY_LEN(zones); i++) {
        setenv("TZ", zones[i].tz, 1);
        tzset();
        struct dsn_input in;
        base_input(&in, &rc_bob, 1);
        struct buf out = {0};
        struct mime m;
        build_parse(&in, &out, &m);
        expect_field(m.head, "Date", zones[i].date);
        mime_free(&m);
        buf_free(&out);
    }
}

int main(void)
{
    setenv("TZ", "UTC0", 1);
    tzset();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failure_structure),
        cmocka_unit_test(test_delay),
        cmocka_unit_test(test_copy_limit),
        cmocka_unit_test(test_headers_cut),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_empty_body),
        cmocka_unit_test(test_unsafe_original),
        cmocka_unit_test(test_multi_rcpt),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_long_diag),
        cmocka_unit_test(test_boundary_collision),
        cmocka_unit_test(test_smtputf8),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_date_zone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
