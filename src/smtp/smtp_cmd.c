/*
 * smtp_cmd.c - SMTP command line and address parsing (see smtp_cmd.h).
 *
 * Pure functions over bounded input: the verb is looked up in a table, a
 * MAIL/RCPT path is checked against RFC 5321 4.1.2 (with RFC 6531 for
 * SMTPUTF8), MAIL parameters against a keyword table. Nothing here
 * allocates, logs or does I/O; an error is the reply to send plus, for
 * paths, a short static reason for the log.
 *
 * Order of checks for a path: the length of the whole path (<...>) first,
 * then parameters, then UTF-8 well-formedness and SMTPUTF8, the source
 * route, the local part and the domain. The domain part is what follows
 * the last '@' outside a quoted string, so "a%b@c" is an address at c.
 */
#include "smtp/smtp_cmd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>

/* Verb table: the only place a command name is spelled. */
static const struct verb_entry {
    const char *name;
    enum smtp_verb verb;
} verbs[] = {
    {"HELO", SMTP_HELO}, {"EHLO", SMTP_EHLO},         {"MAIL", SMTP_MAIL},
    {"RCPT", SMTP_RCPT}, {"DATA", SMTP_DATA},         {"BDAT", SMTP_BDAT},
    {"RSET", SMTP_RSET}, {"NOOP", SMTP_NOOP},         {"QUIT", SMTP_QUIT},
    {"VRFY", SMTP_VRFY}, {"EXPN", SMTP_EXPN},         {"HELP", SMTP_HELP},
    {"AUTH", SMTP_AUTH}, {"STARTTLS", SMTP_STARTTLS},
};

/* How one path is being parsed. */
struct path_ctx {
    bool rcpt;                 /* RCPT rules: no null path, postmaster */
    bool utf8_ok;              /* SMTPUTF8 in force */
    enum smtp_reply_id syntax; /* R_SYNTAX_MAIL or R_SYNTAX_RCPT */
    const char **why;
};

/* Record a reason for the log and return the reply. */
static enum smtp_reply_id fail(const struct path_ctx *c, enum smtp_reply_id r,
                               const char *why)
{
    if (c->why)
        *c->why = why;
    return r;
}

/* True for SP and HT, the blanks tolerated around a command's argument. */
static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* True for a byte that may not appear in a command line. */
static bool is_ctl(unsigned char ch)
{
    return (ch < 0x20 && ch != '\t') || ch == 0x7f;
}

/* Look a verb up in the table, case-insensitively; NULL if unknown. */
static const struct verb_entry *verb_lookup(const char *s, size_t n)
{
    for (size_t i = 0; i < ARRAY_LEN(verbs); i++)
        if (strlen(verbs[i].name) == n && str_nieq(s, verbs[i].name, n))
            return &verbs[i];
    return NULL;
}

enum smtp_reply_id smtp_cmd_parse(const char *line, size_t len,
                                  struct smtp_cmd *out)
{
    out->verb = SMTP_UNKNOWN;
    out->name = NULL;
    out->argbuf[0] = '\0';
    out->arg = out->argbuf;
    if (len > SMTP_CMD_LINE_MAX - 2)
        return R_LINE_TOO_LONG;
    for (size_t i = 0; i < len; i++)
        if (is_ctl((unsigned char)line[i]))
            return R_SYNTAX;
    size_t vlen = 0;
    while (vlen < len && !is_blank(line[vlen]))
        vlen++;
    size_t a = vlen, z = len;
    while (a < len && is_blank(line[a]))
        a++;
    while (z > a && is_blank(line[z - 1]))
        z--;
    memcpy(out->argbuf, line + a, z - a);
    out->argbuf[z - a] = '\0';
    const struct verb_entry *v = verb_lookup(line, vlen);
    if (v == NULL)
        return R_UNKNOWN_CMD;
    out->verb = v->verb;
    out->name = v->name;
    return R_NONE;
}

/* --- character classes ------------------------------------------------ */

/* ASCII letter or digit (locale-independent). */
static bool is_alnum(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9');
}

