/*
 * moatd.c - the moat daemon: start-up, privileges, signals, shutdown.
 *
 * Order of start-up: read and validate the configuration; create the
 * working directories; open the mail log; bind the listeners and the
 * control socket (as root, if started as root); drop to the configured
 * user; recover the spool; open the ID counters; serve. SIGTERM/SIGINT
 * drain (stop accepting, let transactions finish, leave the spool
 * consistent); SIGHUP re-reads the configuration and reopens the log;
 * SIGUSR1 only reopens the log.
 */
#include "admin/control.h"
#include "admin/dest_admin.h"
#include "admin/hat_admin.h"
#include "conf/conf.h"
#include "core/buf.h"
#include "core/ids.h"
#include "core/mlog.h"
#include "delivery/tls_client.h"
#include "queue/queue.h"
#include "smtp/smtp.h"
#include "spool/spool.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct daemon {
    struct event_base *base;
    struct moat_conf *conf;
    const char *conf_path; /* NULL: the built-in configuration */
    struct smtp_server *smtp;
    struct spool *spool;
    struct ids *ids;
    struct queue *queue;
    struct control *control;
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
    struct event *drain_timer;
    time_t started;
    time_t committed;
    bool stopping;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moatd [-c FILE] [-t] [-V]\n"
               "  -c FILE  configuration file (default: the built-in "
               "configuration)\n"
               "  -t       check the configuration and exit\n"
               "  -f       run in the foreground (the default; accepted for "
               "scripts)\n"
               "  -V       print the version and exit\n"
               "moatd always runs in the foreground; use systemd or another "
               "supervisor to run it in the background.\n");
}

/* Load the configuration named on the command line, or the built-in. */
static struct moat_conf *load_conf(const char *path, struct conf_errors *e)
{
    if (path)
        return conf_load(path, e);
    return conf_load_string("(built-in)", conf_default_text, e);
}

/* Settings that cannot take effect as written: say so in the log (and
 * to the admin who committed them). */
static void unenforced_notes(const struct moat_conf *c, struct buf *out)
{
    for (size_t i = 0; i < c->dest_count; i++) {
        const struct conf_dest *dc = &c->dests[i];
        if (dc->bounce_verification == DEST_BV_YES &&
            conf_dest_key_set(dc, "bounce_verification")) {
            mlog_system(MLOG_INFO,
                        "destination %s: bounce_verification is stored; "
                        "address tagging is not implemented yet",
                        dc->domain);
            if (out)
                buf_printf(out,
                           "Note: destination %s: bounce_verification is "
                           "stored; address tagging is not implemented "
                           "yet.\n",
                           dc->domain);
        }
    }
    for (size_t i = 0; i < c->listener_count; i++) {
        const struct conf_listener *l = &c->listeners[i];
        for (size_t k = 0; k < l->npolicies; k++) {
            const struct conf_policy *p = &l->policies[k];
            if (p->p.smtp_auth != POLICY_AUTH_OFF && p->p.auth_requires_tls &&
                p->p.tls == POLICY_TLS_OFF) {
                mlog_system(MLOG_WARNING,
                            "listener %s mail_flow_policy %s: AUTH is never "
                            "offered: auth_requires_tls but tls = off",
                            l->name, p->name);
                if (out)
                    buf_printf(out,
                               "Warning: listener %s mail_flow_policy %s: "
                               "AUTH is never offered (auth_requires_tls but "
                               "tls = off).\n",
                               l->name, p->name);
            }
        }
    }
}

/* mkdir -p for the parent directory of a file path, or a directory. */
static bool make_dirs(const char *path, bool is_file, uid_t uid, gid_t gid)
{
    char tmp[4096];
    if (!str_copy(tmp, sizeof(tmp), path))
        return false;
    char *dir = is_file ? dirname(tmp) : tmp;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return false;
        *p = '/';
    }
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        return false;
    if (getuid() == 0 && chown(dir, uid, gid) != 0)
        return false;
    return true;
}

