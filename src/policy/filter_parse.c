/*
 * filter_parse.c - the message filter language: lexer and recursive
 * descent parser (see filter.h). Regexes are compiled here (PCRE2), so a
 * bad pattern is a parse error with its position.
 */
#include "core/buf.h"
#include "policy/filter.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- the tables ---- */

static const struct filter_rule_def rules[] = {
    {"true", 0, 0, true, FR_NONE, false, ""},
    {"valid", 0, 0, true, FR_NONE, false, ""},
    {"subject", 0, 0, false, FR_REGEX, false, ""},
    {"mail-from", 0, 0, false, FR_REGEX, false, ""},
    {"rcpt-to", 0, 0, false, FR_REGEX, false, ""},
    {"sendergroup", 0, 0, false, FR_REGEX, false, ""},
    {"attachment-filename", 0, 0, false, FR_REGEX, false, ""},
    {"attachment-type", 0, 0, false, FR_REGEX, false, ""},
    {"body-size", 0, 0, false, FR_NUMBER, false, ""},
    {"attachment-size", 0, 0, false, FR_NUMBER, false, ""},
    {"rcpt-count", 0, 0, false, FR_NUMBER, false, ""},
    {"header", 1, 1, true, FR_REGEX, false, "s"},
    {"body-contains", 1, 2, true, FR_NONE, true, "sn"},
    {"only-body-contains", 1, 2, true, FR_NONE, true, "sn"},
    {"remote-ip", 0, 0, false, FR_HOSTS, false, ""},
    {"recv-listener", 0, 0, false, FR_NAME, false, ""},
    {"recv-int", 0, 0, false, FR_NAME, false, ""},
    {"smtp-auth-id-matches", 1, 2, true, FR_NONE, false, "ss"},
    {"header-repeats", 2, 3, true, FR_NONE, false, "sns"},
    {"date", 0, 0, false, FR_DATE, false, ""},
    {"dnslist", 1, 1, true, FR_ADDR, false, "s"},
    {"random", 1, 1, true, FR_NUMBER, false, "n"},
};

static const struct filter_action_def actions[] = {
    {"strip-header", 1, 1, false},
    {"insert-header", 2, 2, false},
    {"edit-header-text", 3, 3, false},
    {"add-footer", 1, 1, false},
    {"alt-rcpt-to", 1, 1, false},
    {"alt-mailhost", 1, 1, false},
    {"bcc", 1, 4, false},
    {"notify", 1, 4, false},
    {"log-entry", 1, 1, false},
    {"tag-message", 1, 1, false},
    {"no-op", 0, 0, false},
    {"skip-filters", 0, 0, true},
    {"drop", 0, 0, true},
    {"bounce", 0, 0, true},
    {"deliver", 0, 0, true},
};

const struct filter_rule_def *filter_rule_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(rules); i++)
        if (strcasecmp(rules[i].name, name) == 0)
            return &rules[i];
    return NULL;
}

const struct filter_action_def *filter_action_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(actions); i++)
        if (strcasecmp(actions[i].name, name) == 0)
            return &actions[i];
    return NULL;
}

/* ---- the lexer ---- */

enum tok {
    T_EOF,
    T_IDENT,
    T_STRING,
    T_NUMBER,
    T_COLON,
    T_BANG,
    T_LBRACE,
    T_RBRACE,
    T_LPAREN,
    T_RPAREN,
    T_COMMA,
    T_SEMI,
    T_OP, /* tk.op */
};

struct lexer {
    const char *file;
    const char *p, *end;
    unsigned line, col;
    bool bol; /* only blanks so far on this line */
    /* The current token. */
    enum tok t;
    unsigned tline, tcol;
    char *text; /* T_IDENT, T_STRING (owned) */
    size_t tlen;
    uint64_t num;
    enum filter_op op;
    char *err;
    size_t errlen;
    bool failed;
    unsigned depth;
    unsigned nodes; /* in the current filter */
};

