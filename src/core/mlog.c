/*
 * mlog.c - the mail log writer and one function per event (see mlog.h).
 *
 * Never blocks on anything but the write() of a line into the page cache;
 * never lets untrusted text through unescaped; a failed write is counted
 * and reported once on stderr, never fatal (mail flow must not stop
 * because the log disk is full).
 */
#include "core/mlog.h"
#include "core/buf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static struct {
    int fd;
    char *path;
    bool use_syslog;
    bool write_failed;
    void (*capture)(void *, const char *);
    void *capture_arg;
} lg = {.fd = -1};

static const char *const level_names[] = {
    [MLOG_CRITICAL] = "Critical",
    [MLOG_WARNING] = "Warning",
    [MLOG_INFO] = "Info",
    [MLOG_DEBUG] = "Debug",
};

static const int level_prio[] = {
    [MLOG_CRITICAL] = LOG_CRIT,
    [MLOG_WARNING] = LOG_WARNING,
    [MLOG_INFO] = LOG_INFO,
    [MLOG_DEBUG] = LOG_DEBUG,
};

void mlog_format(char *out, size_t outlen, long long t, enum mlog_level lvl,
                 const char *msg)
{
    struct tm tm;
    time_t tt = (time_t)t;
    char stamp[64];
    localtime_r(&tt, &tm);
    /* ctime(3) layout: "Tue Oct  8 13:21:35 2024". */
    strftime(stamp, sizeof(stamp), "%a %b %e %H:%M:%S %Y", &tm);
    if (!str_printf(out, outlen, "%s %s: %s\n", stamp, level_names[lvl], msg)) {
        /* Keep the line a line even when truncated. */
        if (outlen >= 2) {
            out[outlen - 2] = '\n';
            out[outlen - 1] = '\0';
        }
    }
}

/* Write one finished line to every destination. */
static void emit(enum mlog_level lvl, const char *msg)
{
    char line[8192];
    mlog_format(line, sizeof(line), (long long)time(NULL), lvl, msg);
    if (lg.capture) {
        lg.capture(lg.capture_arg, line);
        return;
    }
    int fd = lg.fd >= 0 ? lg.fd : STDERR_FILENO;
    size_t len = strlen(line);
    ssize_t n;
    do
        n = write(fd, line, len);
    while (n < 0 && errno == EINTR);
    if ((n < 0 || (size_t)n != len) && !lg.write_failed) {
        lg.write_failed = true;
        fprintf(stderr, "moat: mail log write failed: %s\n",
                n < 0 ? strerror(errno) : "short write");
    } else if (n >= 0 && (size_t)n == len)
        lg.write_failed = false;
    if (lg.use_syslog)
        syslog(LOG_MAIL | level_prio[lvl], "%s: %s", level_names[lvl], msg);
}

static void vlogf(enum mlog_level lvl, const char *fmt, va_list ap)
{
    struct buf b = {0};
    buf_vprintf(&b, fmt, ap);
    emit(lvl, buf_str(&b));
    buf_free(&b);
}

static void MOAT_PRINTF(1, 2) info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlogf(MLOG_INFO, fmt, ap);
    va_end(ap);
}

/* Escape untrusted text into a temporary buffer, bounded. */
static const char *esc(struct buf *b, const char *s, size_t len, char q)
{
    buf_reset(b);
    if (s == NULL)
        return "";
    bool cut = len > MLOG_TEXT_MAX;
    buf_put_escaped(b, s, cut ? MLOG_TEXT_MAX : len, q);
    if (cut)
        buf_puts(b, "...");
    return buf_str(b);
}

static bool open_fd(const char *path, int *fd, char *err, size_t errlen)
{
    *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (*fd < 0) {
        if (err)
            str_printf(err, errlen, "cannot open mail log %s: %s", path,
                       strerror(errno));
        return false;
    }
    return true;
}

