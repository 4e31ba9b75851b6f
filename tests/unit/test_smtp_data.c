/*
 * test_smtp_data.c - table-driven tests of the DATA/BDAT content scanner.
 *
 * Every case is scanned in one shot and compared with its expected
 * content, flags, consumption and captured headers; then it is scanned
 * again one byte at a time, in random chunk sizes, and (for short inputs)
 * split in two at every position, and each result must equal the one-shot
 * result exactly.
 */
#include "smtp/smtp_cmd.h"
#include "smtp/smtp_data.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#define BARE_LF SMTP_DATA_BARE_LF
#define BARE_CR SMTP_DATA_BARE_CR
#define LONG SMTP_DATA_LONG_LINE

struct data_case {
    const char *label;
    enum smtp_data_mode mode;
    const char *in;
    size_t in_len;   /* 0: strlen(in) */
    const char *out; /* expected content */
    size_t out_len;  /* 0: strlen(out) */
    unsigned flags;
    bool done;
    size_t left; /* input bytes left unconsumed (pipelined) */
    const char *msgid;
    const char *subject;
};

/* What one scan produced. */
struct result {
    struct buf out;
    size_t consumed;
    unsigned flags;
    bool done;
    uint64_t bytes_out;
    struct buf msgid, subject;
};

/* How an input is cut into chunks. */
enum chunking { CHUNK_ONE_SHOT, CHUNK_BYTE, CHUNK_RANDOM, CHUNK_SPLIT };

struct chunker {
    enum chunking kind;
    uint32_t rng; /* CHUNK_RANDOM: xorshift state */
    size_t limit; /* CHUNK_RANDOM: largest chunk */
    size_t split; /* CHUNK_SPLIT: size of the first chunk */
    size_t calls;
};

/* Size of the next chunk, given what is left. */
static size_t next_chunk(struct chunker *c, size_t left)
{
    size_t n = left;
    if (c->kind == CHUNK_BYTE)
        n = 1;
    else if (c->kind == CHUNK_RANDOM) {
        c->rng ^= c->rng << 13;
        c->rng ^= c->rng >> 17;
        c->rng ^= c->rng << 5;
        n = 1 + c->rng % c->limit;
    } else if (c->kind == CHUNK_SPLIT && c->calls == 0)
        n = c->split;
    c->calls++;
    return n < left ? n : left;
}

/* Scan in[0..len) with the given chunking into r. */
static void run_scan(enum smtp_data_mode mode, const char *in, size_t len,
                     struct chunker *c, struct result *r)
{
    struct smtp_data d;
    smtp_data_init(&d, mode);
    buf_init(&r->out);
    size_t off = 0;
    while (off < len && !d.done) {
        size_t n = next_chunk(c, len - off);
        size_t used = smtp_data_feed(&d, in + off, n, &r->out);
        assert_true(used <= n);
        if (used < n)
            assert_true(d.done);
        off += used;
    }
    if (mode == SMTP_DATA_RAW)
        smtp_data_finish(&d);
    if (d.done)
        assert_int_equal(smtp_data_feed(&d, "x", 1, &r->out), 0);
    assert_true(d.message_id.len <= SMTP_DATA_HDR_VALUE_MAX);
    assert_true(d.subject.len <= SMTP_DATA_HDR_VALUE_MAX);
    assert_true(d.hdr_line.cap <= 2048);
    r->consumed = off;
    r->flags = d.flags;
    r->done = d.done;
    r->bytes_out = d.bytes_out;
    buf_init(&r->msgid);
    buf_init(&r->subject);
    buf_append(&r->msgid, d.message_id.data, d.message_id.len);
    buf_append(&r->subject, d.subject.data, d.subject.len);
    smtp_data_free(&d);
}

static void result_free(struct result *r)
{
    buf_free(&r->out);
    buf_free(&r->msgid);
    buf_free(&r->subject);
}

