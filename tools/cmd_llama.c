/* `skv generate` and `skv perplexity`: a real model (a Llama-architecture GGUF, e.g.
 * SmolLM2-135M-Instruct) run by examples/llama with skv as its KV cache, on the runtime's
 * own OpenCL context and queue (docs/llama.md). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "gguf.h"
#include "llama.h"
#include "llama_common.h"
#include "skv_tool.h"

#define MAX_RUNS 16

void usage_generate(FILE *out)
{
    fprintf(out,
            "usage: skv generate --model FILE (--prompt TEXT | --prompt-file FILE) [--max-tokens N]\n"
            "                    [--policy P]... [--budget F]... [--scorer S] [--chat] [--prompt-tokens N]\n"
            "                    [--recent N] [--calibrate FILE] [--chunk N] [--device SEL]\n"
            "  Greedy decoding of a Llama-architecture GGUF (SmolLM2-135M-Instruct: docs/llama.md) with\n"
            "  skv as the KV cache; streams the tokens, then prints tokens/s, the device time in\n"
            "  attention and the KV bytes on the device, compressed vs dense. Several policies run\n"
            "  one after another on the same prompt, then side by side in a table.\n"
            "  --model FILE     the GGUF (default $SKV_MODEL)\n"
            "  --max-tokens N   tokens to generate (default 64; stops early at the end-of-turn token)\n"
            "  --policy P       f16 (dense, default), a4v8, a3v4 or a2v2: every full page past the first\n"
            "                   (the sinks) and outside the last 128 tokens is quantised to that tier\n"
            "  --budget F       RDR in (0, 1]: per token and head F16, an ADA tier or drop, under F of\n"
            "                   the F16 bytes (replaces --policy)\n"
            "  --scorer S       RDR's scorer: keydiff (default), knorm, manifold, manifold_windowed,\n"
            "                   streaming, observed, triattention (with --calibrate)\n"
            "  --recent N       tokens kept F16 at the end: the uniform tiers' window and RDR's floor\n"
            "                   (default 128)\n"
            "  --calibrate FILE TriAttention's query statistics from a dense prefill of FILE's first\n"
            "                   1024 tokens (its last 256 queries; a text other than the one run)\n"
            "  --chat           wrap the prompt in the model's chat turns (<|im_start|>user ...)\n"
            "  --prompt-tokens N  keep the prompt's first N tokens (decode speed at a context length)\n"
            "  --chunk N        prompt tokens per matrix product (default 128)\n");
}

void usage_perplexity(FILE *out)
{
    fprintf(out,
            "usage: skv perplexity --model FILE --text FILE [--tokens N] [--policy P]... [--budget F]...\n"
            "                      [--scorer S] [--recent N] [--calibrate FILE] [--chunk N] [--json FILE]\n"
            "                      [--save-kv FILE [--save-layers L]] [--device SEL]\n"
            "  Next-token loss over a text with a dense cache, then with each policy and budget given\n"
            "  (default: a4v8, a3v4, a2v2 and RDR at 0.25), in one run: loss, its increase over dense,\n"
            "  top-1 agreement with the dense run, KV bytes on the device at the end.\n"
            "  --tokens N   tokens of the text (default 4096; at most the model's context)\n"
            "  --budget-mode cap|grow  RDR's budget: cap (default) a fixed cap of F x the F16 bytes of\n"
            "               the run's tokens, the memory a runtime provisions for them; grow: F of the\n"
            "               tokens appended so far (compressing from the first pages on)\n"
            "  --policy P   a4v8, a3v4, a2v2 (repeatable); --budget F: RDR at F (repeatable)\n"
            "  --json FILE  {\"results\":[{\"policy\",\"budget\",\"loss\",\"loss_delta\",\"top1_agreement\",\n"
            "               \"kv_bytes\",\"kv_bytes_dense\", ...}]}\n"
            "  --save-kv FILE  write the dense run's KV as a key/value file for skv eval --kv (fp16):\n"
            "               keys and values of all but the last 16 tokens, the 64 queries before those\n"
            "               as its prefill window, the last 16 tokens' queries as its decode queries\n"
            "  --save-layers L  the layers it holds, e.g. 1,6,12,18,24,29 (default all)\n"
            "  --model, --scorer, --recent, --calibrate, --chunk, --device: as skv generate\n");
}

/* Options both commands take. */
typedef struct llama_opts {
    const char *model, *device, *calib;
    llm_policy policy[MAX_RUNS];
    int n_policies;
    skv_scorer scorer;
    uint32_t chunk, recent; /* recent: 0 = the runtime's default */
} llama_opts;

