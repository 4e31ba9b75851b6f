/*
 * conf_parse.c - recursive-descent parser from moat.conf to a node tree.
 *
 * Grammar (a UCL-compatible subset; separators ; , and newlines are
 * optional everywhere between entries):
 *
 *   body   := { entry | ';' | ',' | '.include' path }
 *   entry  := key ( ('=' | ':') value | value | label '{' body '}' )
 *   value  := word | string | '{' body '}' | '[' [ value [','] ]* ']'
 *
 * The parser knows no key meanings: it builds objects, lists and scalars
 * with positions and leaves types, duplicates and bounds to the
 * validator. It stops at the first syntax error (later ones would only
 * be noise). Bounds: file size, total input, nesting depth, include
 * depth, node count; include cycles are detected by device and inode.
 */
#include "conf/conf_node.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct file_id {
    dev_t dev;
    ino_t ino;
};

struct pstate {
    struct conf_tree *t;
    struct conf_diag *d;
    unsigned depth;     /* blocks and lists open */
    unsigned inc_depth; /* .include levels open */
    unsigned includes;  /* .include directives read so far */
    size_t nopen;       /* files being read, for cycle detection */
    struct file_id open[CONF_MAX_INCLUDE_DEPTH + 1];
};

/* One source being parsed; `real` if it is a file on disk, so that
 * includes are relative to its directory. */
struct psrc {
    struct lexer lx;
    bool real;
};

static bool parse_body(struct pstate *ps, struct psrc *src,
                       struct conf_node *obj, enum conf_tok end);
static bool parse_value(struct pstate *ps, struct psrc *src, enum conf_tok tok,
                        struct conf_node *n);

/* Keep a file name for the tree's lifetime; positions point to it. */
static const char *intern_file(struct conf_tree *t, const char *name)
{
    t->files = xgrow(t->files, &t->files_cap, t->nfiles + 1, sizeof(*t->files));
    t->files[t->nfiles] = xstrdup(name);
    return t->files[t->nfiles++];
}

/* Count one entry (node or .include) against CONF_MAX_NODES. */
static bool count_entry(struct pstate *ps, const struct conf_pos *pos)
{
    if (ps->t->nodes >= CONF_MAX_NODES) {
        conf_diag_error(ps->d, pos, "more than %u entries in the configuration",
                        CONF_MAX_NODES);
        return false;
    }
    ps->t->nodes++;
    return true;
}

/* A new node of `type` at pos, counted against CONF_MAX_NODES. */
static struct conf_node *new_node(struct pstate *ps, enum conf_node_type type,
                                  const struct conf_pos *pos)
{
    if (!count_entry(ps, pos))
        return NULL;
    struct conf_node *n = xcalloc(1, sizeof(*n));
    n->type = type;
    n->pos = *pos;
    return n;
}

static void add_child(struct conf_node *parent, struct conf_node *n)
{
    if (parent->last)
        parent->last->next = n;
    else
        parent->child = n;
    parent->last = n;
    parent->nchildren++;
}

static bool syntax_error(struct pstate *ps, const struct conf_pos *pos,
                         const char *what, enum conf_tok found)
{
    conf_diag_error(ps->d, pos, "expected %s, found %s", what,
                    lex_tok_name(found));
    return false;
}

/* Open a nesting level (block or list); false if too deep. */
static bool enter(struct pstate *ps, const struct conf_pos *pos)
{
    if (ps->depth >= CONF_MAX_DEPTH) {
        conf_diag_error(ps->d, pos, "blocks and lists nested more than %d deep",
                        CONF_MAX_DEPTH);
        return false;
    }
    ps->depth++;
    return true;
}

/* '{' body '}' (the '{' already read). */
static bool parse_object(struct pstate *ps, struct psrc *src,
                         struct conf_node *n)
{
    n->type = NODE_OBJECT;
    if (!enter(ps, &n->pos))
        return false;
    bool ok = parse_body(ps, src, n, TOK_RBRACE);
    ps->depth--;
    return ok;
}

/* '[' values ']' (the '[' already read); commas optional, one trailing
 * comma allowed. */
