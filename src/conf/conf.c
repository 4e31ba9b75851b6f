/*
 * conf.c - the key tables, the block walker and the public interface.
 *
 * One table per block type (top level, mail_log, listener, RAT row):
 * name, type, default, bounds, target field, one-line help. The same
 * rows give the defaults, drive validation (conf_block_walk), and are
 * exposed by conf_key_tables() for docs/configuration.md and its test.
 * Loading is parse (conf_parse.c) then validate; a configuration with
 * any error is refused as a whole with every error found (up to
 * CONF_MAX_ERRORS), each "file:line:col: reason".
 */
#include "conf/conf_node.h"
#include "conf/conf_params.h"

#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- diagnostics ---- */

void conf_pos_str(const struct conf_pos *pos, char *out, size_t outlen)
{
    if (pos->line == 0)
        str_printf(out, outlen, "%s", pos->file);
    else
        str_printf(out, outlen, "%s:%u:%u", pos->file, pos->line, pos->col);
}

bool conf_diag_full(const struct conf_diag *d)
{
    return d->count >= CONF_MAX_ERRORS;
}

/* Append s with control characters shown as \xNN. */
static void put_visible(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            buf_printf(b, "\\x%02x", c);
        else
            buf_putc(b, (char)c);
    }
}

static void errors_add(struct conf_errors *errs, struct buf *b)
{
    errs->msgs = xrealloc(errs->msgs, (errs->count + 1) * sizeof(char *));
    errs->msgs[errs->count++] = xstrdup(buf_str(b));
}

void conf_diag_error(struct conf_diag *d, const struct conf_pos *pos,
                     const char *fmt, ...)
{
    char where[512], msg[600];
    struct buf b = {0};
    d->count++;
    if (d->errs == NULL || d->count > CONF_MAX_ERRORS + 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(msg, sizeof(msg), fmt, ap) >= (int)sizeof(msg))
        memcpy(msg + sizeof(msg) - 4, "...", 4);
    va_end(ap);
    if (d->count > CONF_MAX_ERRORS)
        str_printf(msg, sizeof(msg), "too many errors; stopping after %d",
                   CONF_MAX_ERRORS);
    conf_pos_str(pos, where, sizeof(where));
    put_visible(&b, where);
    buf_puts(&b, ": ");
    put_visible(&b, msg);
    errors_add(d->errs, &b);
    buf_free(&b);
}

/* ---- the tables ---- */

#define TOP(f) offsetof(struct moat_conf, f)
#define LIS(f) offsetof(struct conf_listener, f)
#define RAT(f) offsetof(struct rat_entry, f)
#define LIS_PP(f) offsetof(struct conf_listener, defaults.f)
#define LIS_DEF(x) x
#define PATH_MAX_LEN 4095

static const char *const listener_types[] = {"public", "private", NULL};
static const char *const rat_actions[] = {"accept", "reject", NULL};
const char *const conf_tls_protocols[] = {"TLSv1", "TLSv1.1", "TLSv1.2",
                                          "TLSv1.3", NULL};

static const struct conf_key mail_log_keys[] = {
    {.name = "path",
     .type = KT_STRING,
     .def = "var/log/mail_logs/mail.current",
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = TOP(log_file),
     .help = "file the mail log is written to"},
    {.name = "syslog",
     .type = KT_BOOL,
     .def = "false",
     .off = TOP(log_syslog),
     .help = "also send mail log lines to syslog"},
};

static const struct conf_table mail_log_table = {"mail_log", mail_log_keys,
                                                 ARRAY_LEN(mail_log_keys)};

