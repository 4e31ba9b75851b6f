/*
 * filter_eval.c - running message filters (see filter_eval.h).
 */
#include "policy/filter_eval.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

struct run {
    const struct filter_set *set;
    const char *msg;
    size_t len;
    const struct filter_env *env;
    struct filter_result *res;
    struct mime_msg mime;
    const struct filter *cur;
    pcre2_match_context *mctx;
    pcre2_match_data *md;
    size_t hcap, scap, mcap, ecap;
    /* Decoded text of each part, made on first use. */
    char **text;
    size_t *text_len;
};

static void run_error(struct run *r, unsigned line, unsigned col,
                      const char *fmt, ...) MOAT_PRINTF(4, 5);
static void run_error(struct run *r, unsigned line, unsigned col,
                      const char *fmt, ...)
{
    struct filter_result *res = r->res;
    if (res->nerrors >= 100)
        return;
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    res->errors =
        xgrow(res->errors, &r->ecap, res->nerrors + 1, sizeof(*res->errors));
    res->errors[res->nerrors++] = xasprintf(
        "filter %s: %u:%u: %s", r->cur ? r->cur->name : "?", line, col, why);
}

/* Does re match s (a search, as Python's re.search)? A match limit hit is
 * a runtime error and counts as no match. */
static bool re_match(struct run *r, const void *re, const char *s, size_t n,
                     unsigned line, unsigned col)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, r->md, r->mctx);
    if (rc >= 0)
        return true;
    if (rc == PCRE2_ERROR_NOMATCH)
        return false;
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(rc, msg, sizeof(msg));
    run_error(r, line, col, "regex not evaluated: %s", (const char *)msg);
    return false;
}

/* ---- the header view ---- */

static const struct filter_header *hdr_first(struct run *r, const char *name)
{
    for (size_t i = 0; i < r->res->nheaders; i++)
        if (strcasecmp(r->res->headers[i].name, name) == 0)
            return &r->res->headers[i];
    return NULL;
}

/* == / != over every field called name: == is true when one matches;
 * != when none does (a missing header included). */
static bool hdr_test(struct run *r, const struct filter_expr *e,
                     const char *name)
{
    bool any = false;
    for (size_t i = 0; i < r->res->nheaders && !any; i++) {
        const struct filter_header *h = &r->res->headers[i];
        if (strcasecmp(h->name, name) == 0)
            any =
                re_match(r, e->re, h->value, strlen(h->value), e->line, e->col);
    }
    return e->op == FOP_NE ? !any : any;
}

/* ---- rules ---- */

static bool cmp_num(enum filter_op op, uint64_t a, uint64_t b)
{
    switch (op) {
    case FOP_EQ:
        return a == b;
    case FOP_NE:
        return a != b;
    case FOP_LT:
        return a < b;
    case FOP_LE:
        return a <= b;
    case FOP_GT:
        return a > b;
    case FOP_GE:
        return a >= b;
    case FOP_NONE:
        break;
    }
    return false;
}

/* Regex over a single string, == or !=. */
static bool re_test(struct run *r, const struct filter_expr *e, const char *s)
{
    bool m = re_match(r, e->re, s, strlen(s), e->line, e->col);
    return e->op == FOP_NE ? !m : m;
}

static const char *part_text(struct run *r, size_t i, size_t *n)
{
    if (r->text == NULL) {
        r->text = xcalloc(r->mime.nparts + 1, sizeof(*r->text));
        r->text_len = xcalloc(r->mime.nparts + 1, sizeof(*r->text_len));
    }
    if (r->text[i] == NULL) {
        struct buf b = {0};
        mime_decode(&r->mime.parts[i], r->msg, &b);
        buf_putc(&b, '\0');
        r->text_len[i] = b.len - 1;
        r->text[i] = b.data;
    }
    *n = r->text_len[i];
    return r->text[i];
}