/* Parses --model, --device, --policy, --budget, --scorer, --chunk at argv[*i]: 1 taken, 0 not
 * ours, -1 a usage error (printed). */
static int common_option(int argc, char **argv, int *i, llama_opts *o, void (*usage)(FILE *))
{
    const char *a = argv[*i];
    int known = !strcmp(a, "--model") || !strcmp(a, "--device") || !strcmp(a, "--policy") ||
                !strcmp(a, "--budget") || !strcmp(a, "--scorer") || !strcmp(a, "--chunk") ||
                !strcmp(a, "--calibrate") || !strcmp(a, "--recent");
    if (!known)
        return 0;
    if (*i + 1 >= argc) {
        tool_usage_error(usage, "%s needs a value", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(a, "--model"))
        o->model = v;
    else if (!strcmp(a, "--device"))
        o->device = v;
    else if (!strcmp(a, "--calibrate"))
        o->calib = v;
    else if (!strcmp(a, "--recent")) {
        if (tool_parse_u32(v, 1, 1u << 20, &o->recent) != 0) {
            tool_usage_error(usage, "--recent must be 1..1048576");
            return -1;
        }
    }
    else if (!strcmp(a, "--chunk")) {
        if (tool_parse_u32(v, 1, 4096, &o->chunk) != 0) {
            tool_usage_error(usage, "--chunk must be 1..4096");
            return -1;
        }
    } else if (!strcmp(a, "--scorer")) {
        int sc = tool_scorer_index(v);
        if (sc <= 0) {
            tool_usage_error(usage, "unknown scorer '%s'", v);
            return -1;
        }
        o->scorer = (skv_scorer)sc;
    } else {
        if (o->n_policies == MAX_RUNS) {
            tool_usage_error(usage, "at most %d policies and budgets", MAX_RUNS);
            return -1;
        }
        llm_policy *p = &o->policy[o->n_policies];
        llm_policy_init(p);
        if (!strcmp(a, "--policy")) {
            int t = tool_tier_index(v, strlen(v));
            if (t < 0) {
                tool_usage_error(usage, "--policy must be f16, a4v8, a3v4 or a2v2");
                return -1;
            }
            p->tier = (skv_tier)t;
        } else {
            char *end;
            double b = strtod(v, &end);
            if (*end || !(b > 0 && b <= 1)) {
                tool_usage_error(usage, "--budget must be in (0, 1]");
                return -1;
            }
            p->budget = (float)b;
        }
        o->n_policies++;
    }
    return 1;
}

/* A usage error (printed; -1) when an RDR policy scores with triattention and no
 * --calibrate text was given. */
/* Whether an RDR policy scores with triattention (and so needs its statistics). */
static int needs_calibration(const llama_opts *o)
{
    for (int i = 0; i < o->n_policies; i++)
        if (o->policy[i].budget > 0 && o->scorer == SKV_SCORER_TRIATTENTION)
            return 1;
    return 0;
}

static int check_calibration(const llama_opts *o, void (*usage)(FILE *))
{
    if (needs_calibration(o) && !o->calib) {
        tool_usage_error(usage, "the triattention scorer needs --calibrate FILE (a text other than the one run)");
        return -1;
    }
    return 0;
}

/* TriAttention's statistics, calibrated on --calibrate, when an RDR policy scores with
 * it (*mean and *abs_pair stay NULL otherwise; the caller frees them and points the
 * policies at them): 0, or -1 printed. */
static int calibrate_if_needed(const char *cmd, llama_env *env, const llama_opts *o, float **mean, float **abs_pair)
{
    *mean = *abs_pair = NULL;
    return needs_calibration(o) ? llama_calibrate(cmd, env, o->calib, o->chunk, mean, abs_pair) : 0;
}

static void policy_name(const llm_policy *p, char *out, size_t n)
{
    if (p->budget > 0)
        snprintf(out, n, "rdr %.3g (%s)", (double)p->budget, tool_scorer_names[p->scorer]);
    else
        snprintf(out, n, "%s", tool_tier_names[p->tier]);
}

static double mb(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

/* ---- skv generate ----------------------------------------------------------------------- */

typedef struct gen_result {
    uint32_t decoded;
    double prefill_s, prefill_att;
    llm_session_stats stats; /* of the decode phase (timing), and the cache at the end */
} gen_result;

/* One policy: the prompt in chunks, then greedy decoding, streamed to stdout when `echo`. */
static skv_status generate_one(llama_env *env, const llm_policy *policy, uint32_t chunk, const int32_t *ids,
                               size_t n_ids, uint32_t max_tokens, float *logits, gen_result *out)
{
    const llm_config *c = llm_model_config(env->model);
    llm_session *s = NULL;
    memset(out, 0, sizeof *out);
    skv_status st = llm_session_create(env->model, env->skv, policy, chunk, &s);
    for (size_t i = 0; st == SKV_OK && i < n_ids; i += chunk) {
        uint32_t k = n_ids - i < chunk ? (uint32_t)(n_ids - i) : chunk;
        st = llm_forward(s, ids + i, k, i + k == n_ids ? logits : NULL, NULL, NULL, NULL);
        if (n_ids > chunk)
            tool_progress("prefill %zu / %zu tokens", i + k, n_ids);
    }
    tool_progress("");
    llm_session_stats ps;
    if (st == SKV_OK && (st = llm_session_stats_get(s, &ps)) == SKV_OK)
        out->prefill_s = ps.forward_s, out->prefill_att = ps.attention_s;
    llm_session_reset_timing(s);
    for (uint32_t generated = 0; st == SKV_OK && generated < max_tokens; generated++) {
        int32_t next = 0;
        for (uint32_t v = 1; v < c->vocab; v++)
            if (logits[v] > logits[next])
                next = (int32_t)v;
        if (next == env->eos)
            break;
        char piece[256];
        size_t plen = 0;
        if (bpe_decode(env->bpe, &next, 1, piece, sizeof piece, &plen) == BPE_OK)
            fwrite(piece, 1, plen, stdout), fflush(stdout);
        if (generated + 1 < max_tokens) {
            st = llm_forward(s, &next, 1, logits, NULL, NULL, NULL);
            if (generated == 0) /* the first step builds decode's kernels: a warm-up */
                llm_session_reset_timing(s);
            else
                out->decoded += st == SKV_OK;
        }
    }
    printf("\n");
    if (st == SKV_OK)
        st = llm_session_stats_get(s, &out->stats);
    llm_session_free(s);
    return st;
}

int cmd_generate(int argc, char **argv)
{
    llama_opts o = {.model = getenv("SKV_MODEL"), .chunk = 128, .scorer = SKV_SCORER_KEYDIFF};
    const char *prompt = NULL, *prompt_file = NULL;
    uint32_t max_tokens = 64, prompt_tokens = 0;
    int chat = 0;
    for (int i = 1; i < argc; i++) {
        int r = common_option(argc, argv, &i, &o, usage_generate);
        if (r < 0)
            return SKV_EXIT_USAGE;
        if (r)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "--chat"))
            chat = 1;
        else if (i + 1 >= argc)
            return tool_usage_error(usage_generate, "unknown option or missing value: %s", a);
        else if (!strcmp(a, "--prompt"))
            prompt = argv[++i];
        else if (!strcmp(a, "--prompt-file"))
            prompt_file = argv[++i];
        else if (!strcmp(a, "--max-tokens")) {
            if (tool_parse_u32(argv[++i], 1, 1u << 20, &max_tokens) != 0)
                return tool_usage_error(usage_generate, "--max-tokens must be 1..1048576");
        } else if (!strcmp(a, "--prompt-tokens")) {
            if (tool_parse_u32(argv[++i], 1, 1u << 20, &prompt_tokens) != 0)
                return tool_usage_error(usage_generate, "--prompt-tokens must be 1..1048576");
        } else
            return tool_usage_error(usage_generate, "unknown option %s", a);
    }
    if (!o.model)
        return tool_usage_error(usage_generate, "--model FILE is needed (or SKV_MODEL)");
    if (!prompt == !prompt_file)
        return tool_usage_error(usage_generate, "give --prompt TEXT or --prompt-file FILE");
    if (o.n_policies == 0)
        llm_policy_init(&o.policy[o.n_policies++]);
    for (int i = 0; i < o.n_policies; i++) {
        o.policy[i].scorer = o.scorer;
        if (o.recent)
            o.policy[i].recent_window = o.recent;
    }
    if (check_calibration(&o, usage_generate) != 0)
        return SKV_EXIT_USAGE;

    int rc = 1;
    llama_env env;
    char *text = NULL, *file_text = NULL;
    int32_t *ids = NULL;
    float *logits = NULL, *q_mean = NULL, *q_abs = NULL;
    size_t len = 0, n_ids = 0;
    gen_result res[MAX_RUNS];
    if (prompt_file && !(file_text = llama_read_file(prompt_file, &len))) {
        fprintf(stderr, "skv generate: cannot read %s\n", prompt_file);
        return 1;
    }
    const char *body = prompt ? prompt : file_text;
    if (prompt)
        len = strlen(prompt);
    if (llama_env_open("generate", o.model, o.device, &env) != 0) {
        free(file_text);
        return 1;
    }
    const llm_config *c = llm_model_config(env.model);
    const char *pre = chat ? "<|im_start|>user\n" : "", *post = chat ? "<|im_end|>\n<|im_start|>assistant\n" : "";
    size_t lp = strlen(pre), lq = strlen(post);
    if ((text = malloc(lp + len + lq + 1))) {
        memcpy(text, pre, lp), memcpy(text + lp, body, len), memcpy(text + lp + len, post, lq + 1);
        len += lp + lq;
    }
    if (!text || !(ids = llama_tokenize("generate", env.bpe, text, len, &n_ids)))
        goto done;
    if (prompt_tokens) { /* a benchmark at a given context: the prompt's first tokens */
        if (n_ids < prompt_tokens) {
            fprintf(stderr, "skv generate: the prompt has %zu tokens, fewer than --prompt-tokens %u\n", n_ids,
                    prompt_tokens);
            goto done;
        }
        n_ids = prompt_tokens;
    }
    if (n_ids == 0) {
        fprintf(stderr, "skv generate: the prompt has no tokens\n");
        goto done;
    }
    if (n_ids + max_tokens > c->context) {
        fprintf(stderr, "skv generate: %zu prompt tokens + %u to generate exceed the model's context (%u)\n", n_ids,
                max_tokens, c->context);
        goto done;
    }
    if (!(logits = malloc((size_t)c->vocab * sizeof *logits))) {
        fprintf(stderr, "skv generate: out of memory\n");
        goto done;
    }
    if (calibrate_if_needed("generate", &env, &o, &q_mean, &q_abs) != 0)
        goto done;
    for (int r = 0; r < o.n_policies; r++)
        o.policy[r].query_mean = q_mean, o.policy[r].query_abs = q_abs;
    for (int r = 0; r < o.n_policies; r++) {
        char pname[64];
        policy_name(&o.policy[r], pname, sizeof pname);
        printf("%sskv generate: %s (%s), %u layers, d_model %u; %zu prompt tokens; policy %s\n", r ? "\n" : "",
               env.prof.name, env.prof.platform, c->layers, c->d_model, n_ids, pname);
        if (n_ids <= 256) {
            size_t plen = 0;
            char *ptext = malloc(n_ids * 64 + 1);
            if (ptext && bpe_decode(env.bpe, ids, n_ids, ptext, n_ids * 64, &plen) == BPE_OK)
                fwrite(ptext, 1, plen, stdout);
            free(ptext);
        } else {
            printf("[%zu prompt tokens] ...", n_ids);
        }
        fflush(stdout);
        skv_status st = generate_one(&env, &o.policy[r], o.chunk, ids, n_ids, max_tokens, logits, &res[r]);
        if (st != SKV_OK) {
            fprintf(stderr, "skv generate: %s: %s: %s\n", pname, skv_status_str(st), llm_last_error());
            goto done;
        }
        const gen_result *g = &res[r];
        const llm_session_stats *d = &g->stats;
        printf("--\n");
        printf("prefill  %zu tokens in %.2f s (%.1f tokens/s), attention %.2f s of device time\n", n_ids,
               g->prefill_s, (double)n_ids / g->prefill_s, g->prefill_att);
        if (g->decoded)
            printf("decode   %u tokens in %.2f s (%.2f tokens/s; after a warm-up step), attention %.3f s (%.1f%% of "
                   "the step)\n",
                   g->decoded, d->forward_s, g->decoded / d->forward_s, d->attention_s,
                   100.0 * d->attention_s / d->forward_s);
        printf("KV cache %.2f MiB on the device for %llu tokens (%s) vs %.2f MiB dense F16: %.3fx\n",
               mb(d->kv_bytes), (unsigned long long)d->tokens, pname, mb(d->kv_bytes_dense),
               d->kv_bytes_dense ? (double)d->kv_bytes / (double)d->kv_bytes_dense : 0.0);
    }
    if (o.n_policies > 1) { /* side by side, as ratios to the first policy */
        printf("\n%-22s %12s %10s %10s %9s %9s\n", "policy", "decode tok/s", "vs first", "attn ms", "attn %",
               "KV ratio");
        const gen_result *f = &res[0];
        double base = f->decoded ? f->decoded / f->stats.forward_s : 0;
        for (int r = 0; r < o.n_policies; r++) {
            const gen_result *g = &res[r];
            char pname[64];
            policy_name(&o.policy[r], pname, sizeof pname);
            double tps = g->decoded ? g->decoded / g->stats.forward_s : 0;
            printf("%-22s %12.2f %10.3f %10.2f %9.1f %9.3f\n", pname, tps, base > 0 ? tps / base : 0,
                   g->decoded ? 1e3 * g->stats.attention_s / g->decoded : 0,
                   100.0 * g->stats.attention_s / g->stats.forward_s,
                   (double)g->stats.kv_bytes / (double)g->stats.kv_bytes_dense);
        }
    }
    rc = 0;
done:
    llama_env_close(&env);
    free(logits), free(ids), free(text), free(file_text), free(q_mean), free(q_abs);
    return rc;
}

