/*
 * iptable.c - counters per client address (see iptable.h).
 *
 * Chained hash table; the bucket array doubles when the entries outnumber
 * it, up to the bound given at creation. Keys are the address bytes as
 * netaddr_bytes() gives them (IPv4-mapped IPv6 clients count as IPv4),
 * the family and the tag; the hash is keyed with a per-table random seed
 * so clients cannot aim at one chain.
 */
#include "policy/iptable.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

struct ipent {
    struct ipent *next;
    unsigned char addr[16];
    uint8_t family;
    uint32_t tag;
    time_t start;
    uint64_t count;
};

struct iptable {
    struct ipent **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    size_t max;
    uint64_t seed;
};

struct ipkey {
    unsigned char addr[16];
    uint8_t family;
    uint32_t tag;
};

static void key_of(const struct netaddr *a, uint32_t tag, struct ipkey *k)
{
    const unsigned char *b;
    memset(k, 0, sizeof(*k));
    int fam = netaddr_bytes(a, &b);
    k->family = fam == AF_INET ? 4 : 6;
    memcpy(k->addr, b, fam == AF_INET ? 4 : 16);
    k->tag = tag;
}

static size_t hash_key(const struct iptable *t, const struct ipkey *k)
{
    uint64_t h = 1469598103934665603ull ^ t->seed;
    for (size_t i = 0; i < sizeof(k->addr); i++)
        h = (h ^ k->addr[i]) * 1099511628211ull;
    h = (h ^ k->family) * 1099511628211ull;
    h = (h ^ k->tag) * 1099511628211ull;
    h ^= h >> 29;
    return (size_t)h & (t->nbuckets - 1);
}

static bool same(const struct ipent *e, const struct ipkey *k)
{
    return e->family == k->family && e->tag == k->tag &&
           memcmp(e->addr, k->addr, sizeof(e->addr)) == 0;
}

struct iptable *iptable_new(size_t max_entries)
{
    struct iptable *t = xcalloc(1, sizeof(*t));
    t->nbuckets = 256;
    t->buckets = xcalloc(t->nbuckets, sizeof(*t->buckets));
    t->max = max_entries ? max_entries : 1;
    if (getrandom(&t->seed, sizeof(t->seed), 0) != (ssize_t)sizeof(t->seed))
        t->seed = (uint64_t)(uintptr_t)t ^ (uint64_t)time(NULL);
    return t;
}

void iptable_free(struct iptable *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct ipent *e = t->buckets[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(t->buckets);
    free(t);
}

static bool expired(const struct ipent *e, time_t now, unsigned period)
{
    return period && now - e->start >= (time_t)period;
}

/* Drop zero counters and those whose period ran out. */
static void purge(struct iptable *t, time_t now, unsigned period)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct ipent **pp = &t->buckets[i];
        while (*pp) {
            struct ipent *e = *pp;
            if (e->count == 0 || expired(e, now, period)) {
                *pp = e->next;
                free(e);
                t->count--;
            } else {
                pp = &e->next;
            }
        }
    }
}

static void grow(struct iptable *t)
{
    size_t n = t->nbuckets * 2;
    struct ipent **b = xcalloc(n, sizeof(*b));
    size_t old = t->nbuckets;
    struct ipent **ob = t->buckets;
    t->buckets = b;
    t->nbuckets = n;
    for (size_t i = 0; i < old; i++)
        for (struct ipent *e = ob[i], *next; e; e = next) {
            next = e->next;
            struct ipkey k;
            memcpy(k.addr, e->addr, sizeof(k.addr));
            k.family = e->family;
            k.tag = e->tag;
            size_t h = hash_key(t, &k);
            e->next = b[h];
            b[h] = e;
        }
    free(ob);
}

static struct ipent *find(struct iptable *t, const struct ipkey *k)
{
    for (struct ipent *e = t->buckets[hash_key(t, k)]; e; e = e->next)
        if (same(e, k))
            return e;
    return NULL;
}

uint64_t *iptable_counter(struct iptable *t, const struct netaddr *addr,
                          uint32_t tag, time_t now, unsigned period)
{
    struct ipkey k;
    key_of(addr, tag, &k);
    struct ipent *e = find(t, &k);
    if (e) {
        if (expired(e, now, period)) {
            e->start = now;
            e->count = 0;
        }
        return &e->count;
    }
    if (t->count >= t->max) {
        purge(t, now, period);
        if (t->count >= t->max)
            return NULL;
    }
    if (t->count >= t->nbuckets && t->nbuckets < (SIZE_MAX / 2) &&
        t->nbuckets < t->max)
        grow(t);
    e = xcalloc(1, sizeof(*e));
    memcpy(e->addr, k.addr, sizeof(e->addr));
    e->family = k.family;
    e->tag = tag;
    e->start = now;
    size_t h = hash_key(t, &k);
    e->next = t->buckets[h];
    t->buckets[h] = e;
    t->count++;
    return &e->count;
}

uint64_t iptable_peek(struct iptable *t, const struct netaddr *addr,
                      uint32_t tag, time_t now, unsigned period)
{
    struct ipkey k;
    key_of(addr, tag, &k);
    const struct ipent *e = find(t, &k);
    return e == NULL || expired(e, now, period) ? 0 : e->count;
}

void iptable_release(struct iptable *t, const struct netaddr *addr,
                     uint32_t tag)
{
    struct ipkey k;
    key_of(addr, tag, &k);
    struct ipent **pp = &t->buckets[hash_key(t, &k)];
    for (; *pp; pp = &(*pp)->next) {
        struct ipent *e = *pp;
        if (!same(e, &k))
            continue;
        if (e->count > 0)
            e->count--;
        if (e->count == 0) {
            *pp = e->next;
            free(e);
            t->count--;
        }
        return;
    }
}

size_t iptable_count(const struct iptable *t)
{
    return t->count;
}

uint32_t iptable_tag(const char *name)
{
    uint32_t h = 2166136261u;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h;
}