/* Two scans of the same input must agree on everything. */
static void assert_same(const struct result *a, const struct result *b)
{
    assert_int_equal(a->out.len, b->out.len);
    assert_memory_equal(buf_str(&a->out), buf_str(&b->out), a->out.len);
    assert_int_equal(a->consumed, b->consumed);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->bytes_out, b->bytes_out);
    assert_string_equal(buf_str(&a->msgid), buf_str(&b->msgid));
    assert_string_equal(buf_str(&a->subject), buf_str(&b->subject));
}

/* Check a case one-shot against its expectations, then every chunking
 * against the one-shot result. */
static void check_case(const struct data_case *t)
{
    size_t in_len = t->in_len ? t->in_len : strlen(t->in);
    size_t out_len = t->out_len ? t->out_len : strlen(t->out);
    struct chunker one = {.kind = CHUNK_ONE_SHOT};
    struct result ref;
    print_message("# data: %s\n", t->label);
    run_scan(t->mode, t->in, in_len, &one, &ref);
    assert_int_equal(ref.out.len, out_len);
    assert_memory_equal(buf_str(&ref.out), t->out, out_len);
    assert_int_equal(ref.bytes_out, out_len);
    assert_int_equal(ref.flags, t->flags);
    assert_int_equal(ref.done, t->done);
    assert_int_equal(ref.consumed, in_len - t->left);
    assert_string_equal(buf_str(&ref.msgid), t->msgid ? t->msgid : "");
    assert_string_equal(buf_str(&ref.subject), t->subject ? t->subject : "");

    struct chunker plans[] = {
        {.kind = CHUNK_BYTE},
        {.kind = CHUNK_RANDOM, .rng = 1, .limit = 3},
        {.kind = CHUNK_RANDOM, .rng = 7, .limit = 17},
        {.kind = CHUNK_RANDOM, .rng = 12345, .limit = 200},
        {.kind = CHUNK_RANDOM, .rng = 99, .limit = 4096},
    };
    for (size_t i = 0; i < ARRAY_LEN(plans); i++) {
        struct result r;
        run_scan(t->mode, t->in, in_len, &plans[i], &r);
        assert_same(&ref, &r);
        result_free(&r);
    }
    for (size_t k = 1; in_len <= 4096 && k < in_len; k++) {
        struct chunker split = {.kind = CHUNK_SPLIT, .split = k};
        struct result r;
        run_scan(t->mode, t->in, in_len, &split, &r);
        assert_same(&ref, &r);
        result_free(&r);
    }
    result_free(&ref);
}

#define DOT SMTP_DATA_DOT
#define RAW SMTP_DATA_RAW

