/*
 * smtp_data.h - the message content scanner for DATA and BDAT.
 *
 * Fed the bytes a client sends after "354" (or inside BDAT chunks), it
 * finds the end of data (only <CRLF>.<CRLF> ends DATA), removes dot
 * stuffing, and remembers every protocol violation so the session can
 * answer it at end of data instead of dropping the connection:
 *   - a bare LF or a bare CR anywhere (SMTP smuggling, RFC 5321 2.3.8);
 *   - a text line longer than SMTP_TEXT_LINE_MAX octets including CRLF.
 * Content is passed through unchanged (apart from unstuffing) so a clean
 * message is stored byte for byte. It also captures, from the header
 * section, the first Message-ID and Subject header values (unfolded,
 * bounded) for the mail log.
 *
 * Pure: no I/O. Works on arbitrary chunk boundaries (one byte at a time
 * gives the same result as the whole message at once).
 */
#ifndef MOAT_SMTP_DATA_H
#define MOAT_SMTP_DATA_H

#include "core/buf.h"
#include "core/mlog.h"

/* Captured header value bound: one byte more than the mail log shows, so
 * the log sees that a longer value was cut and marks it with "...". */
#define SMTP_DATA_HDR_VALUE_MAX (MLOG_TEXT_MAX + 1)

enum smtp_data_mode {
    SMTP_DATA_DOT,  /* DATA: dot-stuffed, ends at <CRLF>.<CRLF> */
    SMTP_DATA_RAW,  /* BDAT: length-delimited, no dot handling, no end
                       marker; the session calls smtp_data_finish() */
};

/* Violation flags, accumulated over the whole message. */
#define SMTP_DATA_BARE_LF 0x1u   /* LF not preceded by CR */
#define SMTP_DATA_BARE_CR 0x2u   /* CR not followed by LF */
#define SMTP_DATA_LONG_LINE 0x4u /* line over SMTP_TEXT_LINE_MAX octets */

struct smtp_data {
    enum smtp_data_mode mode;
    unsigned flags;       /* SMTP_DATA_* violations seen */
    uint64_t bytes_out;   /* content bytes produced so far (after unstuffing) */
    bool done;            /* DOT mode: terminator seen */
    /* Header capture (the header section ends at the first empty line). */
    bool in_headers;
    struct buf message_id; /* first Message-ID value, unfolded, trimmed */
    struct buf subject;    /* first Subject value, unfolded, trimmed */
    /* Private scanner state (the implementation may add fields here). */
    int state;
    size_t line_len;
    int hdr_capture;       /* which header is being captured, if any */
    struct buf hdr_line;   /* current header line (bounded) */
    unsigned hdr_got;      /* headers already captured (first one wins) */
};

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode);
void smtp_data_free(struct smtp_data *d);

/* Scan `len` bytes. Content is appended to `out`. Returns the number of
 * input bytes consumed: all of them, except in DOT mode when the
 * terminator is found, in which case consumption stops right after the
 * terminator's final LF (the rest belongs to the next command, e.g. a
 * pipelined QUIT) and d->done becomes true. */
size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t len,
                      struct buf *out);

/* RAW mode: call after the LAST chunk. A message whose last line has no
 * CRLF is left as it is (the caller may add one). Also finishes the
 * header capture. */
void smtp_data_finish(struct smtp_data *d);

#endif
