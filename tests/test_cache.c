/* The paged cache and dense decode attention: geometry checks, the append kernel against
 * the C page layout, decode attention against exact fp64 attention over awkward shapes,
 * forks with copy-on-write, all-or-nothing appends, page moves, and the cl_mem paths. */
#include <math.h>

#include "test_util.h"
#include "cache_internal.h"
#include "skv_ref.h"

static skv_context *ctx;
TEST_KERNEL_SUITE_SETUP(ctx)

static skv_cache_desc geometry(uint32_t layers, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
                               uint32_t page_tokens)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = layers;
    d.q_heads = q_heads;
    d.kv_heads = kv_heads;
    d.head_dim = head_dim;
    d.page_tokens = page_tokens;
    d.device_budget_bytes = 256u << 20;
    d.host_budget_bytes = 64u << 20;
    return d;
}

/* Host mirror of what a sequence holds for one layer: K and V [n][H][D] as float. */
typedef struct mirror {
    float *k, *v;
    int32_t *pos;
    uint64_t n, cap;
    uint32_t H, D;
} mirror;

static void mirror_push(mirror *m, const float *k, const float *v, const int32_t *pos, uint32_t n)
{
    size_t row = (size_t)m->H * m->D;
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->k = realloc(m->k, m->cap * row * 4);
        m->v = realloc(m->v, m->cap * row * 4);
        m->pos = realloc(m->pos, m->cap * 4);
    }
    memcpy(m->k + m->n * row, k, n * row * 4);
    memcpy(m->v + m->n * row, v, n * row * 4);
    memcpy(m->pos + m->n, pos, n * 4);
    m->n += n;
}

static void mirror_free(mirror *m)
{
    free(m->k);
    free(m->v);
    free(m->pos);
}


/* Appends n random tokens (values rounded to what `dtype` can hold, so the mirror is
 * exact) to seq/layer and to the mirror. */
static skv_status append_random(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t n, skv_dtype dtype,
                                test_rng *r, mirror *m)
{
    size_t count = (size_t)n * c->desc.kv_heads * c->desc.head_dim;
    float *k = malloc(count * 4), *v = malloc(count * 4);
    void *kin = malloc(count * 4), *vin = malloc(count * 4);
    int32_t *pos = malloc(n * 4);
    for (size_t i = 0; i < count; i++) {
        k[i] = test_gauss(r) + (i % 7 == 0 ? 1.0f : 0.0f); /* a few offset channels */
        v[i] = test_gauss(r);
        if (dtype == SKV_F16) {
            ((uint16_t *)kin)[i] = skv_ref_f32_to_f16(k[i]);
            ((uint16_t *)vin)[i] = skv_ref_f32_to_f16(v[i]);
        } else if (dtype == SKV_BF16) {
            ((uint16_t *)kin)[i] = skv_ref_f32_to_bf16(k[i]);
            ((uint16_t *)vin)[i] = skv_ref_f32_to_bf16(v[i]);
        } else {
            ((float *)kin)[i] = k[i];
            ((float *)vin)[i] = v[i];
        }
        k[i] = skv_ref_load(dtype, kin, i);
        v[i] = skv_ref_load(dtype, vin, i);
    }
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)(m ? m->n + t : t) * 3 + 1; /* not the slot index */
    skv_status st = skv_append(c, seq, layer, n, dtype, kin, vin, pos);
    if (st == SKV_OK && m)
        mirror_push(m, k, v, pos, n);
    free(k);
    free(v);
    free(kin);
    free(vin);
    free(pos);
    return st;
}

static void test_geometry_checks(void **state)
{
    (void)state;
    skv_cache *c = (skv_cache *)0x1;
    struct {
        skv_cache_desc d;
        const char *field;
        skv_status st;
    } bad[12];
    int n = 0;
    bad[n].d = geometry(0, 8, 8, 128, 64), bad[n++].field = "layers";
    bad[n].d = geometry(2, 8, 0, 128, 64), bad[n++].field = "kv_heads";
    bad[n].d = geometry(2, 12, 8, 128, 64), bad[n++].field = "q_heads";
    bad[n].d = geometry(2, 8, 8, 96, 64), bad[n++].field = "head_dim";
    bad[n].d = geometry(2, 8, 8, 128, 48), bad[n++].field = "page_tokens";
    bad[n].d = geometry(2, 8, 8, 128, 8), bad[n++].field = "page_tokens";
    bad[n].d = geometry(2, 8, 8, 128, 512), bad[n++].field = "page_tokens";
    bad[n].d = geometry(2, 8, 8, 128, 64), bad[n].d.tiers = 0, bad[n++].field = "tiers";
    bad[n].d = geometry(2, 8, 8, 128, 64), bad[n].d.device_budget_bytes = 1000, bad[n++].field = "device_budget_bytes";
    bad[n].d = geometry(2, 8, 8, 128, 64), bad[n].d.device_budget_bytes = ~0ull >> 1, bad[n++].field = "device_budget_bytes";
    bad[n].d = geometry(2, 8, 8, 128, 64), bad[n].d.struct_size = 8, bad[n++].field = "struct_size";
    for (int i = 0; i < n; i++) {
        assert_int_equal(skv_cache_create(ctx, &bad[i].d, &c), SKV_ERR_INVALID_ARG);
        assert_null(c);
        if (!strstr(skv_last_error(), bad[i].field))
            fail_msg("case %d: message '%s' does not name %s", i, skv_last_error(), bad[i].field);
    }
    skv_cache_desc d = geometry(2, 8, 8, 128, 64);
    d.tiers = 1u << SKV_TIER_A3V4; /* F16 is required: sinks and the recent window */
    assert_int_equal(skv_cache_create(ctx, &d, &c), SKV_ERR_INVALID_ARG);
    d.tiers = 1u << 7;
    assert_int_equal(skv_cache_create(ctx, &d, &c), SKV_ERR_INVALID_ARG);
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    assert_int_equal(skv_cache_create(NULL, &d, &c), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_cache_create(ctx, NULL, &c), SKV_ERR_INVALID_ARG);
    skv_cache_destroy(NULL);
}

