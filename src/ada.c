/* ADA key codes (DESIGN.md §5), the library's part: the Lloyd–Max radius codebook, the
 * sector tables, the randomized Walsh–Hadamard preconditioning and the per-query lookup
 * tables that give logits from codes (host/ada.c and host/score.c use them). The codes
 * themselves (fp16 norm, radius and angle codes per pair of coordinates, key encode and
 * decode, logits from codes) are the C reference of the kernels: src/ref/ref_ada.c.
 *
 * Bit-exactness with the kernels: after the transform (adds and subtracts in a fixed
 * order, then one multiply), every coding decision is a comparison of exactly rounded
 * products and sums against constant tables computed here and passed to the kernels
 * (no atan2, sqrt or division): the angle sector by signs of cross products with the
 * sector boundaries, the radius by rho^2 * d/2 against t_k^2 * n^2, the fp16 norm by
 * the exact squares of fp16 midpoints. Both sides build with contraction off
 * (-ffp-contract=off here, #pragma OPENCL FP_CONTRACT OFF in the kernels). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "skv_ref.h"


/* Density of u = rho * sqrt(d/2) / |k| for a direction uniform on the sphere:
 * rho^2 / |k|^2 ~ Beta(1, m - 1) with m = d/2, so f(u) = 2u (m-1)/m (1 - u^2/m)^(m-2). */
static double radius_pdf(double u, double m)
{
    double x = 1.0 - u * u / m;
    return x <= 0 ? 0.0 : 2.0 * u * (m - 1.0) / m * pow(x, m - 2.0);
}

/* Codebooks already solved in this process (each costs tens of ms; every cache with an
 * ADA tier needs one per tier), by (head_dim, radius_bits). The solve is deterministic,
 * so two threads solving the same one at once store the same values. */
typedef struct codebook_memo {
    uint32_t head_dim;
    unsigned radius_bits;
    float centroids[16], bounds[15];
} codebook_memo;
static codebook_memo memo[32];
static unsigned memo_n;
static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;

static int memo_find(uint32_t head_dim, unsigned radius_bits, float *centroids, float *bounds)
{
    int found = 0;
    pthread_mutex_lock(&memo_lock);
    for (unsigned i = 0; i < memo_n && !found; i++)
        if (memo[i].head_dim == head_dim && memo[i].radius_bits == radius_bits) {
            memcpy(centroids, memo[i].centroids, (1u << radius_bits) * sizeof *centroids);
            memcpy(bounds, memo[i].bounds, ((1u << radius_bits) - 1) * sizeof *bounds);
            found = 1;
        }
    pthread_mutex_unlock(&memo_lock);
    return found;
}

static void memo_store(uint32_t head_dim, unsigned radius_bits, const float *centroids, const float *bounds)
{
    pthread_mutex_lock(&memo_lock);
    if (memo_n < sizeof memo / sizeof memo[0]) { /* full: later ones are solved each time */
        codebook_memo *m = &memo[memo_n++];
        m->head_dim = head_dim;
        m->radius_bits = radius_bits;
        memcpy(m->centroids, centroids, (1u << radius_bits) * sizeof *centroids);
        memcpy(m->bounds, bounds, ((1u << radius_bits) - 1) * sizeof *bounds);
    }
    pthread_mutex_unlock(&memo_lock);
}

static void codebook_solve(uint32_t head_dim, unsigned radius_bits, float *centroids, float *bounds);

void skv_ref_ada_codebook(uint32_t head_dim, unsigned radius_bits, float *centroids, float *bounds)
{
    if (memo_find(head_dim, radius_bits, centroids, bounds))
        return;
    codebook_solve(head_dim, radius_bits, centroids, bounds);
    memo_store(head_dim, radius_bits, centroids, bounds);
}

