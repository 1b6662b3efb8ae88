// Attention on the tensor cores, FlashAttention-2's way: the kernels of `Precision::Bf16`. CPU mirror:
// `nn::attention`; the exact f32 kernels, and the rules of visibility and scores both follow, are attention.cu's
// (the helpers they share are attention_masks.cuh's).
//
// Every product goes through one instruction, `mma_bf16_16x8x16` (mma.cuh): bf16 operands, f32 accumulators.
// The f32 inputs are rounded to bf16 where they are loaded — K and V tiles (or Q and dO tiles) into shared
// memory, a warp's own rows straight from global memory into its A fragments — and everything else (scores,
// the softmax, the accumulators) is f32.
//
// ANCHOR: flash_tiling
// Tiling. A block of FLASH_WARPS = 4 warps owns FLASH_ROWS = 64 consecutive query rows of one head (forward,
// dq) or 64 consecutive keys of one KV head (dk/dv): 16 rows per warp, the M of the m16n8k16 instruction. The
// other side streams through shared memory in tiles of FLASH_TILE = 32 rows, loaded once per block by all its
// threads and read by the four warps. Per warp and tile:
//
//   S [16 × 32]  = Q_w [16 × d] · K_tile^T [d × 32]       d/16 steps × 4 instructions (n = 8 keys each)
//   O [16 × d]  += P [16 × 32] · V_tile [32 × d]          2 steps × d/8 instructions
//
// S stays in registers (4 fragments of 16 × 8), and P, computed from it in place, becomes the A operand of the
// second product without leaving them (the fragment layout of mma.cuh). The accumulators (O, dQ, or dK and dV)
// are register arrays of D/8 fragments, D = 64, 128 or 256 the kernel's compiled head_dim bound (one kernel per
// bound, so a small head does not pay for a large one's registers); columns past the head's d are zeros.
// ANCHOR_END: flash_tiling
//
// The backward, as in attention.cu, recomputes P from the saved log-sum-exp and runs in two passes so that no
// two warps ever write the same gradient row: one over query blocks (dQ = scale · dS · K), one over key blocks
// (dV = Pᵀ · dO, dK = scale · dSᵀ · Q, summed over the query heads of a KV head in order). No atomics, and a fixed
// order of every sum: the same inputs give the same bits, run after run.

#define FLASH_ROWS 64   // query rows (forward, dq) or keys (dk/dv) per block
#define FLASH_WARPS 4   // warps per block, 16 of those rows each
#define FLASH_TILE 32   // keys (forward, dq) or queries (dk/dv) per shared-memory tile
#define FLASH_PAD 8     // bf16s of padding per tile row: rows 16 bytes apart modulo 128 spread a fragment's reads
#define FLASH_MAX_D 256

// Two bf16 tiles of FLASH_TILE rows of the largest head, and the dk/dv pass's per-query lse and delta: 33.3 KB.
static_assert(2 * FLASH_TILE * (FLASH_MAX_D + FLASH_PAD) * 2 + 2 * FLASH_TILE * 4 <= 48 * 1024,
              "the flash attention kernels' shared memory exceeds 48 KB");

// ---- loading operands ------------------------------------------------------------------------------------------

// Rows first .. first + n − 1 (n ≤ FLASH_TILE) of a matrix with `stride` floats per row, columns 0 .. d − 1, into
// a bf16 tile of FLASH_TILE rows of D + FLASH_PAD; rows past n and columns past d are zeros. The whole block loads.
template <int D>
__device__ __forceinline__ void load_tile_bf16(unsigned short* tile, const float* src, long long stride, int first,
                                               int n, int d) {
    for (int idx = threadIdx.x; idx < FLASH_TILE * D; idx += blockDim.x) {
        const int r = idx / D, c = idx - r * D;
        const float x = r < n && c < d ? src[(long long)(first + r) * stride + c] : 0.0f;
        tile[r * (D + FLASH_PAD) + c] = f32_to_bf16_bits(x);
    }
}

__device__ __forceinline__ float element_or_zero(const float* m, long long stride, int r, int rows, int c, int d) {
    return r < rows && c < d ? m[(long long)r * stride + c] : 0.0f;
}