static const struct data_case cases[] = {
    /* End of data and unstuffing. */
    {"simple", DOT, "Subject: hi\r\n\r\nbody\r\n.\r\n", 0,
     "Subject: hi\r\n\r\nbody\r\n", 0, 0, true, 0, NULL, "hi"},
    {"empty message", DOT, ".\r\n", 0, "", 0, 0, true, 0, NULL, NULL},
    {"empty line then end", DOT, "\r\n.\r\n", 0, "\r\n", 0, 0, true, 0, NULL,
     NULL},
    {"unstuffing", DOT, "..hello\r\n.\r\n", 0, ".hello\r\n", 0, 0, true, 0,
     NULL, NULL},
    {"stuffed dot line", DOT, "a\r\n..\r\nb\r\n.\r\n", 0, "a\r\n.\r\nb\r\n", 0,
     0, true, 0, NULL, NULL},
    {"stuffed double dot", DOT, "...\r\n.\r\n", 0, "..\r\n", 0, 0, true, 0,
     NULL, NULL},
    {"dot not at line start", DOT, "a.b\r\na.\r\n.\r\n", 0, "a.b\r\na.\r\n", 0,
     0, true, 0, NULL, NULL},
    {"unstuffed every line", DOT, ".a\r\n.b\r\n.c\r\n.\r\n", 0,
     "a\r\nb\r\nc\r\n", 0, 0, true, 0, NULL, NULL},
    {"dot space is not the end", DOT, "a\r\n. \r\n.\r\n", 0, "a\r\n \r\n", 0, 0,
     true, 0, NULL, NULL},
    {"pipelined QUIT left", DOT, "x\r\n.\r\nQUIT\r\n", 0, "x\r\n", 0, 0, true,
     6, NULL, NULL},
    {"pipelined MAIL left", DOT, ".\r\nMAIL FROM:<>\r\n", 0, "", 0, 0, true, 14,
     NULL, NULL},
    {"second terminator left", DOT, "a\r\n.\r\n.\r\n", 0, "a\r\n", 0, 0, true,
     3, NULL, NULL},
    {"not yet ended", DOT, "x\r\n", 0, "x\r\n", 0, 0, false, 0, NULL, NULL},
    {"ends with dot CR", DOT, "x\r\n.\r", 0, "x\r\n", 0, 0, false, 0, NULL,
     NULL},
    {"ends with dot", DOT, "x\r\n.", 0, "x\r\n", 0, 0, false, 0, NULL, NULL},
    {"no CRLF before dot", DOT, "x.\r\n", 0, "x.\r\n", 0, 0, false, 0, NULL,
     NULL},
    {"binary bytes kept", DOT, "\x00\xff\x01\x80\r\n.\r\n", 9,
     "\x00\xff\x01\x80\r\n", 6, 0, true, 0, NULL, NULL},

    /* SMTP smuggling: none of these ends the data. */
    {"smuggle LF.LF", DOT, "a\n.\nMAIL FROM:<x@y>\r\n.\r\n", 0,
     "a\n.\nMAIL FROM:<x@y>\r\n", 0, BARE_LF, true, 0, NULL, NULL},
    {"smuggle CR.CR", DOT, "a\r.\rMAIL FROM:<x@y>\r\n.\r\n", 0,
     "a\r.\rMAIL FROM:<x@y>\r\n", 0, BARE_CR, true, 0, NULL, NULL},
    {"smuggle LF.CRLF", DOT, "a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", 0,
     "a\n.\r\nMAIL FROM:<x@y>\r\n", 0, BARE_LF, true, 0, NULL, NULL},
    {"smuggle CRLF.LF", DOT, "a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n", 0,
     "a\r\n\nMAIL FROM:<x@y>\r\n", 0, BARE_LF, true, 0, NULL, NULL},
    {"smuggle CRLF.CR", DOT, "a\r\n.\rMAIL FROM:<x@y>\r\n.\r\n", 0,
     "a\r\n\rMAIL FROM:<x@y>\r\n", 0, BARE_CR, true, 0, NULL, NULL},
    {"smuggle CRLF.CRCRLF", DOT, "a\r\n.\r\r\nb\r\n.\r\n", 0,
     "a\r\n\r\r\nb\r\n", 0, BARE_CR, true, 0, NULL, NULL},
    {"smuggle LF.LF at start", DOT, "\n.\nb\r\n.\r\n", 0, "\n.\nb\r\n", 0,
     BARE_LF, true, 0, NULL, NULL},
    {"smuggle only, unterminated", DOT, "a\n.\n", 0, "a\n.\n", 0, BARE_LF,
     false, 0, NULL, NULL},

    /* Bare CR and LF. */
    {"bare LF mid body", DOT, "a\nb\r\n.\r\n", 0, "a\nb\r\n", 0, BARE_LF, true,
     0, NULL, NULL},
    {"bare CR mid line", DOT, "a\rb\r\n.\r\n", 0, "a\rb\r\n", 0, BARE_CR, true,
     0, NULL, NULL},
    {"CR CR LF", DOT, "a\r\r\n.\r\n", 0, "a\r\r\n", 0, BARE_CR, true, 0, NULL,
     NULL},
    {"LF LF after CRLF", DOT, "a\r\n\n.\r\n", 0, "a\r\n\n.\r\n", 0, BARE_LF,
     false, 0, NULL, NULL},
    {"both", DOT, "a\rb\nc\r\n.\r\n", 0, "a\rb\nc\r\n", 0, BARE_CR | BARE_LF,
     true, 0, NULL, NULL},
    {"CR at end of input pending", DOT, "abc\r", 0, "abc\r", 0, 0, false, 0,
     NULL, NULL},

    /* Header capture. */
    {"message-id and folded subject", DOT,
     "Message-ID: <abc@example.com>\r\nSubject: Hello\r\n world\r\n\r\n"
     "body\r\n.\r\n",
     0,
     "Message-ID: <abc@example.com>\r\nSubject: Hello\r\n world\r\n\r\n"
     "body\r\n",
     0, 0, true, 0, "<abc@example.com>", "Hello world"},
    {"names case-insensitive", DOT,
     "message-id:<x@y>\r\nSUBJECT:   spaced   \r\n\r\n.\r\n", 0,
     "message-id:<x@y>\r\nSUBJECT:   spaced   \r\n\r\n", 0, 0, true, 0, "<x@y>",
     "spaced"},
    {"first wins", DOT,
     "Subject: one\r\nMessage-Id: <1@x>\r\nSubject: two\r\n"
     "Message-ID: <2@x>\r\n\r\n.\r\n",
     0,
     "Subject: one\r\nMessage-Id: <1@x>\r\nSubject: two\r\n"
     "Message-ID: <2@x>\r\n\r\n",
     0, 0, true, 0, "<1@x>", "one"},
    {"empty first subject wins", DOT, "Subject:\r\nSubject: two\r\n\r\n.\r\n",
     0, "Subject:\r\nSubject: two\r\n\r\n", 0, 0, true, 0, NULL, NULL},
    {"fold with tab and empty first line", DOT,
     "Subject:\r\n\tfirst\r\n  second \r\n\r\n.\r\n", 0,
     "Subject:\r\n\tfirst\r\n  second \r\n\r\n", 0, 0, true, 0, NULL,
     "first  second"},
    {"continuation of other field", DOT,
     "X-A: 1\r\n Subject: no\r\nSubject: yes\r\n\r\n.\r\n", 0,
     "X-A: 1\r\n Subject: no\r\nSubject: yes\r\n\r\n", 0, 0, true, 0, NULL,
     "yes"},
    {"blank before colon", DOT, "Subject : obs\r\n\r\n.\r\n", 0,
     "Subject : obs\r\n\r\n", 0, 0, true, 0, NULL, "obs"},
    {"similar names ignored", DOT,
     "Subject-X: a\r\nX-Subject: b\r\nMessage-IDs: c\r\n\r\n.\r\n", 0,
     "Subject-X: a\r\nX-Subject: b\r\nMessage-IDs: c\r\n\r\n", 0, 0, true, 0,
     NULL, NULL},
    {"line without colon", DOT, "Garbage\r\nSubject: s\r\n\r\n.\r\n", 0,
     "Garbage\r\nSubject: s\r\n\r\n", 0, 0, true, 0, NULL, "s"},
    {"header in body ignored", DOT, "\r\nSubject: not\r\n.\r\n", 0,
     "\r\nSubject: not\r\n", 0, 0, true, 0, NULL, NULL},
    {"after blank line ignored", DOT,
     "X: 1\r\n\r\nSubject: body\r\nMessage-ID: <b@b>\r\n.\r\n", 0,
     "X: 1\r\n\r\nSubject: body\r\nMessage-ID: <b@b>\r\n", 0, 0, true, 0, NULL,
     NULL},
    {"headers only, ended by dot", DOT, "Subject: end \r\n.\r\n", 0,
     "Subject: end \r\n", 0, 0, true, 0, NULL, "end"},
    {"folded then dot", DOT, "Subject: a\r\n b\r\n.\r\n", 0,
     "Subject: a\r\n b\r\n", 0, 0, true, 0, NULL, "a b"},
    {"stuffed header line", DOT, "..Subject: x\r\nSubject: y\r\n\r\n.\r\n", 0,
     ".Subject: x\r\nSubject: y\r\n\r\n", 0, 0, true, 0, NULL, "y"},
    {"utf-8 subject kept", DOT, "Subject: \xc3\xa9t\xc3\xa9\r\n\r\n.\r\n", 0,
     "Subject: \xc3\xa9t\xc3\xa9\r\n\r\n", 0, 0, true, 0, NULL,
     "\xc3\xa9t\xc3\xa9"},
    {"bare LF header lines", DOT, "Subject: lf\nX: 1\n\nbody\r\n.\r\n", 0,
     "Subject: lf\nX: 1\n\nbody\r\n", 0, BARE_LF, true, 0, NULL, "lf"},

    /* A realistic message. */
    {"mime sample", DOT,
     "Received: from mx.example (mx.example [192.0.2.1])\r\n"
     "\tby gw.example with ESMTP id 12345\r\n"
     "From: Alice <alice@example.org>\r\n"
     "To: Bob <bob@example.com>\r\n"
     "Subject: =?UTF-8?B?SGVsbG8=?=\r\n"
     "  continued\r\n"
     "Message-ID: <20240101.1@example.org>\r\n"
     "MIME-Version: 1.0\r\n"
     "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
     "\r\n"
     "--b1\r\n"
     "Content-Type: text/plain\r\n"
     "\r\n"
     "..leading dot\r\n"
     "Subject: not a header\r\n"
     "--b1--\r\n"
     ".\r\n"
     "QUIT\r\n",
     0,
     "Received: from mx.example (mx.example [192.0.2.1])\r\n"
     "\tby gw.example with ESMTP id 12345\r\n"
     "From: Alice <alice@example.org>\r\n"
     "To: Bob <bob@example.com>\r\n"
     "Subject: =?UTF-8?B?SGVsbG8=?=\r\n"
     "  continued\r\n"
     "Message-ID: <20240101.1@example.org>\r\n"
     "MIME-Version: 1.0\r\n"
     "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
     "\r\n"
     "--b1\r\n"
     "Content-Type: text/plain\r\n"
     "\r\n"
     ".leading dot\r\n"
     "Subject: not a header\r\n"
     "--b1--\r\n",
     0, 0, true, 6, "<20240101.1@example.org>",
     "=?UTF-8?B?SGVsbG8=?=  continued"},

    /* RAW (BDAT): no dot handling, no terminator. */
    {"raw keeps dots", RAW, "..a\r\n.\r\nb", 0, "..a\r\n.\r\nb", 0, 0, false, 0,
     NULL, NULL},
    {"raw headers", RAW, "Subject: raw\r\n folded\r\n\r\nbody\r\n", 0,
     "Subject: raw\r\n folded\r\n\r\nbody\r\n", 0, 0, false, 0, NULL,
     "raw folded"},
    {"raw header without CRLF", RAW, "Message-ID: <r@x>", 0,
     "Message-ID: <r@x>", 0, 0, false, 0, "<r@x>", NULL},
    {"raw CR at end", RAW, "a\r", 0, "a\r", 0, BARE_CR, false, 0, NULL, NULL},
    {"raw CRLF at end", RAW, "a\r\n", 0, "a\r\n", 0, 0, false, 0, NULL, NULL},
    {"raw bare LF", RAW, "a\nb", 0, "a\nb", 0, BARE_LF, false, 0, NULL, NULL},
    {"raw bare CR", RAW, "a\rb\r\n", 0, "a\rb\r\n", 0, BARE_CR, false, 0, NULL,
     NULL},
    {"raw smuggling is content", RAW, "a\n.\nb\r\n.\r\nc", 0,
     "a\n.\nb\r\n.\r\nc", 0, BARE_LF, false, 0, NULL, NULL},
    {"raw empty", RAW, "", 0, "", 0, 0, false, 0, NULL, NULL},
};

