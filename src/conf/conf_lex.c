/*
 * conf_lex.c - the tokenizer for moat.conf.
 *
 * Turns bytes into tokens: punctuation, bare words and quoted strings
 * (escapes decoded to UTF-8). Skips whitespace and the three comment
 * forms (#, //, nesting slash-star). Tracks line and column (1-based,
 * columns count bytes). Every string and word is bounded by
 * CONF_MAX_STRING; a lexical error is reported once through the
 * diagnostics list and returned as TOK_ERROR. NUL bytes are rejected by
 * the parser before lexing starts.
 */
#include "conf/conf_node.h"

#include <stdlib.h>

void lex_init(struct lexer *lx, const char *file, const char *text, size_t len,
              struct conf_diag *d)
{
    lx->text = text;
    lx->len = len;
    lx->file = file;
    lx->at.off = 0;
    lx->at.line = 1;
    lx->at.col = 1;
    buf_init(&lx->val);
    lx->diag = d;
}

void lex_free(struct lexer *lx)
{
    buf_free(&lx->val);
}

/* Byte k places ahead, or -1 past the end. */
static int peek(const struct lexer *lx, size_t k)
{
    if (lx->at.off + k >= lx->len)
        return -1;
    return (unsigned char)lx->text[lx->at.off + k];
}

/* Step over one byte, keeping line and column. */
static void advance(struct lexer *lx)
{
    if (lx->text[lx->at.off] == '\n') {
        lx->at.line++;
        lx->at.col = 1;
    } else {
        lx->at.col++;
    }
    lx->at.off++;
}

static void here(const struct lexer *lx, struct conf_pos *pos)
{
    pos->file = lx->file;
    pos->line = lx->at.line;
    pos->col = lx->at.col;
}

static enum conf_tok lex_error(struct lexer *lx, const struct conf_pos *pos,
                               const char *msg)
{
    conf_diag_error(lx->diag, pos, "%s", msg);
    return TOK_ERROR;
}

static bool is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

/* Skip to the end of the line (for # and // comments). */
static void skip_line(struct lexer *lx)
{
    while (peek(lx, 0) != -1 && peek(lx, 0) != '\n')
        advance(lx);
}

/* Skip a slash-star comment, nesting allowed; false if unterminated. */
static bool skip_block_comment(struct lexer *lx)
{
    struct conf_pos start;
    unsigned depth = 0;
    here(lx, &start);
    do {
        int c = peek(lx, 0);
        if (c == -1) {
            lex_error(lx, &start, "unterminated comment (started here)");
            return false;
        }
        if (c == '/' && peek(lx, 1) == '*') {
            depth++;
            advance(lx);
        } else if (c == '*' && peek(lx, 1) == '/') {
            depth--;
            advance(lx);
        }
        advance(lx);
    } while (depth > 0);
    return true;
}

/* Skip whitespace and comments; false on an unterminated comment. */
static bool skip_blank(struct lexer *lx)
{
    for (;;) {
        int c = peek(lx, 0);
        if (is_space(c)) {
            advance(lx);
        } else if (c == '#' || (c == '/' && peek(lx, 1) == '/')) {
            skip_line(lx);
        } else if (c == '/' && peek(lx, 1) == '*') {
            if (!skip_block_comment(lx))
                return false;
        } else {
            return true;
        }
    }
}

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Read the XXXX of a \uXXXX (lexer just past the 'u'); -1 if not hex. */
static long read_hex4(struct lexer *lx)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_digit(peek(lx, 0));
        if (h < 0)
            return -1;
        v = v * 16 + h;
        advance(lx);
    }
    return v;
}

