/*
 * rat.h - the Recipient Access Table of a public listener.
 *
 * Rows are matched top-down, first match wins, against a parsed
 * recipient address. Forms (as the appliance documents them):
 *   "example.com"        the domain itself (case-insensitive)
 *   ".example.com"       any subdomain of example.com (not example.com)
 *   "user@"              that local part at any domain
 *   "user@example.com"   that exact address (local part compared
 *                        case-insensitively, as the appliance does)
 *   "ALL"                everything (always the last row)
 * Address literals ([1.2.3.4]) and bare local parts ("postmaster") match
 * no domain row; only "user@" rows and ALL can match them.
 */
#ifndef MOAT_POLICY_RAT_H
#define MOAT_POLICY_RAT_H

#include "core/util.h"

enum rat_action { RAT_ACCEPT, RAT_REJECT };

/* One Recipient Access Table row: pattern as written ("example.com",
 * ".example.com", "user@", "user@example.com", "ALL") and its action,
 * optionally with a custom SMTP reply (code 0 = the default reply). The
 * configuration validator fills these (conf/). */
struct rat_entry {
    char *pattern;
    enum rat_action action;
    unsigned code;      /* custom reply code, 0 if none */
    char *text;         /* custom reply text, NULL if none */
    bool bypass_receiving_control; /* exempt from the rate limit */
    char *file;         /* where the row was written */
    unsigned line;
};

/* Check a pattern's syntax for the configuration validator. Returns NULL
 * if valid, else a static reason. */
const char *rat_pattern_check(const char *pattern);

/* Find the first row matching `addr` (an smtp_path addr: "local@domain",
 * or "postmaster"). Never NULL when the table ends with ALL. */
const struct rat_entry *rat_match(const struct rat_entry *rows,
                                       size_t nrows, const char *addr);

#endif