/* All table cases, each with every chunking. */
static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        check_case(&cases[i]);
}

/* A line of `len` output octets including CRLF, optionally stuffed, in
 * DOT mode; LONG_LINE iff len > 1000. */
static void test_long_lines(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        size_t out_len; /* line length in the content, CRLF included */
        bool stuffed;   /* line starts with a stuffing dot */
        bool bare_lf;   /* end the line with a bare LF instead */
        unsigned flags;
    } lines[] = {
        {"line 1000", 1000, false, false, 0},
        {"line 1001", 1001, false, false, LONG},
        {"stuffed 1001 in, 1000 out", 1000, true, false, 0},
        {"stuffed 1002 in, 1001 out", 1001, true, false, LONG},
        {"bare LF line 1000", 1000, false, true, BARE_LF},
        {"bare LF line 1001", 1001, false, true, BARE_LF | LONG},
        {"line 5000", 5000, false, false, LONG},
    };
    for (size_t i = 0; i < ARRAY_LEN(lines); i++) {
        char *in = xmalloc(6000), *out = xmalloc(6000);
        size_t n = 0, o = 0;
        if (lines[i].stuffed) {
            in[n++] = '.';
            out[o++] = '.';
            in[n++] = '.';
        }
        size_t body = lines[i].out_len - (lines[i].bare_lf ? 1 : 2) -
                      (lines[i].stuffed ? 1 : 0);
        memset(in + n, 'x', body);
        memset(out + o, 'x', body);
        n += body;
        o += body;
        const char *eol = lines[i].bare_lf ? "\n" : "\r\n";
        memcpy(in + n, eol, strlen(eol));
        memcpy(out + o, eol, strlen(eol));
        n += strlen(eol);
        o += strlen(eol);
        memcpy(in + n, "ok\r\n.\r\n", 7);
        memcpy(out + o, "ok\r\n", 4);
        struct data_case t = {lines[i].label, DOT,  in, n + 7, out, o + 4,
                              lines[i].flags, true, 0,  NULL,  NULL};
        check_case(&t);
        free(in);
        free(out);
    }
}