/* The user to run as: (uid, gid), or the current user when not root. */
static bool lookup_user(const char *name, uid_t *uid, gid_t *gid)
{
    if (getuid() != 0) {
        *uid = getuid();
        *gid = getgid();
        return true;
    }
    struct passwd *pw = getpwnam(name);
    if (pw == NULL) {
        fprintf(stderr,
                "moatd: user \"%s\" does not exist (create it with "
                "\"useradd --system %s\", or set user = ...)\n",
                name, name);
        return false;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return true;
}

static bool drop_privileges(const char *name, uid_t uid, gid_t gid)
{
    if (getuid() != 0 || uid == 0)
        return true;
    if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        fprintf(stderr, "moatd: cannot switch to user %s: %s\n", name,
                strerror(errno));
        return false;
    }
    if (setuid(0) == 0) {
        fprintf(stderr, "moatd: privileges could not be dropped\n");
        return false;
    }
    return true;
}

static void write_pidfile(const char *path)
{
    char text[32];
    str_printf(text, sizeof(text), "%ld\n", (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) < 0)
        mlog_system(MLOG_WARNING, "cannot write pidfile %s: %s", path,
                    strerror(errno));
    if (fd >= 0)
        close(fd);
}

/* ---- control commands ------------------------------------------------- */

static void fmt_time(char *out, size_t len, time_t t)
{
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, len, "%a %b %e %H:%M:%S %Y", &tm);
}

