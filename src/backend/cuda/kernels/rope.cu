// Rotary position embedding in Llama's half-split layout. CPU mirror: `nn::rope`.
// The first r = 2·rotary_half ≤ d entries of each head rotate (rotary_half = len(ω); r < d is partial rotary):
// each (token, head, i < r/2) pair (x₁, x₂) = (x[i], x[i + r/2]) turns by θ = p·ωᵢ:
//   y₁ = x₁·cos θ − x₂·sin θ,  y₂ = x₂·cos θ + x₁·sin θ;
// entries r..d pass through: y = x. One thread per pair or copied entry: d − r/2 of them per head.
// The backward turns the gradient back by −θ (a rotation's inverse is its transpose): direction = −1, and the
// pass-through entries copy dy.

// Item k (< d − rotary_half) of one head, from the head at x to the head at y: pair k rotated by
// direction·position·ω_k, or (k ≥ rotary_half) entry rotary_half + k copied. With `rotates` false (v, which
// RoPE leaves alone) pair k is copied too, so the same items cover a head that does not turn.
// Out is float, or bf16 bits for a gradient only products read (`join_qkv_rope_to_bf16`).
template <typename Out>
__device__ __forceinline__ void rope_item(Out* y, const float* x, int k, int rotary_half, unsigned int position,
                                          const float* inv_freq, float direction, bool rotates) {
    if (k >= rotary_half) {
        store(y, rotary_half + k, x[rotary_half + k]);  // entry 2·rotary_half + (k − rotary_half)
        return;
    }
    if (!rotates) {
        store(y, k, x[k]);
        store(y, rotary_half + k, x[rotary_half + k]);
        return;
    }
    const float angle = (float)position * inv_freq[k];
    float s, c;
    sincosf(angle, &s, &c);
    s *= direction;
    const float x1 = x[k], x2 = x[rotary_half + k];
    store(y, k, x1 * c - x2 * s);
    store(y, rotary_half + k, x2 * c + x1 * s);
}

extern "C" __global__ void rope(float* y, const float* x, const unsigned int* positions, const float* inv_freq,
                                int tokens, int heads, int head_dim, int rotary_half, float direction) {
    const int per_head = head_dim - rotary_half;  // rotary_half pairs, then head_dim − 2·rotary_half copies
    FOR_EACH(i, (long long)tokens * heads * per_head) {
        const long long th = i / per_head;  // token·heads + head
        const long long base = th * head_dim;
        rope_item(y + base, x + base, (int)(i % per_head), rotary_half, positions[th / heads], inv_freq, direction,
                  true);
    }
}

// ANCHOR: split_qkv_rope
// The split of a fused or stacked projection's output [T, g·(qh + 2·kvh)·d] into q [T, H·d], k, v [T, KV·d]
// (fused_qkv.cu) and the rotation of q and k, in one pass: a row of qkv is g chunks of qh q heads, kvh k heads
// and kvh v heads (qh = H/g, kvh = KV/g), and head s of chunk c lands as head c·qh + s of q (or c·kvh + … of k,
// v). `join_qkv_rope` is its backward: dq and dk turned back by −θ and joined with dv into dqkv.
struct QkvHead {
    int part;              // 0, 1, 2: q, k, v
    long long fused_base;  // the head's first column in the flat qkv
    long long part_base;   // and in the flat q, k or v
};

__device__ __forceinline__ QkvHead qkv_head(long long slot, int groups, int q_heads, int kv_heads, int head_dim) {
    const int per_chunk = q_heads + 2 * kv_heads;
    const int s = (int)(slot % per_chunk);
    const long long tc = slot / per_chunk;  // token·groups + chunk
    const long long t = tc / groups;
    const int c = (int)(tc % groups);
    const long long fused_base = slot * head_dim;
    if (s < q_heads) return {0, fused_base, (t * groups * q_heads + c * q_heads + s) * head_dim};
    const int part = s < q_heads + kv_heads ? 1 : 2;
    const int h = s - q_heads - (part - 1) * kv_heads;
    return {part, fused_base, (t * groups * kv_heads + c * kv_heads + h) * head_dim};
}

extern "C" __global__ void split_qkv_rope(float* q, float* k, float* v, const float* qkv,
                                          const unsigned int* positions, const float* inv_freq, int tokens,
                                          int groups, int q_heads, int kv_heads, int head_dim, int rotary_half) {
    const int per_head = head_dim - rotary_half;
    const long long heads_per_token = (long long)groups * (q_heads + 2 * kv_heads);
    FOR_EACH(i, tokens * heads_per_token * per_head) {
        const long long slot = i / per_head;
        const QkvHead h = qkv_head(slot, groups, q_heads, kv_heads, head_dim);
        float* out = h.part == 0 ? q : h.part == 1 ? k : v;
        rope_item(out + h.part_base, qkv + h.fused_base, (int)(i % per_head), rotary_half,
                  positions[slot / heads_per_token], inv_freq, 1.0f, h.part != 2);
    }
}
// ANCHOR_END: split_qkv_rope

// Its output feeds the stacked or fused projection's backward: products only, unless that takes a bias gradient.
template <typename Out>
__device__ __forceinline__ void join_qkv_rope_entries(Out* dqkv, const float* dq, const float* dk, const float* dv,
                                                      const unsigned int* positions, const float* inv_freq,
                                                      int tokens, int groups, int q_heads, int kv_heads,
                                                      int head_dim, int rotary_half) {
    const int per_head = head_dim - rotary_half;
    const long long heads_per_token = (long long)groups * (q_heads + 2 * kv_heads);
    FOR_EACH(i, tokens * heads_per_token * per_head) {
        const long long slot = i / per_head;
        const QkvHead h = qkv_head(slot, groups, q_heads, kv_heads, head_dim);
        const float* from = h.part == 0 ? dq : h.part == 1 ? dk : dv;
        rope_item(dqkv + h.fused_base, from + h.part_base, (int)(i % per_head), rotary_half,
                  positions[slot / heads_per_token], inv_freq, -1.0f, h.part != 2);
    }
}

extern "C" __global__ void join_qkv_rope(float* dqkv, const float* dq, const float* dk, const float* dv,
                                         const unsigned int* positions, const float* inv_freq, int tokens,
                                         int groups, int q_heads, int kv_heads, int head_dim, int rotary_half) {
    join_qkv_rope_entries(dqkv, dq, dk, dv, positions, inv_freq, tokens, groups, q_heads, kv_heads, head_dim,
                          rotary_half);
}

extern "C" __global__ void join_qkv_rope_to_bf16(unsigned short* dqkv, const float* dq, const float* dk,
                                                 const float* dv, const unsigned int* positions,
                                                 const float* inv_freq, int tokens, int groups, int q_heads,
                                                 int kv_heads, int head_dim, int rotary_half) {
    join_qkv_rope_entries(dqkv, dq, dk, dv, positions, inv_freq, tokens, groups, q_heads, kv_heads, head_dim,
                          rotary_half);
}