static bool parse_array(struct pstate *ps, struct psrc *src,
                        struct conf_node *n)
{
    n->type = NODE_ARRAY;
    if (!enter(ps, &n->pos))
        return false;
    for (;;) {
        struct conf_pos pos;
        enum conf_tok tok = lex_next(&src->lx, LEX_VALUE, &pos);
        if (tok == TOK_RBRACKET)
            break;
        if (tok == TOK_EOF) {
            conf_diag_error(ps->d, &n->pos,
                            "unterminated list: this '[' has no matching ']'");
            return false;
        }
        struct conf_node *e = new_node(ps, NODE_SCALAR, &pos);
        if (e == NULL)
            return false;
        add_child(n, e);
        if (!parse_value(ps, src, tok, e))
            return false;
        struct lex_mark mark = src->lx.at;
        tok = lex_next(&src->lx, LEX_VALUE, &pos);
        if (tok == TOK_RBRACKET)
            break;
        if (tok != TOK_COMMA)
            src->lx.at = mark;
    }
    ps->depth--;
    return true;
}

/* A value starting with token `tok` into node n (its pos already set). */
static bool parse_value(struct pstate *ps, struct psrc *src, enum conf_tok tok,
                        struct conf_node *n)
{
    switch (tok) {
    case TOK_WORD:
    case TOK_STRING:
        n->type = NODE_SCALAR;
        n->quoted = tok == TOK_STRING;
        n->len = src->lx.val.len;
        n->str = xstrndup(buf_str(&src->lx.val), n->len);
        return true;
    case TOK_LBRACE:
        return parse_object(ps, src, n);
    case TOK_LBRACKET:
        return parse_array(ps, src, n);
    case TOK_ERROR:
        return false;
    default:
        return syntax_error(ps, &n->pos, "a value", tok);
    }
}

/* After `key word-or-string`: a '{' makes it a labelled block, anything
 * else leaves it a scalar and is read again as the next entry. */
static bool parse_label_or_scalar(struct pstate *ps, struct psrc *src,
                                  enum conf_tok tok, struct conf_node *n)
{
    if (!parse_value(ps, src, tok, n))
        return false;
    struct lex_mark mark = src->lx.at;
    struct conf_pos pos;
    enum conf_tok next = lex_next(&src->lx, LEX_KEY, &pos);
    if (next == TOK_ERROR)
        return false;
    if (next != TOK_LBRACE) {
        src->lx.at = mark;
        return true;
    }
    n->label = n->str;
    n->label_pos = n->pos;
    n->str = NULL;
    n->len = 0;
    n->quoted = false;
    n->pos = pos;
    return parse_object(ps, src, n);
}

/* The rest of an entry whose key has been read into n. */
static bool parse_entry(struct pstate *ps, struct psrc *src,
                        struct conf_node *n)
{
    enum conf_tok tok = lex_next(&src->lx, LEX_VALUE, &n->pos);
    if (tok == TOK_EQUALS || tok == TOK_COLON) {
        tok = lex_next(&src->lx, LEX_VALUE, &n->pos);
        return parse_value(ps, src, tok, n);
    }
    if (tok == TOK_WORD || tok == TOK_STRING)
        return parse_label_or_scalar(ps, src, tok, n);
    if (tok == TOK_LBRACE || tok == TOK_LBRACKET || tok == TOK_ERROR)
        return parse_value(ps, src, tok, n);
    conf_diag_error(ps->d, &n->pos,
                    "expected '=', a value or '{' after key '%s', found %s",
                    n->key, lex_tok_name(tok));
    return false;
}

/* Report a missing NUL-free guarantee: find the NUL's line and column. */
static bool check_nul(struct pstate *ps, const char *file, const char *text,
                      size_t len)
{
    const char *nul = memchr(text, '\0', len);
    if (nul == NULL)
        return true;
    struct conf_pos pos = {file, 1, 1};
    for (const char *p = text; p < nul; p++) {
        if (*p == '\n') {
            pos.line++;
            pos.col = 1;
        } else {
            pos.col++;
        }
    }
    conf_diag_error(ps->d, &pos, "NUL byte in the file (is it text?)");
    return false;
}

