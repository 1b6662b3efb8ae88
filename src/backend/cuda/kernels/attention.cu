// Causal grouped-query attention with segment masks, forward and backward. CPU mirror: `nn::attention`.
//
// One warp per (query row, head); the head's d ≤ 256 values are spread over the 32 lanes (lane ℓ holds
// elements ℓ, ℓ + 32, …), so a dot product is a per-lane partial sum and one `warp_sum`. Keys are visited in
// order with the online softmax (running max m, running sum l, rescaled accumulator), so nothing of size
// T×T is ever stored: memory is O(T), like the CPU path's tiles. The backward recomputes each probability
// from the saved log-sum-exp (FlashAttention-2's scheme) and is split in two passes so that no two warps
// ever add into the same gradient row: one over queries (dq), one over keys (dk, dv). Deterministic.
//
// Visibility: query i sits at position q_offset + i and sees key j iff j ≤ q_offset + i and, in a packed
// batch, segment_ids[j] == segment_ids[q_offset + i]. segment_first[p] / segment_last[p] are the first and
// last positions holding p's segment id, so the loops skip other documents without testing each key
// (segment ids need not be contiguous: visibility is still checked per key). All three may be null.

#define MAX_HEAD_DIM 256
#define PER_LANE (MAX_HEAD_DIM / 32)

// The sizes every attention kernel takes (by value; the Rust side mirrors it field for field).
struct AttentionDims {
    int tq, tk, heads, kv_heads, d, q_offset;
    float scale;
};

// Which (query row, head) a warp of a query-major kernel owns, and where its rows start.
struct QueryWarp {
    int i, h, lane;
    long long q_at;   // offset of row i, head h in a [tq, heads·d] matrix
    long long kv_off; // offset of the KV head h reads within a [tk, kv_heads·d] row
};

__device__ __forceinline__ bool query_warp(const AttentionDims& a, QueryWarp* w) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    if (warp >= a.tq * a.heads) return false;
    w->lane = threadIdx.x & 31;
    w->i = warp / a.heads;
    w->h = warp % a.heads;
    w->q_at = (long long)w->i * a.heads * a.d + (long long)w->h * a.d;
    w->kv_off = (long long)(w->h / (a.heads / a.kv_heads)) * a.d;
    return true;
}

__device__ __forceinline__ bool visible(const unsigned int* segment_ids, int query_pos, int key) {
    return key <= query_pos && (segment_ids == nullptr || segment_ids[key] == segment_ids[query_pos]);
}

__device__ __forceinline__ void load_row(float* dst, const float* src, int d, int lane) {
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        dst[e] = idx < d ? src[idx] : 0.0f;
    }
}

__device__ __forceinline__ float dot_row(const float* mine, const float* other, int d, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) s = fmaf(mine[e], other[idx], s);
    }
    return warp_sum(s);
}

// ANCHOR: attention_forward_kernel
// out: [tq, heads·d], lse: [tq, heads]
extern "C" __global__ void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                             const unsigned int* segment_ids, const unsigned int* segment_first,
                                             AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    const int d = a.d, lane = w.lane;
    const long long kv_stride = (long long)a.kv_heads * d;
    float qi[PER_LANE], acc[PER_LANE];
    load_row(qi, q + w.q_at, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc[e] = 0.0f;
    const int query_pos = a.q_offset + w.i;
    float m = -INFINITY, l = 0.0f;
    for (int j = segment_first ? (int)segment_first[query_pos] : 0; j <= query_pos; ++j) {
        if (!visible(segment_ids, query_pos, j)) continue;
        const float* kj = k + j * kv_stride + w.kv_off;
        const float* vj = v + j * kv_stride + w.kv_off;
        const float s = dot_row(qi, kj, d, lane) * a.scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new), p = expf(s - m_new);  // exp(−∞) = 0 on the first key
        l = l * correction + p;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const int idx = lane + 32 * e;
            if (idx < d) acc[e] = fmaf(p, vj[idx], acc[e] * correction);
        }
        m = m_new;
    }
    float* oi = out + w.q_at;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) oi[idx] = acc[e] / l;
    }
    if (lane == 0) lse[(long long)w.i * a.heads + w.h] = m + logf(l);
}
// ANCHOR_END: attention_forward_kernel

