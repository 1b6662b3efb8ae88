// Element-wise ops, the SwiGLU and GELU activations, broadcast bias, column sums and the f32 → bf16 cast.
// CPU mirrors: `a + b`, `scaled_add`, `nn::mlp::{swiglu, gelu_tanh, gelu_erf}{,_backward}`, `nn::linear`
// (bias, dbias).

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
__device__ inline float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ∂/∂u = dy·silu(g);  ∂/∂g = dy·u·σ(g)·(1 + g·(1 − σ(g)))
__device__ inline void silu_times_backward(float dy, float g, float u, float* dg, float* du) {
    const float s = 1.0f / (1.0f + expf(-g));
    *du = dy * g * s;
    *dg = dy * u * s * (1.0f + g * (1.0f - s));
}

extern "C" __global__ void swiglu(float* out, const float* gate, const float* up, long long n) {
    FOR_EACH(i, n) out[i] = silu_times(gate[i], up[i]);
}

extern "C" __global__ void swiglu_to_bf16(unsigned short* out, const float* gate, const float* up, long long n) {
    FOR_EACH(i, n) store(out, i, silu_times(gate[i], up[i]));
}

extern "C" __global__ void swiglu_backward(float* dgate, float* dup, const float* dy, const float* gate,
                                           const float* up, long long n) {
    FOR_EACH(i, n) silu_times_backward(dy[i], gate[i], up[i], &dgate[i], &dup[i]);
}

// The same on one [rows, 2·inner] tensor whose rows are [gate | up] (a stacked or fused gate/up product):
// out [rows, inner]; the backward writes d[gate | up] in that layout, ready for the stacked dx product.
// Its output is the down projection's input, which only products read: under mixed precision the _to_bf16
// entry point writes it rounded, and the _bf16 one also reads a [gate | up] a stacked base wrote in bf16.
template <typename In, typename Out>
__device__ __forceinline__ void swiglu_halves_entries(Out* out, const In* gate_up, long long rows, long long inner) {
    FOR_EACH(i, rows * inner) {
        const long long t = i / inner, j = i % inner;
        store(out, i, silu_times(load(gate_up, t * 2 * inner + j), load(gate_up, t * 2 * inner + inner + j)));
    }
}

extern "C" __global__ void swiglu_halves(float* out, const float* gate_up, long long rows, long long inner) {
    swiglu_halves_entries(out, gate_up, rows, inner);
}

extern "C" __global__ void swiglu_halves_to_bf16(unsigned short* out, const float* gate_up, long long rows,
                                                 long long inner) {
    swiglu_halves_entries(out, gate_up, rows, inner);
}

extern "C" __global__ void swiglu_halves_bf16(unsigned short* out, const unsigned short* gate_up, long long rows,
                                              long long inner) {
    swiglu_halves_entries(out, gate_up, rows, inner);
}

// ∂L/∂[gate | up] feeds the stacked or fused gate/up backward: products only, unless that takes a bias gradient.
template <typename In, typename Out>
__device__ __forceinline__ void swiglu_halves_backward_entries(Out* dgate_up, const float* dy, const In* gate_up,
                                                               long long rows, long long inner) {
    FOR_EACH(i, rows * inner) {
        const long long t = i / inner, j = i % inner, g = t * 2 * inner + j, u = g + inner;
        float dg, du;
        silu_times_backward(dy[i], load(gate_up, g), load(gate_up, u), &dg, &du);
        store(dgate_up, g, dg);
        store(dgate_up, u, du);
    }
}

extern "C" __global__ void swiglu_halves_backward(float* dgate_up, const float* dy, const float* gate_up,
                                                  long long rows, long long inner) {
    swiglu_halves_backward_entries(dgate_up, dy, gate_up, rows, inner);
}

extern "C" __global__ void swiglu_halves_backward_to_bf16(unsigned short* dgate_up, const float* dy,
                                                          const float* gate_up, long long rows, long long inner) {
    swiglu_halves_backward_entries(dgate_up, dy, gate_up, rows, inner);
}

extern "C" __global__ void swiglu_halves_backward_bf16(unsigned short* dgate_up, const float* dy,
                                                       const unsigned short* gate_up, long long rows,
                                                       long long inner) {
    swiglu_halves_backward_entries(dgate_up, dy, gate_up, rows, inner);
}

// GELU, tanh approximation: ½·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³). CPU mirror: `nn::mlp::gelu_tanh`.
#define GELU_SQRT_2_OVER_PI 0.7978846f
#define GELU_CUBIC 0.044715f
extern "C" __global__ void gelu_tanh(float* out, const float* x, long long n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(GELU_SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v)));
    }
}

// dx = dy·(½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)),  t = tanh(u)
extern "C" __global__ void gelu_tanh_backward(float* dx, const float* dy, const float* x, long long n) {
    FOR_EACH(i, n) {
        const float v = x[i], t = tanhf(GELU_SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v));
        dx[i] = dy[i] * (0.5f * (1.0f + t) +
                         0.5f * v * (1.0f - t * t) * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * v * v));
    }
}

// GELU, exact: ½·x·(1 + erf(x/√2)) = x·Φ(x). CPU mirror: `nn::mlp::gelu_erf` (erf in f64 there, erff here).
#define GELU_FRAC_1_SQRT_2 0.70710678f
#define GELU_FRAC_1_SQRT_2PI 0.39894228f
extern "C" __global__ void gelu_erf(float* out, const float* x, long long n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * GELU_FRAC_1_SQRT_2));
    }
}

// dx = dy·(Φ(x) + x·φ(x)),  φ(x) = e^(−x²/2)/√(2π). CPU mirror: `nn::mlp::gelu_erf_backward`.
extern "C" __global__ void gelu_erf_backward(float* dx, const float* dy, const float* x, long long n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        const float derivative =
            0.5f * (1.0f + erff(v * GELU_FRAC_1_SQRT_2)) + v * expf(-0.5f * v * v) * GELU_FRAC_1_SQRT_2PI;
        dx[i] = dy[i] * derivative;
    }
}

// y[r, c] += bias[c] over a [rows, cols] block whose rows lie `ld` entries apart: all of y (ld = cols), or one
// band's columns of a wider output. What a product does when cuBLASLt has no bias epilogue for it (`blas_lt.rs`);
// the _bf16 entry point adds into an output kept in bf16, rounding the sum again.
template <typename Entry>
__device__ __forceinline__ void add_bias_rows_entries(Entry* y, const float* bias, int rows, int cols, int ld) {
    FOR_EACH(i, (long long)rows * cols) {
        const long long at = i / cols * ld + i % cols;
        store(y, at, load(y, at) + bias[i % cols]);
    }
}

extern "C" __global__ void add_bias_rows(float* y, const float* bias, int rows, int cols, int ld) {
    add_bias_rows_entries(y, bias, rows, cols, ld);
}

extern "C" __global__ void add_bias_rows_bf16(unsigned short* y, const float* bias, int rows, int cols, int ld) {
    add_bias_rows_entries(y, bias, rows, cols, ld);
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
