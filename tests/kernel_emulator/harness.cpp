// The project's kernel sources, compiled for the CPU with cuda_on_cpu.hpp, and one C entry point per kernel:
// emu_<kernel>(grid_x, grid_y, block_x, the kernel's own arguments…). Built and loaded by tests/kernels_on_cpu.rs.
#include "cuda_on_cpu.hpp"

#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/attention_masks.cuh"
#include "../../src/backend/cuda/kernels/mma.cuh"
#include "../../src/backend/cuda/kernels/elementwise.cu"
#include "../../src/backend/cuda/kernels/embedding.cu"
#include "../../src/backend/cuda/kernels/rms_norm.cu"
#include "../../src/backend/cuda/kernels/layer_norm.cu"
#include "../../src/backend/cuda/kernels/rope.cu"
#include "../../src/backend/cuda/kernels/fused_qkv.cu"
#include "../../src/backend/cuda/kernels/row_scale.cu"
#include "../../src/backend/cuda/kernels/attention.cu"
#include "../../src/backend/cuda/kernels/flash_attention.cu"
#include "../../src/backend/cuda/kernels/cross_entropy.cu"
#include "../../src/backend/cuda/kernels/quant4.cu"
#include "../../src/backend/cuda/kernels/optim.cu"
#include "../../src/backend/cuda/kernels/random.cu"

#define WRAP(name, ARGS, ...)                                                            \
    extern "C" void emu_##name(unsigned gx, unsigned gy, unsigned bx, __VA_ARGS__) {    \
        launch(gx, gy, bx, [&] { name ARGS; }, (const void*)&name);                      \
    }

typedef long long i64;
typedef unsigned int u32;

WRAP(add, (out, a, b, n), float* out, const float* a, const float* b, i64 n)
WRAP(add_scaled, (a, b, s, n), float* a, const float* b, float s, i64 n)
WRAP(scale, (out, x, s, n), float* out, const float* x, float s, i64 n)
WRAP(mul, (out, a, b, n), float* out, const float* a, const float* b, i64 n)
WRAP(swiglu, (out, g, u, n), float* out, const float* g, const float* u, i64 n)
WRAP(swiglu_backward, (dg, du, dy, g, u, n), float* dg, float* du, const float* dy, const float* g, const float* u, i64 n)
WRAP(gelu_tanh, (out, x, n), float* out, const float* x, i64 n)
WRAP(gelu_tanh_backward, (dx, dy, x, n), float* dx, const float* dy, const float* x, i64 n)
WRAP(gelu_erf, (out, x, n), float* out, const float* x, i64 n)
WRAP(gelu_erf_backward, (dx, dy, x, n), float* dx, const float* dy, const float* x, i64 n)
WRAP(add_bias_rows, (y, b, rows, cols, ld), float* y, const float* b, int rows, int cols, int ld)
WRAP(column_sum, (out, x, rows, cols, per), float* out, const float* x, int rows, int cols, int per)
WRAP(f32_to_bf16, (out, x, n), unsigned short* out, const float* x, i64 n)
WRAP(concat_rows, (out, a, na, b, nb), float* out, const float* a, i64 na, const float* b, i64 nb)
WRAP(embedding, (out, table, ids, t, h), float* out, const float* table, const u32* ids, int t, int h)
WRAP(embedding_backward, (dt, dy, ids, t, h), float* dt, const float* dy, const u32* ids, int t, int h)
WRAP(rms_norm, (y, x, w, h, eps), float* y, const float* x, const float* w, int h, float eps)
WRAP(rms_norm_backward, (dx, dwr, dy, x, w, h, eps), float* dx, float* dwr, const float* dy, const float* x,
     const float* w, int h, float eps)
WRAP(rms_norm_backward_input, (dx, dy, x, w, h, eps), float* dx, const float* dy, const float* x, const float* w,
     int h, float eps)
WRAP(layer_norm, (y, x, w, b, h, eps), float* y, const float* x, const float* w, const float* b, int h, float eps)
WRAP(layer_norm_backward, (dx, dwr, dy, x, w, h, eps), float* dx, float* dwr, const float* dy, const float* x,
     const float* w, int h, float eps)
WRAP(layer_norm_backward_input, (dx, dy, x, w, h, eps), float* dx, const float* dy, const float* x, const float* w,
     int h, float eps)
WRAP(rope, (y, x, pos, f, t, heads, d, half, dir), float* y, const float* x, const u32* pos, const float* f, int t,
     int heads, int d, int half, float dir)
WRAP(split_qkv, (q, k, v, qkv, t, g, qw, kw), float* q, float* k, float* v, const float* qkv, int t, int g, int qw,
     int kw)
WRAP(join_qkv, (qkv, q, k, v, t, g, qw, kw), float* qkv, const float* q, const float* k, const float* v, int t, int g,
     int qw, int kw)
WRAP(scale_rows, (y, x, w, rows, cols), float* y, const float* x, const float* w, int rows, int cols)
WRAP(row_dots, (dots, a, b, h), float* dots, const float* a, const float* b, int h)
WRAP(cross_entropy, (l, dz, z, y, w, v), float* l, float* dz, const float* z, const u32* y, const float* w, int v)
WRAP(attention_forward_tiled, (o, lse, q, k, v, seg, first, a), float* o, float* lse, const float* q,
     const float* k, const float* v, const u32* seg, const u32* first, AttentionDims a)
