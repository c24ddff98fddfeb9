/* `skv longeval`: long-context retrieval on a real model (docs/longeval.md), with the
 * protocol of RULER as kvpress runs it: per sample, a context of real prose with needles
 * in it is prefilled once by a dense (F16) cache whose keys, values and last queries are
 * captured (examples/llama: llm_session_capture); every policy then gets that same
 * prefix (llm_session_load_prefix: skv_append, then its one compression) and answers the
 * question, teacher-forced on the gold answer: exact match when every answer token is
 * the argmax given the gold prefix (what greedy decoding would produce), and the mean
 * loss of the answer tokens. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llama_common.h"
#include "skv_tool.h"
#include "svg.h"

#define MAX_LIST 32
#define MAX_POLICIES 64
#define MAX_NEEDLES 4

void usage_longeval(FILE *out)
{
    fprintf(out,
            "usage: skv longeval --model FILE [--filler FILE] [--tasks T,..] [--lengths N,..] [--depths P,..]\n"
            "                    [--samples N] [--seed S] [--policy P]... [--budget F]... [--scorer S]...\n"
            "                    [--mode M]... [--rule R]... [--recent N]... [--window N] [--query-aware]\n"
            "                    [--space-in-question]\n"
            "                    [--chunk N] [--json FILE] [--svg PREFIX] [--device SEL]\n"
            "  Long-context retrieval (RULER's needle tasks, kvpress's protocol) on a Llama-architecture\n"
            "  GGUF: per sample one dense prefill whose keys and values are captured, then each policy\n"
            "  loads that prefix, compresses it once and answers the question teacher-forced on the gold\n"
            "  answer (exact match: every answer token is the argmax; and the answer's mean loss).\n"
            "  Accuracy counts the samples the dense cache answers; docs/longeval.md.\n"
            "  --model FILE    the GGUF (default $SKV_MODEL)\n"
            "  --filler FILE   prose the needles hide in (default filler.txt beside the model, which\n"
            "                  tools/bootstrap.sh model writes)\n"
            "  --tasks T,..    passkey, single, multikey, multivalue (default all)\n"
            "  --lengths N,..  context tokens (default 1024,2048,3072)\n"
            "  --depths P,..   the needle's position in the filler, percent (default 0,25,50,75,100)\n"
            "  --samples N     per (task, length, depth), each with its own filler offset and needles\n"
            "                  (default 2)\n"
            "  --seed S        draws words, numbers and offsets (default 1)\n"
            "  --policy P      a4v8, a3v4, a2v2: uniform ADA (every full page but the first outside\n"
            "                  the last 128 tokens), repeatable; f16 (dense) always runs\n"
            "  --budget F      RDR under F of the F16 bytes, repeatable (default 0.25 and 0.125 when\n"
            "                  neither --budget nor --policy is given), crossed with:\n"
            "  --scorer S      keydiff, knorm, manifold, manifold_windowed, streaming, snapkv,\n"
            "                  triattention (calibrated on the sample's window queries), observed\n"
            "                  (repeatable; default keydiff and snapkv)\n"
            "  --mode M        rdr (F16, ADA tiers or drop per token) or drop (F16 or drop),\n"
            "                  repeatable (default both)\n"
            "  --rule R        uniform, pyramid (PyramidKV), adakv (AdaKV), repeatable (default uniform)\n"
            "  --recent N      RDR keeps the last N positions F16, repeatable (default 128, the library's)\n"
            "  --window N      captured queries per layer: SnapKV's observation window and\n"
            "                  TriAttention's calibration (default 64)\n"
            "  --query-aware   the question (but its last token) is prefilled with the context and\n"
            "                  compressed with it: the captured window is the question's (SnapKV's\n"
            "                  protocol); default: compression before the question (kvpress's)\n"
            "  --space-in-question  the space before an answer's first digit ends the question\n"
            "                  instead (it is then not scored; docs/longeval.md)\n"
            "  --chunk N       prefill tokens per matrix product (default 128)\n"
            "  --json FILE     every (task, length, depth, sample, policy) record\n"
            "  --svg PREFIX    PREFIX-<policy>.svg: accuracy by length and depth, one per policy\n");
}

/* ---- the tasks --------------------------------------------------------------------------- */

enum { T_PASSKEY, T_SINGLE, T_MULTIKEY, T_MULTIVALUE, T_COUNT };
static const char *const task_names[T_COUNT] = {"passkey", "single", "multikey", "multivalue"};

static const char *const instruction = "There is important information hidden inside a lot of irrelevant text. "
                                       "Find it and memorize it. I will quiz you about the important information "
                                       "there.\n\n";

static const char *const words[] = {
    "apple",   "river",   "candle",  "garden",  "window",  "mountain", "pencil",  "violin",  "harbor",  "lantern",
    "meadow",  "rocket",  "saddle",  "tiger",   "velvet",  "whistle",  "anchor",  "blanket", "castle",  "dolphin",
    "engine",  "falcon",  "glacier", "hammer",  "island",  "jacket",   "kettle",  "ladder",  "marble",  "needle",
    "orchard", "pepper",  "quarry",  "ribbon",  "sparrow", "teapot",   "umbrella", "valley", "walnut",  "yogurt",
    "bicycle", "cabinet", "dragon",  "feather", "guitar",  "helmet",   "igloo",   "jungle",  "koala",   "lemon",
    "magnet",  "nutmeg",  "oyster",  "panther", "quilt",   "raccoon",  "sunflower", "tulip", "volcano", "wizard"};
#define N_WORDS (sizeof words / sizeof words[0])

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t rng_next(rng *r) { return mix64(r->s++ * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull); }
static uint32_t rng_below(rng *r, uint32_t n) { return (uint32_t)(rng_next(r) % n); }

/* The filler: its tokens, and which of them end a sentence or a line (a needle goes
 * after one). */
typedef struct filler {
    int32_t *ids;
    size_t n;
    uint8_t *ends;
} filler;

typedef struct sample {
    int32_t *ctx; /* the context: instruction, filler with the needles */
    size_t n_ctx;
    int32_t *qa; /* the question, then the gold answer */
    size_t n_q, n_a;
    char answer[192];
    uint32_t needle_at[MAX_NEEDLES]; /* context index where each needle starts, in text order */
    int n_needles;
} sample;

static void sample_free(sample *s)
{
    free(s->ctx), free(s->qa);
    memset(s, 0, sizeof *s);
}

