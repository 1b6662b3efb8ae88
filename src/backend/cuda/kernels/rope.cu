// Rotary position embedding in Llama's half-split layout. CPU mirror: `nn::rope`.
// The first r = 2·rotary_half ≤ d entries of each head rotate (rotary_half = len(ω); r < d is partial rotary):
// each (token, head, i < r/2) pair (x₁, x₂) = (x[i], x[i + r/2]) turns by θ = p·ωᵢ:
//   y₁ = x₁·cos θ − x₂·sin θ,  y₂ = x₂·cos θ + x₁·sin θ;
// entries r..d pass through: y = x. One thread per pair or copied entry: d − r/2 of them per head.
// The backward turns the gradient back by −θ (a rotation's inverse is its transpose): direction = −1, and the
// pass-through entries copy dy.
extern "C" __global__ void rope(float* y, const float* x, const unsigned int* positions, const float* inv_freq,
                                int tokens, int heads, int head_dim, int rotary_half, float direction) {
    const int per_head = head_dim - rotary_half;  // rotary_half pairs, then head_dim − 2·rotary_half copies
    FOR_EACH(i, (long long)tokens * heads * per_head) {
        const int k = (int)(i % per_head);
        const long long th = i / per_head;  // token·heads + head
        const long long base = th * head_dim;
        if (k >= rotary_half) {
            const long long at = base + rotary_half + k;  // entry 2·rotary_half + (k − rotary_half)
            y[at] = x[at];
            continue;
        }
        const long long t = th / heads;
        const float angle = (float)positions[t] * inv_freq[k];
        float s, c;
        sincosf(angle, &s, &c);
        s *= direction;
        const float x1 = x[base + k], x2 = x[base + rotary_half + k];
        y[base + k] = x1 * c - x2 * s;
        y[base + rotary_half + k] = x2 * c + x1 * s;
    }
}
