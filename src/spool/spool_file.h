/*
 * spool_file.h - the spool file format (private to src/spool/).
 *
 * A spool file is an 8-byte header ("MOATSPL" and a version byte), then
 * records of `type (1) | length (4, big-endian) | payload`: one envelope
 * record, content records of at most SPOOL_CHUNK_MAX bytes, and one end
 * record holding the content length and a CRC-32 of every byte before the
 * end record. See docs/spool.md.
 */
#ifndef MOAT_SPOOL_FILE_H
#define MOAT_SPOOL_FILE_H

#include "core/buf.h"
#include "core/util.h"
#include "spool/spool.h"

#define SPOOL_MAGIC "MOATSPL"
#define SPOOL_VERSION 1
#define SPOOL_HDR_LEN 8        /* magic (7) + version (1) */
#define SPOOL_REC_HDR 5        /* type (1) + length (4) */
#define SPOOL_END_LEN 12       /* content length (8) + CRC-32 (4) */
#define SPOOL_CHUNK_MAX 65536u /* largest content record payload */
#define SPOOL_ENVELOPE_MAX (1024u * 1024u)
#define SPOOL_RCPT_MAX 100000u

enum spool_rec {
    SPOOL_REC_ENVELOPE = 'E',
    SPOOL_REC_CONTENT = 'C',
    SPOOL_REC_END = 'Z',
    SPOOL_REC_STATUS = 'S',
};

/* A status record's payload: rid (4), state (1), attempts (4), next_try
 * (8), then a CRC-32 (4) of the record header and those 17 bytes. */
#define SPOOL_STATUS_LEN 21

/* CRC-32 (IEEE 802.3, reflected); chain calls starting from crc = 0. */
uint32_t spool_crc32(uint32_t crc, const void *data, size_t len);

/* Write a record header (type and big-endian length) at p. */
void spool_put_rec_hdr(unsigned char *p, enum spool_rec type, uint32_t len);
/* Write the whole end record (SPOOL_REC_HDR + SPOOL_END_LEN bytes) at p. */
void spool_put_end(unsigned char *p, uint64_t size, uint32_t crc);

/* Append the file header and the envelope record to out. Returns false
 * (and leaves out unusable) when the envelope exceeds the limits. */
bool spool_file_start(struct buf *out, const struct spool_envelope *env);

/* Read and validate a whole spool file from fd (positioned at 0). On
 * success fill *e (release with spool_entry_clear) and return true; else
 * return false with a static reason in *why. Never reads more than the
 * file's size and never allocates more than the format's limits. */
bool spool_file_load(int fd, struct spool_entry *e, const char **why);

/* Encode one status record (SPOOL_REC_HDR + SPOOL_STATUS_LEN bytes). */
void spool_put_status(unsigned char *p, uint32_t rid,
                      const struct spool_rcpt *st);
/* Bytes a file takes for an envelope record ending at content_off and
 * `size` content bytes, with the end record (the writer's layout). */
uint64_t spool_file_len(uint64_t content_off, uint64_t size);

/* Copy an envelope into a newly allocated index entry (size 0). */
struct spool_entry *spool_entry_from_env(const struct spool_envelope *env);
/* Free an entry's strings (not the struct itself). */
void spool_entry_clear(struct spool_entry *e);
/* Free an entry and its strings. */
void spool_entry_free(struct spool_entry *e);

#endif
