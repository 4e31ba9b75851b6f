/*
 * fuzz_mime.c - libFuzzer target for the message structure parser:
 * arbitrary bytes are parsed and every part decoded; every part must lie
 * inside the message. Seeds: fuzz/corpus/mime/.
 */
#include "policy/mime.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mime_msg m;
    const char *msg = (const char *)data;
    mime_parse(msg, size, &m);
    if (m.header_len > size || m.nparts == 0 || m.nparts > MIME_MAX_PARTS)
        abort();
    for (size_t i = 0; i < m.nheaders; i++)
        if (m.headers[i].off + m.headers[i].len > size)
            abort();
    struct buf b = {0};
    for (size_t i = 0; i < m.nparts; i++) {
        if (m.parts[i].body_off + m.parts[i].body_len > size)
            abort();
        buf_reset(&b);
        mime_decode(&m.parts[i], msg, &b);
    }
    buf_free(&b);
    mime_free(&m);
    return 0;
}
