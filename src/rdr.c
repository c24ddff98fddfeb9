/* Rate-Distortion Retention (DESIGN.md §7): for the candidates of one (layer, kv-head),
 * choose per token F16, an ADA tier or drop, minimising sum u D subject to the bytes
 * after packing (page rounding included) staying within a budget.
 *   skv_rdr_solve:      Lagrangian — for a multiplier lambda every candidate picks
 *                       argmin u D_t + lambda R_t; lambda is bisected to the budget.
 *   skv_ref_rdr_greedy: the reference (the Spherical KV code's form): start every token
 *                       at its best option and downgrade the cheapest distortion per byte
 *                       first until the budget holds.
 * A token already in a lossy tier may stay, move to a lower tier or be dropped, never
 * move up. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "skv_ref.h"

#define DROP SKV_RDR_DROP

static double distortion(const skv_rdr_problem *p, const skv_rdr_item *it, unsigned opt)
{
    if (opt == DROP)
        return it->u; /* the token's share of attention is lost */
    return it->u * (p->mse_k[opt] * it->key_energy + p->mse_v[opt]);
}

/* May `it` end in option opt? */
static int allowed(const skv_rdr_problem *p, const skv_rdr_item *it, unsigned opt)
{
    if (opt == DROP)
        return 1;
    if (!(p->tiers & (1u << opt)))
        return 0;
    return it->current == SKV_TIER_F16 || opt >= it->current; /* never up from a lossy code */
}

/* Packed bytes from the tokens per option (count[DROP] unused). */
static uint64_t bytes_of(const skv_rdr_problem *p, const uint64_t *count)
{
    uint64_t bytes = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        uint64_t c = count[t] + p->fixed[t]; /* protected tokens share the tier's pages */
        bytes += (c + p->page_tokens - 1) / p->page_tokens * p->page_bytes[t];
    }
    return bytes;
}

static void count_options(const skv_rdr_problem *p, const uint8_t *choice, uint64_t *count)
{
    memset(count, 0, (SKV_TIER_COUNT + 1) * sizeof *count);
    for (uint64_t i = 0; i < p->n; i++)
        count[choice[i]]++;
}

uint64_t skv_rdr_bytes(const skv_rdr_problem *p, const uint8_t *choice)
{
    uint64_t count[SKV_TIER_COUNT + 1];
    count_options(p, choice, count);
    return bytes_of(p, count);
}

double skv_rdr_distortion(const skv_rdr_problem *p, const uint8_t *choice)
{
    double d = 0;
    for (uint64_t i = 0; i < p->n; i++)
        d += distortion(p, &p->items[i], choice[i]);
    return d;
}

/* The option of one item for lambda, in float with a fixed order of operations (and no
 * contraction) so that cl/rdr.cl's rdr_choose computes exactly the same: the device
 * solver's choices equal these. */
unsigned skv_rdr_option(const skv_rdr_problem *p, const skv_rdr_item *it, float lambda)
{
    unsigned best = DROP;
    float best_cost = it->u; /* drop */
    for (unsigned t = 0; t < SKV_TIER_COUNT; t++) { /* in order of quality: ties keep the better */
        if (!allowed(p, it, t))
            continue;
        float d = ((float)p->mse_k[t] * it->key_energy + (float)p->mse_v[t]) * it->u;
        float cost = d + lambda * (float)p->token_bytes[t];
        if (best == DROP ? cost <= best_cost : cost < best_cost) {
            best_cost = cost;
            best = t;
        }
    }
    return best;
}

static int host_choose(void *user, float lambda, uint8_t *choice, uint64_t *count)
{
    const skv_rdr_problem *p = user;
    memset(count, 0, (SKV_TIER_COUNT + 1) * sizeof *count);
    for (uint64_t i = 0; i < p->n; i++) {
        unsigned o = skv_rdr_option(p, &p->items[i], lambda);
        count[o]++;
        if (choice)
            choice[i] = (uint8_t)o;
    }
    return 0;
}

/* ---- downgrades by distortion per byte: the greedy reference, and the solver's finish ---- */
typedef struct step {
    double cost; /* delta D / delta bytes of the next downgrade */
    uint64_t item;
    unsigned to;
} step;

