/*
 * moatctl.c - the administration client.
 *
 * Sends one request to moatd's control socket and prints the answer. The
 * command list below is the tool's documentation: `moatctl --help` prints
 * it, `moatctl CMD --help` prints one entry. The socket path comes from
 * -s, or from the configuration file given with -c (the built-in
 * configuration's path otherwise).
 */
#include "admin/control.h"
#include "conf/conf.h"
#include "core/buf.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct command {
    const char *name;  /* request sent to moatd */
    const char *usage; /* arguments */
    const char *help;  /* one paragraph */
};

static const struct command commands[] = {
    {"status", "",
     "Show uptime, configuration, counters (connections, messages and "
     "recipients received, rejected recipients, aborted transactions, "
     "delivered, soft bounced, hard bounced and deleted recipients, "
     "bounce messages generated, spool flushes) and gauges (open inbound "
     "and outbound connections, active recipients, destinations, messages "
     "and kilobytes in the spool, the last MID, ICID and DCID issued)."},
    {"queue list", "",
     "List the messages in the queue: MID, size in bytes, time received, "
     "number of recipients still to be delivered and envelope sender."},
    {"queue show", "MID",
     "Show one message: its envelope, and for each recipient whether it is "
     "delivered, bounced, deleted or pending; for a pending one, whether it "
     "is being delivered, ready, or waiting to be retried (and when), how "
     "many attempts failed and the last error."},
    {"queue flush", "[DOMAIN]",
     "Retry now every recipient waiting for a retry (only those for DOMAIN "
     "when given), as the appliance's delivernow does. Retry counts are "
     "kept."},
    {"queue delete", "MID",
     "Delete a message's pending recipients without delivering or bouncing "
     "them (logged as Deleted). A delivery in progress finishes; recipients "
     "it does not deliver are deleted."},
    {"queue bounce", "MID",
     "Hard bounce a message's pending recipients now: the sender gets a "
     "delivery status notification (5.3.0, bounced by administrator)."},
    {"queue retry", "MID", "Retry one message's waiting recipients now."},
    {"tophosts", "[active|connections|delivered|hard|soft]",
     "List destination domains ranked by active recipients (the default), "
     "current outbound connections, delivered recipients, hard bounced "
     "recipients or soft bounce events, with all five columns, as the "
     "appliance's tophosts does. Counters are since moatd started."},
    {"hoststatus", "DOMAIN",
     "Show one destination: up/down, soft and hard bounce and delivery "
     "counters, active recipients and how many wait for a retry, current "
     "connections, last activity, next retry, the last error, and the "
     "destination controls, bounce profile and SMTP route that apply."},
    {"hat list", "[LISTENER]",
     "List the Host Access Table of a listener (of every listener without "
     "an argument): its sender groups in the order they are tried, each "
     "with its mail flow policy, access rule (ACCEPT, RELAY, REJECT, "
     "TCPREFUSE, CONTINUE), number of senders and comment, and the final "
     "ALL row."},
    {"hat detail", "LISTENER",
     "Show a listener's Host Access Table in full: every sender of every "
     "group, their DNS verification checks, and every parameter of every "
     "mail flow policy as it applies (policy values and listener defaults "
     "resolved)."},
    {"hat export", "LISTENER",
     "Print the listener's Host Access Table as a configuration block, hat "
     "\"LISTENER\" { ... }, with every group and every policy written in "
     "full. Loading it reproduces the table exactly; edit it and give it "
     "back with hat import."},
    {"hat import", "LISTENER FILE",
     "Replace the listener's Host Access Table with the hat \"LISTENER\" "
     "block in FILE: the block in the configuration file (-c) is replaced "
     "(or the block is appended if there is none), the result is validated "
     "as a whole, the old file is kept as FILE.bak, and moatd is told to "
     "commit. A file that does not validate changes nothing; its errors "
     "are printed as file:line:column: reason. Runs with your permissions: "
     "you must be able to write the configuration file."},
    {"destconfig list", "",
     "List the destination controls table as the appliance's destconfig "
     "does: for each domain row and the Default row, Rate Limiting (On: "
     "the row sets a limit; Default: it uses the Default row's), TLS, "
     "Bounce Verification, Bounce Profile and IP Version Preference."},
    {"destconfig detail", "[DOMAIN]",
     "Show every setting of a destination row (all rows without an "
     "argument): IP address preference, concurrent connections, messages "
     "per connection, recipient limit, whether limits count per domain or "
     "per MX IP address, TLS, DANE, bounce verification and bounce profile. "
     "Values the row takes from the Default row show as Default (value). "
     "A domain without a row of its own shows the row that applies to it."},
    {"destconfig export", "[FILE]",
     "Write the destination controls table to FILE (standard output "
     "without one, or with -) as configuration blocks: destination "
     "\"Default\" with every setting, then each row with only the settings "
     "it sets. Give it back, edited or not, with destconfig import."},
    {"destconfig import", "FILE",
     "Replace every destination block of the configuration file (-c) with "
     "the blocks in FILE (what destconfig export writes; an empty file "
     "clears the table), validate the whole, keep the old file as "
     "FILE.bak, and tell moatd to commit. A file that does not validate "
     "changes nothing; errors are printed as file:line:column: reason."},
    {"configtest", "",
     "Ask moatd to read and validate its configuration file without "
     "applying it. Errors are printed as file:line:column: reason."},
    {"commit", "",
     "Validate the configuration file and apply it atomically. A file with "
     "errors is refused and the running configuration stays. Listeners "
     "whose address is unchanged keep their sockets; open sessions finish "
     "under the configuration they started with. spool_dir, user, pidfile, "
     "control_socket and the mail log path take effect at the next "
     "restart."},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moatctl [-c FILE | -s SOCKET] COMMAND [ARGS]\n"
               "       moatctl COMMAND --help\n\n"
               "  -c FILE    moatd's configuration file (for the socket "
               "path)\n"
               "  -s SOCKET  moatd's control socket\n\n"
               "commands:\n");
    for (size_t i = 0; i < ARRAY_LEN(commands); i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].usage);
    fprintf(f, "\nmoatctl COMMAND --help describes a command.\n");
}

