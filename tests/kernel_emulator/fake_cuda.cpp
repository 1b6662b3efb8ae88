// An emulated CUDA device for tests/cuda_vs_cpu.rs on machines without a GPU: the parts of the driver API,
// NVRTC, cuBLAS and cuBLASLt that cudarc calls for this project, over host memory, running the project's kernels
// (the unchanged .cu sources, via harness.cpp) on CPU threads. Built once and copied as libcuda.so,
// libnvrtc.so, libcublas.so and libcublasLt.so. A device pointer is a host pointer; "PTX" is the list of kernel names; a launch looks the
// kernel up by name and unpacks cuLaunchKernel's parameter array by the kernel's own C signature.
#include "harness.cpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>

typedef int CUresult;  // 0: CUDA_SUCCESS
typedef unsigned long long CUdeviceptr;

// ---- kernels by name: unpack void** params by the kernel's signature ----
template <class... A, std::size_t... I>
void call_with(void (*k)(A...), void** params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}
template <class... A>
void launch_by_signature(void (*k)(A...), unsigned gx, unsigned gy, unsigned bx, void** params) {
    launch(gx, gy, bx, [&] { call_with(k, params, std::index_sequence_for<A...>{}); }, (const void*)k);
}
using Launcher = void (*)(unsigned, unsigned, unsigned, void**);
#define KERNEL(name) {#name, [](unsigned gx, unsigned gy, unsigned bx, void** p) { launch_by_signature(name, gx, gy, bx, p); }}

static const std::map<std::string, Launcher>& kernels() {
    static const std::map<std::string, Launcher> table = {
        KERNEL(add), KERNEL(add_scaled), KERNEL(scale), KERNEL(mul), KERNEL(swiglu), KERNEL(swiglu_to_bf16), KERNEL(swiglu_backward),
        KERNEL(swiglu_halves), KERNEL(swiglu_halves_to_bf16), KERNEL(swiglu_halves_bf16), KERNEL(swiglu_halves_backward), KERNEL(swiglu_halves_backward_to_bf16), KERNEL(swiglu_halves_backward_bf16),
        KERNEL(gelu_tanh), KERNEL(gelu_tanh_backward), KERNEL(gelu_erf), KERNEL(gelu_erf_backward),
        KERNEL(layer_norm), KERNEL(layer_norm_to_bf16), KERNEL(add_layer_norm), KERNEL(add_layer_norm_to_bf16), KERNEL(layer_norm_backward), KERNEL(layer_norm_backward_input),
        KERNEL(layer_norm_backward_add), KERNEL(layer_norm_backward_input_add),
        KERNEL(split_qkv), KERNEL(join_qkv),
        KERNEL(add_bias_rows), KERNEL(add_bias_rows_bf16), KERNEL(column_sum), KERNEL(f32_to_bf16), KERNEL(concat_rows), KERNEL(embedding), KERNEL(embedding_bf16),
        KERNEL(embedding_backward), KERNEL(rms_norm), KERNEL(rms_norm_to_bf16), KERNEL(rms_norm_backward), KERNEL(rms_norm_backward_input),
        KERNEL(add_rms_norm), KERNEL(add_rms_norm_to_bf16), KERNEL(rms_norm_backward_add), KERNEL(rms_norm_backward_input_add),
        KERNEL(rope), KERNEL(split_qkv_rope), KERNEL(join_qkv_rope), KERNEL(join_qkv_rope_to_bf16),
        KERNEL(attention_forward_tiled), KERNEL(attention_backward_dq_tiled), KERNEL(attention_backward_dkdv_tiled),
        KERNEL(attention_forward_per_key), KERNEL(attention_delta), KERNEL(attention_delta_bf16), KERNEL(attention_backward_dq_per_key),
        KERNEL(attention_backward_dkdv_per_key),
        KERNEL(flash_attention_forward_d64), KERNEL(flash_attention_forward_d128), KERNEL(flash_attention_forward_d256),
        KERNEL(flash_attention_forward_d64_to_bf16), KERNEL(flash_attention_forward_d128_to_bf16), KERNEL(flash_attention_forward_d256_to_bf16),
        KERNEL(flash_attention_dq_d64), KERNEL(flash_attention_dq_d128), KERNEL(flash_attention_dq_d256),
        KERNEL(flash_attention_dkdv_d64), KERNEL(flash_attention_dkdv_d128), KERNEL(flash_attention_dkdv_d256),
        KERNEL(mma_bf16_tile_product), KERNEL(cross_entropy), KERNEL(dequantize_4bit),
        KERNEL(dequantize_4bit_dq), KERNEL(dequantize_4bit_bf16), KERNEL(dequantize_4bit_dq_bf16), KERNEL(adamw), KERNEL(sum_squares), KERNEL(grad_norm_partials),
        KERNEL(grad_norm_finish), KERNEL(adamw_multi), KERNEL(dropout_mask), KERNEL(dropout_apply), KERNEL(dropout_apply_to_bf16), KERNEL(dropout_apply_bf16), KERNEL(dropout_add), KERNEL(scale_rows), KERNEL(row_dots),
    };
    return table;
}

