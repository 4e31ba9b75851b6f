/*
 * conf.h - the gateway's configuration, as one immutable snapshot.
 *
 * conf_load() reads moat.conf (UCL-compatible syntax, see
 * docs/configuration.md), builds a node tree that remembers
 * file:line:column for every node, and validates the whole tree against
 * the key tables into a struct moat_conf. Errors carry the position and a
 * reason. A snapshot is reference counted: sessions keep the one they
 * started with while `moatctl commit` installs a new one.
 */
#ifndef MOAT_CONF_H
#define MOAT_CONF_H

#include "core/netaddr.h"
#include "core/util.h"
#include "policy/rat.h"
#include "policy/sender.h"

enum listener_type { LISTENER_PUBLIC, LISTENER_PRIVATE };

/* Host Access Table access rules (the appliance's connection behaviour). */
enum hat_access { HAT_ACCEPT, HAT_RELAY, HAT_REJECT, HAT_TCPREFUSE,
                  HAT_CONTINUE };
enum policy_tls { POLICY_TLS_OFF, POLICY_TLS_PREFERRED, POLICY_TLS_REQUIRED };
enum policy_auth { POLICY_AUTH_OFF, POLICY_AUTH_PREFERRED,
                   POLICY_AUTH_REQUIRED };

/* Mail flow policy parameters. A listener holds the defaults ("Use
 * Default"); each policy's copy is resolved at load time: what the policy
 * sets, else the listener's value. Strings NULL = the built-in text. */
struct conf_policy_params {
    uint64_t max_message_size;           /* bytes */
    unsigned max_recipients;             /* per message */
    unsigned max_messages_per_connection;
    unsigned max_connections_per_ip;     /* on this listener at once */
    unsigned max_recipients_per_hour;    /* per client address; 0 = off */
    unsigned rate_limit_code;
    char *rate_limit_text;
    unsigned banner_code;
    char *banner_text;                   /* NULL: "<host> ESMTP" */
    char *banner_hostname;               /* NULL: the listener's hostname */
    unsigned reject_code;
    char *reject_text;                   /* NULL: "<host> Access denied" */
    bool sender_dns_verification;
    unsigned sdv_malformed_code;
    char *sdv_malformed_text;
    unsigned sdv_nxdomain_code;
    char *sdv_nxdomain_text;
    unsigned sdv_tempfail_code;
    char *sdv_tempfail_text;
    int tls;                             /* enum policy_tls */
    int smtp_auth;                       /* enum policy_auth */
    bool auth_requires_tls;
    bool tls_verify_client;              /* ask for a client certificate */
    size_t ntls_mandatory;               /* senders that must use TLS */
    char **tls_mandatory;                /* RAT-style address patterns */
};

struct conf_policy {
    char *name;
    int access;                          /* enum hat_access */
    struct conf_policy_params p;         /* resolved */
    bool predefined;
};

/* Connecting-host DNS verification checks of a sender group. */
enum {
    SG_DNSV_NO_PTR = 1u << 0,       /* the address has no PTR record */
    SG_DNSV_PTR_TEMPFAIL = 1u << 1, /* a lookup failed temporarily */
    SG_DNSV_PTR_MISMATCH = 1u << 2, /* the name does not lead back */
};

struct conf_sender_group {
    char *name;
    size_t policy;                       /* index into the listener's */
    size_t nsenders;
    struct sg_entry *senders;
    char **sender_text;                  /* as written, for the log */
    unsigned dns_verification;           /* SG_DNSV_* */
    char *comment;
    bool predefined;
};

/* SMTP AUTH profiles: users and their crypt(3) hashes, loaded with the
 * configuration (a commit re-reads the file). */
struct auth_db;
struct conf_auth_profile {
    char *name;
    char *password_file;
    struct auth_db *db;
};

struct conf_listener {
    char *name;
    enum listener_type type;
    char *address;                 /* as written: "127.0.0.1:2525" */
    struct netaddr addr;           /* parsed */
    char *hostname;                /* banner and Received: host */
    unsigned max_connections;      /* concurrent sessions on this listener */
    struct conf_policy_params defaults; /* default policy parameters */
    char *smtp_auth_profile;       /* name of an smtp_auth_profile, or NULL */
    char *tls_certificate;         /* PEM chain; NULL: demo certificate */
    char *tls_key;                 /* PEM key; NULL: in tls_certificate */
    char *tls_ciphers;             /* OpenSSL cipher string (TLS <= 1.2) */
    int tls_min_protocol;          /* 0 TLSv1 .. 3 TLSv1.3 */
    char *tls_client_ca;           /* CAs for client certificates */
    const struct conf_auth_profile *auth; /* that profile, resolved */
    unsigned max_errors;           /* errors before 421 and close */
    unsigned command_timeout;      /* seconds waiting for a command */
    unsigned data_timeout;         /* seconds waiting for message data */
    unsigned connection_timeout;   /* seconds a session may last in all */
    bool chunking;                 /* offer CHUNKING/BDAT */
    /* Private listeners: the predefined RELAYLIST group's senders. */
    size_t relay_sender_count;
    char **relay_senders;
    /* The Host Access Table: sender groups in order, first match wins;
     * then the implicit ALL group with default_policy. */
    size_t npolicies;
    struct conf_policy *policies;
    size_t ngroups;
    struct conf_sender_group *groups;
    size_t default_policy;         /* index into policies */
    bool hat_uses_dnslist;         /* some group has a dnslist[] entry */
    unsigned max_connections_per_ip_any; /* largest of the policies' */
    /* Public listeners: the Recipient Access Table, in order; the last
     * row is always "ALL" (reject unless configured otherwise). */
    size_t rat_count;
    struct rat_entry *rat;
    char *file;                    /* where the block was defined */
    unsigned line;
};