/* --query-aware: the question but its last token ends the context (so the dense prefill
 * captures it and every policy compresses it with the context, the window's queries
 * being the question's: SnapKV's protocol); the last token then predicts the answer's
 * first. 0, or -1 out of memory. */
static int question_into_context(sample *s)
{
    const size_t m = s->n_q - 1;
    int32_t *ctx = realloc(s->ctx, (s->n_ctx + m) * sizeof *ctx);
    if (!ctx)
        return -1;
    memcpy(ctx + s->n_ctx, s->qa, m * sizeof *ctx);
    memmove(s->qa, s->qa + m, (1 + s->n_a) * sizeof *s->qa);
    s->ctx = ctx, s->n_ctx += m, s->n_q = 1;
    return 0;
}

/* Builds one sample: needles (their texts, depths as fractions of the filler) placed in
 * `length` context tokens. 0, or -1 with a message. */
static int build_sample(const llama_env *env, const filler *f, int task, uint32_t length, uint32_t depth,
                        uint32_t index, uint64_t seed, int space_in_question, sample *out)
{
    memset(out, 0, sizeof *out);
    rng r = {mix64(seed ^ mix64(((uint64_t)task << 40) ^ ((uint64_t)length << 8) ^ depth) ^ mix64(index + 0x51ull))};
    char needle[MAX_NEEDLES][160], question[256];
    double frac[MAX_NEEDLES];
    int n_needles = 1, order[MAX_NEEDLES] = {0};
    uint32_t number[MAX_NEEDLES];
    const double f0 = depth / 100.0;
    frac[0] = f0;
    if (task != T_PASSKEY)
        n_needles = task == T_SINGLE ? 1 : task == T_MULTIKEY ? 4 : 3;
    /* the asked needle (0) at the depth, the others spread evenly after it (wrapping) */
    for (int i = 1; i < n_needles; i++)
        frac[i] = fmod(f0 + (double)i / n_needles, 1.0);
    for (int i = 0; i < n_needles; i++) /* text order: by depth, the asked needle first on a tie */
        order[i] = i;
    for (int i = 1; i < n_needles; i++)
        for (int j = i; j > 0 && frac[order[j]] < frac[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1], order[j - 1] = tmp;
        }
    if (task == T_PASSKEY) {
        uint32_t key = 10000 + rng_below(&r, 90000);
        snprintf(needle[0], sizeof needle[0], " The pass key is %u. Remember it. %u is the pass key.", key, key);
        snprintf(question, sizeof question, "\n\nWhat is the pass key? The pass key is");
        snprintf(out->answer, sizeof out->answer, " %u", key);
    } else {
        uint32_t w[MAX_NEEDLES];
        for (int i = 0; i < n_needles; i++) {
            int again;
            do { /* distinct words (multikey) and numbers */
                w[i] = rng_below(&r, N_WORDS);
                number[i] = 1000000 + rng_below(&r, 9000000);
                again = 0;
                for (int j = 0; j < i; j++)
                    again |= (task == T_MULTIKEY && w[j] == w[i]) || number[j] == number[i];
            } while (again);
            if (task == T_MULTIVALUE)
                w[i] = w[0];
        }
        for (int k = 0; k < n_needles; k++) { /* multivalue: the k-th in the text is the k-th number */
            const int i = order[k];
            if (task == T_MULTIVALUE)
                snprintf(needle[i], sizeof needle[i], " The special magic number for %s number %d is: %u.",
                         words[w[i]], k + 1, number[i]);
            else
                snprintf(needle[i], sizeof needle[i], " The special magic number for %s is: %u.", words[w[i]],
                         number[i]);
        }
        if (task == T_MULTIVALUE) {
            /* the answer names each number as its needle does: a 135M model given "are:" and a
             * list mixed up which came first (docs/longeval.md) */
            snprintf(question, sizeof question,
                     "\n\nWhat are the three special magic numbers for %s? The special magic number for %s number 1 "
                     "is:",
                     words[w[0]], words[w[0]]);
            snprintf(out->answer, sizeof out->answer,
                     " %u. The special magic number for %s number 2 is: %u. The special magic number for %s number 3 "
                     "is: %u.",
                     number[order[0]], words[w[0]], number[order[1]], words[w[0]], number[order[2]]);
        } else {
            snprintf(question, sizeof question,
                     "\n\nWhat is the special magic number for %s? The special magic number for %s is:", words[w[0]],
                     words[w[0]]);
            snprintf(out->answer, sizeof out->answer, " %u", number[0]);
        }
    }
    if (space_in_question && out->answer[0] == ' ') { /* the answer's leading space token: the prompt's */
        strncat(question, " ", sizeof question - strlen(question) - 1);
        memmove(out->answer, out->answer + 1, strlen(out->answer));
    }
    /* tokens: the instruction, each needle */
    size_t n_pre = 0, n_nd[MAX_NEEDLES] = {0}, total_nd = 0;
    int32_t *pre = llama_tokenize("longeval", env->bpe, instruction, strlen(instruction), &n_pre);
    int32_t *nd[MAX_NEEDLES] = {0};
    int ok = pre != NULL;
    for (int i = 0; ok && i < n_needles; i++) {
        ok = (nd[i] = llama_tokenize("longeval", env->bpe, needle[i], strlen(needle[i]), &n_nd[i])) != NULL;
        total_nd += ok ? n_nd[i] : 0;
    }
    if (ok && length < n_pre + total_nd + 32) {
        fprintf(stderr, "skv longeval: --lengths %u is too short for %s (%zu tokens of instruction and needles, "
                        "and at least 32 of filler)\n",
                length, task_names[task], n_pre + total_nd);
        ok = 0;
    }
    const size_t n_fill = ok ? length - n_pre - total_nd : 0;
    /* the filler from a drawn offset, moved on to a sentence's start */
    size_t start = ok ? rng_next(&r) % f->n : 0;
    for (size_t j = 0; ok && j < f->n; j++)
        if (f->ends[(start + j + f->n - 1) % f->n]) {
            start = (start + j) % f->n;
            break;
        }
    /* each needle after the filler token at its depth, moved back to a sentence's end
     * (at most 100 tokens back), never before the needle ahead of it in the text */
    size_t at[MAX_NEEDLES];
    for (int k = 0; ok && k < n_needles; k++) {
        const int i = order[k];
        size_t t = (size_t)llround(frac[i] * (double)n_fill);
        size_t b = t;
        while (b > 0 && t - b < 100 && !f->ends[(start + b - 1) % f->n])
            b--;
        at[i] = t > 0 && t < n_fill && (b == 0 || f->ends[(start + b - 1) % f->n]) ? b : t;
        if (k && at[i] < at[order[k - 1]])
            at[i] = at[order[k - 1]];
    }
    size_t n_question = 0, n_answer = 0;
    int32_t *qt = ok ? llama_tokenize("longeval", env->bpe, question, strlen(question), &n_question) : NULL;
    int32_t *at_ids = qt ? llama_tokenize("longeval", env->bpe, out->answer, strlen(out->answer), &n_answer) : NULL;
    ok = ok && qt && at_ids;
    if (ok) {
        out->ctx = malloc(length * sizeof *out->ctx);
        out->qa = malloc((n_question + n_answer) * sizeof *out->qa);
        ok = out->ctx && out->qa;
        if (!ok)
            fprintf(stderr, "skv longeval: out of memory\n");
    }
    if (ok) {
        size_t k = 0;
        memcpy(out->ctx, pre, n_pre * sizeof *pre);
        k = n_pre;
        int next = 0;
        for (size_t i = 0; i <= n_fill; i++) {
            while (next < n_needles && at[order[next]] == i) {
                out->needle_at[next] = (uint32_t)k;
                memcpy(out->ctx + k, nd[order[next]], n_nd[order[next]] * sizeof(int32_t));
                k += n_nd[order[next]];
                next++;
            }
            if (i < n_fill)
                out->ctx[k++] = f->ids[(start + i) % f->n];
        }
        out->n_ctx = k;
        out->n_needles = n_needles;
        memcpy(out->qa, qt, n_question * sizeof *qt);
        memcpy(out->qa + n_question, at_ids, n_answer * sizeof *at_ids);
        out->n_q = n_question, out->n_a = n_answer;
        ok = k == length && n_answer > 0 && n_question > 0;
        if (!ok)
            fprintf(stderr, "skv longeval: internal error: a context of %zu tokens for %u\n", k, length);
    }
    free(pre), free(qt), free(at_ids);
    for (int i = 0; i < n_needles; i++)
        free(nd[i]);
    if (!ok)
        sample_free(out);
    return ok ? 0 : -1;
}

