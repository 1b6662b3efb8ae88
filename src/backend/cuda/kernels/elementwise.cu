// Element-wise ops, the SwiGLU activation, broadcast bias, column sums and the f32 → bf16 cast.
// CPU mirrors: `a + b`, `scaled_add`, `nn::mlp::swiglu{,_backward}`, `nn::linear` (bias, dbias).

extern "C" __global__ void add(float* out, const float* a, const float* b, long long n) {
    FOR_EACH(i, n) out[i] = a[i] + b[i];
}

// a += s·b  (add_assign is s = 1)
extern "C" __global__ void add_scaled(float* a, const float* b, float s, long long n) {
    FOR_EACH(i, n) a[i] = fmaf(s, b[i], a[i]);
}

extern "C" __global__ void scale(float* out, const float* x, float s, long long n) {
    FOR_EACH(i, n) out[i] = s * x[i];
}

extern "C" __global__ void mul(float* out, const float* a, const float* b, long long n) {
    FOR_EACH(i, n) out[i] = a[i] * b[i];
}

// silu(g)·u with silu(g) = g·σ(g)
extern "C" __global__ void swiglu(float* out, const float* gate, const float* up, long long n) {
    FOR_EACH(i, n) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// ∂/∂u = dy·silu(g);  ∂/∂g = dy·u·σ(g)·(1 + g·(1 − σ(g)))
extern "C" __global__ void swiglu_backward(float* dgate, float* dup, const float* dy, const float* gate,
                                           const float* up, long long n) {
    FOR_EACH(i, n) {
        const float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        dup[i] = dy[i] * g * s;
        dgate[i] = dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

// y[r, c] += bias[c]
extern "C" __global__ void add_bias_rows(float* y, const float* bias, int rows, int cols) {
    FOR_EACH(i, (long long)rows * cols) y[i] += bias[i % cols];
}

// ANCHOR: column_sum
// out[chunk, c] = Σ of x[r, c] over the chunk's rows [chunk·rows_per_chunk, …): one thread per (chunk, column),
// rows in order. Neighbouring threads read neighbouring addresses, so each row is one coalesced sweep. A
// column sum (a bias or norm-weight gradient) is this twice: chunks of rows in parallel, then the few chunk
// sums — a fixed order, so the result is the same on every run, unlike atomics.
extern "C" __global__ void column_sum(float* out, const float* x, int rows, int cols, int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= cols) return;
    const int end = min(rows, (chunk + 1) * rows_per_chunk);
    float acc = 0.0f;
    for (int r = chunk * rows_per_chunk; r < end; ++r) acc += x[(long long)r * cols + c];
    out[(long long)chunk * cols + c] = acc;
}
// ANCHOR_END: column_sum

extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* x, long long n) {
    FOR_EACH(i, n) out[i] = f32_to_bf16_bits(x[i]);
}

// Rows [0, rows_a) from a, then rows_b rows from b (the KV cache growing by one step).
extern "C" __global__ void concat_rows(float* out, const float* a, long long n_a, const float* b, long long n_b) {
    FOR_EACH(i, n_a + n_b) out[i] = i < n_a ? a[i] : b[i - n_a];
}