/* Pages written by the append kernel equal the C reference layout, byte for byte. */
static void test_append_matches_reference_layout(void **state)
{
    (void)state;
    const skv_dtype dtypes[] = {SKV_F32, SKV_F16, SKV_BF16};
    for (int di = 0; di < 3; di++) {
        skv_cache_desc d = geometry(2, 6, 3, 64, 16);
        skv_cache *c;
        assert_ok(skv_cache_create(ctx, &d, &c));
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        test_rng r = {77 + di};
        mirror m = {.H = 3, .D = 64};
        const uint32_t pieces[] = {1, 37, 5, 16, 20}; /* crosses page boundaries mid-append */
        for (int i = 0; i < 5; i++)
            assert_ok(append_random(c, s, 1, pieces[i], dtypes[di], &r, &m));
        assert_ok(skv_context_finish(ctx));
        uint64_t page_bytes;
        assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &page_bytes));
        assert_int_equal(page_bytes, 16 * (4 * 64 + 4));
        unsigned char *got = malloc(page_bytes), *want = malloc(page_bytes);
        skvi_seq *sq = &c->seqs[s];
        for (uint32_t h = 0; h < 3; h++) {
            skvi_page_list *l = skvi_seq_list(c, sq, 1, h, SKV_TIER_F16);
            assert_int_equal(l->n, (m.n + 15) / 16);
            for (uint32_t j = 0; j < l->n; j++) {
                size_t off;
                cl_mem buf = skvi_pool_locate(&c->pools[SKV_TIER_F16][SKV_MEM_DEVICE], l->ids[j], &off);
                assert_int_equal(clEnqueueReadBuffer(ctx->queue, buf, CL_TRUE, off, page_bytes, got, 0, NULL, NULL),
                                 CL_SUCCESS);
                memcpy(want, got, page_bytes); /* slots past the end are unspecified */
                for (uint32_t slot = 0; slot < 16 && j * 16 + slot < m.n; slot++) {
                    size_t t = j * 16 + slot;
                    skv_ref_f16_page_write(want, 16, 64, slot, m.k + (t * 3 + h) * 64, m.v + (t * 3 + h) * 64, m.pos[t]);
                }
                if (memcmp(got, want, page_bytes) != 0)
                    fail_msg("dtype %d head %u page %u differs from the reference layout", di, h, j);
            }
        }
        /* positions come back in order; other layers are untouched */
        int32_t *pos = malloc(m.n * 4);
        size_t count;
        assert_ok(skv_seq_positions(c, s, 1, 2, pos, m.n, &count));
        assert_int_equal(count, m.n);
        assert_memory_equal(pos, m.pos, m.n * 4);
        uint64_t len;
        assert_ok(skv_seq_length(c, s, 0, &len));
        assert_int_equal(len, 0);
        free(pos);
        free(got);
        free(want);
        mirror_free(&m);
        skv_cache_destroy(c);
    }
}

static float *rounded_f16(const float *x, size_t n)
{
    float *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++)
        y[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(x[i]));
    return y;
}

/* Decode for a batch of sequences against fp64 attention over each mirror: within 1e-3
 * of attention over the original K and V (the bound for fp16 storage), and
 * within 2e-5 of attention over the fp16-rounded K and V the pages hold (the kernels'
 * own float error, with nothing of the storage in it). */
static double check_decode(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, const mirror *const *ms, uint32_t B,
                           skv_dtype q_dtype, skv_dtype out_dtype, test_rng *r)
{
    const skv_cache_desc *d = &c->desc;
    size_t per = (size_t)d->q_heads * d->head_dim;
    float *q = malloc(B * per * 4), *outf = malloc(B * per * 4);
    uint16_t *qh = malloc(B * per * 2), *outh = malloc(B * per * 2);
    double *ref = malloc(per * sizeof *ref);
    for (size_t i = 0; i < B * per; i++) {
        q[i] = test_gauss(r);
        qh[i] = skv_ref_f32_to_f16(q[i]);
        if (q_dtype == SKV_F16)
            q[i] = skv_ref_f16_to_f32(qh[i]);
    }
    /* poison the outputs */
    memset(outf, 0xFF, B * per * 4);
    memset(outh, 0xFF, B * per * 2);
    float scale = 1.0f / sqrtf((float)d->head_dim);
    void *out = out_dtype == SKV_F16 ? (void *)outh : (void *)outf;
    assert_ok(skv_attention_decode(c, layer, seqs, B, q_dtype, q_dtype == SKV_F16 ? (void *)qh : (void *)q, scale,
                                   out_dtype, out));
    if (out_dtype == SKV_F16)
        for (size_t i = 0; i < B * per; i++)
            outf[i] = skv_ref_f16_to_f32(outh[i]);
    double worst = 0;
    for (uint32_t b = 0; b < B; b++) {
        size_t n = ms[b]->n * d->kv_heads * d->head_dim;
        float *kr = rounded_f16(ms[b]->k, n), *vr = rounded_f16(ms[b]->v, n);
        assert_int_equal(skv_ref_attention_decode(q + b * per, kr, vr, ms[b]->n, d->q_heads, d->kv_heads,
                                                  d->head_dim, scale, ref),
                         0);
        double e_impl = skv_ref_rel_l2(ref, outf + b * per, per);
        double bound = out_dtype == SKV_F16 ? 1e-3 : 2e-5; /* fp16 output rounds to 2^-11 */
        if (!(e_impl <= bound))
            fail_msg("sequence %u (%llu tokens, D=%u G=%u P=%u): relative L2 error %.3g vs attention over the "
                     "stored fp16 K/V", b, (unsigned long long)ms[b]->n, d->head_dim, d->q_heads / d->kv_heads,
                     d->page_tokens, e_impl);
        assert_int_equal(skv_ref_attention_decode(q + b * per, ms[b]->k, ms[b]->v, ms[b]->n, d->q_heads, d->kv_heads,
                                                  d->head_dim, scale, ref),
                         0);
        double e = skv_ref_rel_l2(ref, outf + b * per, per);
        if (!(e <= 1e-3))
            fail_msg("sequence %u (%llu tokens, D=%u G=%u P=%u): relative L2 error %.3g", b,
                     (unsigned long long)ms[b]->n, d->head_dim, d->q_heads / d->kv_heads, d->page_tokens, e);
        if (e > worst)
            worst = e;
        free(kr);
        free(vr);
    }
    free(q);
    free(outf);
    free(qh);
    free(outh);
    free(ref);
    return worst;
}

