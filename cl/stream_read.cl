/* Streaming-read probe: the device's read bandwidth ceiling, which decode attention is
 * measured against (`skv bench`). Each work-item folds its 16-byte words with XOR (cheap,
 * cannot be optimised away) and writes one word. Two partitions of the words:
 *   strided (GPUs): item g reads g, g + items, ... so neighbours read neighbouring words;
 *   blocked (CPUs, SKV_STREAM_BLOCKED): item g reads one contiguous run, as a core's
 *   prefetcher wants.
 * C reference: skv_ref_stream_read in src/ref_stream.c. */
__kernel void stream_read(__global const uint4 *restrict in, ulong n_words, __global uint *restrict out)
{
    const size_t gid = get_global_id(0);
    const size_t items = get_global_size(0);
    uint4 acc = (uint4)(0u);
#ifdef SKV_STREAM_BLOCKED
    const ulong per = (n_words + items - 1) / items;
    const ulong end = min(n_words, (gid + 1) * per);
    for (ulong i = gid * per; i < end; i++)
        acc ^= in[i];
#else
    for (ulong i = gid; i < n_words; i += items)
        acc ^= in[i];
#endif
    out[gid] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
