/*
 * smtpc.h - the SMTP client: one outbound connection (RFC 5321).
 *
 * A connection is opened to one address, reads the greeting, says EHLO
 * (HELO when EHLO is refused), and then carries transactions one at a
 * time: MAIL, RCPT for each recipient, DATA and the content, pipelined
 * when the server offers PIPELINING. Each transaction ends with a result
 * per recipient. The owner (the delivery queue) decides what the replies
 * mean for each message; this module only speaks the protocol and says
 * what happened, and logs nothing.
 *
 * It copes with odd servers: any 2xx greeting is taken whatever its text
 * (firewalls mask banners, e.g. "220 2**0********", and may even mask the
 * code's digits: "2**" counts as 220); multi-line replies are bounded; a
 * 421 or a close at any point ends the connection with what is known.
 *
 * STARTTLS (RFC 3207): when the owner gives a TLS mode and a client
 * context, the client says STARTTLS after EHLO, runs the handshake
 * through a libevent OpenSSL filter over the same socket, checks the
 * server's certificate as the mode asks, and says EHLO again inside TLS
 * before ready(). What happened (protocol, cipher, verification, time,
 * or why TLS was not used) is in smtpc_tls(). The six modes are the
 * appliance's destination-control TLS settings (docs/delivery.md):
 *   NO                 never STARTTLS
 *   PREFERRED          plaintext when STARTTLS is not offered or is
 *                      refused (any reply but 220); after a 220 a failed
 *                      handshake fails the connection (SMTPC_TLS)
 *   REQUIRED           TLS or SMTPC_TLS; the certificate is not checked
 *   PREFERRED_VERIFY   as PREFERRED; the certificate is checked, and a
 *                      failed check is reported but the session goes on
 *   REQUIRED_VERIFY    TLS with a certificate that chains to a trusted CA
 *                      and names one of tls_names, or SMTPC_TLS
 *   REQUIRED_VERIFY_HOSTED  the same; the owner passes only the hosted
 *                      (recipient) domain in tls_names
 * With TLSA records (ntlsa > 0) the mode is DANE: TLS is required and the
 * certificate must match a record (SMTPC_TLS otherwise).
 * After a 220 to STARTTLS, bytes the server sent behind it are not taken
 * as TLS (a server-side injection fails the connection).
 *
 * Threading: loop thread only. Callbacks never run inside a call made by
 * the owner, so the owner may free the connection from any callback.
 */
#ifndef MOAT_DELIVERY_SMTPC_H
#define MOAT_DELIVERY_SMTPC_H

#include "core/util.h"

#include <sys/socket.h>
#include <sys/types.h>

struct event_base;
struct smtpc;
typedef struct ssl_ctx_st SSL_CTX;

#define SMTPC_TEXT_MAX 1024   /* reply text kept (all lines) */
#define SMTPC_LINE_MAX 2048   /* longest reply line accepted */
#define SMTPC_LINES_MAX 200   /* lines of one multi-line reply */

/* Server extensions seen in the EHLO reply. */
#define SMTPC_CAP_PIPELINING 0x01u
#define SMTPC_CAP_SIZE 0x02u
#define SMTPC_CAP_8BITMIME 0x04u
#define SMTPC_CAP_ENHANCED 0x08u
#define SMTPC_CAP_SMTPUTF8 0x10u
#define SMTPC_CAP_STARTTLS 0x20u
#define SMTPC_CAP_CHUNKING 0x40u

/* A reply. code 0 means "no reply" (the connection failed before one). */
struct smtpc_reply {
    int code;
    char enh[16];               /* "5.1.1" when given, else "" */
    char text[SMTPC_TEXT_MAX];  /* lines after the code (and enhanced
                                   code), joined with " / "; printable */
};

/* How a connection ended or failed. */
enum smtpc_fail {
    SMTPC_OK = 0,
    SMTPC_CONNECT,    /* TCP connect failed (refused, unreachable) */
    SMTPC_TIMEOUT,    /* a phase timed out */
    SMTPC_EOF,        /* the server closed the connection */
    SMTPC_NETWORK,    /* read/write error */
    SMTPC_PROTOCOL,   /* unreadable reply (bad code, too long) */
    SMTPC_GREETING,   /* greeting was not 2xx (reply has it) */
    SMTPC_HELO,       /* EHLO and HELO refused (reply has it) */
    SMTPC_SHUTDOWN,   /* 421 from the server (reply has it) */
    SMTPC_TLS,        /* TLS required or begun and not achieved; see
                         smtpc_tls()->error (reply: the STARTTLS reply) */
};

enum smtpc_tls_mode {
    SMTPC_TLS_NO,
    SMTPC_TLS_PREFERRED,
    SMTPC_TLS_REQUIRED,
    SMTPC_TLS_PREFERRED_VERIFY,
    SMTPC_TLS_REQUIRED_VERIFY,
    SMTPC_TLS_REQUIRED_VERIFY_HOSTED,
};

#define SMTPC_TLS_NAMES_MAX 4
#define SMTPC_TLSA_MAX 8

/* A usable TLSA record (RFC 7672: usage 2 DANE-TA or 3 DANE-EE). */
struct smtpc_tlsa {
    uint8_t usage, selector, mtype;
    size_t len;
    const uint8_t *data;
};

