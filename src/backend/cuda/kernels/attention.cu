// Causal grouped-query attention with segment masks, forward and backward. CPU mirror: `nn::attention`.
//
// Two families of kernels, chosen by the Rust side from head_dim:
//
// * Tiled (head_dim ≤ TILED_MAX_D = 128): a block of TILE_WARPS = 8 warps owns 8 consecutive query rows of one
//   head (forward, dq) or 8 consecutive keys of one KV head (dk/dv). The rows of the other side go through
//   shared memory in tiles of TILE = 32, loaded once per block by all its threads: every warp then scores its
//   row against the tile with lane = key (or lane = query), each lane one whole dot product, so a tile costs
//   one warp_max and one warp_sum instead of a 5-step reduction per score. The weighted sums (output, dq,
//   dk, dv) then run with lanes over the head dimension, each weight broadcast from its lane by __shfl_sync.
// * Per key (128 < head_dim ≤ 256, the fallback): one warp per (query row, head) or (key, KV head); the row's
//   d values are spread over the lanes and keys are visited one at a time, each score one warp_sum.
//
// Both use the online softmax (running max m, running sum l, rescaled accumulator), so nothing of size T×T is
// ever stored: memory is O(T), like the CPU path's tiles. The backward recomputes each probability from the
// saved log-sum-exp (FlashAttention-2's scheme) and is split in two passes so that no two warps ever add into
// the same gradient row: one over queries (dq), one over keys (dk, dv). No atomics: deterministic.
//
// Visibility: query i sits at position q_offset + i and sees key j iff j ≤ q_offset + i and, in a packed
// batch, segment_ids[j] == segment_ids[q_offset + i]. segment_first[p] / segment_last[p] are the first and
// last positions holding p's segment id, so the loops skip other documents without testing each key
// (segment ids need not be contiguous: visibility is still checked per key). All three may be null. With a
// sliding window w > 0 (Mistral, Qwen2) a query also sees only keys with query_pos − j < w.
//
// Scores: s = clamp(q·k·scale, ±clamp) + slope_h·(j − query_pos) — the clamp when clamp > 0 (Aquila2), the
// ALiBi bias when alibi != 0 (Baichuan2-13B; the slopes of `nn::attention_scores`). Where the clamp binds the
// score's gradient is zero.

// AttentionDims, the scores, the visibility and the loops' bounds: attention_masks.cuh (shared with
// flash_attention.cu, the tensor-core kernels of Precision::Bf16).

// ---------------------------------------------------------------------------------------------------------------
// Tiled kernels, head_dim ≤ 128.

#define TILE 32        // keys (forward, dq) or queries (dk/dv) per shared-memory tile: one per lane
#define TILE_WARPS 8   // warps per block = query rows (forward, dq) or keys (dk/dv) a block owns
#define TILED_MAX_D 128
#define TILED_PER_LANE (TILED_MAX_D / 32)
// A tile row's stride in floats. 129 ≡ 1 (mod 32): lane ℓ reading element e of row ℓ hits bank (ℓ + e) mod 32,
// so the 32 lanes of a lane = key dot product read 32 different banks whatever d is.
#define TILE_STRIDE (TILED_MAX_D + 1)
#define TILE_FLOATS (TILE * TILE_STRIDE)
#define ROWS_FLOATS (TILE_WARPS * TILED_MAX_D)  // one unpadded row per warp (read as a broadcast)

// Static shared memory per block (the limit without opting in is 48 KB): two padded tiles, two rows per warp
// and the dk/dv pass's per-query lse and delta. The dq and dk/dv passes are the largest, at 40.5 KB.
static_assert(sizeof(float) * (2 * TILE_FLOATS + 2 * ROWS_FLOATS + 2 * TILE) <= 48 * 1024,
              "the tiled attention kernels' shared memory exceeds 48 KB");

