/* Waits between the compute queue and page moves on the transfer queue, and the
 * context's finish. */
#include <string.h>

#include "cache_internal.h"

cl_int skvi_event_status(cl_event ev)
{
    cl_int status = CL_QUEUED;
    if (clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL) == CL_SUCCESS)
        return status;
    /* The query failed: the command's state is unknown, and calling it done could reuse
     * memory it still reads. Wait for it (only on this failure path). */
    return clWaitForEvents(1, &ev) == CL_SUCCESS ? CL_COMPLETE : -1;
}

/* Drops a move event once complete: nothing left to wait for. Returns it, or NULL. */
static cl_event pending(cl_event *ev)
{
    if (*ev) {
        if (skvi_event_status(*ev) == CL_COMPLETE) {
            clReleaseEvent(*ev);
            *ev = NULL;
        }
    }
    return *ev;
}

skv_status skvi_compute_waits(skv_cache *c, const skv_seq_id *seqs, uint32_t n_seqs, cl_uint n_user,
                              const cl_event *user, cl_uint *n_out, const cl_event **out, cl_event **owned)
{
    *owned = NULL;
    cl_uint n_moves = 0;
    if (pending(&c->transfer_pending)) /* else no move is pending anywhere */
        for (uint32_t b = 0; b < (seqs ? n_seqs : 1); b++)
            n_moves += seqs ? pending(&c->seqs[seqs[b]].moved) != NULL : 1;
    c->hstats.compute_waits += n_moves != 0;
    if (!n_moves) {
        *n_out = n_user;
        *out = n_user ? user : NULL;
        return SKV_OK;
    }
    cl_event *all = skvi_calloc(c->ctx->alloc, n_user + n_moves, sizeof *all);
    if (!all)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "wait list: out of memory");
    if (n_user)
        memcpy(all, user, n_user * sizeof *all);
    *n_out = n_user;
    for (uint32_t b = 0; b < (seqs ? n_seqs : 1); b++) {
        cl_event ev = seqs ? c->seqs[seqs[b]].moved : c->transfer_pending;
        if (ev)
            all[(*n_out)++] = ev; /* a batch may name a sequence twice: waiting twice is harmless */
    }
    *out = all;
    *owned = all;
    return SKV_OK;
}

skv_status skvi_wait_moves(skv_cache *c, skv_seq_id seq)
{
    cl_uint n = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    skv_status st = skvi_compute_waits(c, &seq, 1, 0, NULL, &n, &waits, &owned);
    cl_int e = st == SKV_OK && n ? clEnqueueBarrierWithWaitList(c->ctx->queue, n, waits, NULL) : CL_SUCCESS;
    skvi_free(c->ctx->alloc, owned);
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "clEnqueueBarrierWithWaitList");
    return st;
}

void skvi_drain(cl_command_queue q)
{
    if (clFinish(q) != CL_SUCCESS)
        clFinish(q); /* a wait that failed once (resources) is retried before memory is freed */
}

skv_status skvi_finish(skv_context *ctx)
{
    cl_int e = clFinish(ctx->transfer);
    if (e == CL_SUCCESS)
        e = clFinish(ctx->queue);
    if (e == CL_SUCCESS)
        e = clFinish(ctx->background);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "clFinish");
}

skv_status skv_context_finish(skv_context *ctx)
{
    skvi_clear_error();
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_finish: ctx is NULL");
    return skvi_finish(ctx);
}
