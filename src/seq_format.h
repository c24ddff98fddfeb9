/* The byte format of an exported sequence (skv_seq_export, docs/export.md): constants,
 * and the pure parser that checks a buffer before anything is allocated for it. No
 * OpenCL: a fuzz harness calls skvi_seq_format_parse on arbitrary bytes. */
#ifndef SKV_SEQ_FORMAT_H
#define SKV_SEQ_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "skv/skv.h"

#define SKVI_SEQ_MAGIC "SKVSEQ\r\n" /* 8 bytes; the \r\n catches text-mode copies */
#define SKVI_SEQ_VERSION 1u
#define SKVI_SEQ_HEADER_BYTES 160u
#define SKVI_SEQ_TRAILER_BYTES 8u /* XXH3-64 of every byte before it */

/* Sections present after the pages (header.flags). */
#define SKVI_SEQ_KEY_STATS 1u /* keydiff, manifold, manifold_windowed */
#define SKVI_SEQ_SNAP 2u      /* snapkv's observation windows */
#define SKVI_SEQ_OBSERVED 4u  /* observed attention */
#define SKVI_SEQ_KEPT 8u      /* RDR's kept scores */
#define SKVI_SEQ_FLAGS_ALL 15u

/* Byte offsets in the fixed header (little-endian fields). */
enum {
    SKVI_SEQ_OFF_MAGIC = 0,
    SKVI_SEQ_OFF_VERSION = 8,   /* u32 */
    SKVI_SEQ_OFF_HEADER = 12,   /* u32: SKVI_SEQ_HEADER_BYTES */
    SKVI_SEQ_OFF_TOTAL = 16,    /* u64: the whole buffer, trailer included */
    SKVI_SEQ_OFF_LAYERS = 24,   /* u32 x 5: layers, q_heads, kv_heads, head_dim, page_tokens */
    SKVI_SEQ_OFF_TIERS = 44,    /* u32: tiers holding pages (bit mask) */
    SKVI_SEQ_OFF_DTYPE = 48,    /* u32: storage dtype of F16 pages (SKV_F16) */
    SKVI_SEQ_OFF_SCORER = 52,   /* u32 */
    SKVI_SEQ_OFF_WINDOW = 56,   /* u32: score_window */
    SKVI_SEQ_OFF_FLAGS = 60,    /* u32 */
    SKVI_SEQ_OFF_SEED = 64,     /* u64: rotation_seed */
    SKVI_SEQ_OFF_CODEBOOK = 72, /* u64 x 4: per tier, its codebook's identity (0: F16 or unused) */
    SKVI_SEQ_OFF_PAGE_BYTES = 104, /* u64 x 4 */
    SKVI_SEQ_OFF_RDR_RUNS = 136,   /* u64 */
    SKVI_SEQ_OFF_PAGES = 144,      /* u64: pages in all */
    SKVI_SEQ_OFF_HOST_PAGES = 152  /* u64: of which in host memory */
};

/* A checked buffer: the header's fields and where each section starts. */
typedef struct skvi_seq_format {
    uint32_t version, layers, q_heads, kv_heads, head_dim, page_tokens;
    uint32_t tiers, dtype, scorer, score_window, flags;
    uint64_t total, rotation_seed, codebook[SKV_TIER_COUNT], page_bytes[SKV_TIER_COUNT];
    uint64_t rdr_runs, pages, host_pages;
    uint64_t tier_pages[SKV_TIER_COUNT][SKV_MEM_COUNT]; /* pages per pool */
    size_t off_layers, off_lists, off_pages, off_stats, off_snap, off_obs, off_kept, off_end;
} skvi_seq_format;

/* Checks every byte of buf[size] (magic, version, size, checksum, every count against
 * the bytes that remain, every list, page position and statistic the import relies on)
 * and fills *out. SKV_ERR_UNSUPPORTED for another format version, page dtype, tier or
 * page layout (well formed, but not what this library stores), else
 * SKV_ERR_INVALID_ARG for anything malformed, with the reason through skvi_fail(err)
 * (err may be NULL). Allocates nothing, touches no device. */
skv_status skvi_seq_format_parse(const void *buf, size_t size, skvi_seq_format *out, char *err);

/* Little-endian loads and stores (any alignment). */
static inline uint32_t skvi_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t skvi_le64(const uint8_t *p) { return skvi_le32(p) | (uint64_t)skvi_le32(p + 4) << 32; }
static inline void skvi_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}
static inline void skvi_put64(uint8_t *p, uint64_t v)
{
    skvi_put32(p, (uint32_t)v);
    skvi_put32(p + 4, (uint32_t)(v >> 32));
}

#endif /* SKV_SEQ_FORMAT_H */