static int filler_load(const llama_env *env, const char *path, filler *f)
{
    memset(f, 0, sizeof *f);
    size_t len = 0;
    char *text = llama_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "skv longeval: cannot read the filler text %s (tools/bootstrap.sh model writes "
                        "build/model/filler.txt; or give --filler FILE)\n",
                path);
        return -1;
    }
    f->ids = llama_tokenize("longeval", env->bpe, text, len, &f->n);
    free(text);
    if (!f->ids)
        return -1;
    if (f->n < 256) {
        fprintf(stderr, "skv longeval: the filler %s has %zu tokens (at least 256 needed)\n", path, f->n);
        free(f->ids);
        memset(f, 0, sizeof *f);
        return -1;
    }
    f->ends = calloc(f->n, 1);
    size_t n_ends = 0;
    for (size_t i = 0; f->ends && i < f->n; i++) {
        char piece[256];
        size_t pl = 0;
        if (bpe_decode(env->bpe, &f->ids[i], 1, piece, sizeof piece, &pl) == BPE_OK && pl > 0) {
            const char c = piece[pl - 1];
            f->ends[i] = c == '.' || c == '!' || c == '?' || c == '\n';
            n_ends += f->ends[i];
        }
    }
    if (!f->ends || n_ends == 0) {
        fprintf(stderr, "skv longeval: the filler %s has no sentence ends\n", path);
        free(f->ids), free(f->ends);
        memset(f, 0, sizeof *f);
        return -1;
    }
    return 0;
}

/* ---- policies ---------------------------------------------------------------------------- */

typedef struct lpolicy {
    llm_policy p;
    char name[64]; /* "f16 (dense)", "a3v4", "rdr 0.25 keydiff", "drop 0.125 snapkv pyramid" */
    char slug[64]; /* for file names */
} lpolicy;

static const char *const rule_names[3] = {"uniform", "pyramid", "adakv"};
static const char *const mode_names[2] = {"rdr", "drop"};

/* ---- results ------------------------------------------------------------------------------ */

typedef struct result {
    int correct, rest_correct; /* every answer token / every one after the first is the argmax */
    double loss;
    uint64_t kv, kv_dense;
    double seconds;
} result;

typedef struct timing {
    double prefill_s, prefill_tokens;
    double load_s, answer_s;
    uint64_t evals;
} timing;

/* One policy on a sample: a session with the prefix loaded and compressed, then the
 * question and the answer teacher-forced. */
static int eval_policy(llama_env *env, const lpolicy *P, const llm_capture *cap, const sample *smp, uint32_t chunk,
                       result *out, char *predicted, size_t pred_cap, timing *tm)
{
    const size_t n = smp->n_q + smp->n_a;
    int32_t *targets = malloc(n * sizeof *targets), *top = malloc(n * sizeof *top);
    float *loss = malloc(n * sizeof *loss);
    llm_session *s = NULL;
    llm_policy pol = P->p;
    pol.prefix = 1;
    float *q_mean = NULL, *q_abs = NULL; /* triattention: calibrated on this prompt's window */
    double t0 = tool_now_s(), t1 = t0;
    skv_status st = targets && top && loss ? SKV_OK : SKV_ERR_OUT_OF_MEMORY;
    if (st == SKV_OK && pol.budget > 0 && pol.scorer == SKV_SCORER_TRIATTENTION &&
        (st = llm_capture_query_stats(env->model, cap, &q_mean, &q_abs)) == SKV_OK)
        pol.query_mean = q_mean, pol.query_abs = q_abs;
    if (st == SKV_OK)
        st = llm_session_create(env->model, env->skv, &pol, chunk, &s);
    free(q_mean), free(q_abs);
    if (st == SKV_OK)
        st = llm_session_load_prefix(s, cap);
    if (st == SKV_OK) {
        t1 = tool_now_s();
        for (size_t i = 0; i < n; i++)
            targets[i] = i + 1 < n && i + 1 >= smp->n_q ? smp->qa[i + 1] : -1;
        st = llm_forward(s, smp->qa, (uint32_t)n, NULL, targets, loss, top);
    }
    llm_session_stats ss;
    if (st == SKV_OK)
        st = llm_session_stats_get(s, &ss);
    if (st != SKV_OK)
        fprintf(stderr, "\nskv longeval: %s: %s: %s\n", P->name, skv_status_str(st),
                st == SKV_ERR_OUT_OF_MEMORY && !s ? "out of memory" : llm_last_error());
    else {
        double sum = 0;
        int correct = 1, rest = 1;
        for (size_t j = 0; j < smp->n_a; j++) {
            const size_t i = smp->n_q - 1 + j;
            correct &= top[i] == targets[i];
            rest &= j == 0 || top[i] == targets[i];
            sum += loss[i];
        }
        out->correct = correct, out->rest_correct = rest;
        out->loss = sum / (double)smp->n_a;
        out->kv = ss.kv_bytes, out->kv_dense = ss.kv_bytes_dense;
        out->seconds = tool_now_s() - t0;
        tm->load_s += t1 - t0, tm->answer_s += tool_now_s() - t1, tm->evals++;
        size_t pl = 0;
        if (bpe_decode(env->bpe, top + smp->n_q - 1, smp->n_a, predicted, pred_cap - 1, &pl) != BPE_OK)
            pl = 0;
        predicted[pl] = 0;
    }
    llm_session_free(s);
    free(targets), free(top), free(loss);
    return st == SKV_OK ? 0 : -1;
}

