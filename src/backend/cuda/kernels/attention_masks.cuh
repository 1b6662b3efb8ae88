// What every attention kernel (attention.cu's exact f32 ones, flash_attention.cu's tensor-core ones) agrees on:
// the sizes they take, the score the softmax sees, which keys a query sees, and the bounds of the loops that
// skip the others. Prepended (after common.cuh) to every kernel file; see attention.cu's header for the rules.

// The sizes every attention kernel takes (by value; the Rust side mirrors it field for field).
struct AttentionDims {
    int tq, tk, heads, kv_heads, d, q_offset;
    float scale;
    int window;  // 0: no sliding window
    float clamp; // 0: no clamp
    int alibi;   // 0: no ALiBi bias
};

// ANCHOR: kernel_scores
// ALiBi's slope of head h (0 without ALiBi): 2^(−8(h+1)/p) for the first p = 2^⌊log₂ heads⌋ heads, then every
// other slope of 2p's list — in double, like the CPU path, so both round to the same float.
__device__ __forceinline__ float alibi_slope(const AttentionDims& a, int h) {
    if (!a.alibi) return 0.0f;
    int p = 1;
    while (2 * p <= a.heads) p *= 2;
    const double e = h < p ? -8.0 * (h + 1) / p : -4.0 * (2 * (h - p) + 1) / p;
    return (float)exp2(e);
}

// The score the softmax sees for key `key` from position `query_pos`, given q·k.
__device__ __forceinline__ float score(const AttentionDims& a, float dot, float slope, int query_pos, int key) {
    float s = dot * a.scale;
    if (a.clamp > 0.0f) s = fminf(fmaxf(s, -a.clamp), a.clamp);
    return s + slope * (float)(key - query_pos);
}

// Whether the clamp binds, so that ∂s/∂(q·k) = 0.
__device__ __forceinline__ bool clamp_binds(const AttentionDims& a, float dot) {
    return a.clamp > 0.0f && fabsf(dot * a.scale) > a.clamp;
}
// ANCHOR_END: kernel_scores

// ANCHOR: kernel_visible
__device__ __forceinline__ bool visible(const AttentionDims& a, const unsigned int* segment_ids, int query_pos,
                                        int key) {
    return key <= query_pos && (a.window == 0 || query_pos - key < a.window) &&
           (segment_ids == nullptr || segment_ids[key] == segment_ids[query_pos]);
}
// ANCHOR_END: kernel_visible

// ANCHOR: kernel_bounds
// The first key a query may see: the start of its document, or of its window if that is later.
__device__ __forceinline__ int first_key(const AttentionDims& a, const unsigned int* segment_first, int query_pos) {
    const int segment_start = segment_first ? (int)segment_first[query_pos] : 0;
    return a.window > 0 ? max(segment_start, query_pos + 1 - a.window) : segment_start;
}

// The queries that can see key j: from the first at or after it to the last of its document (and window).
__device__ __forceinline__ int first_query(const AttentionDims& a, int j) { return max(0, j - a.q_offset); }
__device__ __forceinline__ int last_query(const AttentionDims& a, const unsigned int* segment_last, int j) {
    int last = segment_last ? min(a.tq - 1, (int)segment_last[j] - a.q_offset) : a.tq - 1;
    if (a.window > 0) last = min(last, j + a.window - 1 - a.q_offset);
    return last;
}
// ANCHOR_END: kernel_bounds
