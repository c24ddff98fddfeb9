/* Streaming-read probe: the device's read bandwidth ceiling, which decode attention is
 * measured against (`skv bench`). Each work-item folds a grid-strided range of 16-byte
 * words with XOR (cheap, cannot be optimised away) and writes one word. C reference:
 * skv_ref_stream_read in src/ref_stream.c. */
__kernel void stream_read(__global const uint4 *restrict in, ulong n_words, __global uint *restrict out)
{
    size_t gid = get_global_id(0);
    size_t stride = get_global_size(0);
    uint4 acc = (uint4)(0u);
    for (ulong i = gid; i < n_words; i += stride)
        acc ^= in[i];
    out[gid] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