bool mlog_open(const char *path, bool use_syslog, const char *version,
               const char *serial, char *err, size_t errlen)
{
    int fd;
    if (!open_fd(path, &fd, err, errlen))
        return false;
    mlog_close();
    lg.fd = fd;
    lg.path = xstrdup(path);
    lg.use_syslog = use_syslog;
    if (use_syslog)
        openlog("moatd", LOG_PID | LOG_NDELAY, LOG_MAIL);
    struct tm tm;
    time_t now = time(NULL);
    localtime_r(&now, &tm);
    info("Begin Logfile");
    info("Version: %s SN: %s", version, serial);
    info("Time offset from UTC: %ld seconds", (long)tm.tm_gmtoff);
    return true;
}

bool mlog_reopen(void)
{
    int fd;
    char err[256];
    if (lg.path == NULL)
        return true;
    if (!open_fd(lg.path, &fd, err, sizeof(err))) {
        mlog_system(MLOG_WARNING, "%s", err);
        return false;
    }
    info("End Logfile");
    close(lg.fd);
    lg.fd = fd;
    info("Begin Logfile");
    return true;
}

void mlog_close(void)
{
    if (lg.fd >= 0) {
        info("End Logfile");
        close(lg.fd);
    }
    lg.fd = -1;
    free(lg.path);
    lg.path = NULL;
    if (lg.use_syslog)
        closelog();
    lg.use_syslog = false;
}

void mlog_capture(void (*fn)(void *arg, const char *line), void *arg)
{
    lg.capture = fn;
    lg.capture_arg = arg;
}

void mlog_system(enum mlog_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlogf(lvl, fmt, ap);
    va_end(ap);
}

/* ---- connection events ------------------------------------------------ */

void mlog_icid_new(uint64_t icid, const char *iface, const char *iface_ip,
                   const char *addr, const char *rdns, bool verified)
{
    struct buf b = {0};
    info("New SMTP ICID %llu interface %s (%s) address %s reverse dns host "
         "%s verified %s",
         (unsigned long long)icid, iface, iface_ip, addr,
         rdns ? esc(&b, rdns, strlen(rdns), 0) : "unknown",
         verified ? "yes" : "no");
    buf_free(&b);
}

void mlog_icid_hat(uint64_t icid, const char *rule, const char *group,
                   const char *match)
{
    info("ICID %llu %s SG %s match %s SBRS not enabled country not enabled",
         (unsigned long long)icid, rule, group, match);
}

void mlog_icid_delayed_reject(uint64_t icid, const char *addr)
{
    info("ICID %llu Delayed HAT REJECT continuing session for recipient "
         "logging (%s)",
         (unsigned long long)icid, addr);
}

void mlog_icid_sender_dns(uint64_t icid, const char *addr, const char *why)
{
    struct buf b = {0};
    info("ICID %llu Address: <%s> sender rejected, envelope sender %s",
         (unsigned long long)icid, esc(&b, addr, strlen(addr), 0), why);
    buf_free(&b);
}

void mlog_auth(uint64_t icid, bool ok, const char *user, const char *mech,
               const char *profile)
{
    struct buf b = {0};
    if (ok)
        info("SMTP Auth: (ICID %llu) succeeded for user: %s using AUTH "
             "mechanism: %s with profile: %s",
             (unsigned long long)icid, esc(&b, user, strlen(user), 0), mech,
             profile);
    else
        info("SMTP Auth (ICID %llu) failed for user: %s using AUTH "
             "mechanism: %s with profile: %s",
             (unsigned long long)icid, esc(&b, user, strlen(user), 0), mech,
             profile);
    buf_free(&b);
}

void mlog_icid_tls_success(uint64_t icid, const char *proto,
                           const char *cipher)
{
    info("ICID %llu TLS success protocol %s cipher %s",
         (unsigned long long)icid, proto, cipher);
}

