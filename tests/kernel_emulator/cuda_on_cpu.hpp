// Just enough of CUDA, on CPU threads, to run this project's kernels unchanged and compare them with the CPU
// reference path on a machine without a GPU (tests/kernels_on_cpu.rs). Not a simulator of timing or memory:
// blocks run one after another; a block's threads are real threads, so __syncthreads is a barrier, warp
// shuffles exchange through a per-warp slot array between two barriers, and __shared__ arrays (function
// statics) are shared by the block's threads exactly as on the GPU.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
inline thread_local uint3 threadIdx;
inline uint3 blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct BlockState {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> slots;  // one per thread, for shuffles
};
inline BlockState* current_block = nullptr;

// ANCHOR: shuffle
inline void __syncthreads() { current_block->block->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
    float* slots = &current_block->slots[warp * 32];
    std::barrier<>& sync = *current_block->warps[warp];
    slots[lane] = v;
    sync.arrive_and_wait();
    const float other = slots[lane ^ (unsigned)offset];
    sync.arrive_and_wait();  // nobody overwrites a slot before every lane has read
    return other;
}
// ANCHOR_END: shuffle

// Every lane gets src_lane's value (CUDA takes src_lane modulo the warp width, 32 here).
inline float __shfl_sync(unsigned, float v, int src_lane) {
    const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
    float* slots = &current_block->slots[warp * 32];
    std::barrier<>& sync = *current_block->warps[warp];
    slots[lane] = v;
    sync.arrive_and_wait();
    const float other = slots[(unsigned)src_lane & 31u];
    sync.arrive_and_wait();
    return other;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::max;
using std::min;

// Run `kernel` (a closure calling the kernel with its arguments) on a grid of (gx, gy) blocks of bx threads.
// One launch at a time (the grid's coordinates are process-wide, as the test harness calls from many threads).
inline std::mutex launch_lock;

template <class Kernel>
void launch(unsigned gx, unsigned gy, unsigned bx, Kernel kernel) {
    std::lock_guard<std::mutex> one_at_a_time(launch_lock);
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    const unsigned warps = (bx + 31) / 32;
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, 0};
            BlockState state;
            state.block = std::make_unique<std::barrier<>>(bx);
            for (unsigned w = 0; w < warps; ++w)
                state.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, bx - 32 * w)));
            state.slots.assign(32 * warps, 0.0f);
            current_block = &state;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t)
                threads.emplace_back([t, &kernel] {
                    threadIdx = {t, 0, 0};
                    kernel();
                });
            for (auto& th : threads) th.join();
            current_block = nullptr;
        }
    }
}
