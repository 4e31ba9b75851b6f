/*
 * smtp_reply.h - every fixed SMTP reply the server sends, from one table.
 *
 * Each entry has the basic code, the RFC 3463 enhanced status code and the
 * text. Replies that carry variable text (banner, EHLO, Received) are built
 * by the session; everything else is named here so tests and docs can list
 * them.
 */
#ifndef MOAT_SMTP_REPLY_H
#define MOAT_SMTP_REPLY_H

enum smtp_reply_id {
    R_NONE = 0,          /* no reply (parser: success) */
    R_GENERIC_OK,                /* 250 2.0.0 Ok */
    R_SENDER_OK,         /* 250 2.1.0 Sender ok */
    R_RCPT_OK,           /* 250 2.1.5 Recipient ok */
    R_RESET_OK,          /* 250 2.0.0 Reset state */
    R_DATA_GO,           /* 354 Start mail input; end with <CRLF>.<CRLF> */
    R_BYE,               /* 221 2.0.0 Bye */
    R_VRFY,              /* 252 2.5.0 Cannot VRFY user, but will accept ... */
    R_HELP,              /* 214 2.0.0 see docs */
    R_LINE_TOO_LONG,     /* 500 5.5.2 Line too long */
    R_UNKNOWN_CMD,       /* 500 5.5.1 Command unrecognized */
    R_SYNTAX,            /* 501 5.5.4 Syntax error in parameters */
    R_SYNTAX_MAIL,       /* 501 5.1.7 Bad sender address syntax */
    R_SYNTAX_RCPT,       /* 501 5.1.3 Bad recipient address syntax */
    R_PATH_TOO_LONG,     /* 501 5.5.4 Path too long */
    R_LOCAL_TOO_LONG,    /* 501 5.1.3 Local part too long */
    R_DOMAIN_TOO_LONG,   /* 501 5.1.2 Domain name too long */
    R_HELO_SYNTAX,       /* 501 5.5.4 Syntax: EHLO hostname */
    R_NO_ARGS,           /* 501 5.5.4 No parameters allowed */
    R_BAD_PARAM,         /* 555 5.5.4 Unsupported MAIL/RCPT parameter */
    R_UTF8_NEEDS_SMTPUTF8, /* 553 5.6.7 Non-ASCII address needs SMTPUTF8 */
    R_NOT_IMPL,          /* 502 5.5.1 Command not implemented */
    R_NEED_HELO,         /* 503 5.5.1 Send EHLO/HELO first */
    R_NEED_MAIL,         /* 503 5.5.1 Need MAIL command */
    R_NEED_RCPT,         /* 503 5.5.1 Need RCPT command */
    R_NESTED_MAIL,       /* 503 5.5.1 Sender already specified */
    R_BAD_SEQUENCE,      /* 503 5.5.1 Bad sequence of commands */
    R_BDAT_MIX,          /* 503 5.5.1 DATA not allowed after BDAT */
    R_TOO_MANY_RCPTS,    /* 452 4.5.3 Too many recipients */
    R_TOO_BIG_DECLARED,  /* 552 5.3.4 Message size exceeds fixed limit */
    R_TOO_BIG,           /* 552 5.3.4 Message size exceeds fixed limit */
    R_TOO_MANY_MSGS,     /* 452 4.5.3 Too many messages in this connection */
    R_DATA_LINE_TOO_LONG, /* 554 5.6.0 line longer than 1000 octets */
    R_BARE_LF,           /* 554 5.6.0 bare CR or LF (RFC 5321 2.3.8) */
    R_STORAGE_FULL,      /* 452 4.3.1 Insufficient system storage */
    R_LOCAL_ERROR,       /* 451 4.3.0 Local error in processing */
    R_TOO_MANY_ERRORS,   /* 421 4.7.0 Too many errors */
    R_TIMEOUT,           /* 421 4.4.2 Timeout exceeded */
    R_SHUTDOWN,          /* 421 4.3.2 Service shutting down */
    R_TOO_MANY_CONNS,    /* 421 4.3.2 Too many connections */
    R_RELAY_DENIED,      /* 550 5.7.1 Relaying denied */
    R_ADDR_REJECTED,     /* 550 5.1.0 Address rejected (RAT) */
    R_ACCESS_DENIED,     /* 554 5.7.1 Access denied */
    R_AUTH_NOT_AVAIL,    /* 502 5.5.1 AUTH not available */
    R_AUTH_ALREADY,      /* 503 5.5.1 Already authenticated */
    R_AUTH_IN_TXN,       /* 503 5.5.1 AUTH not permitted in a transaction */
    R_AUTH_MECH,         /* 504 5.5.4 Unrecognized authentication type */
    R_AUTH_REQUIRED,     /* 530 5.7.0 Authentication required */
    R_TLS_REQUIRED,      /* 530 5.7.0 Must issue a STARTTLS command first */
    R_STARTTLS_NOT_AVAIL, /* 502 5.5.1 STARTTLS not available */
    R__COUNT
};

struct smtp_reply {
    unsigned short code;
    const char *enhanced; /* "5.5.1", or NULL for 220/354/214 style */
    const char *text;
};

const struct smtp_reply *smtp_reply_get(enum smtp_reply_id id);

#endif