static void test_decode_shapes(void **state)
{
    (void)state;
    struct {
        uint32_t D, G, H, P;
    } shapes[] = {{64, 1, 3, 16}, {128, 4, 2, 64}, {256, 8, 1, 32}, {128, 8, 2, 256}, {64, 3, 2, 32}};
    const uint32_t lens[] = {1, 63, 64, 65, 1000, 5000};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        skv_cache_desc d = geometry(1, shapes[si].G * shapes[si].H, shapes[si].H, shapes[si].D, shapes[si].P);
        skv_cache *c;
        assert_ok(skv_cache_create(ctx, &d, &c));
        test_rng r = {1000 + si};
        skv_seq_id seqs[6];
        mirror ms[6];
        const mirror *mp[6];
        for (int i = 0; i < 6; i++) {
            ms[i] = (mirror){.H = d.kv_heads, .D = d.head_dim};
            mp[i] = &ms[i];
            assert_ok(skv_seq_create(c, &seqs[i]));
            /* two appends: prefill-like then a few decode-like tokens */
            uint32_t first = lens[i] > 3 ? lens[i] - 3 : lens[i];
            assert_ok(append_random(c, seqs[i], 0, first, SKV_F32, &r, &ms[i]));
            for (uint32_t t = first; t < lens[i]; t++)
                assert_ok(append_random(c, seqs[i], 0, 1, SKV_F16, &r, &ms[i]));
        }
        for (int variant = 0; variant < TEST_VARIANTS; variant++) { /* both kernels, whatever the device */
            assert_ok(skv_cache_set_decode_params(c, &test_variants[variant]));
            double e = check_decode(c, 0, seqs, mp, 6, SKV_F32, SKV_F32, &r); /* mixed-length batch */
            printf("%s kernel, D=%u G=%u H=%u P=%u: batch of lengths 1..5000, rel L2 %.2e\n",
                   test_variant_name(variant), d.head_dim, shapes[si].G, d.kv_heads, d.page_tokens, e);
            for (int i = 0; i < 6; i += 2) /* single sequences, fp16 in and out */
                check_decode(c, 0, &seqs[i], &mp[i], 1, SKV_F16, SKV_F16, &r);
        }
        for (int i = 0; i < 6; i++)
            mirror_free(&ms[i]);
        skv_cache_destroy(c);
    }
}

static void test_fork_copy_on_write(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(2, 8, 2, 128, 32);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {4242};
    skv_seq_id parent, child, grandchild;
    mirror mp = {.H = 2, .D = 128}, mc, mg;
    assert_ok(skv_seq_create(c, &parent));
    assert_ok(append_random(c, parent, 1, 100, SKV_F32, &r, &mp)); /* 3 full pages + 4 tokens */
    assert_ok(append_random(c, parent, 0, 10, SKV_F32, &r, NULL));
    skv_cache_stats st0 = {.struct_size = sizeof st0};
    assert_ok(skv_cache_get_stats(c, &st0));
    assert_ok(skv_seq_fork(c, parent, &child));
    skv_cache_stats st1 = {.struct_size = sizeof st1};
    assert_ok(skv_cache_get_stats(c, &st1));
    assert_int_equal(st1.pools[SKV_TIER_F16][SKV_MEM_DEVICE].pages_used,
                     st0.pools[SKV_TIER_F16][SKV_MEM_DEVICE].pages_used); /* shared, not copied */
    assert_int_equal(st1.sequences, 2);

    /* the child appends into the shared tail page: it gets a copy */
    mc = mp;
    mc.k = malloc(mp.cap * 2 * 128 * 4);
    mc.v = malloc(mp.cap * 2 * 128 * 4);
    mc.pos = malloc(mp.cap * 4);
    memcpy(mc.k, mp.k, mp.n * 2 * 128 * 4);
    memcpy(mc.v, mp.v, mp.n * 2 * 128 * 4);
    memcpy(mc.pos, mp.pos, mp.n * 4);
    assert_ok(append_random(c, child, 1, 50, SKV_F32, &r, &mc));
    assert_ok(skv_seq_fork(c, child, &grandchild));
    mg = mc;
    mg.k = malloc(mc.cap * 2 * 128 * 4);
    mg.v = malloc(mc.cap * 2 * 128 * 4);
    mg.pos = malloc(mc.cap * 4);
    memcpy(mg.k, mc.k, mc.n * 2 * 128 * 4);
    memcpy(mg.v, mc.v, mc.n * 2 * 128 * 4);
    memcpy(mg.pos, mc.pos, mc.n * 4);
    /* the parent writes into its own tail too: still shared with nobody after the copy? it
       is shared with nobody now (the child took a copy), so it writes in place */
    assert_ok(append_random(c, parent, 1, 7, SKV_F32, &r, &mp));
    assert_ok(append_random(c, grandchild, 1, 1, SKV_F32, &r, &mg));

    skv_seq_id all[3] = {parent, child, grandchild};
    const mirror *ms[3] = {&mp, &mc, &mg};
    check_decode(c, 1, all, ms, 3, SKV_F32, SKV_F32, &r);
    uint64_t len;
    assert_ok(skv_seq_length(c, parent, 1, &len));
    assert_int_equal(len, 107);
    assert_ok(skv_seq_length(c, child, 1, &len));
    assert_int_equal(len, 150);
    assert_ok(skv_seq_length(c, grandchild, 0, &len));
    assert_int_equal(len, 10);

    /* freeing returns every page */
    assert_ok(skv_seq_free(c, child));
    assert_ok(skv_seq_free(c, parent));
    check_decode(c, 1, &grandchild, &ms[2], 1, SKV_F32, SKV_F32, &r); /* its shared pages survive */
    assert_ok(skv_seq_free(c, grandchild));
    skv_cache_stats st2 = {.struct_size = sizeof st2};
    assert_ok(skv_cache_get_stats(c, &st2));
    assert_int_equal(st2.pools[SKV_TIER_F16][SKV_MEM_DEVICE].pages_used, 0);
    assert_int_equal(st2.sequences, 0);
    assert_int_equal(skv_seq_free(c, parent), SKV_ERR_INVALID_ARG);
    mirror_free(&mp);
    mirror_free(&mc);
    mirror_free(&mg);
    skv_cache_destroy(c);
}

