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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_broken),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