static bool ctl_status(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    (void)args;
    struct smtp_stats st;
    struct spool_stats ss;
    smtp_server_get_stats(d->smtp, &st);
    spool_get_stats(d->spool, &ss);
    char now[64], up[64], com[64];
    time_t t = time(NULL);
    long secs = (long)(t - d->started);
    fmt_time(now, sizeof(now), t);
    fmt_time(up, sizeof(up), d->started);
    fmt_time(com, sizeof(com), d->committed);
    buf_printf(out, "Status as of:                  %s\n", now);
    buf_printf(out, "Up since:                      %s (%ldd %ldh %ldm %lds)\n",
               up, secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    buf_printf(out, "System status:                 %s\n",
               d->stopping ? "Shutting down" : "Online");
    buf_printf(out, "Configuration:                 %s (committed %s)\n",
               d->conf->path, com);
    struct buf demo = {0};
    if (smtp_server_demo_tls(d->smtp, &demo))
        buf_printf(out,
                   "WARNING:                       STARTTLS on %s uses a "
                   "self-signed DEMO certificate (set tls_certificate)\n",
                   buf_str(&demo));
    buf_free(&demo);
    buf_printf(out, "Counters:                      Uptime\n");
    buf_printf(out, "  Connections Accepted         %llu\n",
               (unsigned long long)st.connections);
    buf_printf(out, "  Messages Received            %llu\n",
               (unsigned long long)st.messages);
    buf_printf(out, "  Recipients Received          %llu\n",
               (unsigned long long)st.recipients);
    buf_printf(out, "  Rejected Recipients          %llu\n",
               (unsigned long long)st.rejected_rcpts);
    buf_printf(out, "  Aborted Transactions         %llu\n",
               (unsigned long long)st.aborted);
    struct queue_stats qs;
    queue_get_stats(d->queue, &qs);
    buf_printf(out, "  Delivered Recipients         %llu\n",
               (unsigned long long)qs.delivered);
    buf_printf(out, "  Soft Bounced Events          %llu\n",
               (unsigned long long)qs.soft_bounced);
    buf_printf(out, "  Hard Bounced Recipients      %llu\n",
               (unsigned long long)qs.hard_bounced);
    buf_printf(out, "    DNS Hard Bounces           %llu\n",
               (unsigned long long)qs.dns_bounced);
    buf_printf(out, "    Expired Hard Bounces       %llu\n",
               (unsigned long long)qs.expired);
    buf_printf(out, "  Deleted Recipients           %llu\n",
               (unsigned long long)qs.deleted);
    buf_printf(out, "  Gen. Bounce Messages         %llu\n",
               (unsigned long long)qs.bounces_sent);
    buf_printf(out, "  Spool Flushes                %llu (largest group %zu)\n",
               (unsigned long long)ss.batches, ss.max_batch);
    buf_printf(out, "  Spool Commit Failures        %llu\n",
               (unsigned long long)ss.failures);
    buf_printf(out, "  Inbound TLS Handshakes       %llu\n",
               (unsigned long long)st.tls_ok);
    buf_printf(out, "  Inbound TLS Failures         %llu\n",
               (unsigned long long)st.tls_failed);
    buf_printf(out, "  Outbound TLS Handshakes      %llu\n",
               (unsigned long long)qs.tls_out);
    buf_printf(out, "  Outbound TLS Failures        %llu\n",
               (unsigned long long)qs.tls_out_failed);
    buf_printf(out, "  Connections TCP Refused      %llu\n",
               (unsigned long long)st.refused);
    buf_printf(out, "  Rate Limited Recipients      %llu\n",
               (unsigned long long)st.rate_limited);
    buf_printf(out, "Gauges:                        Current\n");
    buf_printf(out, "  Current Inbound Conn.        %zu\n", st.sessions);
    buf_printf(out, "  Current Outbound Conn.       %zu\n", qs.conns_out);
    buf_printf(out, "  Active Recipients            %zu\n", qs.active_rcpts);
    buf_printf(out, "  Destinations In Memory       %zu\n", qs.destinations);
    buf_printf(out, "  Messages In Spool            %zu\n",
               spool_count(d->spool));
    buf_printf(out, "  Kilobytes In Spool           %llu\n",
               (unsigned long long)(spool_bytes(d->spool) + 1023) / 1024);
    buf_printf(out, "  Message ID (MID)             %llu\n",
               (unsigned long long)ids_last(d->ids, ID_MID));
    buf_printf(out, "  Injection Conn. ID (ICID)    %llu\n",
               (unsigned long long)ids_last(d->ids, ID_ICID));
    buf_printf(out, "  Delivery Conn. ID (DCID)     %llu\n",
               (unsigned long long)ids_last(d->ids, ID_DCID));
    return true;
}

/* The queue's commands, each a thin wrapper. */
#define QUEUE_CMD(name)                                                        \
    static bool ctl_##name(void *arg, const char *args, struct buf *out)       \
    {                                                                          \
        return queue_cmd_##name(((struct daemon *)arg)->queue, args, out);     \
    }
QUEUE_CMD(list)
QUEUE_CMD(show)
QUEUE_CMD(flush)
QUEUE_CMD(delete)
QUEUE_CMD(bounce)
QUEUE_CMD(retry)
QUEUE_CMD(tophosts)
QUEUE_CMD(hoststatus)

static void errors_to_buf(const struct conf_errors *e, struct buf *out)
{
    for (size_t i = 0; i < e->count; i++)
        buf_printf(out, "%s\n", e->msgs[i]);
}

/* What only the running libraries can check: certificates and keys of
 * the listeners, the outbound TLS context (CA bundle, ciphers). */
/* DANE needs a trust anchor: a readable trust_anchor_file (the root key
 * of dns-root-data by default) or trust_anchors. */
static bool dane_check(const struct moat_conf *c, char *err, size_t errlen)
{
    const struct conf_resolver *rc = &c->resolver;
    for (size_t i = 0; i < c->dest_count; i++) {
        if (c->dests[i].dane == DEST_DANE_NONE || rc->ntrust_anchors > 0)
            continue;
        if (rc->trust_anchor_file == NULL || rc->trust_anchor_file[0] == '\0') {
            str_printf(err, errlen,
                       "destination %s: dane needs a DNSSEC trust anchor "
                       "(resolver trust_anchor_file or trust_anchors)",
                       c->dests[i].domain);
            return false;
        }
        if (access(rc->trust_anchor_file, R_OK) != 0) {
            str_printf(err, errlen,
                       "destination %s: dane needs a DNSSEC trust anchor: "
                       "resolver trust_anchor_file %s: %s",
                       c->dests[i].domain, rc->trust_anchor_file,
                       strerror(errno));
            return false;
        }
    }
    return true;
}

static bool tls_check(const struct moat_conf *c, char *err, size_t errlen)
{
    if (!smtp_tls_check(c, err, errlen) || !dane_check(c, err, errlen))
        return false;
    SSL_CTX *cctx = tls_client_ctx_new(&c->delivery, err, errlen);
    SSL_CTX_free(cctx);
    return cctx != NULL;
}

static bool ctl_configtest(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    (void)args;
    struct conf_errors e = {0};
    struct moat_conf *c = load_conf(d->conf_path, &e);
    if (c == NULL) {
        errors_to_buf(&e, out);
        conf_errors_free(&e);
        return false;
    }
    char err[512];
    if (!tls_check(c, err, sizeof(err))) {
        buf_printf(out, "%s: %s\n", c->path, err);
        conf_unref(c);
        return false;
    }
    buf_printf(out, "Configuration %s is valid.\n", c->path);
    conf_unref(c);
    return true;
}

/* Settings read only at start-up: say which changed. */
static void restart_notes(const struct moat_conf *a, const struct moat_conf *b,
                          struct buf *out)
{
    static const struct {
        const char *name;
        size_t off;
    } keys[] = {
        {"spool_dir", offsetof(struct moat_conf, spool_dir)},
        {"user", offsetof(struct moat_conf, user)},
        {"pidfile", offsetof(struct moat_conf, pidfile)},
        {"control_socket", offsetof(struct moat_conf, control_socket)},
    };
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        const char *x = *(char *const *)((const char *)a + keys[i].off);
        const char *y = *(char *const *)((const char *)b + keys[i].off);
        if (strcmp(x, y) != 0)
            buf_printf(out,
                       "Note: %s changed; it takes effect when moatd "
                       "is restarted.\n",
                       keys[i].name);
    }
}

