/*
 * test_auth.c - SMTP AUTH pieces: base64 both ways and every rejection,
 * PLAIN and LOGIN responses (table-driven, with embedded-NUL tricks and
 * every bound), the password file (good files and each error with its
 * line), and crypt(3) verification against hashes made here.
 */
#include "policy/auth.h"

#include <crypt.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* Hashes of "secret" made by libxcrypt (low costs where it allows). */
#define H_Y "$y$j9T$qAIUEgpU7MkHiggz6fPM9.$rKlsrWNj9eHqlT5FXwvLhrAvgPVJQiC.Jb5ZosQHvMC"
#define H_2B "$2b$04$M2lgJhmgQ.udujpXi8Fhw.esCiA.8UfrNEBZs7mFN7D85fdlCXxd."
#define H_2Y "$2y$04$kbLTFylBuZNzSZ9rxWDAYexUE3aEvotLxR1gg5tL9OOZVUdgwPLh6"
#define H_2A "$2a$04$XBuKx9h8r41FG2ngLTLEHOYSfHw1C8CAt5fmO9MtZYxuSKDz4271m"
#define H_6                                                                    \
    "$6$rounds=1000$1VIdi/OkvGQXYPme$zcwqOjkQA6pSOJPkuJQhQ3mDEEzloNQ477mrDJ" \
    "eww2kLtV/tcYsOXDw3C3v0hlSZfzYH0p5TMAtvqmtLikYWO1"
#define H_5 "$5$J46q9oYF3iDDeBCg$.AGBykOUP4/cwMmGBGkfjdyhikfodr4vEiREFFywAUA"

/* ---- base64 ---- */

