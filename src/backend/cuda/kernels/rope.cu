// Rotary position embedding in Llama's half-split layout. CPU mirror: `nn::rope`.
// Each (token, head, i < d/2) pair (x₁, x₂) = (x[i], x[i + d/2]) turns by θ = p·ωᵢ:
//   y₁ = x₁·cos θ − x₂·sin θ,  y₂ = x₂·cos θ + x₁·sin θ.
// The backward turns the gradient back by −θ (a rotation's inverse is its transpose): direction = −1.
extern "C" __global__ void rope(float* y, const float* x, const unsigned int* positions, const float* inv_freq,
                                int tokens, int heads, int head_dim, float direction) {
    const int half = head_dim / 2;
    FOR_EACH(i, (long long)tokens * heads * half) {
        const int k = (int)(i % half);
        const long long th = i / half;  // token·heads + head
        const long long t = th / heads;
        const float angle = (float)positions[t] * inv_freq[k];
        float s, c;
        sincosf(angle, &s, &c);
        s *= direction;
        const long long base = th * head_dim;
        const float x1 = x[base + k], x2 = x[base + half + k];
        y[base + k] = x1 * c - x2 * s;
        y[base + half + k] = x2 * c + x1 * s;
    }
}
