/*
 * mime.h - a message as message filters see it (RFC 5322 headers, RFC 2045
 * and 2046 MIME structure): the top-level header fields unfolded, and
 * every leaf part with its content type, disposition, file name, transfer
 * encoding and where its body lies in the message, so that rules can
 * test headers, body text and attachments and actions can edit them.
 *
 * The parser never fails: whatever it cannot read makes the message
 * not `valid` (the `valid` rule) and the rest is taken as well as it can
 * be; a value too long to keep whole also makes it not valid, so a
 * padded field cannot hide a part. message/rfc822 parts are opened.
 * Everything is bounded (MIME_MAX_*). Pure: no I/O.
 */
#ifndef MOAT_POLICY_MIME_H
#define MOAT_POLICY_MIME_H

#include "core/buf.h"
#include "core/util.h"

#define MIME_MAX_HEADERS 1000   /* top-level fields kept */
#define MIME_MAX_PARTS 500      /* leaf parts kept */
#define MIME_MAX_DEPTH 20       /* multipart nesting */
#define MIME_VALUE_MAX 998 * 20 /* bytes of one unfolded field value */

struct mime_header {
    char *name;      /* as written */
    char *value;     /* unfolded (CRLF + WSP -> WSP), leading blanks removed */
    size_t off, len; /* the whole field in the message, CRLF included */
};

struct mime_part {
    char type[128];  /* "text/plain", lower case ("text/plain" when
                        none is given, RFC 2045 5.2) */
    char *filename;  /* Content-Disposition filename or Content-Type
                        name (RFC 2231 forms decoded), "" if none */
    bool attachment; /* Content-Disposition: attachment, or a file
                        name, or not text */
    enum { MIME_7BIT, MIME_QP, MIME_BASE64, MIME_OTHER } cte;
    size_t body_off, body_len; /* the raw (encoded) body in the message */
    unsigned depth;            /* 0: the message itself is this leaf */
};

struct mime_msg {
    size_t nheaders;
    struct mime_header *headers;
    size_t header_len; /* bytes of the top-level header block,
                          the empty line included */
    size_t nparts;
    struct mime_part *parts;
    bool valid;        /* no structural problem found */
    size_t hcap, pcap; /* allocated */
};

/* Parse msg (CRLF or LF line ends). Always fills m; free with mime_free. */
void mime_parse(const char *msg, size_t len, struct mime_msg *m);
void mime_free(struct mime_msg *m);

/* The first top-level field called name (case-insensitive), or NULL;
 * mime_header_count counts them all. */
const struct mime_header *mime_header_find(const struct mime_msg *m,
                                           const char *name);
size_t mime_header_count(const struct mime_msg *m, const char *name);

/* A part's body decoded (base64, quoted-printable; others as they are)
 * appended to out. Bad base64 is skipped, as mail readers do. */
void mime_decode(const struct mime_part *p, const char *msg, struct buf *out);

#endif
