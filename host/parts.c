/* The parts of a cache beyond its pages, each with its hooks: cache.c and seq.c run
 * them in this order (releases in reverse) and name none of them. */
#include "cache_internal.h"

const skvi_part skvi_parts[] = {
    {"ADA tables", skvi_ada_init, skvi_ada_release, NULL, NULL, NULL},
    {"decode kernels", skvi_cache_build_kernels, skvi_cache_release_kernels, NULL, NULL, NULL},
    {"scorers", skvi_score_init, skvi_score_release, NULL, NULL, NULL},
    {"key statistics", NULL, NULL, skvi_stats_alloc, skvi_stats_copy, skvi_stats_release},
    {"SnapKV windows", NULL, NULL, NULL, skvi_snap_copy, skvi_snap_release},
    {"observed attention", NULL, NULL, NULL, skvi_obs_copy, skvi_obs_release},
    {"kept scores", NULL, NULL, NULL, skvi_kept_scores_copy, skvi_kept_scores_release},
    {"HeteroCache", skvi_hetero_cache_init, skvi_hetero_cache_release, NULL, NULL, skvi_hetero_seq_release},
    {"RDR", skvi_rdr_init, skvi_rdr_release, NULL, NULL, NULL},
    {"RDR's distortion model", skvi_rdr_model_init, skvi_rdr_model_release, NULL, NULL, NULL},
};
const size_t skvi_part_count = sizeof skvi_parts / sizeof skvi_parts[0];
