// One tensor-core instruction, m16n8k16 with bf16 operands and f32 accumulators, and the bf16 pairs its
// fragments are made of. Prepended (after common.cuh) to the kernel files that use it.
//
// ANCHOR: fragment_layout
// A warp computes D[16×8] += A[16×16] · B[16×8] together; each lane holds a fixed piece of each matrix, two bf16
// per 32-bit register (the lower column or row index in the low 16 bits). With g = lane / 4 (the lane's
// "group", 0..7) and t = lane % 4 (its place in the group, 0..3):
//
//   A, row-major 16×16, a[4]:   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                               a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B, 16×8 stored by column,   b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   ("col": B[k][n] at n·16 + k)
//   C and D, 16×8 f32, c[4]:    c[0], c[1] = C[g][2t, 2t+1]     c[2], c[3] = C[g+8][2t, 2t+1]
//
// The same layout for D as for A (row g and g+8, column pairs 2t, 2t+1) is what lets a product's result feed
// the next product as its A operand without leaving the registers: two adjacent 16×8 results, rounded to bf16,
// are one 16×16 A fragment (see flash_attention.cu's `probabilities_as_a`).
// ANCHOR_END: fragment_layout

// Two floats as one register of two bf16s (round to nearest even): `lo` the lower index.
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    return (unsigned)f32_to_bf16_bits(lo) | ((unsigned)f32_to_bf16_bits(hi) << 16);
}

// ANCHOR: mma
// acc[16×8] += A[16×16] · B[16×8], the warp's fragments as laid out above. All 32 lanes must call it together.
__device__ __forceinline__ void mma_bf16_16x8x16(float acc[4], const unsigned a[4], const unsigned b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // The same product from the same fragments, lane by lane: the definition the emulator runs (and older GPUs).
    // Lane (g, t) owns D[g][2t, 2t+1] and D[g+8][2t, 2t+1]: it needs rows g and g+8 of A, held by the four lanes
    // 4g .. 4g+3, and columns 2t and 2t+1 of B, held by lanes 4·2t .. 4·2t+3 and 4·(2t+1) .. 4·(2t+1)+3. Lane
    // 4g + s holds A's columns 2s, 2s+1, 2s+8, 2s+9 and B's rows the same, so 32 shuffles fetch them all.
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float a_rows[2][16], b_cols[2][16];  // [row g, g+8][k], [column 2t, 2t+1][k]
    for (int s = 0; s < 4; ++s) {
        unsigned ar[4], b0[2], b1[2];
        for (int r = 0; r < 4; ++r) ar[r] = __shfl_sync(0xffffffffu, a[r], 4 * g + s);
        for (int r = 0; r < 2; ++r) {
            b0[r] = __shfl_sync(0xffffffffu, b[r], 4 * (2 * t) + s);
            b1[r] = __shfl_sync(0xffffffffu, b[r], 4 * (2 * t + 1) + s);
        }
        for (int half = 0; half < 2; ++half) {  // columns 2s, 2s+1 (half 0) and 2s+8, 2s+9 (half 1)
            for (int bit = 0; bit < 2; ++bit) {
                const int k = 2 * s + 8 * half + bit, shift = 16 * bit;
                a_rows[0][k] = bf16_bits_to_f32((unsigned short)(ar[2 * half] >> shift));
                a_rows[1][k] = bf16_bits_to_f32((unsigned short)(ar[2 * half + 1] >> shift));
                b_cols[0][k] = bf16_bits_to_f32((unsigned short)(b0[half] >> shift));
                b_cols[1][k] = bf16_bits_to_f32((unsigned short)(b1[half] >> shift));
            }
        }
    }
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) {
            float s = acc[2 * r + c];
            for (int k = 0; k < 16; ++k) s = fmaf(a_rows[r][k], b_cols[c][k], s);  // bf16·bf16 is exact in f32
            acc[2 * r + c] = s;
        }
#endif
}
// ANCHOR_END: mma