/* RFC 5322 atext, plus UTF-8 octets (checked for form beforehand). */
static bool is_atext(unsigned char ch)
{
    return is_alnum(ch) || ch >= 0x80 ||
           (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/* RFC 5321 qtextSMTP, plus UTF-8 octets. */
static bool is_qtext(unsigned char ch)
{
    return (ch >= 32 && ch <= 126 && ch != '"' && ch != '\\') || ch >= 0x80;
}

/* Lead-byte table for well-formed UTF-8 (RFC 3629 section 4): no
 * overlong forms, no surrogates, nothing above U+10FFFF. */
static const struct utf8_lead {
    unsigned char lo, hi;   /* lead byte range */
    unsigned char need;     /* continuation bytes */
    unsigned char lo2, hi2; /* range of the first continuation byte */
} utf8_leads[] = {
    {0xc2, 0xdf, 1, 0x80, 0xbf}, {0xe0, 0xe0, 2, 0xa0, 0xbf},
    {0xe1, 0xec, 2, 0x80, 0xbf}, {0xed, 0xed, 2, 0x80, 0x9f},
    {0xee, 0xef, 2, 0x80, 0xbf}, {0xf0, 0xf0, 3, 0x90, 0xbf},
    {0xf1, 0xf3, 3, 0x80, 0xbf}, {0xf4, 0xf4, 3, 0x80, 0x8f},
};

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < ARRAY_LEN(utf8_leads); i++) {
        const struct utf8_lead *l = &utf8_leads[i];
        if (s[0] < l->lo || s[0] > l->hi)
            continue;
        if (n <= l->need || s[1] < l->lo2 || s[1] > l->hi2)
            return 0;
        for (size_t k = 2; k <= l->need; k++)
            if ((s[k] & 0xc0) != 0x80)
                return 0;
        return (size_t)l->need + 1;
    }
    return 0;
}

/* Whether s[0..n) is well-formed UTF-8; *high tells if it has non-ASCII. */
static bool utf8_check(const char *str, size_t n, bool *high)
{
    const unsigned char *s = (const unsigned char *)str;
    *high = false;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        *high = true;
        size_t k = utf8_seq(s + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* --- domains and address literals -------------------------------------- */

/* Check an address literal "[1.2.3.4]" or "[IPv6:...]". */
static enum smtp_reply_id check_literal(const struct path_ctx *c, const char *s,
                                        size_t n)
{
    char tmp[64];
    struct in6_addr a6;
    if (n < 3 || s[n - 1] != ']' || n - 2 >= sizeof(tmp))
        return fail(c, c->syntax, "bad address literal");
    memcpy(tmp, s + 1, n - 2);
    tmp[n - 2] = '\0';
    if (str_nieq(tmp, "IPv6:", 5)) {
        if (inet_pton(AF_INET6, tmp + 5, &a6) != 1)
            return fail(c, c->syntax, "bad ipv6 address literal");
        return R_NONE;
    }
    if (inet_pton(AF_INET, tmp, &a6) != 1)
        return fail(c, c->syntax, "bad address literal");
    return R_NONE;
}

/* Check one label s[0..n) of a domain name. */
static enum smtp_reply_id check_label(const struct path_ctx *c, const char *s,
                                      size_t n)
{
    if (n == 0)
        return fail(c, c->syntax, "empty label in domain");
    if (n > 63)
        return fail(c, R_DOMAIN_TOO_LONG, "label too long");
    if (s[0] == '-' || s[n - 1] == '-')
        return fail(c, c->syntax, "hyphen at label edge");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!is_alnum(ch) && ch != '-' && ch < 0x80)
            return fail(c, c->syntax, "bad character in domain");
    }
    return R_NONE;
}

/* Check a domain s[0..n): a host name or an address literal. */
static enum smtp_reply_id check_domain(const struct path_ctx *c, const char *s,
                                       size_t n)
{
    if (n == 0)
        return fail(c, c->syntax, "missing domain");
    if (s[0] == '[')
        return check_literal(c, s, n);
    if (n > SMTP_DOMAIN_MAX)
        return fail(c, R_DOMAIN_TOO_LONG, "domain too long");
    if (s[n - 1] == '.')
        return fail(c, c->syntax, "trailing dot in domain");
    const char *p = s, *end = s + n;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *lend = dot ? dot : end;
        enum smtp_reply_id r = check_label(c, p, (size_t)(lend - p));
        if (r != R_NONE || dot == NULL)
            return r;
        p = dot + 1;
    }
}

/* --- local part and mailbox --------------------------------------------- */

