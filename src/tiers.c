/* The tier table (DESIGN.md §4) as data: what each tier stores per token and kv-head.
 * Page sizes and the API's byte counts derive from these rows, never from code per tier. */
#include "layout.h"
#include "skv_internal.h"

const skvi_tier_desc skvi_tiers[SKV_TIER_COUNT] = {
    /* name    dense  radius angle group  value bits, group */
    {"f16", 1, 0, 0, 0, 16, 0},
    {"a4v8", 0, 3, 5, 2, 8, 32},
    {"a3v4", 0, 2, 4, 2, 4, 32},
    {"a2v2", 0, 1, 3, 2, 2, 32},
};

uint64_t skvi_tier_token_bytes(skv_tier tier, uint32_t head_dim)
{
    const skvi_tier_desc *t = &skvi_tiers[tier];
    uint64_t key, value;
    if (t->dense_keys) {
        key = 2ull * head_dim;
    } else { /* per group of `group` coordinates: radius + angle bits; plus an fp16 norm */
        key = (uint64_t)head_dim / t->group * (t->radius_bits + t->angle_bits) / 8 + 2;
    }
    if (t->value_group == 0) {
        value = (uint64_t)head_dim * t->value_bits / 8;
    } else { /* quantised groups with an fp16 scale and min each */
        value = (uint64_t)head_dim * t->value_bits / 8 + (uint64_t)head_dim / t->value_group * 4;
    }
    return key + value;
}

uint64_t skvi_tier_page_bytes(skv_tier tier, uint32_t head_dim, uint32_t page_tokens)
{
    /* the page layouts the kernels use (cl/layout.h); the slot's original position (int32)
     * is the only per-token metadata */
    const skvi_tier_desc *t = &skvi_tiers[tier];
    const uint64_t D = head_dim, P = page_tokens;
    if (t->dense_keys)
        return SKV_F16_PAGE_BYTES(D, P);
    const uint64_t KW = (D / t->group * (t->radius_bits + t->angle_bits) + 31) / 32;
    return SKV_ADA_PAGE_BYTES(D, P, KW, (uint64_t)t->value_bits, (uint64_t)t->value_group);
}
