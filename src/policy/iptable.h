/*
 * iptable.h - counters per client address: recipients per hour (the
 * rate limit), AUTH failures, concurrent sessions per listener.
 *
 * A counter is keyed by the client's address and a 32-bit tag (0, or a
 * hash of a listener name for per-listener counts). Counters with a
 * period start again `period` seconds after they were created (the
 * appliance's "injection counter reset period"); with period 0 they live
 * until released back to zero. The table is bounded: when it is full,
 * expired and zero counters are dropped; if that frees nothing the
 * caller gets NULL and decides (moat fails open: a full table never
 * refuses mail). Pure: the caller passes the time.
 */
#ifndef MOAT_POLICY_IPTABLE_H
#define MOAT_POLICY_IPTABLE_H

#include "core/netaddr.h"
#include "core/util.h"

#include <time.h>

struct iptable;

struct iptable *iptable_new(size_t max_entries);
void iptable_free(struct iptable *t);

/* The counter for (addr, tag), created at zero if absent, reset to zero
 * if its period has run out. NULL only when the table is full. */
uint64_t *iptable_counter(struct iptable *t, const struct netaddr *addr,
                          uint32_t tag, time_t now, unsigned period);
/* Current value without creating (0 if absent or expired). */
uint64_t iptable_peek(struct iptable *t, const struct netaddr *addr,
                      uint32_t tag, time_t now, unsigned period);
/* Decrement (not below zero); a counter reaching zero is removed. */
void iptable_release(struct iptable *t, const struct netaddr *addr,
                     uint32_t tag);
size_t iptable_count(const struct iptable *t);
/* A tag for a name (FNV-1a). */
uint32_t iptable_tag(const char *name);

#endif