/* Check a quoted-string local part s[0..n), quotes included. */
static enum smtp_reply_id check_quoted(const struct path_ctx *c, const char *s,
                                       size_t n)
{
    if (n < 2 || s[n - 1] != '"')
        return fail(c, c->syntax, "unterminated quoted local part");
    for (size_t i = 1; i < n - 1; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\\') {
            if (i + 1 >= n - 1 || s[i + 1] < 32 || s[i + 1] > 126)
                return fail(c, c->syntax, "bad quoted pair in local part");
            i++;
        } else if (!is_qtext(ch))
            return fail(c, c->syntax, "bad character in local part");
    }
    return R_NONE;
}

/* Check a local part s[0..n): dot-string or quoted-string. */
static enum smtp_reply_id check_local(const struct path_ctx *c, const char *s,
                                      size_t n)
{
    if (n == 0)
        return fail(c, c->syntax, "empty local part");
    if (n > SMTP_LOCAL_MAX)
        return fail(c, R_LOCAL_TOO_LONG, "local part too long");
    if (s[0] == '"')
        return check_quoted(c, s, n);
    if (s[0] == '.')
        return fail(c, c->syntax, "leading dot in local part");
    if (s[n - 1] == '.')
        return fail(c, c->syntax, "trailing dot in local part");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.' && i + 1 < n && s[i + 1] == '.')
            return fail(c, c->syntax, "double dot in local part");
        if (s[i] != '.' && !is_atext((unsigned char)s[i]))
            return fail(c, c->syntax, "bad character in local part");
    }
    return R_NONE;
}

/* Remove a source route "@a.example,@b.example:" from the front of *s. */
static enum smtp_reply_id strip_route(const struct path_ctx *c, const char **sp,
                                      size_t *np)
{
    const char *s = *sp, *colon = memchr(s, ':', *np);
    if (colon == NULL)
        return fail(c, c->syntax, "source route syntax");
    for (const char *p = s; p < colon;) {
        const char *end = p + 1;
        while (end < colon && *end != ',')
            end++;
        if (*p != '@' || p[1] == '[' ||
            check_domain(c, p + 1, (size_t)(end - p - 1)) != R_NONE ||
            end + 1 == colon)
            return fail(c, c->syntax, "source route syntax");
        p = end < colon ? end + 1 : end;
    }
    *np -= (size_t)(colon + 1 - s);
    *sp = colon + 1;
    return R_NONE;
}

/* Position of the last '@' outside a quoted string in s[0..n), or n. */
static size_t last_at(const char *s, size_t n)
{
    size_t at = n;
    bool quoted = false;
    for (size_t i = 0; i < n; i++) {
        if (quoted && s[i] == '\\')
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && s[i] == '@')
            at = i;
    }
    return at;
}

/* Parse the mailbox between the angle brackets into path. */
static enum smtp_reply_id parse_mailbox(const struct path_ctx *c, const char *s,
                                        size_t n, struct smtp_path *path)
{
    bool high;
    if (!utf8_check(s, n, &high))
        return fail(c, c->syntax, "malformed utf-8");
    if (high && !c->utf8_ok)
        return fail(c, R_UTF8_NEEDS_SMTPUTF8, "non-ascii without smtputf8");
    enum smtp_reply_id r;
    if (s[0] == '@' && (r = strip_route(c, &s, &n)) != R_NONE)
        return r;
    size_t at = last_at(s, n);
    if (at == n) {
        if (c->rcpt && n == 10 && str_nieq(s, "postmaster", 10)) {
            memcpy(path->addr, "postmaster", 11);
            path->local_len = 10;
            return R_NONE;
        }
        return fail(c, c->syntax, n ? "missing domain" : "empty mailbox");
    }
    if ((r = check_local(c, s, at)) != R_NONE ||
        (r = check_domain(c, s + at + 1, n - at - 1)) != R_NONE)
        return r;
    memcpy(path->addr, s, n);
    path->addr[n] = '\0';
    path->local_len = at;
    path->domain = path->addr + at + 1;
    (void)utf8_check(path->addr, n, &path->utf8);
    return R_NONE;
}

