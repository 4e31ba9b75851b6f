/*
 * auth.c - SMTP AUTH pieces (see auth.h): base64, PLAIN and LOGIN
 * responses, the password file and crypt(3) verification.
 *
 * Decoded responses hold passwords: every scratch buffer that saw one is
 * wiped with explicit_bzero before it goes out of scope, and so is the
 * crypt_data. The password file is read whole (bounded) and its fields
 * are cut in place; lookups are a binary search over the sorted users.
 */
#include "policy/auth.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- base64 ---- */

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

ssize_t auth_b64_decode(const char *in, size_t inlen, unsigned char *out,
                        size_t outlen)
{
    if (inlen % 4 != 0)
        return -1;
    size_t pad = 0;
    if (inlen > 0 && in[inlen - 1] == '=')
        pad = in[inlen - 2] == '=' ? 2 : 1;
    size_t n = inlen / 4 * 3 - pad;
    if (n > outlen || n > (size_t)SSIZE_MAX)
        return -1;
    size_t nchars = inlen - pad, o = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < nchars; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return -1; /* outside the alphabet, or '=' before the end */
        acc = acc << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            out[o++] = (unsigned char)(acc >> 16);
            out[o++] = (unsigned char)(acc >> 8);
            out[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    /* A padded last group: its unused low bits must be zero. */
    if (pad == 2) {
        if (acc & 0xf)
            return -1;
        out[o++] = (unsigned char)(acc >> 4);
    } else if (pad == 1) {
        if (acc & 0x3)
            return -1;
        out[o++] = (unsigned char)(acc >> 10);
        out[o++] = (unsigned char)(acc >> 2);
    }
    return (ssize_t)o;
}

ssize_t auth_b64_encode(const unsigned char *in, size_t inlen, char *out,
                        size_t outlen)
{
    size_t groups = inlen / 3 + (inlen % 3 != 0);
    if (groups > ((size_t)SSIZE_MAX - 1) / 4 || 4 * groups + 1 > outlen)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < inlen; i += 3) {
        size_t left = inlen - i;
        uint32_t v = (uint32_t)in[i] << 16;
        if (left > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (left > 2)
            v |= in[i + 2];
        out[o++] = b64_chars[v >> 18];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = left > 1 ? b64_chars[(v >> 6) & 63] : '=';
        out[o++] = left > 2 ? b64_chars[v & 63] : '=';
    }
    out[o] = '\0';
    return (ssize_t)o;
}

/* ---- PLAIN and LOGIN ---- */

/* Decoded and encoded bounds of the two responses. */
#define PLAIN_MAX (3 * AUTH_FIELD_MAX + 2)
#define PLAIN_B64_MAX (4 * ((PLAIN_MAX + 2) / 3))
#define LOGIN_B64_MAX (4 * ((AUTH_FIELD_MAX + 2) / 3))

static bool refuse(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return false;
}

/* Copy field s[0..n) NUL-terminated into out, if it fits. */
static bool field_copy(char *out, size_t outlen, const unsigned char *s,
                       size_t n)
{
    if (n >= outlen)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

static bool has_control(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

/* Split a decoded PLAIN response and check its fields. */
static bool plain_fields(const unsigned char *buf, size_t n, char *user,
                         size_t userlen, char *pass, size_t passlen,
                         const char **why)
{
    const unsigned char *nul1 = memchr(buf, '\0', n);
    if (nul1 == NULL)
        return refuse(why, "missing NUL separator");
    size_t zlen = (size_t)(nul1 - buf);
    const unsigned char *cid = nul1 + 1;
    const unsigned char *nul2 = memchr(cid, '\0', n - zlen - 1);
    if (nul2 == NULL)
        return refuse(why, "missing NUL separator");
    size_t clen = (size_t)(nul2 - cid);
    const unsigned char *pw = nul2 + 1;
    size_t plen = n - zlen - clen - 2;
    if (memchr(pw, '\0', plen))
        return refuse(why, "NUL in password");
    if (zlen > AUTH_FIELD_MAX)
        return refuse(why, "authorization identity too long");
    if (clen == 0)
        return refuse(why, "empty user name");
    if (clen > AUTH_FIELD_MAX || clen >= userlen)
        return refuse(why, "user name too long");
    if (has_control(cid, clen))
        return refuse(why, "control character in user name");
    if (plen == 0)
        return refuse(why, "empty password");
    if (plen > AUTH_FIELD_MAX || plen >= passlen)
        return refuse(why, "password too long");
    if (!field_copy(user, userlen, cid, clen) ||
        !field_copy(pass, passlen, pw, plen))
        return false;
    /* The user name is filled in even here, for the log. */
    if (zlen > 0 && (zlen != clen || memcmp(buf, cid, clen) != 0))
        return refuse(why, AUTH_WHY_AUTHZID);
    return true;
}

bool auth_plain_decode(const char *b64, char *user, size_t userlen, char *pass,
                       size_t passlen, const char **why)
{
    unsigned char buf[PLAIN_B64_MAX / 4 * 3];
    if (userlen)
        user[0] = '\0';
    if (passlen)
        pass[0] = '\0';
    size_t len = strnlen(b64, PLAIN_B64_MAX + 1);
    if (len > PLAIN_B64_MAX)
        return refuse(why, "response too long");
    ssize_t n = auth_b64_decode(b64, len, buf, sizeof(buf));
    if (n < 0)
        return refuse(why, "invalid base64");
    bool ok = (size_t)n <= PLAIN_MAX ? plain_fields(buf, (size_t)n, user,
                                                    userlen, pass, passlen, why)
                                     : refuse(why, "response too long");
    explicit_bzero(buf, sizeof(buf));
    if (!ok) {
        /* The user name stays for an authzid refusal (for the log). */
        if (userlen && !(why && *why && strcmp(*why, AUTH_WHY_AUTHZID) == 0))
            user[0] = '\0';
        if (passlen)
            explicit_bzero(pass, passlen);
    }
    return ok;
}

bool auth_login_decode(const char *b64, char *out, size_t outlen,
                       const char **why)
{
    unsigned char buf[LOGIN_B64_MAX / 4 * 3];
    if (outlen)
        out[0] = '\0';
    size_t len = strnlen(b64, LOGIN_B64_MAX + 1);
    if (len > LOGIN_B64_MAX)
        return refuse(why, "response too long");
    ssize_t n = auth_b64_decode(b64, len, buf, sizeof(buf));
    bool ok = false;
    if (n < 0)
        refuse(why, "invalid base64");
    else if (n == 0)
        refuse(why, "empty response");
    else if (memchr(buf, '\0', (size_t)n))
        refuse(why, "NUL in response");
    else if ((size_t)n > AUTH_FIELD_MAX ||
             !field_copy(out, outlen, buf, (size_t)n))
        refuse(why, "response too long");
    else
        ok = true;
    explicit_bzero(buf, sizeof(buf));
    return ok;
}

/* ---- hash forms ---- */

/* Length of the run of crypt's base64 alphabet at s. */
static size_t crypt_b64_span(const char *s)
{
    return strspn(s, "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "abcdefghijklmnopqrstuvwxyz");
}

/* "$2b$NN$" + 53 characters. */
static bool bcrypt_form(const char *h)
{
    return strlen(h) == 60 && h[4] >= '0' && h[4] <= '3' && h[5] >= '0' &&
           h[5] <= '9' && (h[4] - '0') * 10 + (h[5] - '0') >= 4 &&
           (h[4] - '0') * 10 + (h[5] - '0') <= 31 && h[6] == '$' &&
           crypt_b64_span(h + 7) == 53;
}

/* "$6$[rounds=N$]salt$" + hashlen characters (salt 1..16). */
static bool shacrypt_form(const char *h, size_t hashlen)
{
    const char *s = h + 3;
    if (strncmp(s, "rounds=", 7) == 0) {
        size_t d = strspn(s + 7, "0123456789");
        if (d == 0 || d > 9 || s[7 + d] != '$')
            return false;
        s += 7 + d + 1;
    }
    size_t salt = crypt_b64_span(s);
    if (salt == 0 || salt > 16 || s[salt] != '$')
        return false;
    s += salt + 1;
    return crypt_b64_span(s) == hashlen && s[hashlen] == '\0';
}

/* "$y$params$salt$" + 43 characters. */
static bool yescrypt_form(const char *h)
{
    const char *s = h + 3;
    for (int part = 0; part < 2; part++) {
        size_t n = crypt_b64_span(s);
        if (n == 0 || s[n] != '$')
            return false;
        s += n + 1;
    }
    return crypt_b64_span(s) == 43 && s[43] == '\0';
}

/* NULL if hash is an accepted, well-formed crypt hash; else why not. */
static const char *hash_problem(const char *h)
{
    size_t n = strlen(h);
    if (n == 0)
        return "empty password hash (accounts without a password are not "
               "allowed)";
    if (h[0] == '*' || h[0] == '!')
        return "locked or disabled account ('*' or '!' hash)";
    if (strncmp(h, "$1$", 3) == 0)
        return "MD5-crypt ($1$) hash is too weak";
    if (h[0] == '_' || (h[0] != '$' && n == 13))
        return "DES crypt hash is too weak";
    if (n >= CRYPT_OUTPUT_SIZE)
        return "password hash too long";
    bool ok;
    if (strncmp(h, "$y$", 3) == 0)
        ok = yescrypt_form(h);
    else if (strncmp(h, "$2b$", 4) == 0 || strncmp(h, "$2y$", 4) == 0 ||
             strncmp(h, "$2a$", 4) == 0)
        ok = bcrypt_form(h);
    else if (strncmp(h, "$6$", 3) == 0)
        ok = shacrypt_form(h, 86);
    else if (strncmp(h, "$5$", 3) == 0)
        ok = shacrypt_form(h, 43);
    else
        return "unsupported password hash (use yescrypt $y$, bcrypt $2b$, "
               "sha512-crypt $6$ or sha256-crypt $5$)";
    if (!ok || crypt_checksalt(h) == CRYPT_SALT_INVALID)
        return "malformed password hash";
    return NULL;
}

/* The scheme and cost part of an accepted hash ("$y$j9T$", "$2b$12$",
 * "$6$rounds=5000$", "$6$"): hashes with the same kind cost the same. */
static size_t hash_kind_len(const char *h)
{
    if (h[1] == '2')
        return 7;
    if (h[1] == 'y')
        return 3 + strcspn(h + 3, "$") + 1;
    if (strncmp(h + 3, "rounds=", 7) == 0)
        return 3 + strcspn(h + 3, "$") + 1;
    return 3;
}

/* ---- the dummy hash for unknown users ---- */

/* Until a password file says otherwise: yescrypt at libxcrypt's default
 * cost, of a random password nobody knows. */
static const char default_dummy[] =
    "$y$j9T$x/ked8OxlQD33Xn5ZzbgA0$0bZ8C2.AHy8CM9UWqGzvN.s7L7QlJZ8mVnVG4tav9a.";

static pthread_mutex_t dummy_mu = PTHREAD_MUTEX_INITIALIZER;
static char dummy[CRYPT_OUTPUT_SIZE] = "";

static void dummy_set(const char *hash)
{
    pthread_mutex_lock(&dummy_mu);
    str_copy(dummy, sizeof(dummy), hash);
    pthread_mutex_unlock(&dummy_mu);
}

static void dummy_get(char *out, size_t outlen)
{
    pthread_mutex_lock(&dummy_mu);
    str_copy(out, outlen, dummy[0] ? dummy : default_dummy);
    pthread_mutex_unlock(&dummy_mu);
}

/* ---- the password file ---- */

struct auth_entry {
    const char *user;
    const char *hash;
    unsigned line;
};

struct auth_db {
    char *text; /* the file, its fields cut in place */
    size_t textlen;
    struct auth_entry *e;
    size_t n, cap;
};

/* One kind of hash and how many users have it. */
struct kind_count {
    const char *hash; /* the first hash of this kind */
    size_t len, count;
};

#define KINDS_MAX 32 /* kinds tallied; rarer kinds beyond are not counted */

struct loader {
    const char *path;
    char *err;
    size_t errlen;
    struct auth_db *db;
    struct kind_count kinds[KINDS_MAX];
    size_t nkinds;
};

static bool load_fail(struct loader *ld, unsigned line, const char *why)
{
    if (line)
        str_printf(ld->err, ld->errlen, "%s:%u: %s", ld->path, line, why);
    else
        str_printf(ld->err, ld->errlen, "%s: %s", ld->path, why);
    return false;
}

/* Read the whole file into db->text, NUL-terminated. */
static bool read_text(struct loader *ld)
{
    int fd = open(ld->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    char why[160] = "changed while being read";
    if (fd < 0 || fstat(fd, &st) != 0) {
        str_printf(why, sizeof(why), "cannot open: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return load_fail(ld, 0, why);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return load_fail(ld, 0, "not a regular file");
    }
    if ((uint64_t)st.st_size > AUTH_FILE_MAX) {
        close(fd);
        return load_fail(ld, 0, "larger than 16 MiB");
    }
    /* Read at most one byte past the limit: the file may have grown. */
    struct auth_db *db = ld->db;
    db->text = xmalloc((size_t)st.st_size + 2);
    size_t want = (size_t)st.st_size + 1;
    while (db->textlen < want) {
        ssize_t r = read(fd, db->text + db->textlen, want - db->textlen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r < 0)
                str_printf(why, sizeof(why), "read: %s", strerror(errno));
            break;
        }
        db->textlen += (size_t)r;
    }
    close(fd);
    db->text[db->textlen] = '\0';
    if (db->textlen == want)
        return load_fail(ld, 0, "changed while being read");
    return db->textlen == (size_t)st.st_size || load_fail(ld, 0, why);
}

static bool user_ok(const char *u, size_t n, const char **why)
{
    if (n == 0)
        return refuse(why, "empty user name");
    if (n > AUTH_FIELD_MAX)
        return refuse(why, "user name longer than 256 bytes");
    for (size_t i = 0; i < n; i++)
        if (u[i] <= ' ' || u[i] > '~')
            return refuse(why, "user name holds a space, control or "
                               "non-ASCII character");
    return true;
}

/* Count the hash's kind for the dummy. */
static void tally_kind(struct loader *ld, const char *hash)
{
    size_t len = hash_kind_len(hash);
    for (size_t i = 0; i < ld->nkinds; i++) {
        struct kind_count *k = &ld->kinds[i];
        if (k->len == len && memcmp(k->hash, hash, len) == 0) {
            k->count++;
            return;
        }
    }
    if (ld->nkinds < KINDS_MAX)
        ld->kinds[ld->nkinds++] = (struct kind_count){hash, len, 1};
}

/* Parse one line s[0..n) (already cut out and NUL-terminated). */
static bool parse_line(struct loader *ld, char *s, size_t n, unsigned line)
{
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    size_t lead = strspn(s, " \t");
    s += lead;
    n -= lead;
    if (n == 0 || s[0] == '#')
        return true;
    char *colon = memchr(s, ':', n);
    if (colon == NULL)
        return load_fail(ld, line, "expected user:hash");
    *colon = '\0';
    const char *why = NULL;
    if (!user_ok(s, (size_t)(colon - s), &why) ||
        (why = hash_problem(colon + 1)) != NULL)
        return load_fail(ld, line, why);
    struct auth_db *db = ld->db;
    if (db->n == AUTH_USERS_MAX)
        return load_fail(ld, line, "more than 100000 users");
    db->e = xgrow(db->e, &db->cap, db->n + 1, sizeof(*db->e));
    db->e[db->n++] = (struct auth_entry){s, colon + 1, line};
    tally_kind(ld, colon + 1);
    return true;
}

static bool parse_text(struct loader *ld)
{
    char *p = ld->db->text, *end = p + ld->db->textlen;
    for (unsigned line = 1; p < end; line++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        if (n > AUTH_LINE_MAX)
            return load_fail(ld, line, "line longer than 4096 bytes");
        if (memchr(p, '\0', n))
            return load_fail(ld, line, "NUL byte");
        p[n] = '\0';
        if (!parse_line(ld, p, n, line))
            return false;
        p += n + 1;
    }
    return true;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct auth_entry *x = a, *y = b;
    int c = strcmp(x->user, y->user);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Sort by user and refuse duplicates, naming the earliest repeat. */
static bool sort_users(struct loader *ld)
{
    struct auth_db *db = ld->db;
    if (db->n > 1)
        qsort(db->e, db->n, sizeof(*db->e), entry_cmp);
    const struct auth_entry *dup = NULL;
    for (size_t i = 1; i < db->n; i++)
        if (strcmp(db->e[i - 1].user, db->e[i].user) == 0 &&
            (dup == NULL || db->e[i].line < dup[1].line))
            dup = &db->e[i - 1];
    if (dup == NULL)
        return true;
    char why[AUTH_FIELD_MAX + 64];
    str_printf(why, sizeof(why), "duplicate user %s (first on line %u)",
               dup[0].user, dup[0].line);
    return load_fail(ld, dup[1].line, why);
}

/* The hash of the most common kind becomes the unknown users' dummy. */
static void choose_dummy(const struct loader *ld)
{
    const struct kind_count *best = NULL;
    for (size_t i = 0; i < ld->nkinds; i++)
        if (best == NULL || ld->kinds[i].count > best->count)
            best = &ld->kinds[i];
    if (best)
        dummy_set(best->hash);
}

struct auth_db *auth_db_load(const char *path, char *err, size_t errlen)
{
    struct loader ld = {.path = path, .err = err, .errlen = errlen};
    ld.db = xcalloc(1, sizeof(*ld.db));
    if (read_text(&ld) && parse_text(&ld) && sort_users(&ld)) {
        choose_dummy(&ld);
        return ld.db;
    }
    auth_db_free(ld.db);
    return NULL;
}

void auth_db_free(struct auth_db *db)
{
    if (db == NULL)
        return;
    if (db->text)
        explicit_bzero(db->text, db->textlen);
    free(db->text);
    free(db->e);
    free(db);
}

size_t auth_db_count(const struct auth_db *db)
{
    return db->n;
}

static int key_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct auth_entry *)elem)->user);
}

const char *auth_db_hash(const struct auth_db *db, const char *user)
{
    if (db == NULL || user == NULL || db->n == 0)
        return NULL;
    const struct auth_entry *e =
        bsearch(user, db->e, db->n, sizeof(*db->e), key_cmp);
    return e ? e->hash : NULL;
}

/* ---- verification ---- */

/* Equal strings? Time depends on the lengths only, not the contents. */
static bool ct_equal(const char *a, const char *b)
{
    size_t n = strlen(a);
    if (strlen(b) != n)
        return false;
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

bool auth_check_password(const char *hash, const char *password)
{
    char setting[CRYPT_OUTPUT_SIZE];
    bool known = hash != NULL && password != NULL &&
                 strnlen(password, AUTH_FIELD_MAX + 1) <= AUTH_FIELD_MAX;
    if (known)
        known = str_copy(setting, sizeof(setting), hash);
    if (!known)
        dummy_get(setting, sizeof(setting));
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *out =
        crypt_rn(known ? password : "", setting, cd, (int)sizeof(*cd));
    bool ok = known && out != NULL && out[0] != '*' && ct_equal(out, hash);
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ok;
}