static void test_out_of_memory_append_changes_nothing(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(1, 4, 2, 64, 16);
    uint64_t page_bytes = 16 * (4 * 64 + 4);
    d.device_budget_bytes = 10 * page_bytes; /* room for 10 pages: 5 per head */
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {9};
    mirror m = {.H = 2, .D = 64};
    skv_seq_id s, f;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(append_random(c, s, 0, 40, SKV_F32, &r, &m)); /* 3 pages per head, tail of 8 */
    assert_ok(skv_seq_fork(c, s, &f));                      /* the tail page is now shared */
    skv_cache_stats before = {.struct_size = sizeof before};
    assert_ok(skv_cache_get_stats(c, &before));

    /* 41 more tokens need 2 copies + 2 x 3 pages = 8 > 4 free: refused, nothing changes */
    assert_int_equal(append_random(c, s, 0, 41, SKV_F32, &r, NULL), SKV_ERR_OUT_OF_MEMORY);
    assert_non_null(strstr(skv_last_error(), "budget"));
    skv_cache_stats after = {.struct_size = sizeof after};
    assert_ok(skv_cache_get_stats(c, &after));
    assert_int_equal(after.pools[0][0].pages_used, before.pools[0][0].pages_used);
    uint64_t len;
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 40);
    skv_seq_id both[2] = {s, f};
    const mirror *ms[2] = {&m, &m};
    check_decode(c, 0, both, ms, 2, SKV_F32, SKV_F32, &r);

    /* bad arguments change nothing either */
    float x[64 * 2] = {0};
    int32_t p = 0;
    assert_int_equal(skv_append(c, s, 1, 1, SKV_F32, x, x, &p), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_append(c, s, 0, 0, SKV_F32, x, x, &p), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_append(c, s, 0, 1, (skv_dtype)7, x, x, &p), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_append(c, s, 0, 1, SKV_F32, NULL, x, &p), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_append(c, 99, 0, 1, SKV_F32, x, x, &p), SKV_ERR_INVALID_ARG);
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 40);

    /* positions at the ends of int32 are stored as they are (no overflow computing past them) */
    skv_seq_id g;
    assert_ok(skv_seq_create(c, &g));
    const int32_t ends[2] = {INT32_MAX, INT32_MIN};
    float kv2[2 * 2 * 64] = {0}; /* 2 tokens x 2 kv-heads */
    assert_ok(skv_append(c, g, 0, 2, SKV_F32, kv2, kv2, ends));
    int32_t back[2];
    size_t held;
    assert_ok(skv_seq_positions(c, g, 0, 1, back, 2, &held));
    assert_int_equal(held, 2);
    assert_int_equal(back[0], INT32_MAX);
    assert_int_equal(back[1], INT32_MIN);
    assert_ok(skv_seq_free(c, g));

    /* a smaller append that fits still works, and freeing gives everything back */
    assert_ok(append_random(c, s, 0, 9, SKV_F32, &r, &m));
    check_decode(c, 0, &s, ms, 1, SKV_F32, SKV_F32, &r);
    assert_ok(skv_seq_free(c, s));
    assert_ok(skv_seq_free(c, f));
    assert_ok(skv_cache_get_stats(c, &after));
    assert_int_equal(after.pools[0][0].pages_used, 0);
    assert_true(after.pools[0][0].bytes_allocated <= d.device_budget_bytes);
    mirror_free(&m);
    skv_cache_destroy(c);

    /* 2^26 tokens on 1024 kv-heads need 2^32 pages of 16 tokens: counted in 64 bits and
     * refused before anything is read or allocated (it wrapped to 0 and popped an empty
     * free list) */
    d = geometry(1, 1024, 1024, 64, 16);
    assert_ok(skv_cache_create(ctx, &d, &c));
    assert_ok(skv_seq_create(c, &s));
    int32_t *pos = malloc((1u << 26) * sizeof *pos);
    assert_non_null(pos);
    for (uint32_t t = 0; t < (1u << 26); t++)
        pos[t] = (int32_t)t;
    assert_int_equal(skv_append(c, s, 0, 1u << 26, SKV_F32, x, x, pos), SKV_ERR_OUT_OF_MEMORY);
    assert_non_null(strstr(skv_last_error(), "budget"));
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 0);
    free(pos);
    skv_cache_destroy(c);
}

static void read_pages(skv_cache *c, skv_seq_id s, unsigned char *out)
{
    skvi_seq *sq = &c->seqs[s];
    uint64_t pb = c->pools[0][0].page_bytes;
    assert_ok(skv_context_finish(ctx));
    for (size_t i = 0; i < skvi_list_count(c); i++)
        for (uint32_t j = 0; j < sq->lists[i].n; j++) {
            uint32_t e = sq->lists[i].ids[j];
            size_t off;
            cl_mem buf = skvi_pool_locate(&c->pools[0][e & SKVI_HOST_BIT ? 1 : 0], e & ~SKVI_HOST_BIT, &off);
            assert_int_equal(clEnqueueReadBuffer(ctx->queue, buf, CL_TRUE, off, pb, out, 0, NULL, NULL), CL_SUCCESS);
            out += pb;
        }
}

/* NaN or Inf in host keys, values or queries would turn every decode of their head into
 * NaN: they are refused with a message naming the token and head, and the sequence
 * still decodes what it held. */
static void test_nonfinite_inputs_refused(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(1, 4, 2, 64, 16);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {5};
    mirror m = {.H = 2, .D = 64};
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(append_random(c, s, 0, 21, SKV_F32, &r, &m));
    float k[3 * 2 * 64] = {0}, v[3 * 2 * 64] = {0};
    uint16_t kh[3 * 2 * 64] = {0};
    int32_t pos[3] = {100, 101, 102};
    k[(2 * 2 + 1) * 64 + 7] = NAN; /* token 2, kv-head 1 */
    assert_int_equal(skv_append(c, s, 0, 3, SKV_F32, k, v, pos), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "k of token 2, kv-head 1"));
    k[(2 * 2 + 1) * 64 + 7] = 0;
    v[5] = -INFINITY;
    assert_int_equal(skv_append(c, s, 0, 3, SKV_F32, k, v, pos), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "v of token 0, kv-head 0"));
    kh[64] = 0x7C00; /* fp16 +Inf */
    assert_int_equal(skv_append(c, s, 0, 3, SKV_F16, kh, kh, pos), SKV_ERR_INVALID_ARG);
    uint64_t len;
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 21);
    float q[4 * 64], out[4 * 64];
    for (int i = 0; i < 4 * 64; i++)
        q[i] = test_gauss(&r);
    q[2 * 64 + 3] = NAN;
    assert_int_equal(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "q-head 2"));
    const mirror *ms[1] = {&m};
    check_decode(c, 0, &s, ms, 1, SKV_F32, SKV_F32, &r);
    mirror_free(&m);
    skv_cache_destroy(c);
}