/* One more node of the current filter's tree; false (reported) over
 * FILTER_MAX_NODES, which bounds every recursion over the tree. */
static bool node(struct lexer *lx, unsigned line, unsigned col);

static void lx_error_at(struct lexer *lx, unsigned line, unsigned col,
                        const char *fmt, ...) MOAT_PRINTF(4, 5);
static void lx_error_at(struct lexer *lx, unsigned line, unsigned col,
                        const char *fmt, ...)
{
    if (lx->failed)
        return;
    lx->failed = true;
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    str_printf(lx->err, lx->errlen, "%s:%u:%u: %s", lx->file, line, col, why);
}

static void adv(struct lexer *lx)
{
    char ch = *lx->p;
    if (ch == '\n') {
        lx->line++;
        lx->col = 1;
        lx->bol = true;
    } else {
        lx->col++;
        if (ch != ' ' && ch != '\t' && ch != '\r')
            lx->bol = false;
    }
    lx->p++;
}

/* Is the current line, from p, only a "." (and blanks)? */
static bool dot_line(const struct lexer *lx)
{
    const char *q = lx->p;
    if (q >= lx->end || *q != '.')
        return false;
    for (q++; q < lx->end && *q != '\n'; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r')
            return false;
    return true;
}

static void skip_space(struct lexer *lx)
{
    while (lx->p < lx->end) {
        char ch = *lx->p;
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
            adv(lx);
        } else if (ch == '#' || (lx->bol && dot_line(lx))) {
            while (lx->p < lx->end && *lx->p != '\n')
                adv(lx);
        } else {
            break;
        }
    }
}

static bool ident_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '-' || ch == '_';
}

static void lex_string(struct lexer *lx)
{
    char q = *lx->p;
    adv(lx);
    struct buf b = {0};
    for (;;) {
        if (lx->p >= lx->end || *lx->p == '\n') {
            lx_error_at(lx, lx->tline, lx->tcol, "unterminated string");
            buf_free(&b);
            return;
        }
        char ch = *lx->p;
        if (ch == q) {
            adv(lx);
            break;
        }
        if (ch == '\\' && lx->p + 1 < lx->end) {
            char e = lx->p[1];
            if (e == '\0' || e == '\n' || e == '\r') {
                lx_error_at(lx, lx->line, lx->col,
                            "a backslash before a line end or NUL in a "
                            "string");
                buf_free(&b);
                return;
            }
            adv(lx);
            adv(lx);
            switch (e) {
            case '\\':
                buf_putc(&b, '\\');
                break;
            case '\'':
                buf_putc(&b, '\'');
                break;
            case '"':
                buf_putc(&b, '"');
                break;
            case 'n':
                buf_putc(&b, '\n');
                break;
            case 't':
                buf_putc(&b, '\t');
                break;
            case 'r':
                buf_putc(&b, '\r');
                break;
            default: /* kept: "\." stays \. for the regex */
                buf_putc(&b, '\\');
                buf_putc(&b, e);
            }
        } else {
            if (ch == '\0') {
                lx_error_at(lx, lx->line, lx->col, "NUL byte in a string");
                buf_free(&b);
                return;
            }
            buf_putc(&b, ch);
            adv(lx);
        }
        if (b.len > FILTER_STRING_MAX) {
            lx_error_at(lx, lx->tline, lx->tcol, "string longer than %d bytes",
                        FILTER_STRING_MAX);
            buf_free(&b);
            return;
        }
    }
    lx->t = T_STRING;
    lx->tlen = b.len;
    buf_putc(&b, '\0');
    lx->text = b.data;
}

