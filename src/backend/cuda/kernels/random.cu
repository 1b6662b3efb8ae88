// Dropout masks generated on the device. CPU counterpart: `Backend::dropout_mask`'s default (host masks from
// the project's sequential generator). The GPU cannot replay a sequential generator in parallel, so it uses a
// counter-based one — splitmix64 of (seed, element index) — and its masks differ from the CPU's for the same
// seed (as torch's CPU and CUDA generators differ). They are still a pure function of the seed, so the
// backward and an activation-checkpointing recompute see the forward's mask, and a resumed run the same masks.

// ANCHOR: dropout_kernel
// The top 24 bits of splitmix64(seed + (i + 1)·γ) as a uniform draw u ∈ [0, 2²⁴): keep iff u ≥ threshold,
// threshold = ⌈p·2²⁴⌉ (an integer compare: no rounding differs between host and device).
__device__ __forceinline__ unsigned int uniform24(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (unsigned int)(z >> 40);
}

extern "C" __global__ void dropout_mask(float* mask, long long n, unsigned long long seed, unsigned int threshold,
                                        float keep_scale) {
    FOR_EACH(i, n) mask[i] = uniform24(seed, (unsigned long long)i) >= threshold ? keep_scale : 0.0f;
}
// ANCHOR_END: dropout_kernel

// ANCHOR: dropout_fused_kernels
// LoRA's dropout without a stored mask: out = x ∘ m forward, dx += g ∘ m backward, m drawn as `dropout_mask`
// draws it (the same seed and element index give the same keep/drop, so the three kernels agree bit for bit).
__device__ __forceinline__ float dropout_factor(unsigned long long seed, long long i, unsigned int threshold,
                                                float keep_scale) {
    return uniform24(seed, (unsigned long long)i) >= threshold ? keep_scale : 0.0f;
}

// x̃ is read by LoRA's A product only: under mixed precision it is written rounded, from an f32 x or from one
// already stored in bf16 (a product-only norm output).
template <typename In, typename Out>
__device__ __forceinline__ void dropout_apply_entries(Out* out, const In* x, long long n, unsigned long long seed,
                                                      unsigned int threshold, float keep_scale) {
    FOR_EACH(i, n) store(out, i, load(x, i) * dropout_factor(seed, i, threshold, keep_scale));
}

extern "C" __global__ void dropout_apply(float* out, const float* x, long long n, unsigned long long seed,
                                         unsigned int threshold, float keep_scale) {
    dropout_apply_entries(out, x, n, seed, threshold, keep_scale);
}

extern "C" __global__ void dropout_apply_to_bf16(unsigned short* out, const float* x, long long n,
                                                 unsigned long long seed, unsigned int threshold, float keep_scale) {
    dropout_apply_entries(out, x, n, seed, threshold, keep_scale);
}

extern "C" __global__ void dropout_apply_bf16(unsigned short* out, const unsigned short* x, long long n,
                                              unsigned long long seed, unsigned int threshold, float keep_scale) {
    dropout_apply_entries(out, x, n, seed, threshold, keep_scale);
}

extern "C" __global__ void dropout_add(float* dx, const float* g, long long n, unsigned long long seed,
                                       unsigned int threshold, float keep_scale) {
    FOR_EACH(i, n) dx[i] += g[i] * dropout_factor(seed, i, threshold, keep_scale);
}
// ANCHOR_END: dropout_fused_kernels
