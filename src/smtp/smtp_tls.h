/*
 * smtp_tls.h - TLS for the listeners (private to src/smtp): one SSL_CTX
 * per listener and configuration, made when the configuration is applied
 * (never per connection), and the self-signed demo certificate used when
 * TLS is asked for but no certificate is configured.
 */
#ifndef MOAT_SMTP_TLS_H
#define MOAT_SMTP_TLS_H

#include "conf/conf.h"

#include <openssl/ssl.h>

/* Does any policy of the listener use TLS (or is a certificate set)? */
bool smtp_tls_wanted(const struct conf_listener *lc);

/* The listener's server context: its certificate and key (or the demo
 * certificate, *demo set), cipher string, lowest protocol, client CA.
 * NULL with a reason. */
SSL_CTX *smtp_tls_ctx_new(const struct conf_listener *lc, bool *demo,
                          char *err, size_t errlen);

/* "TLSv1.3", the cipher name, and the last OpenSSL error as text. */
const char *smtp_tls_error(char *buf, size_t len);

#endif
