// AdamW and the squared norm for clipping. CPU mirror: `train::optim` (the same order of operations as
// torch's single-tensor AdamW, fused multiply-adds where torch's vector kernels fuse).

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, long long n, float decay_factor,
                                 float one_minus_beta1, float beta2, float one_minus_beta2,
                                 float bias_correction2_sqrt, float eps, float neg_step_size) {
    FOR_EACH(i, n) {
        const float gi = g[i];
        float pi = p[i] * decay_factor;
        const float mi = fmaf(one_minus_beta1, gi - m[i], m[i]);
        const float vi = fmaf(one_minus_beta2 * gi, gi, v[i] * beta2);
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        pi += neg_step_size * mi / denom;
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

// partial[block] = Σ x² over the block's grid-stride share; the host adds the partials in f64.
extern "C" __global__ void sum_squares(float* partial, const float* x, long long n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    FOR_EACH(i, n) acc = fmaf(x[i], x[i], acc);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
