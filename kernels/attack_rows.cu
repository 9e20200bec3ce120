// attack_rows.cu: per-iteration updates of attack state that stays on the GPU between model
// passes (an attack keeps its iterates where the model runs; only per-sample scalars travel):
//   square_linf_cand: Square (l-inf) candidates: a copy of each attacked sample's best point
//                     with one s x s window of every channel moved to the eps-ball's faces;
//   copy_rows:        dst[dst_row] = src[src_row] for a list of row pairs (keeping improved
//                     candidates, best points, resets);
//   apgd_linf_step, apgd_l2_step: APGD's step with momentum and both projections;
//   row_l0:           per-row count of differing coordinates (APGD-L1's sparsity checkpoints).
// (APGD-L1's step is the PGD l1 step of pgd_step.cu with a per-sample top-k fraction.)
// Rows are images in the model's input layout (H, W, C), f32. Arithmetic is exactly the host
// reference's (`attack::resident` CPU twins), so results match the CPU bit for bit (the l2
// step's f64 norm sums excepted: same precision, another order).
#include "common.cuh"

// Square l-inf candidates. cand (NA, H, W, C) from best (N, H, W, C) and the clean x (N, H, W, C):
// row a copies best[rows[a]], and inside its window (rows vh[a]..vh[a]+s, columns vw[a]..vw[a]+s)
// channel ch becomes clip01(clip(best + 2 eps sign[a, ch], x - eps, x + eps)).
// Per-row arguments packed in one upload: meta = [rows(NA), vh(NA), vw(NA), sign bits (NA, C)]
// (signs are f32 +-1 stored as their bit patterns).
// Thread mapping: grid-stride over NA*H*W*C, one element per thread. Traffic: 4 bytes read and
// 4 written per element, plus x inside the windows (s*s*C of H*W*C per row).
extern "C" __global__ void square_linf_cand_f32(float* cand, const float* best, const float* x,
                                                const u32* meta, u32 na, u32 h,
                                                u32 w, u32 c, u32 s, float eps, u64 total) {
    GRID_STRIDE(i, total) {
        u32 d = h * w * c;
        u32 a = (u32)(i / d);
        u32 off = (u32)(i - (u64)a * d);
        u32 ch = off % c;
        u32 q = (off / c) % w;
        u32 r = off / (c * w);
        u64 src = (u64)meta[a] * d + off;
        float v = best[src];
        u32 vh = meta[na + a], vw = meta[2 * na + a];
        if (r >= vh && r < vh + s && q >= vw && q < vw + s) {
            float step = 2.0f * eps * __uint_as_float(meta[3 * (u64)na + (u64)a * c + ch]);
            float xv = x[src];
            float t = __fadd_rn(v, step);
            t = fminf(fmaxf(t, __fsub_rn(xv, eps)), __fadd_rn(xv, eps));
            v = fminf(fmaxf(t, 0.0f), 1.0f);
        }
        cand[i] = v;
    }
}

// Row copy: for p < np, dst[pairs[2p]] = src[pairs[2p+1]] (rows of d floats; destination rows
// distinct). Thread mapping: grid-stride over np*d. Traffic: 4 bytes read + 4 written per element.
extern "C" __global__ void copy_rows_f32(float* dst, const float* src, const u32* pairs, u32 d,
                                         u64 total) {
    GRID_STRIDE(i, total) {
        u32 p = (u32)(i / d);
        u32 off = (u32)(i - (u64)p * d);
        dst[(u64)pairs[2 * p] * d + off] = src[(u64)pairs[2 * p + 1] * d + off];
    }
}