/* Print a paragraph wrapped at 72 columns. */
static void print_wrapped(const char *text)
{
    size_t col = 0;
    while (*text) {
        size_t w = strcspn(text, " ");
        if (col && col + 1 + w > 72) {
            putchar('\n');
            col = 0;
        } else if (col) {
            putchar(' ');
            col++;
        }
        printf("%.*s", (int)w, text);
        col += w;
        text += w;
        while (*text == ' ')
            text++;
    }
    putchar('\n');
}

/* When the configuration does not validate (the case configtest and
 * commit exist for), find `control_socket = "PATH"` in its text so the
 * daemon can still be asked; NULL if the file does not set it. */
static char *socket_from_text(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return NULL;
    char line[1024], *found = NULL;
    while (found == NULL && fgets(line, sizeof(line), f)) {
        char *p = line + strspn(line, " \t");
        if (strncmp(p, "control_socket", 14) != 0)
            continue;
        p += 14 + strspn(p + 14, " \t=:");
        char *end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (end)
            found = xstrndup(p + 1, (size_t)(end - p - 1));
    }
    fclose(f);
    return found;
}

/* Match argv words against the command names ("queue" "list"). */
static const struct command *find_command(int argc, char **argv, int *used)
{
    char joined[256] = "";
    const struct command *best = NULL;
    for (int n = 1; n <= argc && n <= 3; n++) {
        if (n > 1)
            strncat(joined, " ", sizeof(joined) - strlen(joined) - 1);
        strncat(joined, argv[n - 1], sizeof(joined) - strlen(joined) - 1);
        for (size_t i = 0; i < ARRAY_LEN(commands); i++)
            if (strcmp(commands[i].name, joined) == 0) {
                best = &commands[i];
                *used = n;
            }
    }
    return best;
}

/* Send the request and copy the answer to out (errors to stderr);
 * return the exit code. */
