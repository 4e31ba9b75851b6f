/*
 * conf_value.c - typed values: one node checked and stored as one key.
 *
 * The key's row decides how a scalar is read: strings (quoted or bare),
 * booleans, plain numbers, sizes and times with UCL suffixes, enums,
 * listen addresses and CIDR lists. Numbers and booleans must be bare
 * (a quoted "10" is a string, as in UCL). Every problem is reported with
 * the node's position and the key's name; a wrong suffix gets a hint.
 * Also here: the name checks and the did-you-mean helper.
 */
#include "conf/conf_node.h"

#include <ctype.h>
#include <stdlib.h>

#define FIELD(base, off, type) ((type *)((char *)(base) + (off)))

void conf_key_error(struct vctx *v, const struct conf_pos *pos, const char *key,
                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (v->where[0])
        conf_diag_error(v->d, pos, "%s in %s: %s", key, v->where, msg);
    else
        conf_diag_error(v->d, pos, "%s: %s", key, msg);
}

/* ---- numbers ---- */

enum unit_kind { UNIT_SIZE, UNIT_TIME };

struct unit {
    const char *name;
    enum unit_kind kind;
    uint64_t mult; /* 0 for ms: divided by 1000 instead */
    const char *word;
};

static const struct unit units[] = {
    {"k", UNIT_SIZE, 1000, "kilo"},
    {"m", UNIT_SIZE, 1000000, "mega"},
    {"g", UNIT_SIZE, 1000000000, "giga"},
    {"kb", UNIT_SIZE, 1024, "kibibytes"},
    {"mb", UNIT_SIZE, 1024 * 1024, "mebibytes"},
    {"gb", UNIT_SIZE, 1024 * 1024 * 1024, "gibibytes"},
    {"ms", UNIT_TIME, 0, "milliseconds"},
    {"s", UNIT_TIME, 1, "seconds"},
    {"min", UNIT_TIME, 60, "minutes"},
    {"h", UNIT_TIME, 3600, "hours"},
    {"d", UNIT_TIME, 86400, "days"},
    {"w", UNIT_TIME, 604800, "weeks"},
};

#define TIME_UNITS "s, min, h, d, w or ms"
#define SIZE_UNITS "k, m, g (x1000) or kb, mb, gb (x1024)"

struct number {
    uint64_t digits;
    const struct unit *unit; /* NULL if none */
};

/* "1,234,567" */
static void fmt_thousands(uint64_t v, char *out, size_t outlen)
{
    char digits[32];
    str_printf(digits, sizeof(digits), "%llu", (unsigned long long)v);
    size_t n = strlen(digits), j = 0;
    for (size_t i = 0; i < n && j + 2 < outlen; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            out[j++] = ',';
        out[j++] = digits[i];
    }
    out[j] = '\0';
}

/* Digits and an optional unit; returns NULL or why not. */
static const char *number_parse(const char *s, struct number *out)
{
    size_t i = 0;
    while (isdigit((unsigned char)s[i]))
        i++;
    if (i == 0)
        return "is not a number";
    if (!parse_u64(s, i, &out->digits))
        return "is too large";
    out->unit = NULL;
    if (s[i] == '\0')
        return NULL;
    for (size_t u = 0; u < ARRAY_LEN(units); u++) {
        if (str_ieq(s + i, units[u].name)) {
            out->unit = &units[u];
            return NULL;
        }
    }
    return "has an unknown suffix (sizes: " SIZE_UNITS "; times: " TIME_UNITS
           ")";
}

/* digits x mult, false on overflow. */
static bool scale(uint64_t digits, uint64_t mult, uint64_t *out)
{
    if (mult && digits > UINT64_MAX / mult)
        return false;
    *out = digits * mult;
    return true;
}

/* A size suffix on a time key: explain what was written. */
static void time_hint(struct vctx *v, const struct conf_key *k,
                      const struct conf_node *n, const struct number *num)
{
    uint64_t val;
    char th[40];
    if (!scale(num->digits, num->unit->mult, &val)) {
        conf_key_error(v, &n->pos, k->name,
                       "\"%s\" is a size; a time takes " TIME_UNITS, n->str);
        return;
    }
    fmt_thousands(val, th, sizeof(th));
    if (strcmp(num->unit->name, "m") == 0)
        conf_key_error(v, &n->pos, k->name,
                       "\"%s\" is %s (mega); for minutes write \"%llumin\"",
                       n->str, th, (unsigned long long)num->digits);
    else
        conf_key_error(v, &n->pos, k->name,
                       "\"%s\" is %s (%s), a size; a time takes " TIME_UNITS,
                       n->str, th, num->unit->word);
}