/* Find the path "<...>" at s; *len gets its length including brackets. */
static enum smtp_reply_id path_span(const struct path_ctx *c, const char *s,
                                    size_t *len)
{
    if (*s != '<')
        return fail(c, c->syntax, "missing '<'");
    bool quoted = false;
    for (size_t i = 1; s[i] != '\0'; i++) {
        if (i >= SMTP_PATH_MAX)
            return fail(c, R_PATH_TOO_LONG, "path too long");
        if (quoted && s[i] == '\\' && s[i + 1] != '\0')
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && s[i] == '>') {
            *len = i + 1;
            return R_NONE;
        }
    }
    return fail(c, c->syntax, "missing '>'");
}

/* Parse the path "<...>" of length n at s into path. */
static enum smtp_reply_id parse_path(const struct path_ctx *c, const char *s,
                                     size_t n, struct smtp_path *path)
{
    if (n == 2) {
        if (c->rcpt)
            return fail(c, c->syntax, "null path");
        path->is_null = true;
        return R_NONE;
    }
    return parse_mailbox(c, s + 1, n - 2, path);
}

/* Skip "FROM:"/"TO:" (case-insensitive) and blanks after it; NULL if
 * the keyword is missing. */
static const char *skip_keyword(const char *arg, const char *kw)
{
    size_t n = strlen(kw);
    if (!str_nieq(arg, kw, n))
        return NULL;
    arg += n;
    while (*arg == ' ')
        arg++;
    return arg;
}

/* Reset a path to empty. */
static void path_reset(struct smtp_path *path)
{
    path->addr[0] = '\0';
    path->local_len = 0;
    path->domain = NULL;
    path->is_null = false;
    path->utf8 = false;
}

/* --- MAIL parameters ---------------------------------------------------- */

/* SIZE=<1..20 digits> (RFC 1870). */
static bool param_size(const char *v, size_t n, struct smtp_mail_params *p)
{
    if (n > 20 || !parse_u64(v, n, &p->size))
        return false;
    p->size_given = true;
    return true;
}

static const struct body_entry {
    const char *name;
    enum smtp_body body;
} bodies[] = {
    {"7BIT", SMTP_BODY_7BIT},
    {"8BITMIME", SMTP_BODY_8BITMIME},
    {"BINARYMIME", SMTP_BODY_BINARYMIME},
};

/* BODY=7BIT|8BITMIME|BINARYMIME (RFC 6152, 3030). */
static bool param_body(const char *v, size_t n, struct smtp_mail_params *p)
{
    for (size_t i = 0; i < ARRAY_LEN(bodies); i++)
        if (strlen(bodies[i].name) == n && str_nieq(v, bodies[i].name, n)) {
            p->body = bodies[i].body;
            return true;
        }
    return false;
}

/* SMTPUTF8 (RFC 6531), no value. */
static bool param_smtputf8(const char *v, size_t n, struct smtp_mail_params *p)
{
    (void)v;
    (void)n;
    p->smtputf8 = true;
    return true;
}

/* AUTH=<xtext> (RFC 4954 5): the identity a relaying client says the
 * message was submitted by. moat does not trust it (RFC 4954 allows
 * that) and does not pass it on; it checks its syntax: "<>" or xtext
 * (printable ASCII but '+' and '=', or "+XX" hex escapes). */
static bool param_auth(const char *v, size_t n, struct smtp_mail_params *p)
{
    (void)p;
    if (n == 2 && v[0] == '<' && v[1] == '>')
        return true;
    if (n == 0 || n > 500)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch == '+') {
            if (i + 2 >= n || !isxdigit((unsigned char)v[i + 1]) ||
                !isxdigit((unsigned char)v[i + 2]))
                return false;
            i += 2;
        } else if (ch < 33 || ch > 126 || ch == '=') {
            return false;
        }
    }
    return true;
}

static const struct mail_param {
    const char *name;
    bool has_value;
    bool (*set)(const char *v, size_t n, struct smtp_mail_params *p);
} mail_params[] = {
    {"SIZE", true, param_size},
    {"BODY", true, param_body},
    {"SMTPUTF8", false, param_smtputf8},
    {"AUTH", true, param_auth},
};

