/*
 * conf_params.h - private to src/conf: the mail flow policy parameter
 * keys, written once and expanded into two tables: the listener's (its
 * "default policy parameters", with moat's defaults) and the
 * mail_flow_policy block's (no defaults: a key left out takes the
 * listener's value). OFF(f) gives the offset of parameter f in the
 * table's target; DEF(x) is x for the listener and NULL for a policy.
 */
#ifndef MOAT_CONF_PARAMS_H
#define MOAT_CONF_PARAMS_H

#define CONF_REPLY_TEXT_MAX 200

/* The seed's recommended listener cipher string (the appliance's). */
#define CONF_DEFAULT_CIPHERS                                                   \
    "HIGH:MEDIUM:@STRENGTH:!aNULL:!eNULL:!LOW:!DES:!MD5:!EXP:!PSK:!DSS:"     \
    "!RC2:!RC4:!SEED:!ECDSA:!ADH:!IDEA:!3DES:!SSLv2:!SSL"

extern const char *const conf_policy_tls_names[];
extern const char *const conf_policy_auth_names[];

#define CONF_CODE_KEY(NAME, FIELD, LO, HI, D, HELP)                            \
    {.name = NAME, .type = KT_UINT, .def = D, .min = LO, .max = HI,            \
     .off = FIELD, .help = HELP}
#define CONF_TEXT_KEY(NAME, FIELD, HELP)                                       \
    {.name = NAME, .type = KT_STRING, .min = 1, .max = CONF_REPLY_TEXT_MAX,    \
     .off = FIELD, .check = conf_check_reply_text, .help = HELP}

#define CONF_POLICY_PARAM_KEYS(OFF, DEF)                                       \
    {.name = "max_message_size",                                               \
     .type = KT_SIZE,                                                          \
     .def = DEF("10485760"),                                                   \
     .min = 1024,                                                              \
     .max = 1073741824,                                                        \
     .off = OFF(max_message_size),                                             \
     .help = "largest message accepted, in bytes"},                            \
    {.name = "max_recipients",                                                 \
     .type = KT_UINT,                                                          \
     .def = DEF("1000"),                                                       \
     .min = 1,                                                                 \
     .max = 100000,                                                            \
     .off = OFF(max_recipients),                                               \
     .help = "recipients accepted per message"},                               \
    {.name = "max_messages_per_connection",                                    \
     .type = KT_UINT,                                                          \
     .def = DEF("1000"),                                                       \
     .min = 1,                                                                 \
     .max = 1000000,                                                           \
     .off = OFF(max_messages_per_connection),                                  \
     .help = "messages accepted per session"},                                 \
    {.name = "max_connections_per_ip",                                         \
     .type = KT_UINT,                                                          \
     .def = DEF("10"),                                                         \
     .min = 1,                                                                 \
     .max = 100000,                                                            \
     .off = OFF(max_connections_per_ip),                                       \
     .help = "concurrent sessions from one client address"},                   \
    {.name = "max_recipients_per_hour",                                        \
     .type = KT_UINT,                                                          \
     .def = DEF("0"),                                                          \
     .min = 0,                                                                 \
     .max = 100000000,                                                         \
     .off = OFF(max_recipients_per_hour),                                      \
     .help = "recipients accepted from one address per rate_limit_period "    \
             "(0: no limit)"},                                                 \
    CONF_CODE_KEY("rate_limit_code", OFF(rate_limit_code), 400, 599,          \
                  DEF("452"), "reply code over the rate limit"),               \
    CONF_TEXT_KEY("rate_limit_text", OFF(rate_limit_text),                    \
                  "reply text over the rate limit"),                           \
    CONF_CODE_KEY("banner_code", OFF(banner_code), 220, 220, DEF("220"),      \
                  "greeting code"),                                            \
    CONF_TEXT_KEY("banner_text", OFF(banner_text),                            \
                  "greeting text (default: \"<hostname> ESMTP\")"),            \
    {.name = "banner_hostname",                                                \
     .type = KT_STRING,                                                        \
     .min = 1,                                                                 \
     .max = 255,                                                               \
     .off = OFF(banner_hostname),                                              \
     .check = conf_check_hostname,                                             \
     .help = "host name in the banner, EHLO reply and Received:"},             \
    CONF_CODE_KEY("reject_code", OFF(reject_code), 400, 599, DEF("554"),      \
                  "reply code of the reject banner"),                          \
    CONF_TEXT_KEY("reject_text", OFF(reject_text),                            \
                  "reject banner text (default: \"<hostname> Access "         \
                  "denied\")"),                                                \
    {.name = "sender_dns_verification",                                        \
     .type = KT_BOOL,                                                          \
     .def = DEF("false"),                                                      \
     .off = OFF(sender_dns_verification),                                      \
     .help = "refuse envelope senders whose domain is not in the DNS"},        \
    CONF_CODE_KEY("sender_dns_malformed_code", OFF(sdv_malformed_code), 400,  \
                  599, DEF("553"), "reply code for a sender without a domain"), \
    CONF_TEXT_KEY("sender_dns_malformed_text", OFF(sdv_malformed_text),       \
                  "reply text for a sender without a domain"),                 \
    CONF_CODE_KEY("sender_dns_nxdomain_code", OFF(sdv_nxdomain_code), 400,    \
                  599, DEF("553"),                                             \
                  "reply code for a sender domain that does not exist"),       \
    CONF_TEXT_KEY("sender_dns_nxdomain_text", OFF(sdv_nxdomain_text),         \
                  "reply text for a sender domain that does not exist"),       \
    CONF_CODE_KEY("sender_dns_tempfail_code", OFF(sdv_tempfail_code), 400,    \
                  599, DEF("451"),                                             \
                  "reply code when the sender domain lookup fails"),           \
    CONF_TEXT_KEY("sender_dns_tempfail_text", OFF(sdv_tempfail_text),         \
                  "reply text when the sender domain lookup fails"),           \
    {.name = "tls",                                                            \
     .type = KT_ENUM,                                                          \
     .def = DEF("off"),                                                        \
     .off = OFF(tls),                                                          \
     .aux = conf_policy_tls_names,                                             \
     .help = "STARTTLS: off, preferred or required"},                          \
    {.name = "smtp_auth",                                                      \
     .type = KT_ENUM,                                                          \
     .def = DEF("off"),                                                        \
     .off = OFF(smtp_auth),                                                    \
     .aux = conf_policy_auth_names,                                            \
     .help = "SMTP AUTH: off, preferred or required"},                         \
    {.name = "auth_requires_tls",                                              \
     .type = KT_BOOL,                                                          \
     .def = DEF("false"),                                                      \
     .off = OFF(auth_requires_tls),                                            \
     .help = "offer AUTH only inside TLS"},                                    \
    {.name = "tls_verify_client",                                              \
     .type = KT_BOOL,                                                          \
     .def = DEF("false"),                                                      \
     .off = OFF(tls_verify_client),                                            \
     .help = "ask TLS clients for a certificate signed by tls_client_ca"},     \
    {.name = "tls_mandatory_senders",                                          \
     .type = KT_STRINGS,                                                       \
     .max = 1000,                                                              \
     .off = OFF(ntls_mandatory),                                               \
     .off2 = OFF(tls_mandatory),                                               \
     .check = rat_pattern_check,                                               \
     .help = "with tls = preferred: envelope senders (domain, .domain, "      \
             "user@, user@domain) refused without TLS"}

#endif
