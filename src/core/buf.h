/*
 * buf.h - the one growable byte buffer.
 *
 * A struct buf holds `len` bytes in `data`, always followed by a NUL so
 * text can be used as a C string. Growth is overflow-checked and aborts on
 * out-of-memory. A zeroed struct buf is a valid empty buffer.
 */
#ifndef MOAT_CORE_BUF_H
#define MOAT_CORE_BUF_H

#include "core/util.h"

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b); /* len = 0, keeps the allocation */
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) MOAT_PRINTF(2, 3);
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Remove the first n bytes. */
void buf_consume(struct buf *b, size_t n);
/* Return data as a C string ("" for an empty unallocated buffer). */
const char *buf_str(const struct buf *b);
/* Append s with every byte outside printable ASCII (and the quote char q,
 * if non-zero) escaped: \r \n \t \\ and \xNN; UTF-8 bytes are kept. Used
 * for untrusted text in log lines. */
void buf_put_escaped(struct buf *b, const char *s, size_t len, char q);

#endif
