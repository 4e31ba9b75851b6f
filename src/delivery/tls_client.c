/*
 * tls_client.c - the outbound TLS client context (see tls_client.h).
 */
#include "delivery/tls_client.h"

#include <openssl/err.h>

const char *tls_ctx_protocols(SSL_CTX *ctx, int min_idx, const char *ciphers)
{
    static const int versions[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION,
                                   TLS1_3_VERSION};
    int v = min_idx >= 0 && min_idx < (int)ARRAY_LEN(versions)
                ? versions[min_idx]
                : TLS1_2_VERSION;
    if (v < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0);
    if (!SSL_CTX_set_min_proto_version(ctx, v))
        return "tls_min_protocol";
    if (!SSL_CTX_set_cipher_list(ctx, ciphers))
        return "tls_ciphers";
    return NULL;
}

SSL_CTX *tls_client_ctx_new(const struct conf_delivery *dl, char *err,
                            size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const char *what = NULL;
    if (ctx == NULL) {
        what = "TLS";
    } else {
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_options(ctx,
                            SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
        what = tls_ctx_protocols(ctx, dl->tls_min_protocol, dl->tls_ciphers);
        if (what == NULL && SSL_CTX_set_default_verify_paths(ctx) != 1)
            what = "the system CA store";
        if (what == NULL && dl->tls_ca_file &&
            SSL_CTX_load_verify_locations(ctx, dl->tls_ca_file, NULL) != 1)
            what = "tls_ca_file";
        if (what == NULL && SSL_CTX_dane_enable(ctx) <= 0)
            what = "DANE";
    }
    if (what == NULL)
        return ctx;
    char e[256] = "";
    unsigned long code = ERR_peek_last_error();
    if (code)
        ERR_error_string_n(code, e, sizeof(e));
    ERR_clear_error();
    if (strcmp(what, "tls_ca_file") == 0)
        str_printf(err, errlen, "delivery: tls_ca_file \"%s\": %s",
                   dl->tls_ca_file, e[0] ? e : "cannot be read");
    else
        str_printf(err, errlen, "delivery: %s: %s", what,
                   e[0] ? e : "refused by OpenSSL");
    SSL_CTX_free(ctx);
    return NULL;
}