/* call must give SKV_ERR_INVALID_ARG and a message containing `word`. */
#define expect_invalid(call, word)                                                                                     \
    do {                                                                                                               \
        skv_status st_ = (call);                                                                                       \
        if (st_ != SKV_ERR_INVALID_ARG || !skv_last_error()[0] || !strstr(skv_last_error(), word))                     \
            fail_msg("%s: status %d, message '%s'", #call, (int)st_, skv_last_error());                                \
    } while (0)

/* Every call that takes a cache refuses a NULL cache, a NULL result pointer, a sequence
 * that was freed (or never existed), and a stats struct of the wrong size, with
 * SKV_ERR_INVALID_ARG and a message, and changes nothing. */
static void test_every_call_refuses_bad_handles(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(2, 4, 2, 64, 16);
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.host_budget_bytes = 1u << 20;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s, gone;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_seq_create(c, &gone));
    assert_ok(skv_seq_free(c, gone));
    test_rng r = {3};
    mirror m = {.H = 2, .D = 64};
    assert_ok(append_random(c, s, 0, 40, SKV_F32, &r, &m));
    float x[4 * 64] = {0}, out[4 * 64];
    int32_t pos[1] = {0};
    uint64_t u64;
    size_t count;
    double ms;
    skv_seq_id id;
    const skv_seq_id bad_ids[3] = {gone, 12345, (skv_seq_id)-1};
    for (int i = 0; i < 3; i++) {
        const skv_seq_id b = bad_ids[i];
        expect_invalid(skv_seq_free(c, b), "");
        expect_invalid(skv_seq_fork(c, b, &id), "");
        expect_invalid(skv_seq_length(c, b, 0, &u64), "");
        expect_invalid(skv_seq_positions(c, b, 0, 0, pos, 1, &count), "");
        expect_invalid(skv_append(c, b, 0, 1, SKV_F32, x, x, pos), "");
        expect_invalid(skv_seq_offload(c, b, 0, 16), "");
        expect_invalid(skv_seq_fetch(c, b, 0, 16), "");
        expect_invalid(skv_seq_quantize(c, b, 0, 16, SKV_TIER_A3V4), "");
        expect_invalid(skv_seq_host_pages(c, b, &u64), "");
        expect_invalid(skv_attention_decode(c, 0, &b, 1, SKV_F32, x, 0.125f, SKV_F32, out), "");
        const skv_seq_id pair[2] = {s, b}; /* one bad sequence in a batch */
        float q2[2 * 4 * 64] = {0}, out2[2 * 4 * 64];
        expect_invalid(skv_attention_decode(c, 0, pair, 2, SKV_F32, q2, 0.125f, SKV_F32, out2), "");
        expect_invalid(skv_attention_logits(c, 0, b, SKV_F32, x, 0.125f, out, 64, &count), "");
        expect_invalid(skv_seq_observe_window(c, b, 0, 1, SKV_F32, x, pos), "");
        expect_invalid(skv_seq_scores(c, b, 0, 0, out, 64, &count), "");
        expect_invalid(skv_compress(c, b), "");
        expect_invalid(skv_seq_offload_head(c, b, 0, 0, 0, 16), "");
        expect_invalid(skv_seq_fetch_head(c, b, 0, 0, 0, 16), "");
        expect_invalid(skv_hetero_calibrate_abort(c, b), "");
    }
    /* NULL cache */
    expect_invalid(skv_cache_page_bytes(NULL, SKV_TIER_F16, &u64), "");
    expect_invalid(skv_seq_create(NULL, &id), "");
    expect_invalid(skv_seq_free(NULL, s), "");
    expect_invalid(skv_seq_fork(NULL, s, &id), "");
    expect_invalid(skv_seq_length(NULL, s, 0, &u64), "");
    expect_invalid(skv_seq_positions(NULL, s, 0, 0, pos, 1, &count), "");
    expect_invalid(skv_append(NULL, s, 0, 1, SKV_F32, x, x, pos), "");
    expect_invalid(skv_seq_offload(NULL, s, 0, 16), "");
    expect_invalid(skv_seq_fetch(NULL, s, 0, 16), "");
    expect_invalid(skv_seq_quantize(NULL, s, 0, 16, SKV_TIER_A3V4), "");
    expect_invalid(skv_seq_host_pages(NULL, s, &u64), "");
    expect_invalid(skv_attention_decode(NULL, 0, &s, 1, SKV_F32, x, 0.125f, SKV_F32, out), "");
    expect_invalid(skv_attention_logits(NULL, 0, s, SKV_F32, x, 0.125f, out, 64, &count), "");
    expect_invalid(skv_cache_last_decode_ms(NULL, &ms), "");
    expect_invalid(skv_seq_observe_window(NULL, s, 0, 1, SKV_F32, x, pos), "");
    expect_invalid(skv_seq_scores(NULL, s, 0, 0, out, 64, &count), "");
    skv_cache_stats st = {.struct_size = sizeof st};
    expect_invalid(skv_cache_get_stats(NULL, &st), "");
    expect_invalid(skv_compress(NULL, s), "");
    skv_hetero_stats hs = {.struct_size = sizeof hs};
    expect_invalid(skv_cache_hetero_stats(NULL, &hs), "");
    expect_invalid(skv_cache_set_decode_params(NULL, NULL), "");
    skv_decode_params dp;
    expect_invalid(skv_cache_decode_params(NULL, SKV_TIER_F16, &dp), "");
    /* NULL results */
    expect_invalid(skv_cache_page_bytes(c, SKV_TIER_F16, NULL), "");
    expect_invalid(skv_cache_page_bytes(c, (skv_tier)9, &u64), "");
    expect_invalid(skv_seq_create(c, NULL), "");
    expect_invalid(skv_seq_fork(c, s, NULL), "");
    expect_invalid(skv_seq_length(c, s, 0, NULL), "");
    expect_invalid(skv_seq_positions(c, s, 0, 0, NULL, 1, &count), "");
    expect_invalid(skv_seq_positions(c, s, 0, 0, pos, 1, NULL), "");
    expect_invalid(skv_seq_host_pages(c, s, NULL), "");
    expect_invalid(skv_attention_decode(c, 0, &s, 1, SKV_F32, x, 0.125f, SKV_F32, NULL), "");
    expect_invalid(skv_attention_decode(c, 0, &s, 1, SKV_F32, NULL, 0.125f, SKV_F32, out), "");
    expect_invalid(skv_attention_logits(c, 0, s, SKV_F32, x, 0.125f, out, 64, NULL), "");
    expect_invalid(skv_cache_last_decode_ms(c, NULL), "");
    expect_invalid(skv_seq_scores(c, s, 0, 0, out, 64, NULL), "");
    expect_invalid(skv_cache_get_stats(c, NULL), "");
    st.struct_size = 8;
    expect_invalid(skv_cache_get_stats(c, &st), "struct_size");
    hs.struct_size = 8;
    expect_invalid(skv_cache_hetero_stats(c, &hs), "struct_size");
    expect_invalid(skv_cache_decode_params(c, SKV_TIER_F16, NULL), "");
    /* ranges out of order or past the end, layers and heads out of range */
    expect_invalid(skv_seq_offload(c, s, 32, 16), "");
    expect_invalid(skv_seq_quantize(c, s, 32, 16, SKV_TIER_A3V4), "");
    expect_invalid(skv_seq_quantize(c, s, 0, 16, SKV_TIER_A4V8), ""); /* not one of the cache's tiers */
    expect_invalid(skv_seq_positions(c, s, 2, 0, pos, 1, &count), "");
    expect_invalid(skv_seq_positions(c, s, 0, 2, pos, 1, &count), "");
    expect_invalid(skv_seq_scores(c, s, 0, 2, out, 64, &count), "");
    expect_invalid(skv_seq_offload_head(c, s, 0, 2, 0, 16), "");
    expect_invalid(skv_attention_decode(c, 2, &s, 1, SKV_F32, x, 0.125f, SKV_F32, out), "");
    /* nothing changed */
    assert_ok(skv_seq_length(c, s, 0, &u64));
    assert_int_equal(u64, 40);
    assert_ok(skv_seq_host_pages(c, s, &u64));
    assert_int_equal(u64, 0);
    const mirror *ms1[1] = {&m};
    check_decode(c, 0, &s, ms1, 1, SKV_F32, SKV_F32, &r);
    mirror_free(&m);
    skv_cache_destroy(c);
}

