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
 * given, must belong to cl_ctx and device. */
SKV_API skv_status skv_context_create_cl(const skv_context_desc *desc, cl_context cl_ctx,
                                         cl_device_id device, cl_command_queue queue,
                                         skv_context **out);

/* The OpenCL objects a context uses (not retained for the caller). */
SKV_API skv_status skv_context_cl_objects(const skv_context *ctx, cl_context *cl_ctx,
                                          cl_device_id *device, cl_command_queue *compute_queue,
                                          cl_command_queue *transfer_queue);

#ifdef __cplusplus
}
#endif
#endif /* SKV_CL_H */