void mlog_icid_tls_failed(uint64_t icid, const char *why)
{
    struct buf b = {0};
    info("ICID %llu TLS failed: %s", (unsigned long long)icid,
         esc(&b, why, strlen(why), 0));
    buf_free(&b);
}

void mlog_icid_tls_required(uint64_t icid)
{
    info("ICID %llu TLS was required but remote host did not initiate it",
         (unsigned long long)icid);
}

void mlog_auth_required(uint64_t icid)
{
    info("SMTP Auth (ICID %llu) was required but remote host did not "
         "initiate it",
         (unsigned long long)icid);
}

void mlog_icid_close(uint64_t icid)
{
    info("ICID %llu close", (unsigned long long)icid);
}

void mlog_icid_lost(uint64_t icid)
{
    info("ICID %llu lost", (unsigned long long)icid);
}

void mlog_icid_receiving_failed(uint64_t icid, const char *reason)
{
    info("ICID %llu Receiving Failed: %s", (unsigned long long)icid, reason);
}

void mlog_icid_disconnected(uint64_t icid, const char *addr, const char *why)
{
    info("ICID %llu disconnected address %s, %s", (unsigned long long)icid,
         addr, why);
}

void mlog_icid_unknown_command(uint64_t icid, const char *cmd, size_t len)
{
    struct buf b = {0};
    info("ICID %llu Unknown command: %s", (unsigned long long)icid,
         esc(&b, cmd, len, 0));
    buf_free(&b);
}

void mlog_icid_bad_syntax(uint64_t icid, const char *cmd, size_t len)
{
    struct buf b = {0};
    info("ICID %llu Bad syntax for command: %s", (unsigned long long)icid,
         esc(&b, cmd, len, 0));
    buf_free(&b);
}

void mlog_icid_invalid_sender(uint64_t icid, const char *reason,
                              const char *part)
{
    struct buf b = {0};
    info("ICID %llu Invalid sender address: %s: '%s'", (unsigned long long)icid,
         reason, esc(&b, part, strlen(part), '\''));
    buf_free(&b);
}

void mlog_icid_invalid_rcpt(uint64_t icid, uint64_t mid, const char *reason,
                            const char *part)
{
    struct buf b = {0};
    info("ICID %llu MID %llu Invalid recipient address: %s: '%s'",
         (unsigned long long)icid, (unsigned long long)mid, reason,
         esc(&b, part, strlen(part), '\''));
    buf_free(&b);
}

/* ---- message events --------------------------------------------------- */

void mlog_mid_start(uint64_t mid, uint64_t icid)
{
    info("Start MID %llu ICID %llu", (unsigned long long)mid,
         (unsigned long long)icid);
}

void mlog_mid_from(uint64_t mid, uint64_t icid, const char *from)
{
    struct buf b = {0};
    info("MID %llu ICID %llu From: <%s>", (unsigned long long)mid,
         (unsigned long long)icid, esc(&b, from, strlen(from), 0));
    buf_free(&b);
}

void mlog_mid_rcpt(uint64_t mid, uint64_t icid, unsigned rid, const char *to)
{
    struct buf b = {0};
    info("MID %llu ICID %llu RID %u To: <%s>", (unsigned long long)mid,
         (unsigned long long)icid, rid, esc(&b, to, strlen(to), 0));
    buf_free(&b);
}

void mlog_mid_rcpt_rejected(uint64_t mid, uint64_t icid, const char *to,
                            const char *by)
{
    struct buf b = {0};
    info("MID %llu ICID %llu To: <%s> Rejected by %s", (unsigned long long)mid,
         (unsigned long long)icid, esc(&b, to, strlen(to), 0), by);
    buf_free(&b);
}

void mlog_mid_message_id(uint64_t mid, const char *msgid)
{
    struct buf b = {0};
    info("MID %llu Message-ID '%s'", (unsigned long long)mid,
         esc(&b, msgid, strlen(msgid), '\''));
    buf_free(&b);
}