/* Positions need no order: negative, repeated and decreasing positions are stored as
 * given and read back, and decode (which never looks at them) equals the reference. */
static void test_positions_in_any_order(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(1, 4, 2, 64, 16);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {17};
    mirror m = {.H = 2, .D = 64};
    const int32_t pos[7] = {9, 9, 4, -3, INT32_MIN, 0, 9};
    float k[7 * 2 * 64], v[7 * 2 * 64];
    for (int i = 0; i < 7 * 2 * 64; i++)
        k[i] = test_gauss(&r), v[i] = test_gauss(&r);
    assert_ok(skv_append(c, s, 0, 4, SKV_F32, k, v, pos));
    assert_ok(skv_append(c, s, 0, 3, SKV_F32, k + 4 * 128, v + 4 * 128, pos + 4));
    mirror_push(&m, k, v, pos, 7);
    int32_t back[8];
    size_t n;
    assert_ok(skv_seq_positions(c, s, 0, 1, back, 8, &n));
    assert_int_equal(n, 7);
    assert_memory_equal(back, pos, sizeof pos);
    const mirror *ms1[1] = {&m};
    check_decode(c, 0, &s, ms1, 1, SKV_F32, SKV_F32, &r);
    mirror_free(&m);
    skv_cache_destroy(c);
}

