/*
 * filter_eval.h - running message filters over one message: the rules
 * evaluated against the envelope, the session and the message structure
 * (policy/mime.h), the actions carried out in order into a plan the caller
 * applies (docs/filters.md "Running filters").
 *
 * Semantics (the appliance's): active filters run in order; a filter's
 * condition chooses its block or its else block; actions accumulate
 * until a final one (drop, bounce, deliver, skip-filters) ends all
 * processing. Header actions change the header view at once, so later
 * rules (and later filters) see the headers as changed. Regex matches run
 * under a match limit: a pattern that hits it makes its rule false and
 * the run records a runtime error; nothing stops the message.
 *
 * Things that need the outside world come through env: DNS list answers
 * (looked up by the caller before the run), header-repeats counts and
 * random numbers. Pure otherwise.
 */
#ifndef MOAT_POLICY_FILTER_EVAL_H
#define MOAT_POLICY_FILTER_EVAL_H

#include "core/netaddr.h"
#include "policy/filter.h"
#include "policy/mime.h"

#define FILTER_MATCH_LIMIT 100000 /* PCRE2 match steps per regex test */
#define FILTER_DEPTH_LIMIT 1000   /* PCRE2 backtracking depth */

struct filter_env {
    const char *mail_from; /* "" for the null sender */
    size_t nrcpt;
    const char *const *rcpts;
    const char *sendergroup;      /* HAT sender group ("" if none) */
    const struct netaddr *remote; /* NULL if unknown */
    const char *listener, *interface;
    const char *auth_id; /* SMTP AUTH user, NULL if none */
    int64_t now;         /* seconds since the epoch */
    /* dnslist("zone"): is the client listed; answer gets the first A
     * record ("127.0.0.2"). NULL: never listed. */
    bool (*dnslist)(void *arg, const char *zone, char *answer, size_t len);
    /* header-repeats: messages with this value (direction "incoming",
     * "outgoing" or "" for both) in the last hour, this one counted. */
    unsigned (*repeats)(void *arg, const char *target, const char *value,
                        const char *direction);
    /* random(N): a number in 0..N-1. */
    uint64_t (*random)(void *arg, uint64_t n);
    void *arg;
};

enum filter_final {
    FF_NONE, /* no final action: on to the mail policies */
    FF_SKIP, /* skip-filters */
    FF_DROP,
    FF_BOUNCE,
    FF_DELIVER,
};

/* One action carried out, in order. */
struct filter_step {
    const struct filter *filter;
    const struct filter_stmt *stmt;
};

/* A header field of the view after the run. */
struct filter_header {
    char *name, *value;
    bool changed; /* inserted, or its value edited */
};

struct filter_result {
    enum filter_final final;
    const struct filter *final_filter; /* that set it */
    size_t nsteps;
    struct filter_step *steps;
    size_t nmatched; /* filters whose condition held */
    const struct filter **matched;
    size_t nerrors; /* runtime errors, "filter NAME:
                       line:col: why" */
    char **errors;
    size_t nheaders; /* the header view at the end */
    struct filter_header *headers;
    bool headers_changed;
};

/* Run the set over msg. Never fails; res must be freed, before the set
 * (its steps and filters point into it). */
void filter_run(const struct filter_set *set, const char *msg, size_t len,
                const struct filter_env *env, struct filter_result *res);
void filter_result_free(struct filter_result *res);
const char *filter_final_name(enum filter_final f);

#endif