/* Validate the file and apply it atomically, or change nothing. */
static bool daemon_commit(struct daemon *d, struct buf *out)
{
    struct conf_errors e = {0};
    struct moat_conf *c = load_conf(d->conf_path, &e);
    if (c == NULL) {
        buf_puts(out, "Configuration refused; the running configuration "
                      "stays.\n");
        errors_to_buf(&e, out);
        conf_errors_free(&e);
        return false;
    }
    char err[512];
    SSL_CTX *cctx = NULL;
    if (dane_check(c, err, sizeof(err)))
        cctx = tls_client_ctx_new(&c->delivery, err, sizeof(err));
    if (cctx == NULL || !smtp_server_apply(d->smtp, c, err, sizeof(err))) {
        buf_printf(out,
                   "Configuration refused; the running configuration "
                   "stays.\n%s\n",
                   err);
        SSL_CTX_free(cctx);
        conf_unref(c);
        return false;
    }
    queue_set_tls(d->queue, cctx);
    restart_notes(d->conf, c, out);
    unenforced_notes(c, out);
    queue_set_conf(d->queue, c);
    if (strcmp(c->log_file, d->conf->log_file) != 0)
        buf_printf(out, "Note: mail_log path changed; it takes effect when "
                        "moatd is restarted.\n");
    conf_unref(d->conf);
    d->conf = c;
    d->committed = time(NULL);
    char when[64];
    fmt_time(when, sizeof(when), d->committed);
    buf_printf(out, "Changes committed: %s\n", when);
    mlog_system(MLOG_INFO, "Configuration %s committed", c->path);
    return true;
}

static bool ctl_hat_list(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    return hat_admin_list(d->conf, args, out);
}

static bool ctl_hat_detail(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    return hat_admin_detail(d->conf, args, out);
}

static bool ctl_hat_export(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    return hat_admin_export(d->conf, args, out);
}

static bool ctl_dest_list(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    if (args[0]) {
        buf_puts(out, "destconfig list takes no arguments\n");
        return false;
    }
    dest_admin_list(d->conf, out);
    return true;
}

static bool ctl_dest_detail(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    return dest_admin_detail(d->conf, args, out);
}

static bool ctl_dest_export(void *arg, const char *args, struct buf *out)
{
    struct daemon *d = arg;
    (void)args;
    dest_admin_export(d->conf, out);
    return true;
}

static bool ctl_commit(void *arg, const char *args, struct buf *out)
{
    (void)args;
    return daemon_commit(arg, out);
}

/* ---- signals and shutdown --------------------------------------------- */

static void on_drained(void *arg)
{
    struct daemon *d = arg;
    event_base_loopexit(d->base, NULL);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    (void)fd;
    (void)what;
    mlog_system(MLOG_WARNING,
                "Shutdown timeout: closing the remaining sessions");
    smtp_server_close_all(d->smtp);
    event_base_loopexit(d->base, NULL);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    (void)what;
    if (d->stopping) {
        on_drain_timeout(-1, 0, d);
        return;
    }
    d->stopping = true;
    mlog_system(MLOG_INFO, "Received signal %d: shutting down", (int)sig);
    d->drain_timer = evtimer_new(d->base, on_drain_timeout, d);
    struct timeval tv = {(time_t)d->conf->shutdown_timeout, 0};
    evtimer_add(d->drain_timer, &tv);
    smtp_server_drain(d->smtp, on_drained, d);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    (void)sig;
    (void)what;
    mlog_reopen();
    struct buf out = {0};
    bool ok = daemon_commit(d, &out);
    if (!ok)
        mlog_system(MLOG_WARNING, "SIGHUP: %s", buf_str(&out));
    buf_free(&out);
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    mlog_reopen();
}

