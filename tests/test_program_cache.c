/* The on-disk program-binary cache: a second context is served from disk, a corrupt or
 * truncated entry (or a FIFO in its place) is rebuilt silently, SKV_NO_CACHE and the descriptor switch are
 * honoured, and a kernel that fails to build reports its build log. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "host_internal.h"

static char *cache_dir;

static int setup(void **state)
{
    (void)state;
    unsetenv("SKV_NO_CACHE");
    cache_dir = test_tmpdir("cache");
    return cache_dir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    free(cache_dir);
    return 0;
}

/* Number of programs skv_context_prepare builds. */
static size_t program_count(void) { return skvi_context_program_count; }

/* Paths of the finished entries (*.bin) in dir; returns how many. */
static size_t list_entries(const char *dir, char paths[][600], size_t cap)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".bin") == 0) {
            if (n < cap)
                snprintf(paths[n], 600, "%s/%s", dir, e->d_name);
            n++;
        }
        assert_null(strstr(e->d_name, ".tmp.")); /* no temporary left behind */
    }
    closedir(d);
    return n;
}

static skv_context_stats prepare_in(const char *dir, int disable)
{
    skv_context_desc desc;
    skv_context_desc_init(&desc);
    desc.device = "cpu";
    desc.program_cache_dir = dir;
    desc.disable_program_cache = disable;
    skv_context *ctx = NULL;
    assert_ok(skv_context_create(&desc, &ctx));
    assert_ok(skv_context_prepare(ctx));
    assert_ok(skv_context_prepare(ctx)); /* the second call finds them in the context */
    skv_context_stats s = {.struct_size = sizeof s};
    assert_ok(skv_context_get_stats(ctx, &s));
    skv_context_destroy(ctx);
    return s;
}

static void test_second_build_from_disk(void **state)
{
    (void)state;
    size_t n = program_count();
    assert_true(n >= 1);
    skv_context_stats s = prepare_in(cache_dir, 0);
    assert_int_equal(s.programs_built, n);
    assert_int_equal(s.programs_from_cache, 0);
    assert_int_equal(s.cache_written, n);
    char paths[16][600];
    assert_int_equal(list_entries(cache_dir, paths, 16), n);

    s = prepare_in(cache_dir, 0);
    assert_int_equal(s.programs_built, 0);
    assert_int_equal(s.programs_from_cache, n);
    assert_int_equal(s.cache_rejected, 0);
}

static void corrupt_file(const char *path, int how)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    if (how == 0) { /* truncate: a writer that died mid-file */
        fclose(f);
        assert_int_equal(truncate(path, size / 2), 0);
        return;
    }
    /* flip bytes in the payload: a bad disk, or a stray write */
    fseek(f, size - 17, SEEK_SET);
    unsigned char b[8];
    assert_int_equal(fread(b, 1, 8, f), 8);
    for (int i = 0; i < 8; i++)
        b[i] ^= 0xA5;
    fseek(f, size - 17, SEEK_SET);
    fwrite(b, 1, 8, f);
    fclose(f);
}

static void test_corrupt_entry_rebuilt(void **state)
{
    (void)state;
    size_t n = program_count();
    char *dir = test_tmpdir("corrupt");
    prepare_in(dir, 0);
    char paths[16][600];
    assert_int_equal(list_entries(dir, paths, 16), n);
    for (int how = 0; how < 4; how++) {
        if (how < 2) {
            corrupt_file(paths[0], how);
        } else if (how == 2) { /* a zero-length file, e.g. from a full disk */
            FILE *f = fopen(paths[0], "wb");
            fclose(f);
        } else { /* a FIFO planted in the folder: read without blocking, then replaced */
            assert_int_equal(unlink(paths[0]), 0);
            assert_int_equal(mkfifo(paths[0], 0644), 0);
        }
        alarm(300); /* a hang is a failure, not a stuck test run */
        skv_context_stats s = prepare_in(dir, 0);
        alarm(0);
        assert_int_equal(s.cache_rejected, 1);
        assert_int_equal(s.programs_built, 1);
        assert_int_equal(s.programs_from_cache, n - 1);
        assert_int_equal(s.cache_written, 1);
        /* and the rewritten entry is good again */
        s = prepare_in(dir, 0);
        assert_int_equal(s.cache_rejected, 0);
        assert_int_equal(s.programs_from_cache, n);
    }
    free(dir);
}