void mlog_mid_subject(uint64_t mid, const char *subject)
{
    struct buf b = {0};
    info("MID %llu Subject '%s'", (unsigned long long)mid,
         esc(&b, subject, strlen(subject), '\''));
    buf_free(&b);
}

void mlog_mid_ready(uint64_t mid, uint64_t bytes, const char *from)
{
    struct buf b = {0};
    info("MID %llu ready %llu bytes from <%s>", (unsigned long long)mid,
         (unsigned long long)bytes, esc(&b, from, strlen(from), 0));
    buf_free(&b);
}

void mlog_mid_queued(uint64_t mid)
{
    info("MID %llu queued for delivery", (unsigned long long)mid);
}

void mlog_mid_aborted(uint64_t mid)
{
    info("Message aborted MID %llu Receiving aborted", (unsigned long long)mid);
}

/* ---- delivery events ---------------------------------------------------- */

/* "[0, 1, 2]" */
static const char *rid_list(struct buf *b, const unsigned *rids, size_t n)
{
    buf_reset(b);
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++)
        buf_printf(b, i ? ", %u" : "%u", rids[i]);
    buf_putc(b, ']');
    return buf_str(b);
}

void mlog_dcid_new(uint64_t dcid, const char *iface_ip, const char *addr,
                   unsigned port)
{
    info("New SMTP DCID %llu interface %s address %s port %u",
         (unsigned long long)dcid, iface_ip[0] ? iface_ip : "unknown", addr,
         port);
}

void mlog_dcid_close(uint64_t dcid)
{
    info("DCID %llu close", (unsigned long long)dcid);
}

void mlog_tls_client_time(double seconds)
{
    info("TLS processing time client side: %.9f", seconds);
}

void mlog_dcid_tls_success(uint64_t dcid, const char *proto,
                           const char *cipher, const char *domain)
{
    info("DCID %llu TLS success protocol %s cipher %s for %s",
         (unsigned long long)dcid, proto, cipher, domain);
}

void mlog_dcid_tls_failed(uint64_t dcid, const char *why)
{
    struct buf b = {0};
    info("DCID %llu TLS failed: %s", (unsigned long long)dcid,
         esc(&b, why, strlen(why), 0));
    buf_free(&b);
}

void mlog_dcid_tls_required(uint64_t dcid, const char *ip)
{
    info("DCID %llu IP %s TLS was required but could not be successfully "
         "negotiated",
         (unsigned long long)dcid, ip);
}

void mlog_dcid_dane_success(uint64_t dcid, const char *host, int usage)
{
    info("DCID %llu DANE success for %s: %s record matched",
         (unsigned long long)dcid, host,
         usage == 3 ? "DANE-EE" : usage == 2 ? "DANE-TA" : "TLSA");
}

void mlog_dane_failed(const char *host, const char *ip, const char *why)
{
    struct buf b = {0};
    info("DANE failed for %s (%s): %s", host, ip,
         esc(&b, why, strlen(why), 0));
    buf_free(&b);
}

void mlog_dane_unused(const char *domain, const char *host, const char *why)
{
    struct buf b = {0};
    info("DANE not used for %s (%s): %s; TLS as configured", domain, host,
         esc(&b, why, strlen(why), 0));
    buf_free(&b);
}

void mlog_dcid_tls_unverified(uint64_t dcid, const char *domain,
                              const char *why)
{
    struct buf b = {0};
    info("DCID %llu TLS certificate not verified for %s: %s; delivering "
         "encrypted",
         (unsigned long long)dcid, domain, esc(&b, why, strlen(why), 0));
    buf_free(&b);
}

void mlog_dcid_delivery_start(uint64_t dcid, uint64_t mid, const unsigned *rids,
                              size_t n)
{
    struct buf b = {0};
    info("Delivery start DCID %llu MID %llu to RID %s",
         (unsigned long long)dcid, (unsigned long long)mid,
         rid_list(&b, rids, n));
    buf_free(&b);
}