/* Check the suffix suits the key; compute the value. */
static bool number_value(struct vctx *v, const struct conf_key *k,
                         const struct conf_node *n, const struct number *num,
                         uint64_t *val)
{
    const struct unit *u = num->unit;
    if (u && k->type == KT_UINT) {
        conf_key_error(v, &n->pos, k->name,
                       "\"%s\": a plain number is "
                       "expected here, without a suffix",
                       n->str);
        return false;
    }
    if (u && k->type == KT_SIZE && u->kind == UNIT_TIME) {
        conf_key_error(v, &n->pos, k->name,
                       "\"%s\" is a time, but this is "
                       "a size in bytes (suffixes " SIZE_UNITS ")",
                       n->str);
        return false;
    }
    if (u && k->type == KT_TIME && u->kind == UNIT_SIZE) {
        time_hint(v, k, n, num);
        return false;
    }
    if (u && u->mult == 0) {
        if (num->digits % 1000 != 0) {
            conf_key_error(v, &n->pos, k->name,
                           "\"%s\" is not a whole number of seconds", n->str);
            return false;
        }
        *val = num->digits / 1000;
        return true;
    }
    if (!scale(num->digits, u ? u->mult : 1, val)) {
        conf_key_error(v, &n->pos, k->name, "\"%s\" is too large", n->str);
        return false;
    }
    return true;
}

static const char *unit_text(enum conf_key_type t)
{
    return t == KT_SIZE ? " bytes" : t == KT_TIME ? " seconds" : "";
}

/* KT_UINT, KT_SIZE, KT_TIME */
static bool set_number(struct vctx *v, const struct conf_key *k,
                       const struct conf_node *n, void *base)
{
    struct number num;
    uint64_t val;
    if (n->quoted) {
        conf_key_error(v, &n->pos, k->name,
                       "expects a number; remove the quotes around \"%s\"",
                       n->str);
        return false;
    }
    const char *why = number_parse(n->str, &num);
    if (why) {
        conf_key_error(v, &n->pos, k->name, "\"%s\" %s", n->str, why);
        return false;
    }
    if (!number_value(v, k, n, &num, &val))
        return false;
    if (val < k->min || val > k->max) {
        conf_key_error(v, &n->pos, k->name,
                       "%s%s%llu is out of range (%llu..%llu%s)",
                       num.unit ? n->str : "", num.unit ? " = " : "",
                       (unsigned long long)val, (unsigned long long)k->min,
                       (unsigned long long)k->max, unit_text(k->type));
        return false;
    }
    if (k->type == KT_SIZE)
        *FIELD(base, k->off, uint64_t) = val;
    else
        *FIELD(base, k->off, unsigned) = (unsigned)val;
    return true;
}

/* ---- other scalars ---- */

static bool set_bool(struct vctx *v, const struct conf_key *k,
                     const struct conf_node *n, void *base)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; !n->quoted && i < ARRAY_LEN(yes); i++) {
        if (str_ieq(n->str, yes[i]) || str_ieq(n->str, no[i])) {
            *FIELD(base, k->off, bool) = str_ieq(n->str, yes[i]);
            return true;
        }
    }
    conf_key_error(v, &n->pos, k->name,
                   "expects true or false (or yes/no, "
                   "on/off, without quotes), not \"%s\"",
                   n->str);
    return false;
}

static bool set_enum(struct vctx *v, const struct conf_key *k,
                     const struct conf_node *n, void *base)
{
    const char *const *names = k->aux;
    char list[128] = "";
    for (int i = 0; names[i]; i++) {
        if (strcmp(n->str, names[i]) == 0) {
            *FIELD(base, k->off, int) = i;
            return true;
        }
        size_t l = strlen(list);
        str_printf(list + l, sizeof(list) - l, "%s%s", i ? " or " : "",
                   names[i]);
    }
    conf_key_error(v, &n->pos, k->name, "expects %s, not \"%s\"", list, n->str);
    return false;
}

/* Length bounds, no control characters, the row's own check. */
static const char *string_problem(const struct conf_key *k,
                                  const struct conf_node *n, char *tmp,
                                  size_t tmplen)
{
    if (n->len < k->min)
        return "must not be empty";
    if (n->len > k->max) {
        str_printf(tmp, tmplen, "is longer than %llu bytes",
                   (unsigned long long)k->max);
        return tmp;
    }
    for (size_t i = 0; i < n->len; i++)
        if ((unsigned char)n->str[i] < 0x20 || n->str[i] == 0x7f)
            return "contains a control character";
    return k->check ? k->check(n->str) : NULL;
}

