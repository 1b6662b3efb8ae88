// LayerNorm, forward and backward: one block per row. CPU mirror: `nn::layer_norm`.
//
//   μ = mean(x),  r = 1/√(mean((x − μ)²) + ε),  x̂ = (x − μ)·r,  y = w ⊙ x̂ + b
//   g = dy ⊙ w,  ∂L/∂x = r·(g − mean(g) − x̂·mean(g ⊙ x̂)),  ∂L/∂w = Σ_rows dy ⊙ x̂,  ∂L/∂b = Σ_rows dy
//
// The variance is a second pass over the row (Σ(x − μ)², not Σx² − μ²·H, which cancels badly when |μ| ≫ σ).

// ANCHOR: layer_norm_kernel
__device__ __forceinline__ void row_moments(const float* xr, int hidden, float eps, float* scratch, float* mean,
                                            float* r) {
    float sum = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) sum += xr[c];
    const float mu = block_sum(sum, scratch) / hidden;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) sum_sq += (xr[c] - mu) * (xr[c] - mu);
    *mean = mu;
    *r = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
}

// Out is float, or bf16 bits for an output only products read (the `_to_bf16` entry points).
template <typename Out>
__device__ __forceinline__ void layer_norm_row(Out* y, const float* x, const float* w, const float* b, int hidden,
                                               float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    float mean, r;
    row_moments(x + row, hidden, eps, scratch, &mean, &r);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) store(y, row + c, w[c] * ((x[row + c] - mean) * r) + b[c]);
}

extern "C" __global__ void layer_norm(float* y, const float* x, const float* w, const float* b, int hidden,
                                      float eps) {
    layer_norm_row(y, x, w, b, hidden, eps);
}

extern "C" __global__ void layer_norm_to_bf16(unsigned short* y, const float* x, const float* w, const float* b,
                                              int hidden, float eps) {
    layer_norm_row(y, x, w, b, hidden, eps);
}
// ANCHOR_END: layer_norm_kernel

// ANCHOR: add_layer_norm_kernel
// The residual add and the LayerNorm after it in one launch: sum = x + a (the residual stream, kept for the
// backward), then `layer_norm` of sum. Each thread's moments loops read back only the entries it wrote, so no
// barrier is needed, and the sums run in the same order as `add` then `layer_norm`: the same bits.
template <typename Out>
__device__ __forceinline__ void add_layer_norm_row(float* sum, Out* y, const float* x, const float* a, const float* w,
                                                   const float* b, int hidden, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) sum[row + c] = x[row + c] + a[row + c];
    float mean, r;
    row_moments(sum + row, hidden, eps, scratch, &mean, &r);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        store(y, row + c, w[c] * ((sum[row + c] - mean) * r) + b[c]);
    }
}

extern "C" __global__ void add_layer_norm(float* sum, float* y, const float* x, const float* a, const float* w,
                                          const float* b, int hidden, float eps) {
    add_layer_norm_row(sum, y, x, a, w, b, hidden, eps);
}

extern "C" __global__ void add_layer_norm_to_bf16(float* sum, unsigned short* y, const float* x, const float* a,
                                                  const float* w, const float* b, int hidden, float eps) {
    add_layer_norm_row(sum, y, x, a, w, b, hidden, eps);
}
// ANCHOR_END: add_layer_norm_kernel

// dx, and (when wanted) dw_rows[t, c] = dy·x̂: the per-row terms of ∂L/∂w, summed over rows by `column_sum`
// afterwards (∂L/∂b is the column sum of dy itself). A frozen norm launches the _input entry point: dx only.
// With ACCUMULATE the row's dx is added into what dx holds (the residual stream's gradient), as in rms_norm.cu.
template <bool WEIGHT_GRAD, bool ACCUMULATE>
__device__ __forceinline__ void layer_norm_backward_row(float* dx, float* dw_rows, const float* dy, const float* x,
                                                        const float* w, int hidden, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    const float *xr = x + row, *dyr = dy + row;
    float mean, r;
    row_moments(xr, hidden, eps, scratch, &mean, &r);
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float g = dyr[c] * w[c];
        g_sum += g;
        gx_sum += g * ((xr[c] - mean) * r);
    }
    const float g_mean = block_sum(g_sum, scratch) / hidden;
    const float gx_mean = block_sum(gx_sum, scratch) / hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float x_hat = (xr[c] - mean) * r;
        const float d = r * (dyr[c] * w[c] - g_mean - x_hat * gx_mean);
        dx[row + c] = ACCUMULATE ? dx[row + c] + d : d;
        if (WEIGHT_GRAD) dw_rows[row + c] = dyr[c] * x_hat;
    }
}

extern "C" __global__ void layer_norm_backward(float* dx, float* dw_rows, const float* dy, const float* x,
                                               const float* w, int hidden, float eps) {
    layer_norm_backward_row<true, false>(dx, dw_rows, dy, x, w, hidden, eps);
}

extern "C" __global__ void layer_norm_backward_input(float* dx, const float* dy, const float* x, const float* w,
                                                     int hidden, float eps) {
    layer_norm_backward_row<false, false>(dx, nullptr, dy, x, w, hidden, eps);
}

extern "C" __global__ void layer_norm_backward_add(float* dx, float* dw_rows, const float* dy, const float* x,
                                                   const float* w, int hidden, float eps) {
    layer_norm_backward_row<true, true>(dx, dw_rows, dy, x, w, hidden, eps);
}

extern "C" __global__ void layer_norm_backward_input_add(float* dx, const float* dy, const float* x, const float* w,
                                                         int hidden, float eps) {
    layer_norm_backward_row<false, true>(dx, nullptr, dy, x, w, hidden, eps);
}