/* What STARTTLS came to on a connection. */
struct smtpc_tls_info {
    bool required;         /* the mode (or DANE) required TLS */
    bool offered;          /* the server offered STARTTLS */
    bool active;           /* the session is encrypted */
    bool checked;          /* the certificate was checked (a verify mode
                              or DANE) */
    bool dane;             /* checked against TLSA records */
    int dane_usage;        /* usage of the record that matched, or -1 */
    bool verified;         /* ... and passed: trusted chain, name matched */
    char protocol[16];     /* "TLSv1.3" */
    char cipher[64];       /* "TLS_AES_256_GCM_SHA384" */
    char peer_name[256];   /* the reference name the certificate matched */
    char verify_error[160]; /* why the check failed */
    double seconds;        /* STARTTLS sent to handshake done */
    char error[256];       /* not active: why (empty when not tried or
                              not offered in a preferred mode) */
};

const char *smtpc_fail_name(enum smtpc_fail f);

struct smtpc_config {
    const char *helo;
    unsigned connect_timeout;
    unsigned greeting_timeout;
    unsigned command_timeout;
    unsigned data_timeout;
    unsigned data_done_timeout;
    /* STARTTLS (see above). tls_ctx NULL or mode NO: plaintext. */
    SSL_CTX *tls_ctx;
    enum smtpc_tls_mode tls_mode;
    const char *tls_sni;   /* server name sent (a host name, or NULL) */
    size_t tls_nnames;     /* reference names for the verify modes */
    const char *tls_names[SMTPC_TLS_NAMES_MAX];
    /* DANE (RFC 7672): with TLSA records the session must be TLS and the
     * certificate must match one of them (DANE-EE: the key or certificate
     * alone; DANE-TA: a chain to that CA naming dane_name), whatever
     * tls_mode says; no fallback. */
    size_t ntlsa;
    const struct smtpc_tlsa *tlsa;
    const char *dane_name; /* TLSA base domain: the MX host name */
};

/* One transaction. Strings must stay valid until its callback. */
struct smtpc_txn {
    const char *mail_from; /* "" for the null sender */
    bool body_8bit;        /* send BODY=8BITMIME if offered */
    bool smtputf8;         /* send SMTPUTF8 if offered */
    uint64_t size;         /* content bytes, for SIZE= */
    size_t nrcpt;
    const char *const *rcpts;
    /* Content source: fill buf, return bytes (0 at the end, -1 on error).
     * The bytes are the message as stored: CRLF lines; the client adds
     * dot-stuffing and the final ".". */
    ssize_t (*read)(void *arg, void *buf, size_t n);
    void *read_arg;
};

/* The outcome of a transaction. */
struct smtpc_result {
    enum smtpc_fail fail;         /* SMTPC_OK if the dialogue completed */
    struct smtpc_reply mail;      /* reply to MAIL (code 0: not reached) */
    struct smtpc_reply *rcpt;     /* nrcpt replies (code 0: not reached) */
    struct smtpc_reply data;      /* reply to DATA (354 when sent) */
    struct smtpc_reply done;      /* reply after the final dot */
    bool content_error;           /* the read callback failed */
};

struct smtpc_callbacks {
    /* Optional: the TCP connection is up (before the greeting). The owner
     * must not free the connection here. */
    void (*connected)(void *arg, struct smtpc *c);
    /* Connected, greeted and EHLO/HELO accepted: ready for a transaction.
     * local_ip: our address on this connection (for the log). */
    void (*ready)(void *arg, struct smtpc *c);
    /* The connection failed or ended outside a transaction (during
     * connect, greeting, EHLO, or while idle). The owner must call
     * smtpc_free(). reply has what the server said, if anything. */
    void (*failed)(void *arg, struct smtpc *c, enum smtpc_fail f,
                   const struct smtpc_reply *reply);
    /* A transaction finished (res->fail says whether the connection is
     * still usable: SMTPC_OK means yes). */
    void (*txn_done)(void *arg, struct smtpc *c, const struct smtpc_result *res);
    /* Optional: after smtpc_quit(), the connection is closed (221, EOF or
     * QUIT_WAIT passed) and about to be freed by smtpc itself. */
    void (*closed)(void *arg, struct smtpc *c);
};

/* Start connecting to sa. Returns NULL only when memory runs out (errno
 * set); every connection error, even one known at once (EINVAL,
 * ENETUNREACH), is reported later through failed(). */
struct smtpc *smtpc_connect(struct event_base *base,
                            const struct smtpc_config *cfg,
                            const struct sockaddr *sa, socklen_t salen,
                            const struct smtpc_callbacks *cb, void *arg);
/* Send a transaction (only after ready() or a txn_done() with SMTPC_OK). */
void smtpc_send(struct smtpc *c, const struct smtpc_txn *t);
/* Say QUIT, wait briefly for the reply, close and free; only closed()
 * is called (if set). */
void smtpc_quit(struct smtpc *c);
/* Close and free now (no callbacks). */
void smtpc_free(struct smtpc *c);

/* Capabilities (SMTPC_CAP_*), the server's SIZE limit (0 if none). */
unsigned smtpc_caps(const struct smtpc *c);
uint64_t smtpc_max_size(const struct smtpc *c);
/* Our local address, as text ("" before connecting). */
const char *smtpc_local_ip(const struct smtpc *c);
/* What STARTTLS came to (valid from ready() or failed() on). */
const struct smtpc_tls_info *smtpc_tls(const struct smtpc *c);
const char *smtpc_tls_mode_name(enum smtpc_tls_mode m);

/* Parse one reply line: "ddd" then ' ', '-' or end. Returns the code
 * (200-599) and sets *more for a '-' continuation, or -1. A masked code
 * ("2**") is read as 220 only when masked_ok. */
int smtpc_parse_line(const char *line, size_t len, bool *more,
                     bool masked_ok);

#endif