/* SMTP routes: where mail for a domain goes instead of its MX hosts. */
enum route_kind {
    ROUTE_HOSTS,   /* the listed hosts, lowest priority first */
    ROUTE_USEDNS,  /* MX lookup as if there were no route */
    ROUTE_DEVNULL, /* drop: nothing is delivered */
};

struct conf_route_host {
    char *host;    /* host name or IP address (no brackets) */
    bool is_ip;
    uint16_t port; /* default 25 */
    unsigned pri;  /* 0 (most preferred) to 65535 */
};

struct conf_route {
    char *domain;  /* "example.com", ".example.com" or "ALL" */
    enum route_kind kind;
    size_t nhosts;
    struct conf_route_host *hosts;
};

enum ip_preference {
    IPPREF_V6_PREFERRED,
    IPPREF_V6_ONLY,
    IPPREF_V4_PREFERRED,
    IPPREF_V4_ONLY,
};

/* Outbound TLS per destination: the appliance's six settings (seed 003);
 * same order as enum smtpc_tls_mode. */
enum dest_tls {
    DEST_TLS_NO,
    DEST_TLS_PREFERRED,
    DEST_TLS_REQUIRED,
    DEST_TLS_PREFERRED_VERIFY,
    DEST_TLS_REQUIRED_VERIFY,
    DEST_TLS_REQUIRED_VERIFY_HOSTED,
};

enum dest_dane { DEST_DANE_NONE, DEST_DANE_OPPORTUNISTIC, DEST_DANE_MANDATORY };
enum dest_limits_per { DEST_PER_DOMAIN, DEST_PER_MX_IP };
enum dest_bv { DEST_BV_DEFAULT, DEST_BV_NO, DEST_BV_YES };

/* Destination controls: one row per domain / .subdomain, and "Default".
 * A row's keys not written take the Default row's values ("Use
 * Default"); `set` says which were written (bit = key index in
 * conf_table_dest), for moatctl destconfig. */
struct conf_dest {
    char *domain;
    unsigned concurrency;             /* connections at once, 1-1000 */
    unsigned messages_per_connection; /* 1-1000 */
    unsigned recipient_limit;         /* recipients per recipient_period */
    unsigned recipient_period;        /* seconds, 1-3600 */
    bool rcpt_limited;                /* recipient_limit applies */
    int limits_per;                   /* enum dest_limits_per */
    int ip_preference;                /* enum ip_preference */
    int tls;                          /* enum dest_tls */
    int dane;                         /* enum dest_dane */
    int bounce_verification;          /* enum dest_bv (stored only) */
    char *bounce_profile;             /* name of a bounce_profile */
    uint32_t set;
};

/* Bounce profiles (the appliance's bounceconfig). */
struct conf_bounce_profile {
    char *name;
    unsigned max_retries;        /* temporary failures before bouncing */
    unsigned max_queue_lifetime; /* seconds in the queue before bouncing */
    unsigned initial_retry;      /* seconds before the first retry */
    unsigned max_retry_timeout;  /* cap on the growing retry interval */
    bool send_bounces;           /* DSN for hard bounces */
    uint64_t max_bounce_copy;    /* bytes of the original in a DSN */
    char *bounce_subject;
};

struct conf_stub_zone {
    char *zone;   /* "." for the root */
    size_t naddrs;
    char **addrs; /* "IP" or "IP@port" */
};

struct conf_resolver {
    char *resolv_conf;  /* system resolver file; "" for none */
    size_t nforwarders;
    char **forwarders;  /* "IP" or "IP@port" */
    size_t nstubs;
    struct conf_stub_zone *stubs;
    unsigned timeout;   /* seconds before a query counts as failed */
    char *trust_anchor_file; /* DNSSEC trust anchors for DANE ("": none) */
    size_t ntrust_anchors;
    char **trust_anchors;    /* DS or DNSKEY records, zone file syntax */
};

/* The SMTP client's settings. */
struct conf_delivery {
    bool suspended;             /* hold every message (suspenddel) */
    char *helo;                 /* EHLO name (default: hostname) */
    unsigned connect_timeout;   /* TCP connect, per address */
    unsigned greeting_timeout;  /* 220 greeting */
    unsigned command_timeout;   /* EHLO, MAIL, RCPT, DATA, RSET replies */
    unsigned data_timeout;      /* each block of content written */
    unsigned data_done_timeout; /* reply after the final dot */
    unsigned max_rcpts_per_txn; /* recipients per transaction */
    char *tls_ca_file;          /* CAs trusted beyond the system store */
    char *tls_ciphers;          /* OpenSSL cipher string (TLS <= 1.2) */
    int tls_min_protocol;       /* index in "TLSv1" ... "TLSv1.3" */
};