/* \n and \t as spaces, for one-line progress */
static void escape_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\t' || *s == '\r')
            *s = ' ';
}

/* ---- options -------------------------------------------------------------------------------- */

static int task_index(const char *s)
{
    for (int t = 0; t < T_COUNT; t++)
        if (!strcmp(s, task_names[t]))
            return t;
    return -1;
}

/* the table's cell of (task, length): dense's tally and each policy's over dense's hits */
typedef struct cell {
    int samples, dense_ok;
    int *ok;          /* [policies]: correct where dense is */
    double *loss;     /* [policies]: summed over every sample */
    double *kv_ratio; /* [policies]: summed */
} cell;

/* hm_ok, hm_n: [policies][tasks][lengths][depths]; a (task, length) where dense is below
 * half is left out of the policies' maps, as out of the summary */
static int write_svgs(const char *prefix, const lpolicy *pol, int n_pol, int n_tasks, const uint32_t *lengths,
                      int n_len, const uint32_t *depths, int n_dep, const int *hm_ok, const int *hm_n,
                      const cell *cells, const char *heading)
{
    char xt[MAX_LIST][16], yt[MAX_LIST][24];
    const char *xp[MAX_LIST], *yp[MAX_LIST];
    for (int d = 0; d < n_dep; d++)
        snprintf(xt[d], sizeof xt[d], "%u%%", depths[d]), xp[d] = xt[d];
    for (int l = 0; l < n_len; l++)
        snprintf(yt[l], sizeof yt[l], "%u tokens", lengths[l]), yp[l] = yt[l];
    double *v = malloc((size_t)n_len * n_dep * sizeof *v);
    int *cnt = malloc((size_t)n_len * n_dep * sizeof *cnt), bad = !v || !cnt;
    for (int p = 0; v && cnt && p < n_pol; p++) {
        for (int i = 0; i < n_len * n_dep; i++) {
            int ok = 0, n = 0;
            for (int t = 0; t < n_tasks; t++) {
                const cell *ce = &cells[t * n_len + i / n_dep];
                if (p && 2 * ce->dense_ok < ce->samples)
                    continue;
                const size_t k = ((size_t)p * n_tasks + t) * n_len * n_dep + i;
                ok += hm_ok[k], n += hm_n[k];
            }
            cnt[i] = n;
            v[i] = n ? (double)ok / n : NAN;
        }
        char title[160];
        snprintf(title, sizeof title, "%s: %s", pol[p].name,
                 p == 0 ? "accuracy over every sample" : "accuracy over the samples dense answers (counted cells)");
        svg_heat h = {title, "needle depth", "context", xp, (size_t)n_dep, yp, (size_t)n_len, v, cnt};
        char *text = svg_heatmap(heading, &h);
        char path[1024];
        snprintf(path, sizeof path, "%s-%s.svg", prefix, pol[p].slug);
        if (!text || tool_write_file(path, text) != 0) {
            fprintf(stderr, "skv longeval: cannot write %s\n", path);
            bad = 1;
        }
        free(text);
    }
    free(v), free(cnt);
    return bad;
}