static int request_to(const char *path, const char *req, FILE *out)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (!str_copy(sun.sun_path, sizeof(sun.sun_path), path)) {
        fprintf(stderr, "moatctl: socket path too long: %s\n", path);
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        fprintf(stderr, "moatctl: cannot connect to moatd at %s: %s\n", path,
                strerror(errno));
        fprintf(stderr, "moatctl: is moatd running? (give its "
                        "configuration with -c FILE)\n");
        return 2;
    }
    char line[CONTROL_LINE_MAX + 2];
    str_printf(line, sizeof(line), "%s\n", req);
    if (write(fd, line, strlen(line)) < 0) {
        fprintf(stderr, "moatctl: write: %s\n", strerror(errno));
        return 2;
    }
    char buf[65536];
    ssize_t n;
    int status = -1;
    size_t skip = 0;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        size_t off = 0;
        if (status < 0) {
            status = strncmp(buf, "OK\n", 3) == 0 ? 0 : 1;
            skip = status == 0 ? 3 : 4;
            off = (size_t)n < skip ? (size_t)n : skip;
        }
        fwrite(buf + off, 1, (size_t)n - off, status ? stderr : out);
    }
    close(fd);
    if (status < 0) {
        fprintf(stderr, "moatctl: moatd closed the connection without an "
                        "answer\n");
        return 2;
    }
    return status;
}

static int request(const char *path, const char *req)
{
    return request_to(path, req, stdout);
}

/* destconfig export FILE: the daemon's export, written to FILE. */
static int export_to_file(const char *sock, const char *req, const char *file)
{
    FILE *f = fopen(file, "we");
    if (f == NULL) {
        fprintf(stderr, "moatctl: %s: %s\n", file, strerror(errno));
        return 2;
    }
    int rc = request_to(sock, req, f);
    if (fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "moatctl: %s: %s\n", file, strerror(errno));
        rc = 2;
    }
    if (rc == 0)
        printf("Destination controls exported to %s\n", file);
    return rc;
}

/* hat import, destconfig import: splice the blocks into the
 * configuration file, validate the whole, keep a backup, install it, and
 * ask moatd to commit. label: the hat's listener (NULL: every
 * destination block). */
