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
