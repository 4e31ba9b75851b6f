/*
 * spool.c - the durable message store: directories, recovery, message
 * writing, group commit, and the in-memory queue index.
 *
 * Owns the spool directory: incoming/ (messages being received or waiting
 * for their flush), queue/ (committed messages), corrupt/ (committed files
 * that failed validation at start-up). A file is named by its MID.
 *
 * It must never report a commit as successful before the message's data
 * and its directory entry in queue/ are on stable storage: the SMTP server
 * answers 250 from the commit callback, and a 250 is a promise. It must
 * never block the event loop on a flush: fdatasync and fsync run on one
 * private commit thread, which takes every message committed since its
 * last flush as one batch (group commit) and hands the results back
 * through an eventfd watched by the loop. It must never overwrite a
 * committed file (renames into queue/ refuse to replace).
 *
 * Threading: everything except commit_main() and what it calls runs on
 * the loop thread. The two threads share only the pending and done lists
 * and the stop flag, always under sp->mu. A message belongs to the loop
 * until spool_msg_commit puts it on the pending list, to the commit thread
 * until it is on the done list, and to the loop again afterwards. The
 * index and the statistics are the loop's alone.
 */
#include "core/util.h"

#include "spool/spool.h"
#include "spool/spool_file.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_LEN 24 /* a decimal uint64 and its NUL fit in 21 */
/* The write buffer holds at most one content record plus the end record:
 * a full record is written out as soon as it is complete. */
#define OUT_CAP                                                                \
    (SPOOL_REC_HDR + SPOOL_CHUNK_MAX + SPOOL_REC_HDR + SPOOL_END_LEN)
#define CORRUPT_TRIES 1000

struct batch {
    struct spool_msg *head;
    size_t n;
    struct batch *next;
};

struct spool {
    struct event_base *base;
    struct event *ev;
    int dirfd, incfd, queuefd, corruptfd;
    int evfd; /* commit thread -> loop: "the done list has batches" */
    pthread_t thread;
    bool thread_started;
    bool closing;

    pthread_mutex_t mu; /* guards the four fields below */
    pthread_cond_t cv;  /* signalled when pend grows or stop is set */
    struct spool_msg *pend, **pend_tail;
    struct batch *done, **done_tail;
    bool stop;

    /* loop thread only */
    struct spool_entry **idx; /* sorted by MID */
    size_t nidx, idxcap;
    uint64_t bytes;
    struct spool_stats stats;
    void (*notify)(void *arg, const struct spool_entry *e);
    void *notify_arg;
};

struct spool_msg {
    struct spool *sp;
    struct spool_msg *next;
    struct spool_entry *entry; /* moves into the index on success */
    char name[NAME_LEN];
    int fd;
    int err;       /* first failure, sticky; after the flush: the outcome */
    bool in_queue; /* renamed into queue/ (commit thread) */
    uint64_t size; /* content bytes */
    uint32_t crc;  /* over every byte written so far */
    unsigned char *out; /* framed bytes not yet written (OUT_CAP) */
    size_t outlen;
    size_t rec_at;  /* offset in out of the open content record */
    size_t rec_len; /* payload bytes in the open content record */
    bool rec_open;
    spool_commit_cb cb;
    void *arg;
};

/* ---- small helpers ---- */

/* Format a MID as its file name. */
static void mid_name(char name[NAME_LEN], uint64_t mid)
{
    if (!str_printf(name, NAME_LEN, "%llu", (unsigned long long)mid))
        fatal("spool: MID name overflow");
}

/* Parse a file name that must be a MID in canonical decimal form. */
static bool name_mid(const char *name, uint64_t *mid)
{
    char back[NAME_LEN];
    if (!parse_u64(name, strlen(name), mid))
        return false;
    mid_name(back, *mid);
    return strcmp(back, name) == 0;
}

/* Write all of p, retrying short writes and EINTR; 0 or an errno. */
static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno;
        if (k == 0)
            return EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Fill err with "spool <dir>: <what>: <strerror(e)>". */
