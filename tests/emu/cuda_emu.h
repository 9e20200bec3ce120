// cuda_emu.h: runs the engine's CUDA kernels on the host, so that kernels can be checked
// against the CPU backend on a machine without a GPU (tests/kernels_emulated.rs).
//
// What it models:
// - every thread of a block is a fiber (its own stack, switched by a few instructions), run
//   one at a time on the block's OS thread until it reaches a barrier or exits;
// - `__syncthreads`, warp shuffles (which wait for every lane of the warp) and the cluster
//   barrier (`barrier.cluster.arrive/wait`) are barriers in that scheduler. A barrier that can
//   never complete (some threads of the block wait at one barrier, others at another, as
//   divergent code on a GPU would) ends the launch with an error naming both;
// - `__shared__` variables are per block (thread_local of the block's OS thread) and keep what
//   the previous block on that OS thread left, as GPU shared memory holds garbage;
// - a cluster's blocks run on their own OS threads at the same time, and `ld_cluster_*` reads
//   the same variable in another block's shared memory (distributed shared memory);
// - atomics are real atomics.
// Threads of a block run in a different order on each sweep of the scheduler (ascending,
// descending, then interleaved), so a missing barrier is likely to show as a wrong result.
//
// - a kernel that touches inaccessible memory (the test buffers end against such a page)
//   ends the process with a message naming it.
// What it does not model: warp-synchronous code without shuffles or barriers, the GPU's
// floating-point contraction (FMA) choices and its math-library ulps, reads below a buffer.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#error "cuda_emu.h switches fibers with x86-64 assembly"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __shared__ static thread_local
#define __CUDA_ARCH__ 900
#define MPM_HOST_EMU 1
#define EMU_EXPORT __attribute__((visibility("default")))

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

// ---------------------------------------------------------------- fibers
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save and
// continues on `next` (System V x86-64).
extern "C" void emu_switch(void** save, void* next);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

typedef void (*Tramp)(void**);

enum State { Runnable, WaitWarp, WaitBlock, WaitCluster, Done };
static const char* state_name(State s) {
    switch (s) {
        case Runnable: return "running";
        case WaitWarp: return "a warp shuffle";
        case WaitBlock: return "__syncthreads";
        case WaitCluster: return "the cluster barrier";
        default: return "exited";
    }
}

struct Fiber {
    void* sp = nullptr;
    emu_dim3 tid;
    unsigned linear = 0;
    State st = Done;
    uint64_t cl_arrivals = 0;   // cluster barrier arrivals so far
};

struct Cluster;

const size_t STACK = 128 * 1024, GUARD = 4096;

// One block's scheduler state, owned by one OS thread.
struct Block {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<uint64_t> warp_slots;   // one 8-byte exchange slot per thread
    std::vector<char> dyn_smem;
    void* sched_sp = nullptr;
    Tramp tramp = nullptr;
    void** params = nullptr;
    Cluster* cluster = nullptr;
    unsigned rank = 0;
    unsigned sweep = 0;
    std::string error;
    ~Block() {
        for (char* s : stacks) munmap(s, STACK + GUARD);
    }
};

// Internal linkage throughout: every kernel file is its own library, and several are loaded in
// one process (they must not share these through symbol interposition).
static thread_local Block* blk = nullptr;
static thread_local Fiber* cur = nullptr;
static thread_local emu_dim3 block_idx, block_dim, grid_dim;
// Shared-memory addresses (`smem_addr`) are offsets from this variable: thread_local data of
// one module has the same layout on every thread, so an offset names the same __shared__
// variable in every block.
static thread_local char tls_anchor;

inline void yield_to_scheduler() { emu_switch(&cur->sp, blk->sched_sp); }

[[noreturn]] inline void fiber_main() {
    blk->tramp(blk->params);
    cur->st = Done;
    void* dead;
    emu_switch(&dead, blk->sched_sp);
    __builtin_unreachable();
}