// The A fragment of rows r0 .. r0 + 15 (those below `rows`), columns k0 .. k0 + 15 (those below d) of a matrix
// with `stride` floats per row, read by the warp from global memory and rounded to bf16.
__device__ __forceinline__ void a_fragment(unsigned a[4], const float* m, long long stride, int r0, int rows, int k0,
                                           int d, int lane) {
    const int r = r0 + (lane >> 2), c = k0 + 2 * (lane & 3);
    a[0] = bf16_pair(element_or_zero(m, stride, r, rows, c, d), element_or_zero(m, stride, r, rows, c + 1, d));
    a[1] = bf16_pair(element_or_zero(m, stride, r + 8, rows, c, d), element_or_zero(m, stride, r + 8, rows, c + 1, d));
    a[2] = bf16_pair(element_or_zero(m, stride, r, rows, c + 8, d), element_or_zero(m, stride, r, rows, c + 9, d));
    a[3] = bf16_pair(element_or_zero(m, stride, r + 8, rows, c + 8, d),
                     element_or_zero(m, stride, r + 8, rows, c + 9, d));
}

__device__ __forceinline__ unsigned tile_pair(const unsigned short* tile, int at, int next) {
    return (unsigned)tile[at] | ((unsigned)tile[next] << 16);
}

// B fragments from a tile of `stride` bf16s per row. Transposed (B[k][n] = tile[n0 + n][k0 + k]: a tile row per
// column of B, as K in S = Q·Kᵀ) or straight (B[k][n] = tile[k0 + k][n0 + n], as V in O = P·V).
__device__ __forceinline__ void b_fragment_transposed(unsigned b[2], const unsigned short* tile, int stride, int n0,
                                                      int k0, int lane) {
    const int at = (n0 + (lane >> 2)) * stride + k0 + 2 * (lane & 3);
    b[0] = tile_pair(tile, at, at + 1);
    b[1] = tile_pair(tile, at + 8, at + 9);
}

__device__ __forceinline__ void b_fragment(unsigned b[2], const unsigned short* tile, int stride, int k0, int n0,
                                           int lane) {
    const int at = (k0 + 2 * (lane & 3)) * stride + n0 + (lane >> 2);
    b[0] = tile_pair(tile, at, at + stride);
    b[1] = tile_pair(tile, at + 8 * stride, at + 9 * stride);
}

// ---- the two products of a tile --------------------------------------------------------------------------------

// ANCHOR: flash_products
// s [16 × 32] = rows r0 .. r0 + 15 of `m` (global, f32) · tileᵀ: the warp's rows against the tile's 32, over d.
template <int D>
__device__ __forceinline__ void tile_scores(float s[4][4], const float* m, long long stride, int r0, int rows,
                                            const unsigned short* tile, int d, int lane) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
    for (int k0 = 0; k0 < d; k0 += 16) {  // columns past d are zeros on both sides
        unsigned a[4];
        a_fragment(a, m, stride, r0, rows, k0, d, lane);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            unsigned b[2];
            b_fragment_transposed(b, tile, D + FLASH_PAD, 8 * nt, k0, lane);
            mma_bf16_16x8x16(s[nt], a, b);
        }
    }
}

// The A fragment of columns 16c .. 16c + 15 of a 16 × 32 result held as four 16 × 8 fragments: D's layout is A's,
// so two neighbouring results, rounded to bf16, are one A fragment.
__device__ __forceinline__ void result_as_a(unsigned a[4], const float p[4][4], int c) {
    a[0] = bf16_pair(p[2 * c][0], p[2 * c][1]);
    a[1] = bf16_pair(p[2 * c][2], p[2 * c][3]);
    a[2] = bf16_pair(p[2 * c + 1][0], p[2 * c + 1][1]);
    a[3] = bf16_pair(p[2 * c + 1][2], p[2 * c + 1][3]);
}