static void set_err(char *err, size_t errlen, const char *dir, const char *what,
                    int e)
{
    if (err && errlen)
        (void)str_printf(err, errlen, "spool %s: %s: %s", dir, what,
                         strerror(e));
}

/* ---- index (loop thread) ---- */

/* Index of mid, or of the first entry above it. */
static size_t idx_lower(const struct spool *sp, uint64_t mid)
{
    size_t lo = 0, hi = sp->nidx;
    /* Common case: MIDs grow, so a new one usually belongs at the end. */
    if (hi > 0 && sp->idx[hi - 1]->mid < mid)
        return hi;
    while (lo < hi) {
        size_t k = lo + (hi - lo) / 2;
        if (sp->idx[k]->mid < mid)
            lo = k + 1;
        else
            hi = k;
    }
    return lo;
}

/* Insert e at its place; the memmove is short when MIDs arrive in order. */
static void idx_insert(struct spool *sp, struct spool_entry *e)
{
    size_t at = idx_lower(sp, e->mid);
    sp->idx = xgrow(sp->idx, &sp->idxcap, sp->nidx + 1, sizeof(*sp->idx));
    memmove(&sp->idx[at + 1], &sp->idx[at], (sp->nidx - at) * sizeof(*sp->idx));
    sp->idx[at] = e;
    sp->nidx++;
    sp->bytes += e->size;
}

/* qsort order for index entries. */
static int idx_cmp(const void *a, const void *b)
{
    uint64_t x = (*(struct spool_entry *const *)a)->mid;
    uint64_t y = (*(struct spool_entry *const *)b)->mid;
    return x < y ? -1 : x > y;
}

size_t spool_count(const struct spool *sp)
{
    return sp->nidx;
}

uint64_t spool_bytes(const struct spool *sp)
{
    return sp->bytes;
}

const struct spool_entry *spool_find(const struct spool *sp, uint64_t mid)
{
    size_t at = idx_lower(sp, mid);
    return at < sp->nidx && sp->idx[at]->mid == mid ? sp->idx[at] : NULL;
}

void spool_foreach(const struct spool *sp,
                   bool (*fn)(void *arg, const struct spool_entry *e),
                   void *arg)
{
    for (size_t i = 0; i < sp->nidx; i++)
        if (!fn(arg, sp->idx[i]))
            return;
}

void spool_get_stats(const struct spool *sp, struct spool_stats *st)
{
    *st = sp->stats;
}

/* ---- writing a message (loop thread) ---- */

/* Create incoming/<mid> exclusively and write the header and envelope. */
static struct spool_msg *msg_create(struct spool *sp,
                                    const struct spool_envelope *env,
                                    const struct buf *hdr, int *e)
{
    char name[NAME_LEN];
    mid_name(name, env->mid);
    int fd = openat(sp->incfd, name,
                    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        *e = errno;
        return NULL;
    }
    *e = write_all(fd, (const unsigned char *)hdr->data, hdr->len);
    if (*e != 0) {
        close(fd);
        unlinkat(sp->incfd, name, 0);
        return NULL;
    }
    struct spool_msg *m = xcalloc(1, sizeof(*m));
    m->sp = sp;
    m->fd = fd;
    memcpy(m->name, name, sizeof(name));
    m->entry = spool_entry_from_env(env);
    m->entry->content_off = hdr->len;
    m->crc = spool_crc32(0, hdr->data, hdr->len);
    return m;
}

struct spool_msg *spool_msg_begin(struct spool *sp,
                                  const struct spool_envelope *env, int *errnum)
{
    struct spool_msg *m = NULL;
    struct buf hdr;
    int e = 0;
    buf_init(&hdr);
    if (sp->closing)
        e = ESHUTDOWN;
    else if (!spool_file_start(&hdr, env))
        e = E2BIG;
    else if (spool_find(sp, env->mid) != NULL)
        e = EEXIST;
    else
        m = msg_create(sp, env, &hdr, &e);
    buf_free(&hdr);
    if (m == NULL && errnum)
        *errnum = e;
    return m;
}

/* Write out the buffered bytes (already in the CRC); errors are sticky. */
static void out_write(struct spool_msg *m)
{
    if (m->err == 0)
        m->err = write_all(m->fd, m->out, m->outlen);
    m->outlen = 0;
}