// Rows first .. first + n − 1 (n ≤ TILE) of a matrix with `row_stride` floats per row, d columns from `src`,
// into a padded tile; the whole block loads, consecutive threads reading consecutive columns.
__device__ __forceinline__ void load_tile(float* tile, const float* src, long long row_stride, int first, int n,
                                          int d) {
    for (int idx = threadIdx.x; idx < n * d; idx += blockDim.x) {
        const int r = idx / d, c = idx - r * d;
        tile[r * TILE_STRIDE + c] = src[(long long)(first + r) * row_stride + c];
    }
}

// One warp copies its own d-element row into shared memory (read by every lane after the next __syncthreads).
__device__ __forceinline__ void copy_row(float* dst, const float* src, int d, int lane) {
    for (int idx = lane; idx < d; idx += 32) dst[idx] = src[idx];
}

// lane = key: lane ℓ's dot product of the shared row x (a broadcast read) with row ℓ of a padded tile.
__device__ __forceinline__ float dot_tile_row(const float* x, const float* tile, int d, int lane) {
    const float* row = tile + lane * TILE_STRIDE;
    float s = 0.0f;
    for (int e = 0; e < d; ++e) s = fmaf(x[e], row[e], s);
    return s;
}

// lanes over the head dimension: acc[e] += Σ_{r < n} w_r · tile[r][lane + 32e], where lane r holds w_r.
// n is the same in every lane (every lane must take part in the shuffle).
__device__ __forceinline__ void accumulate_tile(float* acc, float w, const float* tile, int n, int d, int lane) {
    for (int r = 0; r < n; ++r) {
        const float wr = __shfl_sync(0xffffffffu, w, r);
        const float* row = tile + r * TILE_STRIDE;
#pragma unroll
        for (int e = 0; e < TILED_PER_LANE; ++e) {
            const int idx = lane + 32 * e;
            if (idx < d) acc[e] = fmaf(wr, row[idx], acc[e]);
        }
    }
}


// What a warp of a query-major tiled kernel (forward, dq) owns: query row i of head h, if it is a row at all
// (the last block may have fewer than TILE_WARPS), and the keys the whole block walks.
struct QueryBlock {
    int i, h, lane, warp, query_pos;
    bool active;
    int my_first;           // the first key this warp's query may see
    int key_lo, key_hi;     // the block's key range: the smallest my_first .. the largest query position
    long long q_at, kv_off; // offset of row i, head h in [tq, heads·d]; of its KV head in a [tk, kv_heads·d] row
};

__device__ __forceinline__ QueryBlock query_block(const AttentionDims& a, const unsigned int* segment_first) {
    QueryBlock b;
    b.lane = threadIdx.x & 31;
    b.warp = threadIdx.x >> 5;
    b.h = blockIdx.y;
    const int i0 = blockIdx.x * TILE_WARPS, rows = min(TILE_WARPS, a.tq - i0);
    b.i = i0 + b.warp;
    b.active = b.warp < rows;
    b.query_pos = a.q_offset + b.i;
    b.q_at = (long long)b.i * a.heads * a.d + (long long)b.h * a.d;
    b.kv_off = (long long)(b.h / (a.heads / a.kv_heads)) * a.d;
    b.key_hi = a.q_offset + i0 + rows - 1;
    b.key_lo = b.key_hi + 1;  // an empty range when the block has no rows
    for (int r = 0; r < rows; ++r) b.key_lo = min(b.key_lo, first_key(a, segment_first, a.q_offset + i0 + r));
    b.my_first = b.active ? first_key(a, segment_first, b.query_pos) : 0;
    return b;
}

