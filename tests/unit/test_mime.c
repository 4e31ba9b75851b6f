/*
 * test_mime.c - message structure for filters: header fields (folded,
 * repeated, odd), single-part and nested multipart messages, attachment
 * names from Content-Disposition, Content-Type name= and RFC 2231,
 * transfer decodings, and broken structure (no boundary, no close
 * delimiter, a non-field line) that makes a message not valid.
 */
#include "policy/mime.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

static void parse(const char *text, struct mime_msg *m)
{
    mime_parse(text, strlen(text), m);
}

static char *decoded(const struct mime_msg *m, size_t i, const char *text)
{
    struct buf b = {0};
    mime_decode(&m->parts[i], text, &b);
    buf_putc(&b, '\0');
    (void)m;
    return b.data;
}

static void test_headers(void **state)
{
    (void)state;
    const char *t = "From: a@example.com\r\n"
                    "Subject: a long\r\n"
                    "\tfolded  subject \r\n"
                    "X-Tag: one\r\n"
                    "x-tag: two\r\n"
                    "Empty:\r\n"
                    "\r\n"
                    "body\r\n";
    struct mime_msg m;
    parse(t, &m);
    assert_true(m.valid);
    assert_int_equal(m.nheaders, 5);
    assert_string_equal(mime_header_find(&m, "subject")->value,
                        "a long\tfolded  subject");
    assert_int_equal(mime_header_count(&m, "X-TAG"), 2);
    assert_string_equal(mime_header_find(&m, "x-tag")->value, "one");
    assert_string_equal(mime_header_find(&m, "Empty")->value, "");
    assert_null(mime_header_find(&m, "To"));
    const struct mime_header *s = mime_header_find(&m, "Subject");
    assert_int_equal(s->off, strlen("From: a@example.com\r\n"));
    assert_int_equal(s->len, strlen("Subject: a long\r\n\tfolded  subject \r\n"));
    assert_int_equal(m.header_len, strstr(t, "body") - t);
    assert_int_equal(m.nparts, 1);
    assert_string_equal(m.parts[0].type, "text/plain");
    assert_false(m.parts[0].attachment);
    char *d = decoded(&m, 0, t);
    assert_string_equal(d, "body\r\n");
    free(d);
    mime_free(&m);

    /* A line that is not a field ends the header and makes it invalid. */
    parse("Subject: x\nthis is not a field\n\nbody\n", &m);
    assert_false(m.valid);
    assert_int_equal(m.nheaders, 1);
    mime_free(&m);
    /* No body at all is fine. */
    parse("Subject: x\r\n", &m);
    assert_true(m.valid);
    assert_int_equal(m.nparts, 1);
    assert_int_equal(m.parts[0].body_len, 0);
    mime_free(&m);
}

static const char multi[] =
    "Subject: mixed\r\n"
    "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    "\r\n"
    "preamble\r\n"
    "--b1\r\n"
    "Content-Type: multipart/alternative; boundary=b2\r\n"
    "\r\n"
    "--b2\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "caf=C3=A9 soft=\r\n"
    "break\r\n"
    "--b2\r\n"
    "Content-Type: text/html\r\n"
    "\r\n"
    "<p>hi</p>\r\n"
    "--b2--\r\n"
    "--b1\r\n"
    "Content-Type: application/pdf; name=\"report.pdf\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "aGVsbG8g\r\n"
    "d29ybGQ=\r\n"
    "--b1\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%20x.exe\r\n"
    "\r\n"
    "MZ\r\n"
    "--b1--  \r\n"
    "epilogue\r\n";

static void test_multipart(void **state)
{
    (void)state;
    struct mime_msg m;
    parse(multi, &m);
    assert_true(m.valid);
    assert_int_equal(m.nparts, 4);
    assert_string_equal(m.parts[0].type, "text/plain");
    assert_false(m.parts[0].attachment);
    assert_int_equal(m.parts[0].cte, MIME_QP);
    assert_int_equal(m.parts[0].depth, 2);
    char *d = decoded(&m, 0, multi);
    assert_string_equal(d, "caf\xc3\xa9 softbreak");
    free(d);
    assert_string_equal(m.parts[1].type, "text/html");
    d = decoded(&m, 1, multi);
    assert_string_equal(d, "<p>hi</p>");
    free(d);
    assert_string_equal(m.parts[2].type, "application/pdf");
    assert_string_equal(m.parts[2].filename, "report.pdf");
    assert_true(m.parts[2].attachment);
    d = decoded(&m, 2, multi);
    assert_string_equal(d, "hello world");
    free(d);
    assert_string_equal(m.parts[3].filename, "na\xc3\xafve x.exe");
    assert_true(m.parts[3].attachment);
    assert_int_equal(m.parts[3].body_len, 2);
    mime_free(&m);
}

