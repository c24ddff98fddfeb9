/* HeteroCache's settings and head profiles: skv_hetero_desc, and the versioned profile
 * files a runtime saves once per model ("skv-hetero-profile 1"). */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_internal.h"

void skv_hetero_desc_init(skv_hetero_desc *d)
{
    if (!d)
        return;
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->top_k = 1024;
    d->tau_sim = 0.5f;
    d->tau_stable = 0.5f;
    d->eps = 0.1f;
    d->max_steps = 64;
    d->check_steps = 5;
    d->retrieval = 1;
}

skv_status skvi_hetero_check_desc(char *err, const skv_hetero_desc *d, const char *fn)
{
    if (!d)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc is NULL", fn);
    if (d->struct_size != sizeof *d)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.struct_size is %zu, expected %zu (skv_hetero_desc_init)",
                         fn, d->struct_size, sizeof *d);
    if (d->top_k == 0 || d->top_k > (1u << 24))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.top_k %u is not in 1..2^24", fn, d->top_k);
    if (!(d->tau_sim >= 0.0f && d->tau_sim <= 1.0f) || !(d->tau_stable >= 0.0f && d->tau_stable <= 1.0f))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.tau_sim and tau_stable must be in [0, 1]", fn);
    if (!(d->eps > 0.0f && d->eps <= 1e6f))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.eps must be positive", fn);
    if (d->max_steps == 0 || d->max_steps > 4096)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.max_steps %u is not in 1..4096", fn, d->max_steps);
    if (d->check_steps == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.check_steps is 0", fn);
    if (d->retrieval != 0 && d->retrieval != 1)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.retrieval must be 0 or 1", fn);
    return SKV_OK;
}

/* ---- profiles ---- */

skv_hetero_profile *skvi_hetero_profile_new(uint32_t layers, uint32_t heads)
{
    skv_hetero_profile *p = calloc(1, sizeof *p);
    const size_t n = (size_t)layers * heads;
    if (!p)
        return NULL;
    p->layers = layers;
    p->heads = heads;
    p->category = calloc(n, sizeof *p->category);
    p->pivot = calloc(n, sizeof *p->pivot);
    p->stability = calloc(n, sizeof *p->stability);
    if (!p->category || !p->pivot || !p->stability) {
        skv_hetero_profile_free(p);
        return NULL;
    }
    return p;
}

void skv_hetero_profile_free(skv_hetero_profile *p)
{
    if (!p)
        return;
    free(p->category);
    free(p->pivot);
    free(p->stability);
    free(p);
}

/* A profile's invariants: categories in range, a satellite's pivot a pivot of its layer,
 * every other head its own pivot, stabilities in [0, 1]. */
static skv_status check_profile(char *err, const skv_hetero_profile *p, const char *fn)
{
    for (uint32_t l = 0; l < p->layers; l++)
        for (uint32_t h = 0; h < p->heads; h++) {
            const size_t i = (size_t)l * p->heads + h;
            const skv_head_category c = p->category[i];
            if ((unsigned)c > SKV_HEAD_VOLATILE)
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: category %d", fn, l, h, (int)c);
            if (!(p->stability[i] >= 0.0f && p->stability[i] <= 1.0f))
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: stability %g is not in [0, 1]", fn,
                                 l, h, (double)p->stability[i]);
            const uint32_t pv = p->pivot[i];
            if (c == SKV_HEAD_SATELLITE) {
                if (pv >= p->heads || p->category[(size_t)l * p->heads + pv] != SKV_HEAD_PIVOT)
                    return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: satellite of %u, not a pivot", fn,
                                     l, h, pv);
            } else if (pv != h) {
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: a %s is its own pivot, not %u", fn, l,
                                 h, skv_head_category_str(c), pv);
            }
        }
    return SKV_OK;
}