// ANCHOR: attention_forward_kernel
// out: [tq, heads·d], lse: [tq, heads]. Grid (⌈tq / 8⌉, heads), 8 warps per block, head_dim ≤ 128.
extern "C" __global__ void attention_forward_tiled(float* out, float* lse, const float* q, const float* k,
                                                   const float* v, const unsigned int* segment_ids,
                                                   const unsigned int* segment_first, AttentionDims a) {
    __shared__ float k_tile[TILE_FLOATS], v_tile[TILE_FLOATS], q_rows[ROWS_FLOATS];
    const QueryBlock b = query_block(a, segment_first);
    const int d = a.d, lane = b.lane;
    const long long kv_stride = (long long)a.kv_heads * d;
    float* my_q = q_rows + b.warp * TILED_MAX_D;
    if (b.active) copy_row(my_q, q + b.q_at, d, lane);
    const float slope = alibi_slope(a, b.h);
    float m = -INFINITY, l = 0.0f, acc[TILED_PER_LANE];
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) acc[e] = 0.0f;
    for (int t0 = b.key_lo; t0 <= b.key_hi; t0 += TILE) {
        const int n = min(TILE, b.key_hi + 1 - t0);  // keys t0 .. t0 + n − 1, the same for the whole block
        __syncthreads();                            // every warp is done with the previous tile (and my_q is written)
        load_tile(k_tile, k + b.kv_off, kv_stride, t0, n, d);
        load_tile(v_tile, v + b.kv_off, kv_stride, t0, n, d);
        __syncthreads();
        if (!b.active || t0 > b.query_pos || t0 + n <= b.my_first) continue;  // nothing this warp can see
        // lane = key: one score per lane, invisible keys −∞
        const int j = t0 + lane;
        const bool see = lane < n && visible(a, segment_ids, b.query_pos, j);
        const float s = see ? score(a, dot_tile_row(my_q, k_tile, d, lane), slope, b.query_pos, j) : -INFINITY;
        const float tile_max = warp_max(s);
        if (tile_max == -INFINITY) continue;  // another document's keys only (the same in every lane)
        const float m_new = fmaxf(m, tile_max);
        const float correction = expf(m - m_new);  // exp(−∞) = 0 on the first visible tile
        const float p = expf(s - m_new);            // 0 for the invisible keys
        l = l * correction + warp_sum(p);
#pragma unroll
        for (int e = 0; e < TILED_PER_LANE; ++e) acc[e] *= correction;
        accumulate_tile(acc, p, v_tile, n, d, lane);  // lanes over the head dimension again
        m = m_new;
    }
    if (!b.active) return;
    float* oi = out + b.q_at;
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) oi[idx] = acc[e] / l;
    }
    if (lane == 0) lse[(long long)b.i * a.heads + b.h] = m + logf(l);
}
// ANCHOR_END: attention_forward_kernel

// dq_i = scale · Σ_j ds_ij·k_j, ds_ij = p_ij·(dout_i·v_j − delta_i). Grid (⌈tq / 8⌉, heads), 8 warps per block.
extern "C" __global__ void attention_backward_dq_tiled(float* dq, const float* dout, const float* q, const float* k,
                                                       const float* v, const float* lse, const float* delta,
                                                       const unsigned int* segment_ids,
                                                       const unsigned int* segment_first, AttentionDims a) {
    __shared__ float k_tile[TILE_FLOATS], v_tile[TILE_FLOATS], q_rows[ROWS_FLOATS], dout_rows[ROWS_FLOATS];
    const QueryBlock b = query_block(a, segment_first);
    const int d = a.d, lane = b.lane;
    const long long kv_stride = (long long)a.kv_heads * d, ih = (long long)b.i * a.heads + b.h;
    float* my_q = q_rows + b.warp * TILED_MAX_D;
    float* my_dout = dout_rows + b.warp * TILED_MAX_D;
    const float slope = alibi_slope(a, b.h);
    float lse_i = 0.0f, delta_i = 0.0f, acc[TILED_PER_LANE];
    if (b.active) {
        copy_row(my_q, q + b.q_at, d, lane);
        copy_row(my_dout, dout + b.q_at, d, lane);
        lse_i = lse[ih];
        delta_i = delta[ih];
    }
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) acc[e] = 0.0f;
    for (int t0 = b.key_lo; t0 <= b.key_hi; t0 += TILE) {
        const int n = min(TILE, b.key_hi + 1 - t0);
        __syncthreads();
        load_tile(k_tile, k + b.kv_off, kv_stride, t0, n, d);
        load_tile(v_tile, v + b.kv_off, kv_stride, t0, n, d);
        __syncthreads();
        if (!b.active || t0 > b.query_pos || t0 + n <= b.my_first) continue;
        float ds = 0.0f;  // lane = key
        if (lane < n && visible(a, segment_ids, b.query_pos, t0 + lane)) {
            const float dot = dot_tile_row(my_q, k_tile, d, lane);
            const float p = expf(score(a, dot, slope, b.query_pos, t0 + lane) - lse_i);
            ds = clamp_binds(a, dot) ? 0.0f : p * (dot_tile_row(my_dout, v_tile, d, lane) - delta_i);
        }
        accumulate_tile(acc, ds, k_tile, n, d, lane);
    }
    if (!b.active) return;
    float* dqi = dq + b.q_at;
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) dqi[idx] = acc[e] * a.scale;
    }
}

