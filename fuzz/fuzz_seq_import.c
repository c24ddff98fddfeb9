/* libFuzzer harness: the sequence export format's parser (skvi_seq_format_parse, which
 * skv_seq_import runs on a buffer before it allocates or touches a device). Each input
 * is parsed as it is, then resealed (its size and checksum rewritten, so that mutations
 * reach the field checks behind the checksum) and parsed again. A buffer it accepts must
 * describe sections in order, inside the buffer, ending at the checksum, with a geometry
 * skv_cache_create would accept. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "seq_format.h"
#include "skv_internal.h"
#include "fuzz_check.h"

static void parse(const uint8_t *buf, size_t size)
{
    skvi_seq_format f;
    char err[512];
    skv_status st = skvi_seq_format_parse(buf, size, &f, err);
    CHECK(st == SKV_OK || st == SKV_ERR_INVALID_ARG || st == SKV_ERR_UNSUPPORTED);
    if (st != SKV_OK)
        return;
    CHECK(f.total == size && f.off_end == size - SKVI_SEQ_TRAILER_BYTES);
    CHECK(f.layers >= 1 && f.layers <= 4096 && f.kv_heads >= 1 && f.kv_heads <= 1024);
    CHECK(f.q_heads % f.kv_heads == 0 && f.page_tokens >= 16 && f.page_tokens <= 256);
    CHECK(SKVI_SEQ_HEADER_BYTES <= f.off_layers && f.off_layers <= f.off_lists && f.off_lists <= f.off_pages &&
          f.off_pages <= f.off_end);
    const size_t sections[4] = {f.off_stats, f.off_snap, f.off_obs, f.off_kept};
    for (int i = 0; i < 4; i++)
        CHECK(sections[i] == 0 || (f.off_pages <= sections[i] && sections[i] <= f.off_end));
    CHECK(f.host_pages <= f.pages);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly `size` bytes at an odd address (the parser reads bytes) */
    uint8_t *copy = malloc(size + 1);
    CHECK(copy);
    memcpy(copy + 1, data, size);
    parse(copy + 1, size);
    if (size >= SKVI_SEQ_HEADER_BYTES + SKVI_SEQ_TRAILER_BYTES) {
        skvi_put64(copy + 1 + SKVI_SEQ_OFF_TOTAL, size);
        skvi_put64(copy + 1 + size - SKVI_SEQ_TRAILER_BYTES, skvi_hash64(copy + 1, size - SKVI_SEQ_TRAILER_BYTES));
        parse(copy + 1, size);
    }
    free(copy);
    return 0;
}