/* Add the buffered bytes to the CRC and write them out. */
static void out_flush(struct spool_msg *m)
{
    m->crc = spool_crc32(m->crc, m->out, m->outlen);
    out_write(m);
}

/* Start a content record; its length is filled in by rec_close. */
static void rec_open(struct spool_msg *m)
{
    if (m->out == NULL)
        m->out = xmalloc(OUT_CAP);
    m->rec_at = m->outlen;
    m->outlen += SPOOL_REC_HDR;
    m->rec_len = 0;
    m->rec_open = true;
}

/* Finish the open content record by writing its header. */
static void rec_close(struct spool_msg *m)
{
    spool_put_rec_hdr(m->out + m->rec_at, SPOOL_REC_CONTENT,
                      (uint32_t)m->rec_len);
    m->rec_open = false;
}

int spool_msg_write(struct spool_msg *m, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0 && m->err == 0) {
        if (!m->rec_open)
            rec_open(m);
        size_t n = SPOOL_CHUNK_MAX - m->rec_len;
        if (n > len)
            n = len;
        memcpy(m->out + m->outlen, p, n);
        m->outlen += n;
        m->rec_len += n;
        m->size += n;
        p += n;
        len -= n;
        if (m->rec_len == SPOOL_CHUNK_MAX) {
            rec_close(m);
            out_flush(m); /* one write of a full 64 KiB record */
        }
    }
    return m->err;
}

uint64_t spool_msg_size(const struct spool_msg *m)
{
    return m->size;
}

/* Write the last content record and the end record. The end record is
 * written last and carries the CRC of everything before it: a file
 * whose end record made it to disk intact is complete. */
static void msg_finish_file(struct spool_msg *m)
{
    if (m->out == NULL)
        m->out = xmalloc(OUT_CAP);
    if (m->rec_open)
        rec_close(m);
    m->crc = spool_crc32(m->crc, m->out, m->outlen);
    spool_put_end(m->out + m->outlen, m->size, m->crc);
    m->outlen += SPOOL_REC_HDR + SPOOL_END_LEN;
    out_write(m);
}

/* Free a message and whatever it still holds (not its file). */
static void msg_free(struct spool_msg *m)
{
    if (m->fd >= 0)
        close(m->fd);
    free(m->out);
    spool_entry_free(m->entry);
    free(m);
}

void spool_msg_commit(struct spool_msg *m, spool_commit_cb cb, void *arg)
{
    struct spool *sp = m->sp;
    m->cb = cb;
    m->arg = arg;
    if (m->err == 0)
        msg_finish_file(m);
    free(m->out);
    m->out = NULL;
    m->entry->size = m->size;
    m->entry->file_len = spool_file_len(m->entry->content_off, m->size);
    /* A failed message goes the same way: its callback must not run
     * inside this function, and the commit thread unlinks its file. */
    pthread_mutex_lock(&sp->mu);
    *sp->pend_tail = m;
    sp->pend_tail = &m->next;
    pthread_cond_signal(&sp->cv);
    pthread_mutex_unlock(&sp->mu);
}

void spool_msg_abort(struct spool_msg *m)
{
    close(m->fd);
    m->fd = -1;
    unlinkat(m->sp->incfd, m->name, 0);
    msg_free(m);
}

/* ---- the commit thread ---- */

/* Wait for work; take the whole pending list. NULL: stop, nothing left. */
static struct spool_msg *take_pending(struct spool *sp)
{
    pthread_mutex_lock(&sp->mu);
    while (sp->pend == NULL && !sp->stop)
        pthread_cond_wait(&sp->cv, &sp->mu);
    struct spool_msg *batch = sp->pend;
    sp->pend = NULL;
    sp->pend_tail = &sp->pend;
    pthread_mutex_unlock(&sp->mu);
    return batch;
}

