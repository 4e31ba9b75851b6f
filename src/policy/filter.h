/*
 * filter.h - message filters: the appliance's filter language, parsed into
 * a tree (docs/filters.md).
 *
 *   name: if <rule expression> { <action>; ... } [else { ... }]
 *   name! if ...                     an inactive filter
 *
 * Rule expressions combine rules with and / or / not (any case) and
 * parentheses; `and` binds tighter than `or`. A rule is a name, optional
 * arguments in parentheses, and for most rules a comparison:
 *
 *   subject == "^\\[SPAM\\]"         regex (PCRE2; search, case-sensitive,
 *                                    "(?i)" for case-insensitive)
 *   rcpt-count > 10, body-size >= 5M numbers, sizes with b, k, M, G
 *   header("X-Tag")                  unary: the header exists
 *   remote-ip == "10.1.1.0/24"       the Host Access Table's address forms
 *
 * Action blocks hold actions (`drop();`, `insert-header("X", "v");`) and
 * nested if/else statements. Strings take single or double quotes (the
 * same on both ends) with backslash escapes as Python has them (an
 * unknown escape keeps its backslash, so "\." and "\\." both give \.).
 * `#` starts a comment to the end of the line; a line holding only `.`
 * (how the appliance's CLI ends a filter) is skipped wherever it stands.
 *
 * Every error names line and column. Pure: no I/O but the text given.
 */
#ifndef MOAT_POLICY_FILTER_H
#define MOAT_POLICY_FILTER_H

#include "core/util.h"
#include "policy/sender.h"

#define FILTER_NAME_MAX 64
#define FILTER_MAX_FILTERS 1000
#define FILTER_MAX_ARGS 4
#define FILTER_MAX_DEPTH 32    /* nesting of expressions and ifs */
#define FILTER_STRING_MAX 4096 /* bytes of one string literal */
#define FILTER_MAX_NODES                                                       \
    2000 /* rules, operators and statements in one                             \
            filter */

enum filter_op { FOP_NONE, FOP_EQ, FOP_NE, FOP_LT, FOP_LE, FOP_GT, FOP_GE };

enum filter_val_kind { FV_STRING, FV_NUMBER };

struct filter_value {
    enum filter_val_kind kind;
    char *s;    /* FV_STRING */
    uint64_t n; /* FV_NUMBER (sizes in bytes) */
    unsigned line, col;
};

/* What a rule's comparison value is. */
enum filter_rhs {
    FR_NONE,   /* unary only */
    FR_REGEX,  /* == / != a regex */
    FR_NUMBER, /* numeric comparison */
    FR_NAME,   /* == / != a name (listener, interface) */
    FR_HOSTS,  /* == / != a HAT address form */
    FR_DATE,   /* compared with "MM/DD/YYYY hh:mm:ss" */
    FR_ADDR,   /* == / != an IPv4 address (dnslist answer) */
};

struct filter_rule_def {
    const char *name;
    unsigned args_min, args_max;
    bool unary_ok; /* may stand without a comparison */
    enum filter_rhs rhs;
    bool arg0_regex;       /* the first argument is a regex */
    const char *arg_kinds; /* per argument: 's' string, 'n' number */
};

struct filter_expr {
    enum { FE_AND, FE_OR, FE_NOT, FE_RULE } kind;
    struct filter_expr *a, *b;          /* FE_AND/FE_OR: a, b; FE_NOT: a */
    const struct filter_rule_def *rule; /* FE_RULE */
    size_t nargs;
    struct filter_value args[FILTER_MAX_ARGS];
    enum filter_op op;
    struct filter_value rhs;
    void *re;             /* compiled regex (pcre2_code) of rhs or args[0] */
    struct sg_entry host; /* FR_HOSTS */
    int64_t when;         /* FR_DATE: seconds since the epoch, local time */
    unsigned line, col;
};

struct filter_action_def {
    const char *name;
    unsigned args_min, args_max;
    bool final;
};

struct filter_stmt {
    enum { FS_ACTION, FS_IF } kind;
    const struct filter_action_def *action; /* FS_ACTION */
    size_t nargs;
    struct filter_value args[FILTER_MAX_ARGS];
    void *re;                 /* edit-header-text: compiled args[1] */
    struct filter_expr *cond; /* FS_IF */
    struct filter_stmt *then_, *else_;
    struct filter_stmt *next;
    unsigned line, col;
};

struct filter {
    char name[FILTER_NAME_MAX + 1];
    bool active;
    struct filter_expr *cond;
    struct filter_stmt *then_, *else_;
    unsigned line, col;
};

struct filter_set {
    size_t count;
    struct filter *filters;
};

/* Parse a whole filter file. On error returns false with
 * "FILE:LINE:COL: reason" in err (file is the name given) and leaves set
 * empty. */
bool filter_parse(const char *file, const char *text, size_t len,
                  struct filter_set *set, char *err, size_t errlen);
void filter_set_free(struct filter_set *set);

/* The rule and action tables (for documentation and tests). */
const struct filter_rule_def *filter_rule_find(const char *name);
const struct filter_action_def *filter_action_find(const char *name);

#endif