static const struct conf_key top_keys[] = {
    {.name = "hostname",
     .type = KT_STRING,
     .min = 1,
     .max = 255,
     .off = TOP(hostname),
     .check = conf_check_hostname,
     .help = "the gateway's host name (default: the system's)"},
    {.name = "user",
     .type = KT_STRING,
     .def = "moat",
     .min = 1,
     .max = 32,
     .off = TOP(user),
     .help = "user to run as after binding the ports"},
    {.name = "pidfile",
     .type = KT_STRING,
     .def = "var/run/moatd.pid",
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = TOP(pidfile),
     .help = "file holding the daemon's process ID"},
    {.name = "control_socket",
     .type = KT_STRING,
     .def = "var/run/moatd.sock",
     .min = 1,
     .max = 107,
     .off = TOP(control_socket),
     .help = "UNIX socket moatctl talks to"},
    {.name = "spool_dir",
     .type = KT_STRING,
     .def = "var/spool",
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = TOP(spool_dir),
     .help = "directory of the message spool"},
    {.name = "id_block",
     .type = KT_UINT,
     .def = "1000",
     .min = 1,
     .max = 1000000,
     .off = TOP(id_block),
     .help = "message/connection IDs reserved per write of the ID file"},
    {.name = "shutdown_timeout",
     .type = KT_TIME,
     .def = "30",
     .min = 1,
     .max = 3600,
     .off = TOP(shutdown_timeout),
     .help = "how long a stop waits for open sessions to finish"},
    {.name = "rate_limit_period",
     .type = KT_TIME,
     .def = "3600",
     .min = 1,
     .max = 86400,
     .off = TOP(rate_limit_period),
     .help = "how long a client address's recipient and AUTH failure "
             "counters last"},
    {.name = "auth_max_failures",
     .type = KT_UINT,
     .def = "5",
     .min = 1,
     .max = 1000,
     .off = TOP(auth_max_failures),
     .help = "failed AUTH attempts from one address per rate_limit_period "
             "before its sessions are closed"},
    {.name = "hat_reject_at_rcpt",
     .type = KT_BOOL,
     .def = "false",
     .off = TOP(hat_reject_at_rcpt),
     .help = "HAT REJECT: greet, then refuse every recipient (and log them)"},
    {.name = "mail_log",
     .type = KT_BLOCK,
     .aux = &mail_log_table,
     .help = "where the mail log goes"},
    {.name = "listener",
     .type = KT_SECTION,
     .help = "listener \"NAME\" { ... }: an SMTP listening port"},
    {.name = "rat",
     .type = KT_SECTION,
     .help = "rat \"LISTENER\" { ... }: recipient access table"},
    {.name = "hat",
     .type = KT_SECTION,
     .help = "hat \"LISTENER\" { ... }: host access table"},
    {.name = "smtp_auth_profile",
     .type = KT_SECTION,
     .help = "smtp_auth_profile \"NAME\" { password_file = ...; }: users "
             "who may authenticate"},
    {.name = "delivery",
     .type = KT_BLOCK,
     .aux = &conf_table_delivery,
     .help = "how the SMTP client delivers mail"},
    {.name = "resolver",
     .type = KT_BLOCK,
     .aux = &conf_table_resolver,
     .help = "how MX and address lookups are made"},
    {.name = "smtp_route",
     .type = KT_SECTION,
     .help = "smtp_route \"DOMAIN\" { hosts = [...]; }: where a domain's "
             "mail goes instead of its MX hosts"},
    {.name = "destination",
     .type = KT_SECTION,
     .help = "destination \"DOMAIN\" { ... }: destination controls"},
    {.name = "bounce_profile",
     .type = KT_SECTION,
     .help = "bounce_profile \"NAME\" { ... }: retries and bounces"},
};

const struct conf_table conf_table_top = {"top level", top_keys,
                                          ARRAY_LEN(top_keys)};

