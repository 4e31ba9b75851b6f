/*
 * hat_admin.h - `moatctl hat ...`: a listener's Host Access Table shown
 * as a table, and exported as the configuration text that reproduces it.
 */
#ifndef MOAT_ADMIN_HAT_ADMIN_H
#define MOAT_ADMIN_HAT_ADMIN_H

#include "conf/conf.h"
#include "core/buf.h"

/* Sender groups in order (and the ALL row) of one listener, or of every
 * listener when name is NULL or "". false (with a reason) if unknown. */
bool hat_admin_list(const struct moat_conf *c, const char *name,
                    struct buf *out);
/* Every group and policy of one listener with all their parameters. */
bool hat_admin_detail(const struct moat_conf *c, const char *name,
                      struct buf *out);
/* A complete `hat "NAME" { ... }` block: every group in order (the
 * predefined ones too) and every policy with every parameter, so that
 * loading it reproduces the table whatever the predefined defaults. */
bool hat_admin_export(const struct moat_conf *c, const char *name,
                      struct buf *out);

#endif