// acc [16 × D] += p [16 × 32] · tile [32 × D]: the weights of the tile's 32 rows times the rows.
template <int D>
__device__ __forceinline__ void accumulate_tile_product(float acc[D / 8][4], const float p[4][4],
                                                        const unsigned short* tile, int d, int lane) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        unsigned a[4];
        result_as_a(a, p, c);
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            if (8 * nt >= d) break;  // the same in every lane
            unsigned b[2];
            b_fragment(b, tile, D + FLASH_PAD, 16 * c, 8 * nt, lane);
            mma_bf16_16x8x16(acc[nt], a, b);
        }
    }
}
// ANCHOR_END: flash_products

// Which entry of a 16 × 32 result a lane's s[nt][e] is: row (0 .. 15) and column (0 .. 31).
__device__ __forceinline__ int fragment_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int fragment_col(int lane, int nt, int e) { return 8 * nt + 2 * (lane & 3) + (e & 1); }

// The largest (or the sum) of a row's values over the four lanes of a group that hold it.
__device__ __forceinline__ float group_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float group_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- ranges ----------------------------------------------------------------------------------------------------

struct Range {
    int lo, hi;  // inclusive; empty when lo > hi
};

// The keys query rows i0 .. i0 + n − 1 see between them: from the earliest first key to the last row's position.
__device__ __forceinline__ Range keys_of(const AttentionDims& a, const unsigned int* segment_first, int i0, int n) {
    Range r{a.q_offset + i0 + n, a.q_offset + i0 + n - 1};
    for (int x = 0; x < n; ++x) r.lo = min(r.lo, first_key(a, segment_first, a.q_offset + i0 + x));
    return r;
}

// The queries that see keys j0 .. j0 + n − 1 between them.
__device__ __forceinline__ Range queries_of(const AttentionDims& a, const unsigned int* segment_last, int j0, int n) {
    Range r{first_query(a, j0), -1};
    for (int x = 0; x < n; ++x) r.hi = max(r.hi, last_query(a, segment_last, j0 + x));
    return r;
}

__device__ __forceinline__ bool misses(const Range& r, int t0, int n) { return t0 > r.hi || t0 + n <= r.lo; }

// ---- forward ---------------------------------------------------------------------------------------------------

// ANCHOR: flash_forward
// out: [tq, heads·d], lse: [tq, heads]. Grid (⌈tq / 64⌉, heads), 4 warps per block. Out is float, or bf16 bits
// where only products (o_proj) and the backward's delta read the output (the `_to_bf16` entry points).
template <int D, typename Out>
__device__ void flash_forward(Out* out, float* lse, const float* q, const float* k, const float* v,
                              const unsigned int* segment_ids, const unsigned int* segment_first, AttentionDims a) {
    __shared__ unsigned short k_tile[FLASH_TILE * (D + FLASH_PAD)], v_tile[FLASH_TILE * (D + FLASH_PAD)];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y, d = a.d;
    const int i0 = blockIdx.x * FLASH_ROWS, r0 = i0 + 16 * warp;  // the block's and the warp's first query row
    const long long q_stride = (long long)a.heads * d, kv_stride = (long long)a.kv_heads * d;
    const float* qh = q + (long long)h * d;
    const long long kv_off = (long long)(h / (a.heads / a.kv_heads)) * d;
    const Range block = keys_of(a, segment_first, i0, min(FLASH_ROWS, a.tq - i0));
    const Range mine = keys_of(a, segment_first, r0, min(16, a.tq - r0));
    const float slope = alibi_slope(a, h);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[D / 8][4];  // rows g and g + 8 of the warp
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
    for (int t0 = block.lo; t0 <= block.hi; t0 += FLASH_TILE) {
        const int n = min(FLASH_TILE, block.hi + 1 - t0);  // keys t0 .. t0 + n − 1
        __syncthreads();                                    // every warp is done with the previous tiles
        load_tile_bf16<D>(k_tile, k + kv_off, kv_stride, t0, n, d);
        load_tile_bf16<D>(v_tile, v + kv_off, kv_stride, t0, n, d);
        __syncthreads();
        if (misses(mine, t0, n)) continue;  // the same in every lane of the warp
        float s[4][4], tile_max[2] = {-INFINITY, -INFINITY};
        tile_scores<D>(s, qh, q_stride, r0, a.tq, k_tile, d, lane);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            for (int e = 0; e < 4; ++e) {
                const int i = r0 + fragment_row(lane, e), j = t0 + fragment_col(lane, nt, e);
                const int query_pos = a.q_offset + i;
                const bool see = i < a.tq && j < t0 + n && visible(a, segment_ids, query_pos, j);
                s[nt][e] = see ? score(a, s[nt][e], slope, query_pos, j) : -INFINITY;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[nt][e]);
            }
        // online softmax, per row: the new running max, the old sum and accumulator rescaled to it
        float base[2], row_sum[2] = {0.0f, 0.0f};
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[r], group_max(tile_max[r]));
            base[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet keeps p = 0, not NaN
            const float correction = expf(m[r] - base[r]);  // exp(−∞) = 0 on the row's first visible tile
            l[r] *= correction;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                acc[nt][2 * r] *= correction;
                acc[nt][2 * r + 1] *= correction;
            }
            m[r] = m_new;
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = expf(s[nt][e] - base[e >> 1]);  // p, 0 where invisible
                row_sum[e >> 1] += s[nt][e];
            }
        for (int r = 0; r < 2; ++r) l[r] += group_sum(row_sum[r]);
        accumulate_tile_product<D>(acc, s, v_tile, d, lane);  // O += P · V
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
            const int i = r0 + fragment_row(lane, e), c = fragment_col(lane, nt, e);
            if (i < a.tq && c < d) store(out, i * q_stride + (long long)h * d + c, acc[nt][e] / l[e >> 1]);
        }
    if ((lane & 3) == 0)
        for (int r = 0; r < 2; ++r) {
            const int i = r0 + (lane >> 2) + 8 * r;
            if (i < a.tq) lse[(long long)i * a.heads + h] = m[r] + logf(l[r]);
        }
}
// ANCHOR_END: flash_forward

