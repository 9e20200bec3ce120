// pgd_step.cu: one projected attack step, out of place: out = step(x) for the adversarial batch
// x (N, D), D = H*W*C, given the clean batch x0, the input gradient g and per-sample eps[n],
// step[n]:
//   Linf: out <- clip01(clip(x + step * sign(g), x0 - eps, x0 + eps))
//   L2  : delta = x + step * g / (||g|| + 1e-12) - x0;
//         out <- clip01(x0 + delta * min(eps, ||delta||) / (||delta|| + 1e-12))   (AutoAttack APGD-L2)
//   L1  : APGD-L1 sparse step: tau = the (1-k)-quantile of |g| per sample (k = topk[n], the
//         per-sample fraction of coordinates moved),
//         u = sign(g) * [|g| >= tau]; v = x + step * u / (||u||_1 + 1e-10) - x0; then the exact
//         projection of v onto {||delta||_1 <= eps} cut with the box [0,1]:
//         delta_i = sign(v_i) * min(max(|v_i| - lambda, 0), b_i), b_i the room to the box in
//         v_i's direction, lambda >= 0 the root of s(lambda) = sum_i delta_i = eps (0 if the
//         clipped v is inside the ball); out <- clip01(x0 + delta).
// All three end inside the eps-ball and inside [0,1]. The least traffic any of them can have is
// x, x0, g read and out written once: 16 bytes per element, the count mpm-bench reports GB/s on.
//
// Kernels, by shape (the launcher `cuda::ops::pgd_step` picks):
//   pgd_linf_f32, pgd_linf4_f32   per element (float4 when D % 4 == 0): 16 bytes per element.
//   pgd_l2_f32, pgd_l1_f32        one 1024-thread block per sample, any D: small images (the
//                                 batch fills the GPU) and the fallback.
//   pgd_l2_cl_f32, pgd_l1_cl_f32  sm_90: one thread-block cluster of PGD_CL blocks per sample
//                                 (224x224 images): each block keeps its slice of the sample in
//                                 registers, and the per-sample sums meet in distributed shared
//                                 memory, so every input is read from DRAM once and the
//                                 reductions (l1: the top-k select and the lambda search) run
//                                 on registers. One block per sample cannot do this: a 224x224
//                                 sample is 0.6 MB per tensor, and 128 of them in flight (one
//                                 per SM) overflow the 50 MB L2, so every extra pass went to
//                                 DRAM (31% / 3.5% of copy bandwidth measured on an H200).
#include "common.cuh"

// ------------------------------------------------------------------------------------ Linf