static void test_offload_fetch(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(2, 8, 2, 64, 16);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {31337};
    mirror m = {.H = 2, .D = 64};
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(append_random(c, s, 0, 1000, SKV_F32, &r, &m));
    assert_ok(append_random(c, s, 1, 77, SKV_F32, &r, NULL));
    size_t pages = 2 * ((1000 + 15) / 16 + (77 + 15) / 16);
    size_t bytes = pages * c->pools[0][0].page_bytes;
    unsigned char *before = malloc(bytes), *after = malloc(bytes);
    read_pages(c, s, before);

    assert_ok(skv_seq_offload(c, s, 0, 1000));
    uint64_t host;
    assert_ok(skv_seq_host_pages(c, s, &host));
    /* full pages inside [0, 1000): 62 of layer 0 (the 63rd holds 8 tokens), 4 of layer 1 */
    assert_int_equal(host, 2 * (62 + 4));
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    assert_int_equal(st.pools[0][SKV_MEM_HOST].pages_used, host);
    assert_int_equal(st.pools[0][SKV_MEM_DEVICE].pages_used, pages - host);
    /* decode attends over the pages left on the device: layer 0's tail page, 992..999 */
    mirror tail = {.k = m.k + 992 * 2 * 64, .v = m.v + 992 * 2 * 64, .pos = m.pos + 992, .n = 8, .H = 2, .D = 64};
    const mirror *tailp = &tail;
    check_decode(c, 0, &s, &tailp, 1, SKV_F32, SKV_F32, &r);
    /* skv_attention_logits needs every page, with a message that says what to do */
    float q[8 * 64] = {0}, *lg = malloc(8 * 1000 * sizeof *lg);
    size_t counts[2];
    assert_int_equal(skv_attention_logits(c, 0, s, SKV_F32, q, 1.0f, lg, 1000, counts), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "skv_seq_fetch"));
    free(lg);
    /* appending still works while pages are away (the tail stays on the device) */
    assert_ok(append_random(c, s, 1, 3, SKV_F32, &r, NULL));

    assert_ok(skv_seq_fetch(c, s, 0, 2000));
    /* no host wait: decode right away must see the fetched pages */
    const mirror *mp = &m;
    check_decode(c, 0, &s, &mp, 1, SKV_F32, SKV_F32, &r);
    assert_ok(skv_seq_host_pages(c, s, &host));
    assert_int_equal(host, 0);
    read_pages(c, s, after);
    /* bit-identical, but for the two layer-1 tail pages the 3-token append wrote into */
    size_t pb = c->pools[0][0].page_bytes;
    assert_memory_equal(before, after, 130 * pb);
    assert_memory_equal(before + 131 * pb, after + 131 * pb, 4 * pb);

    /* Decode waits for its own sequences' moves only: while s is being fetched again,
     * another sequence decodes correctly; a fork of s taken mid-fetch shares the
     * arriving pages and its decode waits for them too. */
    skv_seq_id other, child;
    mirror mo = {.H = 2, .D = 64};
    assert_ok(skv_seq_create(c, &other));
    assert_ok(append_random(c, other, 0, 333, SKV_F32, &r, &mo));
    assert_ok(skv_seq_offload(c, s, 0, 2000));
    assert_ok(skv_seq_fetch(c, s, 0, 2000));
    const mirror *op = &mo;
    check_decode(c, 0, &other, &op, 1, SKV_F32, SKV_F32, &r);
    assert_ok(skv_seq_offload(c, s, 0, 2000));
    assert_ok(skv_seq_fetch(c, s, 0, 2000));
    assert_ok(skv_seq_fork(c, s, &child));
    check_decode(c, 0, &child, &mp, 1, SKV_F32, SKV_F32, &r);
    skv_seq_id both[2] = {other, s};
    const mirror *bm[2] = {&mo, &m};
    check_decode(c, 0, both, bm, 2, SKV_F32, SKV_F32, &r);
    mirror_free(&mo);

    /* a host budget too small: the offload is refused and nothing moves */
    skv_cache_desc d2 = geometry(1, 2, 1, 64, 16);
    d2.host_budget_bytes = 0;
    skv_cache *c2;
    assert_ok(skv_cache_create(ctx, &d2, &c2));
    skv_seq_id s2;
    mirror m2 = {.H = 1, .D = 64};
    assert_ok(skv_seq_create(c2, &s2));
    assert_ok(append_random(c2, s2, 0, 64, SKV_F32, &r, &m2));
    assert_int_equal(skv_seq_offload(c2, s2, 0, 64), SKV_ERR_OUT_OF_MEMORY);
    assert_ok(skv_seq_host_pages(c2, s2, &host));
    assert_int_equal(host, 0);
    assert_int_equal(skv_seq_offload(c2, s2, 10, 5), SKV_ERR_INVALID_ARG);
    mirror_free(&m2);
    skv_cache_destroy(c2);
    free(before);
    free(after);
    mirror_free(&m);
    skv_cache_destroy(c);
}

/* Appends from the caller's cl_mem with events, decode into the caller's cl_mem. */
static void test_cl_buffers_and_events(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(1, 4, 1, 128, 64);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    cl_context clc;
    cl_command_queue q;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, &q, NULL));
    test_rng r = {5};
    uint32_t n = 130;
    size_t count = (size_t)n * 128;
    float *k = malloc(count * 4), *v = malloc(count * 4);
    int32_t *pos = malloc(n * 4);
    for (size_t i = 0; i < count; i++) {
        k[i] = test_gauss(&r);
        v[i] = test_gauss(&r);
    }
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    cl_int e;
    size_t pad = 256; /* the data sits at an offset in the caller's buffers */
    cl_mem kb = clCreateBuffer(clc, CL_MEM_READ_ONLY, pad + count * 4, NULL, &e);
    cl_mem vb = clCreateBuffer(clc, CL_MEM_READ_ONLY, pad + count * 4, NULL, &e);
    cl_event wk, wv, appended, decoded;
    assert_int_equal(clEnqueueWriteBuffer(q, kb, CL_FALSE, pad, count * 4, k, 0, NULL, &wk), CL_SUCCESS);
    assert_int_equal(clEnqueueWriteBuffer(q, vb, CL_FALSE, pad, count * 4, v, 0, NULL, &wv), CL_SUCCESS);
    cl_event waits[2] = {wk, wv};
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_append_cl(c, s, 0, n, SKV_F32, kb, pad, vb, pad, pos, 2, waits, &appended));
    /* a buffer too small for the append is refused */
    assert_int_equal(skv_append_cl(c, s, 0, n + 1, SKV_F32, kb, pad, vb, pad, pos, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_append_cl(c, s, 0, n, SKV_F32, kb, pad, vb, pad, pos, 1, NULL, NULL), SKV_ERR_INVALID_ARG);

    float qv[4 * 128], out[4 * 128];
    for (int i = 0; i < 4 * 128; i++)
        qv[i] = test_gauss(&r);
    cl_mem qb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof qv, qv, &e);
    cl_mem ob = clCreateBuffer(clc, CL_MEM_WRITE_ONLY, 64 + sizeof out, NULL, &e);
    assert_ok(skv_attention_decode_cl(c, 0, &s, 1, SKV_F32, qb, 0, 0.08f, SKV_F32, ob, 64, 1, &appended, &decoded));
    assert_int_equal(clEnqueueReadBuffer(q, ob, CL_TRUE, 64, sizeof out, out, 1, &decoded, NULL), CL_SUCCESS);
    double ref[4 * 128];
    assert_int_equal(skv_ref_attention_decode(qv, k, v, n, 4, 1, 128, 0.08f, ref), 0);
    assert_true(skv_ref_rel_l2(ref, out, 4 * 128) <= 1e-3);
    assert_int_equal(skv_attention_decode_cl(c, 0, &s, 1, SKV_F32, qb, 8, 0.08f, SKV_F32, ob, 64, 0, NULL, NULL),
                     SKV_ERR_INVALID_ARG); /* q too short past its offset */
    clReleaseEvent(wk);
    clReleaseEvent(wv);
    clReleaseEvent(appended);
    clReleaseEvent(decoded);
    clReleaseMemObject(kb);
    clReleaseMemObject(vb);
    clReleaseMemObject(qb);
    clReleaseMemObject(ob);
    free(k);
    free(v);
    free(pos);
    skv_cache_destroy(c);
}