// ---- backward --------------------------------------------------------------------------------------------------

// dq = scale · Σ_j ds_ij·k_j with ds = p·(dout·v − delta). Grid (⌈tq / 64⌉, heads), 4 warps per block.
template <int D>
__device__ void flash_dq(float* dq, const float* dout, const float* q, const float* k, const float* v,
                         const float* lse, const float* delta, const unsigned int* segment_ids,
                         const unsigned int* segment_first, AttentionDims a) {
    __shared__ unsigned short k_tile[FLASH_TILE * (D + FLASH_PAD)], v_tile[FLASH_TILE * (D + FLASH_PAD)];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y, d = a.d;
    const int i0 = blockIdx.x * FLASH_ROWS, r0 = i0 + 16 * warp;
    const long long q_stride = (long long)a.heads * d, kv_stride = (long long)a.kv_heads * d;
    const long long kv_off = (long long)(h / (a.heads / a.kv_heads)) * d;
    const Range block = keys_of(a, segment_first, i0, min(FLASH_ROWS, a.tq - i0));
    const Range mine = keys_of(a, segment_first, r0, min(16, a.tq - r0));
    const float slope = alibi_slope(a, h);
    float lse_r[2], delta_r[2], acc[D / 8][4];
    for (int r = 0; r < 2; ++r) {
        const int i = r0 + (lane >> 2) + 8 * r;
        lse_r[r] = i < a.tq ? lse[(long long)i * a.heads + h] : 0.0f;
        delta_r[r] = i < a.tq ? delta[(long long)i * a.heads + h] : 0.0f;
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
    for (int t0 = block.lo; t0 <= block.hi; t0 += FLASH_TILE) {
        const int n = min(FLASH_TILE, block.hi + 1 - t0);
        __syncthreads();
        load_tile_bf16<D>(k_tile, k + kv_off, kv_stride, t0, n, d);
        load_tile_bf16<D>(v_tile, v + kv_off, kv_stride, t0, n, d);
        __syncthreads();
        if (misses(mine, t0, n)) continue;
        float s[4][4], dp[4][4];
        tile_scores<D>(s, q + (long long)h * d, q_stride, r0, a.tq, k_tile, d, lane);      // q·k
        tile_scores<D>(dp, dout + (long long)h * d, q_stride, r0, a.tq, v_tile, d, lane);  // dout·v
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            for (int e = 0; e < 4; ++e) {
                const int i = r0 + fragment_row(lane, e), j = t0 + fragment_col(lane, nt, e);
                const int query_pos = a.q_offset + i;
                float ds = 0.0f;
                if (i < a.tq && j < t0 + n && visible(a, segment_ids, query_pos, j) && !clamp_binds(a, s[nt][e])) {
                    const float p = expf(score(a, s[nt][e], slope, query_pos, j) - lse_r[e >> 1]);
                    ds = p * (dp[nt][e] - delta_r[e >> 1]);
                }
                s[nt][e] = ds;
            }
        accumulate_tile_product<D>(acc, s, k_tile, d, lane);  // dQ += dS · K
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
            const int i = r0 + fragment_row(lane, e), c = fragment_col(lane, nt, e);
            if (i < a.tq && c < d) dq[i * q_stride + (long long)h * d + c] = acc[nt][e] * a.scale;
        }
}

// ANCHOR: flash_dkdv
// dk_j = scale · Σ_{h in group, i} ds_ij·q_i, dv_j = Σ p_ij·dout_i. Grid (⌈tk / 64⌉, kv_heads), 4 warps per
// block, 16 keys each; the queries stream through shared memory, the query heads of the group one after another.
// Per warp and tile, transposed: Sᵀ [16 keys × 32 queries] = K_w · Q_tileᵀ, then dV += Pᵀ · dO_tile and
// dK += dSᵀ · Q_tile.
//
// One pass computes the gradients DV and DK ask for. Both accumulators are D/8 fragments of 4 floats per lane:
// at D = 256 that is 256 registers for the two, more than a thread has (255), so ptxas spilled them (1212 bytes
// of stores per thread). There the kernel makes two passes, dV and then dK, with one accumulator live at a
// time: Sᵀ is computed twice (5 tile products instead of 4) and nothing spills.
template <int D, bool DV, bool DK>
__device__ __forceinline__ void flash_dkdv_pass(float* dk, float* dv, const float* dout, const float* q,
                                                const float* k, const float* v, const float* lse,
                                                const float* delta, const unsigned int* segment_ids,
                                                const unsigned int* segment_last, const AttentionDims& a,
                                                unsigned short* q_tile, unsigned short* dout_tile, float* lse_tile,
                                                float* delta_tile) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = blockIdx.y, d = a.d;
    const int group = a.heads / a.kv_heads;
    const int j0 = blockIdx.x * FLASH_ROWS, c0 = j0 + 16 * warp;  // the block's and the warp's first key
    const long long q_stride = (long long)a.heads * d, kv_stride = (long long)a.kv_heads * d;
    const Range block = queries_of(a, segment_last, j0, min(FLASH_ROWS, a.tk - j0));
    const Range mine = queries_of(a, segment_last, c0, min(16, a.tk - c0));
    float dk_acc[DK ? D / 8 : 1][4], dv_acc[DV ? D / 8 : 1][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
            if constexpr (DK) dk_acc[nt][e] = 0.0f;
            if constexpr (DV) dv_acc[nt][e] = 0.0f;
        }
    for (int h = g * group; h < (g + 1) * group; ++h) {
        const float slope = alibi_slope(a, h);
        for (int t0 = block.lo; t0 <= block.hi; t0 += FLASH_TILE) {
            const int n = min(FLASH_TILE, block.hi + 1 - t0);  // queries t0 .. t0 + n − 1
            __syncthreads();
            load_tile_bf16<D>(q_tile, q + (long long)h * d, q_stride, t0, n, d);
            load_tile_bf16<D>(dout_tile, dout + (long long)h * d, q_stride, t0, n, d);
            if ((int)threadIdx.x < FLASH_TILE) {
                const bool in = (int)threadIdx.x < n;
                const long long ih = (long long)(t0 + threadIdx.x) * a.heads + h;
                lse_tile[threadIdx.x] = in ? lse[ih] : 0.0f;
                delta_tile[threadIdx.x] = in ? delta[ih] : 0.0f;
            }
            __syncthreads();
            if (misses(mine, t0, n)) continue;
            float p[4][4], ds[4][4];
            tile_scores<D>(p, k + (long long)g * d, kv_stride, c0, a.tk, q_tile, d, lane);  // k·q
            if constexpr (DK) tile_scores<D>(ds, v + (long long)g * d, kv_stride, c0, a.tk, dout_tile, d, lane);
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
                for (int e = 0; e < 4; ++e) {
                    const int j = c0 + fragment_row(lane, e), x = fragment_col(lane, nt, e), i = t0 + x;
                    const int query_pos = a.q_offset + i;
                    float pe = 0.0f, dse = 0.0f;
                    if (j < a.tk && x < n && visible(a, segment_ids, query_pos, j)) {
                        pe = expf(score(a, p[nt][e], slope, query_pos, j) - lse_tile[x]);
                        if constexpr (DK) dse = clamp_binds(a, p[nt][e]) ? 0.0f : pe * (ds[nt][e] - delta_tile[x]);
                    }
                    p[nt][e] = pe;
                    if constexpr (DK) ds[nt][e] = dse;
                }
            if constexpr (DV) accumulate_tile_product<D>(dv_acc, p, dout_tile, d, lane);  // dV += Pᵀ · dO
            if constexpr (DK) accumulate_tile_product<D>(dk_acc, ds, q_tile, d, lane);    // dK += dSᵀ · Q
        }
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
            const int j = c0 + fragment_row(lane, e), c = fragment_col(lane, nt, e);
            if (j < a.tk && c < d) {
                const long long at = (long long)j * kv_stride + (long long)g * d + c;
                if constexpr (DK) dk[at] = dk_acc[nt][e] * a.scale;
                if constexpr (DV) dv[at] = dv_acc[nt][e];
            }
        }
}