static void lex_number(struct lexer *lx)
{
    uint64_t v = 0;
    while (lx->p < lx->end && isdigit((unsigned char)*lx->p)) {
        unsigned d = (unsigned)(*lx->p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            lx_error_at(lx, lx->tline, lx->tcol, "number too large");
            return;
        }
        v = v * 10 + d;
        adv(lx);
    }
    uint64_t mul = 1;
    if (lx->p < lx->end) {
        switch (*lx->p) {
        case 'b':
        case 'B':
            mul = 1;
            break;
        case 'k':
        case 'K':
            mul = 1024;
            break;
        case 'm':
        case 'M':
            mul = 1024 * 1024;
            break;
        case 'g':
        case 'G':
            mul = 1024ull * 1024 * 1024;
            break;
        default:
            mul = 0;
        }
        if (mul)
            adv(lx);
        else
            mul = 1;
    }
    if (lx->p < lx->end && ident_char(*lx->p)) {
        lx_error_at(lx, lx->tline, lx->tcol,
                    "bad number (sizes take b, k, M or G)");
        return;
    }
    if (v > UINT64_MAX / mul) {
        lx_error_at(lx, lx->tline, lx->tcol, "number too large");
        return;
    }
    lx->t = T_NUMBER;
    lx->num = v * mul;
}

static void next(struct lexer *lx)
{
    free(lx->text);
    lx->text = NULL;
    lx->t = T_EOF; /* what a lexing error leaves */
    if (lx->failed)
        return;
    skip_space(lx);
    lx->tline = lx->line;
    lx->tcol = lx->col;
    if (lx->p >= lx->end) {
        lx->t = T_EOF;
        return;
    }
    char ch = *lx->p;
    char n2 = lx->p + 1 < lx->end ? lx->p[1] : '\0';
    if (ch == '"' || ch == '\'') {
        lex_string(lx);
        return;
    }
    if (isdigit((unsigned char)ch)) {
        lex_number(lx);
        return;
    }
    if (isalpha((unsigned char)ch) || ch == '_') {
        const char *s = lx->p;
        while (lx->p < lx->end && ident_char(*lx->p))
            adv(lx);
        lx->tlen = (size_t)(lx->p - s);
        lx->text = xstrndup(s, lx->tlen);
        lx->t = T_IDENT;
        return;
    }
    struct {
        char a, b;
        enum tok t;
        enum filter_op op;
    } const punct[] = {
        {'=', '=', T_OP, FOP_EQ}, {'!', '=', T_OP, FOP_NE},
        {'<', '=', T_OP, FOP_LE}, {'>', '=', T_OP, FOP_GE},
        {'<', 0, T_OP, FOP_LT},   {'>', 0, T_OP, FOP_GT},
        {':', 0, T_COLON, 0},     {'!', 0, T_BANG, 0},
        {'{', 0, T_LBRACE, 0},    {'}', 0, T_RBRACE, 0},
        {'(', 0, T_LPAREN, 0},    {')', 0, T_RPAREN, 0},
        {',', 0, T_COMMA, 0},     {';', 0, T_SEMI, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(punct); i++) {
        if (punct[i].a != ch || (punct[i].b && punct[i].b != n2))
            continue;
        adv(lx);
        if (punct[i].b)
            adv(lx);
        lx->t = punct[i].t;
        lx->op = punct[i].op;
        return;
    }
    if (isprint((unsigned char)ch))
        lx_error_at(lx, lx->tline, lx->tcol, "unexpected '%c'", ch);
    else
        lx_error_at(lx, lx->tline, lx->tcol, "unexpected byte 0x%02x",
                    (unsigned char)ch);
    lx->t = T_EOF;
}

static bool node(struct lexer *lx, unsigned line, unsigned col)
{
    if (++lx->nodes <= FILTER_MAX_NODES)
        return true;
    lx_error_at(lx, line, col,
                "filter longer than %d rules, operators and "
                "actions",
                FILTER_MAX_NODES);
    return false;
}

static bool is_kw(const struct lexer *lx, const char *kw)
{
    return lx->t == T_IDENT && lx->text && strcasecmp(lx->text, kw) == 0;
}

static const char *tok_name(const struct lexer *lx)
{
    switch (lx->t) {
    case T_EOF:
        return "the end of the file";
    case T_IDENT:
        return "a name";
    case T_STRING:
        return "a string";
    case T_NUMBER:
        return "a number";
    case T_COLON:
        return "':'";
    case T_BANG:
        return "'!'";
    case T_LBRACE:
        return "'{'";
    case T_RBRACE:
        return "'}'";
    case T_LPAREN:
        return "'('";
    case T_RPAREN:
        return "')'";
    case T_COMMA:
        return "','";
    case T_SEMI:
        return "';'";
    case T_OP:
        return "a comparison";
    }
    return "?";
}

static bool expect(struct lexer *lx, enum tok t, const char *what)
{
    if (lx->t == t) {
        next(lx);
        return true;
    }
    lx_error_at(lx, lx->tline, lx->tcol, "expected %s, found %s", what,
                tok_name(lx));
    return false;
}

/* ---- values ---- */

static void value_free(struct filter_value *v)
{
    free(v->s);
    v->s = NULL;
}

/* A string or number token into v (the token is consumed). */
static bool take_value(struct lexer *lx, struct filter_value *v)
{
    v->line = lx->tline;
    v->col = lx->tcol;
    if (lx->t == T_STRING) {
        v->kind = FV_STRING;
        v->s = lx->text;
        lx->text = NULL;
    } else if (lx->t == T_NUMBER) {
        v->kind = FV_NUMBER;
        v->n = lx->num;
    } else {
        lx_error_at(lx, lx->tline, lx->tcol,
                    "expected a string or a number, found %s", tok_name(lx));
        return false;
    }
    next(lx);
    return true;
}

static void *compile_re(struct lexer *lx, const struct filter_value *v)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)v->s, strlen(v->s), 0, &code, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        lx_error_at(lx, v->line, v->col,
                    "bad regular expression: %s (at "
                    "offset %zu of the pattern)",
                    (const char *)msg, (size_t)off);
    }
    return re;
}

