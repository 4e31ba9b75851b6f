/*
 * spool.h - the durable message store.
 *
 * Owns the spool directory. A message is written while it is received
 * (spool_msg_begin / spool_msg_write), then committed: the commit thread
 * flushes it to stable storage and makes its directory entry durable, in
 * groups (every message whose commit was requested while the previous
 * flush ran rides on the next one). Only when the commit callback reports
 * success may the SMTP server answer 250. On open, the spool is recovered:
 * committed messages are loaded into the queue index, partial ones are
 * discarded. See docs/spool.md for the format and the protocol.
 *
 * Threading: every function here is called on the event-loop thread; the
 * commit callback also runs on that thread. The commit thread is private.
 */
#ifndef MOAT_SPOOL_H
#define MOAT_SPOOL_H

#include "core/util.h"

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct event_base;
struct spool;
struct spool_msg;

#define SPOOL_F_8BITMIME 0x1u
#define SPOOL_F_SMTPUTF8 0x2u
#define SPOOL_F_BINARYMIME 0x4u

/* Envelope of a message being received. Strings are copied. */
struct spool_envelope {
    uint64_t mid;
    uint64_t icid;
    int64_t received;        /* wall-clock seconds */
    const char *listener;    /* listener name */
    const char *client_ip;   /* text form */
    const char *helo;        /* EHLO/HELO argument ("" if none) */
    const char *mail_from;   /* "" for the null sender */
    unsigned flags;          /* SPOOL_F_* */
    size_t nrcpt;
    const char *const *rcpts; /* RID i is rcpts[i] */
};

/* A recipient's delivery state, kept in the message's file (status
 * records after the end record, see docs/spool.md). */
enum spool_rcpt_state {
    SPOOL_RCPT_PENDING = 0,   /* still to be delivered (maybe retried) */
    SPOOL_RCPT_DELIVERED = 1, /* the next hop accepted it */
    SPOOL_RCPT_BOUNCED = 2,   /* hard bounce: a DSN was queued (or not due) */
    SPOOL_RCPT_DELETED = 3,   /* removed by the admin, a route or a filter */
};

struct spool_rcpt {
    uint8_t state;     /* enum spool_rcpt_state */
    uint32_t attempts; /* delivery attempts that failed temporarily */
    int64_t next_try;  /* wall-clock seconds; 0 = as soon as possible */
};

/* One committed message in the queue index. */
struct spool_entry {
    uint64_t mid;
    uint64_t icid;
    int64_t received;
    uint64_t size;     /* content bytes */
    char *listener;
    char *client_ip;
    char *helo;
    char *mail_from;
    unsigned flags;
    size_t nrcpt;
    char **rcpts;
    struct spool_rcpt *rstate; /* nrcpt states */
    size_t ndone;              /* recipients in a final state */
    uint64_t content_off;      /* file offset of the first content record */
    uint64_t file_len;         /* bytes of the file that are valid */
};

struct spool_recovery {
    size_t queued;     /* committed messages found and indexed */
    size_t discarded;  /* partial (never answered) messages removed */
    size_t corrupt;    /* committed files that failed validation, moved
                          to corrupt/ */
    uint64_t max_mid;  /* highest MID seen (0 if none) */
};

struct spool_stats {
    uint64_t commits;  /* messages made durable */
    uint64_t batches;  /* group flushes */
    uint64_t failures; /* commits that failed */
    size_t max_batch;  /* largest group so far */
};

/* Open (creating the directories if needed), recover and start the
 * commit thread. Returns NULL with a reason in err on failure. */
struct spool *spool_open(struct event_base *base, const char *dir,
                         struct spool_recovery *rec, char *err,
                         size_t errlen);
/* Wait for commits in flight, run their callbacks, stop the thread, free.
 * Messages still being received are the caller's to abort first. */
void spool_close(struct spool *sp);

/* Start a message: creates its file and writes the envelope. Returns NULL
 * and sets *errnum (ENOSPC, EIO, ...) on failure. */
struct spool_msg *spool_msg_begin(struct spool *sp,
                                  const struct spool_envelope *env,
                                  int *errnum);
/* Append content. Returns 0, or the errno of the first failure; after a
 * failure the message can only be aborted. */
int spool_msg_write(struct spool_msg *m, const void *data, size_t len);
/* Content bytes written so far. */
uint64_t spool_msg_size(const struct spool_msg *m);

/* Called on the loop thread when a commit has finished: err is 0 when
 * the message is durable and indexed, else an errno and the message is
 * gone (nothing of it remains on disk). */
typedef void (*spool_commit_cb)(void *arg, uint64_t mid, int err);

/* Finish the file and queue it for the next group flush. The callback is
 * never called from inside this function. The spool owns m afterwards. */
void spool_msg_commit(struct spool_msg *m, spool_commit_cb cb, void *arg);
/* Discard a message that will not be committed; removes its file. */
void spool_msg_abort(struct spool_msg *m);

/* Queue index. */
size_t spool_count(const struct spool *sp);
uint64_t spool_bytes(const struct spool *sp);
const struct spool_entry *spool_find(const struct spool *sp, uint64_t mid);
/* Visit entries in MID order; stop early when fn returns false. */
void spool_foreach(const struct spool *sp,
                   bool (*fn)(void *arg, const struct spool_entry *e),
                   void *arg);
void spool_get_stats(const struct spool *sp, struct spool_stats *st);

/* Called on the loop thread for every message that became durable (after
 * its commit callback), so the queue can pick it up. */
void spool_set_notify(struct spool *sp,
                      void (*fn)(void *arg, const struct spool_entry *e),
                      void *arg);

/* Record new states for some recipients of a message: one status record
 * each, appended with a single write() and not flushed. A crash of the
 * daemon keeps them (the page cache survives it); a crash of the machine
 * may lose the last ones, and those recipients are then delivered once
 * more (at least once, never zero). When every recipient is in a final
 * state the message is removed from the spool and *removed is set; the
 * entry is then freed. Returns 0 or an errno (the index is updated even
 * when the write fails). */
struct spool_rcpt_update {
    uint32_t rid;
    struct spool_rcpt st;
};
int spool_rcpt_update(struct spool *sp, uint64_t mid,
                      const struct spool_rcpt_update *u, size_t n,
                      bool *removed);
/* Remove a message (its file and its index entry) whatever the state of
 * its recipients. Returns 0 or an errno (ENOENT if not indexed). */
int spool_remove(struct spool *sp, uint64_t mid);

/* Read a committed message's content (the bytes as received, Received:
 * header first). Reads are plain blocking reads of the spool file, which
 * is normally in the page cache. */
struct spool_reader;
struct spool_reader *spool_reader_open(struct spool *sp, uint64_t mid,
                                       int *errnum);
/* Up to n bytes; 0 at the end of the content; -1 with errno (EIO when
 * the file does not match its index entry). */
ssize_t spool_reader_read(struct spool_reader *r, void *buf, size_t n);
/* Back to the first content byte. */
void spool_reader_rewind(struct spool_reader *r);
void spool_reader_close(struct spool_reader *r);

#endif