// APGD l-inf step with momentum a (per element; row n = i / d):
//   z1  = clip01(clip(xa + step[n] sign(g), x0 - eps, x0 + eps))
//   out = clip01(clip(xa + (z1 - xa) a + (xa - xo)(1 - a), x0 - eps, x0 + eps))
// xa the iterate, xo the previous one, all (N, H, W, C) f32. Every operation is rounded
// separately (no FMA contraction), as on the CPU, so the result matches it bit for bit.
// Thread mapping: grid-stride over N*D. Traffic: 16 bytes read, 4 written per element.
extern "C" __global__ void apgd_linf_step_f32(float* out, const float* xa, const float* xo,
                                              const float* g, const float* x0, const float* step,
                                              float eps, float a, u32 d, u64 total) {
    GRID_STRIDE(i, total) {
        u32 n = (u32)(i / d);
        float gi = g[i];
        float sg = gi > 0.0f ? 1.0f : (gi < 0.0f ? -1.0f : 0.0f);
        float x = xa[i], c = x0[i];
        float lo = __fsub_rn(c, eps), hi = __fadd_rn(c, eps);
        float z1 = fminf(fmaxf(__fadd_rn(x, __fmul_rn(step[n], sg)), lo), hi);
        z1 = fminf(fmaxf(z1, 0.0f), 1.0f);
        float mom = __fsub_rn(x, xo[i]);
        float v = __fadd_rn(__fadd_rn(x, __fmul_rn(__fsub_rn(z1, x), a)),
                            __fmul_rn(mom, __fsub_rn(1.0f, a)));
        v = fminf(fmaxf(v, lo), hi);
        out[i] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

// APGD l2 step with momentum a, one block (1024 threads) per row (row n, d values):
//   gn = ||g||_2 + 1e-12;  z1 = P(xa + step[n] g / gn);  out = P(xa + (z1 - xa) a + (xa - xo)(1 - a))
// with P(v) = clip01(x0 + (v - x0) min(eps, ||v - x0||) / (||v - x0|| + 1e-12)) (project_l2).
// Norms are f64 sums of f64 squares, as on the CPU (only the order of the f64 sum differs, so
// the f32 norms agree with the CPU's except at a rounding boundary); element arithmetic is
// rounded per operation as there. Passes: ||g|| (reads g), ||z1 - x0|| (reads xa, g, x0),
// ||z2 - x0|| (reads xa, xo, g, x0), write (same reads): z1 and z2 are recomputed, not stored.
// Traffic ~ 13 floats read + 1 written per element, from L2 when a row fits there.
__device__ __forceinline__ float apgd_l2_z1(float xa, float g, float st, float gn, float x0,
                                            float s1) {
    float z = __fadd_rn(xa, __fdiv_rn(__fmul_rn(st, g), gn));
    if (s1 < 0.0f) return z;   // before the projection's scale is known
    return fminf(fmaxf(__fadd_rn(x0, __fmul_rn(__fsub_rn(z, x0), s1)), 0.0f), 1.0f);
}

extern "C" __global__ void __launch_bounds__(1024) apgd_l2_step_f32(float* out, const float* xa,
        const float* xo, const float* g, const float* x0, const float* step, float eps, float a,
        u32 d) {
    __shared__ double scratch[32];
    u64 b = (u64)blockIdx.x * d;
    float st = step[blockIdx.x];
    double acc = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) { double v = g[b + j]; acc += v * v; }
    float gn = __fadd_rn(__double2float_rn(sqrt(block_sum_d(acc, scratch))), 1e-12f);
    acc = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        double v = __fsub_rn(apgd_l2_z1(xa[b + j], g[b + j], st, gn, x0[b + j], -1.0f), x0[b + j]);
        acc += v * v;
    }
    float n1 = __double2float_rn(sqrt(block_sum_d(acc, scratch)));
    float s1 = __fdiv_rn(fminf(eps, n1), __fadd_rn(n1, 1e-12f));
    float am = __fsub_rn(1.0f, a);
    acc = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float x = xa[b + j];
        float z1 = apgd_l2_z1(x, g[b + j], st, gn, x0[b + j], s1);
        float z2 = __fadd_rn(__fadd_rn(x, __fmul_rn(__fsub_rn(z1, x), a)),
                             __fmul_rn(__fsub_rn(x, xo[b + j]), am));
        double v = __fsub_rn(z2, x0[b + j]);
        acc += v * v;
    }
    float n2 = __double2float_rn(sqrt(block_sum_d(acc, scratch)));
    float s2 = __fdiv_rn(fminf(eps, n2), __fadd_rn(n2, 1e-12f));
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float x = xa[b + j], c = x0[b + j];
        float z1 = apgd_l2_z1(x, g[b + j], st, gn, c, s1);
        float z2 = __fadd_rn(__fadd_rn(x, __fmul_rn(__fsub_rn(z1, x), a)),
                             __fmul_rn(__fsub_rn(x, xo[b + j]), am));
        out[b + j] = fminf(fmaxf(__fadd_rn(c, __fmul_rn(__fsub_rn(z2, c), s2)), 0.0f), 1.0f);
    }
}

// Per-row count of the coordinates where a and b differ (APGD-L1's L0 norm of x_best - x0, at
// its checkpoints): out[n] = #{i : a[n, i] != b[n, i]}, exact (f32 sums of integers < 2^24).
// Thread mapping: one block (256 threads) per row. Traffic: 8 bytes read per element.
extern "C" __global__ void __launch_bounds__(256) row_l0_f32(float* out, const float* a, const float* b,
                                                             u32 d) {
    __shared__ float scratch[32];
    u64 base = (u64)blockIdx.x * d;
    float c = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) c += a[base + j] != b[base + j] ? 1.0f : 0.0f;
    c = block_sum(c, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = c;
}