skv_status skv_hetero_profile_create(uint32_t layers, uint32_t heads, const skv_head_category *category,
                                     const uint32_t *pivot, const float *stability, skv_hetero_profile **out)
{
    skvi_clear_error();
    if (!category || !pivot || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_create: category, pivot or out is NULL");
    if (layers == 0 || heads == 0 || layers > 4096 || heads > 4096)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_create: %u layers x %u heads", layers, heads);
    skv_hetero_profile *p = skvi_hetero_profile_new(layers, heads);
    if (!p)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_profile_create: out of memory");
    const size_t n = (size_t)layers * heads;
    memcpy(p->category, category, n * sizeof *category);
    memcpy(p->pivot, pivot, n * sizeof *pivot);
    for (size_t i = 0; i < n; i++)
        p->stability[i] = stability ? stability[i] : (category[i] == SKV_HEAD_VOLATILE ? 0.0f : 1.0f);
    skv_status st = check_profile(NULL, p, "skv_hetero_profile_create");
    if (st != SKV_OK) {
        skv_hetero_profile_free(p);
        return st;
    }
    *out = p;
    return SKV_OK;
}

skv_status skv_hetero_profile_shape(const skv_hetero_profile *p, uint32_t *layers, uint32_t *heads)
{
    skvi_clear_error();
    if (!p || !layers || !heads)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_shape: an argument is NULL");
    *layers = p->layers;
    *heads = p->heads;
    return SKV_OK;
}

skv_status skv_hetero_profile_head(const skv_hetero_profile *p, uint32_t layer, uint32_t head,
                                   skv_head_category *category, uint32_t *pivot, float *stability)
{
    skvi_clear_error();
    if (!p)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_head: profile is NULL");
    if (layer >= p->layers || head >= p->heads)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_head: layer %u / head %u of %u x %u", layer,
                         head, p->layers, p->heads);
    const size_t i = (size_t)layer * p->heads + head;
    if (category)
        *category = p->category[i];
    if (pivot)
        *pivot = p->pivot[i];
    if (stability)
        *stability = p->stability[i];
    return SKV_OK;
}

#define PROFILE_MAGIC "skv-hetero-profile"
#define PROFILE_VERSION 1

skv_status skv_hetero_profile_save(const skv_hetero_profile *p, const char *path)
{
    skvi_clear_error();
    if (!p || !path)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_save: profile or path is NULL");
    FILE *f = fopen(path, "w");
    if (!f)
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_save: cannot write %s", path);
    int bad = fprintf(f, "%s %d\nlayers %u kv_heads %u\n", PROFILE_MAGIC, PROFILE_VERSION, p->layers, p->heads) < 0;
    for (uint32_t l = 0; l < p->layers && !bad; l++)
        for (uint32_t h = 0; h < p->heads && !bad; h++) {
            const size_t i = (size_t)l * p->heads + h;
            bad = fprintf(f, "%u %u %s %u %.9g\n", l, h, skv_head_category_str(p->category[i]), p->pivot[i],
                          (double)p->stability[i]) < 0;
        }
    bad |= fprintf(f, "end\n") < 0;
    bad |= fclose(f) != 0;
    return bad ? skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_save: writing %s failed", path) : SKV_OK;
}

static int category_from(const char *s, skv_head_category *c)
{
    for (int i = 0; i <= SKV_HEAD_VOLATILE; i++)
        if (strcmp(s, skv_head_category_str((skv_head_category)i)) == 0) {
            *c = (skv_head_category)i;
            return 1;
        }
    return 0;
}

/* The next whitespace-separated word of *text (at most cap - 1 bytes, else a word that
 * matches nothing), copied into buf; 0 at the end. The parse reads each byte once (sscanf
 * over the rest of a large file measures its length at every call). */
static int next_word(const char **text, char *buf, size_t cap)
{
    const char *p = *text + strspn(*text, " \t\r\n\v\f");
    const size_t n = strcspn(p, " \t\r\n\v\f");
    *text = p + n;
    if (n == 0)
        return 0;
    const size_t c = n < cap ? n : cap - 1;
    memcpy(buf, p, c);
    buf[c] = '\0';
    if (n >= cap)
        buf[0] = '?'; /* too long to be any field */
    return 1;
}

/* A decimal integer word in 0..max. */
static int word_uint(const char **text, unsigned max, unsigned *out)
{
    char w[16];
    if (!next_word(text, w, sizeof w) || strspn(w, "0123456789") != strlen(w))
        return 0;
    unsigned long x = strtoul(w, NULL, 10);
    if (x > max)
        return 0;
    *out = (unsigned)x;
    return 1;
}

static int word_is(const char **text, const char *want)
{
    char w[32];
    return next_word(text, w, sizeof w) && strcmp(w, want) == 0;
}

/* Parses a whole profile from text (NUL-terminated, `len` bytes); NULL (and a message in
 * err) when anything is off. */