/* Rename incoming/N to queue/N without ever replacing a committed file. */
static int move_to_queue(struct spool *sp, struct spool_msg *m)
{
    struct stat st;
    if (renameat2(sp->incfd, m->name, sp->queuefd, m->name, RENAME_NOREPLACE) ==
        0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return errno;
    /* File system without RENAME_NOREPLACE: check, then rename. */
    if (fstatat(sp->queuefd, m->name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return EEXIST;
    return renameat(sp->incfd, m->name, sp->queuefd, m->name) == 0 ? 0 : errno;
}

/* Flush each file's data, then close it. */
static void sync_files(struct spool_msg *batch)
{
    /* Start writeback of every file before waiting on any: the device
     * gets the whole batch at once, and the fdatasync calls below mostly
     * wait for I/O already in flight (their journal commits coalesce). */
    for (struct spool_msg *m = batch; m; m = m->next)
        if (m->err == 0)
            (void)sync_file_range(m->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    for (struct spool_msg *m = batch; m; m = m->next) {
        if (m->err == 0 && fdatasync(m->fd) != 0)
            m->err = errno;
        if (close(m->fd) != 0 && m->err == 0 && errno != EINTR)
            m->err = errno;
        m->fd = -1;
    }
}

/* Rename every flushed file into queue/ and make the renames durable
 * with one fsync of the directory. Returns the number moved. */
static size_t publish_files(struct spool *sp, struct spool_msg *batch)
{
    size_t moved = 0;
    /* Only after its data is durable does a file get its queue/ name:
     * a name in queue/ must never outlive the bytes it points to. */
    for (struct spool_msg *m = batch; m; m = m->next) {
        if (m->err == 0 && (m->err = move_to_queue(sp, m)) == 0) {
            m->in_queue = true;
            moved++;
        }
    }
    if (moved > 0 && fsync(sp->queuefd) != 0) {
        /* None of the renames is known to be durable: fail them all. */
        int e = errno;
        for (struct spool_msg *m = batch; m; m = m->next)
            if (m->in_queue && m->err == 0)
                m->err = e;
    }
    return moved;
}

/* Make one batch durable; failed messages lose their file. Returns the
 * batch size. This is the only place that waits for the disk. */
static size_t flush_batch(struct spool *sp, struct spool_msg *batch)
{
    size_t n = 0;
    sync_files(batch);
    publish_files(sp, batch);
    for (struct spool_msg *m = batch; m; m = m->next, n++)
        if (m->err != 0)
            unlinkat(m->in_queue ? sp->queuefd : sp->incfd, m->name, 0);
    return n;
}

/* Put a finished batch on the done list and wake the loop. */
static void hand_back(struct spool *sp, struct spool_msg *batch, size_t n)
{
    struct batch *b = xmalloc(sizeof(*b));
    uint64_t one = 1;
    b->head = batch;
    b->n = n;
    b->next = NULL;
    pthread_mutex_lock(&sp->mu);
    *sp->done_tail = b;
    sp->done_tail = &b->next;
    pthread_mutex_unlock(&sp->mu);
    /* Cannot fail in a way that matters: a non-zero counter already
     * means the loop will look at the done list. */
    ssize_t r = write(sp->evfd, &one, sizeof(one));
    (void)r;
}

/* The commit thread: flush batches until told to stop and drained. */
static void *commit_main(void *arg)
{
    struct spool *sp = arg;
    struct spool_msg *batch;
    while ((batch = take_pending(sp)) != NULL)
        hand_back(sp, batch, flush_batch(sp, batch));
    return NULL;
}

/* ---- recipient state, removal, reading (loop thread) ---- */

void spool_set_notify(struct spool *sp,
                      void (*fn)(void *arg, const struct spool_entry *e),
                      void *arg)
{
    sp->notify = fn;
    sp->notify_arg = arg;
}

/* Drop the entry at index position `at` from the index and free it. */
static void idx_remove_at(struct spool *sp, size_t at)
{
    struct spool_entry *e = sp->idx[at];
    sp->bytes -= e->size;
    memmove(&sp->idx[at], &sp->idx[at + 1],
            (sp->nidx - at - 1) * sizeof(*sp->idx));
    sp->nidx--;
    spool_entry_free(e);
}

int spool_remove(struct spool *sp, uint64_t mid)
{
    size_t at = idx_lower(sp, mid);
    if (at >= sp->nidx || sp->idx[at]->mid != mid)
        return ENOENT;
    char name[NAME_LEN];
    mid_name(name, mid);
    int err = 0;
    /* Not flushed: if the unlink is lost in a crash, recovery finds every
     * recipient done in the status records and removes the file. */
    if (unlinkat(sp->queuefd, name, 0) != 0 && errno != ENOENT)
        err = errno;
    idx_remove_at(sp, at);
    return err;
}

int spool_rcpt_update(struct spool *sp, uint64_t mid,
                      const struct spool_rcpt_update *u, size_t n,
                      bool *removed)
{
    enum { REC = SPOOL_REC_HDR + SPOOL_STATUS_LEN };
    *removed = false;
    size_t at = idx_lower(sp, mid);
    if (at >= sp->nidx || sp->idx[at]->mid != mid)
        return ENOENT;
    struct spool_entry *e = sp->idx[at];
    unsigned char *recs = xmalloc(n * REC + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (u[i].rid >= e->nrcpt)
            continue;
        struct spool_rcpt *st = &e->rstate[u[i].rid];
        if (st->state != SPOOL_RCPT_PENDING)
            continue; /* final states are final */
        *st = u[i].st;
        if (st->state != SPOOL_RCPT_PENDING)
            e->ndone++;
        spool_put_status(recs + k * REC, u[i].rid, st);
        k++;
    }
    if (e->ndone == e->nrcpt) {
        free(recs);
        *removed = true;
        return spool_remove(sp, mid);
    }
    int err = 0;
    if (k > 0) {
        char name[NAME_LEN];
        mid_name(name, mid);
        int fd = openat(sp->queuefd, name,
                        O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            err = errno;
        else {
            err = write_all(fd, recs, k * REC);
            close(fd);
        }
        if (err == 0)
            e->file_len += k * REC;
    }
    free(recs);
    return err;
}

struct spool_reader {
    int fd;
    uint64_t start;    /* offset of the first content record */
    uint64_t pos;      /* offset of the next byte to read */
    uint64_t total;    /* content bytes, from the index */
    uint64_t done;     /* content bytes returned so far */
    uint32_t rec_left; /* payload bytes left in the current record */
};

struct spool_reader *spool_reader_open(struct spool *sp, uint64_t mid,
                                       int *errnum)
{
    const struct spool_entry *e = spool_find(sp, mid);
    if (e == NULL) {
        *errnum = ENOENT;
        return NULL;
    }
    char name[NAME_LEN];
    mid_name(name, mid);
    int fd = openat(sp->queuefd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *errnum = errno;
        return NULL;
    }
    struct spool_reader *r = xcalloc(1, sizeof(*r));
    r->fd = fd;
    r->start = r->pos = e->content_off;
    r->total = e->size;
    return r;
}

/* pread all of n bytes at off; false (errno set) on error or early EOF. */
static bool pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO;
            return false;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return true;
}

ssize_t spool_reader_read(struct spool_reader *r, void *buf, size_t n)
{
    if (r->done == r->total || n == 0)
        return 0;
    if (r->rec_left == 0) {
        unsigned char h[SPOOL_REC_HDR];
        if (!pread_all(r->fd, h, sizeof(h), r->pos))
            return -1;
        uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 |
                       (uint32_t)h[3] << 8 | h[4];
        if (h[0] != SPOOL_REC_CONTENT || len == 0 || len > SPOOL_CHUNK_MAX ||
            len > r->total - r->done) {
            errno = EIO;
            return -1;
        }
        r->pos += sizeof(h);
        r->rec_left = len;
    }
    size_t k = n < r->rec_left ? n : r->rec_left;
    if (!pread_all(r->fd, buf, k, r->pos))
        return -1;
    r->pos += k;
    r->rec_left -= (uint32_t)k;
    r->done += k;
    return (ssize_t)k;
}

void spool_reader_rewind(struct spool_reader *r)
{
    r->pos = r->start;
    r->done = 0;
    r->rec_left = 0;
}

void spool_reader_close(struct spool_reader *r)
{
    if (r == NULL)
        return;
    close(r->fd);
    free(r);
}

/* ---- results on the loop thread ---- */

/* Index a durable message (or count a failure), free it, run its cb. */
static void finish_msg(struct spool *sp, struct spool_msg *m)
{
    uint64_t mid = m->entry->mid;
    int err = m->err;
    spool_commit_cb cb = m->cb;
    void *arg = m->arg;
    struct spool_entry *e = NULL;
    if (err == 0) {
        e = m->entry;
        idx_insert(sp, e);
        m->entry = NULL;
        sp->stats.commits++;
    } else {
        sp->stats.failures++;
    }
    msg_free(m);
    if (cb)
        cb(arg, mid, err);
    /* The commit callback runs first: the 250 is on its way before the
     * queue starts on the message. The queue only reads the entry. */
    if (e && sp->notify)
        sp->notify(sp->notify_arg, e);
}

/* Take the done list and finish its messages in commit order. */
static void deliver_done(struct spool *sp)
{
    pthread_mutex_lock(&sp->mu);
    struct batch *b = sp->done;
    sp->done = NULL;
    sp->done_tail = &sp->done;
    pthread_mutex_unlock(&sp->mu);
    while (b) {
        struct batch *nextb = b->next;
        sp->stats.batches++;
        if (b->n > sp->stats.max_batch)
            sp->stats.max_batch = b->n;
        for (struct spool_msg *m = b->head, *next; m; m = next) {
            next = m->next;
            finish_msg(sp, m);
        }
        free(b);
        b = nextb;
    }
}

/* libevent callback for the eventfd. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    uint64_t v;
    (void)what;
    ssize_t r = read(fd, &v, sizeof(v)); /* resets the counter */
    (void)r;
    deliver_done(arg);
}

/* ---- recovery ---- */

struct recov {
    struct spool *sp;
    struct spool_recovery *rec;
    bool inc_changed, queue_changed;
    int err;          /* errno of a failure that stops recovery */
    const char *what; /* what failed */
};

/* Note a MID seen on disk for max_mid. */
static void seen_mid(struct recov *rc, const char *name)
{
    uint64_t mid;
    if (name_mid(name, &mid) && mid > rc->rec->max_mid)
        rc->rec->max_mid = mid;
}

/* Record a recovery failure; always returns false. */
static bool recov_fail(struct recov *rc, const char *what, int e)
{
    rc->what = what;
    rc->err = e;
    return false;
}

/* Call fn for every name in dfd not starting with '.'; stop on false. */
static bool each_name(struct recov *rc, int dfd,
                      bool (*fn)(struct recov *rc, const char *name))
{
    int fd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return recov_fail(rc, "opendir", errno);
    }
    rewinddir(d);
    bool ok = true;
    struct dirent *de;
    while (ok && (errno = 0, de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            ok = fn(rc, de->d_name);
    if (ok && errno != 0)
        ok = recov_fail(rc, "readdir", errno);
    closedir(d);
    return ok;
}

/* Remove one never-answered file from incoming/. */
static bool discard_incoming(struct recov *rc, const char *name)
{
    seen_mid(rc, name); /* its MID may be in the mail log: never reuse */
    if (unlinkat(rc->sp->incfd, name, 0) == 0) {
        rc->rec->discarded++;
        rc->inc_changed = true;
        return true;
    }
    if (errno == ENOENT || errno == EISDIR || errno == EPERM)
        return true; /* gone, or a directory someone put there */
    return recov_fail(rc, "unlink in incoming/", errno);
}

/* Move queue/<name> into corrupt/, never replacing an older one there. */
static bool move_corrupt(struct recov *rc, const char *name)
{
    struct spool *sp = rc->sp;
    char to[NAME_MAX + 16];
    struct stat st;
    for (unsigned i = 0; i < CORRUPT_TRIES; i++) {
        bool fits = i == 0 ? str_copy(to, sizeof(to), name)
                           : str_printf(to, sizeof(to), "%s.%u", name, i);
        if (!fits)
            return recov_fail(rc, "corrupt/ name", ENAMETOOLONG);
        if (fstatat(sp->corruptfd, to, &st, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        if (renameat(sp->queuefd, name, sp->corruptfd, to) != 0)
            return recov_fail(rc, "move to corrupt/", errno);
        rc->rec->corrupt++;
        rc->queue_changed = true;
        return true;
    }
    return recov_fail(rc, "move to corrupt/", EEXIST);
}

/* Open and validate queue/<name>; NULL if it is not a good spool file. */
static struct spool_entry *load_queued(struct recov *rc, const char *name)
{
    uint64_t mid;
    const char *why = NULL;
    if (!name_mid(name, &mid))
        return NULL;
    int fd = openat(rc->sp->queuefd, name,
                    O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct spool_entry *e = xcalloc(1, sizeof(*e));
    bool ok = spool_file_load(fd, e, &why) && e->mid == mid;
    close(fd);
    if (!ok) {
        spool_entry_free(e);
        return NULL;
    }
    return e;
}

/* Cut a torn status record off the end of a file, so that records
 * appended later follow the valid ones. */
static bool cut_torn_status(struct recov *rc, const char *name,
                            const struct spool_entry *e)
{
    struct stat st;
    if (fstatat(rc->sp->queuefd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return recov_fail(rc, "stat in queue/", errno);
    if ((uint64_t)st.st_size <= e->file_len)
        return true;
    int fd = openat(rc->sp->queuefd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return recov_fail(rc, "open in queue/", errno);
    int r = ftruncate(fd, (off_t)e->file_len);
    int err = errno;
    close(fd);
    return r == 0 ? true : recov_fail(rc, "truncate in queue/", err);
}

/* Index a valid committed file; move anything else to corrupt/. */
static bool recover_queued(struct recov *rc, const char *name)
{
    struct spool *sp = rc->sp;
    seen_mid(rc, name);
    struct spool_entry *e = load_queued(rc, name);
    if (e == NULL)
        return move_corrupt(rc, name);
    if (!cut_torn_status(rc, name, e)) {
        spool_entry_free(e);
        return false;
    }
    if (e->ndone == e->nrcpt) {
        /* Every recipient was done; the crash came before the unlink. */
        spool_entry_free(e);
        if (unlinkat(sp->queuefd, name, 0) != 0 && errno != ENOENT)
            return recov_fail(rc, "unlink in queue/", errno);
        rc->queue_changed = true;
        return true;
    }
    /* Appended unsorted; sorted once when the scan is done. */
    sp->idx = xgrow(sp->idx, &sp->idxcap, sp->nidx + 1, sizeof(*sp->idx));
    sp->idx[sp->nidx++] = e;
    sp->bytes += e->size;
    rc->rec->queued++;
    return true;
}

/* Make changed directories durable (corrupt/ first: the moved file's
 * new name is secured before its old one is known to be gone). */
static bool recov_sync(struct recov *rc)
{
    struct spool *sp = rc->sp;
    if (rc->inc_changed && fsync(sp->incfd) != 0)
        return recov_fail(rc, "fsync incoming/", errno);
    if (rc->queue_changed && fsync(sp->corruptfd) != 0)
        return recov_fail(rc, "fsync corrupt/", errno);
    if (rc->queue_changed && fsync(sp->queuefd) != 0)
        return recov_fail(rc, "fsync queue/", errno);
    return true;
}

/* Discard incoming/, load queue/, sort the index. */
static bool recover(struct spool *sp, struct spool_recovery *rec, char *err,
                    size_t errlen, const char *dir)
{
    struct recov rc = {.sp = sp, .rec = rec};
    memset(rec, 0, sizeof(*rec));
    bool ok = each_name(&rc, sp->incfd, discard_incoming) &&
              each_name(&rc, sp->queuefd, recover_queued) && recov_sync(&rc);
    if (!ok) {
        set_err(err, errlen, dir, rc.what, rc.err);
        return false;
    }
    if (sp->nidx > 1)
        qsort(sp->idx, sp->nidx, sizeof(*sp->idx), idx_cmp);
    return true;
}

/* ---- open and close ---- */

/* Create (0700) and open one directory below the spool root. */
static int open_subdir(struct spool *sp, const char *name, bool *created)
{
    if (mkdirat(sp->dirfd, name, 0700) == 0)
        *created = true;
    else if (errno != EEXIST)
        return -1;
    return openat(sp->dirfd, name,
                  O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
}

/* fsync the directory that holds the spool root (after creating it). */
static int sync_parent(int dirfd)
{
    int fd = openat(dirfd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Create and open the root and its three directories; new directory
 * entries are made durable before anything is put in them. */
static bool open_dirs(struct spool *sp, const char *dir, char *err,
                      size_t errlen)
{
    bool made_root = mkdir(dir, 0700) == 0, created = false;
    if (!made_root && errno != EEXIST) {
        set_err(err, errlen, dir, "mkdir", errno);
        return false;
    }
    sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0) {
        set_err(err, errlen, dir, "open", errno);
        return false;
    }
    if ((sp->incfd = open_subdir(sp, "incoming", &created)) < 0 ||
        (sp->queuefd = open_subdir(sp, "queue", &created)) < 0 ||
        (sp->corruptfd = open_subdir(sp, "corrupt", &created)) < 0) {
        set_err(err, errlen, dir, "subdirectory", errno);
        return false;
    }
    if ((created && fsync(sp->dirfd) != 0) ||
        (made_root && sync_parent(sp->dirfd) != 0)) {
        set_err(err, errlen, dir, "fsync", errno);
        return false;
    }
    return true;
}

/* Create the eventfd and register it on the loop. */
static bool open_event(struct spool *sp, const char *dir, char *err,
                       size_t errlen)
{
    sp->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (sp->evfd < 0) {
        set_err(err, errlen, dir, "eventfd", errno);
        return false;
    }
    sp->ev = event_new(sp->base, sp->evfd, EV_READ | EV_PERSIST, on_done, sp);
    if (sp->ev == NULL || event_add(sp->ev, NULL) != 0) {
        set_err(err, errlen, dir, "event_add", EINVAL);
        return false;
    }
    return true;
}

/* Start the commit thread with every signal blocked in it, so that
 * signals are handled on the loop thread. */
static bool start_thread(struct spool *sp, const char *dir, char *err,
                         size_t errlen)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&sp->thread, NULL, commit_main, sp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        set_err(err, errlen, dir, "pthread_create", rc);
        return false;
    }
    sp->thread_started = true;
    return true;
}

/* Release everything (the thread must not be running). */
static void spool_free(struct spool *sp)
{
    for (size_t i = 0; i < sp->nidx; i++)
        spool_entry_free(sp->idx[i]);
    free(sp->idx);
    if (sp->ev)
        event_free(sp->ev);
    int fds[] = {sp->evfd, sp->corruptfd, sp->queuefd, sp->incfd, sp->dirfd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_cond_destroy(&sp->cv);
    pthread_mutex_destroy(&sp->mu);
    free(sp);
}

struct spool *spool_open(struct event_base *base, const char *dir,
                         struct spool_recovery *rec, char *err, size_t errlen)
{
    struct spool_recovery dummy;
    struct spool *sp = xcalloc(1, sizeof(*sp));
    sp->base = base;
    sp->dirfd = sp->incfd = sp->queuefd = sp->corruptfd = sp->evfd = -1;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->cv, NULL);
    sp->pend_tail = &sp->pend;
    sp->done_tail = &sp->done;
    if (open_dirs(sp, dir, err, errlen) &&
        recover(sp, rec ? rec : &dummy, err, errlen, dir) &&
        open_event(sp, dir, err, errlen) && start_thread(sp, dir, err, errlen))
        return sp;
    spool_free(sp);
    return NULL;
}

void spool_close(struct spool *sp)
{
    if (sp == NULL)
        return;
    sp->closing = true;
    pthread_mutex_lock(&sp->mu);
    sp->stop = true;
    pthread_cond_signal(&sp->cv);
    pthread_mutex_unlock(&sp->mu);
    /* The thread drains the pending list before it exits. */
    if (sp->thread_started)
        pthread_join(sp->thread, NULL);
    deliver_done(sp);
    spool_free(sp);
}
