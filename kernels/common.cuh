// common.cuh: helpers shared by every kernel file. NVRTC-safe: no host or CUDA headers, own
// constants. build.rs pastes this file in place of `#include "common.cuh"`, so each embedded
// source is self-contained (one hash per file, no include paths needed at run time).
//
// Conventions (the engine's, DESIGN.md §2):
// - activations are NHWC; shapes are written (N, H, W, C) in the comments above each argument;
// - `d` prefixes gradients; each backward kernel states whether it writes (=) or adds (+=);
// - storage dtype is f32 or bf16 (raw 16-bit patterns); arithmetic and accumulation are f32
//   (f64 for batch statistics), so bf16 is a storage format only.
#pragma once

typedef unsigned short bf16_t;   // bf16 bit pattern (upper half of an f32)
typedef unsigned int u32;
typedef unsigned long long u64;

#define MPM_INV_SQRT2 0.70710678118654752440f
#define MPM_INV_SQRT_2PI 0.39894228040143267794f
#define MPM_FLT_MAX 3.402823466e+38f
#define MPM_WARP 32

// ---- storage conversion: f32 <-> bf16 (round to nearest even; NaN kept quiet) ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_t* p, float v) {
    u32 u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (bf16_t)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    *p = (bf16_t)(u >> 16);
}

// ---- GELU (exact, erf) ----
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * MPM_INV_SQRT2)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
    float cdf = 0.5f * (1.0f + erff(x * MPM_INV_SQRT2));
    float pdf = MPM_INV_SQRT_2PI * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

// ---- reductions ----
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = MPM_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = MPM_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = MPM_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds >= 32 floats. blockDim.x must
// be a multiple of 32. Contains two __syncthreads: call it from all threads of the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(r);
}
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    double r = lane < nw ? scratch[lane] : 0.0;
    return warp_sum_d(r);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : -MPM_FLT_MAX;
    return warp_max(r);
}

// ---- bracketed root search ----
// One step of a search for f(u) = 0 with f decreasing and f(lo) > 0 >= f(hi): regula falsi with
// the Illinois rule (when one end is kept twice, its value is halved, so the bracket shrinks
// from both sides), a bisection when the secant lands on an end. Every thread of a block (or
// cluster) holds the same bracket and takes the same branches. `hi` is always on the f <= 0
// side. Used for the l1-ball projection's lambda (pgd_step.cu) and FAB's projections onto a
// hyperplane within the box (fab_step.cu).
template <typename T>
struct Bracket {
    T lo, hi, flo, fhi;   // flo > 0 >= fhi
    int kept;             // +1: lo was replaced last time, -1: hi, 0: neither yet
    __device__ T next() const {
        T m = lo + (hi - lo) * (flo / (flo - fhi));
        if (!(m > lo && m < hi)) m = (T)0.5 * (lo + hi);
        return m;
    }
    // False when the bracket cannot shrink any more (one ulp wide).
    __device__ bool open() const {
        T m = next();
        return m > lo && m < hi;
    }
    __device__ void update(T m, T fm) {
        if (fm > (T)0) {
            lo = m; flo = fm;
            if (kept == 1) fhi *= (T)0.5;
            kept = 1;
        } else {
            hi = m; fhi = fm;
            if (kept == -1) flo *= (T)0.5;
            kept = -1;
        }
    }
};

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); i += (u64)gridDim.x * blockDim.x)

__device__ __forceinline__ u32 ceil_div(u32 a, u32 b) { return (a + b - 1) / b; }