static skv_hetero_profile *profile_parse(const char *text, size_t len, char *err, size_t err_size)
{
    unsigned version = 0, L = 0, H = 0;
    if (!word_is(&text, PROFILE_MAGIC)) {
        snprintf(err, err_size, "not a HeteroCache profile (no '%s' header)", PROFILE_MAGIC);
        return NULL;
    }
    if (!word_uint(&text, 1u << 30, &version) || version != PROFILE_VERSION) {
        snprintf(err, err_size, "not version %d, the one this library reads", PROFILE_VERSION);
        return NULL;
    }
    if (!word_is(&text, "layers") || !word_uint(&text, 4096, &L) || !word_is(&text, "kv_heads") ||
        !word_uint(&text, 4096, &H) || L == 0 || H == 0) {
        snprintf(err, err_size, "a bad 'layers N kv_heads M' line");
        return NULL;
    }
    /* a head's line takes at least 13 bytes ("0 0 pivot 0 0" and a separator): a file too
     * short for its heads is refused before anything is allocated for them */
    if ((uint64_t)L * H > len / 14 + 1) {
        snprintf(err, err_size, "%u x %u heads do not fit in %zu bytes", L, H, len);
        return NULL;
    }
    skv_hetero_profile *p = skvi_hetero_profile_new(L, H);
    if (!p) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < (size_t)L * H; i++) {
        unsigned l, h, pv;
        char name[16], stab[48], *end = NULL;
        int ok = word_uint(&text, 4096, &l) && word_uint(&text, 4096, &h) && next_word(&text, name, sizeof name) &&
                 word_uint(&text, 1u << 30, &pv) && next_word(&text, stab, sizeof stab) && l == i / H && h == i % H &&
                 category_from(name, &p->category[i]);
        if (ok) {
            p->stability[i] = strtof(stab, &end);
            ok = end && end != stab && *end == '\0';
        }
        if (!ok) {
            snprintf(err, err_size, "line for layer %zu head %zu is missing or malformed", i / H, i % H);
            skv_hetero_profile_free(p);
            return NULL;
        }
        p->pivot[i] = pv;
    }
    char rest[8];
    if (!word_is(&text, "end") || next_word(&text, rest, sizeof rest)) {
        snprintf(err, err_size, "no 'end' line after the heads, or data after it");
        skv_hetero_profile_free(p);
        return NULL;
    }
    char why[SKVI_ERROR_MAX];
    why[0] = 0;
    if (check_profile(why, p, "profile") != SKV_OK) {
        snprintf(err, err_size, "%s", why);
        skv_hetero_profile_free(p);
        return NULL;
    }
    return p;
}

skv_status skvi_hetero_profile_parse(const char *bytes, size_t len, const char *name, skv_hetero_profile **out)
{
    if (len > SKVI_PROFILE_MAX_BYTES || memchr(bytes, 0, len))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: %s: too large or not text", name);
    char *text = malloc(len + 1);
    if (!text)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_profile_load: out of memory");
    memcpy(text, bytes, len);
    text[len] = 0;
    char why[256];
    skv_hetero_profile *p = profile_parse(text, len, why, sizeof why);
    free(text);
    if (!p)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: %s: %s", name, why);
    *out = p;
    return SKV_OK;
}

skv_status skv_hetero_profile_load(const char *path, uint32_t layers, uint32_t heads, skv_hetero_profile **out)
{
    skvi_clear_error();
    if (!path || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: path or out is NULL");
    /* non-blocking, and only a regular file: a FIFO must not stall the open or the read */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_load: cannot open %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_load: %s is not a regular file", path);
    }
    /* the file's size, up to one byte past the limit (the parse refuses that) */
    const size_t cap = (uint64_t)sb.st_size > SKVI_PROFILE_MAX_BYTES ? SKVI_PROFILE_MAX_BYTES + 1 : (size_t)sb.st_size + 1;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_load: cannot read %s", path);
    }
    char *text = malloc(cap);
    size_t n = text ? fread(text, 1, cap, f) : 0;
    fclose(f);
    if (!text)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_profile_load: out of memory");
    skv_hetero_profile *p = NULL;
    skv_status st = skvi_hetero_profile_parse(text, n, path, &p);
    free(text);
    if (st != SKV_OK)
        return st;
    if ((layers || heads) && (p->layers != layers || p->heads != heads)) {
        st = skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                       "skv_hetero_profile_load: %s is for %u layers x %u kv-heads, not %u x %u", path, p->layers,
                       p->heads, layers, heads);
        skv_hetero_profile_free(p);
        return st;
    }
    *out = p;
    return SKV_OK;
}
