// Just enough of CUDA, on the CPU, to run this project's kernels unchanged and compare them with the CPU
// reference path on a machine without a GPU (tests/kernels_on_cpu.rs, and the emulated device of
// fake_cuda.cpp). Not a simulator of timing or memory. Blocks run one after another; a block's threads are
// fibers on one OS thread (started with makecontext, switched with _setjmp/_longjmp, which unlike swapcontext
// make no system call), switched only at barriers, so
//   __syncthreads        parks a thread until every live thread of the block has arrived;
//   __shfl_*_sync        writes the lane's value to a per-warp slot, waits for the warp, reads its partner's
//                        slot, waits again;
//   __shared__           is a function-level static: one copy, shared by the block's threads (blocks do not
//                        overlap), exactly the visibility of shared memory.
// A thread that has returned counts as arrived, as on the GPU. A barrier nobody can pass aborts the process.
#pragma once
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

enum class FiberState { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    ucontext_t context;  // for the first entry only
    jmp_buf resume;      // where a parked fiber continues
    bool started;
    uint3 index;
    FiberState state;
};

struct BlockRun {
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    jmp_buf scheduler;
    unsigned current = 0;
    std::vector<float> slots;  // one per thread, for shuffles
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    bool direct = false;  // threads called one after another, no fibers (a kernel known never to park)
    bool parked = false;  // some thread of this launch waited at a barrier
};
inline BlockRun* run = nullptr;
inline uint3 blockIdx, blockDim, gridDim;
#define threadIdx (run->fibers[run->current].index)

inline void park(FiberState why) {
    if (run->direct) {
        std::fprintf(stderr, "cuda_on_cpu: a kernel that never synchronised before now waits at a barrier\n");
        std::abort();
    }
    run->parked = true;
    Fiber& me = run->fibers[run->current];
    me.state = why;
    if (!_setjmp(me.resume)) _longjmp(run->scheduler, 1);
}

// ANCHOR: shuffle
inline void __syncthreads() { park(FiberState::AtBlockBarrier); }