// Thread mapping: grid-stride over N*D, one element per thread. Traffic: x, x0, g read (12
// bytes) and out written (4) per element.
extern "C" __global__ void pgd_linf_f32(float* out, const float* x, const float* x0, const float* g,
                                        const float* eps, const float* step, u32 d, u64 total) {
    GRID_STRIDE(i, total) {
        u32 n = (u32)(i / d);
        float gi = g[i];
        float sg = gi > 0.0f ? 1.0f : (gi < 0.0f ? -1.0f : 0.0f);
        float c = x0[i], e = eps[n];
        float v = x[i] + step[n] * sg;
        v = fminf(fmaxf(v, c - e), c + e);
        out[i] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

__device__ __forceinline__ float linf_one(float xv, float c, float gv, float e, float st) {
    float sg = gv > 0.0f ? 1.0f : (gv < 0.0f ? -1.0f : 0.0f);
    float v = xv + st * sg;
    v = fminf(fmaxf(v, c - e), c + e);
    return fminf(fmaxf(v, 0.0f), 1.0f);
}

// The same with 16-byte accesses, for D % 4 == 0 (the four lanes of a float4 share a sample):
// grid-stride over N*D/4 vectors. Same arithmetic and traffic as pgd_linf_f32, in a quarter of
// the memory instructions.
extern "C" __global__ void pgd_linf4_f32(float4* out, const float4* x, const float4* x0,
                                         const float4* g, const float* eps, const float* step,
                                         u32 d4, u64 total4) {
    GRID_STRIDE(i, total4) {
        u32 n = (u32)(i / d4);
        float e = eps[n], st = step[n];
        float4 xv = x[i], c = x0[i], gv = g[i], o;
        o.x = linf_one(xv.x, c.x, gv.x, e, st);
        o.y = linf_one(xv.y, c.y, gv.y, e, st);
        o.z = linf_one(xv.z, c.z, gv.z, e, st);
        o.w = linf_one(xv.w, c.w, gv.w, e, st);
        out[i] = o;
    }
}

// -------------------------------------------------------------- one block per sample (any D)

// L2. Thread mapping: one block (1024 threads) per sample; each thread owns the same indices in
// every pass. Pass 1 reads g (||g||), pass 2 reads x, x0, g (||delta||), pass 3 reads them again
// and writes out. DRAM traffic: 16 bytes per element while the sample stays in L2 (small
// images), up to 32 when it does not.
extern "C" __global__ void __launch_bounds__(1024) pgd_l2_f32(float* out, const float* x, const float* x0,
                                                              const float* g, const float* eps,
                                                              const float* step, u32 d) {
    __shared__ float scratch[32];
    u64 b = (u64)blockIdx.x * d;
    float gg = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) { float v = g[b + j]; gg += v * v; }
    float gn = sqrtf(block_sum(gg, scratch)) + 1e-12f;
    float st = step[blockIdx.x], e = eps[blockIdx.x];
    float dd = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float delta = x[b + j] + st * g[b + j] / gn - x0[b + j];
        dd += delta * delta;
    }
    float dn = sqrtf(block_sum(dd, scratch));
    float f = fminf(e, dn) / (dn + 1e-12f);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float delta = x[b + j] + st * g[b + j] / gn - x0[b + j];
        out[b + j] = fminf(fmaxf(x0[b + j] + delta * f, 0.0f), 1.0f);
    }
}

// L1 helpers shared by both L1 kernels.
__device__ __forceinline__ float sparse_sign(float gv, float tau) {
    return fabsf(gv) >= tau ? (gv > 0.0f ? 1.0f : (gv < 0.0f ? -1.0f : 0.0f)) : 0.0f;
}
// Room to the box from c in v's direction.
__device__ __forceinline__ float box_room(float v, float c) { return v > 0.0f ? 1.0f - c : c; }
// |delta_i| for the shrink lambda.
__device__ __forceinline__ float shrunk(float v, float c, float lambda) {
    return fminf(fmaxf(fabsf(v) - lambda, 0.0f), box_room(v, c));
}
__device__ __forceinline__ float l1_out(float v, float c, float lambda) {
    float a = shrunk(v, c, lambda);
    return fminf(fmaxf(c + (v > 0.0f ? a : -a), 0.0f), 1.0f);
}
// Rank (ascending) of tau among the d values |g|: clamp(floor((1 - topk) d), 0, d - 1), as
// AutoAttack's APGD-L1.
__device__ __forceinline__ u32 topk_rank(float topk, u32 d) {
    int r = (int)((1.0f - topk) * (float)d);
    return (u32)min(max(r, 0), (int)d - 1);
}
// Stop when s(hi) is within this fraction of eps below it (hi is always inside the ball).
#define PGD_L1_TOL 1e-5f
#define PGD_L1_ROUNDS 64

