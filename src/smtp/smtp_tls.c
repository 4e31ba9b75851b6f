/*
 * smtp_tls.c - listener TLS contexts and the demo certificate (see
 * smtp_tls.h).
 *
 * The demo certificate: when a listener's policies ask for TLS and no
 * certificate is configured, moat makes a key pair (RSA 2048, once per
 * process) and a self-signed certificate for the listener's host name
 * (per listener and configuration), in memory only, and says so loudly (the
 * caller logs a warning and `moatctl status` shows it). Clients that verify
 * will refuse it; it is for trying moat out, not for production.
 */
#include "smtp/smtp_tls.h"
#include "delivery/tls_client.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

static EVP_PKEY *demo_key; /* made once per process */

const char *smtp_tls_error(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        str_copy(buf, len, "unknown error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

bool smtp_tls_wanted(const struct conf_listener *lc)
{
    if (lc->tls_certificate)
        return true;
    for (size_t i = 0; i < lc->npolicies; i++)
        if (lc->policies[i].p.tls != POLICY_TLS_OFF)
            return true;
    return false;
}

/* A demo certificate for hostname, signed by the process's demo key
 * (made on first use). The caller frees it. */
static X509 *demo_make(const char *hostname, char *err, size_t errlen)
{
    if (demo_key == NULL) {
        /* RSA: the default cipher string excludes ECDSA for TLS 1.2. */
        demo_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    }
    X509 *x = X509_new();
    bool ok = demo_key && x;
    X509_NAME *name = NULL;
    if (ok) {
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
        X509_set_pubkey(x, demo_key);
        name = X509_get_subject_name(x);
        ok = X509_NAME_add_entry_by_txt(
                 name, "O", MBSTRING_ASC,
                 (const unsigned char *)"moat demo certificate", -1, -1,
                 0) == 1 &&
             X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                        (const unsigned char *)hostname, -1, -1,
                                        0) == 1 &&
             X509_set_issuer_name(x, name) == 1;
    }
    if (ok) {
        char san[300];
        str_printf(san, sizeof(san), "DNS:%s", hostname);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        X509_EXTENSION *ext =
            X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        ok = ext && X509_add_ext(x, ext, -1) == 1;
        X509_EXTENSION_free(ext);
    }
    if (ok)
        ok = X509_sign(x, demo_key, EVP_sha256()) > 0;
    if (!ok) {
        char e[256];
        str_printf(err, errlen, "cannot make the demo certificate: %s",
                   smtp_tls_error(e, sizeof(e)));
        X509_free(x);
        return NULL;
    }
    return x;
}

SSL_CTX *smtp_tls_ctx_new(const struct conf_listener *lc, bool *demo, char *err,
                          size_t errlen)
{
    char e[256];
    *demo = false;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        str_printf(err, errlen, "listener \"%s\": TLS: %s", lc->name,
                   smtp_tls_error(e, sizeof(e)));
        return NULL;
    }
    /* Idle sessions keep no buffers; no renegotiation; the server's
     * cipher order. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* No cache, so no TLS 1.3 tickets: a client that hangs up right after
     * its handshake is not a failure of ours. */
    SSL_CTX_set_num_tickets(ctx, 0);
    const char *what =
        tls_ctx_protocols(ctx, lc->tls_min_protocol, lc->tls_ciphers);
    if (what == NULL && lc->tls_certificate) {
        if (SSL_CTX_use_certificate_chain_file(ctx, lc->tls_certificate) != 1)
            what = "tls_certificate";
        else if (SSL_CTX_use_PrivateKey_file(
                     ctx, lc->tls_key ? lc->tls_key : lc->tls_certificate,
                     SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_check_private_key(ctx) != 1)
            what = "tls_key";
    } else if (what == NULL) {
        X509 *x = demo_make(lc->hostname, err, errlen);
        if (x == NULL) {
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_certificate(ctx, x) != 1 ||
            SSL_CTX_use_PrivateKey(ctx, demo_key) != 1)
            what = "demo certificate";
        else
            *demo = true;
        X509_free(x); /* the context holds its own reference */
    }
    if (what == NULL && lc->tls_client_ca &&
        SSL_CTX_load_verify_locations(ctx, lc->tls_client_ca, NULL) != 1)
        what = "tls_client_ca";
    if (what) {
        str_printf(err, errlen, "listener \"%s\": %s: %s", lc->name, what,
                   smtp_tls_error(e, sizeof(e)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