inline float exchange(float v, unsigned source_lane) {
    const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
    float* slots = &run->slots[warp * 32];
    slots[lane] = v;
    park(FiberState::AtWarpBarrier);
    const float other = slots[source_lane & 31u];
    park(FiberState::AtWarpBarrier);  // nobody overwrites a slot before every lane has read
    return other;
}
inline float __shfl_xor_sync(unsigned, float v, int offset) { return exchange(v, (threadIdx.x % 32) ^ (unsigned)offset); }
// Every lane gets src_lane's value (CUDA takes src_lane modulo the warp width, 32 here).
inline float __shfl_sync(unsigned, float v, int src_lane) { return exchange(v, (unsigned)src_lane); }
// The 32-bit registers of tensor-core fragments (two bf16s each) travel as their bits.
inline unsigned __shfl_sync(unsigned, unsigned v, int src_lane) {
    float f;
    std::memcpy(&f, &v, 4);
    f = exchange(f, (unsigned)src_lane);
    std::memcpy(&v, &f, 4);
    return v;
}
// ANCHOR_END: shuffle

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
// Round-to-nearest f32 multiply and add, never fused into an FMA (the result is stored as a float in between).
inline float __fmul_rn(float a, float b) { volatile float p = a * b; return p; }
inline float __fadd_rn(float a, float b) { volatile float s = a + b; return s; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::max;
using std::min;

inline void fiber_main() {
    run->body(run->body_arg);
    run->fibers[run->current].state = FiberState::Done;
    _longjmp(run->scheduler, 1);  // never returns: the scheduler's frame that started this fiber is gone
}

// Enter fiber i: its first entry through its ucontext, later ones where it parked.
inline void resume_fiber(unsigned i) {
    run->current = i;
    Fiber& f = run->fibers[i];
    if (_setjmp(run->scheduler)) return;  // back from a park or the fiber's end
    if (f.started) _longjmp(f.resume, 1);
    f.started = true;
    ucontext_t here;
    swapcontext(&here, &f.context);
}

// Run every fiber until all are done, releasing a warp's barrier when all its live threads wait at it and the
// block's when all live threads do.
inline void schedule_block() {
    const unsigned n = (unsigned)run->fibers.size();
    for (;;) {
        for (unsigned i = 0; i < n; ++i) {
            if (run->fibers[i].state != FiberState::Runnable) continue;
            resume_fiber(i);
        }
        bool released = false, all_done = true, all_at_block = true;
        for (unsigned w = 0; w * 32 < n; ++w) {
            const unsigned end = std::min(n, 32 * w + 32);
            bool waiting = false, whole_warp = true;
            for (unsigned i = 32 * w; i < end; ++i) {
                const FiberState s = run->fibers[i].state;
                waiting |= s == FiberState::AtWarpBarrier;
                whole_warp &= s == FiberState::AtWarpBarrier || s == FiberState::Done;
            }
            if (waiting && whole_warp) {
                for (unsigned i = 32 * w; i < end; ++i)
                    if (run->fibers[i].state == FiberState::AtWarpBarrier) run->fibers[i].state = FiberState::Runnable;
                released = true;
            }
        }
        if (released) continue;
        for (const Fiber& f : run->fibers) {
            all_done &= f.state == FiberState::Done;
            all_at_block &= f.state == FiberState::AtBlockBarrier || f.state == FiberState::Done;
        }
        if (all_done) return;
        if (!all_at_block) {
            std::fprintf(stderr, "cuda_on_cpu: block (%u, %u): threads wait at different barriers\n", blockIdx.x,
                         blockIdx.y);
            std::abort();
        }
        for (Fiber& f : run->fibers)
            if (f.state == FiberState::AtBlockBarrier) f.state = FiberState::Runnable;
    }
}

// One launch at a time (the grid's coordinates are process-wide, and tests call from many threads).
inline std::mutex launch_lock;

// Kernels seen to finish a whole launch without a barrier: later launches call their threads one after another
// on the launching stack, no fibers — the same order of execution, far cheaper. (Whether a kernel synchronises
// does not depend on its data here; a kernel that did would stop the process, in `park`.)
inline std::vector<const void*> barrier_free_kernels;

// Run `kernel` (a closure calling the kernel with its arguments) on a grid of (gx, gy) blocks of bx threads;
// `identity` names the kernel (its address) for the barrier-free shortcut, or is null.
template <class Kernel>
void launch(unsigned gx, unsigned gy, unsigned bx, Kernel kernel, const void* identity = nullptr) {
    std::lock_guard<std::mutex> one_at_a_time(launch_lock);
    const bool known_free = identity && std::find(barrier_free_kernels.begin(), barrier_free_kernels.end(),
                                                  identity) != barrier_free_kernels.end();
    constexpr std::size_t stack_bytes = 64 * 1024;
    BlockRun state;
    state.fibers.resize(bx);
    if (!known_free) state.stacks.resize(stack_bytes * bx);
    state.slots.assign(32 * ((bx + 31) / 32), 0.0f);
    state.body = [](void* k) { (*static_cast<Kernel*>(k))(); };
    state.body_arg = &kernel;
    state.direct = known_free;
    run = &state;
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, 0};
            if (known_free) {
                for (unsigned t = 0; t < bx; ++t) {
                    state.current = t;
                    state.fibers[t].index = {t, 0, 0};
                    kernel();
                }
                continue;
            }
            for (unsigned t = 0; t < bx; ++t) {
                Fiber& f = state.fibers[t];
                f.index = {t, 0, 0};
                f.state = FiberState::Runnable;
                f.started = false;
                getcontext(&f.context);
                f.context.uc_stack.ss_sp = &state.stacks[stack_bytes * t];
                f.context.uc_stack.ss_size = stack_bytes;
                f.context.uc_link = nullptr;
                makecontext(&f.context, fiber_main, 0);
            }
            schedule_block();
        }
    }
    if (identity && !known_free && !state.parked) barrier_free_kernels.push_back(identity);
    run = nullptr;
}
