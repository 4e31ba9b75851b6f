/*
 * smtp_auth.c - SMTP AUTH on the server side (RFC 4954): PLAIN (RFC 4616)
 * and LOGIN, checked against the listener's smtp_auth_profile on worker
 * threads, failures counted per address. See docs/access.md "SMTP AUTH".
 */
#include "core/mlog.h"
#include "core/worker.h"
#include "policy/iptable.h"
#include "smtp/smtp_session.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CRYPT_HASH_COPY_MAX 512 /* a crypt(3) hash is under 384 bytes */
#define AUTH_THREADS 2          /* password checks at once */

enum { AUTH_MECH_NONE, AUTH_MECH_PLAIN, AUTH_MECH_LOGIN };

static const char *const mech_names[] = {"", "PLAIN", "LOGIN"};

/* A password check on a worker thread. It owns copies of everything it
 * needs: a commit may free the profile while the check runs. */
struct auth_job {
    struct session *s; /* NULL once the session is gone */
    struct worker_job *wj;
    char hash[CRYPT_HASH_COPY_MAX];
    bool known; /* the user exists (hash is theirs) */
    char password[AUTH_FIELD_MAX + 1];
    bool ok;
};

/* Is AUTH offered to this session? */
bool smtp_auth_offered(const struct session *s)
{
    return s->pp->smtp_auth != POLICY_AUTH_OFF && s->lc->auth &&
           s->lc->auth->db && (!s->pp->auth_requires_tls || s->tls) &&
           !s->authed;
}

void smtp_auth_reset(struct session *s)
{
    s->auth_mech = AUTH_MECH_NONE;
    s->auth_step = 0;
    explicit_bzero(s->auth_user, sizeof(s->auth_user));
}

static void auth_work(void *arg)
{
    struct auth_job *j = arg;
    j->ok =
        auth_check_password(j->known ? j->hash : NULL, j->password) && j->known;
    explicit_bzero(j->password, sizeof(j->password));
}

static void auth_done(void *arg, bool cancelled)
{
    struct auth_job *j = arg;
    struct session *s = j->s;
    bool ok = j->ok;
    explicit_bzero(j, sizeof(*j));
    free(j);
    if (cancelled || s == NULL || s->state != SS_AUTHCHECK)
        return;
    s->auth_job = NULL;
    const char *mech = mech_names[s->auth_mech];
    const char *profile = s->lc->auth->name;
    s->state = SS_CMD;
    if (ok) {
        mlog_auth(s->icid, true, s->auth_user, mech, profile);
        s->authed = true;
        s->relay = true; /* an authenticated client may relay */
        ss_reply_raw(s, 235, "2.7.0", "Authentication successful");
    } else {
        mlog_auth(s->icid, false, s->auth_user, mech, profile);
        ss_reply_raw(s, 535, "5.7.8", "Authentication credentials invalid");
        uint64_t *n = iptable_counter(s->srv->ip_authfail, &s->peer, 0,
                                      time(NULL), s->conf->rate_limit_period);
        if (n && ++*n >= s->conf->auth_max_failures) {
            mlog_icid_disconnected(s->icid, s->ip,
                                   "too many authentication failures");
            ss_reply_raw(
                s, 421, "4.7.0",
                "Too many authentication failures, closing connection");
            smtp_auth_reset(s);
            ss_close_after_flush(s);
            return;
        }
    }
    smtp_auth_reset(s);
    ss_process(s);
}

/* Check user/password off the event loop. */
static void auth_check(struct session *s, const char *password)
{
    struct smtp_server *srv = s->srv;
    if (srv->auth_pool == NULL)
        srv->auth_pool = worker_pool_new(srv->base, AUTH_THREADS);
    struct auth_job *j = xcalloc(1, sizeof(*j));
    j->s = s;
    const char *hash = auth_db_hash(s->lc->auth->db, s->auth_user);
    j->known = hash && strlen(hash) < sizeof(j->hash);
    if (j->known)
        str_copy(j->hash, sizeof(j->hash), hash);
    str_copy(j->password, sizeof(j->password), password);
    j->wj = srv->auth_pool
                ? worker_submit(srv->auth_pool, auth_work, auth_done, j)
                : NULL;
    if (j->wj == NULL) {
        explicit_bzero(j, sizeof(*j));
        free(j);
        mlog_system(MLOG_WARNING,
                    "ICID %llu AUTH: password check could not "
                    "be queued",
                    (unsigned long long)s->icid);
        smtp_auth_reset(s);
        ss_reply_raw(s, 454, "4.7.0", "Temporary authentication failure");
        return;
    }
    s->auth_job = j;
    s->state = SS_AUTHCHECK;
}

/* Forget a check in flight (the session is going away). */
void smtp_auth_abandon(struct session *s)
{
    if (s->auth_job) {
        s->auth_job->s = NULL;
        worker_cancel(s->auth_job->wj);
        s->auth_job = NULL;
    }
    smtp_auth_reset(s);
}

/* One client response (a base64 line, or "*"), or the initial response
 * of the AUTH command. */