static void codebook_solve(uint32_t head_dim, unsigned radius_bits, float *centroids, float *bounds)
{
    enum { GRID = 40000 };
    const double m = head_dim / 2.0, top = sqrt(m) < 8.0 ? sqrt(m) : 8.0, du = top / GRID;
    const unsigned L = 1u << radius_bits;
    double c[16], b[16];
    /* the density on the grid, once (pow is the cost); without memory, on the fly */
    double *pdf = malloc(GRID * sizeof *pdf);
    for (int i = 0; pdf && i < GRID; i++)
        pdf[i] = radius_pdf((i + 0.5) * du, m);
#define PDF(i) (pdf ? pdf[i] : radius_pdf(((i) + 0.5) * du, m))
    /* start at the levels' conditional means between quantiles */
    double mass = 0, total = 0;
    for (int i = 0; i < GRID; i++)
        total += PDF(i) * du;
    unsigned level = 0;
    double acc = 0, accu = 0;
    for (int i = 0; i < GRID && level < L; i++) {
        double u = (i + 0.5) * du, p = PDF(i) * du / total;
        mass += p;
        acc += p;
        accu += p * u;
        if (mass >= (level + 1.0) / L || i == GRID - 1) {
            c[level++] = accu / acc;
            acc = accu = 0;
        }
    }
    for (; level < L; level++)
        c[level] = c[level - 1];
    for (int it = 0; it < 300; it++) { /* Lloyd: boundaries at midpoints, centroids at conditional means */
        for (unsigned k = 0; k + 1 < L; k++)
            b[k] = 0.5 * (c[k] + c[k + 1]);
        double s[16] = {0}, w[16] = {0};
        unsigned k = 0;
        for (int i = 0; i < GRID; i++) {
            double u = (i + 0.5) * du, p = PDF(i);
            while (k + 1 < L && u >= b[k])
                k++;
            s[k] += p * u;
            w[k] += p;
        }
        for (k = 0; k < L; k++)
            if (w[k] > 0)
                c[k] = s[k] / w[k];
    }
#undef PDF
    free(pdf);
    for (unsigned k = 0; k < L; k++)
        centroids[k] = (float)c[k];
    for (unsigned k = 0; k + 1 < L; k++)
        bounds[k] = (float)(0.5 * (c[k] + c[k + 1]));
}

void skv_ref_ada_params_init(skv_ref_ada_params *p, uint32_t head_dim, unsigned radius_bits, unsigned angle_bits)
{
    memset(p, 0, sizeof *p);
    p->head_dim = head_dim;
    p->radius_bits = radius_bits;
    p->angle_bits = angle_bits;
    p->pair_bits = radius_bits + angle_bits;
    p->key_words = (head_dim / 2 * p->pair_bits + 31) / 32;
    float bounds[15];
    skv_ref_ada_codebook(head_dim, radius_bits, p->radius, bounds);
    for (unsigned k = 0; k + 1 < (1u << radius_bits); k++)
        p->radius_bound_sq[k] = bounds[k] * bounds[k];
    const unsigned S = 1u << angle_bits;
    const double two_pi = 6.283185307179586476925286766559;
    for (unsigned k = 0; k < S / 2; k++) { /* boundary directions k * 2pi/S in [0, pi) */
        p->bound_cos[k] = (float)cos(k * two_pi / S);
        p->bound_sin[k] = (float)sin(k * two_pi / S);
    }
    for (unsigned c = 0; c < S; c++) { /* decoded at sector centres -pi + (c + 1/2) 2pi/S */
        p->centre_cos[c] = (float)cos(-two_pi / 2 + (c + 0.5) * two_pi / S);
        p->centre_sin[c] = (float)sin(-two_pi / 2 + (c + 0.5) * two_pi / S);
    }
    p->transform_scale = (float)(1.0 / sqrt((double)head_dim));
    p->rho_scale = sqrtf(2.0f / (float)head_dim);
}

void skv_ref_ada_signs(uint32_t layer, uint32_t kv_head, uint32_t head_dim, int8_t *signs)
{
    skv_ref_ada_signs_seeded(0, layer, kv_head, head_dim, signs);
}

void skv_ref_ada_signs_seeded(uint64_t seed, uint32_t layer, uint32_t kv_head, uint32_t head_dim, int8_t *signs)
{
    uint64_t x = 0x5EED5EED12345678ull ^ ((uint64_t)layer << 32) ^ ((uint64_t)kv_head * 0x9E3779B97F4A7C15ull) ^
                 (seed * 0xD1B54A32D192ED03ull); /* seed 0: the built-in draw */
    for (uint32_t i = 0; i < head_dim; i += 64) {
        x += 0x9E3779B97F4A7C15ull; /* splitmix64 */
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        for (uint32_t b = 0; b < 64 && i + b < head_dim; b++)
            signs[i + b] = (z >> b) & 1 ? -1 : 1;
    }
}

void skv_ref_ada_transform(const skv_ref_ada_params *p, const int8_t *signs, const float *x, float *y)
{
    const uint32_t d = p->head_dim;
    for (uint32_t i = 0; i < d; i++)
        y[i] = signs[i] < 0 ? -x[i] : x[i];
    for (uint32_t h = 1; h < d; h *= 2) /* in-place butterflies, the kernels' order */
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = y[j], b = y[j + h];
                y[j] = a + b;
                y[j + h] = a - b;
            }
    for (uint32_t i = 0; i < d; i++)
        y[i] = y[i] * p->transform_scale;
}

void skv_ref_ada_query_table(const skv_ref_ada_params *p, const int8_t *signs, const float *q, float *table)
{
    float y[256];
    skv_ref_ada_transform(p, signs, q, y);
    const unsigned S = 1u << p->angle_bits;
    for (uint32_t j = 0; j < p->head_dim / 2; j++)
        for (unsigned c = 0; c < S; c++)
            table[j * S + c] = y[2 * j] * p->centre_cos[c] + y[2 * j + 1] * p->centre_sin[c];
}
