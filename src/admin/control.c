/*
 * control.c - the administration socket (see control.h).
 *
 * Runs on the event loop; a request is bounded (CONTROL_LINE_MAX, and a
 * 10 s timeout to send it); answers are built in memory and written
 * asynchronously. The socket file is created mode 0660: only the daemon's
 * user, its group and root may administer it.
 */
#include "admin/control.h"
#include "core/mlog.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONTROL_MAX_CMDS 64
#define CONTROL_TIMEOUT 10

struct control_cmd {
    const char *name;
    control_fn fn;
    void *arg;
};

struct control {
    struct evconnlistener *evl;
    char *path;
    size_t ncmds;
    struct control_cmd cmds[CONTROL_MAX_CMDS];
};

/* Find the command whose name is the longest word-prefix of req. */
static const struct control_cmd *lookup(const struct control *c,
                                        const char *req, const char **args)
{
    const struct control_cmd *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < c->ncmds; i++) {
        size_t n = strlen(c->cmds[i].name);
        if (n > best_len && strncmp(req, c->cmds[i].name, n) == 0 &&
            (req[n] == '\0' || req[n] == ' ')) {
            best = &c->cmds[i];
            best_len = n;
        }
    }
    if (best) {
        *args = req + best_len;
        while (**args == ' ')
            (*args)++;
    }
    return best;
}

static void on_client_write(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

static void on_client_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

/* Answer one request and close once the answer is written. */
static void answer(struct control *c, struct bufferevent *bev,
                   const char *req)
{
    struct buf out = {0};
    const char *args = "";
    const struct control_cmd *cmd = lookup(c, req, &args);
    bool ok;
    if (cmd == NULL) {
        ok = false;
        buf_printf(&out, "unknown command: %s (see moatctl --help)\n", req);
    } else
        ok = cmd->fn(cmd->arg, args, &out);
    struct evbuffer *o = bufferevent_get_output(bev);
    evbuffer_add_printf(o, "%s\n", ok ? "OK" : "ERR");
    evbuffer_add(o, out.data ? out.data : "", out.len);
    buf_free(&out);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, on_client_write, on_client_event, c);
    bufferevent_enable(bev, EV_WRITE);
}

static void on_client_read(struct bufferevent *bev, void *arg)
{
    struct control *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
    if (line == NULL) {
        if (evbuffer_get_length(in) > CONTROL_LINE_MAX)
            bufferevent_free(bev);
        return;
    }
    if (n > CONTROL_LINE_MAX || strlen(line) != n)
        bufferevent_free(bev);
    else
        answer(c, bev, line);
    free(line);
}

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)sa;
    (void)salen;
    struct bufferevent *bev = bufferevent_socket_new(
        evconnlistener_get_base(evl), fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        close(fd);
        return;
    }
    struct timeval tv = {CONTROL_TIMEOUT, 0};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setwatermark(bev, EV_READ, 0, CONTROL_LINE_MAX + 2);
    bufferevent_setcb(bev, on_client_read, NULL, on_client_event, arg);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct control *control_open(struct event_base *base, const char *path,
                             char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (!str_copy(sun.sun_path, sizeof(sun.sun_path), path)) {
        str_printf(err, errlen, "control socket path too long: %s", path);
        return NULL;
    }
    /* A stale socket from a crashed daemon: probe it before removing. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        if (connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
            close(probe);
            str_printf(err, errlen,
                       "another moatd is running (control socket %s)", path);
            return NULL;
        }
        close(probe);
    }
    unlink(path);
    mode_t old = umask(0117);
    struct evconnlistener *evl = evconnlistener_new_bind(
        base, on_accept, NULL,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
        (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (evl == NULL) {
        str_printf(err, errlen, "cannot listen on control socket %s: %s",
                   path, strerror(errno));
        return NULL;
    }
    struct control *c = xcalloc(1, sizeof(*c));
    c->evl = evl;
    c->path = xstrdup(path);
    evconnlistener_set_cb(evl, on_accept, c);
    return c;
}

void control_register(struct control *c, const char *name, control_fn fn,
                      void *arg)
{
    if (c->ncmds >= CONTROL_MAX_CMDS)
        fatal("control: too many commands");
    c->cmds[c->ncmds++] = (struct control_cmd){name, fn, arg};
}

void control_close(struct control *c)
{
    if (c == NULL)
        return;
    evconnlistener_free(c->evl);
    unlink(c->path);
    free(c->path);
    free(c);
}