/* body-contains / only-body-contains: matching lines, at least n. */
static bool body_contains(struct run *r, const struct filter_expr *e,
                          bool attachments)
{
    uint64_t want = e->nargs > 1 ? e->args[1].n : 1;
    if (want == 0)
        want = 1;
    uint64_t hits = 0;
    for (size_t i = 0; i < r->mime.nparts && hits < want; i++) {
        if (!attachments && r->mime.parts[i].attachment)
            continue;
        size_t n;
        const char *t = part_text(r, i, &n);
        /* Line by line: no match across a line end. */
        for (size_t off = 0; off < n && hits < want;) {
            const char *nl = memchr(t + off, '\n', n - off);
            size_t end = nl ? (size_t)(nl - t) : n;
            size_t l = end - off;
            if (l && t[off + l - 1] == '\r')
                l--;
            if (re_match(r, e->re, t + off, l, e->line, e->col))
                hits++;
            off = end + 1;
        }
    }
    return hits >= want;
}

/* The local part (before the last '@'), sieved: cut at the last sieve
 * character. */
static void local_sieved(const char *a, const char *sieve, char *out,
                         size_t len)
{
    const char *at = strrchr(a, '@');
    size_t n = at ? (size_t)(at - a) : strlen(a);
    if (n >= len)
        n = len - 1;
    memcpy(out, a, n);
    out[n] = '\0';
    if (sieve && sieve[0]) {
        char *cut = strrchr(out, sieve[0]);
        if (cut)
            *cut = '\0';
    }
}