/* Parse one "KEYWORD[=value]" token s[0..n); *seen tracks repeats. */
static enum smtp_reply_id parse_param(const struct path_ctx *c, const char *s,
                                      size_t n, unsigned *seen,
                                      struct smtp_mail_params *p)
{
    const char *eq = memchr(s, '=', n);
    size_t kn = eq ? (size_t)(eq - s) : n;
    for (size_t i = 0; i < ARRAY_LEN(mail_params); i++) {
        const struct mail_param *mp = &mail_params[i];
        if (strlen(mp->name) != kn || !str_nieq(s, mp->name, kn))
            continue;
        if (*seen & (1u << i))
            return fail(c, R_BAD_PARAM, "duplicate parameter");
        *seen |= 1u << i;
        if ((eq != NULL) != mp->has_value ||
            !mp->set(eq ? eq + 1 : s, eq ? n - kn - 1 : 0, p))
            return fail(c, R_BAD_PARAM, "bad parameter value");
        return R_NONE;
    }
    return fail(c, R_BAD_PARAM, "unknown parameter");
}

/* Parse the space-separated parameters after a MAIL path. */
static enum smtp_reply_id parse_mail_params(const struct path_ctx *c,
                                            const char *s,
                                            struct smtp_mail_params *p)
{
    unsigned seen = 0;
    if (*s != '\0' && *s != ' ')
        return fail(c, c->syntax, "junk after path");
    for (;;) {
        while (*s == ' ')
            s++;
        if (*s == '\0')
            return R_NONE;
        size_t n = strcspn(s, " ");
        enum smtp_reply_id r = parse_param(c, s, n, &seen, p);
        if (r != R_NONE)
            return r;
        s += n;
    }
}

enum smtp_reply_id smtp_parse_mail(const char *arg, struct smtp_path *path,
                                   struct smtp_mail_params *params,
                                   const char **why)
{
    struct path_ctx c = {.rcpt = false, .syntax = R_SYNTAX_MAIL, .why = why};
    path_reset(path);
    *params = (struct smtp_mail_params){.body = SMTP_BODY_7BIT};
    const char *s = skip_keyword(arg, "FROM:");
    if (s == NULL)
        return fail(&c, R_SYNTAX, "missing 'FROM:'");
    size_t n;
    enum smtp_reply_id r = path_span(&c, s, &n);
    if (r == R_NONE)
        r = parse_mail_params(&c, s + n, params);
    if (r != R_NONE)
        return r;
    c.utf8_ok = params->smtputf8;
    return parse_path(&c, s, n, path);
}

enum smtp_reply_id smtp_parse_rcpt(const char *arg, bool smtputf8,
                                   struct smtp_path *path, const char **why)
{
    struct path_ctx c = {
        .rcpt = true, .utf8_ok = smtputf8, .syntax = R_SYNTAX_RCPT, .why = why};
    path_reset(path);
    const char *s = skip_keyword(arg, "TO:");
    if (s == NULL)
        return fail(&c, R_SYNTAX, "missing 'TO:'");
    size_t n;
    enum smtp_reply_id r = path_span(&c, s, &n);
    if (r != R_NONE)
        return r;
    const char *rest = s + n;
    if (*rest != '\0' && *rest != ' ')
        return fail(&c, c.syntax, "junk after path");
    while (*rest == ' ')
        rest++;
    if (*rest != '\0')
        return fail(&c, R_BAD_PARAM, "rcpt parameters not supported");
    return parse_path(&c, s, n, path);
}

enum smtp_reply_id smtp_parse_helo(const char *arg)
{
    size_t n = strnlen(arg, SMTP_DOMAIN_MAX + 1);
    if (n == 0 || n > SMTP_DOMAIN_MAX)
        return R_HELO_SYNTAX;
    for (size_t i = 0; i < n; i++)
        if (arg[i] == ' ' || is_ctl((unsigned char)arg[i]) || arg[i] == '\t')
            return R_HELO_SYNTAX;
    return R_NONE;
}

enum smtp_reply_id smtp_parse_bdat(const char *arg, uint64_t *size, bool *last)
{
    *size = 0;
    *last = false;
    size_t d = strspn(arg, "0123456789");
    if (d == 0 || d > 20 || !parse_u64(arg, d, size))
        return R_SYNTAX;
    const char *p = arg + d;
    if (*p == '\0')
        return R_NONE;
    if (*p != ' ')
        return R_SYNTAX;
    while (*p == ' ')
        p++;
    if (!str_ieq(p, "LAST"))
        return R_SYNTAX;
    *last = true;
    return R_NONE;
}