static void test_cache_disabled(void **state)
{
    (void)state;
    size_t n = program_count();
    char paths[16][600];
    char *dir = test_tmpdir("nocache");

    setenv("SKV_NO_CACHE", "1", 1);
    skv_context_stats s = prepare_in(dir, 0);
    unsetenv("SKV_NO_CACHE");
    assert_int_equal(s.programs_built, n);
    assert_int_equal(s.cache_written, 0);
    assert_int_equal(list_entries(dir, paths, 16), 0);

    s = prepare_in(dir, 1);
    assert_int_equal(s.programs_built, n);
    assert_int_equal(s.cache_written, 0);
    assert_int_equal(list_entries(dir, paths, 16), 0);

    /* SKV_CACHE_DIR is the default location when the descriptor names none. */
    setenv("SKV_CACHE_DIR", dir, 1);
    s = prepare_in(NULL, 0);
    assert_int_equal(s.cache_written + s.programs_from_cache, n);
    assert_int_equal(list_entries(dir, paths, 16), n);
    free(dir);
}

static void test_unwritable_cache_is_not_an_error(void **state)
{
    (void)state;
    /* A cache folder that cannot be created (a file is in the way): builds still work. */
    char *dir = test_tmpdir("blocked");
    char blocked[700];
    snprintf(blocked, sizeof blocked, "%s/file", dir);
    FILE *f = fopen(blocked, "w");
    fclose(f);
    strcat(blocked, "/sub");
    skv_context_stats s = prepare_in(blocked, 0);
    assert_int_equal(s.programs_built, program_count());
    assert_int_equal(s.cache_write_failed, program_count());
    free(dir);
}

/* A full disk (a file size limit stands in: writes past it fail with EFBIG): the entry
 * is not written, no temporary is left behind, and a later write with room succeeds. */
static void test_full_disk_leaves_nothing(void **state)
{
    (void)state;
    char *dir = test_tmpdir("full");
    const char key[] = "0123456789abcdef0123456789abcdef";
    static unsigned char data[1 << 16];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 131u);
    struct rlimit old, small = {4096, 4096};
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    small.rlim_max = old.rlim_max;
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = skvi_cache_write(NULL, dir, key, data, sizeof data);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, was);
    assert_int_equal(rc, -1);
    char paths[4][600];
    assert_int_equal(list_entries(dir, paths, 4), 0); /* and no .tmp. (list_entries checks) */
    assert_int_equal(skvi_cache_write(NULL, dir, key, data, sizeof data), 0);
    unsigned char *back = NULL;
    size_t size = 0;
    assert_int_equal(skvi_cache_read(NULL, dir, key, &back, &size), SKVI_CACHE_HIT);
    assert_int_equal(size, sizeof data);
    assert_memory_equal(back, data, sizeof data);
    free(back);
    free(dir);
}

static void test_build_failure_reports_log(void **state)
{
    (void)state;
    skv_context_desc desc;
    skv_context_desc_init(&desc);
    desc.device = "cpu";
    desc.disable_program_cache = 1;
    skv_context *ctx = NULL;
    assert_ok(skv_context_create(&desc, &ctx));
    cl_program p = NULL;
    /* A tuning define that breaks the source, as a bad database entry would. */
    assert_int_equal(skvi_program_get(ctx, "stream_read.cl", "-Dacc=)", &p), SKV_ERR_BUILD);
    assert_null(p);
    assert_non_null(strstr(skv_context_last_error(ctx), "stream_read.cl"));
    assert_non_null(strstr(skv_context_last_error(ctx), "error")); /* the compiler's log */
    assert_int_equal(skvi_program_get(ctx, "no_such.cl", NULL, &p), SKV_ERR_INTERNAL);
    /* the context is still fine */
    assert_ok(skv_context_prepare(ctx));
    skv_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_second_build_from_disk),
        cmocka_unit_test(test_corrupt_entry_rebuilt),
        cmocka_unit_test(test_cache_disabled),
        cmocka_unit_test(test_unwritable_cache_is_not_an_error),
        cmocka_unit_test(test_full_disk_leaves_nothing),
        cmocka_unit_test(test_build_failure_reports_log),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
