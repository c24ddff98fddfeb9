/* Compression deferred from skv_append_cl. An interop append that makes a layer due for
 * RDR returns without waiting: the layer's compression waits for the append's event
 * (its gate; a later append to the layer moves the gate on) and runs inside a later
 * append or decode call on the cache, once the gate completed. Then every token of the
 * layer is written, so the compression reads, scores and solves on the context's
 * background queue, which holds only skv's own work and so never waits behind the
 * caller's queue, and enqueues its packing on the compute queue, in order with the
 * caller's work. Nothing here waits on the compute queue. */
#include <string.h>

#include "cache_internal.h"

int skvi_rdr_due(const skv_cache *c, const skvi_seq *s, uint32_t layer)
{
    return s->len[layer] - s->rdr_mark[layer] >= (uint64_t)(c->desc.slack ? c->desc.slack : 1);
}

int skvi_rdr_soon(const skv_cache *c, const skvi_seq *s, uint32_t layer)
{
    return s->len[layer] - s->rdr_mark[layer] >= (uint64_t)(c->desc.slack > 1 ? c->desc.slack / 2 : 1);
}

void skvi_rdr_gate(skv_cache *c, skvi_seq *s, uint32_t layer, cl_event append)
{
    clRetainEvent(append);
    if (s->rdr_gate[layer])
        clReleaseEvent(s->rdr_gate[layer]);
    else
        c->deferred++;
    s->rdr_gate[layer] = append;
}

void skvi_rdr_ungate(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    for (uint32_t l = 0; l < c->desc.layers; l++)
        if (s->rdr_gate[l] && (layer == ~0u || l == layer)) {
            clReleaseEvent(s->rdr_gate[l]);
            s->rdr_gate[l] = NULL;
            c->deferred--;
        }
}

void skvi_rdr_note_caller_waits(skv_cache *c, cl_uint num_wait, cl_event done)
{
    if (!num_wait || !done || c->desc.retention != SKV_RETENTION_RDR)
        return;
    clRetainEvent(done);
    if (c->caller_hold)
        clReleaseEvent(c->caller_hold);
    c->caller_hold = done; /* the queue is in order: the last such call completes last */
}

int skvi_rdr_may_wait(skv_cache *c)
{
    if (c->caller_hold && skvi_event_status(c->caller_hold) == CL_COMPLETE) {
        clReleaseEvent(c->caller_hold);
        c->caller_hold = NULL;
    }
    return !c->caller_hold;
}

void skvi_rdr_run_deferred(skv_cache *c)
{
    if (!c->deferred)
        return;
    skv_context *ctx = c->ctx;
    char saved[SKVI_ERROR_MAX]; /* the caller's call reports its own errors only */
    memcpy(saved, ctx->error, sizeof saved);
    for (uint32_t id = 0; id < c->seq_cap && c->deferred; id++) {
        skvi_seq *s = &c->seqs[id];
        for (uint32_t l = 0; s->live && l < c->desc.layers; l++) {
            if (!s->rdr_gate[l])
                continue;
            const cl_int status = skvi_event_status(s->rdr_gate[l]);
            /* the append still queued or running, or pages of the sequence still moving */
            if (status > CL_COMPLETE || (status == CL_COMPLETE && s->moved && skvi_event_status(s->moved) > CL_COMPLETE))
                continue;
            skvi_rdr_ungate(c, s, l);
            if (status < 0 || !skvi_rdr_soon(c, s, l)) /* a failed append; or compressed since */
                continue;
            c->rq = ctx->background;
            if (skvi_compress(c, id, s, l) == SKV_OK)
                c->deferred_runs++;
            c->rq = ctx->queue;
        }
    }
    memcpy(ctx->error, saved, sizeof saved);
    skvi_clear_error();
}
