/* C reference of decode attention (cl/decode_f16.cl + cl/decode_merge.cl): exact
 * softmax attention for one query, accumulated in double. */
#include <math.h>
#include <stdlib.h>

#include "skv_ref.h"

double skv_ref_rel_l2(const double *ref, const float *got, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

int skv_ref_attention_decode(const float *q, const float *k, const float *v, uint64_t n_tokens,
                             uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, float scale,
                             double *out)
{
    if (n_tokens == 0 || kv_heads == 0 || q_heads % kv_heads != 0)
        return -1;
    double *logit = malloc(n_tokens * sizeof *logit);
    if (!logit)
        return -1;
    uint32_t group = q_heads / kv_heads;
    for (uint32_t qh = 0; qh < q_heads; qh++) {
        uint32_t h = qh / group;
        const float *qv = q + (size_t)qh * head_dim;
        double m = -INFINITY;
        for (uint64_t t = 0; t < n_tokens; t++) {
            const float *kt = k + ((size_t)t * kv_heads + h) * head_dim;
            double s = 0;
            for (uint32_t d = 0; d < head_dim; d++)
                s += (double)qv[d] * kt[d];
            logit[t] = s * scale;
            if (logit[t] > m)
                m = logit[t];
        }
        double sum = 0;
        double *o = out + (size_t)qh * head_dim;
        for (uint32_t d = 0; d < head_dim; d++)
            o[d] = 0;
        for (uint64_t t = 0; t < n_tokens; t++) {
            double p = exp(logit[t] - m);
            sum += p;
            const float *vt = v + ((size_t)t * kv_heads + h) * head_dim;
            for (uint32_t d = 0; d < head_dim; d++)
                o[d] += p * vt[d];
        }
        for (uint32_t d = 0; d < head_dim; d++)
            o[d] /= sum;
    }
    free(logit);
    return 0;
}