extern "C" {
// ---- driver ----
CUresult cuInit(unsigned) { return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetName(char* name, int len, int) { std::snprintf(name, len, "emulated CUDA device (CPU threads)"); return 0; }
CUresult cuDeviceGetAttribute(int* v, int attribute, int) {
    switch (attribute) {
        case 75: *v = 9; break;  // compute capability major
        case 76: *v = 0; break;  // minor
        default: *v = 0;         // memory pools and everything else: not supported
    }
    return 0;
}
CUresult cuDeviceTotalMem_v2(std::size_t* bytes, int) { *bytes = std::size_t(1) << 34; return 0; }
CUresult cuMemGetInfo_v2(std::size_t* free_b, std::size_t* total) { *free_b = *total = std::size_t(1) << 34; return 0; }
static int primary_context;
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &primary_context; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int) { return 0; }
CUresult cuCtxSetCurrent(void*) { return 0; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = &primary_context; return 0; }
CUresult cuCtxSynchronize() { return 0; }
CUresult cuCtxGetDevice(int* d) { *d = 0; return 0; }
CUresult cuStreamSynchronize(void*) { return 0; }
CUresult cuStreamCreate(void** s, unsigned) { *s = nullptr; return 0; }
CUresult cuStreamDestroy_v2(void*) { return 0; }
// 256-byte aligned and zeroed, as the driver's allocations are aligned (cuBLASLt's kernels assume it by default)
CUresult cuMemAlloc_v2(CUdeviceptr* p, std::size_t bytes) {
    const std::size_t rounded = bytes ? (bytes + 255) / 256 * 256 : 256;  // aligned_alloc takes whole multiples
    void* at = std::aligned_alloc(256, rounded);
    if (!at) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
    std::memset(at, 0, rounded);
    *p = (CUdeviceptr)at;
    return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { std::free((void*)p); return 0; }
CUresult cuMemAllocAsync(CUdeviceptr* p, std::size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, std::size_t n) { std::memcpy((void*)d, h, n); return 0; }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, std::size_t n) { std::memcpy(h, (void*)d, n); return 0; }
CUresult cuMemcpyDtoD_v2(CUdeviceptr a, CUdeviceptr b, std::size_t n) { std::memmove((void*)a, (void*)b, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, std::size_t n, void*) { return cuMemcpyHtoD_v2(d, h, n); }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, std::size_t n, void*) { return cuMemcpyDtoH_v2(h, d, n); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr a, CUdeviceptr b, std::size_t n, void*) { return cuMemcpyDtoD_v2(a, b, n); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, std::size_t n) { std::memset((void*)d, v, n); return 0; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, std::size_t n, void*) { return cuMemsetD8_v2(d, v, n); }
CUresult cuModuleLoadData(void** module, const void*) { static int m; *module = &m; return 0; }
CUresult cuModuleUnload(void*) { return 0; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) return 500;  // CUDA_ERROR_NOT_FOUND
    *f = (void*)it->second;
    return 0;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned, void*, void** params, void**) {
    if (gz != 1 || by != 1 || bz != 1) return 1;  // the project launches 1-D blocks on (x, y) grids only
    ((Launcher)f)(gx, gy, bx, params);
    return 0;
}
CUresult cuGetErrorString(CUresult, const char** s) { *s = "emulated device error"; return 0; }
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_ERROR_EMULATED"; return 0; }

