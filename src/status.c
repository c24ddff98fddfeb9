/* Status strings, version, and the per-thread / per-context last-error message. */
#include <stdio.h>
#include <string.h>

#include "skv_internal.h"

#define SKVI_STR_(x) #x
#define SKVI_STR(x) SKVI_STR_(x)

static _Thread_local char tls_error[SKVI_ERROR_MAX];

unsigned skv_version(void) { return SKV_VERSION_NUMBER; }

const char *skv_version_string(void)
{
    return SKVI_STR(SKV_VERSION_MAJOR) "." SKVI_STR(SKV_VERSION_MINOR) "." SKVI_STR(SKV_VERSION_PATCH);
}

const char *skv_status_str(skv_status status)
{
    switch (status) {
    case SKV_OK: return "ok";
    case SKV_ERR_INVALID_ARG: return "invalid argument";
    case SKV_ERR_OUT_OF_MEMORY: return "out of memory";
    case SKV_ERR_DEVICE_OUT_OF_MEMORY: return "device out of memory";
    case SKV_ERR_NO_DEVICE: return "no matching OpenCL device";
    case SKV_ERR_OPENCL: return "OpenCL error";
    case SKV_ERR_BUILD: return "kernel build failed";
    case SKV_ERR_UNSUPPORTED: return "unsupported";
    case SKV_ERR_IO: return "I/O error";
    case SKV_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *skv_last_error(void) { return tls_error; }

void skvi_clear_error(void) { tls_error[0] = '\0'; }

skv_status skvi_vfail(char *ctx_error, skv_status status, const char *fmt, va_list ap)
{
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    if (ctx_error)
        memcpy(ctx_error, tls_error, strlen(tls_error) + 1);
    return status;
}

skv_status skvi_fail(char *ctx_error, skv_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    skvi_vfail(ctx_error, status, fmt, ap);
    va_end(ap);
    return status;
}