void mlog_dcid_message_done(uint64_t dcid, uint64_t mid, const unsigned *rids,
                            size_t n)
{
    struct buf b = {0};
    info("Message done DCID %llu MID %llu to RID %s", (unsigned long long)dcid,
         (unsigned long long)mid, rid_list(&b, rids, n));
    buf_free(&b);
}

void mlog_mid_response(uint64_t mid, const unsigned *rids, size_t n,
                       const char *text)
{
    struct buf b = {0}, t = {0};
    rid_list(&b, rids, n);
    info("MID %llu RID %s Response '%s'", (unsigned long long)mid, buf_str(&b),
         esc(&t, text, strlen(text), '\''));
    buf_free(&b);
    buf_free(&t);
}

void mlog_mid_finished(uint64_t mid, bool aborted)
{
    info("Message finished MID %llu %s", (unsigned long long)mid,
         aborted ? "aborted" : "done");
}

void mlog_connection_error(uint64_t dcid, const char *domain, const char *ip,
                           unsigned port, const char *details,
                           const char *iface, const char *reason)
{
    struct buf b = {0};
    info("Connection Error: DCID %llu domain: %s IP: %s port: %u details: %s "
         "interface: %s reason: %s",
         (unsigned long long)dcid, esc(&b, domain, strlen(domain), 0), ip, port,
         details, iface[0] ? iface : "unknown", reason);
    buf_free(&b);
}

void mlog_dns_error(bool hard, const char *domain, const char *qtype,
                    const char *what)
{
    struct buf b = {0};
    info("%s %s %s - %s", hard ? "DNS Error" : "DNS Temporary Failure",
         esc(&b, domain, strlen(domain), 0), qtype, what);
    buf_free(&b);
}

void mlog_bounced(bool delayed, uint64_t dcid, uint64_t mid, unsigned rid,
                  const char *enh, const char *reason, const char *code,
                  const char *text)
{
    struct buf b = {0};
    info("%s: DCID %llu MID %llu to RID %u - %s - %s ('%s', ['%s'])",
         delayed ? "Delayed" : "Bounced", (unsigned long long)dcid,
         (unsigned long long)mid, rid, enh, reason, code,
         esc(&b, text, strlen(text), '\''));
    buf_free(&b);
}

void mlog_double_bounce(uint64_t mid, unsigned rid, const char *enh,
                        const char *reason)
{
    info("Double bounce: MID %llu to RID %u - %s - %s", (unsigned long long)mid,
         rid, enh, reason);
}

void mlog_mid_bounce_of(uint64_t newmid, uint64_t mid)
{
    info("MID %llu was generated for bounce of MID %llu",
         (unsigned long long)newmid, (unsigned long long)mid);
}

void mlog_mid_pending(uint64_t mid, const unsigned *rids, size_t n,
                      long long until)
{
    struct buf b = {0};
    char date[64];
    time_t t = (time_t)until;
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a %b %e %H:%M:%S %Y", &tm);
    info("Message %llu to RID %s pending till %s", (unsigned long long)mid,
         rid_list(&b, rids, n), date);
    buf_free(&b);
}

void mlog_mid_deleted(uint64_t mid, const unsigned *rids, size_t n,
                      const char *why)
{
    struct buf b = {0};
    info("Deleted: MID %llu to %s (%s)", (unsigned long long)mid,
         rid_list(&b, rids, n), why);
    buf_free(&b);
}

void mlog_mid_devnull(uint64_t mid, const unsigned *rids, size_t n,
                      const char *route)
{
    struct buf b = {0}, r = {0};
    rid_list(&b, rids, n);
    info("MID %llu RID %s dropped by SMTP route '%s' to /dev/null",
         (unsigned long long)mid, buf_str(&b),
         esc(&r, route, strlen(route), '\''));
    buf_free(&b);
    buf_free(&r);
}