static const struct conf_key listener_keys[] = {
    {.name = "type",
     .type = KT_ENUM,
     .off = LIS(type),
     .aux = listener_types,
     .flags = KF_REQUIRED,
     .help = "public (receives mail for your domains) or private (relays "
             "for your hosts)"},
    {.name = "address",
     .type = KT_ADDRESS,
     .off = LIS(address),
     .off2 = LIS(addr),
     .flags = KF_REQUIRED,
     .help = "IP address and port to listen on"},
    {.name = "hostname",
     .type = KT_STRING,
     .min = 1,
     .max = 255,
     .off = LIS(hostname),
     .check = conf_check_hostname,
     .help = "name in the banner and Received: (default: hostname)"},
    {.name = "max_connections",
     .type = KT_UINT,
     .def = "2000",
     .min = 1,
     .max = 100000,
     .off = LIS(max_connections),
     .help = "concurrent sessions on this listener"},
    CONF_POLICY_PARAM_KEYS(LIS_PP, LIS_DEF),
    {.name = "tls_certificate",
     .type = KT_STRING,
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = LIS(tls_certificate),
     .help = "PEM file: the listener's certificate chain (and key, unless "
             "tls_key is set)"},
    {.name = "tls_key",
     .type = KT_STRING,
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = LIS(tls_key),
     .help = "PEM file: the private key of tls_certificate"},
    {.name = "tls_ciphers",
     .type = KT_STRING,
     .def = CONF_DEFAULT_CIPHERS,
     .min = 1,
     .max = 2000,
     .off = LIS(tls_ciphers),
     .help = "OpenSSL cipher string for TLS 1.2 and below"},
    {.name = "tls_min_protocol",
     .type = KT_ENUM,
     .def = "TLSv1.2",
     .off = LIS(tls_min_protocol),
     .aux = conf_tls_protocols,
     .help = "lowest TLS version accepted: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"},
    {.name = "tls_client_ca",
     .type = KT_STRING,
     .min = 1,
     .max = PATH_MAX_LEN,
     .off = LIS(tls_client_ca),
     .help = "PEM file of CAs that sign client certificates "
             "(tls_verify_client)"},
    {.name = "smtp_auth_profile",
     .type = KT_STRING,
     .min = 1,
     .max = 64,
     .off = LIS(smtp_auth_profile),
     .help = "the smtp_auth_profile whose users may authenticate here"},
    {.name = "max_errors",
     .type = KT_UINT,
     .def = "20",
     .min = 1,
     .max = 1000,
     .off = LIS(max_errors),
     .help = "protocol errors before the session is closed with 421"},
    {.name = "command_timeout",
     .type = KT_TIME,
     .def = "300",
     .min = 1,
     .max = 3600,
     .off = LIS(command_timeout),
     .help = "how long to wait for the next command"},
    {.name = "data_timeout",
     .type = KT_TIME,
     .def = "600",
     .min = 1,
     .max = 3600,
     .off = LIS(data_timeout),
     .help = "how long to wait for more message data"},
    {.name = "connection_timeout",
     .type = KT_TIME,
     .def = "3600",
     .min = 1,
     .max = 86400,
     .off = LIS(connection_timeout),
     .help = "how long a session may last in all"},
    {.name = "chunking",
     .type = KT_BOOL,
     .def = "true",
     .off = LIS(chunking),
     .help = "offer CHUNKING (BDAT)"},
    {.name = "relay_senders",
     .type = KT_STRINGS,
     .max = 10000,
     .off = LIS(relay_sender_count),
     .off2 = LIS(relay_senders),
     .check = conf_check_sender_entry,
     .help = "private listeners: the RELAYLIST sender group's hosts"},
};

const struct conf_table conf_table_listener = {"listener", listener_keys,
                                               ARRAY_LEN(listener_keys)};

static const struct conf_key rat_row_keys[] = {
    {.name = "action",
     .type = KT_ENUM,
     .off = RAT(action),
     .aux = rat_actions,
     .flags = KF_REQUIRED,
     .help = "accept or reject the recipient"},
    {.name = "code",
     .type = KT_UINT,
     .min = 250,
     .max = 599,
     .off = RAT(code),
     .help = "custom SMTP reply code (2xx accept, 4xx/5xx reject)"},
    {.name = "text",
     .type = KT_STRING,
     .min = 1,
     .max = 200,
     .off = RAT(text),
     .check = conf_check_reply_text,
     .help = "custom SMTP reply text (printable ASCII)"},
    {.name = "bypass_receiving_control",
     .type = KT_BOOL,
     .def = "false",
     .off = RAT(bypass_receiving_control),
     .help = "the recipient is neither counted nor refused by rate limits"},
};