static void test_b64_vectors(void **state)
{
    (void)state;
    static const char *const v[][2] = {
        {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
        {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    for (size_t i = 0; i < ARRAY_LEN(v); i++) {
        char enc[16];
        unsigned char dec[16];
        size_t n = strlen(v[i][0]);
        assert_int_equal(auth_b64_encode((const unsigned char *)v[i][0], n,
                                         enc, sizeof(enc)),
                         strlen(v[i][1]));
        assert_string_equal(enc, v[i][1]);
        assert_int_equal(auth_b64_decode(v[i][1], strlen(v[i][1]), dec,
                                         sizeof(dec)),
                         n);
        assert_memory_equal(dec, v[i][0], n);
    }
}

/* Every length 0..300 of every byte value survives a round trip, and
 * exactly-sized buffers suffice. */
static void test_b64_round_trip(void **state)
{
    (void)state;
    unsigned char in[300], back[300];
    char enc[401];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (unsigned char)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof(in); n++) {
        size_t elen = 4 * ((n + 2) / 3);
        assert_int_equal(auth_b64_encode(in, n, enc, elen + 1), elen);
        assert_int_equal(strlen(enc), elen);
        assert_int_equal(auth_b64_encode(in, n, enc, elen), -1);
        assert_int_equal(auth_b64_decode(enc, elen, back, n), n);
        assert_memory_equal(in, back, n);
        if (n > 0)
            assert_int_equal(auth_b64_decode(enc, elen, back, n - 1), -1);
    }
}

static void test_b64_rejects(void **state)
{
    (void)state;
    static const struct {
        const char *label, *in;
    } bad[] = {
        {"length not a multiple of 4", "Zg="},
        {"unpadded", "Zg"},
        {"unpadded 3", "Zm8"},
        {"three pads", "Z==="},
        {"all pads", "===="},
        {"pad in the middle", "Zg==Zm9v"},
        {"pad then data", "Zm=v"},
        {"too much padding", "Zm9v===="},
        {"newline", "Zm9v\nZm9v"},
        {"space", "Zm 9"},
        {"trailing CR LF", "Zm9vYg==\r\n"},
        {"URL-safe '-'", "Zm-v"},
        {"URL-safe '_'", "Zm_v"},
        {"non-ASCII", "Zm9\xc3"},
        {"non-zero bits under ==", "Zh=="},
        {"non-zero bits under =", "Zm9="},
    };
    unsigned char out[64];
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (auth_b64_decode(bad[i].in, strlen(bad[i].in), out, sizeof(out)) !=
            -1)
            fail_msg("%s: accepted", bad[i].label);
    /* A NUL inside the given length. */
    assert_int_equal(auth_b64_decode("Zm9\0", 4, out, sizeof(out)), -1);
    /* Output bounds. */
    assert_int_equal(auth_b64_decode("Zm9v", 4, out, 2), -1);
    assert_int_equal(auth_b64_decode("Zm9v", 4, out, 3), 3);
    assert_int_equal(auth_b64_decode("", 0, out, 0), 0);
    char enc[8];
    assert_int_equal(auth_b64_encode((const unsigned char *)"", 0, enc, 0),
                     -1);
    assert_int_equal(auth_b64_encode((const unsigned char *)"", 0, enc, 1), 0);
    assert_string_equal(enc, "");
}

/* ---- PLAIN and LOGIN ---- */

/* Base64 of raw[0..n) into a static buffer. */
static const char *b64(const void *raw, size_t n)
{
    static char out[4096];
    assert_true(auth_b64_encode(raw, n, out, sizeof(out)) >= 0);
    return out;
}

#define RAW(s) s, sizeof(s) - 1

struct plain_case {
    const char *label;
    const char *raw;
    size_t len;
    const char *user, *pass; /* expected; NULL if refused */
    const char *why;         /* expected reason (substring) */
};

static const struct plain_case plain_cases[] = {
    {"plain", RAW("\0alice\0secret"), "alice", "secret", NULL},
    {"authzid = authcid", RAW("alice\0alice\0secret"), "alice", "secret",
     NULL},
    {"UTF-8 and spaces in password", RAW("\0alice\0p\xc3\xa4ss w\xc3\xb6rd"),
     "alice", "p\xc3\xa4ss w\xc3\xb6rd", NULL},
    {"address as user", RAW("\0a@example.com\0pw"), "a@example.com", "pw",
     NULL},
    {"other authzid", RAW("bob\0alice\0secret"), NULL, NULL,
     "authorization identity not allowed"},
    {"authzid a prefix of authcid", RAW("ali\0alice\0secret"), NULL, NULL,
     "authorization identity not allowed"},
    {"authcid a prefix of authzid", RAW("alice2\0alice\0secret"), NULL, NULL,
     "authorization identity not allowed"},
    {"empty password", RAW("\0alice\0"), NULL, NULL, "empty password"},
    {"empty user", RAW("\0\0secret"), NULL, NULL, "empty user name"},
    {"all empty", RAW("\0\0"), NULL, NULL, "empty user name"},
    {"no NUL", RAW("alice secret"), NULL, NULL, "missing NUL"},
    {"one NUL", RAW("\0alice"), NULL, NULL, "missing NUL"},
    {"one NUL, user then password", RAW("alice\0secret"), NULL, NULL,
     "missing NUL"},
    {"nothing", RAW(""), NULL, NULL, "missing NUL"},
    {"NUL in password", RAW("\0alice\0sec\0ret"), NULL, NULL,
     "NUL in password"},
    {"trailing NUL", RAW("\0alice\0secret\0"), NULL, NULL, "NUL in password"},
    {"control char in user", RAW("\0ali\x01" "ce\0secret"), NULL, NULL,
     "control character"},
    {"tab in user", RAW("\0ali\tce\0secret"), NULL, NULL,
     "control character"},
    {"CR LF in user", RAW("\0alice\r\nMAIL\0secret"), NULL, NULL,
     "control character"},
    {"DEL in user", RAW("\0alice\x7f\0secret"), NULL, NULL,
     "control character"},
};

static void check_plain(const char *label, const char *in, const char *user,
                        const char *pass, const char *why_want)
{
    char u[AUTH_FIELD_MAX + 1] = "x", p[AUTH_FIELD_MAX + 1] = "x";
    const char *why = NULL;
    bool ok = auth_plain_decode(in, u, sizeof(u), p, sizeof(p), &why);
    if (ok != (user != NULL))
        fail_msg("%s: decoded %d (%s)", label, ok, why ? why : "");
    if (ok) {
        if (strcmp(u, user) != 0 || strcmp(p, pass) != 0)
            fail_msg("%s: got \"%s\" \"%s\"", label, u, p);
        return;
    }
    if (why == NULL || strstr(why, why_want) == NULL)
        fail_msg("%s: reason \"%s\", expected \"%s\"", label,
                 why ? why : "(none)", why_want);
    /* An authzid refusal keeps the user name (for the log). */
    bool authzid = strcmp(why, AUTH_WHY_AUTHZID) == 0;
    if ((u[0] != '\0' && !authzid) || p[0] != '\0')
        fail_msg("%s: outputs not emptied on failure", label);
    if (authzid && strcmp(u, "alice") != 0)
        fail_msg("%s: user name \"%s\" not kept", label, u);
}

static void test_plain_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(plain_cases); i++) {
        const struct plain_case *c = &plain_cases[i];
        check_plain(c->label, b64(c->raw, c->len), c->user, c->pass, c->why);
    }
    check_plain("not base64", "AGFsaWNlAHNlY3JldA", NULL, NULL,
                "invalid base64");
    check_plain("base64 with space", "AGFsaWNl AHNlY3JldA==", NULL, NULL,
                "invalid base64");
    check_plain("cancel is the caller's", "*", NULL, NULL, "invalid base64");
    check_plain("empty response is the caller's", "=", NULL, NULL,
                "invalid base64");
}

