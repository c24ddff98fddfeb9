/* Shared pieces of the `skv` command's subcommands. */
#ifndef SKV_TOOL_H
#define SKV_TOOL_H

#include <stdarg.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "skv/skv.h"

#define SKV_EXIT_USAGE 2

typedef struct skv_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    void (*usage)(FILE *out);
} skv_command;

int cmd_info(int argc, char **argv);
void usage_info(FILE *out);
int cmd_bench(int argc, char **argv);
void usage_demo(FILE *out);
void usage_eval(FILE *out);
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);
void usage_bench(FILE *out);

/* A one-line error, then the subcommand's usage on stderr; returns SKV_EXIT_USAGE. */
int tool_usage_error(void (*usage)(FILE *), const char *fmt, ...);
/* A progress line on stderr when it is a terminal (rewritten in place; "" clears it);
 * nothing in logs. */
void tool_progress(const char *fmt, ...);
/* Writes text to `path` through a temporary file and a rename (nothing half-written);
 * "-" means stdout. 0 on success. */
int tool_write_file(const char *path, const char *text);
int tool_write_bytes(const char *path, const void *data, size_t n);

#endif
