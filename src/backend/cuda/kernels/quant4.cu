// 4-bit (NF4/FP4) dequantization in bitsandbytes' layout. CPU mirror: `quant::Quantized4bit::dequantize_into`
// and `dequantize_range_into`. Blocks of `blocksize` values, flattened row-major across rows; two codes a byte,
// element 2k in the high nibble; ŵ = CODE[nibble]·absmax[block].
//
// Each kernel writes the n flat elements start .. start + n (a band of whole rows of W [out, in], or all of it)
// into out[0 .. n], as f32 or as bf16 bits (round to nearest even, the `half` crate's rounding). The block scale
// is either a plain f32 absmax or, with double quantization, decoded where it is read:
//
//     absmax[b] = nested_map[codes[b]] · nested_absmax[b / 256] + offset
//
// with the f32 multiply and the f32 add rounded separately (__fmul_rn, __fadd_rn: no FMA contraction), which is
// exactly what the CPU computes, so every dequantized weight is bit-identical to the CPU's.

// ANCHOR: dq_scale
// The f32 absmax of block b from its 8-bit code (QLoRA's double quantization).
__device__ __forceinline__ float double_quant_scale(const unsigned char* codes, const float* nested_absmax,
                                                    const float* nested_map, float offset, long long b) {
    return __fadd_rn(__fmul_rn(nested_map[codes[b]], nested_absmax[b / 256]), offset);
}
// ANCHOR_END: dq_scale

// CODE[nibble of flat element j]; blocks hold an even count except perhaps the last, so j's byte is j / 2.
__device__ __forceinline__ float code_value(const float* table, const unsigned char* packed, long long j) {
    const unsigned char byte = packed[j / 2];
    return table[(j & 1) ? (byte & 15) : (byte >> 4)];
}

// The 16 code values, staged in shared memory by the block's first threads.
#define LOAD_CODE_TABLE(table, code)                            \
    __shared__ float table[16];                                 \
    if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x]; \
    __syncthreads()

// ANCHOR: dequantize_kernels
// out[i] = ŵ[start + i] with a plain f32 absmax per block.
extern "C" __global__ void dequantize_4bit(float* out, const unsigned char* packed, const float* absmax,
                                           const float* code, long long start, long long n, int blocksize) {
    LOAD_CODE_TABLE(table, code);
    FOR_EACH(i, n) {
        const long long j = start + i;
        out[i] = code_value(table, packed, j) * absmax[j / blocksize];
    }
}

// The same with a double-quantized absmax.
extern "C" __global__ void dequantize_4bit_dq(float* out, const unsigned char* packed, const unsigned char* codes,
                                              const float* nested_absmax, const float* nested_map, float offset,
                                              const float* code, long long start, long long n, int blocksize) {
    LOAD_CODE_TABLE(table, code);
    FOR_EACH(i, n) {
        const long long j = start + i;
        const float scale = double_quant_scale(codes, nested_absmax, nested_map, offset, j / blocksize);
        out[i] = code_value(table, packed, j) * scale;
    }
}
// ANCHOR_END: dequantize_kernels

// bf16 outputs (Precision::Bf16: the products read bf16 operands): the f32 ŵ above, rounded once.
extern "C" __global__ void dequantize_4bit_bf16(unsigned short* out, const unsigned char* packed,
                                                const float* absmax, const float* code, long long start, long long n,
                                                int blocksize) {
    LOAD_CODE_TABLE(table, code);
    FOR_EACH(i, n) {
        const long long j = start + i;
        out[i] = f32_to_bf16_bits(code_value(table, packed, j) * absmax[j / blocksize]);
    }
}

extern "C" __global__ void dequantize_4bit_dq_bf16(unsigned short* out, const unsigned char* packed,
                                                   const unsigned char* codes, const float* nested_absmax,
                                                   const float* nested_map, float offset, const float* code,
                                                   long long start, long long n, int blocksize) {
    LOAD_CODE_TABLE(table, code);
    FOR_EACH(i, n) {
        const long long j = start + i;
        const float scale = double_quant_scale(codes, nested_absmax, nested_map, offset, j / blocksize);
        out[i] = f32_to_bf16_bits(code_value(table, packed, j) * scale);
    }
}
