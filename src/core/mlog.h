/*
 * mlog.h - the mail log (the appliance's "mail_logs" text format).
 *
 * Every line is "<Www Mmm dd hh:mm:ss yyyy> <Level>: <message>", written
 * with one write() to a file opened O_APPEND, so lines survive a crash of
 * the daemon and interleave whole. There is one function per event, taking
 * the IDs as arguments; their shapes are the appliance's (see
 * docs/maillog.md, which lists every line moat writes) and are pinned by
 * golden tests. Untrusted text (addresses, subjects, commands) is escaped
 * so a client can never forge a line.
 */
#ifndef MOAT_CORE_MLOG_H
#define MOAT_CORE_MLOG_H

#include "core/util.h"

/* Bound on one untrusted field in a line; longer text is cut and "..."
 * marks the cut. */
#define MLOG_TEXT_MAX 1024

enum mlog_level { MLOG_CRITICAL, MLOG_WARNING, MLOG_INFO, MLOG_DEBUG };

/* Open (create) the log file; also send lines to syslog (LOG_MAIL) when
 * use_syslog. Writes the "Begin Logfile" header. Returns false with a
 * reason in err. Without mlog_open, lines go to stderr. */
bool mlog_open(const char *path, bool use_syslog, const char *version,
               const char *serial, char *err, size_t errlen);
/* Reopen the same path (after rotation). Returns false and keeps writing
 * to the old descriptor if the file cannot be opened. */
bool mlog_reopen(void);
void mlog_close(void);
/* Format the line for `t` into out (used by tests): "Tue Oct  8 13:21:35
 * 2024 Info: msg". */
void mlog_format(char *out, size_t outlen, long long t, enum mlog_level lvl,
                 const char *msg);
/* Tests: capture lines in memory instead of writing them. */
void mlog_capture(void (*fn)(void *arg, const char *line), void *arg);

/* A free-form system line (start-up, warnings). */
void mlog_system(enum mlog_level lvl, const char *fmt, ...)
    MOAT_PRINTF(2, 3);

/* Connections (ICID). */
void mlog_icid_new(uint64_t icid, const char *iface, const char *iface_ip,
                   const char *addr, const char *rdns, bool verified);
void mlog_icid_hat(uint64_t icid, const char *rule, const char *group,
                   const char *match);
/* "ICID 5 Delayed HAT REJECT continuing session for recipient logging
 * (192.0.2.1)" */
void mlog_icid_delayed_reject(uint64_t icid, const char *addr);
/* "ICID 5 Address: <a@b> sender rejected, envelope sender domain ..." */
void mlog_icid_sender_dns(uint64_t icid, const char *addr, const char *why);
/* SMTP AUTH: outcome "succeeded", "failed"; user may be escaped. */
void mlog_auth(uint64_t icid, bool ok, const char *user, const char *mech,
               const char *profile);
void mlog_auth_required(uint64_t icid);
/* STARTTLS: "ICID 5 TLS success protocol TLSv1.3 cipher ...", "ICID 5
 * TLS failed: <reason>", "ICID 5 TLS was required but remote host did not
 * initiate it". */
void mlog_icid_tls_success(uint64_t icid, const char *proto,
                           const char *cipher);
void mlog_icid_tls_failed(uint64_t icid, const char *why);
void mlog_icid_tls_required(uint64_t icid);
void mlog_icid_close(uint64_t icid);
void mlog_icid_lost(uint64_t icid);
void mlog_icid_receiving_failed(uint64_t icid, const char *reason);
void mlog_icid_disconnected(uint64_t icid, const char *addr,
                            const char *why);
void mlog_icid_unknown_command(uint64_t icid, const char *cmd, size_t len);
void mlog_icid_bad_syntax(uint64_t icid, const char *cmd, size_t len);
void mlog_icid_invalid_sender(uint64_t icid, const char *reason,
                              const char *part);
void mlog_icid_invalid_rcpt(uint64_t icid, uint64_t mid, const char *reason,
                            const char *part);

