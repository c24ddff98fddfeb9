/* SnapKV's score (kvpress SnapKVPress), the C reference: the attention of an observation
 * window of queries over the keys (causal by position), averaged over the window and the
 * GQA group, then pooled by skv_ref_snapkv_pool (src/snapkv.c, the library's). */
#include <math.h>
#include <stdlib.h>

#include "skv_ref.h"

int skv_ref_snapkv(const float *q, const int32_t *qpos, uint32_t w, uint32_t group, const float *k,
                   const int32_t *kpos, uint64_t n, uint32_t d, float *out)
{
    double *vote = calloc(n ? n : 1, sizeof *vote), *s = malloc((n ? n : 1) * sizeof *s);
    float *votes = malloc((n ? n : 1) * sizeof *votes);
    if (!vote || !s || !votes) {
        free(vote), free(s), free(votes);
        return -1;
    }
    int32_t window_start = qpos[0];
    for (uint32_t i = 0; i < w; i++)
        window_start = qpos[i] < window_start ? qpos[i] : window_start;
    const double scale = 1.0 / sqrt((double)d);
    for (uint32_t i = 0; i < w; i++)
        for (uint32_t g = 0; g < group; g++) {
            const float *qr = q + ((size_t)i * group + g) * d;
            double m = -INFINITY, l = 0;
            for (uint64_t t = 0; t < n; t++) {
                if (kpos[t] > qpos[i]) {
                    s[t] = -INFINITY;
                    continue;
                }
                double x = 0;
                for (uint32_t j = 0; j < d; j++)
                    x += (double)qr[j] * k[t * d + j];
                s[t] = x * scale;
                m = s[t] > m ? s[t] : m;
            }
            for (uint64_t t = 0; t < n; t++)
                l += s[t] == -INFINITY ? 0 : exp(s[t] - m);
            for (uint64_t t = 0; t < n; t++)
                if (s[t] != -INFINITY)
                    vote[t] += exp(s[t] - m) / l / ((double)w * group);
        }
    for (uint64_t t = 0; t < n; t++)
        votes[t] = (float)vote[t];
    int rc = skv_ref_snapkv_pool(votes, kpos, n, window_start, out);
    free(vote), free(s), free(votes);
    return rc;
}
