/*
 * dsn.h - delivery status notifications: the bounce and delay-warning
 * messages the queue sends to a message's envelope sender (RFC 3464
 * fields in an RFC 3462 multipart/report, RFC 6533 types for SMTPUTF8
 * originals, Auto-Submitted per RFC 3834).
 *
 * Pure: no I/O, no clock, no global state. The caller gathers the facts
 * and the first bytes of the original and gets back the complete message
 * (CRLF line ends, no line over 998 octets), to be enqueued with the null
 * sender <>. The result is 7-bit unless the original was received with
 * 8BITMIME/BINARYMIME (`eightbit`) or SMTPUTF8 (`utf8`); the caller gives
 * the DSN the same body flags as the original, never more.
 *
 * Input rules: identifiers (addresses, host names, Message-ID, ENVID,
 * status) are refused if empty, longer than DSN_ID_MAX or holding a
 * control character, and non-ASCII ones are refused unless `utf8`: a
 * changed address would send the report to the wrong place. Free text
 * (subject, moat's reason, the remote reply, the client's HELO) is
 * cleaned instead: line breaks and runs of white space become one space,
 * other controls become '?', non-ASCII (or invalid UTF-8 when `utf8`)
 * becomes '?', and anything past DSN_TEXT_MAX octets is cut to "...".
 *
 * The original: pass the message's full size in `orig_size` and at least
 * its first min(orig_size, max_copy) bytes in `orig` (more is fine and
 * ignored, so a caller may simply hand over a whole mapped message, or
 * read max_copy + 1 bytes). The report never carries more than max_copy
 * bytes of it (appliance `max_bounce_copy`, default DSN_COPY_DEFAULT):
 *   - the whole message (message/rfc822, or message/global) when
 *     orig_size <= max_copy, `hdrs_only` is false, and it survives as
 *     MIME content (no NUL, no bare CR, lines <= 998 octets, 8-bit bytes
 *     only if `eightbit` or `utf8`); bare LF line ends become CRLF;
 *   - else its header section (text/rfc822-headers, or
 *     message/global-headers), up to the first empty line (CRLF CRLF or
 *     bare LF), cut at the last field boundary within max_copy bytes;
 *     controls and undeclared 8-bit bytes become '?', over-long lines are
 *     folded;
 *   - nothing (a two-part report) when max_copy is 0 or there is no
 *     original.
 *
 * Report fields: the standard RFC 3464 ones, plus the extension fields
 * X-Moat-MID (the MID that mail logs and `moatctl` show) and
 * X-Moat-Sender. Diagnostic-Code is "smtp; <remote reply>" when there is
 * a reply, else "X-Moat; <reason>".
 */
#ifndef MOAT_QUEUE_DSN_H
#define MOAT_QUEUE_DSN_H

#include "core/buf.h"

#define DSN_COPY_DEFAULT 10240 /* whole message if at most 10 KB */
#define DSN_ID_MAX 512         /* longest identifier accepted (octets) */
#define DSN_TEXT_MAX 2048      /* free text is cut here (octets) */

enum dsn_kind {
    DSN_FAILURE, /* Action: failed; the recipients are given up */
    DSN_DELAY,   /* Action: delayed; a warning, retries continue */
};

/* One recipient the report is about. Every recipient of a report gets the
 * report's kind as its action. */
struct dsn_rcpt {
    const char *addr;       /* final recipient, as in RCPT TO (required) */
    const char *orcpt;      /* ORCPT xtext-decoded ("rfc822;a@b"), or NULL */
    const char *status;     /* "5.1.1"; class 4 or 5, class 4 for delays */
    const char *remote_mta; /* host name that answered, or NULL */
    const char *reply;      /* its reply, lines split by CRLF, or NULL */
    const char *reason;     /* moat's text ("5.4.7 - Delivery expired..."),
                               or NULL */
    int64_t last_attempt;   /* seconds, 0: never attempted */
};

struct dsn_input {
    enum dsn_kind kind;
    /* This system and the report itself. */
    const char *reporting_mta; /* "gw1.example.com" */
    const char *postmaster;    /* From: "MAILER-DAEMON@gw1.example.com" */
    const char *message_id;    /* "<unique@host>", made by the caller */
    int64_t now;               /* Date: (seconds) */
    const char *subject;       /* NULL or "": "Delivery Status Notification
                                  (Failure)" or "(Delay)" */
    const char *to;            /* report recipient; NULL: the sender
                                  (set for an alternate bounce address) */
    int64_t retry_until;       /* DSN_DELAY: when retries end (required) */
    /* The original's envelope. */
    uint64_t mid;
    const char *sender;    /* MAIL FROM; "" (a bounce) needs `to` */
    int64_t arrival;       /* when it was received */
    const char *envid;     /* ENVID xtext-decoded, or NULL */
    const char *client_ip; /* for Received-From-MTA, or NULL */
    const char *helo;      /* for Received-From-MTA, or NULL */
    bool eightbit;         /* received as 8BITMIME or BINARYMIME */
    bool utf8;             /* received with SMTPUTF8 */
    /* The original's content (see the top of this file). */
    const char *orig;
    size_t orig_len;    /* bytes at `orig` */
    uint64_t orig_size; /* the whole message's size */
    size_t max_copy;    /* 0: include nothing */
    bool hdrs_only;     /* RET=HDRS: never the whole message */
    /* The recipients, at least one. */
    const struct dsn_rcpt *rcpts;
    size_t nrcpt;
};

/* Build the report and append it to `out`. Returns false with a reason
 * in err (and `out` unchanged) when the input is refused. */
bool dsn_build(const struct dsn_input *in, struct buf *out, char *err,
               size_t errlen);

#endif