static void setup_signals(struct daemon *d)
{
    signal(SIGPIPE, SIG_IGN);
    d->sig_term = evsignal_new(d->base, SIGTERM, on_stop_signal, d);
    d->sig_int = evsignal_new(d->base, SIGINT, on_stop_signal, d);
    d->sig_hup = evsignal_new(d->base, SIGHUP, on_hup, d);
    d->sig_usr1 = evsignal_new(d->base, SIGUSR1, on_usr1, d);
    evsignal_add(d->sig_term, NULL);
    evsignal_add(d->sig_int, NULL);
    evsignal_add(d->sig_hup, NULL);
    evsignal_add(d->sig_usr1, NULL);
}

/* Allow many concurrent sessions: raise the descriptor limit. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Print where the daemon listens and how to try it. */
static void announce(const struct moat_conf *c)
{
    printf("moatd %s running (configuration: %s)\n", MOAT_VERSION, c->path);
    for (size_t i = 0; i < c->listener_count; i++) {
        const struct conf_listener *l = &c->listeners[i];
        printf("  listener %-14s %-7s on %s\n", l->name,
               l->type == LISTENER_PUBLIC ? "public" : "private", l->address);
    }
    printf("  mail log: %s   spool: %s\n", c->log_file, c->spool_dir);
    for (size_t i = 0; i < c->listener_count; i++) {
        const struct conf_listener *l = &c->listeners[i];
        if (l->type == LISTENER_PUBLIC && l->rat_count > 1) {
            const char *dom = l->rat[0].pattern;
            char host[64];
            str_copy(host, sizeof(host), l->address);
            char *colon = strrchr(host, ':');
            if (colon)
                *colon = '\0';
            printf("Try: swaks --server %s --port %u --to user@%s\n", host,
                   netaddr_port(&l->addr), dom[0] == '.' ? dom + 1 : dom);
            break;
        }
    }
    printf("Stop with Ctrl-C (SIGTERM); status with: moatctl%s%s status\n",
           strcmp(c->path, "(built-in)") ? " -c " : "",
           strcmp(c->path, "(built-in)") ? c->path : "");
    fflush(stdout);
}