// L1. Thread mapping: one block (1024 threads) per sample.
// (a) tau by radix select on the bit patterns of |g| (non-negative floats order like their
//     bits): 4 passes of 8 bits, each a 256-bin shared-memory histogram over the sample;
// (b) the step, writing v = delta into out;
// (c) the bracketed search for lambda (each round a block sum over the sample from L2), then
//     the final write. DRAM traffic ~16 bytes per element when the sample stays in L2 (small
//     images). Preconditions: 0 < topk[n] <= 1.
extern "C" __global__ void __launch_bounds__(1024) pgd_l1_f32(float* out, const float* x, const float* x0,
                                                              const float* g, const float* eps,
                                                              const float* step, const float* topk,
                                                              u32 d) {
    __shared__ u32 hist[256];
    __shared__ float scratch[32];
    __shared__ u32 sel[2];
    u64 b = (u64)blockIdx.x * d;
    u32 rank = topk_rank(topk[blockIdx.x], d);
    u32 prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 j = threadIdx.x; j < 256; j += blockDim.x) hist[j] = 0;
        __syncthreads();
        for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
            u32 bits = __float_as_uint(fabsf(g[b + j]));
            if ((bits & mask) == prefix) atomicAdd(&hist[(bits >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 acc = 0, bin = 0;
            for (; bin < 256; ++bin) { if (acc + hist[bin] > rank) break; acc += hist[bin]; }
            sel[0] = bin; sel[1] = rank - acc;
        }
        __syncthreads();
        prefix |= sel[0] << shift; mask |= 255u << shift; rank = sel[1];
        __syncthreads();
    }
    float tau = __uint_as_float(prefix);
    float cnt = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) { float gv = g[b + j]; cnt += (fabsf(gv) >= tau && gv != 0.0f) ? 1.0f : 0.0f; }
    cnt = block_sum(cnt, scratch);
    float st = step[blockIdx.x] / (cnt + 1e-10f), e = eps[blockIdx.x];
    float l1c = 0.0f, vmax = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float c = x0[b + j];
        float v = x[b + j] + st * sparse_sign(g[b + j], tau) - c;
        out[b + j] = v;
        l1c += fminf(fabsf(v), box_room(v, c));
        vmax = fmaxf(vmax, fabsf(v));
    }
    l1c = block_sum(l1c, scratch);
    vmax = block_max(vmax, scratch);
    float lambda = 0.0f;
    if (l1c > e) {
        Bracket<float> br = {0.0f, vmax, l1c - e, -e, 0};
        for (int it = 0; it < PGD_L1_ROUNDS; ++it) {
            float m = br.next();
            if (!(m > br.lo && m < br.hi)) break;   // the bracket is one ulp wide
            float s = 0.0f;
            for (u32 j = threadIdx.x; j < d; j += blockDim.x) s += shrunk(out[b + j], x0[b + j], m);
            s = block_sum(s, scratch);
            br.update(m, s - e);
            if (s <= e && s >= e * (1.0f - PGD_L1_TOL)) break;
        }
        lambda = br.hi;   // the end that is inside the ball
    }
    __syncthreads();
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) out[b + j] = l1_out(out[b + j], x0[b + j], lambda);
}

// ------------------------------------------------------ one cluster per sample (sm_90, 224 px)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

#define PGD_CL 8            // blocks per cluster (the portable maximum)
#define PGD_CL_THREADS 1024
#define PGD_L2_V 8          // float4 per thread: D <= 8 * 1024 * 8 * 4 = 262,144
#define PGD_L1_V 5          // float4 per thread: D <= 8 * 1024 * 5 * 4 = 163,840 (224x224x3 = 150,528)

// The cluster primitives, in PTX. The host emulator (tests/emu/cuda_emu.h) supplies its own.
#ifndef MPM_HOST_EMU
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}
// Barrier over every thread of the cluster, with release/acquire ordering of shared memory
// (a superset of __syncthreads). Split in two where work can overlap the wait.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
// A shared-memory word of block `rank` of the cluster (same offset as `addr` in this block).
__device__ __forceinline__ float ld_cluster_f32(u32 addr, u32 rank) {
    u32 ra; float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(addr), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
    return v;
}
__device__ __forceinline__ u32 ld_cluster_u32(u32 addr, u32 rank) {
    u32 ra, v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(addr), "r"(rank));
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(ra) : "memory");
    return v;
}
#endif
__device__ __forceinline__ void cluster_sync() { cluster_arrive(); cluster_wait(); }

