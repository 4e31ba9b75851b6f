/*
 * fuzz_filter.c - libFuzzer target for the message filter parser.
 *
 * Arbitrary bytes (NULs included: the parser takes a length) go to
 * filter_parse(); a success must leave a set, a failure an error text
 * naming line and column, and either must free cleanly. A set that
 * parses is then run over a small multipart message (filter_run), so
 * the evaluator sees every shape the parser lets through. Seeds:
 * fuzz/corpus/filter/.
 */
#include "policy/filter.h"
#include "policy/filter_eval.h"

static const char fuzz_msg[] =
    "From: A <a@example.com>\r\nSubject: hello\r\n"
    "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
    "text line\r\n--b\r\nContent-Disposition: attachment; "
    "filename=x.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "aGVsbG8=\r\n--b--\r\n";
static const char *fuzz_rcpts[] = {"u@example.net", "v@example.net"};

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
    if (ok) {
        struct filter_env env = {.mail_from = "a@example.com",
                                 .nrcpt = 2,
                                 .rcpts = fuzz_rcpts,
                                 .sendergroup = "RELAYLIST",
                                 .listener = "In",
                                 .interface = "Data1",
                                 .auth_id = "a",
                                 .now = 1800000000};
        struct filter_result res;
        filter_run(&set, fuzz_msg, sizeof(fuzz_msg) - 1, &env, &res);
        filter_result_free(&res);
    }
    filter_set_free(&set);
    return 0;
}