// ANCHOR: attention_backward_dkdv
// dk_j = scale · Σ_{h in group, i} ds_ij·q_i and dv_j = Σ p_ij·dout_i. Grid (⌈tk / 8⌉, kv_heads), 8 warps per
// block, one key each; the queries go through shared memory in tiles of 32, lane = query. The sum over the
// query heads that share this KV head (GQA) is the outer loop, inside the warp, in order.
extern "C" __global__ void attention_backward_dkdv_tiled(float* dk, float* dv, const float* dout, const float* q,
                                                         const float* k, const float* v, const float* lse,
                                                         const float* delta, const unsigned int* segment_ids,
                                                         const unsigned int* segment_last, AttentionDims a) {
    __shared__ float q_tile[TILE_FLOATS], dout_tile[TILE_FLOATS], k_rows[ROWS_FLOATS], v_rows[ROWS_FLOATS];
    __shared__ float lse_tile[TILE], delta_tile[TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = blockIdx.y;
    const int d = a.d, heads = a.heads, group = heads / a.kv_heads;
    const int j0 = blockIdx.x * TILE_WARPS, keys = min(TILE_WARPS, a.tk - j0), j = j0 + warp;
    const bool active = warp < keys;
    const long long q_stride = (long long)heads * d, kv_at = (long long)j * a.kv_heads * d + (long long)g * d;
    float* my_k = k_rows + warp * TILED_MAX_D;
    float* my_v = v_rows + warp * TILED_MAX_D;
    int my_lo = 0, my_hi = -1;  // the queries that can see key j
    if (active) {
        copy_row(my_k, k + kv_at, d, lane);
        copy_row(my_v, v + kv_at, d, lane);
        my_lo = first_query(a, j);
        my_hi = last_query(a, segment_last, j);
    }
    // the block's queries: from the first its smallest key can see to the last any of its keys can see
    const int query_lo = first_query(a, j0);
    int query_hi = -1;
    for (int r = 0; r < keys; ++r) query_hi = max(query_hi, last_query(a, segment_last, j0 + r));
    float dk_acc[TILED_PER_LANE], dv_acc[TILED_PER_LANE];
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) dk_acc[e] = dv_acc[e] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; ++h) {
        const float slope = alibi_slope(a, h);
        for (int t0 = query_lo; t0 <= query_hi; t0 += TILE) {
            const int n = min(TILE, query_hi + 1 - t0);  // queries t0 .. t0 + n − 1
            __syncthreads();
            load_tile(q_tile, q + (long long)h * d, q_stride, t0, n, d);
            load_tile(dout_tile, dout + (long long)h * d, q_stride, t0, n, d);
            if ((int)threadIdx.x < n) {
                const long long ih = (long long)(t0 + threadIdx.x) * heads + h;
                lse_tile[threadIdx.x] = lse[ih];
                delta_tile[threadIdx.x] = delta[ih];
            }
            __syncthreads();
            if (!active || t0 > my_hi || t0 + n <= my_lo) continue;
            float p = 0.0f, ds = 0.0f;  // lane = query
            if (lane < n && visible(a, segment_ids, a.q_offset + t0 + lane, j)) {
                const float dot = dot_tile_row(my_k, q_tile, d, lane);
                p = expf(score(a, dot, slope, a.q_offset + t0 + lane, j) - lse_tile[lane]);
                ds = clamp_binds(a, dot) ? 0.0f : p * (dot_tile_row(my_v, dout_tile, d, lane) - delta_tile[lane]);
            }
            accumulate_tile(dv_acc, p, dout_tile, n, d, lane);
            accumulate_tile(dk_acc, ds, q_tile, n, d, lane);
        }
    }
    if (!active) return;