/* Parse a whole source (file or string) into obj. */
static bool parse_text(struct pstate *ps, const char *file, const char *text,
                       size_t len, bool real, struct conf_node *obj)
{
    struct conf_pos whole = {file, 0, 0};
    ps->t->bytes += len;
    if (ps->t->bytes > CONF_MAX_TOTAL_SIZE) {
        conf_diag_error(ps->d, &whole,
                        "more than %u MiB of configuration in all",
                        CONF_MAX_TOTAL_SIZE >> 20);
        return false;
    }
    if (len > CONF_MAX_FILE_SIZE) {
        conf_diag_error(ps->d, &whole, "file is larger than %u MiB",
                        CONF_MAX_FILE_SIZE >> 20);
        return false;
    }
    if (!check_nul(ps, file, text, len))
        return false;
    struct psrc src = {.real = real};
    lex_init(&src.lx, file, text, len, ps->d);
    bool ok = parse_body(ps, &src, obj, TOK_EOF);
    lex_free(&src.lx);
    return ok;
}

/* Read a regular file of at most CONF_MAX_FILE_SIZE bytes (one more is
 * read to notice growth). Returns NULL or why it failed. */
static const char *read_file(const char *path, struct buf *out,
                             struct file_id *id)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return strerror(errno);
    struct stat st = {0};
    const char *why = NULL;
    if (fstat(fd, &st) != 0)
        why = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "not a regular file";
    else if (st.st_size > (off_t)CONF_MAX_FILE_SIZE)
        why = "file is larger than 16 MiB";
    while (why == NULL && out->len <= CONF_MAX_FILE_SIZE) {
        buf_reserve(out, 65536);
        ssize_t n = read(fd, out->data + out->len, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            why = strerror(errno);
        if (n <= 0)
            break;
        out->len += (size_t)n;
        out->data[out->len] = '\0';
    }
    if (why == NULL && out->len > CONF_MAX_FILE_SIZE)
        why = "file is larger than 16 MiB";
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    close(fd);
    return why;
}

static bool already_open(const struct pstate *ps, const struct file_id *id)
{
    for (size_t i = 0; i < ps->nopen; i++)
        if (ps->open[i].dev == id->dev && ps->open[i].ino == id->ino)
            return true;
    return false;
}

/* Read and parse one file (name already interned) into obj; errors about
 * opening it are reported at `at` (the .include), or for the file as a
 * whole if at is NULL. */
static bool parse_file_into(struct pstate *ps, const char *file,
                            const struct conf_pos *at, struct conf_node *obj)
{
    struct buf text = {0};
    struct file_id id;
    const char *path = file;
    struct conf_pos whole = {file, 0, 0};
    const char *why = read_file(path, &text, &id);
    bool ok = false;
    if (why)
        conf_diag_error(ps->d, at ? at : &whole, "cannot %s \"%s\": %s",
                        at ? "include" : "read", path, why);
    else if (already_open(ps, &id))
        conf_diag_error(ps->d, at,
                        "include cycle: \"%s\" is already being read", path);
    else {
        ps->open[ps->nopen++] = id;
        ok = parse_text(ps, file, buf_str(&text), text.len, true, obj);
        ps->nopen--;
    }
    buf_free(&text);
    return ok;
}

/* The path of an include: relative to the including file's directory,
 * or to the current directory for a string source. */
static char *include_path(const struct psrc *src, const char *path)
{
    const char *slash = strrchr(src->lx.file, '/');
    if (path[0] == '/' || !src->real || slash == NULL)
        return xstrdup(path);
    return xasprintf("%.*s/%s", (int)(slash - src->lx.file), src->lx.file,
                     path);
}