static int serve(struct daemon *d)
{
    char err[512];
    uid_t uid;
    gid_t gid;
    struct moat_conf *c = d->conf;

    if (!lookup_user(c->user, &uid, &gid))
        return 1;
    if (!make_dirs(c->spool_dir, false, uid, gid) ||
        !make_dirs(c->log_file, true, uid, gid) ||
        !make_dirs(c->pidfile, true, uid, gid) ||
        !make_dirs(c->control_socket, true, uid, gid)) {
        fprintf(stderr, "moatd: cannot create working directories: %s\n",
                strerror(errno));
        return 1;
    }
    if (!mlog_open(c->log_file, c->log_syslog, MOAT_VERSION, c->hostname, err,
                   sizeof(err))) {
        fprintf(stderr, "moatd: %s\n", err);
        return 1;
    }
    if (getuid() == 0 && chown(c->log_file, uid, gid) != 0)
        fprintf(stderr, "moatd: warning: cannot chown %s\n", c->log_file);

    raise_nofile();
    evthread_use_pthreads();
    d->base = event_base_new();
    d->smtp = smtp_server_new(d->base, NULL, NULL);
    if (!smtp_server_apply(d->smtp, c, err, sizeof(err))) {
        fprintf(stderr, "moatd: %s\n", err);
        return 1;
    }
    d->control = control_open(d->base, c->control_socket, err, sizeof(err));
    if (d->control == NULL) {
        fprintf(stderr, "moatd: %s\n", err);
        return 1;
    }
    if (getuid() == 0 && chown(c->control_socket, uid, gid) != 0)
        fprintf(stderr, "moatd: warning: cannot chown %s\n", c->control_socket);
    if (!drop_privileges(c->user, uid, gid))
        return 1;

    struct spool_recovery rec = {0};
    d->spool = spool_open(d->base, c->spool_dir, &rec, err, sizeof(err));
    if (d->spool == NULL) {
        fprintf(stderr, "moatd: %s\n", err);
        mlog_system(MLOG_CRITICAL, "%s", err);
        return 1;
    }
    mlog_system(MLOG_INFO,
                "Spool %s recovered: %zu message(s) queued, %zu partial "
                "message(s) discarded, %zu corrupt file(s) set aside",
                c->spool_dir, rec.queued, rec.discarded, rec.corrupt);
    char idpath[4096];
    str_printf(idpath, sizeof(idpath), "%s/ids", c->spool_dir);
    d->ids = ids_open(idpath, c->id_block, rec.max_mid, err, sizeof(err));
    if (d->ids == NULL) {
        fprintf(stderr, "moatd: %s\n", err);
        return 1;
    }
    /* The server was created before the spool existed (binding comes
     * first); hand it the stores now, before the loop runs. */
    smtp_server_set_stores(d->smtp, d->spool, d->ids);
    d->queue = queue_new(d->base, c, d->spool, d->ids, err, sizeof(err));
    if (d->queue == NULL) {
        fprintf(stderr, "moatd: %s\n", err);
        mlog_system(MLOG_CRITICAL, "%s", err);
        return 1;
    }
    smtp_server_set_resolver(d->smtp, queue_resolver(d->queue));

    control_register(d->control, "status", ctl_status, d);
    control_register(d->control, "hat list", ctl_hat_list, d);
    control_register(d->control, "hat detail", ctl_hat_detail, d);
    control_register(d->control, "hat export", ctl_hat_export, d);
    control_register(d->control, "queue list", ctl_list, d);
    control_register(d->control, "queue show", ctl_show, d);
    control_register(d->control, "queue flush", ctl_flush, d);
    control_register(d->control, "queue delete", ctl_delete, d);
    control_register(d->control, "queue bounce", ctl_bounce, d);
    control_register(d->control, "queue retry", ctl_retry, d);
    control_register(d->control, "tophosts", ctl_tophosts, d);
    control_register(d->control, "hoststatus", ctl_hoststatus, d);
    control_register(d->control, "destconfig list", ctl_dest_list, d);
    control_register(d->control, "destconfig detail", ctl_dest_detail, d);
    control_register(d->control, "destconfig export", ctl_dest_export, d);
    control_register(d->control, "configtest", ctl_configtest, d);
    control_register(d->control, "commit", ctl_commit, d);
    setup_signals(d);
    write_pidfile(c->pidfile);
    d->started = d->committed = time(NULL);
    mlog_system(MLOG_INFO, "moatd %s started, configuration %s", MOAT_VERSION,
                c->path);
    unenforced_notes(c, NULL);
    announce(c);

    event_base_dispatch(d->base);

    /* Sessions first (their commits complete in spool_close), then the
     * stores, then the server whose sessions are all gone. */
    queue_stop(d->queue);
    smtp_server_close_all(d->smtp);
    spool_close(d->spool); /* may still report DSN commits to the queue */
    queue_free(d->queue);
    smtp_server_free(d->smtp);
    ids_close(d->ids);
    control_close(d->control);
    unlink(d->conf->pidfile);
    mlog_system(MLOG_INFO, "moatd stopped");
    return 0;
}

int main(int argc, char **argv)
{
    struct daemon d = {0};
    bool test_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tfVh")) != -1) {
        switch (opt) {
        case 'c':
            d.conf_path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'f':
            break;
        case 'V':
            printf("moatd %s\n", MOAT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    struct conf_errors e = {0};
    d.conf = load_conf(d.conf_path, &e);
    if (d.conf == NULL) {
        conf_errors_print(&e, stderr);
        conf_errors_free(&e);
        return 1;
    }
    if (test_only) {
        char err[512];
        if (!tls_check(d.conf, err, sizeof(err))) {
            fprintf(stderr, "%s: %s\n", d.conf->path, err);
            conf_unref(d.conf);
            return 1;
        }
        printf("moatd: configuration %s is valid\n", d.conf->path);
        conf_unref(d.conf);
        return 0;
    }
    int rc = serve(&d);
    if (d.sig_term) {
        event_free(d.sig_term);
        event_free(d.sig_int);
        event_free(d.sig_hup);
        event_free(d.sig_usr1);
    }
    if (d.drain_timer)
        event_free(d.drain_timer);
    conf_unref(d.conf);
    mlog_close();
    if (d.base)
        event_base_free(d.base);
    return rc;
}