// ---------------------------------------------------------------- clusters
struct Cluster {
    std::mutex m;
    std::condition_variable cv;
    std::vector<uint64_t> announced;   // cluster-barrier generations each block has completed
    std::vector<bool> done;
    std::vector<char*> anchors;        // each block's tls_anchor
    bool abort = false;
    std::string error;
    // Generations every block still running has completed (exited blocks count as arrived).
    uint64_t completed() const {
        uint64_t g = UINT64_MAX;
        for (size_t i = 0; i < announced.size(); ++i)
            if (!done[i]) g = std::min(g, announced[i]);
        return g;
    }
};

}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// ---------------------------------------------------------------- intrinsics
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __double2float_rn(double a) { return (float)a; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline double __longlong_as_double(long long u) { double f; memcpy(&f, &u, 8); return f; }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename F>
inline F emu_atomic_add_float(F* p, F v) {
    return std::atomic_ref<F>(*p).fetch_add(v);
}
inline float atomicAdd(float* p, float v) { return emu_atomic_add_float(p, v); }
inline double atomicAdd(double* p, double v) { return emu_atomic_add_float(p, v); }

// CUDA's integer and float min / max overloads.
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a > (T)b ? (T)a : (T)b;
}

inline void __syncthreads() {
    emu::cur->st = emu::WaitBlock;
    emu::yield_to_scheduler();
}

namespace emu {
// Every lane of the warp deposits `v`, waits for the others, reads lane `src(lane)`'s value and
// waits again before the slots can be reused.
template <typename T, typename Src>
inline T warp_exchange(T v, Src src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    unsigned lane = cur->linear & 31u, w0 = cur->linear & ~31u;
    memcpy(&blk->warp_slots[cur->linear], &v, sizeof(T));
    cur->st = WaitWarp;
    yield_to_scheduler();
    T r;
    memcpy(&r, &blk->warp_slots[w0 + src(lane)], sizeof(T));
    cur->st = WaitWarp;
    yield_to_scheduler();
    return r;
}
}  // namespace emu

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    return emu::warp_exchange(v, [&](unsigned lane) {
        unsigned s = lane ^ (unsigned)lane_mask;
        return (s / (unsigned)width == lane / (unsigned)width) ? s : lane;
    });
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    return emu::warp_exchange(v, [&](unsigned lane) {
        return (lane % width) >= delta ? lane - delta : lane;
    });
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    return emu::warp_exchange(v, [&](unsigned lane) {
        return (lane % width) + delta < (unsigned)width ? lane + delta : lane;
    });
}

// ---------------------------------------------------------------- cluster primitives
// (the kernels define these with PTX when not built for this emulator)
inline unsigned smem_addr(const void* p) {
    return (unsigned)(int32_t)((const char*)p - &emu::tls_anchor);
}
inline void cluster_arrive() { emu::cur->cl_arrivals++; }
inline void cluster_wait() {
    emu::cur->st = emu::WaitCluster;
    emu::yield_to_scheduler();
}
inline float ld_cluster_f32(unsigned addr, unsigned rank) {
    float v;
    memcpy(&v, emu::blk->cluster->anchors.at(rank) + (int32_t)addr, 4);
    return v;
}
inline unsigned ld_cluster_u32(unsigned addr, unsigned rank) {
    unsigned v;
    memcpy(&v, emu::blk->cluster->anchors.at(rank) + (int32_t)addr, 4);
    return v;
}

