// Fused softmax + cross-entropy with per-row weights (the loss mask times the loss mode's coefficient), one
// block per row: ℓ = logsumexp(z) − z_y,  dz = w·(softmax(z) − onehot(y)). CPU mirror: `nn::cross_entropy`.
// Rows with w = 0 (unsupervised tokens) still report ℓ but write zeros to dz.
extern "C" __global__ void cross_entropy(float* losses, float* dlogits, const float* logits,
                                         const unsigned int* targets, const float* weights, int vocab) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * vocab;
    const float* z = logits + row;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, z[c]);
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) sum += expf(z[c] - m);
    const float lse = m + logf(block_sum(sum, scratch));
    const unsigned int y = targets[blockIdx.x];
    const float w = weights[blockIdx.x];
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - z[y];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        const float p = w == 0.0f ? 0.0f : w * expf(z[c] - lse);
        dlogits[row + c] = (unsigned int)c == y ? p - w : p;
    }
}