static void test_broken(void **state)
{
    (void)state;
    struct mime_msg m;
    /* No boundary parameter: one blob, not valid. */
    parse("Content-Type: multipart/mixed\r\n\r\n--x\r\nhi\r\n", &m);
    assert_false(m.valid);
    assert_int_equal(m.nparts, 1);
    mime_free(&m);
    /* No close delimiter: every part is still seen, not valid. */
    const char *u = "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
                    "Content-Type: text/plain\r\n\r\none\r\n--x\r\n\r\ntwo\r\n";
    parse(u, &m);
    assert_false(m.valid);
    assert_int_equal(m.nparts, 2);
    char *t2 = decoded(&m, 1, u);
    assert_string_equal(t2, "two\r\n");
    free(t2);
    mime_free(&m);
    /* Bad base64 characters are skipped. */
    const char *t = "Content-Transfer-Encoding: base64\r\n\r\naGV!sbG8=\r\n";
    parse(t, &m);
    char *d = decoded(&m, 0, t);
    assert_string_equal(d, "hello");
    free(d);
    mime_free(&m);
    /* Deep nesting stops at MIME_MAX_DEPTH. */
    struct buf b = {0};
    for (int i = 0; i < 40; i++)
        buf_printf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n"
                       "--b%d\r\n", i, i);
    buf_puts(&b, "\r\nleaf\r\n");
    buf_putc(&b, '\0');
    parse(b.data, &m);
    assert_false(m.valid);
    assert_true(m.nparts >= 1);
    mime_free(&m);
    buf_free(&b);
    /* Many parts stop at MIME_MAX_PARTS. */
    buf_puts(&b, "Content-Type: multipart/mixed; boundary=z\r\n\r\n");
    for (int i = 0; i < MIME_MAX_PARTS + 20; i++)
        buf_puts(&b, "--z\r\n\r\nx\r\n");
    buf_puts(&b, "--z--\r\n");
    buf_putc(&b, '\0');
    parse(b.data, &m);
    assert_false(m.valid);
    assert_int_equal(m.nparts, MIME_MAX_PARTS);
    mime_free(&m);
    buf_free(&b);
}

/* Found in review: ways to hide a part or a name from the rules. */
static void test_evasion(void **state)
{
    (void)state;
    struct mime_msg m;
    struct buf b = {0};
    /* A padded Content-Type keeps its boundary. */
    buf_puts(&b, "Content-Type: multipart/mixed; x=\"");
    for (int i = 0; i < 1100; i++)
        buf_putc(&b, 'A');
    buf_puts(&b, "\"; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: "
                 "application/octet-stream; name=\"evil.exe\"\r\n\r\nMZ\r\n"
                 "--b--\r\n");
    buf_putc(&b, '\0');
    parse(b.data, &m);
    assert_int_equal(m.nparts, 1);
    assert_string_equal(m.parts[0].filename, "evil.exe");
    assert_true(m.parts[0].attachment);
    mime_free(&m);
    buf_free(&b);
    /* A ';' and a parameter name inside a quoted string are not one. */
    const char *t = "Content-Type: multipart/mixed; x=\"; boundary=fake\"; "
                    "boundary=\"real\"\r\n\r\n--fake\"\r\n--real\r\n"
                    "Content-Disposition: attachment; foo=\"x; filename=safe.txt\"; "
                    "filename=\"evil.exe\"\r\n\r\nMZ\r\n--real--\r\n";
    parse(t, &m);
    assert_true(m.valid);
    assert_int_equal(m.nparts, 1);
    assert_string_equal(m.parts[0].filename, "evil.exe");
    mime_free(&m);
    /* A long file name is kept whole. */
    buf_puts(&b, "Content-Disposition: attachment; filename=\"");
    for (int i = 0; i < 300; i++)
        buf_putc(&b, 'a');
    buf_puts(&b, ".exe\"\r\n\r\nMZ\r\n");
    buf_putc(&b, '\0');
    parse(b.data, &m);
    assert_int_equal(strlen(m.parts[0].filename), 304);
    mime_free(&m);
    buf_free(&b);
    /* A value over MIME_VALUE_MAX makes the message not valid. */
    buf_puts(&b, "Content-Type: text/plain; x=\"");
    for (int i = 0; i < MIME_VALUE_MAX + 10; i++)
        buf_putc(&b, 'A');
    buf_puts(&b, "\"\r\n\r\nbody\r\n");
    buf_putc(&b, '\0');
    parse(b.data, &m);
    assert_false(m.valid);
    mime_free(&m);
    buf_free(&b);
    /* Trailing blanks after an encoding name do not hide the encoding. */
    t = "Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
        "Content-Transfer-Encoding: base64 \r\n\r\naGVsbG8=\r\n--q--\r\n";
    parse(t, &m);
    assert_int_equal(m.parts[0].cte, MIME_BASE64);
    mime_free(&m);
    /* RFC 2231 continuations. */
    t = "Content-Disposition: attachment; filename*0=\"ev\"; "
        "filename*1*=il%2E; filename*2=exe\r\n\r\nMZ\r\n";
    parse(t, &m);
    assert_string_equal(m.parts[0].filename, "evil.exe");
    mime_free(&m);
    /* A forwarded message's attachments are seen. */
    t = "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
        "Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n"
        "Content-Type: application/zip; name=in.zip\r\n\r\nPK\r\n--o--\r\n";
    parse(t, &m);
    assert_int_equal(m.nparts, 1);
    assert_string_equal(m.parts[0].filename, "in.zip");
    assert_string_equal(m.parts[0].type, "application/zip");
    mime_free(&m);
    /* A NUL in a field does not cut the value short. */
    static const char nul[] = "Subject: hello\0 [SPAM]\r\n\r\nx\r\n";
    mime_parse(nul, sizeof(nul) - 1, &m);
    assert_false(m.valid);
    assert_string_equal(mime_header_find(&m, "Subject")->value, "hello  [SPAM]");
    mime_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_broken),
        cmocka_unit_test(test_evasion),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
