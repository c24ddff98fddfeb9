/* Retention scorers, the C reference (DESIGN.md §7 scorer table): the score of one key
 * given the sequence's key statistics. cl/score.cl computes the same on the device, from
 * F16 keys or from ADA codes. */
#include <math.h>

#include "skv_ref.h"

float skv_ref_score_key(skv_scorer scorer, const float *k, uint32_t d, const float *mean, const float *unit_mean,
                        int32_t position, uint32_t n_sink)
{
    double kk = 0, km = 0, mm = 0, ka = 0, aa = 0;
    for (uint32_t i = 0; i < d; i++) {
        kk += (double)k[i] * k[i];
        if (mean) {
            km += (double)k[i] * mean[i];
            mm += (double)mean[i] * mean[i];
        }
        if (unit_mean) {
            ka += (double)k[i] * unit_mean[i];
            aa += (double)unit_mean[i] * unit_mean[i];
        }
    }
    switch (scorer) {
    case SKV_SCORER_KNORM:
        return (float)-sqrt(kk);
    case SKV_SCORER_KEYDIFF:
        return kk > 0 && aa > 0 ? (float)(-ka / sqrt(kk * aa)) : 0.0f;
    case SKV_SCORER_MANIFOLD:
    case SKV_SCORER_MANIFOLD_WINDOWED: {
        double d2 = kk - 2 * km + mm;
        return (float)sqrt(d2 > 0 ? d2 : 0);
    }
    case SKV_SCORER_STREAMING:
        return position >= 0 && (uint32_t)position < n_sink ? INFINITY : (float)position;
    case SKV_SCORER_TRIATTENTION: /* needs the query statistics: skv_ref_triattention */
    case SKV_SCORER_SNAPKV:       /* needs the window: skv_ref_snapkv */
    case SKV_SCORER_OBSERVED:     /* accumulated by decode */
    case SKV_SCORER_NONE:
        break;
    }
    return 0.0f;
}