static uint64_t decode_objects(skv_cache *c, uint64_t *calls)
{
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    if (calls)
        *calls = st.decode_calls;
    return st.decode_cl_objects;
}

/* After warm-up, decode steps (an append, then decode of every layer, as a runtime runs
 * them) create no OpenCL object: the workspace's buffers and tables are reused. Interop
 * calls queued behind an unsignalled event return at once, and each decodes its own
 * prefix once the event is set: no staging slot is reused before its table went up. */
static void test_decode_creates_nothing(void **state)
{
    (void)state;
    skv_cache_desc d = geometry(2, 6, 2, 64, 16);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {77};
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    mirror m[2] = {{.H = 2, .D = 64}, {.H = 2, .D = 64}};
    const mirror *mp[2] = {&m[0], &m[1]};
    for (uint32_t l = 0; l < 2; l++) {
        assert_ok(append_random(c, s, l, 201, SKV_F32, &r, &m[l]));
        check_decode(c, l, &s, &mp[l], 1, SKV_F32, SKV_F32, &r); /* warm-up */
    }
    uint64_t calls0 = 0, objects0 = decode_objects(c, &calls0);
    assert_true(objects0 > 0);
    for (int step = 0; step < 37; step++)
        for (uint32_t l = 0; l < 2; l++) {
            assert_ok(append_random(c, s, l, 1, SKV_F16, &r, &m[l]));
            check_decode(c, l, &s, &mp[l], 1, step % 2 ? SKV_F16 : SKV_F32, SKV_F32, &r);
        }
    uint64_t calls = 0;
    assert_int_equal(decode_objects(c, &calls), objects0);
    assert_int_equal(calls, calls0 + 74);

    /* interop: 7 calls queued without a wait, more than the staging slots */
    cl_context clc;
    cl_command_queue q;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, &q, NULL));
    enum { N = 7 };
    const size_t per = 6 * 64;
    float *qv = malloc(N * per * 4), *out = malloc(N * per * 4);
    for (size_t i = 0; i < N * per; i++)
        qv[i] = test_gauss(&r);
    memset(out, 0xFF, N * per * 4);
    cl_int e;
    cl_mem qb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, N * per * 4, qv, &e);
    cl_mem ob = clCreateBuffer(clc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, N * per * 4, out, &e);
    /* the tokens appended between the calls, from device buffers: nothing waits */
    const uint32_t extra = 5 * N * (N - 1) / 2, row = 2 * 64;
    float *k = malloc(extra * row * 4), *v = malloc(extra * row * 4);
    int32_t *pos = malloc(extra * 4);
    for (size_t i = 0; i < (size_t)extra * row; i++) {
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r)));
        v[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r)));
    }
    for (uint32_t t = 0; t < extra; t++)
        pos[t] = (int32_t)(m[0].n + t);
    cl_mem kb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, extra * row * 4, k, &e);
    cl_mem vb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, extra * row * 4, v, &e);
    uint64_t lens[N];
    uint32_t done = 0;
    cl_event gate = clCreateUserEvent(clc, &e); /* the first call waits for it, so every later one queues */
    assert_int_equal(e, CL_SUCCESS);
    cl_event last = NULL;
    for (int i = 0; i < N; i++) {
        if (i) { /* a different length each call: each call's tables differ */
            uint32_t n = (uint32_t)i * 5;
            assert_ok(skv_append_cl(c, s, 0, n, SKV_F32, kb, done * row * 4, vb, done * row * 4, pos + done, 0, NULL,
                                    NULL));
            mirror_push(&m[0], k + (size_t)done * row, v + (size_t)done * row, pos + done, n);
            done += n;
        }
        lens[i] = m[0].n;
        uint64_t before = decode_objects(c, NULL);
        cl_event *ev = i == N - 1 ? &last : NULL;
        assert_ok(skv_attention_decode_cl(c, 0, &s, 1, SKV_F32, qb, i * per * 4, 0.125f, SKV_F32, ob, i * per * 4,
                                          i == 0, i == 0 ? &gate : NULL, ev));
        /* only the fence of a call whose caller takes no event */
        assert_true(decode_objects(c, NULL) - before <= (ev ? 0u : 1u));
    }
    cl_int status = CL_COMPLETE;
    assert_int_equal(clGetEventInfo(last, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL), CL_SUCCESS);
    assert_true(status > CL_COMPLETE); /* all of it waits for the gate */
    assert_int_equal(clSetUserEventStatus(gate, CL_COMPLETE), CL_SUCCESS);
    assert_int_equal(clEnqueueReadBuffer(q, ob, CL_TRUE, 0, N * per * 4, out, 1, &last, NULL), CL_SUCCESS);
    double *ref = malloc(per * sizeof *ref);
    for (int i = 0; i < N; i++) {
        size_t n = lens[i] * 2 * 64;
        float *kr = rounded_f16(m[0].k, n), *vr = rounded_f16(m[0].v, n);
        assert_int_equal(skv_ref_attention_decode(qv + i * per, kr, vr, lens[i], 6, 2, 64, 0.125f, ref), 0);
        double err = skv_ref_rel_l2(ref, out + i * per, per);
        if (!(err <= 2e-5))
            fail_msg("queued interop call %d (%llu tokens): relative L2 error %.3g", i, (unsigned long long)lens[i], err);
        free(kr);
        free(vr);
    }
    clReleaseEvent(last);
    clReleaseEvent(gate);
    clReleaseMemObject(kb);
    clReleaseMemObject(vb);
    free(k);
    free(v);
    free(pos);
    clReleaseMemObject(qb);
    clReleaseMemObject(ob);
    free(ref);
    free(qv);
    free(out);
    mirror_free(&m[0]);
    mirror_free(&m[1]);
    skv_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry_checks),
        cmocka_unit_test(test_append_matches_reference_layout),
        cmocka_unit_test(test_decode_shapes),
        cmocka_unit_test(test_fork_copy_on_write),
        cmocka_unit_test(test_out_of_memory_append_changes_nothing),
        cmocka_unit_test(test_nonfinite_inputs_refused),
        cmocka_unit_test(test_every_call_refuses_bad_handles),
        cmocka_unit_test(test_positions_in_any_order),
        cmocka_unit_test(test_offload_fetch),
        cmocka_unit_test(test_cl_buffers_and_events),
        cmocka_unit_test(test_decode_creates_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
