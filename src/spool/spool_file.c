/*
 * spool_file.c - spool file format: CRC-32, envelope encoding, validation.
 *
 * Owns the byte layout of a spool file (see spool_file.h and
 * docs/spool.md) and nothing else: no directories, no threads. The
 * validator treats every file as hostile: each length is checked against
 * the bytes the file really has before anything is read or allocated, an
 * envelope is at most SPOOL_ENVELOPE_MAX bytes with at most SPOOL_RCPT_MAX
 * recipients, and strings may not contain NUL. It never accepts a file
 * whose end record is missing, short, or disagrees with what came before.
 *
 * How a torn write is detected: a crash can leave a file cut anywhere,
 * or (on a file system that does not order data and size updates) with
 * zeroed or stale blocks inside. A cut shows up as a record whose length
 * runs past the end of the file, or as a file without its end record; a
 * hole shows up as a bad type byte, a bad length, or a CRC mismatch,
 * because the CRC covers every byte before the end record, record headers
 * included.
 */
#include "core/util.h"

#include "spool/spool_file.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_BUF 65536

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* Fill the CRC-32 table for the reflected polynomial 0xEDB88320. */
static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t spool_crc32(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* Store v big-endian in 4 bytes. */
static void be32_put(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Store v big-endian in 8 bytes. */
static void be64_put(unsigned char *p, uint64_t v)
{
    be32_put(p, (uint32_t)(v >> 32));
    be32_put(p + 4, (uint32_t)v);
}

/* Load a big-endian 32-bit value. */
static uint32_t be32_get(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

/* Load a big-endian 64-bit value. */
static uint64_t be64_get(const unsigned char *p)
{
    return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

void spool_put_rec_hdr(unsigned char *p, enum spool_rec type, uint32_t len)
{
    p[0] = (unsigned char)type;
    be32_put(p + 1, len);
}

void spool_put_end(unsigned char *p, uint64_t size, uint32_t crc)
{
    spool_put_rec_hdr(p, SPOOL_REC_END, SPOOL_END_LEN);
    be64_put(p + SPOOL_REC_HDR, size);
    be32_put(p + SPOOL_REC_HDR + 8, crc);
}

void spool_put_status(unsigned char *p, uint32_t rid,
                      const struct spool_rcpt *st)
{
    spool_put_rec_hdr(p, SPOOL_REC_STATUS, SPOOL_STATUS_LEN);
    unsigned char *q = p + SPOOL_REC_HDR;
    be32_put(q, rid);
    q[4] = st->state;
    be32_put(q + 5, st->attempts);
    be64_put(q + 9, (uint64_t)st->next_try);
    be32_put(q + 17, spool_crc32(0, p, SPOOL_REC_HDR + 17));
}

uint64_t spool_file_len(uint64_t content_off, uint64_t size)
{
    uint64_t recs = (size + SPOOL_CHUNK_MAX - 1) / SPOOL_CHUNK_MAX;
    return content_off + size + recs * SPOOL_REC_HDR + SPOOL_REC_HDR +
           SPOOL_END_LEN;
}

/* ---- envelope encoding ---- */

/* Append a big-endian 32-bit value. */
static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char x[4];
    be32_put(x, v);
    buf_append(b, x, sizeof(x));
}

/* Append a big-endian 64-bit value. */
static void put_u64(struct buf *b, uint64_t v)
{
    unsigned char x[8];
    be64_put(x, v);
    buf_append(b, x, sizeof(x));
}

/* Append a length-prefixed string (NULL is ""); false if absurdly long. */
static bool put_str(struct buf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > SPOOL_ENVELOPE_MAX)
        return false;
    put_u32(b, (uint32_t)n);
    buf_append(b, s ? s : "", n);
    return true;
}

/* Append the envelope fields in their fixed order (docs/spool.md). */
static bool put_envelope(struct buf *b, const struct spool_envelope *env)
{
    put_u64(b, env->mid);
    put_u64(b, env->icid);
    put_u64(b, (uint64_t)env->received);
    put_u32(b, (uint32_t)env->flags);
    if (!put_str(b, env->listener) || !put_str(b, env->client_ip) ||
        !put_str(b, env->helo) || !put_str(b, env->mail_from))
        return false;
    put_u32(b, (uint32_t)env->nrcpt);
    for (size_t i = 0; i < env->nrcpt; i++) {
        put_u32(b, (uint32_t)i);
        if (!put_str(b, env->rcpts[i]) || b->len > 2 * SPOOL_ENVELOPE_MAX)
            return false;
    }
    return true;
}

bool spool_file_start(struct buf *out, const struct spool_envelope *env)
{
    static const unsigned char zero[SPOOL_REC_HDR];
    if (env->nrcpt > SPOOL_RCPT_MAX)
        return false;
    buf_append(out, SPOOL_MAGIC, 7);
    buf_putc(out, (char)SPOOL_VERSION);
    size_t at = out->len;
    buf_append(out, zero, sizeof(zero));
    if (!put_envelope(out, env))
        return false;
    size_t len = out->len - at - SPOOL_REC_HDR;
    if (len > SPOOL_ENVELOPE_MAX)
        return false;
    spool_put_rec_hdr((unsigned char *)out->data + at, SPOOL_REC_ENVELOPE,
                      (uint32_t)len);
    return true;
}

/* ---- envelope decoding ---- */

struct cursor {
    const unsigned char *p;
    size_t left;
};

/* Take a 32-bit value from the cursor. */
static bool cur_u32(struct cursor *c, uint32_t *v)
{
    if (c->left < 4)
        return false;
    *v = be32_get(c->p);
    c->p += 4;
    c->left -= 4;
    return true;
}

/* Take a 64-bit value from the cursor. */
static bool cur_u64(struct cursor *c, uint64_t *v)
{
    if (c->left < 8)
        return false;
    *v = be64_get(c->p);
    c->p += 8;
    c->left -= 8;
    return true;
}

/* Take a length-prefixed string without NULs; allocates *out. */
static bool cur_str(struct cursor *c, char **out)
{
    uint32_t n;
    if (!cur_u32(c, &n) || n > c->left || memchr(c->p, '\0', n) != NULL)
        return false;
    *out = xstrndup((const char *)c->p, n);
    c->p += n;
    c->left -= n;
    return true;
}

/* Record a failure reason; always returns false. */
static bool fail(const char **why, const char *reason)
{
    *why = reason;
    return false;
}

/* Decode the recipient list (RIDs must be 0, 1, 2, ... in order). */
static bool parse_rcpts(struct cursor *c, struct spool_entry *e,
                        const char **why)
{
    uint32_t n, rid;
    if (!cur_u32(c, &n))
        return fail(why, "envelope truncated");
    /* Each recipient takes at least 8 bytes: bound before allocating. */
    if (n > SPOOL_RCPT_MAX || n > c->left / 8)
        return fail(why, "too many recipients");
    e->rcpts = xcalloc(n ? n : 1, sizeof(*e->rcpts));
    for (uint32_t i = 0; i < n; i++) {
        if (!cur_u32(c, &rid) || rid != i)
            return fail(why, "bad recipient id");
        if (!cur_str(c, &e->rcpts[i]))
            return fail(why, "bad recipient");
        e->nrcpt = i + 1;
    }
    return true;
}

/* Decode an envelope payload into e (strings allocated). */
static bool parse_envelope(const unsigned char *p, size_t len,
                           struct spool_entry *e, const char **why)
{
    struct cursor c = {p, len};
    uint64_t received;
    uint32_t flags;
    if (!cur_u64(&c, &e->mid) || !cur_u64(&c, &e->icid) ||
        !cur_u64(&c, &received) || !cur_u32(&c, &flags))
        return fail(why, "envelope truncated");
    e->received = (int64_t)received;
    e->flags = flags;
    if (!cur_str(&c, &e->listener) || !cur_str(&c, &e->client_ip) ||
        !cur_str(&c, &e->helo) || !cur_str(&c, &e->mail_from))
        return fail(why, "bad envelope string");
    if (!parse_rcpts(&c, e, why))
        return false;
    if (c.left != 0)
        return fail(why, "trailing bytes in envelope");
    return true;
}

/* ---- file reading ---- */

struct reader {
    int fd;
    uint64_t size; /* the file's size by fstat */
    uint64_t left; /* bytes of the file not consumed yet */
    uint32_t crc;  /* over every byte consumed with crc = true */
    size_t pos, len;
    unsigned char buf[READ_BUF];
};

/* Refill the read buffer; false at an early EOF or a read error. */
static bool rd_fill(struct reader *r)
{
    for (;;) {
        ssize_t n = read(r->fd, r->buf, sizeof(r->buf));
        if (n > 0) {
            r->pos = 0;
            r->len = (size_t)n;
            return true;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return false;
    }
}

/* Consume n bytes into dst (NULL: skip them), adding them to the CRC
 * when crc is true. Never reads past the size the file had at open. */
static bool rd_take(struct reader *r, void *dst, size_t n, bool crc)
{
    unsigned char *d = dst;
    if (n > r->left)
        return false;
    while (n > 0) {
        if (r->pos == r->len && !rd_fill(r))
            return false;
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        if (crc)
            r->crc = spool_crc32(r->crc, r->buf + r->pos, k);
        if (d) {
            memcpy(d, r->buf + r->pos, k);
            d += k;
        }
        r->pos += k;
        r->left -= k;
        n -= k;
    }
    return true;
}

/* Read a record header; the end record's header is not in the CRC. */
static bool rd_header(struct reader *r, int *type, uint32_t *len,
                      const char **why)
{
    unsigned char h[SPOOL_REC_HDR];
    if (!rd_take(r, h, sizeof(h), false))
        return fail(why, "truncated record header");
    *type = h[0];
    *len = be32_get(h + 1);
    if (*type != SPOOL_REC_END)
        r->crc = spool_crc32(r->crc, h, sizeof(h));
    if (*len > r->left)
        return fail(why, "record length beyond end of file");
    return true;
}

/* Check the 8-byte magic and version. */
static bool rd_magic(struct reader *r, const char **why)
{
    unsigned char m[SPOOL_HDR_LEN];
    if (!rd_take(r, m, sizeof(m), true))
        return fail(why, "truncated file header");
    if (memcmp(m, SPOOL_MAGIC, 7) != 0)
        return fail(why, "bad magic");
    if (m[7] != SPOOL_VERSION)
        return fail(why, "unsupported version");
    return true;
}

/* Read and decode the envelope record, which must come first. */
static bool rd_envelope(struct reader *r, struct spool_entry *e,
                        const char **why)
{
    int type;
    uint32_t len;
    if (!rd_header(r, &type, &len, why))
        return false;
    if (type != SPOOL_REC_ENVELOPE)
        return fail(why, "first record is not an envelope");
    if (len > SPOOL_ENVELOPE_MAX)
        return fail(why, "envelope too large");
    unsigned char *p = xmalloc(len);
    bool ok = rd_take(r, p, len, true) ? parse_envelope(p, len, e, why)
                                       : fail(why, "truncated envelope");
    free(p);
    return ok;
}

/* Check the end record against the content length and the CRC. */
static bool rd_end(struct reader *r, uint32_t len, uint64_t size,
                   struct spool_entry *e, const char **why)
{
    unsigned char p[SPOOL_END_LEN];
    uint32_t crc = r->crc;
    if (len != SPOOL_END_LEN)
        return fail(why, "bad end record length");
    if (!rd_take(r, p, sizeof(p), false))
        return fail(why, "truncated end record");
    if (be64_get(p) != size)
        return fail(why, "content length mismatch");
    if (be32_get(p + 8) != crc)
        return fail(why, "CRC mismatch");
    e->size = size;
    return true;
}

/* Apply one status record's payload (CRC already checked). */
static void apply_status(struct spool_entry *e, const unsigned char *q)
{
    uint32_t rid = be32_get(q);
    uint8_t state = q[4];
    if (rid >= e->nrcpt || state > SPOOL_RCPT_DELETED)
        return; /* from a newer version, or meaningless: ignore it */
    struct spool_rcpt *st = &e->rstate[rid];
    bool was_done = st->state != SPOOL_RCPT_PENDING;
    if (was_done)
        return; /* a final state is final */
    st->state = state;
    st->attempts = be32_get(q + 5);
    st->next_try = (int64_t)be64_get(q + 9);
    if (state != SPOOL_RCPT_PENDING)
        e->ndone++;
}

/* Read the status records after the end record. They are appended
 * without a flush, so the file may end in a torn one: the records up to
 * the first bad one count, and e->file_len says where they end (the
 * rest is cut off by recovery before anything is appended). */
static void rd_status(struct reader *r, struct spool_entry *e)
{
    unsigned char rec[SPOOL_REC_HDR + SPOOL_STATUS_LEN];
    e->file_len = r->size - r->left;
    while (r->left >= sizeof(rec)) {
        if (!rd_take(r, rec, sizeof(rec), false))
            return;
        if (rec[0] != SPOOL_REC_STATUS ||
            be32_get(rec + 1) != SPOOL_STATUS_LEN ||
            be32_get(rec + SPOOL_REC_HDR + 17) !=
                spool_crc32(0, rec, SPOOL_REC_HDR + 17))
            return;
        apply_status(e, rec + SPOOL_REC_HDR);
        e->file_len = r->size - r->left;
    }
}

/* Read content records up to and including the end record. */
static bool rd_content(struct reader *r, struct spool_entry *e,
                       const char **why)
{
    uint64_t size = 0;
    for (;;) {
        int type;
        uint32_t len;
        if (!rd_header(r, &type, &len, why))
            return false;
        if (type == SPOOL_REC_END)
            return rd_end(r, len, size, e, why);
        if (type != SPOOL_REC_CONTENT)
            return fail(why, "unexpected record type");
        if (len == 0 || len > SPOOL_CHUNK_MAX)
            return fail(why, "bad content record length");
        if (!rd_take(r, NULL, len, true))
            return fail(why, "truncated content record");
        size += len;
    }
}

bool spool_file_load(int fd, struct spool_entry *e, const char **why)
{
    struct stat st;
    memset(e, 0, sizeof(*e));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return fail(why, "not a regular file");
    struct reader *r = xmalloc(sizeof(*r));
    r->fd = fd;
    r->size = r->left = (uint64_t)st.st_size;
    r->crc = 0;
    r->pos = r->len = 0;
    bool ok = rd_magic(r, why) && rd_envelope(r, e, why);
    if (ok) {
        e->content_off = r->size - r->left;
        e->rstate = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(*e->rstate));
        ok = rd_content(r, e, why);
    }
    if (ok)
        rd_status(r, e);
    free(r);
    if (!ok)
        spool_entry_clear(e);
    return ok;
}

/* ---- entries ---- */

struct spool_entry *spool_entry_from_env(const struct spool_envelope *env)
{
    struct spool_entry *e = xcalloc(1, sizeof(*e));
    e->mid = env->mid;
    e->icid = env->icid;
    e->received = env->received;
    e->listener = xstrdup(env->listener ? env->listener : "");
    e->client_ip = xstrdup(env->client_ip ? env->client_ip : "");
    e->helo = xstrdup(env->helo ? env->helo : "");
    e->mail_from = xstrdup(env->mail_from ? env->mail_from : "");
    e->flags = env->flags;
    e->rcpts = xcalloc(env->nrcpt ? env->nrcpt : 1, sizeof(*e->rcpts));
    e->rstate = xcalloc(env->nrcpt ? env->nrcpt : 1, sizeof(*e->rstate));
    for (size_t i = 0; i < env->nrcpt; i++)
        e->rcpts[i] = xstrdup(env->rcpts[i] ? env->rcpts[i] : "");
    e->nrcpt = env->nrcpt;
    return e;
}

void spool_entry_clear(struct spool_entry *e)
{
    free(e->listener);
    free(e->client_ip);
    free(e->helo);
    free(e->mail_from);
    for (size_t i = 0; i < e->nrcpt; i++)
        free(e->rcpts[i]);
    free(e->rcpts);
    free(e->rstate);
    memset(e, 0, sizeof(*e));
}

void spool_entry_free(struct spool_entry *e)
{
    if (e == NULL)
        return;
    spool_entry_clear(e);
    free(e);
}