/* "authzid\0user\0pass" with fields of the given lengths. */
static const char *plain_sized(size_t zlen, size_t ulen, size_t plen)
{
    static char raw[2048];
    size_t n = 0;
    assert_true(zlen + ulen + plen + 2 <= sizeof(raw));
    memset(raw + n, 'u', zlen); /* a non-empty authzid must equal user */
    n += zlen;
    raw[n++] = '\0';
    memset(raw + n, 'u', ulen);
    n += ulen;
    raw[n++] = '\0';
    memset(raw + n, 'p', plen);
    n += plen;
    return b64(raw, n);
}

static void test_plain_bounds(void **state)
{
    (void)state;
    char u[1024], p[1024];
    const char *why;
    const size_t M = AUTH_FIELD_MAX;
    assert_true(auth_plain_decode(plain_sized(M, M, M), u, sizeof(u), p,
                                  sizeof(p), &why));
    assert_int_equal(strlen(u), M);
    assert_int_equal(strlen(p), M);
    static const struct {
        size_t z, u, p;
        const char *why;
    } over[] = {
        {0, AUTH_FIELD_MAX + 1, 1, "user name too long"},
        {0, 1, AUTH_FIELD_MAX + 1, "password too long"},
        {AUTH_FIELD_MAX + 1, AUTH_FIELD_MAX + 1, 1, "identity too long"},
        {AUTH_FIELD_MAX + 1, 1, 1, "identity too long"},
        {AUTH_FIELD_MAX, AUTH_FIELD_MAX, AUTH_FIELD_MAX + 1, "too long"},
        {0, 1, 3 * AUTH_FIELD_MAX, "response too long"},
        {0, 1, 1500, "response too long"},
    };
    for (size_t i = 0; i < ARRAY_LEN(over); i++) {
        why = NULL;
        assert_false(auth_plain_decode(plain_sized(over[i].z, over[i].u,
                                                   over[i].p),
                                       u, sizeof(u), p, sizeof(p), &why));
        assert_non_null(why);
        if (strstr(why, over[i].why) == NULL)
            fail_msg("case %zu: \"%s\"", i, why);
    }
    /* NUL-free but over-long: decoded and encoded limits. */
    char raw[1000];
    memset(raw, 'a', sizeof(raw));
    assert_false(auth_plain_decode(b64(raw, 771), u, sizeof(u), p, sizeof(p),
                                   &why));
    assert_string_equal(why, "response too long");
    assert_false(auth_plain_decode(b64(raw, sizeof(raw)), u, sizeof(u), p,
                                   sizeof(p), &why));
    assert_string_equal(why, "response too long");
    /* The caller's buffers bound the fields too. */
    const char *in = b64(RAW("\0alice\0secret"));
    assert_false(auth_plain_decode(in, u, 5, p, sizeof(p), &why));
    assert_string_equal(why, "user name too long");
    assert_true(auth_plain_decode(in, u, 6, p, 7, &why));
    assert_false(auth_plain_decode(in, u, 6, p, 6, &why));
    assert_string_equal(why, "password too long");
    assert_false(auth_plain_decode(in, u, 0, p, 0, &why));
    /* why is optional. */
    assert_true(auth_plain_decode("AGFsaWNlAHNlY3JldA==", u, sizeof(u), p,
                                  sizeof(p), NULL));
    assert_false(auth_plain_decode("AGFsaWNl", u, sizeof(u), p, sizeof(p),
                                   NULL));
}