static void heap_push(step *h, size_t *n, step s)
{
    size_t i = (*n)++;
    h[i] = s;
    while (i > 0 && h[(i - 1) / 2].cost > h[i].cost) {
        step t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static step heap_pop(step *h, size_t *n)
{
    step top = h[0];
    h[0] = h[--(*n)];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && h[l].cost < h[m].cost)
            m = l;
        if (r < *n && h[r].cost < h[m].cost)
            m = r;
        if (m == i)
            break;
        step t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

/* The next cheaper allowed option after `from`, on the lower convex hull of the item's
 * (rate, distortion) options (so each step has the best distortion per byte). */
static int next_step(const skv_rdr_problem *p, uint64_t i, unsigned from, step *out)
{
    const skv_rdr_item *it = &p->items[i];
    double r0 = from == DROP ? 0 : p->token_bytes[from], d0 = distortion(p, it, from);
    int found = 0;
    for (unsigned t = from + 1; t <= DROP; t++) {
        if (t < SKV_TIER_COUNT && !allowed(p, it, t))
            continue;
        double r = t == DROP ? 0 : p->token_bytes[t], dr = r0 - r;
        if (dr <= 0)
            continue;
        double c = (distortion(p, it, t) - d0) / dr;
        if (!found || c < out->cost) {
            *out = (step){c, i, t};
            found = 1;
        }
    }
    return found;
}

/* From `choice`, downgrades the step with the least distortion per byte first until the
 * packed bytes fit. 0, -1 (cannot fit), -2 (out of memory). */
static int downgrade_until_fits(const skv_rdr_problem *p, uint8_t *choice)
{
    step *heap = malloc((p->n ? p->n : 1) * sizeof *heap);
    if (!heap)
        return -2;
    size_t n = 0;
    for (uint64_t i = 0; i < p->n; i++) {
        step s;
        if (choice[i] != DROP && next_step(p, i, choice[i], &s))
            heap_push(heap, &n, s);
    }
    uint64_t count[SKV_TIER_COUNT + 1];
    count_options(p, choice, count);
    while (bytes_of(p, count) > p->budget && n > 0) {
        step s = heap_pop(heap, &n);
        count[choice[s.item]]--;
        count[s.to]++;
        choice[s.item] = (uint8_t)s.to;
        step next;
        if (s.to != DROP && next_step(p, s.item, s.to, &next))
            heap_push(heap, &n, next);
    }
    free(heap);
    return skv_rdr_bytes(p, choice) <= p->budget ? 0 : -1;
}

int skv_ref_rdr_greedy(const skv_rdr_problem *p, uint8_t *choice)
{
    for (uint64_t i = 0; i < p->n; i++) { /* every token at its best option */
        unsigned best = DROP;
        for (unsigned t = 0; t < SKV_TIER_COUNT && best == DROP; t++)
            if (allowed(p, &p->items[i], t))
                best = t;
        choice[i] = (uint8_t)best;
    }
    return downgrade_until_fits(p, choice);
}

/* Bytes without page rounding, times page_tokens (exact in integers, as cl/rdr.cl's
 * rdr_search computes it): non-increasing in lambda, so it can be bisected. */
static uint64_t unrounded(const skv_rdr_problem *p, const uint64_t *count)
{
    uint64_t b = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        b += count[t] * p->page_bytes[t];
    return b;
}

typedef struct upgrade {
    double gain; /* distortion removed per byte added */
    uint64_t item;
    unsigned to;
} upgrade;

/* Whether x comes before y: the most distortion removed per byte first, then the lower
 * item, then the better option (a total order: the result does not depend on a sort's
 * stability). */
static int before(const upgrade *x, const upgrade *y)
{
    if (x->gain != y->gain)
        return x->gain > y->gain;
    if (x->item != y->item)
        return x->item < y->item;
    return x->to < y->to;
}

static void sift_down(upgrade *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(&h[l], &h[m]))
            m = l;
        if (r < n && before(&h[r], &h[m]))
            m = r;
        if (m == i)
            return;
        upgrade t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Whether any one-step move from option `from` to a better `to` still fits at `count`:
 * when none does, no later upgrade can succeed (a failed one changes nothing). */
static int any_fits(const skv_rdr_problem *p, uint64_t *count)
{
    for (unsigned from = 1; from <= DROP; from++)
        for (unsigned to = 0; to < from && to < SKV_TIER_COUNT; to++) {
            if (!count[from] || !(p->tiers & (1u << to)))
                continue;
            count[from]--, count[to]++;
            const int fits = bytes_of(p, count) <= p->budget;
            count[from]++, count[to]--;
            if (fits)
                return 1;
        }
    return 0;
}

/* Spends what page rounding left of the budget: one-step upgrades, the most distortion
 * removed per byte first, each kept only if the packed bytes still fit. The upgrades come
 * off a heap and stop once no move of any kind fits, so the few that can succeed cost
 * little and the many that cannot are never ordered. */
static int fill(const skv_rdr_problem *p, uint8_t *choice)
{
    upgrade *u = malloc((p->n ? p->n : 1) * SKV_TIER_COUNT * sizeof *u); /* up to 4 per item */
    if (!u)
        return -2;
    size_t n = 0;
    for (uint64_t i = 0; i < p->n; i++) {
        const skv_rdr_item *it = &p->items[i];
        unsigned from = choice[i];
        double r0 = from == DROP ? 0.0 : p->token_bytes[from], d0 = distortion(p, it, from);
        for (unsigned t = 0; t < from && t < SKV_TIER_COUNT; t++) /* every better option */
            if (allowed(p, it, t) && p->token_bytes[t] > r0) {
                u[n++] = (upgrade){(d0 - distortion(p, it, t)) / (p->token_bytes[t] - r0), i, t};
            }
    }
    for (size_t i = n / 2; i-- > 0;)
        sift_down(u, n, i);
    uint64_t count[SKV_TIER_COUNT + 1];
    count_options(p, choice, count);
    for (int open = any_fits(p, count); open && n > 0;) {
        const upgrade top = u[0];
        u[0] = u[--n];
        sift_down(u, n, 0);
        uint8_t was = choice[top.item];
        if (top.to >= was) /* already upgraded further */
            continue;
        count[was]--;
        count[top.to]++;
        if (bytes_of(p, count) <= p->budget) {
            choice[top.item] = (uint8_t)top.to;
            open = any_fits(p, count);
        } else {
            count[top.to]--;
            count[was]++;
        }
    }
    free(u);
    return 0;
}

int skv_rdr_finish(const skv_rdr_problem *p, uint8_t *choice)
{
    int rc = downgrade_until_fits(p, choice);
    if (rc == 0)
        rc = fill(p, choice);
    if (rc == 0)
        rc = skv_rdr_bytes(p, choice) <= p->budget ? 0 : -1;
    return rc;
}

/* The solver as a sequence of requests: choose(lambda) with the counts (and the choices
 * when asked) fed back. Bracket lambda (in float, the backends' arithmetic) on the
 * unrounded bytes against the budget, by factors of 4 from 1, then bisect it on the
 * float's bit pattern, a nearly geometric midpoint (lambda spans many decades) that
 * integer arithmetic computes the same everywhere, until the bytes at the two ends are
 * within a page of the largest tier; lambda_lo's choice, the best that did not fit, is
 * then finished by the cheapest downgrades (page rounding makes the last steps a
 * knapsack over whole pages), and any slack goes to the best upgrades. Every decision
 * is in integers or exact float operations, so cl/rdr.cl's rdr_search, which runs this
 * whole search in one kernel, requests the same lambdas and makes the same choices. */
enum { S_ZERO, S_HI, S_DOWN, S_UP, S_BISECT, S_FINAL, S_DONE = SKV_RDR_SEARCH_DONE };

static void request(skv_rdr_search *s, int state, float lambda, int want_choice)
{
    s->state = state;
    s->lambda = lambda;
    s->want_choice = want_choice;
}

static void finish_bracket(skv_rdr_search *s);

/* Lower-bound search upwards: until the bytes fit (at most 120 factors of 4). */
static void up(skv_rdr_search *s)
{
    if (s->i < 120 && s->b_hi > s->target) {
        s->lo = s->hi, s->b_lo = s->b_hi;
        s->hi *= 4.0f;
        request(s, S_UP, s->hi, 0);
    } else {
        s->i = 0;
        finish_bracket(s);
    }
}

/* Bisection (at most 64 steps) while the two ends are more than a page apart, then the
 * final choice at lambda_lo. */
static void finish_bracket(skv_rdr_search *s)
{
    if (s->i < 64 && (s->b_lo == UINT64_MAX || s->b_lo - s->b_hi > s->page)) {
        union {
            float f;
            uint32_t u;
        } lo = {s->lo}, hi = {s->hi}, mid;
        mid.u = lo.u + (hi.u - lo.u) / 2; /* positive floats: their order is their bits' */
        if (s->lo == 0.0f)
            mid.f = 0.5f * s->hi;
        if (!(mid.f <= s->lo || mid.f >= s->hi)) {
            s->x = mid.f;
            request(s, S_BISECT, mid.f, 0);
            return;
        }
    }
    request(s, S_FINAL, s->lo, 1);
}

void skv_rdr_search_begin(skv_rdr_search *s, const skv_rdr_problem *p)
{
    (void)p;
    memset(s, 0, sizeof *s);
    request(s, S_ZERO, 0.0f, 1);
}

int skv_rdr_search_step(skv_rdr_search *s, const skv_rdr_problem *p, const uint64_t *count, uint8_t *choice)
{
    const uint64_t b = unrounded(p, count);
    switch (s->state) {
    case S_ZERO:
        if (bytes_of(p, count) <= p->budget) {
            s->rc = 0;
            break;
        }
        memset(choice, DROP, p->n); /* everything dropped must fit, or nothing does */
        if (skv_rdr_bytes(p, choice) > p->budget) {
            s->rc = -1;
            break;
        }
        s->target = p->budget * p->page_tokens;
        s->page = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            s->page = p->page_bytes[t] > s->page ? p->page_bytes[t] : s->page;
        s->page *= p->page_tokens;
        s->lo = 0.0f, s->hi = 1.0f, s->b_lo = UINT64_MAX;
        if (b > s->target) /* else only the page rounding is over: lambda 0, then the finish */
            request(s, S_HI, s->hi, 0);
        else
            request(s, S_FINAL, s->lo, 1);
        return 1;
    case S_HI:
        s->b_hi = b;
        if (b <= s->target) { /* fits: down until it does not (bytes tend to those at 0) */
            s->x = s->hi * 0.25f;
            if (s->x > 0.0f)
                request(s, S_DOWN, s->x, 0);
            else
                finish_bracket(s);
        } else { /* does not fit: up until it does */
            s->i = 0;
            up(s);
        }
        return 1;
    case S_DOWN:
        if (b > s->target) {
            s->lo = s->x, s->b_lo = b;
            finish_bracket(s);
        } else {
            s->hi = s->x, s->b_hi = b;
            s->x *= 0.25f;
            if (s->x > 0.0f)
                request(s, S_DOWN, s->x, 0);
            else
                finish_bracket(s);
        }
        return 1;
    case S_UP:
        s->b_hi = b;
        s->i++;
        up(s);
        return 1;
    case S_BISECT:
        if (b <= s->target)
            s->hi = s->x, s->b_hi = b;
        else
            s->lo = s->x, s->b_lo = b;
        s->i++;
        finish_bracket(s);
        return 1;
    case S_FINAL:
        s->rc = skv_rdr_finish(p, choice);
        break;
    default:
        s->rc = -2;
        break;
    }
    s->state = S_DONE;
    return 0;
}

int skv_rdr_solve_with(const skv_rdr_problem *p, const skv_rdr_backend *be, uint8_t *choice)
{
    skv_rdr_search s;
    uint64_t count[SKV_TIER_COUNT + 1];
    skv_rdr_search_begin(&s, p);
    do {
        if (be->choose(be->user, s.lambda, s.want_choice ? choice : NULL, count) != 0)
            return -2;
    } while (skv_rdr_search_step(&s, p, count, choice));
    return s.rc;
}

int skv_rdr_solve(const skv_rdr_problem *p, uint8_t *choice)
{
    skv_rdr_backend be = {host_choose, (void *)p};
    return skv_rdr_solve_with(p, &be, choice);
}

/* ---- the uniform allocations, checked against the solver's ---- */

typedef struct by_u {
    float u;
    uint32_t i;
} by_u;

static int by_utility(const void *a, const void *b) /* ascending utility, then index */
{
    const by_u *x = a, *y = b;
    return x->u < y->u ? -1 : x->u > y->u ? 1 : (x->i > y->i) - (x->i < y->i);
}

int skv_rdr_uniform_check(const skv_rdr_problem *p, uint8_t *choice)
{
    if (p->n == 0 || p->n > UINT32_MAX)
        return 0;
    by_u *order = malloc(p->n * sizeof *order);
    uint8_t *best = malloc(p->n), *cand = malloc(p->n);
    if (!order || !best || !cand) {
        free(order), free(best), free(cand);
        return -2;
    }
    int sorted = 0; /* the drop order, made when a tier first needs it */
    double best_d = skv_rdr_distortion(p, choice);
    int replaced = 0;
    for (unsigned t = 0; t < SKV_TIER_COUNT; t++) {
        if (!(p->tiers & (1u << t)))
            continue;
        uint64_t count[SKV_TIER_COUNT + 1] = {0};
        double d = 0;
        for (uint64_t i = 0; i < p->n; i++) {
            cand[i] = (uint8_t)(allowed(p, &p->items[i], t) ? t : p->items[i].current);
            count[cand[i]]++;
            d += distortion(p, &p->items[i], cand[i]);
        }
        if (!sorted && bytes_of(p, count) > p->budget) {
            for (uint64_t i = 0; i < p->n; i++)
                order[i] = (by_u){p->items[i].u, (uint32_t)i};
            qsort(order, p->n, sizeof *order, by_utility);
            sorted = 1;
        }
        for (uint64_t k = 0; k < p->n && bytes_of(p, count) > p->budget; k++) { /* least utility first */
            const uint32_t i = order[k].i;
            count[cand[i]]--;
            d += distortion(p, &p->items[i], DROP) - distortion(p, &p->items[i], cand[i]);
            cand[i] = DROP;
        }
        if (bytes_of(p, count) <= p->budget && d < best_d * (1 - 1e-9)) {
            best_d = d;
            memcpy(best, cand, p->n);
            replaced = 1;
        }
    }
    if (replaced)
        memcpy(choice, best, p->n);
    free(order), free(best), free(cand);
    return replaced;
}