WRAP(attention_backward_dq_tiled, (dq, dout, q, k, v, lse, delta, seg, first, a), float* dq, const float* dout,
     const float* q, const float* k, const float* v, const float* lse, const float* delta, const u32* seg,
     const u32* first, AttentionDims a)
WRAP(attention_backward_dkdv_tiled, (dk, dv, dout, q, k, v, lse, delta, seg, last, a), float* dk, float* dv,
     const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
     const u32* seg, const u32* last, AttentionDims a)
WRAP(attention_forward_per_key, (o, lse, q, k, v, seg, first, a), float* o, float* lse, const float* q,
     const float* k, const float* v, const u32* seg, const u32* first, AttentionDims a)
WRAP(attention_delta, (delta, dout, out, a), float* delta, const float* dout, const float* out, AttentionDims a)
WRAP(attention_backward_dq_per_key, (dq, dout, q, k, v, lse, delta, seg, first, a), float* dq, const float* dout,
     const float* q, const float* k, const float* v, const float* lse, const float* delta, const u32* seg,
     const u32* first, AttentionDims a)
WRAP(attention_backward_dkdv_per_key, (dk, dv, dout, q, k, v, lse, delta, seg, last, a), float* dk, float* dv,
     const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
     const u32* seg, const u32* last, AttentionDims a)
WRAP(flash_attention_forward_d64, (o, lse, q, k, v, seg, first, a), float* o, float* lse, const float* q,
     const float* k, const float* v, const u32* seg, const u32* first, AttentionDims a)
WRAP(flash_attention_dq_d64, (dq, dout, q, k, v, lse, delta, seg, first, a), float* dq, const float* dout,
     const float* q, const float* k, const float* v, const float* lse, const float* delta, const u32* seg,
     const u32* first, AttentionDims a)
WRAP(flash_attention_dkdv_d64, (dk, dv, dout, q, k, v, lse, delta, seg, last, a), float* dk, float* dv,
     const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
     const u32* seg, const u32* last, AttentionDims a)
WRAP(flash_attention_forward_d128, (o, lse, q, k, v, seg, first, a), float* o, float* lse, const float* q,
     const float* k, const float* v, const u32* seg, const u32* first, AttentionDims a)
WRAP(flash_attention_dq_d128, (dq, dout, q, k, v, lse, delta, seg, first, a), float* dq, const float* dout,
     const float* q, const float* k, const float* v, const float* lse, const float* delta, const u32* seg,
     const u32* first, AttentionDims a)
WRAP(flash_attention_dkdv_d128, (dk, dv, dout, q, k, v, lse, delta, seg, last, a), float* dk, float* dv,
     const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
     const u32* seg, const u32* last, AttentionDims a)
WRAP(flash_attention_forward_d256, (o, lse, q, k, v, seg, first, a), float* o, float* lse, const float* q,
     const float* k, const float* v, const u32* seg, const u32* first, AttentionDims a)
WRAP(flash_attention_dq_d256, (dq, dout, q, k, v, lse, delta, seg, first, a), float* dq, const float* dout,
     const float* q, const float* k, const float* v, const float* lse, const float* delta, const u32* seg,
     const u32* first, AttentionDims a)
WRAP(flash_attention_dkdv_d256, (dk, dv, dout, q, k, v, lse, delta, seg, last, a), float* dk, float* dv,
     const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
     const u32* seg, const u32* last, AttentionDims a)
WRAP(mma_bf16_tile_product, (c, a, b), float* c, const unsigned short* a, const unsigned short* b)
WRAP(dequantize_4bit, (out, packed, absmax, code, start, n, bs), float* out, const unsigned char* packed,
     const float* absmax, const float* code, i64 start, i64 n, int bs)
WRAP(dequantize_4bit_dq, (out, packed, codes, nested, map, offset, code, start, n, bs), float* out,
     const unsigned char* packed, const unsigned char* codes, const float* nested, const float* map, float offset,
     const float* code, i64 start, i64 n, int bs)
WRAP(dequantize_4bit_bf16, (out, packed, absmax, code, start, n, bs), unsigned short* out,
     const unsigned char* packed, const float* absmax, const float* code, i64 start, i64 n, int bs)
WRAP(dequantize_4bit_dq_bf16, (out, packed, codes, nested, map, offset, code, start, n, bs), unsigned short* out,
     const unsigned char* packed, const unsigned char* codes, const float* nested, const float* map, float offset,
     const float* code, i64 start, i64 n, int bs)
WRAP(adamw, (p, g, m, v, n, df, b1, b2, ob2, bc2, eps, step), float* p, const float* g, float* m, float* v, i64 n,
     float df, float b1, float b2, float ob2, float bc2, float eps, float step)
WRAP(sum_squares, (partial, x, n), float* partial, const float* x, i64 n)
WRAP(dropout_mask, (mask, n, seed, threshold, keep), float* mask, i64 n, unsigned long long seed, u32 threshold,
     float keep)
WRAP(dropout_apply, (out, x, n, seed, threshold, keep), float* out, const float* x, i64 n, unsigned long long seed,
     u32 threshold, float keep)
WRAP(dropout_add, (dx, g, n, seed, threshold, keep), float* dx, const float* g, i64 n, unsigned long long seed,
     u32 threshold, float keep)
