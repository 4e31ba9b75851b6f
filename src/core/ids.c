/*
 * ids.c - persistent ID counters (see ids.h).
 *
 * State file format, one line per kind: "icid <reserved-end>\n" etc.
 * Never hands out an ID that is not below a durably recorded reservation.
 */
#include "core/ids.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <unistd.h>

static const char *const kind_names[ID__COUNT] = {"icid", "mid", "dcid"};

struct ids {
    char *path;
    unsigned block;
    uint64_t next[ID__COUNT];     /* next ID to hand out */
    uint64_t reserved[ID__COUNT]; /* first ID not covered by the file */
};

/* Parse the state file; missing file leaves counters at 1. */
static bool ids_read(struct ids *ids, char *err, size_t errlen)
{
    FILE *f = fopen(ids->path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            return true;
        str_printf(err, errlen, "cannot read %s: %s", ids->path,
                   strerror(errno));
        return false;
    }
    char line[128];
    unsigned lineno = 0;
    bool ok = true;
    while (ok && fgets(line, sizeof(line), f)) {
        lineno++;
        char name[16];
        unsigned long long v;
        if (sscanf(line, "%15s %llu", name, &v) != 2) {
            ok = false;
            break;
        }
        for (int k = 0; k < ID__COUNT; k++)
            if (strcmp(name, kind_names[k]) == 0 && v > ids->next[k])
                ids->next[k] = v;
    }
    fclose(f);
    if (!ok)
        str_printf(err, errlen, "%s:%u: malformed ID state line", ids->path,
                   lineno);
    return ok;
}

/* Durably record the reservations in ids->reserved. */
static bool ids_write(struct ids *ids)
{
    char tmp[4096];
    if (!str_printf(tmp, sizeof(tmp), "%s.tmp", ids->path))
        return false;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    char text[256];
    str_printf(text, sizeof(text), "icid %llu\nmid %llu\ndcid %llu\n",
               (unsigned long long)ids->reserved[ID_ICID],
               (unsigned long long)ids->reserved[ID_MID],
               (unsigned long long)ids->reserved[ID_DCID]);
    size_t len = strlen(text);
    bool ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    ok = (close(fd) == 0) && ok;
    if (!ok || rename(tmp, ids->path) != 0) {
        unlink(tmp);
        return false;
    }
    /* The rename must be durable too, or a crash could bring back the
     * old reservation and with it IDs already handed out. */
    char dir[4096];
    str_copy(dir, sizeof(dir), ids->path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return false;
    ok = fsync(dfd) == 0;
    close(dfd);
    return ok;
}

struct ids *ids_open(const char *path, unsigned block, uint64_t min_mid,
                     char *err, size_t errlen)
{
    struct ids *ids = xcalloc(1, sizeof(*ids));
    ids->path = xstrdup(path);
    ids->block = block ? block : 1;
    for (int k = 0; k < ID__COUNT; k++)
        ids->next[k] = 1;
    if (!ids_read(ids, err, errlen)) {
        ids_close(ids);
        return NULL;
    }
    if (ids->next[ID_MID] <= min_mid)
        ids->next[ID_MID] = min_mid + 1;
    for (int k = 0; k < ID__COUNT; k++)
        ids->reserved[k] = ids->next[k] + ids->block;
    if (!ids_write(ids)) {
        str_printf(err, errlen, "cannot write %s: %s", path,
                   strerror(errno));
        ids_close(ids);
        return NULL;
    }
    return ids;
}

uint64_t ids_next(struct ids *ids, enum id_kind kind)
{
    if (ids->next[kind] >= ids->reserved[kind]) {
        uint64_t old = ids->reserved[kind];
        ids->reserved[kind] = ids->next[kind] + ids->block;
        if (!ids_write(ids)) {
            ids->reserved[kind] = old;
            return 0;
        }
    }
    return ids->next[kind]++;
}

uint64_t ids_last(const struct ids *ids, enum id_kind kind)
{
    return ids->next[kind] - 1;
}

void ids_close(struct ids *ids)
{
    if (ids == NULL)
        return;
    free(ids->path);
    free(ids);
}
