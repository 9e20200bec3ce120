// attack_rows.cu: per-iteration updates of attack state that stays on the GPU between model
// passes (an attack keeps its iterates where the model runs; only per-sample scalars travel):
//   square_linf_cand: Square (l-inf) candidates: a copy of each attacked sample's best point
//                     with one s x s window of every channel moved to the eps-ball's faces;
//   copy_rows:        dst[dst_row] = src[src_row] for a list of row pairs (keeping improved
//                     candidates, best points, resets);
//   apgd_linf_step:   APGD's l-inf step with momentum and both projections.
// Rows are images in the model's input layout (H, W, C), f32. Arithmetic is exactly the host
// reference's (`attack::resident` CPU twins), so results match the CPU bit for bit.
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
