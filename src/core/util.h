/*
 * util.h - allocation wrappers, small helpers, and the poisoned libc calls.
 *
 * Every moat source file includes this header first. Allocation wrappers
 * abort on out-of-memory (the only place below main() that exits besides
 * broken invariants), so call sites stay short. The unsafe string
 * functions are poisoned: using one fails the build.
 */
#ifndef MOAT_CORE_UTIL_H
#define MOAT_CORE_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#if defined(__GNUC__)
#define MOAT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define MOAT_NORETURN __attribute__((noreturn))
#else
#define MOAT_PRINTF(f, a)
#define MOAT_NORETURN
#endif

/* Allocation: never return NULL; abort with a message instead. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* Grow an array of `*cap` elements of `size` bytes to hold at least `need`. */
void *xgrow(void *p, size_t *cap, size_t need, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) MOAT_PRINTF(1, 2);

MOAT_NORETURN void fatal(const char *fmt, ...) MOAT_PRINTF(1, 2);

/* snprintf that reports truncation: returns false if `out` was too small. */
bool str_printf(char *out, size_t outlen, const char *fmt, ...)
    MOAT_PRINTF(3, 4);
/* Copy with truncation check; returns false (and copies nothing useful)
 * when `src` does not fit. */
bool str_copy(char *dst, size_t dstlen, const char *src);

bool str_ieq(const char *a, const char *b);
bool str_nieq(const char *a, const char *b, size_t n);
void str_lower(char *s);

/* Parse a decimal unsigned integer occupying the whole of s[0..len). */
bool parse_u64(const char *s, size_t len, uint64_t *out);
/* The value of a base64 character (RFC 4648 alphabet), or -1. */
int b64_value(unsigned char c);

/* Monotonic and wall clocks in one place (tests may stub the wall clock). */
uint64_t time_mono_ms(void);

#if defined(__GNUC__) && !defined(MOAT_NO_POISON)
#pragma GCC poison strcpy strcat sprintf vsprintf gets strtok
#endif

#endif
