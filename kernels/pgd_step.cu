// pgd_step.cu: one projected attack step, in place on the adversarial batch x (N, D), D =
// H*W*C, given the clean batch x0, the input gradient g and per-sample eps[n], step[n]:
//   Linf: x <- clip01(clip(x + step * sign(g), x0 - eps, x0 + eps))
//   L2  : x <- x + step * g / (||g|| + 1e-12); delta = x - x0;
//         x <- clip01(x0 + delta * min(eps, ||delta||) / (||delta|| + 1e-12))   (AutoAttack APGD-L2)
//   L1  : APGD-L1 sparse step: tau = the (1-k)-quantile of |g| per sample (k = topk fraction),
//         u = sign(g) * [|g| >= tau]; x <- x + step * u / (||u||_1 + 1e-10); then the exact
//         projection of delta = x - x0 onto {||delta||_1 <= eps} cut with the box [0,1]:
//         delta_i = sign(v_i) * min(max(|v_i| - lambda, 0), b_i), b_i the room to the box in
//         v_i's direction, lambda >= 0 found by bisection so that ||delta||_1 = eps (0 if the
//         clipped delta is inside the ball).
// All three end inside the eps-ball and inside [0,1].
#include "common.cuh"

// Linf. Thread mapping: grid-stride over N*D, one element per thread. Reads x, x0, g; writes x:
// 12 bytes read + 4 written per element (the fewest possible for an in-place step).
extern "C" __global__ void pgd_linf_f32(float* x, const float* x0, const float* g, const float* eps,
                                        const float* step, u32 d, u64 total) {
    GRID_STRIDE(i, total) {
        u32 n = (u32)(i / d);
        float gi = g[i];
        float sg = gi > 0.0f ? 1.0f : (gi < 0.0f ? -1.0f : 0.0f);
        float c = x0[i], e = eps[n];
        float v = x[i] + step[n] * sg;
        v = fminf(fmaxf(v, c - e), c + e);
        x[i] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

// L2. Thread mapping: one block (1024 threads) per sample; each thread owns the same indices
// in every pass, so the passes need no barrier beyond the reductions'. Pass 1 reads g (||g||),
// pass 2 reads x, x0, g again (L2-resident: one sample is 3 * D * 4 bytes = 1.8 MB at 224x224)
// and writes delta into x, pass 3 rewrites x. DRAM traffic ~ 12 bytes read + 4 written per
// element when the sample stays in L2.
extern "C" __global__ void __launch_bounds__(1024) pgd_l2_f32(float* x, const float* x0, const float* g, const float* eps,
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
        x[b + j] = delta;
        dd += delta * delta;
    }
    float dn = sqrtf(block_sum(dd, scratch));
    float f = fminf(e, dn) / (dn + 1e-12f);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x)
        x[b + j] = fminf(fmaxf(x0[b + j] + x[b + j] * f, 0.0f), 1.0f);
}

// L1. Thread mapping: one block (1024 threads) per sample.
// (a) tau by radix select on the bit patterns of |g| (non-negative floats order like their
//     bits): 4 passes of 8 bits, each a 256-bin shared-memory histogram over the sample;
// (b) step with u, writing v = delta into x;
// (c) bisection for lambda (40 rounds, each a block sum over the sample from L2), then the
//     final write. Reads: g 5 times, x/x0 ~42 times from L2; DRAM ~ 16 bytes per element when
//     the sample stays in L2. Preconditions: 0 < topk <= 1.
extern "C" __global__ void __launch_bounds__(1024) pgd_l1_f32(float* x, const float* x0, const float* g, const float* eps,
                                      const float* step, float topk, u32 d) {
    __shared__ u32 hist[256];
    __shared__ float scratch[32];
    __shared__ u32 sel[2];
    u64 b = (u64)blockIdx.x * d;
    // (a) rank (ascending) of tau: clamp(floor((1 - topk) * d), 0, d - 1), as AutoAttack.
    int r = (int)((1.0f - topk) * (float)d);
    u32 rank = (u32)min(max(r, 0), (int)d - 1);
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
    // (b) sparse sign step.
    float cnt = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) { float gv = g[b + j]; cnt += (fabsf(gv) >= tau && gv != 0.0f) ? 1.0f : 0.0f; }
    cnt = block_sum(cnt, scratch);
    float st = step[blockIdx.x] / (cnt + 1e-10f), e = eps[blockIdx.x];
    float l1c = 0.0f, vmax = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float gv = g[b + j];
        float u = fabsf(gv) >= tau ? (gv > 0.0f ? 1.0f : (gv < 0.0f ? -1.0f : 0.0f)) : 0.0f;
        float c = x0[b + j];
        float v = x[b + j] + st * u - c;          // delta before projection
        x[b + j] = v;
        float room = v > 0.0f ? 1.0f - c : c;      // box bound in v's direction
        l1c += fminf(fabsf(v), room);
        vmax = fmaxf(vmax, fabsf(v));
    }
    l1c = block_sum(l1c, scratch);
    vmax = block_max(vmax, scratch);
    float lambda = 0.0f;
    if (l1c > e) {
        float lo = 0.0f, hi = vmax;
        for (int it = 0; it < 40; ++it) {
            float mid = 0.5f * (lo + hi), s = 0.0f;
            for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
                float v = x[b + j], c = x0[b + j];
                float room = v > 0.0f ? 1.0f - c : c;
                s += fminf(fmaxf(fabsf(v) - mid, 0.0f), room);
            }
            s = block_sum(s, scratch);
            if (s > e) lo = mid; else hi = mid;
        }
        lambda = hi;   // the side that is inside the ball
    }
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = x[b + j], c = x0[b + j];
        float room = v > 0.0f ? 1.0f - c : c;
        float a = fminf(fmaxf(fabsf(v) - lambda, 0.0f), room);
        x[b + j] = fminf(fmaxf(c + (v > 0.0f ? a : -a), 0.0f), 1.0f);
    }
}