namespace emu {
inline void* dyn_smem() { return blk->dyn_smem.data(); }

// Runs one block to completion on this OS thread. False (with `b.error` set) on a deadlock.
inline bool run_block(Block& b) {
    unsigned n = block_dim.x * block_dim.y * block_dim.z;
    b.fibers.assign(n, Fiber{});
    b.warp_slots.assign((n + 31) & ~31u, 0);
    while (b.stacks.size() < n) {
        char* s = (char*)mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s == MAP_FAILED) {
            b.error = "out of memory for fiber stacks";
            return false;
        }
        mprotect(s, GUARD, PROT_NONE);   // a stack overflow faults instead of corrupting
        b.stacks.push_back(s);
    }
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
        f.linear = i;
        f.tid.x = i % block_dim.x;
        f.tid.y = (i / block_dim.x) % block_dim.y;
        f.tid.z = i / (block_dim.x * block_dim.y);
        f.st = Runnable;
        // Initial frame for emu_switch: six callee-saved registers, then fiber_main as the
        // return address; 16-byte aligned so fiber_main starts as if called.
        void** sp = (void**)(b.stacks[i] + GUARD + STACK - 64);
        sp -= 8;   // 16-byte aligned: after 6 pops and the ret, rsp = 8 (mod 16) as after a call
        for (int k = 0; k < 8; ++k) sp[k] = nullptr;
        sp[6] = (void*)&fiber_main;
        f.sp = sp;
    }
    blk = &b;
    uint64_t announced = 0;
    for (;;) {
        // One sweep: each warp in turn runs as far as it can (its lanes released from every
        // shuffle they all reach) before the next warp starts, so warps drift apart as far as
        // the block's barriers allow; the warp and lane order changes from sweep to sweep.
        unsigned order = b.sweep++ % 3, nw = (n + 31) / 32;
        auto pick = [order](unsigned k, unsigned m) {
            return order == 0 ? k : order == 1 ? m - 1 - k : (k * 2 < m ? k * 2 : ((k * 2 - m) | 1u));
        };
        bool all_done = true;
        for (unsigned kw = 0; kw < nw; ++kw) {
            unsigned w = pick(kw, nw);
            if (w >= nw) continue;
            unsigned w0 = w * 32, lanes = std::min(n - w0, 32u);
            for (;;) {
                for (unsigned k = 0; k < lanes; ++k) {
                    unsigned l = pick(k, lanes);
                    if (l >= lanes) continue;
                    Fiber& f = b.fibers[w0 + l];
                    if (f.st != Runnable) continue;
                    cur = &f;
                    emu_switch(&b.sched_sp, f.sp);
                }
                unsigned live = 0, waiting = 0;
                for (unsigned i = w0; i < w0 + lanes; ++i) {
                    live += b.fibers[i].st != Done;
                    waiting += b.fibers[i].st == WaitWarp;
                }
                if (live == 0 || waiting != live) {
                    all_done &= live == 0;
                    break;
                }
                for (unsigned i = w0; i < w0 + lanes; ++i) b.fibers[i].st = Runnable;
            }
        }
        if (all_done) break;
        unsigned live = 0, at_block = 0, at_cluster = 0;
        uint64_t min_arrivals = UINT64_MAX;
        for (auto& f : b.fibers) {
            if (f.st == Done) continue;
            live++;
            at_block += f.st == WaitBlock;
            at_cluster += f.st == WaitCluster;
            min_arrivals = std::min(min_arrivals, f.cl_arrivals);
        }
        if (at_block == live) {
            for (auto& f : b.fibers) if (f.st == WaitBlock) f.st = Runnable;
            continue;
        }
        if (at_cluster && b.cluster) {
            Cluster& c = *b.cluster;
            std::unique_lock<std::mutex> lk(c.m);
            if (min_arrivals > announced) {
                announced = min_arrivals;
                c.announced[b.rank] = announced;
                c.cv.notify_all();
            }
            for (;;) {
                uint64_t done = c.completed();
                bool any = false;
                for (auto& f : b.fibers)
                    if (f.st == WaitCluster && f.cl_arrivals <= done) {
                        f.st = Runnable;
                        any = true;
                    }
                if (any) break;
                // Waiting threads that have not arrived themselves would wait forever.
                bool stuck = false;
                for (auto& f : b.fibers) stuck |= f.st == WaitCluster && f.cl_arrivals > announced;
                if (stuck || c.abort) break;
                c.cv.wait(lk);
            }
            if (c.abort) {
                b.error = "aborted: another block of the cluster failed";
                return false;
            }
            bool any = false;
            for (auto& f : b.fibers) any |= f.st == Runnable;
            if (any) continue;
        }
        // Nothing can move: a barrier that some live threads never reach.
        std::string s = "deadlock in block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) +
                        "): no barrier can complete;";
        unsigned shown = 0;
        for (auto& f : b.fibers) {
            if (f.st == Done || shown >= 4) continue;
            if (shown == 0 || f.st != b.fibers[0].st) {
                s += " thread " + std::to_string(f.linear) + " waits at " + state_name(f.st) + ";";
                shown++;
            }
        }
        b.error = s;
        return false;
    }
    if (b.cluster) {
        std::lock_guard<std::mutex> lk(b.cluster->m);
        b.cluster->done[b.rank] = true;
        b.cluster->cv.notify_all();
    }
    return true;
}

}  // namespace emu