int cmd_longeval(int argc, char **argv)
{
    const char *model = getenv("SKV_MODEL"), *device = NULL, *filler_path = NULL, *json_path = NULL,
               *svg_prefix = NULL;
    uint32_t lengths[MAX_LIST] = {1024, 2048, 3072}, depths[MAX_LIST] = {0, 25, 50, 75, 100};
    int n_len = 3, n_dep = 5, tasks[T_COUNT] = {T_PASSKEY, T_SINGLE, T_MULTIKEY, T_MULTIVALUE}, n_tasks = T_COUNT;
    uint32_t samples = 2, window = 64, chunk = 128, recents[MAX_LIST];
    int n_recents = 0;
    int space_q = 0, query_aware = 0;
    uint64_t seed = 1;
    int tiers[SKV_TIER_COUNT] = {0}, n_tiers = 0;
    float budgets[MAX_LIST];
    int n_budgets = 0, scorers[TOOL_N_SCORERS], n_scorers = 0, modes[2], n_modes = 0, rules[3], n_rules = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--space-in-question")) {
            space_q = 1;
            continue;
        }
        if (!strcmp(a, "--query-aware")) {
            query_aware = 1;
            continue;
        }
        if (i + 1 >= argc)
            return tool_usage_error(usage_longeval, "unknown option or missing value: %s", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--filler"))
            filler_path = v;
        else if (!strcmp(a, "--json"))
            json_path = v;
        else if (!strcmp(a, "--svg"))
            svg_prefix = v;
        else if (!strcmp(a, "--lengths")) {
            if (tool_parse_u32_list(v, 64, 1u << 20, lengths, MAX_LIST, &n_len) != 0)
                return tool_usage_error(usage_longeval, "--lengths: a list of up to %d token counts in 64..1048576",
                                        MAX_LIST);
        } else if (!strcmp(a, "--depths")) {
            if (tool_parse_u32_list(v, 0, 100, depths, MAX_LIST, &n_dep) != 0)
                return tool_usage_error(usage_longeval, "--depths: a list of up to %d percentages 0..100", MAX_LIST);
        } else if (!strcmp(a, "--tasks")) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            n_tasks = 0;
            int seen[T_COUNT] = {0};
            char *save = NULL;
            for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int t = task_index(tok);
                if (t < 0)
                    return tool_usage_error(usage_longeval, "unknown task '%s' (passkey, single, multikey, multivalue)",
                                            tok);
                if (!seen[t]++)
                    tasks[n_tasks++] = t;
            }
            if (!n_tasks)
                return tool_usage_error(usage_longeval, "--tasks: no task");
        } else if (!strcmp(a, "--samples")) {
            if (tool_parse_u32(v, 1, 1000, &samples) != 0)
                return tool_usage_error(usage_longeval, "--samples must be 1..1000");
        } else if (!strcmp(a, "--window")) {
            if (tool_parse_u32(v, 1, 4096, &window) != 0)
                return tool_usage_error(usage_longeval, "--window must be 1..4096");
        } else if (!strcmp(a, "--recent")) {
            if (n_recents == MAX_LIST || tool_parse_u32(v, 1, 65535, &recents[n_recents]) != 0)
                return tool_usage_error(usage_longeval, "--recent must be 1..65535 (at most %d)", MAX_LIST);
            n_recents++;
        } else if (!strcmp(a, "--chunk")) {
            if (tool_parse_u32(v, 1, 4096, &chunk) != 0)
                return tool_usage_error(usage_longeval, "--chunk must be 1..4096");
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            seed = strtoull(v, &end, 10);
            if (errno || *end || end == v)
                return tool_usage_error(usage_longeval, "--seed must be an unsigned integer");
        } else if (!strcmp(a, "--policy")) {
            int t = tool_tier_index(v, strlen(v));
            if (t < 0)
                return tool_usage_error(usage_longeval, "--policy must be f16, a4v8, a3v4 or a2v2");
            int dup = 0;
            for (int k = 0; k < n_tiers; k++)
                dup |= tiers[k] == t;
            if (t != SKV_TIER_F16 && !dup)
                tiers[n_tiers++] = t;
            else if (t == SKV_TIER_F16 && !dup)
                tiers[n_tiers++] = -1; /* counts as "given", adds nothing: dense always runs */
        } else if (!strcmp(a, "--budget")) {
            char *end;
            double b = strtod(v, &end);
            if (*end || end == v || !(b > 0 && b <= 1))
                return tool_usage_error(usage_longeval, "--budget must be in (0, 1]");
            if (n_budgets == MAX_LIST)
                return tool_usage_error(usage_longeval, "at most %d budgets", MAX_LIST);
            budgets[n_budgets++] = (float)b;
        } else if (!strcmp(a, "--scorer")) {
            int sc = tool_scorer_index(v);
            if (sc <= 0)
                return tool_usage_error(usage_longeval,
                                        "--scorer: '%s' is not one longeval runs (keydiff, knorm, manifold, "
                                        "manifold_windowed, streaming, snapkv, triattention, observed)",
                                        v);
            int dup = 0;
            for (int k = 0; k < n_scorers; k++)
                dup |= scorers[k] == sc;
            if (!dup)
                scorers[n_scorers++] = sc;
        } else if (!strcmp(a, "--mode")) {
            int m = !strcmp(v, "rdr") ? 0 : !strcmp(v, "drop") ? 1 : -1;
            if (m < 0)
                return tool_usage_error(usage_longeval, "--mode must be rdr or drop");
            if (!(n_modes >= 1 && modes[0] == m) && !(n_modes == 2 && modes[1] == m))
                modes[n_modes++] = m;
        } else if (!strcmp(a, "--rule")) {
            int r = !strcmp(v, "uniform") ? 0 : !strcmp(v, "pyramid") ? 1 : !strcmp(v, "adakv") ? 2 : -1;
            if (r < 0)
                return tool_usage_error(usage_longeval, "--rule must be uniform, pyramid or adakv");
            int dup = 0;
            for (int k = 0; k < n_rules; k++)
                dup |= rules[k] == r;
            if (!dup)
                rules[n_rules++] = r;
        } else
            return tool_usage_error(usage_longeval, "unknown option %s", a);
    }
    if (!model)
        return tool_usage_error(usage_longeval, "--model FILE is needed (or SKV_MODEL)");
    if (n_budgets == 0 && n_tiers == 0)
        budgets[n_budgets++] = 0.25f, budgets[n_budgets++] = 0.125f;
    if (n_scorers == 0)
        scorers[n_scorers++] = SKV_SCORER_KEYDIFF, scorers[n_scorers++] = SKV_SCORER_SNAPKV;
    if (n_modes == 0)
        modes[n_modes++] = 0, modes[n_modes++] = 1;
    if (n_rules == 0)
        rules[n_rules++] = 0;
    if (n_recents == 0)
        recents[n_recents++] = 128;

    /* the policies: dense first (the reference), the uniform tiers, then RDR's crossing */
    lpolicy pol[MAX_POLICIES];
    int n_pol = 0;
    memset(pol, 0, sizeof pol);
    llm_policy_init(&pol[n_pol].p);
    snprintf(pol[n_pol].name, sizeof pol[n_pol].name, "f16 (dense)");
    snprintf(pol[n_pol++].slug, sizeof pol[0].slug, "f16");
    for (int t = 0; t < n_tiers; t++) {
        if (tiers[t] < 0)
            continue;
        llm_policy_init(&pol[n_pol].p);
        pol[n_pol].p.tier = (skv_tier)tiers[t];
        snprintf(pol[n_pol].name, sizeof pol[n_pol].name, "%s", tool_tier_names[tiers[t]]);
        snprintf(pol[n_pol].slug, sizeof pol[n_pol].slug, "%s", tool_tier_names[tiers[t]]);
        n_pol++;
    }
    if ((long)n_budgets * n_scorers * n_modes * n_rules * n_recents + n_pol > MAX_POLICIES)
        return tool_usage_error(usage_longeval, "at most %d policies (budgets x scorers x modes x rules x recents)",
                                MAX_POLICIES);
    for (int b = 0; b < n_budgets; b++)
        for (int w = 0; w < n_recents; w++)
            for (int r = 0; r < n_rules; r++)
                for (int m = 0; m < n_modes; m++)
                    for (int sc = 0; sc < n_scorers; sc++) {
                        lpolicy *P = &pol[n_pol++];
                        llm_policy_init(&P->p);
                        P->p.budget = budgets[b];
                        P->p.scorer = (skv_scorer)scorers[sc];
                        P->p.drop_only = modes[m];
                        P->p.budget_rule = (skv_budget_rule)rules[r];
                        P->p.recent_window = recents[w];
                        char extra[48] = "", slug_extra[48] = ""; /* what is not the default */
                        if (rules[r])
                            snprintf(extra, sizeof extra, " %s", rule_names[rules[r]]),
                                snprintf(slug_extra, sizeof slug_extra, "-%s", rule_names[rules[r]]);
                        if (recents[w] != 128) {
                            size_t e = strlen(extra), se = strlen(slug_extra);
                            snprintf(extra + e, sizeof extra - e, " r%u", recents[w]);
                            snprintf(slug_extra + se, sizeof slug_extra - se, "-r%u", recents[w]);
                        }
                        snprintf(P->name, sizeof P->name, "%s %.3g %s%s", mode_names[modes[m]], (double)budgets[b],
                                 tool_scorer_names[scorers[sc]], extra);
                        snprintf(P->slug, sizeof P->slug, "%s-%g-%s%s", mode_names[modes[m]], (double)budgets[b],
                                 tool_scorer_names[scorers[sc]], slug_extra);
                    }

    /* the default filler: filler.txt beside the model */
    char default_filler[4096];
    if (!filler_path) {
        const char *slash = strrchr(model, '/');
        int dir = slash ? (int)(slash - model) : 0;
        snprintf(default_filler, sizeof default_filler, "%.*s%sfiller.txt", dir, model, slash ? "/" : "");
        filler_path = default_filler;
        if (access(filler_path, R_OK) != 0) {
            fprintf(stderr,
                    "skv longeval: no filler text: %s is missing (tools/bootstrap.sh model writes it), or give "
                    "--filler FILE\n",
                    filler_path);
            return 1;
        }
    }

    int rc = 1;
    llama_env env;
    filler fl = {0};
    cJSON *root = NULL, *records = NULL, *samples_js = NULL;
    cell *cells = NULL;
    int *hm_ok = NULL, *hm_n = NULL;
    char *predicted = NULL;
    if (llama_env_open("longeval", model, device, &env) != 0)
        return 1;
    const llm_config *c = llm_model_config(env.model);
    if (filler_load(&env, filler_path, &fl) != 0)
        goto done;
    for (int l = 0; l < n_len; l++)
        if (lengths[l] >= c->context) {
            fprintf(stderr, "skv longeval: --lengths %u leaves no room for a question in the model's context (%u)\n",
                    lengths[l], c->context);
            goto done;
        }
    const int n_cells = n_tasks * n_len;
    cells = calloc((size_t)n_cells, sizeof *cells);
    hm_ok = calloc((size_t)n_pol * n_tasks * n_len * n_dep, sizeof *hm_ok);
    hm_n = calloc((size_t)n_pol * n_tasks * n_len * n_dep, sizeof *hm_n);
    predicted = malloc(4096);
    int oom = !cells || !hm_ok || !hm_n || !predicted;
    for (int i = 0; !oom && i < n_cells; i++)
        oom = !(cells[i].ok = calloc((size_t)n_pol, sizeof *cells[i].ok)) ||
              !(cells[i].loss = calloc((size_t)n_pol, sizeof *cells[i].loss)) ||
              !(cells[i].kv_ratio = calloc((size_t)n_pol, sizeof *cells[i].kv_ratio));
    if (oom) {
        fprintf(stderr, "skv longeval: out of memory\n");
        goto done;
    }
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddStringToObject(root, "device", env.prof.name);
    cJSON_AddStringToObject(root, "filler", filler_path);
    cJSON_AddNumberToObject(root, "filler_tokens", (double)fl.n);
    cJSON_AddNumberToObject(root, "seed", (double)seed);
    cJSON_AddNumberToObject(root, "window", window);
    cJSON_AddNumberToObject(root, "chunk", chunk);
    cJSON_AddBoolToObject(root, "space_in_question", space_q);
    cJSON_AddBoolToObject(root, "query_aware", query_aware);
    samples_js = cJSON_AddArrayToObject(root, "samples");
    records = cJSON_AddArrayToObject(root, "records");

    printf("skv longeval: %s (%s); %s, %u layers; filler %s (%zu tokens)\n", env.prof.name, env.prof.platform, model,
           c->layers, filler_path, fl.n);
    printf("%d tasks x %d lengths x %d depths x %u samples; %d policies:", n_tasks, n_len, n_dep, samples, n_pol);
    for (int p = 0; p < n_pol; p++)
        printf("%s %s", p ? "," : "", pol[p].name);
    printf("\n");
    fflush(stdout);

    double total_work = 0, done_work = 0, t_start = tool_now_s();
    for (int l = 0; l < n_len; l++)
        total_work += (double)n_tasks * n_dep * samples * lengths[l];
    timing tm = {0};
    const int n_samples_all = n_tasks * n_len * n_dep * (int)samples;
    int k_sample = 0;
    result *res = malloc((size_t)n_pol * sizeof *res);
    if (!res) {
        fprintf(stderr, "skv longeval: out of memory\n");
        goto done;
    }
    for (int ti = 0; ti < n_tasks; ti++)
        for (int l = 0; l < n_len; l++)
            for (int d = 0; d < n_dep; d++)
                for (uint32_t si = 0; si < samples; si++) {
                    const int task = tasks[ti];
                    sample smp;
                    k_sample++;
                    if (build_sample(&env, &fl, task, lengths[l], depths[d], si, seed, space_q, &smp) != 0) {
                        free(res);
                        goto done;
                    }
                    if (query_aware && question_into_context(&smp) != 0) {
                        fprintf(stderr, "skv longeval: out of memory\n");
                        sample_free(&smp);
                        free(res);
                        goto done;
                    }
                    if (smp.n_ctx + smp.n_q + smp.n_a > c->context) {
                        fprintf(stderr,
                                "skv longeval: %s at %u tokens: the question and answer (%zu tokens) do not fit in "
                                "the model's context (%u)\n",
                                task_names[task], lengths[l], smp.n_q + smp.n_a, c->context);
                        sample_free(&smp);
                        free(res);
                        goto done;
                    }
                    /* the dense prefill, captured */
                    char label[160];
                    snprintf(label, sizeof label, "[%d/%d] %s %u, depth %u%%, sample %u", k_sample, n_samples_all,
                             task_names[task], lengths[l], depths[d], si);
                    double t0 = tool_now_s();
                    llm_capture *cap = llama_capture_prefill("longeval", &env, smp.ctx, smp.n_ctx, chunk, window, label);
                    const double prefill_s = tool_now_s() - t0;
                    if (!cap) {
                        sample_free(&smp);
                        free(res);
                        goto done;
                    }
                    tm.prefill_s += prefill_s, tm.prefill_tokens += (double)smp.n_ctx;
                    /* every policy on the captured prefix, dense first */
                    cell *ce = &cells[ti * n_len + l];
                    const double t_pol = tool_now_s();
                    int failed = 0;
                    char dense_pred[256] = "";
                    for (int p = 0; !failed && p < n_pol; p++) {
                        tool_progress("[%d/%d] %s %u, depth %u%%, sample %u: %s", k_sample, n_samples_all,
                                      task_names[task], lengths[l], depths[d], si, pol[p].name);
                        if (eval_policy(&env, &pol[p], cap, &smp, chunk, &res[p], predicted, 4096, &tm) != 0) {
                            failed = 1;
                            break;
                        }
                        if (p == 0)
                            snprintf(dense_pred, sizeof dense_pred, "%s", predicted);
                        const int dense_ok = res[0].correct;
                        cJSON *j = cJSON_CreateObject();
                        cJSON_AddStringToObject(j, "task", task_names[task]);
                        cJSON_AddNumberToObject(j, "length", lengths[l]);
                        cJSON_AddNumberToObject(j, "depth", depths[d]);
                        cJSON_AddNumberToObject(j, "sample", si);
                        const llm_policy *pp = &pol[p].p;
                        cJSON_AddStringToObject(j, "policy", pp->budget > 0 ? "rdr" : tool_tier_names[pp->tier]);
                        if (pp->budget > 0) {
                            cJSON_AddNumberToObject(j, "budget", pp->budget);
                            cJSON_AddStringToObject(j, "scorer", tool_scorer_names[pp->scorer]);
                            cJSON_AddStringToObject(j, "mode", mode_names[pp->drop_only ? 1 : 0]);
                            cJSON_AddStringToObject(j, "rule", rule_names[pp->budget_rule]);
                            cJSON_AddNumberToObject(j, "recent_window", pp->recent_window);
                        } else {
                            cJSON_AddNullToObject(j, "budget");
                            cJSON_AddNullToObject(j, "scorer");
                            cJSON_AddNullToObject(j, "mode");
                            cJSON_AddNullToObject(j, "rule");
                            cJSON_AddNullToObject(j, "recent_window");
                        }
                        cJSON_AddBoolToObject(j, "correct", res[p].correct);
                        cJSON_AddBoolToObject(j, "correct_after_first", res[p].rest_correct);
                        cJSON_AddNumberToObject(j, "answer_loss", res[p].loss);
                        cJSON_AddNumberToObject(j, "kv_bytes", (double)res[p].kv);
                        cJSON_AddNumberToObject(j, "kv_bytes_dense", (double)res[p].kv_dense);
                        cJSON_AddBoolToObject(j, "dense_correct", dense_ok);
                        cJSON_AddStringToObject(j, "predicted", predicted);
                        cJSON_AddNumberToObject(j, "seconds", res[p].seconds);
                        cJSON_AddItemToArray(records, j);
                        /* tallies */
                        ce->loss[p] += res[p].loss;
                        ce->kv_ratio[p] += res[p].kv_dense ? (double)res[p].kv / (double)res[p].kv_dense : 0;
                        ce->ok[p] += p == 0 ? res[p].correct : dense_ok && res[p].correct;
                        const size_t hk = (((size_t)p * n_tasks + ti) * n_len + l) * n_dep + d;
                        if (p == 0 || dense_ok)
                            hm_n[hk]++, hm_ok[hk] += res[p].correct;
                    }
                    llm_capture_free(cap);
                    if (failed) {
                        sample_free(&smp);
                        free(res);
                        goto done;
                    }
                    ce->samples++;
                    ce->dense_ok += res[0].correct;
                    cJSON *js = cJSON_CreateObject();
                    cJSON_AddStringToObject(js, "task", task_names[task]);
                    cJSON_AddNumberToObject(js, "length", lengths[l]);
                    cJSON_AddNumberToObject(js, "depth", depths[d]);
                    cJSON_AddNumberToObject(js, "sample", si);
                    cJSON_AddStringToObject(js, "answer", smp.answer);
                    cJSON *na = cJSON_AddArrayToObject(js, "needle_positions");
                    for (int i = 0; i < smp.n_needles; i++)
                        cJSON_AddItemToArray(na, cJSON_CreateNumber(smp.needle_at[i]));
                    cJSON_AddNumberToObject(js, "question_tokens", (double)smp.n_q);
                    cJSON_AddNumberToObject(js, "answer_tokens", (double)smp.n_a);
                    cJSON_AddNumberToObject(js, "prefill_seconds", prefill_s);
                    cJSON_AddNumberToObject(js, "policies_seconds", tool_now_s() - t_pol);
                    cJSON_AddBoolToObject(js, "dense_correct", res[0].correct);
                    cJSON_AddItemToArray(samples_js, js);
                    /* progress: one line per sample (logs too), the ETA by context tokens */
                    done_work += lengths[l];
                    const double el = tool_now_s() - t_start;
                    char eta[16];
                    llama_format_duration(el / done_work * (total_work - done_work), eta, sizeof eta);
                    int pol_ok = 0;
                    for (int p = 1; p < n_pol; p++)
                        pol_ok += res[p].correct;
                    tool_progress("");
                    escape_line(dense_pred);
                    fprintf(stderr,
                            "[%d/%d] %s %u, depth %u%%, sample %u: dense %s (\"%s\" for \"%s\"), %d/%d policies "
                            "right; prefill %.1f s, policies %.1f s; ETA %s\n",
                            k_sample, n_samples_all, task_names[task], lengths[l], depths[d], si,
                            res[0].correct ? "right" : "wrong", dense_pred, smp.answer, pol_ok, n_pol - 1, prefill_s,
                            tool_now_s() - t_pol, eta);
                    sample_free(&smp);
                    if (json_path) { /* after every sample: a long run's results so far survive */
                        cJSON_DeleteItemFromObject(root, "seconds");
                        cJSON_AddNumberToObject(root, "seconds", tool_now_s() - t_start);
                        char *text = cJSON_Print(root);
                        if (!text || tool_write_file(json_path, text) != 0) {
                            fprintf(stderr, "skv longeval: cannot write %s\n", json_path);
                            free(text);
                            free(res);
                            goto done;
                        }
                        free(text);
                    }
                }
    free(res);

    /* the tables */
    printf("\naccuracy: exact match of the teacher-forced answer, over the samples the dense cache answers\n"
           "(dense: over every sample); loss: mean nats per answer token, every sample; KV: bytes on the\n"
           "device after the answer / dense F16. A (task, length) where dense is below 0.5 is marked * and\n"
           "left out of the summary's accuracies.\n");
    for (int ti = 0; ti < n_tasks; ti++)
        for (int l = 0; l < n_len; l++) {
            const cell *ce = &cells[ti * n_len + l];
            const int marked = 2 * ce->dense_ok < ce->samples;
            printf("\n%s, %u tokens: dense %d/%d right (%d wrong)%s\n", task_names[tasks[ti]], lengths[l],
                   ce->dense_ok, ce->samples, ce->samples - ce->dense_ok,
                   marked ? "  * dense below 0.5: not counted" : "");
            printf("  %-28s %9s %7s %9s %9s %7s\n", "policy", "accuracy", "right", "loss", "d.loss", "KV/F16");
            for (int p = 0; p < n_pol; p++) {
                const int den = p == 0 ? ce->samples : ce->dense_ok;
                char acc[16];
                if (den)
                    snprintf(acc, sizeof acc, "%s%.3f", marked ? "*" : "", (double)ce->ok[p] / den);
                else
                    snprintf(acc, sizeof acc, "%s", marked ? "*-" : "-");
                const double loss = ce->loss[p] / ce->samples, dl = loss - ce->loss[0] / ce->samples;
                char dls[16];
                snprintf(dls, sizeof dls, p ? "%+.4f" : "-", dl);
                printf("  %-28s %9s %3d/%-3d %9.4f %9s %7.3f\n", pol[p].name, acc, ce->ok[p], den, loss, dls,
                       ce->kv_ratio[p] / ce->samples);
            }
        }
    /* the summary: per policy, over the counted cells, by task and by length */
    printf("\nsummary: accuracy over the counted (task, length) cells (dense: its own accuracy there)\n");
    printf("  %-28s", "policy");
    for (int ti = 0; ti < n_tasks; ti++)
        printf(" %10s", task_names[tasks[ti]]);
    for (int l = 0; l < n_len; l++)
        printf(" %9u", lengths[l]);
    printf(" %9s %7s\n", "all", "KV/F16");
    for (int p = 0; p < n_pol; p++) {
        printf("  %-28s", pol[p].name);
        int all_ok = 0, all_n = 0;
        double kv = 0;
        int kv_n = 0;
        for (int pass = 0; pass < 2; pass++) {
            const int n_groups = pass == 0 ? n_tasks : n_len;
            for (int g = 0; g < n_groups; g++) {
                int ok = 0, n = 0;
                for (int ti = 0; ti < n_tasks; ti++)
                    for (int l = 0; l < n_len; l++) {
                        const cell *ce = &cells[ti * n_len + l];
                        if ((pass == 0 ? ti : l) != g)
                            continue;
                        if (pass == 0) /* KV over every cell */
                            kv += ce->kv_ratio[p], kv_n += ce->samples;
                        if (2 * ce->dense_ok < ce->samples)
                            continue;
                        ok += ce->ok[p], n += p == 0 ? ce->samples : ce->dense_ok;
                        if (pass == 0)
                            all_ok += ce->ok[p], all_n += p == 0 ? ce->samples : ce->dense_ok;
                    }
                if (n)
                    printf(pass == 0 ? " %10.3f" : " %9.3f", (double)ok / n);
                else
                    printf(pass == 0 ? " %10s" : " %9s", "-");
            }
        }
        if (all_n)
            printf(" %9.3f", (double)all_ok / all_n);
        else
            printf(" %9s", "-");
        printf(" %7.3f\n", kv_n ? kv / kv_n : 0);
    }
    const double wall = tool_now_s() - t_start;
    printf("\ntime: %.0f s; dense prefill %.1f s per 1,000 tokens (%.0f tokens, %.0f s); a policy on a sample "
           "%.2f s (load and compress %.2f s, question and answer %.2f s; %llu runs)\n",
           wall, tm.prefill_tokens ? 1000 * tm.prefill_s / tm.prefill_tokens : 0, tm.prefill_tokens, tm.prefill_s,
           tm.evals ? (tm.load_s + tm.answer_s) / (double)tm.evals : 0, tm.evals ? tm.load_s / (double)tm.evals : 0,
           tm.evals ? tm.answer_s / (double)tm.evals : 0, (unsigned long long)tm.evals);
    rc = 0;
    if (json_path) {
        cJSON_DeleteItemFromObject(root, "seconds");
        cJSON_AddNumberToObject(root, "seconds", wall);
        cJSON_AddNumberToObject(root, "prefill_seconds_per_1k_tokens",
                                tm.prefill_tokens ? 1000 * tm.prefill_s / tm.prefill_tokens : 0);
        cJSON_AddNumberToObject(root, "policy_seconds", tm.evals ? (tm.load_s + tm.answer_s) / (double)tm.evals : 0);
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(json_path, text) != 0) {
            fprintf(stderr, "skv longeval: cannot write %s\n", json_path);
            rc = 1;
        }
        free(text);
    }
    if (svg_prefix) {
        char heading[2 * SKV_NAME_MAX + 128];
        snprintf(heading, sizeof heading, "skv longeval %s, %s; %s", skv_version_string(), env.prof.name, model);
        if (write_svgs(svg_prefix, pol, n_pol, n_tasks, lengths, n_len, depths, n_dep, hm_ok, hm_n, cells, heading) != 0)
            rc = 1;
    }
done:
    for (int i = 0; cells && i < n_tasks * n_len; i++)
        free(cells[i].ok), free(cells[i].loss), free(cells[i].kv_ratio);
    free(cells), free(hm_ok), free(hm_n), free(predicted);
    cJSON_Delete(root);
    free(fl.ids), free(fl.ends);
    llama_env_close(&env);
    return rc;
}