// ---- NVRTC: "compiling" keeps the source; the "PTX" is the source itself (the module loader ignores it) ----
struct Program { std::string src; };
int nvrtcCreateProgram(Program** p, const char* src, const char*, int, const char* const*, const char* const*) {
    *p = new Program{src};
    return 0;
}
int nvrtcCompileProgram(Program*, int, const char* const*) { return 0; }
int nvrtcGetPTXSize(Program* p, std::size_t* n) { *n = p->src.size() + 1; return 0; }
int nvrtcGetPTX(Program* p, char* out) { std::memcpy(out, p->src.c_str(), p->src.size() + 1); return 0; }
// the "cubin" is the source as well: the backend asks for sm_XY machine code first, and loads it
int nvrtcGetCUBINSize(Program* p, std::size_t* n) { *n = p->src.size() + 1; return 0; }
int nvrtcGetCUBIN(Program* p, char* out) { std::memcpy(out, p->src.c_str(), p->src.size() + 1); return 0; }
int nvrtcGetProgramLogSize(Program*, std::size_t* n) { *n = 1; return 0; }
int nvrtcGetProgramLog(Program*, char* out) { out[0] = 0; return 0; }
int nvrtcDestroyProgram(Program** p) { delete *p; *p = nullptr; return 0; }

// ---- cuBLAS: column-major C = α·op(A)·op(B) + β·C, as the BLAS reference defines it ----
int cublasCreate_v2(void** h) { static int handle; *h = &handle; return 0; }
int cublasDestroy_v2(void*) { return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
static float element(const void* m, int type, long long at) {
    if (type == 0) return static_cast<const float*>(m)[at];  // CUDA_R_32F
    return bf16_bits_to_f32(static_cast<const unsigned short*>(m)[at]);  // CUDA_R_16BF (14)
}
// C of c_type: f32, or bf16 (the f32 result rounded to nearest even on the way out, as cuBLAS does).
// `bias`, where given, is cuBLASLt's bias epilogue: bias[i] added to row i of C before the rounding.
static int gemm(int ta, int tb, int m, int n, int k, float alpha, const void* a, int a_type, int lda, const void* b,
                int b_type, int ldb, float beta, void* c, int c_type, int ldc, const float* bias = nullptr) {
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double s = 0.0;
            for (int l = 0; l < k; ++l) {
                const float x = element(a, a_type, ta ? l + (long long)i * lda : i + (long long)l * lda);
                const float y = element(b, b_type, tb ? j + (long long)l * ldb : l + (long long)j * ldb);
                s += (double)x * y;
            }
            const long long at = i + (long long)j * ldc;
            const float before = beta == 0.0f ? 0.0f : element(c, c_type, at);
            const float out = alpha * (float)s + (beta == 0.0f ? 0.0f : beta * before) + (bias ? bias[i] : 0.0f);
            if (c_type == 0)
                static_cast<float*>(c)[at] = out;
            else
                static_cast<unsigned short*>(c)[at] = f32_to_bf16_bits(out);
        }
    return 0;
}
int cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* a, int lda,
                   const float* b, int ldb, const float* beta, float* c, int ldc) {
    return gemm(ta, tb, m, n, k, *alpha, a, 0, lda, b, 0, ldb, *beta, c, 0, ldc);
}
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int a_type, int lda,
                 const void* b, int b_type, int ldb, const void* beta, void* c, int c_type, int ldc, int, int) {
    if (c_type != 0 && c_type != 14) return 7;  // f32 (CUDA_R_32F) and bf16 (CUDA_R_16BF) outputs
    return gemm(ta, tb, m, n, k, *(const float*)alpha, a, a_type, lda, b, b_type, ldb, *(const float*)beta, c,
                c_type, ldc);
}

