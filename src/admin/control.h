/*
 * control.h - the administration socket that moatctl talks to.
 *
 * A Unix stream socket. A client sends one request line (at most
 * CONTROL_LINE_MAX bytes, "queue list" or "commit"); the daemon answers
 * "OK\n" or "ERR\n", then the text of the answer, then closes. Commands
 * are registered by name; the longest registered name that prefixes the
 * request wins and gets the rest as its argument string.
 */
#ifndef MOAT_ADMIN_CONTROL_H
#define MOAT_ADMIN_CONTROL_H

#include "core/buf.h"

#define CONTROL_LINE_MAX 4096

struct event_base;
struct control;

/* Fill `out` with the answer; return true for OK, false for ERR. */
typedef bool (*control_fn)(void *arg, const char *args, struct buf *out);

struct control *control_open(struct event_base *base, const char *path,
                             char *err, size_t errlen);
void control_register(struct control *c, const char *name, control_fn fn,
                      void *arg);
void control_close(struct control *c);

#endif
