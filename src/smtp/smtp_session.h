/*
 * smtp_session.h - one inbound SMTP session, shared by the files that
 * implement it (private to src/smtp): smtp_session.c (the state machine,
 * the commands of RFC 5321, the Host Access Table at connect time),
 * smtp_auth.c (SMTP AUTH) and smtp_starttls.c (STARTTLS).
 */
#ifndef MOAT_SMTP_SESSION_H
#define MOAT_SMTP_SESSION_H

#include "core/buf.h"
#include "core/netaddr.h"
#include "delivery/resolve.h"
#include "policy/auth.h"
#include "smtp/smtp_cmd.h"
#include "smtp/smtp_data.h"
#include "smtp/smtp_hat.h"
#include "smtp/smtp_internal.h"
#include "smtp/smtp_reply.h"

#include <event2/bufferevent.h>

#define INPUT_HIGH (256 * 1024) /* stop reading the socket above this */

struct auth_job;

enum sstate {
    SS_HAT,          /* looking the client up before the greeting */
    SS_LOOKUP,       /* a command waits for a DNS answer (reads nothing) */
    SS_AUTH,         /* reading an AUTH response line */
    SS_AUTHCHECK,    /* a password is being checked (reads nothing) */
    SS_TLSHANDSHAKE, /* STARTTLS accepted, TLS handshake under way */
    SS_CMD,          /* waiting for a command */
    SS_DATA,         /* reading DATA content */
    SS_BDAT,         /* reading a BDAT chunk */
    SS_COMMIT,       /* message handed to the spool, waiting for the flush */
    SS_CLOSING,      /* last reply queued; freed once it is written */
};

/* One mail transaction, from MAIL to the end of data or RSET. */
struct txn {
    uint64_t mid;
    char *from;
    struct smtp_mail_params params;
    size_t nrcpt, rcpt_cap;
    char **rcpts;
    struct spool_msg *msg; /* open spool file, NULL until DATA/BDAT */
    struct smtp_data scan;
    bool scanning;
    struct buf out; /* scanner output waiting for the spool */
    int spool_err;  /* first spool error, 0 if none */
    bool too_big;
    bool bdat;          /* content arrives by BDAT */
    uint64_t bdat_left; /* bytes of the current chunk still to read */
    bool bdat_last;
};

struct session {
    LIST_ENTRY(session) link;
    struct smtp_server *srv;
    struct listener *lis;
    struct moat_conf *conf; /* snapshot this session runs under */
    const struct conf_listener *lc;
    struct bufferevent *bev;
    struct event *life_timer;
    uint64_t icid;
    char ip[INET6_ADDRSTRLEN];
    struct netaddr peer;
    char *helo;
    enum sstate state;
    bool esmtp;
    bool relay;      /* HAT rule RELAY (or AUTH): RAT not consulted */
    bool hat_reject; /* HAT REJECT delayed to RCPT */
    bool ip_counted; /* counted in the per-IP session table */
    const struct conf_policy *pol;       /* the HAT's verdict */
    const struct conf_policy_params *pp; /* its parameters */
    const char *hostname;                /* banner/EHLO/Received: name */
    const char *group;                   /* sender group, "None" for ALL */
    const char *hat_entry;               /* the entry that matched */
    char rdns[NEXTHOP_HOST_MAX];         /* PTR name, "" if none */
    enum hat_ptr ptr;
    bool verified;                     /* rdns leads back to ip */
    struct hat_dns *hat_dns;           /* lookups before the greeting */
    struct sender_check *sender_check; /* MAIL waiting for the DNS */
    char *pending_mail;                /* that MAIL command's argument */
    /* STARTTLS */
    bool tls;               /* the session is encrypted */
    struct event *close_ev; /* close once TLS output is sent */
    bool tls_required_logged;
    /* SMTP AUTH */
    bool authed;
    int auth_mech; /* AUTH_MECH_* in progress */
    int auth_step; /* LOGIN: 0 user, 1 password */
    char auth_user[AUTH_FIELD_MAX + 1];
    struct auth_job *auth_job; /* password check in flight */
    bool draining; /* daemon stopping: close after the transaction */
    bool dead;     /* connection gone, struct kept for the commit */
    bool commit_pending;
    bool line_overflow; /* discarding an over-long command line */
    unsigned errors;
    unsigned messages;
    uint64_t discard_left; /* BDAT chunk outside a valid transaction */
    enum smtp_reply_id discard_reply;
    struct txn *txn;
};

/* ---- smtp_session.c ---- */

/* Queue a reply: code, enhanced code (NULL: none) and text; or from the
 * reply table; or the policy's reject banner. */
void ss_reply_raw(struct session *s, unsigned code, const char *enh,
                  const char *text);
void ss_reply(struct session *s, enum smtp_reply_id id);
void ss_reply_reject(struct session *s);
/* A reply that counts as a protocol error (max_errors ends the session). */
void ss_error_reply(struct session *s, enum smtp_reply_id id);
void ss_set_timeout(struct session *s, unsigned secs);
/* Stop reading; free the session once the queued replies are out. */
void ss_close_after_flush(struct session *s);
/* Run the state machine over whatever input is buffered. */
void ss_process(struct session *s);
void ss_free(struct session *s);
void ss_on_read(struct bufferevent *bev, void *arg);
void ss_on_write(struct bufferevent *bev, void *arg);
void ss_on_event(struct bufferevent *bev, short what, void *arg);

/* ---- smtp_auth.c ---- */

/* Is AUTH offered to this session now (policy, profile, TLS)? */
bool smtp_auth_offered(const struct session *s);
void smtp_cmd_auth(struct session *s, const struct smtp_cmd *c);
/* A line read in SS_AUTH: the client's response. */
void smtp_auth_response(struct session *s, const char *line);
void smtp_auth_reset(struct session *s);
/* Forget a password check in flight (the session is ending). */
void smtp_auth_abandon(struct session *s);

/* ---- smtp_starttls.c ---- */

bool smtp_tls_offered(const struct session *s);
/* Commands allowed before STARTTLS when the policy requires TLS. */
bool smtp_tls_allowed_before(enum smtp_verb v);
/* 530 5.7.0 to a command that needs TLS first (logged once). */
void smtp_tls_refuse(struct session *s);
/* Must this envelope sender use TLS (tls_mandatory_senders)? */
bool smtp_tls_mandatory_for(const struct session *s, const char *addr);
void smtp_cmd_starttls(struct session *s, const struct smtp_cmd *c);
/* The handshake's outcome (from ss_on_event in SS_TLSHANDSHAKE). */
void smtp_tls_established(struct session *s);
void smtp_tls_failed(struct session *s, short what);
/* Closing under TLS: true if the last records are still being sent (the
 * session is then freed when they are). */
bool smtp_tls_output_pending(struct session *s);

#endif