/* The address inside "Name <a@b>" or the whole value. */
static void header_addr(const char *v, char *out, size_t len)
{
    const char *lt = strrchr(v, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    if (lt && gt)
        str_printf(out, len, "%.*s", (int)(gt - lt - 1), lt + 1);
    else
        str_copy(out, len, v);
}

static bool auth_matches_one(const char *auth, const char *addr,
                             const char *sieve)
{
    if (addr == NULL || addr[0] == '\0')
        return false;
    char la[256], lb[256];
    if (strchr(auth, '@') == NULL) {
        local_sieved(auth, NULL, la, sizeof(la));
        local_sieved(addr, sieve, lb, sizeof(lb));
        return strcasecmp(la, lb) == 0;
    }
    local_sieved(auth, NULL, la, sizeof(la));
    local_sieved(addr, sieve, lb, sizeof(lb));
    const char *da = strrchr(auth, '@'), *db = strrchr(addr, '@');
    return strcasecmp(la, lb) == 0 && db && strcasecmp(da, db) == 0;
}

static bool auth_id_matches(struct run *r, const struct filter_expr *e)
{
    const char *auth = r->env->auth_id;
    if (auth == NULL || auth[0] == '\0')
        return false;
    const char *target = e->args[0].s;
    const char *sieve = e->nargs > 1 ? e->args[1].s : NULL;
    bool any = strcasecmp(target, "*Any") == 0;
    char a[512];
    if ((any || strcasecmp(target, "*EnvelopeFrom") == 0) &&
        auth_matches_one(auth, r->env->mail_from, sieve))
        return true;
    const char *names[] = {"From", "Sender"};
    for (size_t k = 0; k < ARRAY_LEN(names); k++) {
        bool want = any ||
                    (k == 0 && strcasecmp(target, "*FromAddress") == 0) ||
                    (k == 1 && strcasecmp(target, "*Sender") == 0);
        if (!want)
            continue;
        for (size_t i = 0; i < r->res->nheaders; i++) {
            const struct filter_header *h = &r->res->headers[i];
            if (strcasecmp(h->name, names[k]) != 0)
                continue;
            header_addr(h->value, a, sizeof(a));
            if (auth_matches_one(auth, a, sieve))
                return true;
        }
    }
    return false;
}

static bool eval(struct run *r, const struct filter_expr *e);

static bool has_repeats(const struct filter_expr *e)
{
    if (e == NULL)
        return false;
    if (e->kind == FE_RULE)
        return strcmp(e->rule->name, "header-repeats") == 0;
    return has_repeats(e->a) || has_repeats(e->b);
}

static bool eval_rule(struct run *r, const struct filter_expr *e)
{
    const char *n = e->rule->name;
    const struct filter_env *env = r->env;
    if (strcmp(n, "true") == 0)
        return true;
    if (strcmp(n, "valid") == 0)
        return r->mime.valid;
    if (strcmp(n, "subject") == 0) {
        const struct filter_header *h = hdr_first(r, "Subject");
        return re_test(r, e, h ? h->value : "");
    }
    if (strcmp(n, "header") == 0) {
        if (e->op == FOP_NONE)
            return hdr_first(r, e->args[0].s) != NULL;
        return hdr_test(r, e, e->args[0].s);
    }
    if (strcmp(n, "mail-from") == 0)
        return re_test(r, e, env->mail_from ? env->mail_from : "");
    if (strcmp(n, "rcpt-to") == 0) {
        /* Message level: one recipient matching is enough. */
        bool any = false;
        for (size_t i = 0; i < env->nrcpt && !any; i++)
            any = re_match(r, e->re, env->rcpts[i], strlen(env->rcpts[i]),
                           e->line, e->col);
        return e->op == FOP_NE ? !any : any;
    }
    if (strcmp(n, "sendergroup") == 0)
        return re_test(r, e, env->sendergroup ? env->sendergroup : "");
    if (strcmp(n, "rcpt-count") == 0)
        return cmp_num(e->op, env->nrcpt, e->rhs.n);
    if (strcmp(n, "body-size") == 0)
        return cmp_num(e->op, r->len, e->rhs.n);
    if (strcmp(n, "attachment-filename") == 0 ||
        strcmp(n, "attachment-type") == 0) {
        bool fname = n[11] == 'f';
        bool any = false;
        for (size_t i = 0; i < r->mime.nparts && !any; i++) {
            const struct mime_part *p = &r->mime.parts[i];
            if (!p->attachment)
                continue;
            const char *s = fname ? p->filename : p->type;
            if (fname && s[0] == '\0')
                continue;
            any = re_match(r, e->re, s, strlen(s), e->line, e->col);
        }
        return e->op == FOP_NE ? !any : any;
    }
    if (strcmp(n, "attachment-size") == 0) {
        /* Any attachment, measured before decoding. */
        for (size_t i = 0; i < r->mime.nparts; i++)
            if (r->mime.parts[i].attachment &&
                cmp_num(e->op, r->mime.parts[i].body_len, e->rhs.n))
                return true;
        return false;
    }
    if (strcmp(n, "body-contains") == 0)
        return body_contains(r, e, true);
    if (strcmp(n, "only-body-contains") == 0)
        return body_contains(r, e, false);
    if (strcmp(n, "remote-ip") == 0) {
        bool m = env->remote && sg_match_addr(&e->host, env->remote);
        return e->op == FOP_NE ? !m : m;
    }
    if (strcmp(n, "recv-listener") == 0 || strcmp(n, "recv-int") == 0) {
        const char *v = n[5] == 'l' ? env->listener : env->interface;
        bool m = v && strcmp(v, e->rhs.s) == 0;
        return e->op == FOP_NE ? !m : m;
    }
    if (strcmp(n, "smtp-auth-id-matches") == 0)
        return auth_id_matches(r, e);
    if (strcmp(n, "date") == 0)
        return cmp_num(e->op, (uint64_t)env->now, (uint64_t)e->when);
    if (strcmp(n, "random") == 0) {
        uint64_t v = env->random && e->args[0].n
                         ? env->random(env->arg, e->args[0].n) % e->args[0].n
                         : 0;
        return e->op == FOP_NONE ? v != 0 : cmp_num(e->op, v, e->rhs.n);
    }
    if (strcmp(n, "dnslist") == 0) {
        char ans[64] = "";
        bool listed = env->dnslist &&
                      env->dnslist(env->arg, e->args[0].s, ans, sizeof(ans));
        if (e->op == FOP_NONE)
            return listed;
        bool m = listed && strcmp(ans, e->rhs.s) == 0;
        return e->op == FOP_NE ? !m : m;
    }
    if (strcmp(n, "header-repeats") == 0) {
        const char *target = e->args[0].s;
        const char *value;
        if (strcasecmp(target, "subject") == 0) {
            const struct filter_header *h = hdr_first(r, "Subject");
            value = h ? h->value : "";
            if (value[0] == '\0')
                return false; /* empty subjects are not counted */
        } else {
            value = env->mail_from ? env->mail_from : "";
        }
        const char *dir = e->nargs > 2 ? e->args[2].s : "";
        unsigned c =
            env->repeats ? env->repeats(env->arg, target, value, dir) : 0;
        return c >= e->args[1].n;
    }
    run_error(r, e->line, e->col, "rule %s cannot be evaluated", n);
    return false;
}

static bool eval(struct run *r, const struct filter_expr *e)
{
    switch (e->kind) {
    case FE_NOT:
        return !eval(r, e->a);
    case FE_AND:
    case FE_OR: {
        /* header-repeats counts the message when evaluated: the other
         * side goes first, and it is skipped when not needed (as the
         * appliance does). */
        const struct filter_expr *x = e->a, *y = e->b;
        if (has_repeats(x) && !has_repeats(y)) {
            x = e->b;
            y = e->a;
        }
        bool v = eval(r, x);
        if (e->kind == FE_AND ? !v : v)
            return v;
        return eval(r, y);
    }
    case FE_RULE:
        return eval_rule(r, e);
    }
    return false;
}

/* ---- actions ---- */

static void add_step(struct run *r, const struct filter_stmt *s)
{
    struct filter_result *res = r->res;
    res->steps =
        xgrow(res->steps, &r->scap, res->nsteps + 1, sizeof(*res->steps));
    res->steps[res->nsteps++] = (struct filter_step){r->cur, s};
}

static void header_edit(struct run *r, const struct filter_stmt *s)
{
    const char *name = s->args[0].s, *repl = s->args[2].s;
    for (size_t i = 0; i < r->res->nheaders; i++) {
        struct filter_header *h = &r->res->headers[i];
        if (strcasecmp(h->name, name) != 0)
            continue;
        PCRE2_SIZE outlen = strlen(h->value) * 2 + strlen(repl) * 4 + 64;
        for (int tries = 0; tries < 2; tries++) {
            PCRE2_UCHAR *out = xmalloc(outlen + 1);
            PCRE2_SIZE got = outlen;
            int rc = pcre2_substitute(
                s->re, (PCRE2_SPTR)h->value, PCRE2_ZERO_TERMINATED, 0,
                PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH,
                r->md, r->mctx, (PCRE2_SPTR)repl, PCRE2_ZERO_TERMINATED, out,
                &got);
            if (rc == PCRE2_ERROR_NOMEMORY && tries == 0) {
                free(out);
                outlen = got;
                continue;
            }
            if (rc > 0) {
                free(h->value);
                out[got] = '\0';
                h->value = (char *)out;
                h->changed = true;
                r->res->headers_changed = true;
            } else {
                free(out);
                if (rc < 0) {
                    PCRE2_UCHAR msg[160];
                    pcre2_get_error_message(rc, msg, sizeof(msg));
                    run_error(r, s->line, s->col,
                              "edit-header-text not done: %s",
                              (const char *)msg);
                }
            }
            break;
        }
    }
}

/* Run a list of statements; false when a final action ended the run. */
static bool run_block(struct run *r, const struct filter_stmt *s)
{
    for (; s; s = s->next) {
        if (s->kind == FS_IF) {
            const struct filter_stmt *b =
                eval(r, s->cond) ? s->then_ : s->else_;
            if (!run_block(r, b))
                return false;
            continue;
        }
        const char *n = s->action->name;
        struct filter_result *res = r->res;
        add_step(r, s);
        if (strcmp(n, "strip-header") == 0) {
            size_t o = 0;
            for (size_t i = 0; i < res->nheaders; i++) {
                if (strcasecmp(res->headers[i].name, s->args[0].s) == 0) {
                    free(res->headers[i].name);
                    free(res->headers[i].value);
                    res->headers_changed = true;
                } else {
                    res->headers[o++] = res->headers[i];
                }
            }
            res->nheaders = o;
        } else if (strcmp(n, "insert-header") == 0) {
            res->headers = xgrow(res->headers, &r->hcap, res->nheaders + 1,
                                 sizeof(*res->headers));
            res->headers[res->nheaders++] = (struct filter_header){
                xstrdup(s->args[0].s), xstrdup(s->args[1].s), true};
            res->headers_changed = true;
        } else if (strcmp(n, "edit-header-text") == 0) {
            header_edit(r, s);
        } else if (s->action->final) {
            res->final = strcmp(n, "drop") == 0      ? FF_DROP
                         : strcmp(n, "bounce") == 0  ? FF_BOUNCE
                         : strcmp(n, "deliver") == 0 ? FF_DELIVER
                                                     : FF_SKIP;
            res->final_filter = r->cur;
            return false;
        }
    }
    return true;
}

void filter_run(const struct filter_set *set, const char *msg, size_t len,
                const struct filter_env *env, struct filter_result *res)
{
    memset(res, 0, sizeof(*res));
    struct run r = {.set = set, .msg = msg, .len = len, .env = env, .res = res};
    mime_parse(msg, len, &r.mime);
    res->headers = xcalloc(r.mime.nheaders + 1, sizeof(*res->headers));
    r.hcap = r.mime.nheaders + 1;
    for (size_t i = 0; i < r.mime.nheaders; i++)
        res->headers[res->nheaders++] =
            (struct filter_header){xstrdup(r.mime.headers[i].name),
                                   xstrdup(r.mime.headers[i].value), false};
    r.mctx = pcre2_match_context_create(NULL);
    r.md = pcre2_match_data_create(32, NULL);
    pcre2_set_match_limit(r.mctx, FILTER_MATCH_LIMIT);
    pcre2_set_depth_limit(r.mctx, FILTER_DEPTH_LIMIT);
    for (size_t i = 0; i < set->count; i++) {
        const struct filter *f = &set->filters[i];
        if (!f->active)
            continue;
        r.cur = f;
        bool c = eval(&r, f->cond);
        if (c) {
            res->matched = xgrow(res->matched, &r.mcap, res->nmatched + 1,
                                 sizeof(*res->matched));
            res->matched[res->nmatched++] = f;
        }
        if (!run_block(&r, c ? f->then_ : f->else_))
            break;
    }
    if (r.text) {
        for (size_t i = 0; i <= r.mime.nparts; i++)
            free(r.text[i]);
        free(r.text);
        free(r.text_len);
    }
    pcre2_match_data_free(r.md);
    pcre2_match_context_free(r.mctx);
    mime_free(&r.mime);
}

void filter_result_free(struct filter_result *res)
{
    for (size_t i = 0; i < res->nheaders; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
    free(res->headers);
    free(res->steps);
    free(res->matched);
    for (size_t i = 0; i < res->nerrors; i++)
        free(res->errors[i]);
    free(res->errors);
    memset(res, 0, sizeof(*res));
}

const char *filter_final_name(enum filter_final f)
{
    switch (f) {
    case FF_NONE:
        return "none";
    case FF_SKIP:
        return "skip-filters";
    case FF_DROP:
        return "drop";
    case FF_BOUNCE:
        return "bounce";
    case FF_DELIVER:
        return "deliver";
    }
    return "?";
}