// Cluster-wide reductions: every thread passes its partial; every thread of every block gets
// the total, summed in rank order, so all blocks hold the same bits and take the same branches.
// `slot` is a __shared__ float that no block has read since the last cluster barrier: callers
// alternate two slots (a slot is rewritten two reductions later, after a barrier that every
// block passes only once it has read the slot).
__device__ __forceinline__ float cluster_sum(float v, float* scratch, float* slot) {
    float b = block_sum(v, scratch);
    if (threadIdx.x == 0) *slot = b;
    cluster_sync();
    u32 a = smem_addr(slot);
    float s = 0.0f;
#pragma unroll
    for (u32 r = 0; r < PGD_CL; ++r) s += ld_cluster_f32(a, r);
    return s;
}
__device__ __forceinline__ float cluster_max(float v, float* scratch, float* slot) {
    float b = block_max(v, scratch);
    if (threadIdx.x == 0) *slot = b;
    cluster_sync();
    u32 a = smem_addr(slot);
    float s = -MPM_FLT_MAX;
#pragma unroll
    for (u32 r = 0; r < PGD_CL; ++r) s = fmaxf(s, ld_cluster_f32(a, r));
    return s;
}

// Block `rank` of sample n's cluster owns the float4 vectors [lo, hi) of the sample; thread t
// holds vectors lo + t + k * PGD_CL_THREADS, k < V, in registers.
#define CL_SLICE(nv)                                                                      \
    const u32 n = blockIdx.x / PGD_CL, rank = blockIdx.x % PGD_CL;                        \
    const u32 lo = (u32)((u64)(nv) * rank / PGD_CL);                                      \
    const u32 hi = (u32)((u64)(nv) * (rank + 1) / PGD_CL);                                \
    const u64 base = (u64)n * (nv)
#define CL_FOR(k, j, V) _Pragma("unroll") for (u32 k = 0, j = lo + threadIdx.x; k < (V); ++k, j += PGD_CL_THREADS)

__device__ __forceinline__ float dot4(float4 a) { return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w; }
__device__ __forceinline__ float clip01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

