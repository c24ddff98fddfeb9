/* Decode attention over one tier's pages, split-K (flash-decoding): what every decode
 * program shares. A decode program is three files (host/cache.c: decode_program):
 *
 *   decode.h + TIER + SCHEDULE
 *
 * TIER is how a slot's logits and values come out of a page: decode_f16.h (dense fp16
 * keys: q.k) or decode_ada.h (ADA codes: logits from the codes and the per-query tables
 * of ada_query.cl, values dequantised on the fly; no dense key is ever formed). SCHEDULE
 * is how the work is laid out: decode_gpu.cl (GROUP: a work-group per chunk, a slot per
 * work-item, local-memory reductions) or decode_cpu.cl (LANES: a work-item per chunk,
 * LANES slots per vector, no local memory, no barriers). A tier header provides, for
 * the schedule the program is built for:
 *
 *   PAGE_BYTES                          bytes per page of this tier (cl/layout.h)
 *   GROUP schedule (no DECODE_CPU):
 *     TIER_LOCAL_QUERY                  1: slot_logits reads the group's queries from
 *                                       local memory (the schedule loads them there)
 *     slot_logits(page, slot, qs, tab, params, dot_g)   G logits of one slot, unscaled
 *     load_v2(page, slot, pair)         value dims 2 pair, 2 pair + 1 of a slot
 *     TIER_TABLE_FLOATS                 query-table floats per (sequence, kv-head)
 *   LANES schedule (DECODE_CPU):
 *     TB, floatTB, intTB, vloadTB, vstoreTB   a block of TB slots, a logit per lane
 *     cpu_query, query_init(...)        what logits need (queries or tables)
 *     block_logits(page, slot0, cq, s)  the block's scaled logits per q-head
 *     cpu_acc, acc_zero, acc_scale, block_values, acc_store   value accumulators
 *
 * Every tier writes its chunks' partials (max, sum, acc[D] per q-head) into one array
 * (chunk_offset of total_chunks), and decode_merge.cl combines them all by log-sum-exp:
 * one decode call covers the F16 pages (sinks, recent window) and every compressed tier.
 * C references: src/ref_attention.c, src/ada.c, src/value_quant.c.
 * Build defines: D, P, G, TILE (tokens per tile: the GROUP work-group size, a power of
 * two >= D/2 and >= G; chunks hold whole tiles), SEG_POW2 (the power of two >= TILE / G);
 * LANES schedule: DECODE_CPU, LANES (16, 8 or 4), LANE_W (= LANES), tunables KB (F16), VSPLIT and LCHAINS (ADA);
 * ADA tiers: ADA, RB, AB, KW, VB, VG; OBSERVE keeps every logit. */

#define PAIRS (D / 2)
#define PARTIAL_FLOATS (G * (D + 2))

#define DECODE_PARAMS                                                                      \
    SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,                \
        __global const uint *lens, uint H, __global const uchar *q, ulong q_offset, uint q_dtype, \
        float scale, uint tiles_per_chunk, uint n_chunks, uint chunk_offset, uint total_chunks, \
        __global float *partials, __global const float *tables, __constant float *params,          \
        __global float *logits, uint logit_stride

/* `scale` multiplies the logits: the softmax scale (ADA: times sqrt(2/D) and the tier's
 * logit correction). `tables` (ADA): the per-query tables of ada_query, by slot for the
 * GROUP schedule, by lane for LANES (cl/layout.h). */

/* OBSERVE (the observed-attention scorer): the scaled logit of every token for every
 * q-head also goes to logits[(bh * G + g) * logit_stride + token], for observe.cl. */
#ifdef OBSERVE
#define KEEP_LOGIT(bh, g, t, v) (logits[((size_t)(bh) * G + (g)) * logit_stride + (t)] = (v))
#else
#define KEEP_LOGIT(bh, g, t, v) ((void)0)
#endif

#ifdef DECODE_CPU
/* The LANES schedule's vectors: LANES slots at once (16, 8 or 4: the device's float
 * vector width). The lookup of LANES indices in a piece of LANES floats is written as
 * a vector of element extracts, which LLVM lowers to one variable permute (x86: vpermps
 * zmm with AVX-512, vpermps ymm with AVX2, vpermilps xmm with AVX). */
#ifndef LANES
#define LANES 16
#endif
#if LANES == 16
#define floatL float16
#define uintL uint16
#define intL int16
#define vloadL vload16
#define vstoreL vstore16
#define vload_halfL vload_half16
#define as_floatL as_float16
#define as_uintL as_uint16
#define LANES_LOG2 4
#define LANE_IDS (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
__attribute__((always_inline)) static inline float16 lut(float16 row, uint16 i)
{
    return (float16)(row[i.s0], row[i.s1], row[i.s2], row[i.s3], row[i.s4], row[i.s5], row[i.s6], row[i.s7],
                     row[i.s8], row[i.s9], row[i.sa], row[i.sb], row[i.sc], row[i.sd], row[i.se], row[i.sf]);
}
#elif LANES == 8
#define floatL float8
#define uintL uint8
#define intL int8
#define vloadL vload8
#define vstoreL vstore8
#define vload_halfL vload_half8
#define as_floatL as_float8
#define as_uintL as_uint8
#define LANES_LOG2 3
#define LANE_IDS (int8)(0, 1, 2, 3, 4, 5, 6, 7)
__attribute__((always_inline)) static inline float8 lut(float8 row, uint8 i)
{
    return (float8)(row[i.s0], row[i.s1], row[i.s2], row[i.s3], row[i.s4], row[i.s5], row[i.s6], row[i.s7]);
}
#elif LANES == 4
#define floatL float4
#define uintL uint4
#define intL int4
#define vloadL vload4
#define vstoreL vstore4
#define vload_halfL vload_half4
#define as_floatL as_float4
#define as_uintL as_uint4
#define LANES_LOG2 2
#define LANE_IDS (int4)(0, 1, 2, 3)
__attribute__((always_inline)) static inline float4 lut(float4 row, uint4 i)
{
    return (float4)(row[i.s0], row[i.s1], row[i.s2], row[i.s3]);
}
#else
#error "LANES is 16, 8 or 4"
#endif
#endif /* DECODE_CPU */