/* Messages (MID). */
void mlog_mid_start(uint64_t mid, uint64_t icid);
void mlog_mid_from(uint64_t mid, uint64_t icid, const char *from);
void mlog_mid_rcpt(uint64_t mid, uint64_t icid, unsigned rid,
                   const char *to);
void mlog_mid_rcpt_rejected(uint64_t mid, uint64_t icid, const char *to,
                            const char *by);
void mlog_mid_message_id(uint64_t mid, const char *msgid);
void mlog_mid_subject(uint64_t mid, const char *subject);
void mlog_mid_ready(uint64_t mid, uint64_t bytes, const char *from);
void mlog_mid_queued(uint64_t mid);
void mlog_mid_aborted(uint64_t mid);

/* Delivery (DCID). RID lists print as "[0, 1, 2]". */
void mlog_dcid_new(uint64_t dcid, const char *iface_ip, const char *addr,
                   unsigned port);
void mlog_dcid_close(uint64_t dcid);
/* Outbound STARTTLS: "TLS processing time client side: 0.012345678",
 * "DCID d TLS success protocol P cipher C for DOMAIN", "DCID d TLS
 * failed: why", "DCID d IP ip TLS was required but could not be
 * successfully negotiated", and the Preferred (Verify) note "DCID d TLS
 * certificate not verified for DOMAIN: why; delivering encrypted". */
void mlog_tls_client_time(double seconds);
void mlog_dcid_tls_success(uint64_t dcid, const char *proto,
                           const char *cipher, const char *domain);
void mlog_dcid_tls_failed(uint64_t dcid, const char *why);
void mlog_dcid_tls_required(uint64_t dcid, const char *ip);
void mlog_dcid_tls_unverified(uint64_t dcid, const char *domain,
                              const char *why);
/* DANE: "DCID d DANE success for HOST: DANE-EE record matched", "DANE
 * failed for HOST (IP): why" (no connection made), "DANE not used for
 * DOMAIN (HOST): why; TLS as configured" (opportunistic). */
void mlog_dcid_dane_success(uint64_t dcid, const char *host, int usage);
void mlog_dane_failed(const char *host, const char *ip, const char *why);
void mlog_dane_unused(const char *domain, const char *host, const char *why);
void mlog_dcid_delivery_start(uint64_t dcid, uint64_t mid,
                              const unsigned *rids, size_t n);
void mlog_dcid_message_done(uint64_t dcid, uint64_t mid,
                            const unsigned *rids, size_t n);
void mlog_mid_response(uint64_t mid, const unsigned *rids, size_t n,
                       const char *text);
void mlog_mid_finished(uint64_t mid, bool aborted);
void mlog_connection_error(uint64_t dcid, const char *domain, const char *ip,
                           unsigned port, const char *details,
                           const char *iface, const char *reason);
/* "DNS Error <domain> MX - NXDomain" (hard) or "DNS Temporary Failure
 * <domain> MX - ServFail" (soft). */
void mlog_dns_error(bool hard, const char *domain, const char *qtype,
                    const char *what);
/* "Bounced: DCID d MID m to RID r - 5.1.1 - reason ('550', ['text'])"
 * (delayed: "Delayed: ..."). code is "000" when no server answered. */
void mlog_bounced(bool delayed, uint64_t dcid, uint64_t mid, unsigned rid,
                  const char *enh, const char *reason, const char *code,
                  const char *text);
void mlog_double_bounce(uint64_t mid, unsigned rid, const char *enh,
                        const char *reason);
void mlog_mid_bounce_of(uint64_t newmid, uint64_t mid);
void mlog_mid_pending(uint64_t mid, const unsigned *rids, size_t n,
                      long long until);
void mlog_mid_deleted(uint64_t mid, const unsigned *rids, size_t n,
                      const char *why);
void mlog_mid_devnull(uint64_t mid, const unsigned *rids, size_t n,
                      const char *route);

#endif
