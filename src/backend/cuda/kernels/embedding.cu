// Token embedding and its backward. CPU mirror: `nn::embedding`.

// out[t, :] = table[ids[t], :]
extern "C" __global__ void embedding(float* out, const float* table, const unsigned int* ids, int tokens, int hidden) {
    FOR_EACH(i, (long long)tokens * hidden) {
        const long long t = i / hidden, c = i % hidden;
        out[i] = table[(long long)ids[t] * hidden + c];
    }
}

// dtable[ids[t], :] += dy[t, :]  (dtable zeroed by the caller). A repeated id adds through atomics, so the
// order of those additions — and the last bits of that row — may vary between runs.
extern "C" __global__ void embedding_backward(float* dtable, const float* dy, const unsigned int* ids, int tokens,
                                              int hidden) {
    FOR_EACH(i, (long long)tokens * hidden) {
        const long long t = i / hidden, c = i % hidden;
        atomicAdd(&dtable[(long long)ids[t] * hidden + c], dy[i]);
    }
}

// The same lookup from a table stored as bf16 (a frozen embedding under mixed precision): out is f32.
extern "C" __global__ void embedding_bf16(float* out, const unsigned short* table, const unsigned int* ids, int tokens,
                                          int hidden) {
    FOR_EACH(i, (long long)tokens * hidden) {
        const long long t = i / hidden, c = i % hidden;
        out[i] = bf16_bits_to_f32(table[(long long)ids[t] * hidden + c]);
    }
}