static bool set_string(struct vctx *v, const struct conf_key *k,
                       const struct conf_node *n, void *base)
{
    char tmp[64];
    const char *why = string_problem(k, n, tmp, sizeof(tmp));
    if (why) {
        conf_key_error(v, &n->pos, k->name, "\"%s\" %s", n->str, why);
        return false;
    }
    char **field = FIELD(base, k->off, char *);
    free(*field);
    *field = xstrdup(n->str);
    return true;
}

static bool set_address(struct vctx *v, const struct conf_key *k,
                        const struct conf_node *n, void *base)
{
    char err[128];
    struct netaddr *addr = FIELD(base, k->off2, struct netaddr);
    if (!netaddr_parse_hostport(n->str, addr, err, sizeof(err))) {
        conf_key_error(v, &n->pos, k->name, "\"%s\": %s", n->str, err);
        return false;
    }
    char **field = FIELD(base, k->off, char *);
    free(*field);
    *field = xstrdup(n->str);
    return true;
}

/* ---- lists of strings ---- */

void conf_strings_free(size_t *count, char ***list)
{
    for (size_t i = 0; *list && i < *count; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *count = 0;
}

/* A list (or one scalar) of strings, each checked like a KT_STRING of
 * 1..SG_ENTRY_MAX bytes; k->max bounds the number of entries. */
static bool set_strings(struct vctx *v, const struct conf_key *k,
                        const struct conf_node *n, void *base)
{
    const struct conf_node *first = n->type == NODE_ARRAY ? n->child : n;
    size_t want = n->type == NODE_ARRAY ? n->nchildren : 1;
    if (want > k->max) {
        conf_key_error(v, &n->pos, k->name, "more than %llu entries",
                       (unsigned long long)k->max);
        return false;
    }
    conf_strings_free(FIELD(base, k->off, size_t),
                      FIELD(base, k->off2, char **));
    char **list = xcalloc(want + 1, sizeof(char *));
    *FIELD(base, k->off2, char **) = list;
    size_t *count = FIELD(base, k->off, size_t);
    struct conf_key one = *k;
    one.min = 1;
    one.max = CONF_MAX_LIST_STRING;
    bool ok = true;
    for (const struct conf_node *e = first; e; e = e->next) {
        char tmp[64];
        if (e->type != NODE_SCALAR) {
            conf_key_error(v, &e->pos, k->name, "expects strings, not %s",
                           conf_node_kind(e));
            ok = false;
            continue;
        }
        const char *why = string_problem(&one, e, tmp, sizeof(tmp));
        if (why) {
            conf_key_error(v, &e->pos, k->name, "\"%s\" %s", e->str, why);
            ok = false;
        } else {
            list[(*count)++] = xstrdup(e->str);
        }
        if (e == n)
            break;
    }
    return ok;
}

void conf_value_copy(const struct conf_key *k, void *dst, size_t dst_base,
                     const void *src, size_t src_base)
{
    size_t d = k->off, sr = k->off - dst_base + src_base;
    switch (k->type) {
    case KT_STRING: {
        char **to = FIELD(dst, d, char *);
        char *const *from = FIELD(src, sr, char *);
        free(*to);
        *to = *from ? xstrdup(*from) : NULL;
        break;
    }
    case KT_STRINGS: {
        size_t d2 = k->off2, sr2 = k->off2 - dst_base + src_base;
        size_t n = *FIELD(src, sr, const size_t);
        char *const *from = *FIELD(src, sr2, char **);
        conf_strings_free(FIELD(dst, d, size_t), FIELD(dst, d2, char **));
        char **to = xcalloc(n + 1, sizeof(*to));
        for (size_t i = 0; i < n; i++)
            to[i] = xstrdup(from[i]);
        *FIELD(dst, d, size_t) = n;
        *FIELD(dst, d2, char **) = to;
        break;
    }
    case KT_BOOL:
        *FIELD(dst, d, bool) = *FIELD(src, sr, const bool);
        break;
    case KT_UINT:
    case KT_TIME:
        *FIELD(dst, d, unsigned) = *FIELD(src, sr, const unsigned);
        break;
    case KT_SIZE:
        *FIELD(dst, d, uint64_t) = *FIELD(src, sr, const uint64_t);
        break;
    case KT_ENUM:
        *FIELD(dst, d, int) = *FIELD(src, sr, const int);
        break;
    default:
        fatal("conf_value_copy: key type %d cannot be copied", (int)k->type);
    }
}

/* ---- dispatch ---- */

static bool set_block(struct vctx *v, const struct conf_key *k,
                      const struct conf_node *n, void *base)
{
    char saved[sizeof(v->where)];
    memcpy(saved, v->where, sizeof(saved));
    if (v->where[0])
        str_printf(v->where + strlen(v->where),
                   sizeof(v->where) - strlen(v->where), " %s", k->name);
    else
        str_copy(v->where, sizeof(v->where), k->name);
    conf_block_walk(v, n, k->aux, base, NULL);
    memcpy(v->where, saved, sizeof(saved));
    return true;
}

typedef bool (*setter_fn)(struct vctx *, const struct conf_key *,
                          const struct conf_node *, void *);

static const struct {
    setter_fn set;
    enum conf_node_type node;
    const char *want;
} setters[] = {
    [KT_STRING] = {set_string, NODE_SCALAR, "a string"},
    [KT_BOOL] = {set_bool, NODE_SCALAR, "true or false"},
    [KT_UINT] = {set_number, NODE_SCALAR, "a number"},
    [KT_SIZE] = {set_number, NODE_SCALAR, "a size"},
    [KT_TIME] = {set_number, NODE_SCALAR, "a time"},
    [KT_ENUM] = {set_enum, NODE_SCALAR, "a word"},
    [KT_ADDRESS] = {set_address, NODE_SCALAR, "an address \"ip:port\""},
    [KT_BLOCK] = {set_block, NODE_OBJECT, "a block { ... }"},
    [KT_STRINGS] = {set_strings, NODE_ARRAY, "a list of strings"},
};

bool conf_value_set(struct vctx *v, const struct conf_key *k,
                    const struct conf_node *n, void *base)
{
    if (k->type >= ARRAY_LEN(setters) || setters[k->type].set == NULL)
        return false;
    bool fits = n->type == setters[k->type].node ||
                (k->type == KT_STRINGS && n->type == NODE_SCALAR);
    if (n->label) {
        conf_key_error(v, &n->label_pos, k->name,
                       "takes no name: write %s { ... }", k->name);
        return false;
    }
    if (!fits) {
        conf_key_error(v, &n->pos, k->name, "expects %s, not %s",
                       setters[k->type].want, conf_node_kind(n));
        return false;
    }
    return setters[k->type].set(v, k, n, base);
}

bool conf_value_default(const struct conf_key *k, void *base)
{
    struct conf_diag d = {0};
    struct vctx v = {.d = &d};
    char *s = xstrdup(k->def);
    struct conf_node n = {.type = NODE_SCALAR, .str = s, .len = strlen(s)};
    n.pos.file = "(default)";
    bool ok = conf_value_set(&v, k, &n, base);
    free(s);
    return ok;
}

/* ---- name checks ---- */

void conf_where_set(struct vctx *v, const char *kind, const char *name)
{
    str_printf(v->where, sizeof(v->where), "%s \"%.64s%s\"", kind, name,
               strlen(name) > 64 ? "..." : "");
}

bool conf_named_block_ok(struct vctx *v, const struct conf_node *n,
                         const char *kind, const char *example)
{
    if (n->type == NODE_OBJECT && n->label)
        return true;
    conf_diag_error(v->d, &n->key_pos, "%s must be a named block: %s", kind,
                    example);
    return false;
}

const char *conf_check_hostname(const char *s)
{
    size_t label = 0;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            if (label == 0 || label > 63)
                return "is not a valid host name (labels of 1-63 letters, "
                       "digits and hyphens, separated by dots)";
            if (p[-1] == '-')
                return "is not a valid host name (a label ends with '-')";
            if (*p == '\0')
                return NULL;
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)*p) && *p != '-')
            return "is not a valid host name (only letters, digits, '-' "
                   "and '.')";
        if (label == 0 && *p == '-')
            return "is not a valid host name (a label starts with '-')";
        label++;
    }
}

const char *conf_check_listener_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return "must be 1 to 64 characters";
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
            return "may contain only letters, digits, '_', '.' and '-'";
    return NULL;
}

const char *conf_check_reply_text(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return "must be printable ASCII";
    return NULL;
}

/* ---- did you mean ---- */

#define SUGGEST_MAX 64

/* Optimal-string-alignment distance (a transposition counts once). */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    size_t d[SUGGEST_MAX + 1][SUGGEST_MAX + 1];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
                a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

const char *conf_suggest(const char *s, const char *const *names, size_t count)
{
    size_t ls = strlen(s), best = SIZE_MAX;
    const char *pick = NULL;
    if (ls > SUGGEST_MAX)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        size_t ln = strlen(names[i]);
        if (ln > SUGGEST_MAX)
            continue;
        size_t dist = edit_distance(s, ls, names[i], ln);
        size_t limit = ln / 3 > 1 ? ln / 3 : 1;
        if (dist <= limit && dist < best) {
            best = dist;
            pick = names[i];
        }
    }
    return pick;
}
