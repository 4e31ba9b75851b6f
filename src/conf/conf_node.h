/*
 * conf_node.h - private to src/conf: the node tree, the lexer, the
 * diagnostics list and the key tables.
 *
 * The parser (conf_parse.c, on top of conf_lex.c) turns moat.conf into a
 * tree of nodes that knows nothing about key meanings; every node keeps
 * the file, line and column it came from. The validator (conf.c with
 * conf_value.c and conf_listener.c) walks the tree against the key
 * tables and fills a struct moat_conf. Nothing outside src/conf includes
 * this header (tests excepted).
 */
#ifndef MOAT_CONF_NODE_H
#define MOAT_CONF_NODE_H

#include "conf/conf.h"
#include "core/buf.h"

/* Limits on input; exceeding any is a reported error, never a crash. */
#define CONF_MAX_FILE_SIZE (16u * 1024 * 1024)  /* bytes per file */
#define CONF_MAX_TOTAL_SIZE (64u * 1024 * 1024) /* bytes, all files */
#define CONF_MAX_DEPTH 64                       /* nested blocks and lists */
#define CONF_MAX_STRING (64u * 1024) /* bytes in one string or word */
#define CONF_MAX_NODES 1000000u      /* nodes in the whole tree */
#define CONF_MAX_INCLUDE_DEPTH 16    /* nested .include directives */
#define CONF_MAX_INCLUDES 1000       /* .include directives in all */
#define CONF_MAX_ERRORS 100          /* errors kept before giving up */

/* A place in a configuration file; `file` is owned by the tree. A line
 * of 0 means "the file as a whole" (printed without line and column). */
struct conf_pos {
    const char *file;
    unsigned line;
    unsigned col;
};

/* Collected errors, formatted "file:line:col: reason". */
struct conf_diag {
    struct conf_errors *errs;
    size_t count; /* errors reported, including those not kept */
};

void conf_diag_error(struct conf_diag *d, const struct conf_pos *pos,
                     const char *fmt, ...) MOAT_PRINTF(3, 4);
/* True once CONF_MAX_ERRORS are kept: callers skip costly hints. */
bool conf_diag_full(const struct conf_diag *d);
/* "file:line:col" (or "file" for line 0), for "first set at" notes. */
void conf_pos_str(const struct conf_pos *pos, char *out, size_t outlen);

/* ---- the tree ---- */

enum conf_node_type { NODE_SCALAR, NODE_OBJECT, NODE_ARRAY };

struct conf_node {
    enum conf_node_type type;
    bool quoted; /* scalar written as a quoted string */
    char *key;   /* NULL for list elements and the root */
    char *label; /* key "label" { ... }, else NULL */
    char *str;   /* scalar text, NUL-terminated */
    size_t len;  /* scalar length */
    struct conf_pos key_pos;
    struct conf_pos label_pos;
    struct conf_pos pos;     /* the value: scalar, '{' or '[' */
    struct conf_node *child; /* object entries / list elements, in order */
    struct conf_node *last;
    struct conf_node *next;
    size_t nchildren;
};

struct conf_tree {
    struct conf_node *root; /* an object */
    char **files;           /* file names positions point into */
    size_t nfiles;
    size_t files_cap;
    size_t nodes;
    size_t bytes; /* input read so far, all files */
};

/* Parse a file (following .include) or a string into t (zeroed first by
 * the caller). On a syntax error reports it and returns false; the tree
 * is then partial but must still be freed with conf_tree_free(). */
bool conf_parse_file(struct conf_tree *t, const char *path,
                     struct conf_diag *d);
bool conf_parse_string(struct conf_tree *t, const char *name, const char *text,
                       size_t len, struct conf_diag *d);
void conf_tree_free(struct conf_tree *t);
/* Name of a node kind for messages: "a value", "a block", "a list". */
const char *conf_node_kind(const struct conf_node *n);

/* ---- the lexer (conf_lex.c) ---- */

enum conf_tok {
    TOK_EOF,
    TOK_WORD,   /* bare word: public, 10mb, .include, 127.0.0.1:25 */
    TOK_STRING, /* quoted string, escapes decoded */
    TOK_LBRACE,
    TOK_RBRACE,
    TOK_LBRACKET,
    TOK_RBRACKET,
    TOK_EQUALS,
    TOK_COLON,
    TOK_SEMI,
    TOK_COMMA,
    TOK_ERROR /* already reported */
};

/* Where the lexer is; copying it saves and restores the position. */
struct lex_mark {
    size_t off;
    unsigned line;
    unsigned col;
};

struct lexer {
    const char *text;
    size_t len;
    const char *file;
    struct lex_mark at;
    struct buf val; /* text of the last WORD or STRING */
    struct conf_diag *diag;
};

/* In value context a ':' inside a word belongs to it ("*:25"); in key
 * context it separates ("key: value"). */
enum lex_ctx { LEX_KEY, LEX_VALUE };

void lex_init(struct lexer *lx, const char *file, const char *text, size_t len,
              struct conf_diag *d);
void lex_free(struct lexer *lx);
/* Read the next token; *start gets its position. */
enum conf_tok lex_next(struct lexer *lx, enum lex_ctx ctx,
                       struct conf_pos *start);
const char *lex_tok_name(enum conf_tok t);

/* ---- the key tables (conf.c) ---- */

