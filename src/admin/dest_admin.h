/*
 * dest_admin.h - `moatctl destconfig list|detail|export`: the destination
 * controls table as the appliance's destconfig shows it, and exported as
 * the configuration text that reproduces it (rows keep "Use Default":
 * only the keys a row sets are written).
 */
#ifndef MOAT_ADMIN_DEST_ADMIN_H
#define MOAT_ADMIN_DEST_ADMIN_H

#include "conf/conf.h"
#include "core/buf.h"

/* One line per row: Domain, Rate Limiting, TLS, Bounce Verification,
 * Bounce Profile, IP Version Preference (seed 003's columns). */
void dest_admin_list(const struct moat_conf *c, struct buf *out);
/* Every setting of one row (domain as written in the table, or any
 * domain: the row that applies to it), or of every row (NULL or ""). */
bool dest_admin_detail(const struct moat_conf *c, const char *domain,
                       struct buf *out);
/* destination "..." { } blocks: the Default row in full, each other row
 * with the keys it sets. */
void dest_admin_export(const struct moat_conf *c, struct buf *out);

#endif
