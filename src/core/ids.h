/*
 * ids.h - ICID, MID and DCID counters unique for the life of an
 * installation.
 *
 * IDs are handed out from blocks reserved on disk: before the first ID of
 * a block is used, the block's end is written to the state file and
 * flushed (write to a temporary file, fsync, rename, fsync the directory).
 * After a crash or restart counting resumes at the reserved end, so an ID
 * is never handed out twice; IDs skipped by a restart are simply unused.
 */
#ifndef MOAT_CORE_IDS_H
#define MOAT_CORE_IDS_H

#include "core/util.h"

enum id_kind { ID_ICID, ID_MID, ID_DCID, ID__COUNT };

struct ids;

/* Open or create the state file. Counting for MIDs starts above
 * `min_mid` (the highest MID found in the spool) whatever the file says.
 * `block` IDs are reserved per durable write. */
struct ids *ids_open(const char *path, unsigned block, uint64_t min_mid,
                     char *err, size_t errlen);
/* Next ID of a kind, or 0 if a new block could not be reserved (the
 * caller refuses the work with a temporary error). */
uint64_t ids_next(struct ids *ids, enum id_kind kind);
/* Last ID handed out (0 if none yet). */
uint64_t ids_last(const struct ids *ids, enum id_kind kind);
void ids_close(struct ids *ids);

#endif