enum conf_key_type {
    KT_STRING,  /* quoted or bare; min..max = length */
    KT_BOOL,    /* true false yes no on off */
    KT_UINT,    /* plain whole number, min..max */
    KT_SIZE,    /* bytes; k m g = x1000, kb mb gb = x1024 */
    KT_TIME,    /* seconds; ms s min h d w */
    KT_ENUM,    /* one of aux (NULL-terminated names), stored as int */
    KT_ADDRESS, /* "ip:port": off = char *, off2 = struct netaddr */
    KT_BLOCK,   /* key { ... } with aux = sub-table, same target */
    KT_SECTION, /* key "label" { ... }, handled by its own builder */
    KT_STRINGS  /* list of strings: off = size_t count, off2 = char **;
                   each checked by check; max = entries */
};

#define CONF_MAX_LIST_STRING 1024 /* bytes in one string of a list */

#define KF_REQUIRED 1u

struct conf_key {
    const char *name;
    enum conf_key_type type;
    const char *def; /* default as written in the file, NULL if none */
    uint64_t min, max;
    size_t off, off2, off3;
    const void *aux;
    /* KT_STRING: extra check; returns NULL or why the value is bad. */
    const char *(*check)(const char *s);
    unsigned flags;
    const char *help;
};

struct conf_table {
    const char *name; /* "top level", "mail_log", ... */
    const struct conf_key *keys;
    size_t count;
};

#define CONF_MAX_TABLE_KEYS 64

extern const struct conf_table conf_table_top;
extern const struct conf_table conf_table_listener;
extern const struct conf_table conf_table_rat_row;
extern const struct conf_table conf_table_delivery;
extern const struct conf_table conf_table_resolver;
extern const struct conf_table conf_table_route;
extern const struct conf_table conf_table_dest;
extern const struct conf_table conf_table_profile;
/* "TLSv1" ... "TLSv1.3": tls_min_protocol values (index = enum value). */
extern const char *const conf_tls_protocols[];

/* Every table, for documentation and tests. */
const struct conf_table *const *conf_key_tables(size_t *count);
const char *conf_key_type_name(enum conf_key_type t);
/* Row index of `name` in tab, or -1. */
int conf_table_index(const struct conf_table *tab, const char *name);

/* ---- validation (conf.c, conf_value.c, conf_listener.c) ---- */

struct vctx {
    struct conf_diag *d;
    struct moat_conf *c;
    const struct conf_node *root;
    char where[160]; /* "" at top level, else "listener \"X\"" */
};

/* Fill every defaulted field of a table (and its sub-blocks). */
void conf_block_defaults(const struct conf_table *tab, void *base);
/* Check an object's entries against a table and store them into base.
 * seen[i] gets the node that set key i (NULL if absent); KT_SECTION
 * keys are left to their builder. */
void conf_block_walk(struct vctx *v, const struct conf_node *obj,
                     const struct conf_table *tab, void *base,
                     const struct conf_node **seen);
/* Store one node as key k into base; false (reported) if invalid. */
bool conf_value_set(struct vctx *v, const struct conf_key *k,
                    const struct conf_node *n, void *base);
/* Store a default (text from the table) into base; false if it does not
 * convert, which is a bug in the table. */
bool conf_value_default(const struct conf_key *k, void *base);
/* Report an error about key `key` in the current block. */
void conf_key_error(struct vctx *v, const struct conf_pos *pos, const char *key,
                    const char *fmt, ...) MOAT_PRINTF(4, 5);

/* Errors inside a named block say where: `kind "NAME"` (cut at 64). */
void conf_where_set(struct vctx *v, const char *kind, const char *name);
/* A named block must be `kind "NAME" { ... }`; else reported, false. */
bool conf_named_block_ok(struct vctx *v, const struct conf_node *n,
                         const char *kind, const char *example);

/* Name checks; NULL if fine, else why not. */
const char *conf_check_hostname(const char *s);
const char *conf_check_listener_name(const char *s);
const char *conf_check_reply_text(const char *s);
/* A sender group entry (policy/sender.h forms). */
const char *conf_check_sender_entry(const char *s);
/* Closest of `names` to `s` within a small edit distance, or NULL. */
const char *conf_suggest(const char *s, const char *const *names, size_t count);

/* Free a KT_STRINGS list and zero it. */
void conf_strings_free(size_t *count, char ***list);
/* Copy key k's value (its field at k->off, and k->off2 for lists) into
 * dst from src, where the same fields sit in a block laid out alike:
 * k's offsets are relative to dst's struct; dst_base is where that
 * layout starts in it and src_base where it starts in src. Strings are
 * duplicated; dst's old value is freed. */
void conf_value_copy(const struct conf_key *k, void *dst, size_t dst_base,
                     const void *src, size_t src_base);

/* The policy parameter keys, shared by the listener table (the defaults)
 * and the mail_flow_policy table (conf_hat.c). */
extern const struct conf_table conf_table_policy;
extern const struct conf_table conf_table_sender_group;
extern const struct conf_table conf_table_hat;
extern const struct conf_table conf_table_auth_profile;
/* smtp_auth_profile blocks (conf_hat.c), loaded before the listeners. */
void conf_auth_profiles_build(struct vctx *v);
void conf_auth_profiles_clear(struct moat_conf *c);

/* The hat blocks: each listener's sender groups and policies (conf_hat.c),
 * after the listeners exist. */
void conf_hats_build(struct vctx *v);
void conf_hat_clear(struct conf_listener *l);
void conf_params_clear(struct conf_policy_params *p);

/* The listener and rat blocks of the top level (conf_listener.c). */
void conf_sections_build(struct vctx *v);
void conf_listener_clear(struct conf_listener *l);

/* The delivery, resolver, smtp_route, destination and bounce_profile
 * blocks (conf_delivery.c). */
void conf_delivery_build(struct vctx *v);
void conf_delivery_clear(struct moat_conf *c);

#endif