/* "MM/DD/YYYY hh:mm:ss", local time; a date that does not exist
 * (02/31) is refused. */
static bool parse_date(const char *s, int64_t *out)
{
    static const char shape[] = "dd/dd/dddd dd:dd:dd";
    if (strlen(s) != sizeof(shape) - 1)
        return false;
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    struct tm tm = {0};
    if (sscanf(s, "%2d/%2d/%4d %2d:%2d:%2d", &tm.tm_mon, &tm.tm_mday,
               &tm.tm_year, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return false;
    int mon = tm.tm_mon, mday = tm.tm_mday;
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_year < 1970 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60)
        return false;
    tm.tm_mon -= 1;
    tm.tm_year -= 1900;
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    if (t == (time_t)-1 || tm.tm_mon != mon - 1 || tm.tm_mday != mday)
        return false;
    *out = (int64_t)t;
    return true;
}

/* ---- expressions ---- */

static void expr_free(struct filter_expr *e)
{
    if (e == NULL)
        return;
    expr_free(e->a);
    expr_free(e->b);
    for (size_t i = 0; i < e->nargs; i++)
        value_free(&e->args[i]);
    value_free(&e->rhs);
    pcre2_code_free(e->re);
    free(e);
}

static struct filter_expr *parse_or(struct lexer *lx);

/* The comparison of a rule, checked against what the rule takes. */
static bool rule_rhs(struct lexer *lx, struct filter_expr *e)
{
    const struct filter_rule_def *d = e->rule;
    if (lx->t != T_OP) {
        if (!d->unary_ok) {
            lx_error_at(lx, e->line, e->col,
                        "%s needs a comparison (e.g. %s == \"...\")", d->name,
                        d->name);
            return false;
        }
        return true;
    }
    enum filter_op op = lx->op;
    unsigned oline = lx->tline, ocol = lx->tcol;
    if (d->rhs == FR_NONE) {
        lx_error_at(lx, oline, ocol, "%s takes no comparison", d->name);
        return false;
    }
    bool eq_only = d->rhs != FR_NUMBER && d->rhs != FR_DATE;
    if (eq_only && op != FOP_EQ && op != FOP_NE) {
        lx_error_at(lx, oline, ocol, "%s compares only with == or !=", d->name);
        return false;
    }
    next(lx);
    e->op = op;
    if (!take_value(lx, &e->rhs))
        return false;
    bool want_num = d->rhs == FR_NUMBER;
    if (want_num != (e->rhs.kind == FV_NUMBER)) {
        lx_error_at(lx, e->rhs.line, e->rhs.col, "%s compares with %s", d->name,
                    want_num ? "a number" : "a quoted string");
        return false;
    }
    char why[160];
    switch (d->rhs) {
    case FR_REGEX:
        e->re = compile_re(lx, &e->rhs);
        return e->re != NULL;
    case FR_HOSTS:
        if (!sg_entry_parse(e->rhs.s, &e->host, why, sizeof(why))) {
            lx_error_at(lx, e->rhs.line, e->rhs.col, "remote-ip: %s", why);
            return false;
        }
        if (e->host.kind != SG_ADDR && e->host.kind != SG_CIDR &&
            e->host.kind != SG_RANGE4 && e->host.kind != SG_RANGE6) {
            lx_error_at(lx, e->rhs.line, e->rhs.col,
                        "remote-ip takes addresses, CIDR blocks and ranges "
                        "only (no host names, dnslist, sbrs or ALL)");
            return false;
        }
        return true;
    case FR_DATE:
        if (!parse_date(e->rhs.s, &e->when)) {
            lx_error_at(lx, e->rhs.line, e->rhs.col,
                        "date compares with \"MM/DD/YYYY hh:mm:ss\"");
            return false;
        }
        return true;
    case FR_ADDR: {
        struct netaddr na;
        if (!netaddr_parse_ip(e->rhs.s, &na) || na.ss.ss_family != AF_INET) {
            lx_error_at(lx, e->rhs.line, e->rhs.col,
                        "%s compares with an IPv4 address (\"127.0.0.2\")",
                        d->name);
            return false;
        }
        return true;
    }
    case FR_NAME:
    case FR_NUMBER:
    case FR_NONE:
        return true;
    }
    return true;
}

/* "(" was read: values up to ")" (consumed) into args. strings_of: only
 * quoted strings (the action named). */
static void parse_args(struct lexer *lx, struct filter_value *args,
                       size_t *nargs, const char *strings_of)
{
    while (lx->t != T_RPAREN && !lx->failed) {
        if (*nargs == FILTER_MAX_ARGS) {
            lx_error_at(lx, lx->tline, lx->tcol, "too many arguments");
            return;
        }
        if (strings_of && lx->t != T_STRING) {
            lx_error_at(lx, lx->tline, lx->tcol,
                        "%s takes quoted strings, found %s", strings_of,
                        tok_name(lx));
            return;
        }
        if (!take_value(lx, &args[*nargs]))
            return;
        (*nargs)++;
        if (lx->t == T_COMMA) {
            next(lx);
            if (lx->t == T_RPAREN)
                lx_error_at(lx, lx->tline, lx->tcol,
                            "expected an argument after ','");
        } else if (lx->t != T_RPAREN) {
            expect(lx, T_RPAREN, "',' or ')'");
        }
    }
    if (!lx->failed)
        next(lx); /* ')' */
}

static void check_arity(struct lexer *lx, const char *name, unsigned min,
                        unsigned max, size_t n, unsigned line, unsigned col)
{
    if (n >= min && n <= max)
        return;
    if (min == max)
        lx_error_at(lx, line, col, "%s takes %u argument%s, not %zu", name, min,
                    min == 1 ? "" : "s", n);
    else
        lx_error_at(lx, line, col, "%s takes %u to %u arguments, not %zu", name,
                    min, max, n);
}

static struct filter_expr *parse_rule(struct lexer *lx)
{
    if (lx->t != T_IDENT) {
        lx_error_at(lx, lx->tline, lx->tcol, "expected a rule, found %s",
                    tok_name(lx));
        return NULL;
    }
    const struct filter_rule_def *d = filter_rule_find(lx->text);
    if (d == NULL) {
        lx_error_at(lx, lx->tline, lx->tcol, "unknown rule '%s'", lx->text);
        return NULL;
    }
    if (!node(lx, lx->tline, lx->tcol))
        return NULL;
    struct filter_expr *e = xcalloc(1, sizeof(*e));
    e->kind = FE_RULE;
    e->rule = d;
    e->line = lx->tline;
    e->col = lx->tcol;
    next(lx);
    if (lx->t == T_LPAREN) {
        next(lx);
        parse_args(lx, e->args, &e->nargs, NULL);
    }
    for (size_t i = 0; !lx->failed && i < e->nargs && d->arg_kinds[i]; i++) {
        bool num = d->arg_kinds[i] == 'n';
        if (num != (e->args[i].kind == FV_NUMBER))
            lx_error_at(lx, e->args[i].line, e->args[i].col,
                        "argument %zu of %s is %s", i + 1, d->name,
                        num ? "a number" : "a quoted string");
    }
    if (!lx->failed)
        check_arity(lx, d->name, d->args_min, d->args_max, e->nargs, e->line,
                    e->col);
    if (!lx->failed && d->arg0_regex) {
        if (e->args[0].kind != FV_STRING)
            lx_error_at(lx, e->args[0].line, e->args[0].col,
                        "%s takes a quoted regular expression", d->name);
        else
            e->re = compile_re(lx, &e->args[0]);
    }
    if (!lx->failed)
        rule_rhs(lx, e);
    if (lx->failed) {
        expr_free(e);
        return NULL;
    }
    return e;
}

static struct filter_expr *parse_factor(struct lexer *lx)
{
    if (++lx->depth > FILTER_MAX_DEPTH) {
        lx_error_at(lx, lx->tline, lx->tcol, "nested more than %d deep",
                    FILTER_MAX_DEPTH);
        return NULL;
    }
    struct filter_expr *e = NULL;
    if (is_kw(lx, "not")) {
        unsigned line = lx->tline, col = lx->tcol;
        next(lx);
        struct filter_expr *a = node(lx, line, col) ? parse_factor(lx) : NULL;
        if (a) {
            e = xcalloc(1, sizeof(*e));
            e->kind = FE_NOT;
            e->a = a;
            e->line = line;
            e->col = col;
        }
    } else if (lx->t == T_LPAREN) {
        next(lx);
        e = parse_or(lx);
        if (e && !expect(lx, T_RPAREN, "')'")) {
            expr_free(e);
            e = NULL;
        }
    } else {
        e = parse_rule(lx);
    }
    lx->depth--;
    return e;
}

static struct filter_expr *parse_binary(struct lexer *lx, bool is_or)
{
    struct filter_expr *e = is_or ? parse_binary(lx, false) : parse_factor(lx);
    while (e && is_kw(lx, is_or ? "or" : "and")) {
        unsigned line = lx->tline, col = lx->tcol;
        next(lx);
        struct filter_expr *b = !node(lx, line, col) ? NULL
                                : is_or              ? parse_binary(lx, false)
                                                     : parse_factor(lx);
        if (b == NULL) {
            expr_free(e);
            return NULL;
        }
        struct filter_expr *n = xcalloc(1, sizeof(*n));
        n->kind = is_or ? FE_OR : FE_AND;
        n->a = e; /* left to right: (a and b) and c */
        n->b = b;
        n->line = line;
        n->col = col;
        e = n;
    }
    return e;
}

static struct filter_expr *parse_or(struct lexer *lx)
{
    return parse_binary(lx, true);
}

/* ---- statements ---- */

static void stmt_free(struct filter_stmt *s)
{
    while (s) {
        struct filter_stmt *n = s->next;
        for (size_t i = 0; i < s->nargs; i++)
            value_free(&s->args[i]);
        pcre2_code_free(s->re);
        expr_free(s->cond);
        stmt_free(s->then_);
        stmt_free(s->else_); /* bounded: ifs count toward the depth */
        free(s);
        s = n;
    }
}

static struct filter_stmt *parse_block(struct lexer *lx);

static struct filter_stmt *parse_if(struct lexer *lx, unsigned line,
                                    unsigned col)
{
    if (!node(lx, line, col))
        return NULL;
    if (++lx->depth > FILTER_MAX_DEPTH) {
        lx_error_at(lx, line, col, "nested more than %d deep",
                    FILTER_MAX_DEPTH);
        return NULL;
    }
    struct filter_stmt *s = xcalloc(1, sizeof(*s));
    s->kind = FS_IF;
    s->line = line;
    s->col = col;
    s->cond = parse_or(lx);
    if (s->cond)
        s->then_ = parse_block(lx);
    if (!lx->failed && is_kw(lx, "else")) {
        next(lx);
        if (is_kw(lx, "if")) { /* else if: a nested if in the else */
            unsigned l2 = lx->tline, c2 = lx->tcol;
            next(lx);
            s->else_ = parse_if(lx, l2, c2);
        } else {
            s->else_ = parse_block(lx);
        }
    }
    lx->depth--;
    if (lx->failed) {
        stmt_free(s);
        return NULL;
    }
    return s;
}

static struct filter_stmt *parse_action(struct lexer *lx)
{
    const struct filter_action_def *d = filter_action_find(lx->text);
    if (d == NULL) {
        lx_error_at(lx, lx->tline, lx->tcol, "unknown action '%s'", lx->text);
        return NULL;
    }
    if (!node(lx, lx->tline, lx->tcol))
        return NULL;
    struct filter_stmt *s = xcalloc(1, sizeof(*s));
    s->kind = FS_ACTION;
    s->action = d;
    s->line = lx->tline;
    s->col = lx->tcol;
    next(lx);
    if (expect(lx, T_LPAREN, "'(' after the action's name"))
        parse_args(lx, s->args, &s->nargs, d->name);
    if (!lx->failed)
        check_arity(lx, d->name, d->args_min, d->args_max, s->nargs, s->line,
                    s->col);
    if (!lx->failed && strcmp(d->name, "edit-header-text") == 0)
        s->re = compile_re(lx, &s->args[1]);
    if (!lx->failed)
        expect(lx, T_SEMI, "';' after the action");
    if (lx->failed) {
        stmt_free(s);
        return NULL;
    }
    return s;
}

/* { statement ... } */
static struct filter_stmt *parse_block(struct lexer *lx)
{
    if (!expect(lx, T_LBRACE, "'{'"))
        return NULL;
    if (++lx->depth > FILTER_MAX_DEPTH) {
        lx_error_at(lx, lx->tline, lx->tcol, "nested more than %d deep",
                    FILTER_MAX_DEPTH);
        return NULL;
    }
    struct filter_stmt *head = NULL, **tail = &head;
    while (!lx->failed && lx->t != T_RBRACE) {
        struct filter_stmt *s = NULL;
        if (is_kw(lx, "if")) {
            unsigned line = lx->tline, col = lx->tcol;
            next(lx);
            s = parse_if(lx, line, col);
        } else if (lx->t == T_IDENT) {
            s = parse_action(lx);
        } else {
            lx_error_at(lx, lx->tline, lx->tcol,
                        "expected an action, 'if' or '}', found %s",
                        tok_name(lx));
        }
        if (s) {
            *tail = s;
            tail = &s->next;
        }
    }
    lx->depth--;
    if (!lx->failed)
        next(lx); /* '}' */
    if (lx->failed) {
        stmt_free(head);
        return NULL;
    }
    return head;
}

/* ---- filters ---- */

static void filter_clear(struct filter *f)
{
    expr_free(f->cond);
    stmt_free(f->then_);
    stmt_free(f->else_);
}

void filter_set_free(struct filter_set *set)
{
    for (size_t i = 0; i < set->count; i++)
        filter_clear(&set->filters[i]);
    free(set->filters);
    set->filters = NULL;
    set->count = 0;
}

static bool reserved(const char *name)
{
    static const char *const words[] = {"if", "else", "and", "or", "not"};
    for (size_t i = 0; i < ARRAY_LEN(words); i++)
        if (strcasecmp(name, words[i]) == 0)
            return true;
    return filter_rule_find(name) || filter_action_find(name);
}

bool filter_parse(const char *file, const char *text, size_t len,
                  struct filter_set *set, char *err, size_t errlen)
{
    struct lexer lx = {.file = file,
                       .p = text,
                       .end = text + len,
                       .line = 1,
                       .col = 1,
                       .bol = true,
                       .err = err,
                       .errlen = errlen};
    memset(set, 0, sizeof(*set));
    size_t cap = 0;
    next(&lx);
    while (!lx.failed && lx.t != T_EOF) {
        if (lx.t != T_IDENT) {
            lx_error_at(&lx, lx.tline, lx.tcol,
                        "expected a filter name, found %s", tok_name(&lx));
            break;
        }
        struct filter f = {.line = lx.tline, .col = lx.tcol, .active = true};
        lx.nodes = 0;
        if (lx.tlen > FILTER_NAME_MAX) {
            lx_error_at(&lx, f.line, f.col, "filter name longer than %d",
                        FILTER_NAME_MAX);
            break;
        }
        if (reserved(lx.text)) {
            lx_error_at(&lx, f.line, f.col,
                        "'%s' is a reserved word, not a filter name", lx.text);
            break;
        }
        str_copy(f.name, sizeof(f.name), lx.text);
        for (size_t i = 0; i < set->count; i++)
            if (strcasecmp(set->filters[i].name, f.name) == 0)
                lx_error_at(&lx, f.line, f.col,
                            "duplicate filter name '%s' (line %u)", f.name,
                            set->filters[i].line);
        next(&lx);
        if (lx.t == T_BANG)
            f.active = false;
        else if (lx.t != T_COLON)
            lx_error_at(&lx, lx.tline, lx.tcol,
                        "expected ':' (or '!' for an inactive filter) after "
                        "the filter name, found %s",
                        tok_name(&lx));
        next(&lx);
        if (!lx.failed && !is_kw(&lx, "if"))
            lx_error_at(&lx, lx.tline, lx.tcol, "expected 'if', found %s",
                        tok_name(&lx));
        if (lx.failed)
            break;
        next(&lx);
        f.cond = parse_or(&lx);
        if (f.cond)
            f.then_ = parse_block(&lx);
        if (!lx.failed && is_kw(&lx, "else")) {
            next(&lx);
            if (is_kw(&lx, "if")) {
                unsigned l2 = lx.tline, c2 = lx.tcol;
                next(&lx);
                f.else_ = parse_if(&lx, l2, c2);
            } else {
                f.else_ = parse_block(&lx);
            }
        }
        if (!lx.failed && lx.t == T_SEMI)
            next(&lx); /* "};" as some exports write */
        if (lx.failed) {
            filter_clear(&f);
            break;
        }
        if (set->count == FILTER_MAX_FILTERS) {
            lx_error_at(&lx, f.line, f.col, "more than %d filters",
                        FILTER_MAX_FILTERS);
            filter_clear(&f);
            break;
        }
        set->filters =
            xgrow(set->filters, &cap, set->count + 1, sizeof(*set->filters));
        set->filters[set->count++] = f;
    }
    free(lx.text);
    if (lx.failed) {
        filter_set_free(set);
        return false;
    }
    return true;
}
