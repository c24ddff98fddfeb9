/* On-disk cache of program binaries: one file per key, validated on read, written
 * atomically (temporary file + rename) so concurrent processes never see half a file. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "skv_internal.h"

#define ENTRY_MAGIC "SKVPBIN"  /* 8 bytes with the terminator */
#define ENTRY_VERSION 1u

typedef struct entry_header {
    char magic[8];
    uint32_t version;
    uint32_t reserved;
    char key[32];
    uint64_t payload_size;
    uint64_t payload_hash;
} entry_header;

static char *join_path(const skv_allocator *a, const char *dir, const char *name, const char *suffix)
{
    size_t n = strlen(dir) + 1 + strlen(name) + strlen(suffix) + 1;
    char *p = skvi_alloc(a, n);
    if (p)
        snprintf(p, n, "%s/%s%s", dir, name, suffix);
    return p;
}

char *skvi_cache_dir_resolve(const skv_allocator *a, const char *explicit_dir)
{
    if (explicit_dir && explicit_dir[0])
        return skvi_strdup(a, explicit_dir);
    const char *env = getenv("SKV_CACHE_DIR");
    if (env && env[0])
        return skvi_strdup(a, env);
    env = getenv("XDG_CACHE_HOME");
    if (env && env[0])
        return join_path(a, env, "skv", "");
    env = getenv("HOME");
    if (env && env[0])
        return join_path(a, env, ".cache/skv", "");
    return NULL;
}

static int read_all(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The header at the start of an entry of `file_size` bytes, for `key_hex`: 1 and the
 * payload's size and hash when it is one skv wrote for that key, else 0. */
static int header_check(const unsigned char *bytes, const char *key_hex, uint64_t file_size, size_t *payload_size,
                        uint64_t *payload_hash)
{
    entry_header h;
    if (file_size < sizeof h)
        return 0;
    memcpy(&h, bytes, sizeof h);
    if (memcmp(h.magic, ENTRY_MAGIC, sizeof h.magic) != 0 || h.version != ENTRY_VERSION ||
        memcmp(h.key, key_hex, sizeof h.key) != 0 || h.payload_size == 0 ||
        h.payload_size != file_size - sizeof h || h.payload_size > SIZE_MAX)
        return 0;
    *payload_size = (size_t)h.payload_size;
    *payload_hash = h.payload_hash;
    return 1;
}

int skvi_cache_entry_parse(const unsigned char *bytes, size_t size, const char *key_hex,
                           const unsigned char **payload, size_t *payload_size)
{
    uint64_t hash;
    size_t n;
    if (!header_check(bytes, key_hex, size, &n, &hash) || skvi_hash64(bytes + sizeof(entry_header), n) != hash)
        return 0;
    *payload = bytes + sizeof(entry_header);
    *payload_size = n;
    return 1;
}

skvi_cache_result skvi_cache_read(const skv_allocator *a, const char *dir, const char *key_hex,
                                  unsigned char **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    char *path = join_path(a, dir, key_hex, ".bin");
    if (!path)
        return SKVI_CACHE_ERROR;
    /* non-blocking: a FIFO planted in a shared cache folder must not stall the open */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        skvi_free(a, path);
        return SKVI_CACHE_MISS;
    }
    skvi_cache_result result = SKVI_CACHE_CORRUPT;
    unsigned char *payload = NULL, header[sizeof(entry_header)];
    size_t n = 0;
    uint64_t hash = 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < sizeof header ||
        read_all(fd, header, sizeof header) != 0 || /* only a regular file is an entry */
        !header_check(header, key_hex, (uint64_t)st.st_size, &n, &hash))
        goto done;
    payload = skvi_alloc(a, n);
    if (!payload) {
        result = SKVI_CACHE_ERROR;
        goto done;
    }
    if (read_all(fd, payload, n) != 0 || skvi_hash64(payload, n) != hash)
        goto done;
    *data = payload;
    *size = n;
    payload = NULL;
    result = SKVI_CACHE_HIT;
done:
    close(fd);
    if (result == SKVI_CACHE_CORRUPT)
        unlink(path); /* a bad entry is never read twice; the rebuild rewrites it */
    skvi_free(a, payload);
    skvi_free(a, path);
    return result;
}

/* mkdir -p; 0 on success. */
static int make_dirs(const skv_allocator *a, const char *dir)
{
    char *p = skvi_strdup(a, dir);
    if (!p)
        return -1;
    int rc = 0;
    for (char *s = p + 1; rc == 0; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rc = -1;
        *s = saved;
        if (saved == '\0')
            break;
    }
    skvi_free(a, p);
    return rc;
}

int skvi_cache_write(const skv_allocator *a, const char *dir, const char *key_hex,
                     const unsigned char *data, size_t size)
{
    static _Thread_local unsigned counter;
    if (make_dirs(a, dir) != 0)
        return -1;
    char suffix[64];
    snprintf(suffix, sizeof suffix, ".bin.tmp.%ld.%u", (long)getpid(), counter++);
    char *tmp = join_path(a, dir, key_hex, suffix);
    char *path = join_path(a, dir, key_hex, ".bin");
    int rc = -1;
    if (!tmp || !path)
        goto done;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        goto done;
    entry_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, ENTRY_MAGIC, sizeof h.magic);
    h.version = ENTRY_VERSION;
    memcpy(h.key, key_hex, sizeof h.key);
    h.payload_size = size;
    h.payload_hash = skvi_hash64(data, size);
    int ok = write_all(fd, &h, sizeof h) == 0 && write_all(fd, data, size) == 0;
    if (close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, path) == 0)
        rc = 0;
    else
        unlink(tmp);
done:
    skvi_free(a, tmp);
    skvi_free(a, path);
    return rc;
}
