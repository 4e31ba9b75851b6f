/*
 * tls_client.h - the OpenSSL client context for outbound STARTTLS: made
 * once per configuration (when it is loaded or committed, never per
 * connection) from the delivery block's tls_* keys. Trusted CAs are the
 * system store plus delivery.tls_ca_file.
 */
#ifndef MOAT_DELIVERY_TLS_CLIENT_H
#define MOAT_DELIVERY_TLS_CLIENT_H

#include "conf/conf.h"

#include <openssl/ssl.h>

/* The client context, or NULL with "delivery: KEY: reason". */
SSL_CTX *tls_client_ctx_new(const struct conf_delivery *dl, char *err,
                            size_t errlen);

/* A context's lowest protocol (a tls_min_protocol value, 0 = TLSv1; below
 * TLS 1.2 the security level is lowered, as Debian's level 2 bars them)
 * and cipher string. NULL, or the key that OpenSSL refused. */
const char *tls_ctx_protocols(SSL_CTX *ctx, int min_idx, const char *ciphers);

#endif