void smtp_auth_response(struct session *s, const char *line)
{
    char pass[AUTH_FIELD_MAX + 1];
    const char *why = NULL;
    s->state = SS_CMD;
    if (strcmp(line, "*") == 0) {
        smtp_auth_reset(s);
        ss_reply_raw(s, 501, "5.7.0", "Authentication aborted");
        return;
    }
    if (s->auth_mech == AUTH_MECH_PLAIN) {
        bool dec = auth_plain_decode(line, s->auth_user, sizeof(s->auth_user),
                                     pass, sizeof(pass), &why);
        if (!dec && why && strcmp(why, AUTH_WHY_AUTHZID) == 0) {
            /* Well formed, but acting for someone else: a failure. */
            mlog_auth(s->icid, false, s->auth_user, "PLAIN", s->lc->auth->name);
            smtp_auth_reset(s);
            explicit_bzero(pass, sizeof(pass));
            ss_reply_raw(s, 535, "5.7.8", "Authentication credentials invalid");
            return;
        }
        if (!dec) {
            mlog_icid_bad_syntax(s->icid, "AUTH PLAIN", 10);
            smtp_auth_reset(s);
            ss_error_reply(s, R_SYNTAX);
            return;
        }
        auth_check(s, pass);
        explicit_bzero(pass, sizeof(pass));
        return;
    }
    /* LOGIN: the user name, then the password. */
    char *out = s->auth_step == 0 ? s->auth_user : pass;
    size_t outlen = s->auth_step == 0 ? sizeof(s->auth_user) : sizeof(pass);
    if (!auth_login_decode(line, out, outlen, &why) ||
        (s->auth_step == 0 && strpbrk(out, "\x01\x02\x03\x04\x05\x06\x07"
                                           "\x08\x09\x0a\x0b\x0c\x0d\x0e"
                                           "\x0f\x10\x11\x12\x13\x14\x15"
                                           "\x16\x17\x18\x19\x1a\x1b\x1c"
                                           "\x1d\x1e\x1f\x7f"))) {
        mlog_icid_bad_syntax(s->icid, "AUTH LOGIN", 10);
        smtp_auth_reset(s);
        explicit_bzero(pass, sizeof(pass));
        ss_error_reply(s, R_SYNTAX);
        return;
    }
    if (s->auth_step == 0) {
        s->auth_step = 1;
        s->state = SS_AUTH;
        ss_reply_raw(s, 334, NULL, "UGFzc3dvcmQ6"); /* "Password:" */
        return;
    }
    auth_check(s, pass);
    explicit_bzero(pass, sizeof(pass));
}

void smtp_cmd_auth(struct session *s, const struct smtp_cmd *c)
{
    if (!smtp_auth_offered(s) && !s->authed) {
        ss_error_reply(s, R_AUTH_NOT_AVAIL);
        return;
    }
    if (s->helo == NULL || !s->esmtp) {
        ss_error_reply(s, R_NEED_HELO);
        return;
    }
    if (s->authed) {
        ss_error_reply(s, R_AUTH_ALREADY);
        return;
    }
    if (s->txn) {
        ss_error_reply(s, R_AUTH_IN_TXN);
        return;
    }
    uint64_t fails = iptable_peek(s->srv->ip_authfail, &s->peer, 0, time(NULL),
                                  s->conf->rate_limit_period);
    if (fails >= s->conf->auth_max_failures) {
        mlog_icid_disconnected(s->icid, s->ip,
                               "too many authentication failures");
        ss_reply_raw(s, 421, "4.7.0",
                     "Too many authentication failures, closing connection");
        ss_close_after_flush(s);
        return;
    }
    char mech[16] = "";
    const char *sp = strchr(c->arg, ' ');
    size_t mlen = sp ? (size_t)(sp - c->arg) : strlen(c->arg);
    if (mlen == 0 || mlen >= sizeof(mech)) {
        ss_error_reply(s, R_SYNTAX);
        return;
    }
    memcpy(mech, c->arg, mlen);
    const char *initial = sp ? sp + 1 : NULL;
    if (str_ieq(mech, "PLAIN"))
        s->auth_mech = AUTH_MECH_PLAIN;
    else if (str_ieq(mech, "LOGIN"))
        s->auth_mech = AUTH_MECH_LOGIN;
    else {
        ss_error_reply(s, R_AUTH_MECH);
        return;
    }
    if (initial && strcmp(initial, "=") == 0)
        initial = ""; /* an empty initial response (RFC 4954 4) */
    if (initial && (initial[0] || s->auth_mech == AUTH_MECH_PLAIN)) {
        if (initial[0] == '\0') {
            /* PLAIN with an empty response cannot succeed. */
            smtp_auth_reset(s);
            ss_error_reply(s, R_SYNTAX);
            return;
        }
        smtp_auth_response(s, initial);
        return;
    }
    s->state = SS_AUTH;
    ss_reply_raw(s, 334, NULL,
                 s->auth_mech == AUTH_MECH_PLAIN ? "" : "VXNlcm5hbWU6");
}
