/*
 * smtp_cmd.h - SMTP command line and address parsing (RFC 5321, 6531, 1870,
 * 6152, 3030). Pure functions: no I/O, no allocation beyond the caller's
 * structs. Every input is bounded by the limits below; a violation returns
 * the reply to send (smtp_reply.h).
 */
#ifndef MOAT_SMTP_CMD_H
#define MOAT_SMTP_CMD_H

#include "core/util.h"
#include "smtp/smtp_reply.h"

#define SMTP_CMD_LINE_MAX 512  /* command line incl. CRLF (RFC 5321 4.5.3.1.4) */
#define SMTP_PATH_MAX 256      /* reverse/forward path incl. <> (4.5.3.1.3) */
#define SMTP_LOCAL_MAX 64      /* local part (4.5.3.1.1) */
#define SMTP_DOMAIN_MAX 255    /* domain (4.5.3.1.2) */
#define SMTP_TEXT_LINE_MAX 1000 /* text line incl. CRLF (4.5.3.1.6) */

enum smtp_verb {
    SMTP_UNKNOWN = 0,
    SMTP_HELO,
    SMTP_EHLO,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_DATA,
    SMTP_BDAT,
    SMTP_RSET,
    SMTP_NOOP,
    SMTP_QUIT,
    SMTP_VRFY,
    SMTP_EXPN,
    SMTP_HELP,
    SMTP_STARTTLS,
    SMTP_AUTH,
};

struct smtp_cmd {
    enum smtp_verb verb;
    const char *name; /* canonical verb name ("MAIL"), or NULL if unknown */
    const char *arg;  /* text after the verb and its separating blanks,
                         trailing blanks trimmed ("" if none); points into
                         argbuf, so do not copy a struct smtp_cmd by value */
    char argbuf[SMTP_CMD_LINE_MAX]; /* private: the trimmed argument */
};

/* Split a command line (without CRLF, NUL-terminated, len bytes) into verb
 * and argument. Returns R_NONE on success; R_UNKNOWN_CMD for an unknown
 * verb (out->verb = SMTP_UNKNOWN, out->arg still set); R_SYNTAX when the
 * line holds a NUL, a bare CR or LF, or other control characters;
 * R_LINE_TOO_LONG when len > SMTP_CMD_LINE_MAX - 2. `MAIL FROM:` and
 * `RCPT TO:` are recognised by their verb; the "FROM:"/"TO:" keyword is
 * checked by smtp_parse_mail/smtp_parse_rcpt. */
enum smtp_reply_id smtp_cmd_parse(const char *line, size_t len,
                                  struct smtp_cmd *out);

/* A parsed mailbox. `addr` is the address without angle brackets and with
 * any source route removed: "" for the null path <>, "postmaster" (lower
 * case) for <postmaster> in any case, else "local@domain" (local part as
 * written, quotes kept; domain as written). */
struct smtp_path {
    char addr[SMTP_PATH_MAX + 1];
    size_t local_len;   /* bytes of the local part in addr */
    const char *domain; /* points into addr after '@', or NULL */
    bool is_null;       /* <> */
    bool utf8;          /* contains non-ASCII octets */
};

enum smtp_body { SMTP_BODY_7BIT, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };

struct smtp_mail_params {
    uint64_t size;       /* SIZE=, 0 if absent */
    bool size_given;
    enum smtp_body body; /* BODY= */
    bool smtputf8;       /* SMTPUTF8 */
};

/* Parse the argument of MAIL ("FROM:<a@b> SIZE=10 BODY=8BITMIME
 * SMTPUTF8"). Keywords are case-insensitive; a space after the colon is
 * tolerated. Returns R_NONE on success, or R_SYNTAX (no "FROM:"),
 * R_SYNTAX_MAIL, R_PATH_TOO_LONG, R_LOCAL_TOO_LONG, R_DOMAIN_TOO_LONG,
 * R_BAD_PARAM (unknown or repeated parameter, bad value),
 * R_UTF8_NEEDS_SMTPUTF8. On error *why, if not NULL, is set to a short
 * static reason for the log ("missing '<'", "bad domain", ...). */
enum smtp_reply_id smtp_parse_mail(const char *arg, struct smtp_path *path,
                                   struct smtp_mail_params *params,
                                   const char **why);

/* Parse the argument of RCPT ("TO:<a@b>"). The null path is refused;
 * "<postmaster>" (any case) without a domain is allowed. `smtputf8` tells
 * whether the transaction's MAIL carried SMTPUTF8. Errors as for
 * smtp_parse_mail, with R_SYNTAX_RCPT for bad addresses; any RCPT
 * parameter gives R_BAD_PARAM (none are advertised). */
enum smtp_reply_id smtp_parse_rcpt(const char *arg, bool smtputf8,
                                   struct smtp_path *path, const char **why);

/* Validate an EHLO/HELO argument: a domain name or an address literal
 * ([1.2.3.4], [IPv6:...]); must be non-empty, no spaces, at most 255
 * octets. Returns R_NONE or R_HELO_SYNTAX. */
enum smtp_reply_id smtp_parse_helo(const char *arg);

/* Parse "BDAT <size> [LAST]". */
enum smtp_reply_id smtp_parse_bdat(const char *arg, uint64_t *size,
                                   bool *last);

#endif