/* ---- skv perplexity --------------------------------------------------------------------- */

typedef struct ppl_result {
    llm_policy policy;
    double loss, top1_text, top1_agreement, seconds;
    llm_session_stats stats;
} ppl_result;

/* --save-kv: the dense run's last SAVE_QUERIES positions are the file's decode queries,
 * the SAVE_WINDOW before them its prefill window, everything before them its keys and
 * values. */
#define SAVE_QUERIES 16u
#define SAVE_WINDOW 64u

/* Writes a version-2 fp16 key/value file (skv eval --kv) of `layers` (all when n is 0)
 * of a capture of SAVE_WINDOW + SAVE_QUERIES queries: 0, or 1 printed. */
static int save_capture(const char *path, const llm_config *c, const llm_capture *cap, const uint32_t *layers, int n)
{
    skv_kvfile_info in;
    skv_kvfile_info_init(&in);
    in.dtype = SKV_F16;
    in.layers = n ? (uint32_t)n : c->layers;
    in.kv_heads = cap->kv_heads, in.q_heads = cap->q_heads, in.head_dim = cap->head_dim;
    in.tokens = cap->tokens - SAVE_QUERIES, in.n_queries = SAVE_QUERIES, in.n_window = SAVE_WINDOW;
    in.rope.theta = c->rope_theta, in.rope.rotary_dims = c->head_dim, in.rope.interleaved = 1, in.rope.scaling = 1;
    const size_t kv = (size_t)in.tokens * in.kv_heads * in.head_dim, qrow = (size_t)in.q_heads * in.head_dim;
    float *k = malloc(in.layers * kv * sizeof *k), *v = malloc(in.layers * kv * sizeof *v);
    float *q = malloc(in.layers * SAVE_QUERIES * qrow * sizeof *q), *w = malloc(in.layers * SAVE_WINDOW * qrow * sizeof *w);
    skv_status st = k && v && q && w && cap->n_window == SAVE_WINDOW + SAVE_QUERIES ? SKV_OK : SKV_ERR_OUT_OF_MEMORY;
    for (uint32_t i = 0; st == SKV_OK && i < in.layers; i++) {
        const uint32_t l = n ? layers[i] : i;
        memcpy(k + i * kv, cap->k[l], kv * sizeof *k), memcpy(v + i * kv, cap->v[l], kv * sizeof *v);
        memcpy(w + i * SAVE_WINDOW * qrow, cap->q[l], SAVE_WINDOW * qrow * sizeof *w);
        memcpy(q + i * SAVE_QUERIES * qrow, cap->q[l] + SAVE_WINDOW * qrow, SAVE_QUERIES * qrow * sizeof *q);
    }
    if (st == SKV_OK)
        st = skv_kvfile_write(path, &in, k, v, q, w);
    if (st != SKV_OK)
        fprintf(stderr, "skv perplexity: --save-kv %s: %s\n", path,
                st == SKV_ERR_OUT_OF_MEMORY ? "out of memory" : skv_last_error());
    free(k), free(v), free(q), free(w);
    return st != SKV_OK;
}

