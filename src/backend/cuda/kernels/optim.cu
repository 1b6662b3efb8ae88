// AdamW and the squared norms for clipping. CPU mirror: `train::optim` (the same order of operations as
// torch's single-tensor AdamW, fused multiply-adds where torch's vector kernels fuse) and `train::step_update`
// (the step's end: finiteness, global-norm clipping, AdamW, in that order).

__device__ __forceinline__ bool is_finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// One entry's update, in torch's order.
__device__ __forceinline__ void adamw_entry(float& p, float g, float& m, float& v, float decay_factor,
                                            float one_minus_beta1, float beta2, float one_minus_beta2,
                                            float bias_correction2_sqrt, float eps, float neg_step_size) {
    p *= decay_factor;
    m = fmaf(one_minus_beta1, g - m, m);
    v = fmaf(one_minus_beta2 * g, g, v * beta2);
    const float denom = sqrtf(v) / bias_correction2_sqrt + eps;
    p += neg_step_size * m / denom;
}

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, long long n, float decay_factor,
                                 float one_minus_beta1, float beta2, float one_minus_beta2,
                                 float bias_correction2_sqrt, float eps, float neg_step_size) {
    FOR_EACH(i, n) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_entry(pi, g[i], mi, vi, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                    bias_correction2_sqrt, eps, neg_step_size);
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

// ANCHOR: step_report
// The step's report, read by the host once (`cuda/optim.rs` lays it out): the global gradient norm, the clip
// factor, whether the step may update (1: every loss and gradient finite), then each gradient's norm, one flag
// per updated parameter (1: not finite after the update), and the step's token losses.
#define REPORT_NORM 0
#define REPORT_CLIP 1
#define REPORT_OK 2
#define REPORT_HEADER 4
// ANCHOR_END: step_report

// ANCHOR: grad_norm_kernels
// partial[t·gridDim.x + b] = Σ x² over block b's grid-stride share of gradient t = blockIdx.y. `table` holds
// the gradients' device pointers, then their lengths. Fixed shares, no atomics: the same sums every run.
extern "C" __global__ void grad_norm_partials(float* partial, const unsigned long long* table, int tensors) {
    __shared__ float scratch[32];
    const int t = blockIdx.y;
    const float* x = (const float*)table[t];
    const long long n = (long long)table[tensors + t];
    float acc = 0.0f;
    FOR_EACH(i, n) acc = fmaf(x[i], x[i], acc);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[(long long)t * gridDim.x + blockIdx.x] = acc;
}

// One block: each gradient's norm from its partials (added in f64, in order), torch's global norm over them
// (√Σ‖g_t‖², each ‖g_t‖ rounded to f32 first), the clip factor max_norm / (norm + 1e-6), and whether the step
// may go on: every gradient and every token loss finite. Clears the parameter flags `adamw_multi` sets.
extern "C" __global__ void grad_norm_finish(float* report, const float* partial, int tensors, int blocks,
                                            int params, long long losses, float max_norm) {
    __shared__ int bad_loss;
    if (threadIdx.x == 0) bad_loss = 0;
    __syncthreads();
    float* norms = report + REPORT_HEADER;
    for (int t = threadIdx.x; t < tensors; t += blockDim.x) {
        double s = 0.0;
        for (int b = 0; b < blocks; ++b) s += (double)partial[(long long)t * blocks + b];
        norms[t] = (float)sqrt(s);
    }
    for (int p = threadIdx.x; p < params; p += blockDim.x) norms[tensors + p] = 0.0f;
    const float* token_losses = norms + tensors + params;
    for (long long i = threadIdx.x; i < losses; i += blockDim.x)
        if (!is_finite(token_losses[i])) bad_loss = 1;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        bool ok = bad_loss == 0;
        for (int t = 0; t < tensors; ++t) {
            total += (double)norms[t] * (double)norms[t];
            ok = ok && is_finite(norms[t]);
        }
        const float norm = (float)sqrt(total);
        report[REPORT_NORM] = norm;
        report[REPORT_CLIP] = max_norm / (norm + 1e-6f);
        report[REPORT_OK] = (ok && is_finite(norm)) ? 1.0f : 0.0f;
    }
}
// ANCHOR_END: grad_norm_kernels

// ANCHOR: adamw_multi
#define ADAMW_ROW 7
// AdamW over many parameters in one launch, parameter blockIdx.y. `table` holds ADAMW_ROW words per parameter:
// its pointer, its gradient's, its two moments', its length, its decay factor's bits, and the pointer of its
// bf16 copy (0 if it has none), which gets the new value rounded as the products read it. The clip factor comes
// from the report, and when the report says the step may not go on, nothing is written: a NaN step leaves the
// weights, their copies and the moments as they were.
extern "C" __global__ void adamw_multi(const unsigned long long* table, float* report, int flags_at,
                                       float one_minus_beta1, float beta2, float one_minus_beta2,
                                       float bias_correction2_sqrt, float eps, float neg_step_size) {
    if (report[REPORT_OK] == 0.0f) return;
    const unsigned long long* row = table + (long long)ADAMW_ROW * blockIdx.y;
    float* p = (float*)row[0];
    const float* g = (const float*)row[1];
    float* m = (float*)row[2];
    float* v = (float*)row[3];
    const long long n = (long long)row[4];
    const float decay_factor = __uint_as_float((unsigned int)row[5]);
    unsigned short* rounded = (unsigned short*)row[6];
    const float clip = report[REPORT_CLIP];
    bool blew_up = false;
    FOR_EACH(i, n) {
        float gi = g[i];
        if (clip < 1.0f) gi *= clip;  // clip_grad_norm_ scales only when the factor is below 1
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_entry(pi, gi, mi, vi, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                    bias_correction2_sqrt, eps, neg_step_size);
        p[i] = pi;
        if (rounded) rounded[i] = f32_to_bf16_bits(pi);
        m[i] = mi;
        v[i] = vi;
        blew_up = blew_up || !is_finite(pi);
    }
    if (blew_up) report[flags_at + blockIdx.y] = 1.0f;  // every writer writes the same 1
}
// ANCHOR_END: adamw_multi
