/*
 * rat.c - the Recipient Access Table matcher (see rat.h).
 *
 * A pattern is one of five forms, told apart by its shape: "ALL", "user@",
 * "user@domain", ".domain" and "domain". The recipient is split at its
 * last '@' (the parser has already removed source routes and refused
 * trailing dots), so "user%other.example@example.com" is matched by
 * example.com, the domain the message is really addressed to, and a
 * quoted local part containing '@' cannot shift the split. Comparison is
 * ASCII case-insensitive everywhere; a quoted local part is compared as
 * written, quotes included. Domain literals and bare "postmaster" match
 * no domain row. Patterns are ASCII only (IDN domains in their xn-- form).
 */
#include "policy/rat.h"

#include <strings.h>

#define RAT_LOCAL_MAX 64   /* RFC 5321 4.5.3.1.1 */
#define RAT_DOMAIN_MAX 255 /* RFC 5321 4.5.3.1.2 */
#define RAT_LABEL_MAX 63

/* Pattern forms. */
enum rat_form {
    FORM_ALL,
    FORM_LOCAL,
    FORM_ADDRESS,
    FORM_SUBDOMAIN,
    FORM_DOMAIN
};

/* A pattern or an address cut into its local part and domain. */
struct rat_parts {
    const char *local;
    size_t local_len;
    const char *domain; /* NULL if none */
    size_t domain_len;
};

/* Split s at its last '@': local part before, domain after. */
static void split_at(const char *s, struct rat_parts *p)
{
    const char *at = strrchr(s, '@');
    p->local = s;
    p->local_len = at ? (size_t)(at - s) : strlen(s);
    p->domain = at ? at + 1 : NULL;
    p->domain_len = at ? strlen(at + 1) : 0;
}

/* Which form a pattern has (assumes it passed rat_pattern_check). */
static enum rat_form pattern_form(const char *pat)
{
    size_t n = strlen(pat);
    if (strcmp(pat, "ALL") == 0)
        return FORM_ALL;
    if (n > 0 && pat[n - 1] == '@')
        return FORM_LOCAL;
    if (strchr(pat, '@') != NULL)
        return FORM_ADDRESS;
    return pat[0] == '.' ? FORM_SUBDOMAIN : FORM_DOMAIN;
}

/* --- pattern syntax ------------------------------------------------------- */

/* ASCII letter or digit. */
static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9');
}

/* Check one label; NULL or a reason. */
static const char *label_check(const char *s, size_t n)
{
    if (n == 0)
        return "empty label in domain";
    if (n > RAT_LABEL_MAX)
        return "label too long";
    if (s[0] == '-' || s[n - 1] == '-')
        return "hyphen at label edge";
    for (size_t i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '-')
            return "bad character in domain";
    return NULL;
}

/* Check a host name s[0..n); NULL or a reason. */
static const char *domain_check(const char *s, size_t n)
{
    if (n == 0)
        return "empty domain";
    if (n > RAT_DOMAIN_MAX)
        return "domain too long";
    if (s[n - 1] == '.')
        return "trailing dot in domain";
    const char *end = s + n;
    for (;;) {
        const char *dot = memchr(s, '.', (size_t)(end - s));
        const char *why = label_check(s, (size_t)((dot ? dot : end) - s));
        if (why != NULL || dot == NULL)
            return why;
        s = dot + 1;
    }
}

/* RFC 5322 atext (ASCII). */
static bool is_atext(unsigned char c)
{
    return is_alnum(c) ||
           (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* Check a quoted-string local part, quotes included. */
static const char *quoted_check(const char *s, size_t n)
{
    if (n < 2 || s[n - 1] != '"')
        return "unterminated quoted local part";
    for (size_t i = 1; i < n - 1; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' && i + 1 < n - 1 && s[i + 1] >= 32 && s[i + 1] <= 126)
            i++;
        else if (c < 32 || c > 126 || c == '"' || c == '\\')
            return "bad character in quoted local part";
    }
    return NULL;
}

/* Check a local part s[0..n): dot-string or quoted-string. */
static const char *local_check(const char *s, size_t n)
{
    if (n == 0)
        return "empty local part";
    if (n > RAT_LOCAL_MAX)
        return "local part too long";
    if (s[0] == '"')
        return quoted_check(s, n);
    if (s[0] == '.' || s[n - 1] == '.')
        return "dot at edge of local part";
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.' && i + 1 < n && s[i + 1] == '.')
            return "double dot in local part";
        if (s[i] != '.' && !is_atext((unsigned char)s[i]))
            return "bad character in local part";
    }
    return NULL;
}

const char *rat_pattern_check(const char *pat)
{
    if (pat == NULL || *pat == '\0')
        return "empty pattern";
    if (strcmp(pat, "ALL") == 0)
        return NULL;
    if (strcasecmp(pat, "ALL") == 0)
        return "write the catch-all row as 'ALL'";
    for (const char *p = pat; *p; p++)
        if ((unsigned char)*p >= 0x80)
            return "non-ASCII pattern (write domains in xn-- form)";
    struct rat_parts pp;
    split_at(pat, &pp);
    if (pp.domain == NULL) {
        const char *d = pat[0] == '.' ? pat + 1 : pat;
        if (d[0] == '[')
            return "address literals are not supported";
        return domain_check(d, strlen(d));
    }
    const char *why = local_check(pp.local, pp.local_len);
    if (why != NULL || pp.domain_len == 0)
        return why;
    if (pp.domain[0] == '.' || pp.domain[0] == '[')
        return "address rows take a plain domain";
    return domain_check(pp.domain, pp.domain_len);
}

/* --- matching ------------------------------------------------------------- */

/* ASCII case-insensitive equality of a[0..an) and b[0..bn). */
static bool span_ieq(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && strncasecmp(a, b, an) == 0;
}

/* Whether one row's pattern matches the split address. */
static bool row_matches(const char *pat, const struct rat_parts *a)
{
    struct rat_parts pp;
    bool named = a->domain != NULL && a->domain_len > 0 && a->domain[0] != '[';
    size_t n = strlen(pat);
    switch (pattern_form(pat)) {
    case FORM_ALL:
        return true;
    case FORM_LOCAL:
        return n > 1 && span_ieq(pat, n - 1, a->local, a->local_len);
    case FORM_ADDRESS:
        split_at(pat, &pp);
        return named && pp.local_len > 0 &&
               span_ieq(pp.local, pp.local_len, a->local, a->local_len) &&
               span_ieq(pp.domain, pp.domain_len, a->domain, a->domain_len);
    case FORM_SUBDOMAIN:
        return named && n > 1 && a->domain_len > n &&
               strncasecmp(a->domain + a->domain_len - n, pat, n) == 0;
    case FORM_DOMAIN:
        return named && span_ieq(pat, n, a->domain, a->domain_len);
    }
    return false;
}

const struct rat_entry *rat_match(const struct rat_entry *rows,
                                       size_t nrows, const char *addr)
{
    struct rat_parts a;
    split_at(addr, &a);
    for (size_t i = 0; i < nrows; i++)
        if (rows[i].pattern != NULL && row_matches(rows[i].pattern, &a))
            return &rows[i];
    return NULL;
}
