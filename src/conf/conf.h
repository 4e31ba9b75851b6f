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

enum listener_type { LISTENER_PUBLIC, LISTENER_PRIVATE };

struct conf_listener {
    char *name;
    enum listener_type type;
    char *address;                 /* as written: "127.0.0.1:2525" */
    struct netaddr addr;           /* parsed */
    char *hostname;                /* banner and Received: host */
    unsigned max_connections;      /* concurrent sessions on this listener */
    uint64_t max_message_size;     /* bytes */
    unsigned max_recipients;       /* per message */
    unsigned max_messages_per_connection;
    unsigned max_errors;           /* errors before 421 and close */
    unsigned command_timeout;      /* seconds waiting for a command */
    unsigned data_timeout;         /* seconds waiting for message data */
    unsigned connection_timeout;   /* seconds a session may last in all */
    bool chunking;                 /* offer CHUNKING/BDAT */
    /* Private listeners: the RELAYLIST sender group (CIDR blocks) whose
     * hosts may relay; everyone else matches ALL -> BLOCKED. */
    size_t relay_sender_count;
    struct cidr *relay_senders;
    char **relay_sender_text;      /* as written, for the log's "match" */
    /* Public listeners: the Recipient Access Table, in order; the last
     * row is always "ALL" (reject unless configured otherwise). */
    size_t rat_count;
    struct rat_entry *rat;
    char *file;                    /* where the block was defined */
    unsigned line;
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
    size_t listener_count;
    struct conf_listener *listeners;
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

#endif
