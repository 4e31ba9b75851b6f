/*
 * fuzz_filter.c - libFuzzer target for the message filter parser.
 *
 * Arbitrary bytes (NULs included: the parser takes a length) go to
 * filter_parse(); a success must leave a set, a failure an error text
 * naming line and column, and either must free cleanly. Seeds:
 * fuzz/corpus/filter/.
 */
#include "policy/filter.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct filter_set set;
    char err[512] = "";
    bool ok = filter_parse("fuzz.flt", (const char *)data, size, &set, err,
                           sizeof(err));
    if (!ok && strncmp(err, "fuzz.flt:", 9) != 0)
        abort(); /* a refusal always says where */
    if (!ok && set.count != 0)
        abort();
    filter_set_free(&set);
    return 0;
}