static void test_login(void **state)
{
    (void)state;
    char out[AUTH_FIELD_MAX + 1];
    const char *why = NULL;
    assert_true(auth_login_decode("YWxpY2U=", out, sizeof(out), &why));
    assert_string_equal(out, "alice");
    assert_true(auth_login_decode(b64(RAW("p\xc3\xa4ss word\t!")), out,
                                  sizeof(out), &why));
    assert_string_equal(out, "p\xc3\xa4ss word\t!");
    static const struct {
        const char *label, *in, *why;
    } bad[] = {
        {"empty", "", "empty response"},
        {"unpadded", "YWxpY2U", "invalid base64"},
        {"junk", "YWx!Y2U=", "invalid base64"},
        {"cancel", "*", "invalid base64"},
        {"NUL", "YWwAaWNl", "NUL in response"},
        {"only NUL", "AA==", "NUL in response"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        out[0] = 'x';
        why = NULL;
        if (auth_login_decode(bad[i].in, out, sizeof(out), &why))
            fail_msg("%s: accepted", bad[i].label);
        if (why == NULL || strcmp(why, bad[i].why) != 0)
            fail_msg("%s: \"%s\"", bad[i].label, why ? why : "(none)");
        assert_int_equal(out[0], '\0');
    }
    char raw[600];
    memset(raw, 'a', sizeof(raw));
    assert_true(auth_login_decode(b64(raw, AUTH_FIELD_MAX), out, sizeof(out),
                                  &why));
    assert_int_equal(strlen(out), AUTH_FIELD_MAX);
    assert_false(auth_login_decode(b64(raw, AUTH_FIELD_MAX + 1), out,
                                   sizeof(out), &why));
    assert_string_equal(why, "response too long");
    assert_false(auth_login_decode(b64(raw, sizeof(raw)), out, sizeof(out),
                                   &why));
    assert_string_equal(why, "response too long");
    assert_false(auth_login_decode("YWxpY2U=", out, 5, &why));
    assert_string_equal(why, "response too long");
    assert_true(auth_login_decode("YWxpY2U=", out, 6, &why));
}

/* ---- the password file ---- */

static char tmpdir[64];

static int make_tmpdir(void **state)
{
    (void)state;
    str_copy(tmpdir, sizeof(tmpdir), "/tmp/moat-test-auth.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    str_printf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Write content[0..len) to a file in tmpdir; return its path. */
static const char *write_file(const char *name, const char *content,
                              size_t len)
{
    static char path[128];
    str_printf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_db_good(void **state)
{
    (void)state;
    static const char text[] =
        "# moat users\n"
        "\n"
        "alice:" H_Y "\n"
        "   \t\n"
        "  # indented comment\n"
        "Alice:" H_2B "\r\n"
        "bob@example.com:" H_2Y "  \n"
        "\tcarol:" H_2A "\n"
        "dave:" H_6 "\n"
        "x!~:" H_5; /* no final newline */
    char err[256] = "";
    const char *path = write_file("good", text, sizeof(text) - 1);
    struct auth_db *db = auth_db_load(path, err, sizeof(err));
    if (db == NULL)
        fail_msg("%s", err);
    assert_int_equal(auth_db_count(db), 6);
    assert_string_equal(auth_db_hash(db, "alice"), H_Y);
    assert_string_equal(auth_db_hash(db, "Alice"), H_2B);
    assert_string_equal(auth_db_hash(db, "bob@example.com"), H_2Y);
    assert_string_equal(auth_db_hash(db, "carol"), H_2A);
    assert_string_equal(auth_db_hash(db, "dave"), H_6);
    assert_string_equal(auth_db_hash(db, "x!~"), H_5);
    assert_null(auth_db_hash(db, "ALICE"));
    assert_null(auth_db_hash(db, "alic"));
    assert_null(auth_db_hash(db, "alice "));
    assert_null(auth_db_hash(db, ""));
    assert_null(auth_db_hash(db, NULL));
    assert_null(auth_db_hash(db, "# moat users"));
    auth_db_free(db);

    /* Empty and comment-only files hold no users. */
    path = write_file("empty", "", 0);
    db = auth_db_load(path, err, sizeof(err));
    assert_non_null(db);
    assert_int_equal(auth_db_count(db), 0);
    assert_null(auth_db_hash(db, "alice"));
    auth_db_free(db);
    path = write_file("comments", RAW("# nobody\n\n#\n"));
    db = auth_db_load(path, err, sizeof(err));
    assert_non_null(db);
    assert_int_equal(auth_db_count(db), 0);
    auth_db_free(db);
    auth_db_free(NULL);
}

struct db_error_case {
    const char *label;
    const char *text;
    unsigned line; /* 0: "PATH: reason" */
    const char *why;
};

static const struct db_error_case db_errors[] = {
    {"no colon", "# users\nalice " H_Y "\n", 2, "expected user:hash"},
    {"empty user", "\n\n:" H_Y "\n", 3, "empty user name"},
    {"space in user", "al ice:" H_Y "\n", 1, "space, control or non-ASCII"},
    {"non-ASCII user", "al\xc3\xa9:" H_Y "\n", 1, "non-ASCII"},
    {"control in user", "al\x01ice:" H_Y "\n", 1, "control"},
    {"empty hash", "bob:" H_Y "\nalice:\n", 2, "empty password hash"},
    {"empty hash, blanks", "alice:   \n", 1, "empty password hash"},
    {"locked *", "alice:*\n", 1, "locked or disabled"},
    {"locked !", "alice:!" H_6 "\n", 1, "locked or disabled"},
    {"DES", "alice:abJnggxhB/yWI\n", 1, "DES crypt hash is too weak"},
    {"BSDi DES", "alice:_J9..CCCCXBrJUJV154M\n", 1, "DES"},
    {"MD5", "alice:$1$oVDnOxcR$zYHfDnIWbo.Y6wJmR35fl.\n", 1, "MD5"},
    {"scrypt", "alice:$7$CU..../....mSCHe1ouC3G4xK.vdqBvX0$8KxOQJP5DZzlmY3W"
               "SJU5Fv6iWu9kj1Z/ZrPBlzZ2tj7\n",
     1, "unsupported password hash"},
    {"sha1crypt", "alice:$sha1$201375$7DAepZktWkZa3YPJItix$XQGlOL90skFXXh3"
                  "29QjjG6T53n5H\n",
     1, "unsupported"},
    {"plain text", "alice:secret\n", 1, "unsupported"},
    {"truncated yescrypt", "alice:$y$j9T$qAIUEgpU7MkHiggz6fPM9.\n", 1,
     "malformed"},
    {"short yescrypt", "alice:" H_Y "\nbob:" H_Y "x\n", 2, "malformed"},
    {"bcrypt cost 3", "alice:$2b$03$M2lgJhmgQ.udujpXi8Fhw.esCiA.8UfrNEBZs7m"
                      "FN7D85fdlCXxd.\n",
     1, "malformed"},
    {"bcrypt short", "alice:$2b$04$M2lgJhmgQ.udujpXi8Fhw.esCiA.8U\n", 1,
     "malformed"},
    {"sha512 no salt end", "alice:$6$saltsalt\n", 1, "malformed"},
    {"sha512 short", "alice:$6$saltsalt$tooshort\n", 1, "malformed"},
    {"sha512 bad rounds", "alice:$6$rounds=x$1VIdi/OkvGQXYPme$zcwqOjkQA6pSOJ"
                          "PkuJQhQ3mDEEzloNQ477mrDJeww2kLtV/tcYsOXDw3C3v0hlS"
                          "ZfzYH0p5TMAtvqmtLikYWO1\n",
     1, "malformed"},
    {"sha256 as sha512", "alice:$6$J46q9oYF3iDDeBCg$.AGBykOUP4/cwMmGBGkfjdy"
                         "hikfodr4vEiREFFywAUA\n",
     1, "malformed"},
    {"space in hash", "alice:$2b$04$M2lgJhmgQ.udujpXi8 hw.esCiA.8UfrNEBZs7m"
                      "FN7D85fdlCXxd.\n",
     1, "malformed"},
    {"duplicate", "# x\nalice:" H_Y "\nbob:" H_6 "\nalice:" H_2B "\n", 4,
     "duplicate user alice (first on line 2)"},
    {"earliest duplicate named", "zed:" H_Y "\nann:" H_Y "\nzed:" H_Y
                                 "\nann:" H_Y "\n",
     3, "duplicate user zed (first on line 1)"},
};

/* Load text; expect refusal with "PATH:LINE: why" (or "PATH: why"). */
static void expect_refused(const char *label, const char *text, size_t len,
                           unsigned line, const char *why)
{
    char err[512] = "", want[256];
    const char *path = write_file("bad", text, len);
    if (line)
        str_printf(want, sizeof(want), "%s:%u: ", path, line);
    else
        str_printf(want, sizeof(want), "%s: ", path);
    struct auth_db *db = auth_db_load(path, err, sizeof(err));
    if (db != NULL)
        fail_msg("%s: accepted", label);
    if (strncmp(err, want, strlen(want)) != 0 || strstr(err, why) == NULL)
        fail_msg("%s: \"%s\", expected \"%s...%s\"", label, err, want, why);
}

static void test_db_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(db_errors); i++) {
        const struct db_error_case *c = &db_errors[i];
        expect_refused(c->label, c->text, strlen(c->text), c->line, c->why);
    }
    expect_refused("NUL byte", RAW("alice:" H_Y "\nb\0b:" H_Y "\n"), 2,
                   "NUL byte");

    /* A 257-byte user name; 256 is fine. */
    char text[AUTH_LINE_MAX + 200];
    memset(text, 'u', AUTH_FIELD_MAX);
    str_copy(text + AUTH_FIELD_MAX, sizeof(text) - AUTH_FIELD_MAX,
             ":" H_Y "\n");
    char err[512];
    struct auth_db *db =
        auth_db_load(write_file("ok", text, strlen(text)), err, sizeof(err));
    assert_non_null(db);
    auth_db_free(db);
    memset(text, 'u', AUTH_FIELD_MAX + 1);
    str_copy(text + AUTH_FIELD_MAX + 1, sizeof(text) - AUTH_FIELD_MAX - 1,
             ":" H_Y "\n");
    expect_refused("long user", text, strlen(text), 1, "longer than 256");

    /* A line over 4096 bytes (a comment, even). */
    text[0] = '#';
    memset(text + 1, 'c', AUTH_LINE_MAX);
    text[AUTH_LINE_MAX + 1] = '\n';
    expect_refused("long line", text, AUTH_LINE_MAX + 2, 1,
                   "longer than 4096");
    expect_refused("long last line", text, AUTH_LINE_MAX + 1, 1,
                   "longer than 4096");
    assert_non_null(db = auth_db_load(write_file("ok", text, AUTH_LINE_MAX),
                                      err, sizeof(err)));
    auth_db_free(db);

    /* The file itself. */
    char path[128];
    str_printf(path, sizeof(path), "%s/missing", tmpdir);
    assert_null(auth_db_load(path, err, sizeof(err)));
    assert_true(strncmp(err, path, strlen(path)) == 0);
    assert_non_null(strstr(err, ": cannot open: "));
    assert_null(auth_db_load(tmpdir, err, sizeof(err)));
    assert_non_null(strstr(err, "not a regular file"));
    str_printf(path, sizeof(path), "%s/huge", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, AUTH_FILE_MAX + 1), 0);
    close(fd);
    assert_null(auth_db_load(path, err, sizeof(err)));
    assert_non_null(strstr(err, "larger than 16 MiB"));
    /* A tiny error buffer truncates but never overflows. */
    char tiny[8];
    assert_null(auth_db_load(path, tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    unlink(path);
}

/* AUTH_USERS_MAX users load; one more is refused on its line. */
static void test_db_user_limit(void **state)
{
    (void)state;
    char path[128], err[256];
    str_printf(path, sizeof(path), "%s/many", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (unsigned i = 0; i < AUTH_USERS_MAX; i++)
        fprintf(f, "u%u:%s\n", i, H_2B);
    assert_int_equal(fclose(f), 0);
    struct auth_db *db = auth_db_load(path, err, sizeof(err));
    if (db == NULL)
        fail_msg("%s", err);
    assert_int_equal(auth_db_count(db), AUTH_USERS_MAX);
    assert_string_equal(auth_db_hash(db, "u0"), H_2B);
    assert_string_equal(auth_db_hash(db, "u99999"), H_2B);
    assert_null(auth_db_hash(db, "u100000"));
    auth_db_free(db);
    f = fopen(path, "a");
    assert_non_null(f);
    fprintf(f, "# a comment line\nu%u:%s\n", AUTH_USERS_MAX, H_2B);
    assert_int_equal(fclose(f), 0);
    assert_null(auth_db_load(path, err, sizeof(err)));
    char want[160];
    str_printf(want, sizeof(want), "%s:%u: more than 100000 users", path,
               AUTH_USERS_MAX + 2);
    assert_string_equal(err, want);
    unlink(path);
}

/* ---- verification ---- */

static void make_hash(const char *prefix, unsigned long count,
                      const char *password, char *out, size_t outlen)
{
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    assert_non_null(cd);
    assert_non_null(crypt_gensalt_rn(prefix, count, NULL, 0, setting,
                                     (int)sizeof(setting)));
    const char *h = crypt_rn(password, setting, cd, (int)sizeof(*cd));
    assert_non_null(h);
    assert_true(str_copy(out, outlen, h));
    free(cd);
}

static void test_check_password(void **state)
{
    (void)state;
    static const struct {
        const char *prefix;
        unsigned long count;
    } kinds[] = {{"$y$", 0}, {"$2b$", 4}, {"$6$", 1000}, {"$5$", 1000}};
    char hashes[ARRAY_LEN(kinds)][CRYPT_OUTPUT_SIZE];
    char text[2048] = "", line[512];
    for (size_t i = 0; i < ARRAY_LEN(kinds); i++) {
        char *h = hashes[i];
        make_hash(kinds[i].prefix, kinds[i].count, "correct horse", h,
                  CRYPT_OUTPUT_SIZE);
        assert_true(auth_check_password(h, "correct horse"));
        assert_false(auth_check_password(h, "correct horsf"));
        assert_false(auth_check_password(h, "correct hors"));
        assert_false(auth_check_password(h, ""));
        assert_false(auth_check_password(NULL, "correct horse"));
        str_printf(line, sizeof(line), "user%zu:%s\n", i, h);
        str_copy(text + strlen(text), sizeof(text) - strlen(text), line);
    }
    /* What libxcrypt makes, the loader accepts. */
    char err[256];
    struct auth_db *db =
        auth_db_load(write_file("made", text, strlen(text)), err, sizeof(err));
    if (db == NULL)
        fail_msg("%s", err);
    assert_true(auth_check_password(auth_db_hash(db, "user1"),
                                    "correct horse"));
    /* The dummy now comes from this file: still never a match. */
    assert_false(auth_check_password(auth_db_hash(db, "nobody"),
                                     "correct horse"));
    auth_db_free(db);
    assert_false(auth_check_password(NULL, "correct horse"));
    assert_false(auth_check_password(NULL, NULL));
    assert_false(auth_check_password(H_Y, NULL));
    /* The fixed hashes above are of "secret". */
    assert_true(auth_check_password(H_Y, "secret"));
    assert_true(auth_check_password(H_2A, "secret"));
    assert_true(auth_check_password(H_6, "secret"));
    assert_false(auth_check_password(H_6, "Secret"));
    /* Malformed hashes never match. */
    assert_false(auth_check_password("", ""));
    assert_false(auth_check_password("*", "secret"));
    assert_false(auth_check_password("$y$j9T$abc$def", "secret"));
    assert_false(auth_check_password("$2b$04$short", "secret"));
    /* A password over the field limit is refused even if it matches. */
    char longpw[AUTH_FIELD_MAX + 2];
    memset(longpw, 'p', sizeof(longpw) - 1);
    longpw[sizeof(longpw) - 1] = '\0';
    char h[CRYPT_OUTPUT_SIZE];
    make_hash("$6$", 1000, longpw, h, sizeof(h));
    assert_false(auth_check_password(h, longpw));
    longpw[AUTH_FIELD_MAX] = '\0';
    make_hash("$6$", 1000, longpw, h, sizeof(h));
    assert_true(auth_check_password(h, longpw));
}

/* Several threads verify at once (the worker pool's use). */
static void *check_thread(void *arg)
{
    (void)arg;
    bool ok = true;
    for (int i = 0; i < 20; i++) {
        ok &= auth_check_password(H_2B, "secret");
        ok &= !auth_check_password(H_2Y, "wrong");
        ok &= !auth_check_password(NULL, "secret");
    }
    return ok ? arg : NULL;
}

static void test_check_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    static int token;
    for (size_t i = 0; i < ARRAY_LEN(t); i++)
        assert_int_equal(pthread_create(&t[i], NULL, check_thread, &token),
                         0);
    for (size_t i = 0; i < ARRAY_LEN(t); i++) {
        void *ret = NULL;
        pthread_join(t[i], &ret);
        assert_ptr_equal(ret, &token);
    }
}

static double elapsed_ms(const char *hash, const char *pw)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_false(auth_check_password(hash, pw));
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a.tv_sec) * 1e3 +
           (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

/* An unknown user costs what the file's common kind costs: with every
 * user on bcrypt cost 12 (several times yescrypt's default), the dummy
 * must be as slow. A loose bound: this is timing on a shared machine. */
static void test_dummy_follows_file(void **state)
{
    (void)state;
    char h[CRYPT_OUTPUT_SIZE], text[1024], err[256];
    make_hash("$2b$", 12, "pw", h, sizeof(h));
    str_printf(text, sizeof(text), "a:%s\nb:%s\nc:" H_Y "\n", h, h);
    struct auth_db *db =
        auth_db_load(write_file("dummy", text, strlen(text)), err, sizeof(err));
    assert_non_null(db);
    double known = elapsed_ms(auth_db_hash(db, "a"), "wrong");
    double unknown = elapsed_ms(auth_db_hash(db, "zz"), "wrong");
    auth_db_free(db);
    if (unknown < known / 2)
        fail_msg("unknown user %.1f ms, known %.1f ms", unknown, known);
    /* Even the matching password of the dummy's owner fails. */
    assert_false(auth_check_password(NULL, "pw"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_vectors),
        cmocka_unit_test(test_b64_round_trip),
        cmocka_unit_test(test_b64_rejects),
        cmocka_unit_test(test_plain_table),
        cmocka_unit_test(test_plain_bounds),
        cmocka_unit_test(test_login),
        cmocka_unit_test(test_db_good),
        cmocka_unit_test(test_db_errors),
        cmocka_unit_test(test_db_user_limit),
        cmocka_unit_test(test_check_password),
        cmocka_unit_test(test_check_threads),
        cmocka_unit_test(test_dummy_follows_file),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