template <int D>
__device__ void flash_dkdv(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                           const float* lse, const float* delta, const unsigned int* segment_ids,
                           const unsigned int* segment_last, AttentionDims a) {
    // declared once here, so the two passes at D = 256 share them (48 KB of static shared memory at most)
    __shared__ unsigned short q_tile[FLASH_TILE * (D + FLASH_PAD)], dout_tile[FLASH_TILE * (D + FLASH_PAD)];
    __shared__ float lse_tile[FLASH_TILE], delta_tile[FLASH_TILE];
    if constexpr (D <= 128) {
        flash_dkdv_pass<D, true, true>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a, q_tile,
                                       dout_tile, lse_tile, delta_tile);
    } else {
        flash_dkdv_pass<D, true, false>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a, q_tile,
                                        dout_tile, lse_tile, delta_tile);
        flash_dkdv_pass<D, false, true>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a, q_tile,
                                        dout_tile, lse_tile, delta_tile);
    }
}
// ANCHOR_END: flash_dkdv

// ---- the kernels: one per head_dim bound (d ≤ 64, ≤ 128, ≤ 256), the arguments of attention.cu's ----------------

extern "C" __global__ void flash_attention_forward_d64(float* out, float* lse, const float* q, const float* k,
                                                       const float* v, const unsigned int* segment_ids,
                                                       const unsigned int* segment_first, AttentionDims a) {
    flash_forward<64, float>(out, lse, q, k, v, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_forward_d64_to_bf16(unsigned short* out, float* lse, const float* q,
                                                               const float* k, const float* v,
                                                               const unsigned int* segment_ids,
                                                               const unsigned int* segment_first, AttentionDims a) {
    flash_forward<64, unsigned short>(out, lse, q, k, v, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_forward_d128(float* out, float* lse, const float* q, const float* k,
                                                        const float* v, const unsigned int* segment_ids,
                                                        const unsigned int* segment_first, AttentionDims a) {
    flash_forward<128, float>(out, lse, q, k, v, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_forward_d128_to_bf16(unsigned short* out, float* lse, const float* q,
                                                               const float* k, const float* v,
                                                               const unsigned int* segment_ids,
                                                               const unsigned int* segment_first, AttentionDims a) {
    flash_forward<128, unsigned short>(out, lse, q, k, v, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_forward_d256(float* out, float* lse, const float* q, const float* k,
                                                        const float* v, const unsigned int* segment_ids,
                                                        const unsigned int* segment_first, AttentionDims a) {
    flash_forward<256, float>(out, lse, q, k, v, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_forward_d256_to_bf16(unsigned short* out, float* lse, const float* q,
                                                               const float* k, const float* v,
                                                               const unsigned int* segment_ids,
                                                               const unsigned int* segment_first, AttentionDims a) {
    flash_forward<256, unsigned short>(out, lse, q, k, v, segment_ids, segment_first, a);
}

extern "C" __global__ void flash_attention_dq_d64(float* dq, const float* dout, const float* q, const float* k,
                                                  const float* v, const float* lse, const float* delta,
                                                  const unsigned int* segment_ids,
                                                  const unsigned int* segment_first, AttentionDims a) {
    flash_dq<64>(dq, dout, q, k, v, lse, delta, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_dq_d128(float* dq, const float* dout, const float* q, const float* k,
                                                   const float* v, const float* lse, const float* delta,
                                                   const unsigned int* segment_ids,
                                                   const unsigned int* segment_first, AttentionDims a) {
    flash_dq<128>(dq, dout, q, k, v, lse, delta, segment_ids, segment_first, a);
}
extern "C" __global__ void flash_attention_dq_d256(float* dq, const float* dout, const float* q, const float* k,
                                                   const float* v, const float* lse, const float* delta,
                                                   const unsigned int* segment_ids,
                                                   const unsigned int* segment_first, AttentionDims a) {
    flash_dq<256>(dq, dout, q, k, v, lse, delta, segment_ids, segment_first, a);
}

extern "C" __global__ void flash_attention_dkdv_d64(float* dk, float* dv, const float* dout, const float* q,
                                                    const float* k, const float* v, const float* lse,
                                                    const float* delta, const unsigned int* segment_ids,
                                                    const unsigned int* segment_last, AttentionDims a) {
    flash_dkdv<64>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a);
}
extern "C" __global__ void flash_attention_dkdv_d128(float* dk, float* dv, const float* dout, const float* q,
                                                     const float* k, const float* v, const float* lse,
                                                     const float* delta, const unsigned int* segment_ids,
                                                     const unsigned int* segment_last, AttentionDims a) {
    flash_dkdv<128>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a);
}
extern "C" __global__ void flash_attention_dkdv_d256(float* dk, float* dv, const float* dout, const float* q,
                                                     const float* k, const float* v, const float* lse,
                                                     const float* delta, const unsigned int* segment_ids,
                                                     const unsigned int* segment_last, AttentionDims a) {
    flash_dkdv<256>(dk, dv, dout, q, k, v, lse, delta, segment_ids, segment_last, a);
}

// ANCHOR: mma_tile_product
// c [16 × 8] = a [16 × 16] · b [16 × 8], one warp, the operands bf16 bits (a row-major, b stored by column:
// b[n·16 + k]): the fragment layout of mma.cuh, checked against a plain product (tests/flash_attention_kernels.rs).
extern "C" __global__ void mma_bf16_tile_product(float* c, const unsigned short* a, const unsigned short* b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned af[4] = {tile_pair(a, g * 16 + 2 * t, g * 16 + 2 * t + 1),
                            tile_pair(a, (g + 8) * 16 + 2 * t, (g + 8) * 16 + 2 * t + 1),
                            tile_pair(a, g * 16 + 2 * t + 8, g * 16 + 2 * t + 9),
                            tile_pair(a, (g + 8) * 16 + 2 * t + 8, (g + 8) * 16 + 2 * t + 9)};
    const unsigned bf[2] = {tile_pair(b, g * 16 + 2 * t, g * 16 + 2 * t + 1),
                            tile_pair(b, g * 16 + 2 * t + 8, g * 16 + 2 * t + 9)};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_bf16_16x8x16(acc, af, bf);
    c[g * 8 + 2 * t] = acc[0];
    c[g * 8 + 2 * t + 1] = acc[1];
    c[(g + 8) * 8 + 2 * t] = acc[2];
    c[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
// ANCHOR_END: mma_tile_product
