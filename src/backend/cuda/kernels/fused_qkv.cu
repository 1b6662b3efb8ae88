// A fused q/k/v projection's output columns, split into q, k and v and joined back. CPU mirror:
// `nn::fused_qkv::{split, join}`. A row of qkv [T, g·(qw + 2·kw)] is g chunks [q part | k part | v part], qw and
// kw wide (qw = H/g·d, kw = KV/g·d); chunk c's parts are columns c·qw.. of q and c·kw.. of k and v:
//   qkv[t, c·(qw + 2·kw) + j] = q[t, c·qw + j]               (j < qw)
//                             = k[t, c·kw + j − qw]          (qw ≤ j < qw + kw)
//                             = v[t, c·kw + j − qw − kw]     (qw + kw ≤ j)
// A permutation of columns: one thread per element of qkv, split reading it and join (the backward) writing it.

// Where element i of qkv lives: part 0, 1, 2 (q, k, v) and the flat index in that part.
struct QkvAt {
    int part;
    long long at;
};

__device__ __forceinline__ QkvAt qkv_at(long long i, int groups, int q_width, int kv_width) {
    const int chunk = q_width + 2 * kv_width;
    const long long t = i / ((long long)groups * chunk);
    const int column = (int)(i % ((long long)groups * chunk)), c = column / chunk, j = column % chunk;
    if (j < q_width) return {0, (t * groups + c) * q_width + j};
    if (j < q_width + kv_width) return {1, (t * groups + c) * kv_width + j - q_width};
    return {2, (t * groups + c) * kv_width + j - q_width - kv_width};
}

extern "C" __global__ void split_qkv(float* q, float* k, float* v, const float* qkv, int tokens, int groups,
                                     int q_width, int kv_width) {
    FOR_EACH(i, (long long)tokens * groups * (q_width + 2 * kv_width)) {
        const QkvAt a = qkv_at(i, groups, q_width, kv_width);
        (a.part == 0 ? q : a.part == 1 ? k : v)[a.at] = qkv[i];
    }
}

extern "C" __global__ void join_qkv(float* qkv, const float* q, const float* k, const float* v, int tokens,
                                    int groups, int q_width, int kv_width) {
    FOR_EACH(i, (long long)tokens * groups * (q_width + 2 * kv_width)) {
        const QkvAt a = qkv_at(i, groups, q_width, kv_width);
        qkv[i] = (a.part == 0 ? q : a.part == 1 ? k : v)[a.at];
    }
}