/* Short lines joined by bare LFs are not one long line; bare CRs are. */
static void test_long_line_separators(void **state)
{
    (void)state;
    char in[1400];
    memset(in, 'x', sizeof(in));
    memcpy(in + 600, "\n", 1);
    memcpy(in + 1200, "\r\n.\r\n", 5);
    struct data_case lf = {"600 LF 599 CRLF", DOT,  in, 1205, in,  1202,
                           BARE_LF,           true, 0,  NULL, NULL};
    check_case(&lf);
    in[600] = '\r';
    struct data_case cr = {"600 CR 599 CRLF", DOT,  in, 1205, in,  1202,
                           BARE_CR | LONG,    true, 0,  NULL, NULL};
    check_case(&cr);
}

/* Captured values and the header line buffer never grow past their
 * bounds, whatever the input. */
static void test_header_bounds(void **state)
{
    (void)state;
    size_t big = 100000;
    char *in = xmalloc(big + 200), *want = xmalloc(SMTP_DATA_HDR_VALUE_MAX + 1);
    size_t n = 0;

    /* One huge Subject line. */
    n = 0;
    memcpy(in, "Subject: ", 9);
    n = 9;
    for (size_t i = 0; i < big; i++)
        in[n++] = (char)('a' + i % 26);
    memcpy(in + n, "\r\n\r\n.\r\n", 7);
    n += 7;
    for (size_t i = 0; i < SMTP_DATA_HDR_VALUE_MAX; i++)
        want[i] = (char)('a' + i % 26);
    want[SMTP_DATA_HDR_VALUE_MAX] = '\0';
    struct data_case one = {
        "huge subject line", DOT, in, n, in, n - 3, LONG, true, 0, NULL, want};
    check_case(&one);

    /* Many folded continuation lines. */
    n = 0;
    memcpy(in, "Message-ID: <", 13);
    n = 13;
    for (size_t i = 0; i < 400; i++) {
        memcpy(in + n, "\r\n abcdefghi", 12);
        n += 12;
    }
    memcpy(in + n, ">\r\n\r\n.\r\n", 8);
    n += 8;
    size_t w = 0;
    want[w++] = '<';
    while (w < SMTP_DATA_HDR_VALUE_MAX) {
        static const char piece[] = " abcdefghi";
        size_t k =
            10 < SMTP_DATA_HDR_VALUE_MAX - w ? 10 : SMTP_DATA_HDR_VALUE_MAX - w;
        memcpy(want + w, piece, k);
        w += k;
    }
    want[w] = '\0';
    struct data_case fold = {"many folds", DOT, in,   n,   in, n - 3, 0,
                             true,         0,   want, NULL};
    check_case(&fold);

    /* Value of exactly the bound, then one more. */
    for (size_t extra = 0; extra < 2; extra++) {
        size_t vlen = SMTP_DATA_HDR_VALUE_MAX + extra;
        n = 0;
        memcpy(in, "Subject:", 8);
        n = 8;
        memset(in + n, 'v', vlen);
        n += vlen;
        memcpy(in + n, "\r\n\r\n.\r\n", 7);
        n += 7;
        memset(want, 'v', SMTP_DATA_HDR_VALUE_MAX);
        want[SMTP_DATA_HDR_VALUE_MAX] = '\0';
        struct data_case exact = {extra ? "value bound + 1" : "value bound",
                                  DOT,
                                  in,
                                  n,
                                  in,
                                  n - 3,
                                  8 + vlen + 2 > SMTP_TEXT_LINE_MAX ? LONG : 0,
                                  true,
                                  0,
                                  NULL,
                                  want};
        check_case(&exact);
    }
    free(in);
    free(want);
}