namespace emu {
// A kernel that touches a test buffer's guard page (an out-of-bounds access) faults inside a
// launch: say which kernel and where, then end the process (the fault cannot be resumed).
// Outside launches the previous handler is put back and the fault repeats under it.
static std::atomic<int> in_launch{0};
static std::atomic<const char*> launch_name{nullptr};
static struct sigaction prev_segv, prev_bus;
static void on_fault(int sig, siginfo_t* si, void*) {
    if (in_launch.load() > 0) {
        char msg[512];
        int n = snprintf(msg, sizeof msg,
                         "kernel emulator: %s touched inaccessible memory at %p (past the end of a test "
                         "buffer: an out-of-bounds access, or an emulator fault)\n",
                         launch_name.load() ? launch_name.load() : "a kernel", si->si_addr);
        if (n > 0) (void)!write(2, msg, (size_t)n);
        _exit(101);
    }
    sigaction(sig, sig == SIGSEGV ? &prev_segv : &prev_bus, nullptr);
}
inline void watch_faults(const char* name) {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &prev_segv);
        sigaction(SIGBUS, &sa, &prev_bus);
    });
    launch_name.store(name);
    in_launch.fetch_add(1);
}
}  // namespace emu

// Runs tramp(params) as a kernel launch of `grid` blocks of `block` threads, in clusters of
// `cluster_x` consecutive blocks along x. Returns 0, or 1 with a message in err.
extern "C" __attribute__((visibility("default"))) int emu_launch(const char* name, emu::Tramp tramp, void** params, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, unsigned cluster_x, unsigned dyn_smem, char* err, size_t errlen) {
    emu::watch_faults(name);
    struct Unwatch {
        ~Unwatch() { emu::in_launch.fetch_sub(1); }
    } unwatch;
    if (cluster_x == 0 || gx % cluster_x != 0) {
        snprintf(err, errlen, "grid.x %u is not a multiple of the cluster size %u", gx, cluster_x);
        return 1;
    }
    unsigned nclusters = gx / cluster_x * gy * gz;
    std::string error;
    std::mutex em;
    // Rank r of every cluster runs on worker r, one cluster after another.
    for (unsigned c = 0; c < nclusters && error.empty(); ++c) {
        emu::Cluster cl;
        cl.announced.assign(cluster_x, 0);
        cl.done.assign(cluster_x, false);
        cl.anchors.assign(cluster_x, nullptr);
        std::mutex ready_m;
        std::condition_variable ready_cv;
        unsigned ready = 0;
        auto worker = [&](unsigned r) {
            static thread_local emu::Block b;   // fiber stacks are reused across launches
            b.error.clear();
            b.tramp = tramp;
            b.params = params;
            b.cluster = cluster_x > 1 ? &cl : nullptr;
            b.rank = r;
            b.dyn_smem.assign(dyn_smem, 0);
            unsigned cx = c % (gx / cluster_x), cy = (c / (gx / cluster_x)) % gy, cz = c / (gx / cluster_x * gy);
            emu::block_idx.x = cx * cluster_x + r;
            emu::block_idx.y = cy;
            emu::block_idx.z = cz;
            emu::block_dim.x = bx;
            emu::block_dim.y = by;
            emu::block_dim.z = bz;
            emu::grid_dim.x = gx;
            emu::grid_dim.y = gy;
            emu::grid_dim.z = gz;
            {
                // Every block's anchor is known before any block reads another's memory.
                std::unique_lock<std::mutex> lk(ready_m);
                cl.anchors[r] = &emu::tls_anchor;
                ready++;
                ready_cv.notify_all();
                ready_cv.wait(lk, [&] { return ready == cluster_x; });
            }
            if (!emu::run_block(b)) {
                std::lock_guard<std::mutex> lk(em);
                if (error.empty()) error = b.error;
                std::lock_guard<std::mutex> lc(cl.m);
                cl.abort = true;
                cl.cv.notify_all();
            }
        };
        if (cluster_x == 1) {
            // One OS thread for all blocks: shared memory carries over, as on a GPU.
            worker(0);
        } else {
            std::vector<std::thread> ts;
            for (unsigned r = 0; r < cluster_x; ++r) ts.emplace_back(worker, r);
            for (auto& t : ts) t.join();
        }
    }
    if (!error.empty()) {
        snprintf(err, errlen, "%s", error.c_str());
        return 1;
    }
    return 0;
}
