// RMSNorm, forward and backward: one block per row. CPU mirror: `nn::rms_norm`.
//
//   r = 1/√(mean(x²) + ε),  y = w ⊙ (x·r)
//   g = dy ⊙ w,  ∂L/∂x = r·g − r³·x·(g·x)/H,  ∂L/∂w = Σ_rows dy ⊙ x·r

// ANCHOR: rms_norm_kernel
// Out is float, or bf16 bits for an output only products read (the `_to_bf16` entry points).
template <typename Out>
__device__ __forceinline__ void rms_norm_row(Out* y, const float* x, const float* w, int hidden, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) sum_sq += x[row + c] * x[row + c];
    const float r = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) store(y, row + c, w[c] * (x[row + c] * r));
}

extern "C" __global__ void rms_norm(float* y, const float* x, const float* w, int hidden, float eps) {
    rms_norm_row(y, x, w, hidden, eps);
}

extern "C" __global__ void rms_norm_to_bf16(unsigned short* y, const float* x, const float* w, int hidden, float eps) {
    rms_norm_row(y, x, w, hidden, eps);
}
// ANCHOR_END: rms_norm_kernel

// ANCHOR: add_rms_norm_kernel
// The residual add and the norm after it in one pass over the row: sum = x + a (the residual stream, kept for
// the backward, always f32), y = w ⊙ (sum·r). Each entry of sum is rounded once, as `add` then `rms_norm` would.
template <typename Out>
__device__ __forceinline__ void add_rms_norm_row(float* sum, Out* y, const float* x, const float* a, const float* w,
                                                 int hidden, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float s = x[row + c] + a[row + c];
        sum[row + c] = s;
        sum_sq += s * s;
    }
    const float r = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
    // each thread reads back only the entries it wrote itself: no barrier needed before the reads
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) store(y, row + c, w[c] * (sum[row + c] * r));
}

extern "C" __global__ void add_rms_norm(float* sum, float* y, const float* x, const float* a, const float* w,
                                        int hidden, float eps) {
    add_rms_norm_row(sum, y, x, a, w, hidden, eps);
}

extern "C" __global__ void add_rms_norm_to_bf16(float* sum, unsigned short* y, const float* x, const float* a,
                                                const float* w, int hidden, float eps) {
    add_rms_norm_row(sum, y, x, a, w, hidden, eps);
}
// ANCHOR_END: add_rms_norm_kernel

// ANCHOR: rms_norm_backward_kernel
// dx, and (when dw_rows is wanted) dw_rows[t, c] = dy·x·r: the per-row terms of ∂L/∂w, summed over rows by
// `column_sum` afterwards (deterministic, unlike atomics into one row). A frozen norm launches the _input
// entry point, which writes dx only.
// With ACCUMULATE the row's dx is added into what dx holds (the residual stream's gradient picking up the
// norm's share) instead of overwriting it: the add after the backward, done in the same pass.
template <bool WEIGHT_GRAD, bool ACCUMULATE>
__device__ __forceinline__ void rms_norm_backward_row(float* dx, float* dw_rows, const float* dy, const float* x,
                                                      const float* w, int hidden, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    const float *xr = x + row, *dyr = dy + row;
    float sum_sq = 0.0f, g_dot_x = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        sum_sq += xr[c] * xr[c];
        g_dot_x += dyr[c] * w[c] * xr[c];
    }
    const float r = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
    const float gx = block_sum(g_dot_x, scratch);
    const float k = r * r * r * gx / hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float d = r * dyr[c] * w[c] - k * xr[c];
        dx[row + c] = ACCUMULATE ? dx[row + c] + d : d;
        if (WEIGHT_GRAD) dw_rows[row + c] = dyr[c] * xr[c] * r;
    }
}

extern "C" __global__ void rms_norm_backward(float* dx, float* dw_rows, const float* dy, const float* x,
                                             const float* w, int hidden, float eps) {
    rms_norm_backward_row<true, false>(dx, dw_rows, dy, x, w, hidden, eps);
}

extern "C" __global__ void rms_norm_backward_input(float* dx, const float* dy, const float* x, const float* w,
                                                   int hidden, float eps) {
    rms_norm_backward_row<false, false>(dx, nullptr, dy, x, w, hidden, eps);
}

extern "C" __global__ void rms_norm_backward_add(float* dx, float* dw_rows, const float* dy, const float* x,
                                                 const float* w, int hidden, float eps) {
    rms_norm_backward_row<true, true>(dx, dw_rows, dy, x, w, hidden, eps);
}

extern "C" __global__ void rms_norm_backward_input_add(float* dx, const float* dy, const float* x, const float* w,
                                                       int hidden, float eps) {
    rms_norm_backward_row<false, true>(dx, nullptr, dy, x, w, hidden, eps);
}
// ANCHOR_END: rms_norm_backward_kernel