static int import_blocks(const char *conf_path, const char *key,
                         const char *label, const char *file,
                         const char *sock)
{
    const char *what = label ? "hat import" : "destconfig import";
    if (conf_path == NULL) {
        fprintf(stderr, "moatctl: %s edits the configuration file: "
                        "give it with -c FILE\n", what);
        return 2;
    }
    struct conf_errors e = {0};
    struct buf text = {0};
    if (!conf_import_blocks(conf_path, key, label, file, &text, &e)) {
        conf_errors_print(&e, stderr);
        conf_errors_free(&e);
        buf_free(&text);
        return 1;
    }
    /* A symlinked configuration: edit the file it points to. */
    char target[PATH_MAX];
    if (realpath(conf_path, target) == NULL) {
        fprintf(stderr, "moatctl: %s: %s\n", conf_path, strerror(errno));
        buf_free(&text);
        return 2;
    }
    struct stat st;
    char tmp[PATH_MAX + 16], bak[PATH_MAX + 8];
    if (stat(target, &st) != 0 ||
        !str_printf(tmp, sizeof(tmp), "%s.XXXXXX", target) ||
        !str_printf(bak, sizeof(bak), "%s.bak", target)) {
        fprintf(stderr, "moatctl: %s: %s\n", target, strerror(errno));
        buf_free(&text);
        return 2;
    }
    /* A new file next to it, with its mode and owner, never a path that
     * someone could have planted. */
    int fd = mkstemp(tmp);
    bool wrote = fd >= 0;
    if (wrote && (fchmod(fd, st.st_mode & 07777) != 0 ||
                  (fchown(fd, st.st_uid, st.st_gid) != 0 && errno != EPERM)))
        wrote = false;
    for (size_t off = 0; wrote && off < text.len;) {
        ssize_t n = write(fd, text.data + off, text.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        wrote = n > 0;
        off += n > 0 ? (size_t)n : 0;
    }
    if (wrote && fsync(fd) != 0)
        wrote = false;
    if (fd >= 0 && close(fd) != 0)
        wrote = false;
    buf_free(&text);
    if (!wrote) {
        fprintf(stderr, "moatctl: cannot write a new %s: %s\n", target,
                strerror(errno));
        if (fd >= 0)
            unlink(tmp);
        return 2;
    }
    /* Validated in place, so that .include paths resolve as they will. */
    struct moat_conf *c = conf_load(tmp, &e);
    if (c == NULL) {
        fprintf(stderr, "moatctl: the configuration with the imported table "
                        "does not validate (nothing changed; positions are "
                        "in the would-be file):\n");
        conf_errors_print(&e, stderr);
        conf_errors_free(&e);
        unlink(tmp);
        return 1;
    }
    conf_unref(c);
    bool backup = true;
    if (unlink(bak) != 0 && errno != ENOENT)
        backup = false;
    if (backup && link(target, bak) != 0)
        backup = false;
    if (!backup)
        fprintf(stderr,
                "moatctl: warning: could not keep the previous file "
                "as %s: %s\n",
                bak, strerror(errno));
    if (rename(tmp, target) != 0) {
        fprintf(stderr, "moatctl: cannot replace %s: %s\n", target,
                strerror(errno));
        unlink(tmp);
        return 2;
    }
    if (label)
        printf("%s: hat \"%s\" imported from %s (previous file: %s)\n",
               conf_path, label, file, bak);
    else
        printf("%s: destination controls imported from %s (previous file: "
               "%s)\n",
               conf_path, file, bak);
    return request(sock, "commit");
}

int main(int argc, char **argv)
{
    const char *conf_path = NULL, *sock = NULL;
    int opt;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "+c:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_path = optarg;
            break;
        case 's':
            sock = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    int used = 0;
    const struct command *cmd =
        find_command(argc - optind, argv + optind, &used);
    if (cmd == NULL) {
        fprintf(stderr, "moatctl: unknown command \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    char **rest = argv + optind + used;
    int nrest = argc - optind - used;
    if (nrest > 0 &&
        (strcmp(rest[0], "--help") == 0 || strcmp(rest[0], "-h") == 0)) {
        printf("usage: moatctl %s %s\n\n", cmd->name, cmd->usage);
        print_wrapped(cmd->help);
        return 0;
    }
    /* usage "" takes nothing; "[X]" at most one; "X" exactly one; "X Y"
     * exactly two. */
    int max_args = cmd->usage[0] ? 1 : 0;
    bool required = cmd->usage[0] && cmd->usage[0] != '[';
    if (strchr(cmd->usage, ' ') && cmd->usage[0] != '[')
        max_args = 2;
    if (nrest > max_args || (required && nrest < max_args)) {
        if (max_args == 0)
            fprintf(stderr, "moatctl: %s takes no arguments\n", cmd->name);
        else
            fprintf(stderr, "usage: moatctl %s %s\n", cmd->name, cmd->usage);
        return 2;
    }
    char req[CONTROL_LINE_MAX];
    if (!str_printf(req, sizeof(req), "%s%s%s", cmd->name, nrest ? " " : "",
                    nrest ? rest[0] : "") ||
        strpbrk(req, "\r\n")) {
        fprintf(stderr, "moatctl: argument too long or holding a line break\n");
        return 2;
    }
    char *sock_alloc = NULL;
    if (sock == NULL) {
        struct conf_errors e = {0};
        struct moat_conf *c =
            conf_path ? conf_load(conf_path, &e)
                      : conf_load_string("(built-in)", conf_default_text, &e);
        if (c == NULL) {
            conf_errors_free(&e);
            if (conf_path)
                sock_alloc = socket_from_text(conf_path);
            if (sock_alloc == NULL) {
                c = conf_load_string("(built-in)", conf_default_text, &e);
                if (c == NULL) {
                    conf_errors_print(&e, stderr);
                    conf_errors_free(&e);
                    return 2;
                }
            }
        }
        if (c) {
            sock_alloc = xstrdup(c->control_socket);
            conf_unref(c);
        }
        sock = sock_alloc;
    }
    int rc;
    if (strcmp(cmd->name, "hat import") == 0)
        rc = import_blocks(conf_path, "hat", rest[0], rest[1], sock);
    else if (strcmp(cmd->name, "destconfig import") == 0)
        rc = import_blocks(conf_path, "destination", NULL, rest[0], sock);
    else if (strcmp(cmd->name, "destconfig export") == 0 && nrest == 1 &&
             strcmp(rest[0], "-") != 0)
        rc = export_to_file(sock, "destconfig export", rest[0]);
    else if (strcmp(cmd->name, "destconfig export") == 0)
        rc = request(sock, "destconfig export");
    else
        rc = request(sock, req);
    free(sock_alloc);
    return rc;
}