/* .include "file" (the directive word already read, at `at`). */
static bool parse_include(struct pstate *ps, struct psrc *src,
                          struct conf_node *obj, const struct conf_pos *at)
{
    struct conf_pos pos;
    enum conf_tok tok = lex_next(&src->lx, LEX_VALUE, &pos);
    if (tok == TOK_ERROR)
        return false;
    if (tok != TOK_STRING && tok != TOK_WORD)
        return syntax_error(ps, &pos, "a file name after .include", tok);
    if (src->lx.val.len == 0) {
        conf_diag_error(ps->d, &pos, ".include needs a file name");
        return false;
    }
    if (!count_entry(ps, at))
        return false;
    if (ps->includes >= CONF_MAX_INCLUDES) {
        conf_diag_error(ps->d, at, "more than %d .include directives",
                        CONF_MAX_INCLUDES);
        return false;
    }
    ps->includes++;
    if (ps->inc_depth >= CONF_MAX_INCLUDE_DEPTH) {
        conf_diag_error(ps->d, at, ".include nested more than %d deep",
                        CONF_MAX_INCLUDE_DEPTH);
        return false;
    }
    char *path = include_path(src, buf_str(&src->lx.val));
    ps->inc_depth++;
    bool ok = parse_file_into(ps, intern_file(ps->t, path), at, obj);
    ps->inc_depth--;
    free(path);
    return ok;
}

/* Report a token that cannot start an entry. */
static bool bad_entry_start(struct pstate *ps, const struct conf_node *obj,
                            enum conf_tok tok, const struct conf_pos *pos)
{
    if (tok == TOK_EOF)
        conf_diag_error(ps->d, &obj->pos,
                        "unterminated block: this '{' has no matching '}'");
    else if (tok == TOK_RBRACE)
        conf_diag_error(ps->d, pos, "'}' without a matching '{'");
    else if (tok != TOK_ERROR)
        syntax_error(ps, pos, "a key", tok);
    return false;
}

/* Entries until `end` (TOK_RBRACE or TOK_EOF) into obj. */
static bool parse_body(struct pstate *ps, struct psrc *src,
                       struct conf_node *obj, enum conf_tok end)
{
    for (;;) {
        struct conf_pos pos;
        enum conf_tok tok = lex_next(&src->lx, LEX_KEY, &pos);
        if (tok == end)
            return true;
        if (tok == TOK_SEMI || tok == TOK_COMMA)
            continue;
        if (tok != TOK_WORD && tok != TOK_STRING)
            return bad_entry_start(ps, obj, tok, &pos);
        const char *key = buf_str(&src->lx.val);
        if (tok == TOK_WORD && strcmp(key, ".include") == 0) {
            if (!parse_include(ps, src, obj, &pos))
                return false;
            continue;
        }
        if (key[0] == '\0') {
            conf_diag_error(ps->d, &pos, "empty key");
            return false;
        }
        struct conf_node *n = new_node(ps, NODE_SCALAR, &pos);
        if (n == NULL)
            return false;
        n->key = xstrdup(key);
        n->key_pos = pos;
        add_child(obj, n);
        if (!parse_entry(ps, src, n))
            return false;
    }
}

static void make_root(struct pstate *ps, const char *file)
{
    struct conf_pos pos = {file, 1, 1};
    if (ps->t->root == NULL) {
        ps->t->root = xcalloc(1, sizeof(*ps->t->root));
        ps->t->root->type = NODE_OBJECT;
        ps->t->root->pos = pos;
        ps->t->root->key_pos = pos;
    }
}

bool conf_parse_file(struct conf_tree *t, const char *path, struct conf_diag *d)
{
    struct pstate ps = {.t = t, .d = d};
    const char *file = intern_file(t, path);
    make_root(&ps, file);
    return parse_file_into(&ps, file, NULL, t->root);
}

bool conf_parse_string(struct conf_tree *t, const char *name, const char *text,
                       size_t len, struct conf_diag *d)
{
    struct pstate ps = {.t = t, .d = d};
    const char *file = intern_file(t, name);
    make_root(&ps, file);
    return parse_text(&ps, file, text, len, false, t->root);
}

static void node_free(struct conf_node *n)
{
    while (n) {
        struct conf_node *next = n->next;
        node_free(n->child);
        free(n->key);
        free(n->label);
        free(n->str);
        free(n);
        n = next;
    }
}

void conf_tree_free(struct conf_tree *t)
{
    node_free(t->root);
    for (size_t i = 0; i < t->nfiles; i++)
        free(t->files[i]);
    free(t->files);
    memset(t, 0, sizeof(*t));
}

const char *conf_node_kind(const struct conf_node *n)
{
    switch (n->type) {
    case NODE_OBJECT:
        return "a block";
    case NODE_ARRAY:
        return "a list";
    default:
        return "a value";
    }
}