int cmd_perplexity(int argc, char **argv)
{
    llama_opts o = {.model = getenv("SKV_MODEL"), .chunk = 128, .scorer = SKV_SCORER_KEYDIFF};
    const char *text_path = NULL, *json_path = NULL;
    uint32_t tokens = 4096;
    int grow = 0; /* RDR's budget: a fixed cap for the run's tokens, or a share of those so far */
    const char *save_kv = NULL;
    uint32_t save_layers[64];
    int n_save_layers = 0;
    for (int i = 1; i < argc; i++) {
        int r = common_option(argc, argv, &i, &o, usage_perplexity);
        if (r < 0)
            return SKV_EXIT_USAGE;
        if (r)
            continue;
        const char *a = argv[i];
        if (i + 1 >= argc)
            return tool_usage_error(usage_perplexity, "unknown option or missing value: %s", a);
        if (!strcmp(a, "--text"))
            text_path = argv[++i];
        else if (!strcmp(a, "--json"))
            json_path = argv[++i];
        else if (!strcmp(a, "--tokens")) {
            if (tool_parse_u32(argv[++i], 2, 1u << 20, &tokens) != 0)
                return tool_usage_error(usage_perplexity, "--tokens must be 2..1048576");
        } else if (!strcmp(a, "--save-kv")) {
            save_kv = argv[++i];
        } else if (!strcmp(a, "--save-layers")) {
            if (tool_parse_u32_list(argv[++i], 0, 4095, save_layers, 64, &n_save_layers) != 0)
                return tool_usage_error(usage_perplexity, "--save-layers takes up to 64 layer numbers, e.g. 1,6,12");
        } else if (!strcmp(a, "--budget-mode")) {
            const char *m = argv[++i];
            if (strcmp(m, "cap") && strcmp(m, "grow"))
                return tool_usage_error(usage_perplexity, "--budget-mode must be cap or grow");
            grow = !strcmp(m, "grow");
        } else
            return tool_usage_error(usage_perplexity, "unknown option %s", a);
    }
    if (!o.model)
        return tool_usage_error(usage_perplexity, "--model FILE is needed (or SKV_MODEL)");
    if (!text_path)
        return tool_usage_error(usage_perplexity, "--text FILE is needed");
    /* the runs: dense first (the reference), then each policy asked for */
    ppl_result runs[MAX_RUNS + 1];
    int n_runs = 0;
    memset(runs, 0, sizeof runs);
    llm_policy_init(&runs[n_runs++].policy);
    if (o.n_policies == 0) {
        const skv_tier tiers[3] = {SKV_TIER_A4V8, SKV_TIER_A3V4, SKV_TIER_A2V2};
        for (int i = 0; i < 4; i++) {
            llm_policy_init(&o.policy[i]);
            if (i < 3)
                o.policy[i].tier = tiers[i];
            else
                o.policy[i].budget = 0.25f;
        }
        o.n_policies = 4;
    }
    for (int i = 0; i < o.n_policies; i++)
        if (o.policy[i].budget > 0 || o.policy[i].tier != SKV_TIER_F16) {
            runs[n_runs].policy = o.policy[i];
            runs[n_runs].policy.budget_context = o.policy[i].budget > 0 && !grow ? tokens : 0;
            runs[n_runs].policy.recent_window = o.recent ? o.recent : o.policy[i].recent_window;
            runs[n_runs++].policy.scorer = o.scorer;
        }
    if (check_calibration(&o, usage_perplexity) != 0)
        return SKV_EXIT_USAGE;
    if (save_kv && tokens <= SAVE_QUERIES + SAVE_WINDOW)
        return tool_usage_error(usage_perplexity, "--save-kv needs --tokens above %u", SAVE_QUERIES + SAVE_WINDOW);
    for (int i = 0; i < n_save_layers; i++)
        if (save_layers[i] >= 4096)
            return tool_usage_error(usage_perplexity, "--save-layers: layer %u", save_layers[i]);

    int rc = 1;
    llama_env env;
    size_t len = 0, n_ids = 0;
    char *text = llama_read_file(text_path, &len);
    int32_t *ids = NULL, *targets = NULL, *top = NULL, *dense_top = NULL;
    float *loss = NULL, *q_mean = NULL, *q_abs = NULL;
    if (!text) {
        fprintf(stderr, "skv perplexity: cannot read %s\n", text_path);
        return 1;
    }
    if (llama_env_open("perplexity", o.model, o.device, &env) != 0) {
        free(text);
        return 1;
    }
    const llm_config *c = llm_model_config(env.model);
    if (!(ids = llama_tokenize("perplexity", env.bpe, text, len, &n_ids)))
        goto done;
    if (n_ids < tokens) {
        fprintf(stderr, "skv perplexity: %s has %zu tokens, fewer than --tokens %u\n", text_path, n_ids, tokens);
        goto done;
    }
    if (tokens > c->context) {
        fprintf(stderr, "skv perplexity: --tokens %u exceeds the model's context (%u)\n", tokens, c->context);
        goto done;
    }
    targets = malloc(tokens * sizeof *targets), top = malloc(tokens * sizeof *top);
    dense_top = malloc(tokens * sizeof *dense_top), loss = malloc(tokens * sizeof *loss);
    if (!targets || !top || !dense_top || !loss) {
        fprintf(stderr, "skv perplexity: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n_save_layers; i++)
        if (save_layers[i] >= c->layers) {
            fprintf(stderr, "skv perplexity: --save-layers: the model has %u layers, not %u\n", c->layers,
                    save_layers[i] + 1);
            goto done;
        }
    if (calibrate_if_needed("perplexity", &env, &o, &q_mean, &q_abs) != 0)
        goto done;
    for (int r = 0; r < n_runs; r++)
        runs[r].policy.query_mean = q_mean, runs[r].policy.query_abs = q_abs;
    for (uint32_t i = 0; i < tokens; i++)
        targets[i] = i + 1 < tokens ? ids[i + 1] : -1;
    printf("skv perplexity: %s (%s); %s, %u tokens (%u predictions), chunks of %u\n", env.prof.name,
           env.prof.platform, text_path, tokens, tokens - 1, o.chunk);
    double t_all = tool_now_s();
    for (int r = 0; r < n_runs; r++) {
        ppl_result *R = &runs[r];
        char pname[64];
        policy_name(&R->policy, pname, sizeof pname);
        llm_session *s = NULL;
        skv_status st = llm_session_create(env.model, env.skv, &R->policy, o.chunk, &s);
        if (st == SKV_OK && r == 0 && save_kv) /* the dense run's keys, values and last queries */
            st = llm_session_capture(s, 1, SAVE_WINDOW + SAVE_QUERIES);
        double t0 = tool_now_s();
        for (uint32_t i = 0; st == SKV_OK && i < tokens; i += o.chunk) {
            uint32_t k = tokens - i < o.chunk ? tokens - i : o.chunk;
            st = llm_forward(s, ids + i, k, NULL, targets + i, loss + i, top + i);
            /* the bar: this run's share, the ETA over all runs from the speed so far */
            double done_tokens = (double)r * tokens + i + k, total = (double)n_runs * tokens;
            double el = tool_now_s() - t_all, eta = el / done_tokens * (total - done_tokens);
            char eta_s[16], bar[21];
            int fill = (int)(20.0 * (i + k) / tokens);
            for (int b = 0; b < 20; b++)
                bar[b] = b < fill ? '#' : '.';
            bar[20] = 0;
            llama_format_duration(eta, eta_s, sizeof eta_s);
            tool_progress("[%s] run %d/%d %-18s %u/%u tokens, %.1f tokens/s, ETA %s", bar, r + 1, n_runs, pname,
                          i + k, tokens, (i + k) / (tool_now_s() - t0), eta_s);
        }
        tool_progress("");
        if (st == SKV_OK)
            st = llm_session_stats_get(s, &R->stats);
        llm_capture *cap = st == SKV_OK && r == 0 && save_kv ? llm_session_capture_take(s) : NULL;
        llm_session_free(s);
        if (cap) {
            int bad = save_capture(save_kv, c, cap, save_layers, n_save_layers);
            llm_capture_free(cap);
            if (bad)
                goto done;
            printf("wrote %s\n", save_kv);
        }
        if (st != SKV_OK) {
            fprintf(stderr, "skv perplexity: %s: %s: %s\n", pname, skv_status_str(st), llm_last_error());
            goto done;
        }
        R->seconds = tool_now_s() - t0;
        double sum = 0;
        uint32_t hits = 0, agree = 0;
        for (uint32_t i = 0; i + 1 < tokens; i++) {
            sum += loss[i];
            hits += top[i] == targets[i];
            agree += r == 0 ? 1 : top[i] == dense_top[i];
        }
        if (r == 0)
            memcpy(dense_top, top, tokens * sizeof *top);
        R->loss = sum / (tokens - 1);
        R->top1_text = (double)hits / (tokens - 1);
        R->top1_agreement = (double)agree / (tokens - 1);
        if (!isfinite(R->loss)) {
            fprintf(stderr, "skv perplexity: %s: the loss is not finite\n", pname);
            goto done;
        }
    }
    printf("\n%-22s %8s %10s %9s %9s %11s %11s %7s %7s %8s\n", "policy", "loss", "delta", "top1-text", "top1-agree",
           "KV MiB", "dense MiB", "ratio", "peak", "seconds");
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "results");
    cJSON_AddStringToObject(root, "model", o.model);
    cJSON_AddStringToObject(root, "device", env.prof.name);
    cJSON_AddStringToObject(root, "text", text_path);
    cJSON_AddNumberToObject(root, "tokens", tokens);
    for (int r = 0; r < n_runs; r++) {
        ppl_result *R = &runs[r];
        char pname[64];
        policy_name(&R->policy, pname, sizeof pname);
        double ratio = R->stats.kv_bytes_dense ? (double)R->stats.kv_bytes / (double)R->stats.kv_bytes_dense : 0;
        printf("%-22s %8.4f %+10.4f %9.4f %9.4f %11.2f %11.2f %7.3f %7.3f %8.1f\n", pname, R->loss,
               R->loss - runs[0].loss, R->top1_text, R->top1_agreement, mb(R->stats.kv_bytes),
               mb(R->stats.kv_bytes_dense), ratio, R->stats.kv_peak_ratio, R->seconds);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "policy", R->policy.budget > 0 ? "rdr" : tool_tier_names[R->policy.tier]);
        if (R->policy.budget > 0) {
            cJSON_AddNumberToObject(j, "budget", R->policy.budget);
            cJSON_AddStringToObject(j, "scorer", tool_scorer_names[R->policy.scorer]);
            cJSON_AddNumberToObject(j, "recent_window", R->policy.recent_window);
        } else {
            cJSON_AddNullToObject(j, "budget");
        }
        cJSON_AddNumberToObject(j, "loss", R->loss);
        cJSON_AddNumberToObject(j, "loss_delta", R->loss - runs[0].loss);
        cJSON_AddNumberToObject(j, "top1_agreement", R->top1_agreement);
        cJSON_AddNumberToObject(j, "top1_accuracy", R->top1_text);
        cJSON_AddNumberToObject(j, "kv_bytes", (double)R->stats.kv_bytes);
        cJSON_AddNumberToObject(j, "kv_bytes_dense", (double)R->stats.kv_bytes_dense);
        cJSON_AddNumberToObject(j, "kv_peak_ratio", R->stats.kv_peak_ratio);
        cJSON_AddNumberToObject(j, "kv_peak_from", (double)R->stats.kv_peak_from);
        if (R->policy.budget > 0)
            cJSON_AddStringToObject(j, "budget_mode", R->policy.budget_context ? "cap" : "grow");
        cJSON *held = cJSON_AddObjectToObject(j, "tokens_held");
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            cJSON_AddNumberToObject(held, tool_tier_names[t], (double)R->stats.held[t]);
        cJSON_AddNumberToObject(j, "seconds", R->seconds);
        cJSON_AddItemToArray(arr, j);
    }
    printf("(loss in nats per token; top1-text: the argmax is the next token; top1-agree: the argmax\n"
           " equals the dense run's; KV: device page bytes in use after the last token; peak: the most\n"
           " KV bytes after any append over the F16 bytes of the run's tokens (RDR --budget-mode cap) or\n"
           " of the tokens so far (grow: from the length where the budget holds RDR's floor; uniform\n"
           " tiers: from 1024 tokens))\n");
    rc = 0;
    if (json_path) {
        char *js = cJSON_Print(root);
        if (!js || tool_write_file(json_path, js) != 0) {
            fprintf(stderr, "skv perplexity: cannot write %s\n", json_path);
            rc = 1;
        }
        free(js);
    }
    cJSON_Delete(root);
done:
    llama_env_close(&env);
    free(text), free(ids), free(targets), free(top), free(dense_top), free(loss), free(q_mean), free(q_abs);
    return rc;
}
