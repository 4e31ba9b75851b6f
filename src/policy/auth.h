/*
 * auth.h - the pieces of SMTP AUTH that need no session: base64, the
 * PLAIN (RFC 4616) and LOGIN responses, the password file, and password
 * verification with crypt(3) from libxcrypt.
 *
 * Everything is bounded: a user name, password or authorization identity
 * is at most AUTH_FIELD_MAX bytes, a password file at most AUTH_FILE_MAX
 * bytes of lines of at most AUTH_LINE_MAX bytes holding at most
 * AUTH_USERS_MAX users. The decoders never look past the bound of their
 * input. auth_check_password is slow on purpose (tens of milliseconds
 * with yescrypt) and thread-safe: run it on a worker thread.
 */
#ifndef MOAT_POLICY_AUTH_H
#define MOAT_POLICY_AUTH_H

#include "core/util.h"

#include <sys/types.h>

/* The reason auth_plain_decode gives for an authzid other than the user
 * (a well-formed request the server refuses, not a syntax error). */
#define AUTH_WHY_AUTHZID "authorization identity not allowed"
#define AUTH_FIELD_MAX 256 /* longest user name / password / authzid */
#define AUTH_FILE_MAX (16u * 1024 * 1024) /* password file size */
#define AUTH_LINE_MAX 4096                /* password file line */
#define AUTH_USERS_MAX 100000             /* users in a password file */

/* Base64 (RFC 4648, standard alphabet, no line breaks). Decoding is
 * strict: the length must be a multiple of 4 with padding, no
 * whitespace, no character outside the alphabet, zero padding bits.
 * Returns the decoded length (not NUL-terminated), or -1 if the input is
 * bad or decodes to more than outlen bytes. */
ssize_t auth_b64_decode(const char *in, size_t inlen, unsigned char *out,
                        size_t outlen);
/* Returns the length written (out is NUL-terminated), or -1 if out is
 * too small (it needs 4 * ceil(inlen / 3) + 1 bytes). */
ssize_t auth_b64_encode(const unsigned char *in, size_t inlen, char *out,
                        size_t outlen);

/* An RFC 4616 PLAIN response, base64 of "authzid NUL authcid NUL passwd".
 * On success user and pass hold the NUL-terminated authcid and password.
 * On failure both are emptied and *why is a static reason, except that
 * an authzid other than the authcid (refused, AUTH_WHY_AUTHZID) leaves
 * the authcid in user for the log. The authzid may be empty or equal to
 * the authcid. The
 * caller handles "*" (cancel) and "=" (empty initial response) itself. */
bool auth_plain_decode(const char *b64, char *user, size_t userlen,
                       char *pass, size_t passlen, const char **why);
/* A LOGIN response: one base64 field (user name or password), 1 to
 * AUTH_FIELD_MAX bytes without NUL. Same failure convention. */
bool auth_login_decode(const char *b64, char *out, size_t outlen,
                       const char **why);

/* The password file: "user:hash" lines, '#' comments and blank lines;
 * surrounding blanks and a trailing CR are ignored. A user is printable
 * non-space ASCII without ':'; a hash is yescrypt ($y$), bcrypt
 * ($2b$, $2y$, $2a$), sha512-crypt ($6$) or sha256-crypt ($5$), checked
 * for form; DES, MD5, empty and locked ('*', '!') hashes are refused with
 * the reason, as are duplicate users. Errors go into err as
 * "PATH:LINE: reason" or "PATH: reason".
 *
 * A successful load also sets the process-wide dummy hash that
 * auth_check_password(NULL, ...) uses to the most common scheme and cost
 * of this file, so unknown users cost as much as known ones. */
struct auth_db;

struct auth_db *auth_db_load(const char *path, char *err, size_t errlen);
void auth_db_free(struct auth_db *db);
size_t auth_db_count(const struct auth_db *db);
/* The hash for user (exact, case-sensitive), or NULL; valid while db is.
 * O(log n). */
const char *auth_db_hash(const struct auth_db *db, const char *user);

/* Does password match the crypt(3) hash? Compared in constant time. A
 * NULL hash (unknown user) still costs one hashing, against the dummy
 * hash, and returns false; so does a password over AUTH_FIELD_MAX bytes.
 * Thread-safe. */
bool auth_check_password(const char *hash, const char *password);

#endif