struct moat_conf {
    char *path;            /* file it was read from ("(built-in)" if none) */
    char *hostname;        /* gateway host name (default: system's) */
    char *user;            /* unprivileged user to run as */
    char *pidfile;
    char *control_socket;
    char *spool_dir;
    char *log_file;        /* mail log */
    bool log_syslog;       /* also send mail log lines to syslog */
    unsigned id_block;     /* IDs reserved per persistent write */
    unsigned shutdown_timeout; /* seconds SIGTERM waits for sessions */
    unsigned rate_limit_period; /* seconds a per-address counter lives */
    unsigned auth_max_failures; /* AUTH failures per address and period */
    bool hat_reject_at_rcpt;    /* HAT REJECT refuses at RCPT instead */
    size_t listener_count;
    struct conf_listener *listeners;
    struct conf_delivery delivery;
    struct conf_resolver resolver;
    size_t route_count;
    struct conf_route *routes;        /* in file order */
    size_t dest_count;
    struct conf_dest *dests;          /* "Default" always present, first */
    size_t profile_count;
    struct conf_bounce_profile *profiles; /* "Default" always present, first */
    size_t auth_profile_count;
    struct conf_auth_profile *auth_profiles;
    int refcount;
};

/* Errors: a list of "file:line:col: reason" lines. */
struct conf_errors {
    size_t count;
    char **msgs;
};

/* Load and validate a configuration file. On failure returns NULL and
 * fills errs (all problems found, not only the first). */
struct moat_conf *conf_load(const char *path, struct conf_errors *errs);
/* Same from a string (the built-in default; also used by tests). `name`
 * is used in positions, e.g. "(built-in)". */
struct moat_conf *conf_load_string(const char *name, const char *text,
                                   struct conf_errors *errs);
/* The embedded default configuration text (docs/configuration.md). */
extern const char conf_default_text[];

struct moat_conf *conf_ref(struct moat_conf *c);
void conf_unref(struct moat_conf *c);
void conf_errors_free(struct conf_errors *errs);
/* Print errors, one per line, to f. */
void conf_errors_print(const struct conf_errors *errs, FILE *f);

const struct conf_listener *conf_listener_find(const struct moat_conf *c,
                                               const char *name);
/* A listener's policy by name (case-sensitive), or NULL. */
const struct conf_policy *conf_policy_find(const struct conf_listener *l,
                                           const char *name);
/* `moatctl hat import`: the text of conf_path with its hat "LISTENER"
 * block replaced by (or, if it has none, followed by) the block in
 * import_path, which must hold exactly that one block. The result is
 * not validated here; errors are file:line:col. */
struct buf;
bool conf_import_hat(const char *conf_path, const char *listener,
                     const char *import_path, struct buf *out,
                     struct conf_errors *errs);
/* The same for every `key "..." { }` block (label NULL: the file may hold
 * any number of them, and every one in conf_path is replaced; e.g.
 * `moatctl destconfig import` with key "destination"). */
bool conf_import_blocks(const char *conf_path, const char *key,
                        const char *label, const char *import_path,
                        struct buf *out, struct conf_errors *errs);
/* Names for show/export and the log: an access rule as the file writes
 * it ("accept") and as the log does ("ACCEPT"); a tls or smtp_auth
 * setting; DNS verification check k (SG_DNSV_* is 1 << k). */
const char *conf_access_name(int access);
const char *conf_access_rule(int access);
const char *conf_tls_name(int tls);
const char *conf_auth_name(int auth);
const char *conf_dnsv_name(unsigned k);
/* The SMTP route for a (lower-case) domain: an exact entry, else the
 * closest ".parent" entry, else "ALL"; NULL when none applies. */
const struct conf_route *conf_route_find(const struct moat_conf *c,
                                         const char *domain);
/* The destination-controls row for a domain (exact, closest ".parent",
 * else "Default"; never NULL). */
const struct conf_dest *conf_dest_find(const struct moat_conf *c,
                                       const char *domain);
/* Names as the file writes them: a destination's tls, dane, limits_per,
 * bounce_verification, ip_preference value. */
const char *conf_dest_tls_name(int tls);
const char *conf_dest_dane_name(int dane);
const char *conf_dest_per_name(int per);
const char *conf_dest_bv_name(int bv);
const char *conf_ip_pref_name(int pref);
/* Did the row write this key (else it is the Default row's value)? */
bool conf_dest_key_set(const struct conf_dest *d, const char *key);
/* The row as a destination "..." { } block: the keys it sets, or every
 * key (all: the Default row). */
void conf_dest_write(const struct conf_dest *d, bool all, struct buf *out);
/* A bounce profile by name ("Default" always exists); NULL if unknown. */
const struct conf_bounce_profile *
conf_profile_find(const struct moat_conf *c, const char *name);

#endif