#pragma unroll
    for (int e = 0; e < TILED_PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) {
            dk[kv_at + idx] = dk_acc[e] * a.scale;
            dv[kv_at + idx] = dv_acc[e];
        }
    }
}
// ANCHOR_END: attention_backward_dkdv

// ---------------------------------------------------------------------------------------------------------------
// Per-key kernels: the fallback for 128 < head_dim ≤ 256, and the delta pass for every head_dim. One warp per
// (query row, head) or (key, KV head); the head's d values are spread over the 32 lanes (lane ℓ holds elements
// ℓ, ℓ + 32, …), so a dot product is a per-lane partial sum and one `warp_sum`, and keys go one at a time.

#define MAX_HEAD_DIM 256
#define PER_LANE (MAX_HEAD_DIM / 32)

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

__device__ __forceinline__ void load_row(float* dst, const float* src, int d, int lane) {
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        dst[e] = idx < d ? src[idx] : 0.0f;
    }
}

// `other` in f32, or in bf16 bits (the tensor-core forward's output, which only products and delta read)
template <typename T>
__device__ __forceinline__ float dot_row(const float* mine, const T* other, int d, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int idx = lane + 32 * e;
        if (idx < d) s = fmaf(mine[e], load(other, idx), s);
    }
    return warp_sum(s);
}