// L2, one cluster per sample. Pass 1: g -> registers, ||g||^2 (cluster sum). Pass 2: x, x0 ->
// delta in g's registers, ||delta||^2 (cluster sum). Pass 3: x0 again (just read: from L2),
// out written. DRAM traffic 16 bytes per element; three cluster barriers per sample.
// Preconditions: D % 4 == 0, D / 4 <= PGD_CL * PGD_CL_THREADS * PGD_L2_V; grid = N * PGD_CL.
extern "C" __global__ void __cluster_dims__(PGD_CL, 1, 1) __launch_bounds__(PGD_CL_THREADS, 1) pgd_l2_cl_f32(float4* out, const float4* x, const float4* x0, const float4* g, const float* eps,
              const float* step, u32 d4) {
    __shared__ float scratch[32];
    __shared__ float slot[2];
    CL_SLICE(d4);
    float4 r[PGD_L2_V];
    float gg = 0.0f;
    CL_FOR(k, j, PGD_L2_V) {
        r[k] = j < hi ? g[base + j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        gg += dot4(r[k]);
    }
    float gn = sqrtf(cluster_sum(gg, scratch, &slot[0])) + 1e-12f;
    float st = step[n], e = eps[n];
    float dd = 0.0f;
    CL_FOR(k, j, PGD_L2_V) {
        if (j < hi) {
            float4 xv = x[base + j], c = x0[base + j];
            r[k].x = xv.x + st * r[k].x / gn - c.x;
            r[k].y = xv.y + st * r[k].y / gn - c.y;
            r[k].z = xv.z + st * r[k].z / gn - c.z;
            r[k].w = xv.w + st * r[k].w / gn - c.w;
            dd += dot4(r[k]);
        }
    }
    float dn = sqrtf(cluster_sum(dd, scratch, &slot[1]));
    cluster_arrive();   // done reading the other blocks' slots; they may leave after the writes
    float f = fminf(e, dn) / (dn + 1e-12f);
    CL_FOR(k, j, PGD_L2_V) {
        if (j < hi) {
            float4 c = x0[base + j], o;
            o.x = clip01(c.x + r[k].x * f);
            o.y = clip01(c.y + r[k].y * f);
            o.z = clip01(c.z + r[k].z * f);
            o.w = clip01(c.w + r[k].w * f);
            out[base + j] = o;
        }
    }
    cluster_wait();
}

// Exclusive position of `rank` in the 256 bins `tot` (threads 0..255; blockDim >= 256): the
// bin b with prefix(b) <= rank < prefix(b) + tot[b] writes b and rank - prefix(b) to sel.
__device__ __forceinline__ void select_bin(const u32* tot, u32* wsum, u32 rank, u32* sel) {
    u32 t = threadIdx.x, lane = t & 31u, w = t >> 5;
    u32 v = t < 256 ? tot[t] : 0u, incl = v;
#pragma unroll
    for (u32 o = 1; o < 32; o <<= 1) {
        u32 up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
    }
    if (t < 256 && lane == 31) wsum[w] = incl;
    __syncthreads();
    if (t < 256) {
        u32 off = 0;
        for (u32 k = 0; k < w; ++k) off += wsum[k];
        u32 ex = off + incl - v;
        if (v > 0 && ex <= rank && rank < ex + v) { sel[0] = t; sel[1] = rank - ex; }
    }
    __syncthreads();
}

// L1, one cluster per sample, the slice in registers throughout:
// (a) g -> registers; tau by a 4-pass radix select on the bits of |g|: each block histograms
//     its slice (shared-memory atomics), every block adds the 8 histograms over distributed
//     shared memory and finds the same bin (double-buffered histograms: one cluster barrier
//     per pass);
// (b) the count of the step's non-zeros (cluster sum); x, x0 -> v (delta before the
//     projection) and x0 kept in registers; ||clip(v)||_1 and max |v| (cluster sums);
// (c) lambda by the bracketed search of `Bracket` (each round a cluster sum over registers,
//     typically a few rounds), then out written.
// DRAM traffic 16 bytes per element; the rounds touch no memory.
// Preconditions: D % 4 == 0, D / 4 <= PGD_CL * PGD_CL_THREADS * PGD_L1_V, 0 < topk[n] <= 1;
// grid = N * PGD_CL.
extern "C" __global__ void __cluster_dims__(PGD_CL, 1, 1) __launch_bounds__(PGD_CL_THREADS, 1) pgd_l1_cl_f32(float4* out, const float4* x, const float4* x0, const float4* g, const float* eps,
              const float* step, const float* topk, u32 d4) {
    __shared__ u32 hist[2][256];
    __shared__ u32 tot[256];
    __shared__ u32 wsum[8];
    __shared__ u32 sel[2];
    __shared__ float scratch[32];
    __shared__ float slot[2];
    CL_SLICE(d4);
    u32 red = 0;   // reductions so far (slot parity)
    float4 v[PGD_L1_V], c[PGD_L1_V];
    CL_FOR(k, j, PGD_L1_V) v[k] = j < hi ? g[base + j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    // (a) tau. Padding lanes (j >= hi) are left out of the histograms.
    u32 rk = topk_rank(topk[n], d4 * 4);
    u32 prefix = 0, mask = 0;
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        u32* h = hist[pass & 1];
        for (u32 t = threadIdx.x; t < 256; t += blockDim.x) h[t] = 0;
        __syncthreads();
        CL_FOR(k, j, PGD_L1_V) {
            if (j < hi) {
                const float q[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
                for (int l = 0; l < 4; ++l) {
                    u32 bits = __float_as_uint(fabsf(q[l]));
                    if ((bits & mask) == prefix) atomicAdd(&h[(bits >> shift) & 255u], 1u);
                }
            }
        }
        cluster_sync();   // every block's histogram is complete
        if (threadIdx.x < 256) {
            u32 a = smem_addr(&h[threadIdx.x]), s = 0;
#pragma unroll
            for (u32 r = 0; r < PGD_CL; ++r) s += ld_cluster_u32(a, r);
            tot[threadIdx.x] = s;
        }
        __syncthreads();
        select_bin(tot, wsum, rk, sel);
        prefix |= sel[0] << shift;
        mask |= 255u << shift;
        rk = sel[1];
    }
    const float tau = __uint_as_float(prefix);

    // (b) the step and the clipped l1 norm.
    float cnt = 0.0f;
    CL_FOR(k, j, PGD_L1_V) {
        if (j < hi) {
            cnt += (fabsf(v[k].x) >= tau && v[k].x != 0.0f) ? 1.0f : 0.0f;
            cnt += (fabsf(v[k].y) >= tau && v[k].y != 0.0f) ? 1.0f : 0.0f;
            cnt += (fabsf(v[k].z) >= tau && v[k].z != 0.0f) ? 1.0f : 0.0f;
            cnt += (fabsf(v[k].w) >= tau && v[k].w != 0.0f) ? 1.0f : 0.0f;
        }
    }
    cnt = cluster_sum(cnt, scratch, &slot[red++ & 1]);
    const float st = step[n] / (cnt + 1e-10f), e = eps[n];
    float l1c = 0.0f, vmax = 0.0f;
    CL_FOR(k, j, PGD_L1_V) {
        if (j < hi) {
            float4 xv = x[base + j];
            c[k] = x0[base + j];
            v[k].x = xv.x + st * sparse_sign(v[k].x, tau) - c[k].x;
            v[k].y = xv.y + st * sparse_sign(v[k].y, tau) - c[k].y;
            v[k].z = xv.z + st * sparse_sign(v[k].z, tau) - c[k].z;
            v[k].w = xv.w + st * sparse_sign(v[k].w, tau) - c[k].w;
            l1c += fminf(fabsf(v[k].x), box_room(v[k].x, c[k].x)) + fminf(fabsf(v[k].y), box_room(v[k].y, c[k].y))
                 + fminf(fabsf(v[k].z), box_room(v[k].z, c[k].z)) + fminf(fabsf(v[k].w), box_room(v[k].w, c[k].w));
            vmax = fmaxf(vmax, fmaxf(fmaxf(fabsf(v[k].x), fabsf(v[k].y)), fmaxf(fabsf(v[k].z), fabsf(v[k].w))));
        } else {
            v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            c[k] = v[k];
        }
    }
    l1c = cluster_sum(l1c, scratch, &slot[red++ & 1]);
    vmax = cluster_max(vmax, scratch, &slot[red++ & 1]);

    // (c) lambda. Every block holds the same sums, so all take the same rounds.
    float lambda = 0.0f;
    if (l1c > e) {
        Bracket<float> br = {0.0f, vmax, l1c - e, -e, 0};
        for (int it = 0; it < PGD_L1_ROUNDS; ++it) {
            float m = br.next();
            if (!(m > br.lo && m < br.hi)) break;
            float s = 0.0f;
            CL_FOR(k, j, PGD_L1_V) {
                s += shrunk(v[k].x, c[k].x, m) + shrunk(v[k].y, c[k].y, m)
                   + shrunk(v[k].z, c[k].z, m) + shrunk(v[k].w, c[k].w, m);
            }
            s = cluster_sum(s, scratch, &slot[red++ & 1]);
            br.update(m, s - e);
            if (s <= e && s >= e * (1.0f - PGD_L1_TOL)) break;
        }
        lambda = br.hi;
    }
    cluster_arrive();   // done reading the other blocks' shared memory
    CL_FOR(k, j, PGD_L1_V) {
        if (j < hi) {
            float4 o;
            o.x = l1_out(v[k].x, c[k].x, lambda);
            o.y = l1_out(v[k].y, c[k].y, lambda);
            o.z = l1_out(v[k].z, c[k].z, lambda);
            o.w = l1_out(v[k].w, c[k].w, lambda);
            out[base + j] = o;
        }
    }
    cluster_wait();
}

#endif  // __CUDA_ARCH__ >= 900
