/* The synthetic KV model (see synth.h). All randomness is a hash of (seed, what, where),
 * so any token's K/V can be regenerated without storing it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Standard normal number i of stream `key`. */
static float gauss(uint64_t key, uint64_t i)
{
    uint64_t a = mix(key ^ mix(2 * i)), b = mix(key ^ mix(2 * i + 1));
    double u = ((a >> 11) + 0.5) * (1.0 / 9007199254740992.0), v = (b >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static uint64_t key_of(const synth_model *m, uint64_t what, uint64_t a, uint64_t b)
{
    return mix(m->seed ^ mix(what * 0x100000001b3ull ^ mix(a * 1000003ull + b)));
}

static void rope(float *x, uint32_t d, uint64_t pos)
{
    for (uint32_t i = 0; i < d / 2; i++) { /* half layout: pairs (i, i + d/2) */
        double w = pow(10000.0, -2.0 * i / d), a = (double)pos * w;
        float c = (float)cos(a), s = (float)sin(a), x0 = x[i], x1 = x[i + d / 2];
        x[i] = x0 * c - x1 * s;
        x[i + d / 2] = x0 * s + x1 * c;
    }
}

int synth_init(synth_model *m, uint32_t layers, uint32_t kv_heads, uint32_t q_heads, uint32_t head_dim,
               uint64_t tokens, uint32_t n_needles, uint32_t n_multikey_groups, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    m->layers = layers, m->kv_heads = kv_heads, m->q_heads = q_heads, m->head_dim = head_dim, m->seed = seed;
    m->n_sinks = 4;
    if (n_needles > 16)
        n_needles = 16;
    if (n_multikey_groups > (16 - n_needles) / 3)
        n_multikey_groups = (16 - n_needles) / 3;
    m->n_multikey = 3 * n_multikey_groups;
    m->n_needles = n_needles + m->n_multikey;
    size_t per = (size_t)layers * kv_heads * head_dim;
    m->mean = calloc(per, sizeof(float));
    m->scale = calloc(per, sizeof(float));
    m->sink = calloc(per, sizeof(float));
    m->needle = calloc(per * (m->n_needles ? m->n_needles : 1), sizeof(float));
    m->nvalue = calloc(per * (m->n_needles ? m->n_needles : 1), sizeof(float));
    if (!m->mean || !m->scale || !m->sink || !m->needle || !m->nvalue) {
        synth_free(m);
        return -1;
    }
    for (size_t i = 0; i < per; i++) {
        uint32_t ch = (uint32_t)(i % head_dim);
        m->mean[i] = 0.6f * gauss(key_of(m, 1, i / head_dim, 0), ch);
        m->scale[i] = (ch * 7919u + (uint32_t)(i / head_dim)) % 61 == 3 ? 6.0f : 1.0f; /* ~2 outlier channels per head */
        m->sink[i] = gauss(key_of(m, 2, i / head_dim, 0), ch);
    }
    for (uint32_t n = 0; n < m->n_needles; n++) {
        /* needles spread over the middle of the context, away from sinks and the recent window */
        m->needle_pos[n] = tokens / 8 + (uint64_t)((tokens * 3 / 4) * (n + 0.5) / m->n_needles);
        const uint32_t single = m->n_needles - m->n_multikey;
        for (size_t i = 0; i < per; i++) {
            float own = gauss(key_of(m, 3, n, i / head_dim), i % head_dim);
            if (n >= single) /* cosine ~0.81 with the other two keys of its group */
                own = 0.9f * gauss(key_of(m, 8, (n - single) / 3, i / head_dim), i % head_dim) + 0.436f * own;
            m->needle[n * per + i] = own;
            m->nvalue[n * per + i] = 3.0f * gauss(key_of(m, 4, n, i / head_dim), i % head_dim);
        }
    }
    return 0;
}

void synth_free(synth_model *m)
{
    free(m->mean);
    free(m->scale);
    free(m->sink);
    free(m->needle);
    free(m->nvalue);
    memset(m, 0, sizeof *m);
}

int synth_needle_at(const synth_model *m, uint64_t t)
{
    for (uint32_t n = 0; n < m->n_needles; n++)
        if (m->needle_pos[n] == t)
            return (int)n;
    return -1;
}

void synth_kv(const synth_model *m, uint32_t layer, uint64_t t0, uint32_t n, float *k, float *v)
{
    const uint32_t d = m->head_dim, H = m->kv_heads;
    const size_t per = (size_t)m->layers * H * d;
    for (uint32_t j = 0; j < n; j++) {
        uint64_t t = t0 + j;
        int needle = synth_needle_at(m, t);
        for (uint32_t h = 0; h < H; h++) {
            size_t lh = ((size_t)layer * H + h) * d;
            float *kt = k + ((size_t)j * H + h) * d, *vt = v + ((size_t)j * H + h) * d;
            uint64_t kk = key_of(m, 5, lh, t), kv = key_of(m, 6, lh, t);
            for (uint32_t i = 0; i < d; i++) {
                float z = gauss(kk, i);
                if (needle >= 0)
                    kt[i] = 2.5f * m->needle[needle * per + lh + i] + 0.2f * z;
                else if (t < m->n_sinks)
                    kt[i] = 2.0f * m->sink[lh + i] + 0.3f * z;
                else
                    kt[i] = m->mean[lh + i] + m->scale[lh + i] * z;
                vt[i] = needle >= 0 ? m->nvalue[needle * per + lh + i] : gauss(kv, i) + 0.1f;
            }
            rope(kt, d, t);
        }
    }
}

void synth_query(const synth_model *m, uint32_t layer, uint64_t t, int needle, uint64_t salt, float *q)
{
    const uint32_t d = m->head_dim, H = m->kv_heads, G = m->q_heads / m->kv_heads;
    const size_t per = (size_t)m->layers * H * d;
    for (uint32_t qh = 0; qh < m->q_heads; qh++) {
        size_t lh = ((size_t)layer * H + qh / G) * d;
        float *x = q + (size_t)qh * d;
        uint64_t kq = key_of(m, 7, lh * 131 + qh, t ^ (salt << 40));
        if (needle >= 0) {
            /* aimed at the needle's post-RoPE key: rotate its direction to the needle's position */
            for (uint32_t i = 0; i < d; i++)
                x[i] = 2.5f * m->needle[needle * per + lh + i] + 0.3f * gauss(kq, i);
            rope(x, d, m->needle_pos[needle]);
            continue;
        }
        for (uint32_t i = 0; i < d; i++) /* the keys' mean (local bias through RoPE) and the sinks' direction */
            x[i] = 1.5f * m->mean[lh + i] + 0.25f * m->sink[lh + i] + 0.8f * gauss(kq, i);
        rope(x, d, t);
    }
}