// ---- cuBLASLt: descriptors as plain structs; a product is the gemm above plus its epilogue. What the project
// does not set (or sets wrongly) is refused as cuBLASLt would, so a test sees the backend's fallback counter. ----
struct LtDesc { int transa = 0, transb = 0; unsigned epilogue = 1; const void* vector = nullptr; int vector_type = -1; };
struct LtLayout { int type; unsigned long long rows, cols; long long ld; };
enum { LT_DEFAULT = 1, LT_BIAS = 4, LT_BGRADB = 512, LT_INVALID = 7, LT_NOT_SUPPORTED = 15 };
int cublasLtCreate(void** h) { static int handle; *h = &handle; return 0; }
int cublasLtDestroy(void*) { return 0; }
int cublasLtMatmulDescCreate(LtDesc** d, int compute_type, int scale_type) {
    if (compute_type != 68 || scale_type != 0) return LT_NOT_SUPPORTED;  // CUBLAS_COMPUTE_32F, f32 α and β
    *d = new LtDesc;
    return 0;
}
int cublasLtMatmulDescDestroy(LtDesc* d) { delete d; return 0; }
int cublasLtMatmulDescSetAttribute(LtDesc* d, int attribute, const void* buf, std::size_t size) {
    switch (attribute) {
        case 3: if (size != 4) return LT_INVALID; d->transa = *(const int*)buf; return 0;
        case 4: if (size != 4) return LT_INVALID; d->transb = *(const int*)buf; return 0;
        case 7: if (size != 4) return LT_INVALID; d->epilogue = *(const unsigned*)buf; return 0;
        case 8: if (size != sizeof(void*)) return LT_INVALID; d->vector = *(void* const*)buf; return 0;
        case 26: if (size != 4) return LT_INVALID; d->vector_type = *(const int*)buf; return 0;
        default: return LT_INVALID;  // an attribute the emulator does not model
    }
}
int cublasLtMatrixLayoutCreate(LtLayout** l, int type, unsigned long long rows, unsigned long long cols, long long ld) {
    if (ld < (long long)rows) return LT_INVALID;
    *l = new LtLayout{type, rows, cols, ld};
    return 0;
}
int cublasLtMatrixLayoutDestroy(LtLayout* l) { delete l; return 0; }
// The alignments (A, B, C, D) a preference promises; cuBLASLt assumes 256 bytes for any not set.
struct LtPreference { unsigned alignment[4] = {256, 256, 256, 256}; };
int cublasLtMatmulPreferenceCreate(LtPreference** p) { *p = new LtPreference; return 0; }
int cublasLtMatmulPreferenceSetAttribute(LtPreference* p, int attribute, const void* buf, std::size_t size) {
    if (attribute == 1) return size == 8 ? 0 : LT_INVALID;  // MAX_WORKSPACE_BYTES, a uint64
    if (attribute < 5 || attribute > 8 || size != 4) return LT_INVALID;  // MIN_ALIGNMENT_{A,B,C,D}_BYTES, uint32
    p->alignment[attribute - 5] = *(const unsigned*)buf;
    return 0;
}
int cublasLtMatmulPreferenceDestroy(LtPreference* p) { delete p; return 0; }
// op(A) [m, k] · op(B) [k, n] into D [m, n]: the dimensions, or false where the layouts disagree.
static bool lt_dims(const LtDesc* d, const LtLayout* a, const LtLayout* b, const LtLayout* c, const LtLayout* o,
                    long long* m, long long* n, long long* k) {
    *m = (long long)o->rows, *n = (long long)o->cols;
    *k = d->transa ? (long long)a->rows : (long long)a->cols;
    const long long am = d->transa ? a->cols : a->rows, bk = d->transb ? b->cols : b->rows,
                    bn = d->transb ? b->rows : b->cols;
    return c == o && am == *m && bk == *k && bn == *n;
}
static bool lt_supported(const LtDesc* d, const LtLayout* a, const LtLayout* b, const LtLayout* o) {
    const bool operands = a->type == b->type && (a->type == 0 || a->type == 14) && (o->type == 0 || o->type == 14);
    const bool epilogue = d->epilogue == LT_DEFAULT ||
                          ((d->epilogue == LT_BIAS || d->epilogue == LT_BGRADB) && d->vector && d->vector_type == 0);
    return operands && epilogue && !std::getenv("MFTCODER_EMULATED_LT_REFUSES");
}
// The "algorithm" records the alignments it was chosen for: a product whose pointers are less aligned than that
// is refused, as a real kernel built for wider loads would be.
struct LtAlgo { unsigned alignment[4]; unsigned long long unused[6]; };
struct LtHeuristic { LtAlgo algo; std::size_t workspace; int state; float waves; int reserved[4]; };
int cublasLtMatmulAlgoGetHeuristic(void*, LtDesc* d, LtLayout* a, LtLayout* b, LtLayout* c, LtLayout* o,
                                   LtPreference* p, int requested, LtHeuristic* results, int* count) {
    long long m, n, k;
    *count = 0;
    if (requested < 1 || !lt_dims(d, a, b, c, o, &m, &n, &k)) return LT_INVALID;
    if (!lt_supported(d, a, b, o)) return LT_NOT_SUPPORTED;  // as cuBLASLt answers when it has no kernel
    std::memset(results, 0, sizeof(LtHeuristic));
    std::memcpy(results->algo.alignment, p->alignment, sizeof p->alignment);
    *count = 1;
    return 0;
}
static bool aligned(const void* ptr, unsigned bytes) { return reinterpret_cast<unsigned long long>(ptr) % bytes == 0; }
int cublasLtMatmul(void*, LtDesc* d, const void* alpha, const void* a, LtLayout* la, const void* b, LtLayout* lb,
                   const void* beta, const void* c, LtLayout* lc, void* out, LtLayout* lo, const LtAlgo* algo, void*,
                   std::size_t, void*) {
    long long m, n, k;
    if (c != out || !lt_dims(d, la, lb, lc, lo, &m, &n, &k)) return LT_INVALID;
    if (!lt_supported(d, la, lb, lo)) return LT_NOT_SUPPORTED;
    const unsigned* promised = algo->alignment;
    if (!aligned(a, promised[0]) || !aligned(b, promised[1]) || !aligned(c, promised[2]) || !aligned(out, promised[3]))
        return LT_NOT_SUPPORTED;
    const float* bias = d->epilogue == LT_BIAS ? static_cast<const float*>(d->vector) : nullptr;
    gemm(d->transa, d->transb, m, n, k, *(const float*)alpha, a, la->type, la->ld, b, lb->type, lb->ld,
         *(const float*)beta, out, lo->type, lo->ld, bias);
    if (d->epilogue == LT_BGRADB) {  // op(B)'s sum over the inner dimension, one entry per column of D
        float* sums = static_cast<float*>(const_cast<void*>(d->vector));
        for (long long j = 0; j < n; ++j) {
            double s = 0.0;
            for (long long l = 0; l < k; ++l) s += element(b, lb->type, d->transb ? j + l * lb->ld : l + j * lb->ld);
            sums[j] = (float)s;
        }
    }
    return 0;
}
}
