/* skv OpenCL interop: run skv inside a runtime's own OpenCL context and queue.
 *
 * A context created here retains the caller's cl_context, cl_device_id and
 * cl_command_queue (and releases them on destroy); skv then enqueues its compute work on
 * that queue, so a runtime needs no host synchronisation between its kernels and skv's.
 * skv adds one queue of its own on the same context for page transfers.
 *
 * Calls that enqueue work take (num_wait, wait_list) — events skv's work must wait
 * for — and, when `event` is not NULL, return an event that completes with the work
 * (the caller releases it), as CLBlast's C API does. */
#ifndef SKV_CL_H
#define SKV_CL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

#include "skv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* desc may be NULL; its `device` selector is ignored (the device is given). queue may be
 * NULL: skv then creates an in-order compute queue on (cl_ctx, device). The queue, when
 * given, must be in-order and belong to cl_ctx and device. */
SKV_API skv_status skv_context_create_cl(const skv_context_desc *desc, cl_context cl_ctx,
                                         cl_device_id device, cl_command_queue queue,
                                         skv_context **out);

/* The OpenCL objects a context uses (not retained for the caller). */
SKV_API skv_status skv_context_cl_objects(const skv_context *ctx, cl_context *cl_ctx,
                                          cl_device_id *device, cl_command_queue *compute_queue,
                                          cl_command_queue *transfer_queue);


/* skv_append with K and V in the caller's buffers (at byte offsets k_offset, v_offset,
 * same layout and dtype rules); positions stay a host array. The append runs after the
 * wait list; *event (if not NULL) completes when the pages are written. */
SKV_API skv_status skv_append_cl(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t n_tokens,
                                 skv_dtype dtype, cl_mem k, size_t k_offset, cl_mem v, size_t v_offset,
                                 const int32_t *positions, cl_uint num_wait, const cl_event *wait_list,
                                 cl_event *event);

/* skv_attention_decode on the caller's buffers, without a host wait. */
SKV_API skv_status skv_attention_decode_cl(skv_cache *cache, uint32_t layer, const skv_seq_id *seqs,
                                           uint32_t n_seqs, skv_dtype q_dtype, cl_mem q, size_t q_offset,
                                           float scale, skv_dtype out_dtype, cl_mem out, size_t out_offset,
                                           cl_uint num_wait, const cl_event *wait_list, cl_event *event);

/* skv_seq_export into the caller's buffer at byte offset `offset` (cap bytes from
 * there; buf NULL: the size alone). The export is assembled in host memory (its
 * checksum covers the page bytes), so the call waits: for the cache's work, then for
 * the wait list and the write; *event (if not NULL) is the write's, complete on return. */
SKV_API skv_status skv_seq_export_cl(skv_cache *cache, skv_seq_id seq, cl_mem buf, size_t offset, size_t cap,
                                     size_t *size, cl_uint num_wait, const cl_event *wait_list, cl_event *event);
/* skv_seq_import from size bytes of the caller's buffer at `offset`, read after the
 * wait list (the call waits for the read and the page writes); *event (if not NULL)
 * is a marker on the compute queue after the import's writes. */
SKV_API skv_status skv_seq_import_cl(skv_cache *cache, cl_mem buf, size_t offset, size_t size, skv_seq_id *out,
                                     cl_uint num_wait, const cl_event *wait_list, cl_event *event);

/* The event of the last page move (offload or fetch) enqueued for the cache, or NULL
 * when none is in flight (retained for the caller). */
SKV_API skv_status skv_cache_transfer_event(skv_cache *cache, cl_event *event);

#ifdef __cplusplus
}
#endif
#endif /* SKV_CL_H */