// delta[i, h] = Σ_d dout·out, the row term of the softmax backward: ∂L/∂s_ij = p_ij·(dout_i·v_j − delta_i).
extern "C" __global__ void attention_delta(float* delta, const float* dout, const float* out, AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    float mine[PER_LANE];
    load_row(mine, dout + w.q_at, a.d, w.lane);
    const float s = dot_row(mine, out + w.q_at, a.d, w.lane);
    if (w.lane == 0) delta[(long long)w.i * a.heads + w.h] = s;
}

// dq_i = scale · Σ_j ds_ij·k_j, one warp per (query, head).
extern "C" __global__ void attention_backward_dq(float* dq, const float* dout, const float* q, const float* k,
                                                 const float* v, const float* lse, const float* delta,
                                                 const unsigned int* segment_ids, const unsigned int* segment_first,
                                                 AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    const int d = a.d, lane = w.lane;
    const long long kv_stride = (long long)a.kv_heads * d, ih = (long long)w.i * a.heads + w.h;
    float qi[PER_LANE], doi[PER_LANE], acc[PER_LANE];
    load_row(qi, q + w.q_at, d, lane);
    load_row(doi, dout + w.q_at, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc[e] = 0.0f;
    const float lse_i = lse[ih], delta_i = delta[ih];
    const int query_pos = a.q_offset + w.i;
    for (int j = segment_first ? (int)segment_first[query_pos] : 0; j <= query_pos; ++j) {
        if (!visible(segment_ids, query_pos, j)) continue;
        const float* kj = k + j * kv_stride + w.kv_off;
        const float p = expf(dot_row(qi, kj, d, lane) * a.scale - lse_i);
        const float ds = p * (dot_row(doi, v + j * kv_stride + w.kv_off, d, lane) - delta_i);
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const int idx = lane + 32 * e;
            if (idx < d) acc[e] = fmaf(ds, kj[idx], acc[e]);
        }
    }
    float* dqi = dq + w.q_at;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) dqi[idx] = acc[e] * a.scale;
    }
}

// ANCHOR: attention_backward_dkdv
// dk_j = scale · Σ_{h in group, i} ds_ij·q_i and dv_j = Σ p_ij·dout_i, one warp per (key, KV head): the sum
// over the query heads that share this KV head (GQA) happens inside the warp, in order.
extern "C" __global__ void attention_backward_dkdv(float* dk, float* dv, const float* dout, const float* q,
                                                   const float* k, const float* v, const float* lse,
                                                   const float* delta, const unsigned int* segment_ids,
                                                   const unsigned int* segment_last, AttentionDims a) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= a.tk * a.kv_heads) return;
    const int tq = a.tq, heads = a.heads, d = a.d, q_offset = a.q_offset;
    const int j = warp / a.kv_heads, g = warp % a.kv_heads, group = heads / a.kv_heads;
    const long long q_stride = (long long)heads * d, kv_stride = (long long)a.kv_heads * d;
    float kj[PER_LANE], vj[PER_LANE], dk_acc[PER_LANE], dv_acc[PER_LANE];
    load_row(kj, k + j * kv_stride + g * d, d, lane);
    load_row(vj, v + j * kv_stride + g * d, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) dk_acc[e] = dv_acc[e] = 0.0f;
    const int first_query = j > q_offset ? j - q_offset : 0;  // the first query that can see key j
    // the last query of key j's document (a query past it belongs to another document)
    const int last_query = segment_last ? min(tq - 1, (int)segment_last[j] - q_offset) : tq - 1;
    for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int i = first_query; i <= last_query; ++i) {
            if (!visible(segment_ids, q_offset + i, j)) continue;
            const float* qi = q + i * q_stride + h * d;
            const float* doi = dout + i * q_stride + h * d;
            const long long ih = (long long)i * heads + h;
            const float p = expf(dot_row(kj, qi, d, lane) * a.scale - lse[ih]);
            const float ds = p * (dot_row(vj, doi, d, lane) - delta[ih]);
#pragma unroll
            for (int e = 0; e < PER_LANE; ++e) {
                const int idx = lane + 32 * e;
                if (idx < d) {
                    dv_acc[e] = fmaf(p, doi[idx], dv_acc[e]);
                    dk_acc[e] = fmaf(ds, qi[idx], dk_acc[e]);
                }
            }
        }
    }
    float* dkj = dk + j * kv_stride + g * d;
    float* dvj = dv + j * kv_stride + g * d;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) {
            dkj[idx] = dk_acc[e] * a.scale;
            dvj[idx] = dv_acc[e];
        }
    }
}
// ANCHOR_END: attention_backward_dkdv
