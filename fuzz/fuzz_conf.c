/*
 * fuzz_conf.c - libFuzzer target for the configuration loader.
 *
 * Feeds arbitrary bytes to conf_load_string() (lexer, parser, includes,
 * validator) and frees whatever comes back. The input is cut at its
 * first NUL, as a C string would be. A relative .include resolves
 * against the current directory (libFuzzer keeps its corpus paths
 * relative to it, so the target must not chdir); whatever file it finds
 * is only parsed. Seeds: fuzz/corpus/conf/.
 */
#include "conf/conf.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = xmalloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    struct conf_errors errs = {0};
    struct moat_conf *c = conf_load_string("fuzz.conf", text, &errs);
    if (c != NULL && errs.count != 0)
        abort(); /* a configuration is either valid or refused */
    if (c == NULL && errs.count == 0)
        abort(); /* a refusal always says why */
    conf_unref(c);
    conf_errors_free(&errs);
    free(text);
    return 0;
}