// out: [tq, heads·d], lse: [tq, heads]. Grid: one warp per (query row, head), 4 warps per block.
extern "C" __global__ void attention_forward_per_key(float* out, float* lse, const float* q, const float* k,
                                                     const float* v, const unsigned int* segment_ids,
                                                     const unsigned int* segment_first, AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    const int d = a.d, lane = w.lane;
    const long long kv_stride = (long long)a.kv_heads * d;
    float qi[PER_LANE], acc[PER_LANE];
    load_row(qi, q + w.q_at, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc[e] = 0.0f;
    const int query_pos = a.q_offset + w.i;
    const float slope = alibi_slope(a, w.h);
    float m = -INFINITY, l = 0.0f;
    for (int j = first_key(a, segment_first, query_pos); j <= query_pos; ++j) {
        if (!visible(a, segment_ids, query_pos, j)) continue;
        const float* kj = k + j * kv_stride + w.kv_off;
        const float* vj = v + j * kv_stride + w.kv_off;
        const float s = score(a, dot_row(qi, kj, d, lane), slope, query_pos, j);
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

// delta[i, h] = Σ_d dout·out, the row term of the softmax backward: ∂L/∂s_ij = p_ij·(dout_i·v_j − delta_i).
// One warp per (query row, head), for every head_dim (the tiled backward reads it too).
template <typename Out>
__device__ __forceinline__ void attention_delta_row(float* delta, const float* dout, const Out* out, AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    float mine[PER_LANE];
    load_row(mine, dout + w.q_at, a.d, w.lane);
    const float s = dot_row(mine, out + w.q_at, a.d, w.lane);
    if (w.lane == 0) delta[(long long)w.i * a.heads + w.h] = s;
}

extern "C" __global__ void attention_delta(float* delta, const float* dout, const float* out, AttentionDims a) {
    attention_delta_row(delta, dout, out, a);
}

extern "C" __global__ void attention_delta_bf16(float* delta, const float* dout, const unsigned short* out,
                                                AttentionDims a) {
    attention_delta_row(delta, dout, out, a);
}

// dq_i = scale · Σ_j ds_ij·k_j, one warp per (query, head).
extern "C" __global__ void attention_backward_dq_per_key(float* dq, const float* dout, const float* q,
                                                         const float* k, const float* v, const float* lse,
                                                         const float* delta, const unsigned int* segment_ids,
                                                         const unsigned int* segment_first, AttentionDims a) {
    QueryWarp w;
    if (!query_warp(a, &w)) return;
    const int d = a.d, lane = w.lane;
    const long long kv_stride = (long long)a.kv_heads * d, ih = (long long)w.i * a.heads + w.h;
    float qi[PER_LANE], doi[PER_LANE], acc[PER_LANE];
    load_row(qi, q + w.q_at, d, lane);
    load_row(doi, dout + w.q_at, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc[e] = 0.0f;
    const float lse_i = lse[ih], delta_i = delta[ih], slope = alibi_slope(a, w.h);
    const int query_pos = a.q_offset + w.i;
    for (int j = first_key(a, segment_first, query_pos); j <= query_pos; ++j) {
        if (!visible(a, segment_ids, query_pos, j)) continue;
        const float* kj = k + j * kv_stride + w.kv_off;
        const float dot = dot_row(qi, kj, d, lane);
        const float p = expf(score(a, dot, slope, query_pos, j) - lse_i);
        const float dp = dot_row(doi, v + j * kv_stride + w.kv_off, d, lane);  // every lane: a warp sum
        const float ds = clamp_binds(a, dot) ? 0.0f : p * (dp - delta_i);
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

// dk_j = scale · Σ_{h in group, i} ds_ij·q_i and dv_j = Σ p_ij·dout_i, one warp per (key, KV head): the sum
// over the query heads that share this KV head (GQA) happens inside the warp, in order.
extern "C" __global__ void attention_backward_dkdv_per_key(float* dk, float* dv, const float* dout,
                                                           const float* q, const float* k, const float* v,
                                                           const float* lse, const float* delta,
                                                           const unsigned int* segment_ids,
                                                           const unsigned int* segment_last, AttentionDims a) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= a.tk * a.kv_heads) return;
    const int heads = a.heads, d = a.d, q_offset = a.q_offset;
    const int j = warp / a.kv_heads, g = warp % a.kv_heads, group = heads / a.kv_heads;
    const long long q_stride = (long long)heads * d, kv_stride = (long long)a.kv_heads * d;
    float kj[PER_LANE], vj[PER_LANE], dk_acc[PER_LANE], dv_acc[PER_LANE];
    load_row(kj, k + j * kv_stride + g * d, d, lane);
    load_row(vj, v + j * kv_stride + g * d, d, lane);
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) dk_acc[e] = dv_acc[e] = 0.0f;
    // from the first query that can see key j to the last of its document (a later one is another document's)
    const int first = first_query(a, j), last = last_query(a, segment_last, j);
    for (int h = g * group; h < (g + 1) * group; ++h) {
        const float slope = alibi_slope(a, h);
        for (int i = first; i <= last; ++i) {
            if (!visible(a, segment_ids, q_offset + i, j)) continue;
            const float* qi = q + i * q_stride + h * d;
            const float* doi = dout + i * q_stride + h * d;
            const long long ih = (long long)i * heads + h;
            const float dot = dot_row(kj, qi, d, lane);
            const float p = expf(score(a, dot, slope, q_offset + i, j) - lse[ih]);
            const float dp = dot_row(vj, doi, d, lane);  // every lane takes part in the warp sum
            const float ds = clamp_binds(a, dot) ? 0.0f : p * (dp - delta[ih]);
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
