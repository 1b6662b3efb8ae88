// 4-bit (NF4/FP4) dequantization in bitsandbytes' layout. CPU mirror: `quant::Quantized4bit::dequantize_into`.
// Blocks of `blocksize` values, flattened row-major across rows; two codes a byte, element 2k in the high
// nibble; ŵ = CODE[nibble]·absmax[block].

// Double quantization: absmax[b] = map[codes[b]]·nested_absmax[b / 256] + offset.
extern "C" __global__ void decode_double_quant(float* absmax, const unsigned char* codes, const float* nested_absmax,
                                               const float* nested_map, float offset, int blocks) {
    FOR_EACH(b, blocks) absmax[b] = nested_map[codes[b]] * nested_absmax[b / 256] + offset;
}

extern "C" __global__ void dequantize_4bit(float* out, const unsigned char* packed, const float* absmax,
                                           const float* code, long long n, int blocksize) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    FOR_EACH(i, n) {
        // blocks hold an even count except perhaps the last, so element i's byte is always i / 2
        const unsigned char byte = packed[i / 2];
        const int nibble = (i & 1) ? (byte & 15) : (byte >> 4);
        out[i] = table[nibble] * absmax[i / blocksize];
    }
}