/* A 1 MB body with dots, CRLFs and binary noise: every chunking gives the
 * one-shot result (random chunk sizes only, for speed). */
static void test_large_equivalence(void **state)
{
    (void)state;
    size_t len = 1 << 20, n = 0;
    char *in = xmalloc(len + 8);
    uint32_t x = 2463534242u;
    while (n < len) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        static const char alphabet[] = "\r\n.\r\n..abcdefghij \t\xff";
        char c = alphabet[x % (sizeof(alphabet) - 1)];
        /* no terminator before the end: ".CRLF" only after a non-CRLF */
        if (c == '\n' && ((n == 2 && memcmp(in, ".\r", 2) == 0) ||
                          (n >= 4 && memcmp(in + n - 4, "\r\n.\r", 4) == 0)))
            c = 'x';
        in[n++] = c;
    }
    memcpy(in + n, "\r\n.\r\n", 5);
    n += 5;
    struct chunker one = {.kind = CHUNK_ONE_SHOT};
    struct result ref;
    run_scan(DOT, in, n, &one, &ref);
    assert_true(ref.done);
    assert_int_equal(ref.consumed, n);
    assert_true(ref.out.len > len / 2);
    assert_int_equal(ref.flags & (BARE_CR | BARE_LF), BARE_CR | BARE_LF);
    for (uint32_t seed = 1; seed < 6; seed++) {
        struct chunker c = {
            .kind = CHUNK_RANDOM, .rng = seed, .limit = 1u << (seed * 3)};
        struct result r;
        run_scan(DOT, in, n, &c, &r);
        assert_same(&ref, &r);
        result_free(&r);
    }
    struct chunker byte = {.kind = CHUNK_BYTE};
    struct result r;
    run_scan(DOT, in, n, &byte, &r);
    assert_same(&ref, &r);
    result_free(&r);
    result_free(&ref);
    free(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_long_line_separators),
        cmocka_unit_test(test_header_bounds),
        cmocka_unit_test(test_large_equivalence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