const struct conf_table conf_table_rat_row = {"rat row", rat_row_keys,
                                              ARRAY_LEN(rat_row_keys)};

const struct conf_table *const *conf_key_tables(size_t *count)
{
    static const struct conf_table *const all[] = {
        &conf_table_top,      &mail_log_table,      &conf_table_listener,
        &conf_table_rat_row,  &conf_table_delivery, &conf_table_resolver,
        &conf_table_route,    &conf_table_dest,     &conf_table_profile,
        &conf_table_hat,      &conf_table_sender_group, &conf_table_policy,
        &conf_table_auth_profile};
    *count = ARRAY_LEN(all);
    return all;
}

const char *conf_key_type_name(enum conf_key_type t)
{
    static const char *const names[] = {
        [KT_STRING] = "string",   [KT_BOOL] = "boolean",
        [KT_UINT] = "number",     [KT_SIZE] = "size",
        [KT_TIME] = "time",       [KT_ENUM] = "word",
        [KT_ADDRESS] = "address", [KT_STRINGS] = "list of strings",
        [KT_BLOCK] = "block",     [KT_SECTION] = "named block",
    };
    return names[t];
}

int conf_table_index(const struct conf_table *tab, const char *name)
{
    for (size_t i = 0; i < tab->count; i++)
        if (strcmp(tab->keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* ---- walking a block against a table ---- */

void conf_block_defaults(const struct conf_table *tab, void *base)
{
    for (size_t i = 0; i < tab->count; i++) {
        const struct conf_key *k = &tab->keys[i];
        if (k->type == KT_BLOCK)
            conf_block_defaults(k->aux, base);
        else if (k->def && !conf_value_default(k, base))
            fatal("conf: bad default for '%s'", k->name);
    }
}

static void unknown_key(struct vctx *v, const struct conf_node *n,
                        const struct conf_table *tab)
{
    const char *names[CONF_MAX_TABLE_KEYS];
    for (size_t i = 0; i < tab->count; i++)
        names[i] = tab->keys[i].name;
    const char *s =
        conf_diag_full(v->d) ? NULL : conf_suggest(n->key, names, tab->count);
    conf_diag_error(v->d, &n->key_pos, "unknown key '%s'%s%s%s%s%s", n->key,
                    v->where[0] ? " in " : "", v->where,
                    s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
}

static void duplicate_key(struct vctx *v, const struct conf_node *n,
                          const struct conf_node *first)
{
    char at[300];
    conf_pos_str(&first->key_pos, at, sizeof(at));
    conf_diag_error(v->d, &n->key_pos,
                    "duplicate key '%s'%s%s (first set at %s)", n->key,
                    v->where[0] ? " in " : "", v->where, at);
}

void conf_block_walk(struct vctx *v, const struct conf_node *obj,
                     const struct conf_table *tab, void *base,
                     const struct conf_node **seen_out)
{
    const struct conf_node *seen[CONF_MAX_TABLE_KEYS] = {0};
    if (tab->count > CONF_MAX_TABLE_KEYS)
        fatal("conf: table %s too large", tab->name);
    for (const struct conf_node *n = obj->child; n; n = n->next) {
        int i = conf_table_index(tab, n->key);
        if (i < 0) {
            unknown_key(v, n, tab);
        } else if (tab->keys[i].type == KT_SECTION) {
            continue;
        } else if (seen[i]) {
            duplicate_key(v, n, seen[i]);
        } else {
            seen[i] = n;
            conf_value_set(v, &tab->keys[i], n, base);
        }
    }
    for (size_t i = 0; i < tab->count; i++)
        if ((tab->keys[i].flags & KF_REQUIRED) && seen[i] == NULL)
            conf_diag_error(v->d, &obj->key_pos,
                            "missing required key '%s'%s%s", tab->keys[i].name,
                            v->where[0] ? " in " : "", v->where);
    if (seen_out)
        memcpy(seen_out, seen, tab->count * sizeof(*seen));
}

/* ---- the snapshot ---- */

/* hostname not configured: the system's, which must be valid too. */
static void default_hostname(struct vctx *v)
{
    char name[256] = "";
    if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0')
        str_copy(name, sizeof(name), "localhost");
    name[sizeof(name) - 1] = '\0';
    const char *why = conf_check_hostname(name);
    if (why)
        conf_diag_error(v->d, &v->root->pos,
                        "hostname: the system's host "
                        "name \"%s\" %s; set hostname",
                        name, why);
    v->c->hostname = xstrdup(name);
}

static void conf_free(struct moat_conf *c)
{
    for (size_t i = 0; i < c->listener_count; i++)
        conf_listener_clear(&c->listeners[i]);
    free(c->listeners);
    conf_auth_profiles_clear(c);
    conf_delivery_clear(c);
    free(c->path);
    free(c->hostname);
    free(c->user);
    free(c->pidfile);
    free(c->control_socket);
    free(c->spool_dir);
    free(c->log_file);
    free(c);
}

/* Validate a parsed tree into a new snapshot, or NULL on any error. */
static struct moat_conf *validate(const struct conf_tree *t,
                                  struct conf_diag *d, const char *path)
{
    struct moat_conf *c = xcalloc(1, sizeof(*c));
    c->refcount = 1;
    c->path = xstrdup(path);
    conf_block_defaults(&conf_table_top, c);
    struct vctx v = {.d = d, .c = c, .root = t->root};
    conf_block_walk(&v, t->root, &conf_table_top, c, NULL);
    if (c->hostname == NULL)
        default_hostname(&v);
    conf_auth_profiles_build(&v); /* before the listeners name them */
    conf_sections_build(&v);
    conf_delivery_build(&v);
    if (d->count == 0)
        return c;
    conf_free(c);
    return NULL;
}

/* After parsing into t: validate if parsing succeeded; free the tree. */
static struct moat_conf *finish(struct conf_tree *t, bool parsed,
                                struct conf_diag *d, const char *name)
{
    struct moat_conf *c = NULL;
    if (parsed && d->count == 0)
        c = validate(t, d, name);
    conf_tree_free(t);
    return c;
}

struct moat_conf *conf_load(const char *path, struct conf_errors *errs)
{
    struct conf_diag d = {.errs = errs};
    struct conf_tree t = {0};
    bool ok = conf_parse_file(&t, path, &d);
    return finish(&t, ok, &d, path);
}

struct moat_conf *conf_load_string(const char *name, const char *text,
                                   struct conf_errors *errs)
{
    struct conf_diag d = {.errs = errs};
    struct conf_tree t = {0};
    bool ok = conf_parse_string(&t, name, text, strlen(text), &d);
    return finish(&t, ok, &d, name);
}

struct moat_conf *conf_ref(struct moat_conf *c)
{
    __atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
    return c;
}

void conf_unref(struct moat_conf *c)
{
    if (c && __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) == 0)
        conf_free(c);
}

void conf_errors_free(struct conf_errors *errs)
{
    for (size_t i = 0; i < errs->count; i++)
        free(errs->msgs[i]);
    free(errs->msgs);
    errs->msgs = NULL;
    errs->count = 0;
}

void conf_errors_print(const struct conf_errors *errs, FILE *f)
{
    for (size_t i = 0; i < errs->count; i++)
        fprintf(f, "%s\n", errs->msgs[i]);
}

const struct conf_listener *conf_listener_find(const struct moat_conf *c,
                                               const char *name)
{
    for (size_t i = 0; i < c->listener_count; i++)
        if (strcmp(c->listeners[i].name, name) == 0)
            return &c->listeners[i];
    return NULL;
}
