/* Decode variant names on the command line (bench decode --variant, tune):
 *   default                  the tuning database's choice (no override)
 *   builtin                  the built-in entry's choice (what an untuned device gets)
 *   lanes16, lanes8, lanes4  the LANES schedule at that vector width
 *   group                    the GROUP schedule
 * each optionally followed by /tile=N, /chunks=N (chunks per compute unit) and /f16=N
 * (F16 slots per key pass), e.g. "lanes8/chunks=8" or "group/tile=128". */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "skv_tool.h"

int tool_variant_parse(const char *s, size_t len, skv_decode_params *p, int *is_default)
{
    memset(p, 0, sizeof *p);
    *is_default = 0;
    size_t head = strcspn(s, "/");
    head = head < len ? head : len;
    if (head == 7 && strncmp(s, "default", 7) == 0)
        *is_default = 1;
    else if (head == 7 && strncmp(s, "builtin", 7) == 0)
        *is_default = 2;
    else if (head == 5 && strncmp(s, "group", 5) == 0)
        p->schedule = SKV_SCHEDULE_GROUP;
    else if (head > 5 && strncmp(s, "lanes", 5) == 0) {
        p->schedule = SKV_SCHEDULE_LANES;
        if (head == 7 && strncmp(s + 5, "16", 2) == 0)
            p->lanes = 16;
        else if (head == 6 && (s[5] == '8' || s[5] == '4'))
            p->lanes = (uint32_t)(s[5] - '0');
        else
            return -1;
    } else
        return -1;
    for (size_t i = head; i < len;) { /* "/key=value" */
        i++;
        size_t n = strcspn(s + i, "/");
        n = i + n < len ? n : len - i;
        const char *eq = memchr(s + i, '=', n);
        if (!eq || *is_default)
            return -1;
        char *end;
        errno = 0;
        unsigned long v = strtoul(eq + 1, &end, 10);
        if (errno || end != s + i + n || end == eq + 1 || v == 0 || v > 4096)
            return -1;
        size_t k = (size_t)(eq - (s + i));
        if (k == 4 && strncmp(s + i, "tile", 4) == 0)
            p->tile = (uint32_t)v;
        else if (k == 6 && strncmp(s + i, "chunks", 6) == 0)
            p->chunks_per_cu = (uint32_t)v;
        else if (k == 3 && strncmp(s + i, "f16", 3) == 0)
            p->f16_slots = (uint32_t)v;
        else
            return -1;
        i += n;
    }
    return 0;
}

void tool_variant_name(const skv_decode_params *p, int tier, char *out, size_t n)
{
    if (p->schedule == SKV_SCHEDULE_LANES)
        snprintf(out, n, "lanes%u/tile=%u/chunks=%u", p->lanes, p->tile, p->chunks_per_cu);
    else
        snprintf(out, n, "group/tile=%u/chunks=%u", p->tile, p->chunks_per_cu);
    if (p->schedule == SKV_SCHEDULE_LANES && p->f16_slots && (tier < 0 || tier == SKV_TIER_F16)) {
        size_t u = strlen(out);
        snprintf(out + u, n - u, "/f16=%u", p->f16_slots);
    }
}

cJSON *tool_variant_json(const skv_decode_params *p)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "schedule", skv_schedule_str(p->schedule));
    if (p->schedule == SKV_SCHEDULE_LANES)
        cJSON_AddNumberToObject(o, "lanes", p->lanes);
    cJSON_AddNumberToObject(o, "tile", p->tile);
    cJSON_AddNumberToObject(o, "chunks_per_cu", p->chunks_per_cu);
    if (p->schedule == SKV_SCHEDULE_LANES)
        cJSON_AddNumberToObject(o, "f16_slots", p->f16_slots);
    return o;
}
