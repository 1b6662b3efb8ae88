// Scaling each row by its own weight, and the row-wise dot products that are its backward for the weights (a
// mixture of experts' combine step). CPU mirror: `nn::row_scale::{scale_rows, row_dots}`.
//
//   y[t, c] = w[t]·x[t, c]             one thread per element
//   dots[t] = Σ_c a[t, c]·b[t, c]      one block per row: a float partial per thread over a block-stride loop,
//                                      then block_sum's warp-shuffle tree (the CPU sums in f64)

extern "C" __global__ void scale_rows(float* y, const float* x, const float* w, int rows, int cols) {
    FOR_EACH(i, (long long)rows * cols) y[i] = w[i / cols] * x[i];
}

extern "C" __global__ void row_dots(float* dots, const float* a, const float* b, int hidden) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * hidden;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) sum += a[row + c] * b[row + c];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) dots[blockIdx.x] = sum;
}