static void put_utf8(struct buf *b, unsigned long cp)
{
    char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        out[0] = (char)(0xf0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_append(b, out, n);
}

/* Decode \uXXXX (lexer at the 'u'), joining surrogate pairs. Returns
 * NULL or the reason it is refused. */
static const char *lex_unicode(struct lexer *lx)
{
    advance(lx);
    long cp = read_hex4(lx);
    if (cp < 0)
        return "\\u needs four hex digits";
    if (cp == 0)
        return "\\u0000 would put a NUL byte in the string";
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return "\\u escape is a lone low surrogate";
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (peek(lx, 0) != '\\' || peek(lx, 1) != 'u')
            return "\\u escape is a lone high surrogate";
        advance(lx);
        advance(lx);
        long lo = read_hex4(lx);
        if (lo < 0xdc00 || lo > 0xdfff)
            return "\\u escape is a lone high surrogate";
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    put_utf8(&lx->val, (unsigned long)cp);
    return NULL;
}

/* One escape of a double-quoted string (lexer at the backslash). */
static const char *lex_escape(struct lexer *lx)
{
    static const char from[] = "ntr\\\"";
    static const char to[] = "\n\t\r\\\"";
    advance(lx);
    int c = peek(lx, 0);
    if (c == 'u')
        return lex_unicode(lx);
    const char *p = c > 0 ? strchr(from, c) : NULL;
    if (p == NULL)
        return "unknown escape (use \\n \\t \\r \\\\ \\\" or \\uXXXX)";
    buf_putc(&lx->val, to[p - from]);
    advance(lx);
    return NULL;
}

/* A quoted string (lexer at the opening quote `q`). */
static enum conf_tok lex_string(struct lexer *lx, const struct conf_pos *start)
{
    char q = lx->text[lx->at.off];
    advance(lx);
    for (;;) {
        int c = peek(lx, 0);
        struct conf_pos pos;
        here(lx, &pos);
        if (c == -1 || c == '\n' || c == '\r')
            return lex_error(lx, start, "unterminated string (started here)");
        if (c == q) {
            advance(lx);
            return TOK_STRING;
        }
        if (lx->val.len >= CONF_MAX_STRING)
            return lex_error(lx, start, "string longer than 65536 bytes");
        if (c < 0x20 && c != '\t')
            return lex_error(lx, &pos, "control character in a string");
        if (c == '\\' && q == '"') {
            const char *why = lex_escape(lx);
            if (why)
                return lex_error(lx, &pos, why);
            continue;
        }
        if (c == '\\' && (peek(lx, 1) == '\'' || peek(lx, 1) == '\\'))
            advance(lx);
        buf_putc(&lx->val, lx->text[lx->at.off]);
        advance(lx);
    }
}

/* Can byte c continue a bare word here? */
static bool word_char(const struct lexer *lx, int c, enum lex_ctx ctx,
                      bool first)
{
    if (c < 0x21 || c > 0x7e || strchr("{}[]=,;\"'#\\", c))
        return false;
    if (c == ':')
        return ctx == LEX_VALUE && !first;
    if (c == '/' && (peek(lx, 1) == '/' || peek(lx, 1) == '*'))
        return false;
    return true;
}

static enum conf_tok lex_word(struct lexer *lx, enum lex_ctx ctx,
                              const struct conf_pos *start)
{
    while (word_char(lx, peek(lx, 0), ctx, lx->val.len == 0)) {
        if (lx->val.len >= CONF_MAX_STRING)
            return lex_error(lx, start, "word longer than 65536 bytes");
        buf_putc(&lx->val, lx->text[lx->at.off]);
        advance(lx);
    }
    return TOK_WORD;
}

static const struct {
    char c;
    enum conf_tok tok;
} punct[] = {
    {'{', TOK_LBRACE},   {'}', TOK_RBRACE}, {'[', TOK_LBRACKET},
    {']', TOK_RBRACKET}, {'=', TOK_EQUALS}, {':', TOK_COLON},
    {';', TOK_SEMI},     {',', TOK_COMMA},
};

/* Report a byte that starts no token. */
static enum conf_tok lex_stray(struct lexer *lx, const struct conf_pos *pos,
                               int c)
{
    if (c >= 0x80)
        conf_diag_error(lx->diag, pos,
                        "unexpected byte 0x%02x (non-ASCII text must be "
                        "quoted)",
                        (unsigned)c);
    else if (c < 0x21 || c == 0x7f)
        conf_diag_error(lx->diag, pos, "unexpected control character 0x%02x",
                        (unsigned)c);
    else
        conf_diag_error(lx->diag, pos, "unexpected character '%c'", c);
    return TOK_ERROR;
}

enum conf_tok lex_next(struct lexer *lx, enum lex_ctx ctx,
                       struct conf_pos *start)
{
    buf_reset(&lx->val);
    if (!skip_blank(lx)) {
        here(lx, start);
        return TOK_ERROR;
    }
    here(lx, start);
    int c = peek(lx, 0);
    if (c == -1)
        return TOK_EOF;
    if (c == '"' || c == '\'')
        return lex_string(lx, start);
    for (size_t i = 0; i < ARRAY_LEN(punct); i++) {
        if (punct[i].c == c) {
            advance(lx);
            return punct[i].tok;
        }
    }
    if (word_char(lx, c, ctx, true))
        return lex_word(lx, ctx, start);
    return lex_stray(lx, start, c);
}

const char *lex_tok_name(enum conf_tok t)
{
    static const char *const names[] = {
        [TOK_EOF] = "end of file", [TOK_WORD] = "a word",
        [TOK_STRING] = "a string", [TOK_LBRACE] = "'{'",
        [TOK_RBRACE] = "'}'",      [TOK_LBRACKET] = "'['",
        [TOK_RBRACKET] = "']'",    [TOK_EQUALS] = "'='",
        [TOK_COLON] = "':'",       [TOK_SEMI] = "';'",
        [TOK_COMMA] = "','",       [TOK_ERROR] = "an error",
    };
    return names[t];
}
