// square_rows.cu: Square attack l2 / l1 candidates made where the model runs, from the attack's
// state in the model's input tensors (best points and clean images stay on the GPU; per query
// only each row's draws and the query's eta profile go up, one upload):
//   square_l2_cand, square_l1_cand: one candidate per attacked row, the arithmetic of
//   `attack::square::MassMove::apply` (the reference's l2 / l1 Square step):
//     delta = best - x; ni = ||delta||; per channel ch, nw1 / nws = the norm of delta over the
//     window w1 / over w1 and w2 together (f32 sums in raster order, l2: then sqrt);
//     new = (eta * sign[ch] + delta|w1 / (1e-12 + nw1)) * scale[ch], with
//       l1: scale = ((eps - ni)^+ / C + nws) * C / (1e-12 + ||new||_1)
//       l2: scale = sqrt((eps^2 - ni^2)^+ / C + nws^2) / (1e-12 + ||new||_2);
//     delta|w2 = 0, then delta|w1 = new (w1 wins where the windows overlap);
//     l2: out = clip01(x + delta / (||delta||_2 + 1e-12) * eps);
//     l1: out = clip01((x + delta) + r), r the projection of delta onto the l1 ball of radius
//         eps (1 - 1e-6) cut with the box (`norms::l1_projection`): |delta_i + r_i| =
//         |delta_i| - clamp(lambda, u_i, |delta_i|), u_i >= 0 the overshoot of x + delta out
//         of [0, 1], lambda >= 0 the root of sum_i |delta_i + r_i| = eps (1 - 1e-6).
// Rows are images in the model's input layout (H, W, C), f32. Element arithmetic is rounded per
// operation as on the CPU (no FMA contraction: __fadd_rn etc.), and the per-channel window sums
// run in the CPU's order (one thread per channel), so they are the CPU's bits; the f64 norm sums
// run in another order (their f32 values agree except at a rounding boundary), and l1 finds
// lambda by a bracketed search (the CPU sorts the 2D breakpoints), ending inside the ball.
#include "common.cuh"

#define SQ_MAX_C 16          // most channels (shared per-channel sums); checked by the launcher
#define SQ_L1_TOL 1e-9       // stop when eps' (1 - tol) <= ||delta + r||_1 <= eps' (f64)
#define SQ_L1_ROUNDS 100     // at most this many passes of the lambda search

// One row's draws, decoded from meta = [rows, vh1, vw1, vh2, vw2, transpose (NA each),
// sign bits (NA, C), profile bits (s, s)].
struct SqRow {
    u32 row, vh1, vw1, vh2, vw2, tr;
    const u32* sign;      // (C) f32 +-1 bit patterns
    const u32* prof;      // (s, s) f32 bit patterns, row-major, untransposed
};

__device__ __forceinline__ SqRow sq_row(const u32* meta, u32 na, u32 c, u32 a) {
    SqRow p;
    p.row = meta[a];
    p.vh1 = meta[na + a];
    p.vw1 = meta[2 * na + a];
    p.vh2 = meta[3 * na + a];
    p.vw2 = meta[4 * na + a];
    p.tr = meta[5 * na + a];
    p.sign = meta + 6 * (u64)na + (u64)a * c;
    p.prof = meta + 6 * (u64)na + (u64)na * c;
    return p;
}

// (r, q) inside the s x s window at (vh, vw) (unsigned: r < vh wraps to a large value).
__device__ __forceinline__ bool sq_in(u32 r, u32 q, u32 vh, u32 vw, u32 s) {
    return r - vh < s && q - vw < s;
}

// The new delta at (r, q, ch), given the per-channel nw1 and scale (shared): the window
// content inside w1, 0 inside w2 only, best - x elsewhere.
__device__ __forceinline__ float sq_delta(const SqRow& p, u32 r, u32 q, u32 ch, u32 s, float bv,
                                          float xv, const float* nw1, const float* scale) {
    float old = __fsub_rn(bv, xv);
    if (sq_in(r, q, p.vh1, p.vw1, s)) {
        u32 i = r - p.vh1, k = q - p.vw1;
        float e = __uint_as_float(p.prof[p.tr ? k * s + i : i * s + k]);
        float nd = __fadd_rn(__fmul_rn(e, __uint_as_float(p.sign[ch])),
                             __fdiv_rn(old, __fadd_rn(1e-12f, nw1[ch])));
        return __fmul_rn(nd, scale[ch]);
    }
    return sq_in(r, q, p.vh2, p.vw2, s) ? 0.0f : old;
}

// The part both kernels share: the new delta of this block's row, written into its row of
// `out`; `acc(delta, x)` runs on each element as it is written, so the caller's sums ride on
// that pass. Passes over the row (d = H*W*C values): (1) ni, reads best and x; (2) the window
// sums, one thread per channel, reading best and x over the windows' union (<= 2 s^2 pixels);
// (3) per channel, the norm of the new window content (reads w1, C block sums); (4) the new
// delta, reads best and x, writes out. Shared: nw1, nws, scale per channel.
template <bool L1, typename Acc>
__device__ __forceinline__ void sq_new_delta(float* out, const float* best, const float* x,
                                             const SqRow& p, u32 h, u32 w, u32 c, u32 s,
                                             float eps, double* scratch, float* nw1, float* nws,
                                             float* scale, Acc acc) {
    u32 d = h * w * c;
    u64 src = (u64)p.row * d;
    // (1) ni = ||best - x|| (f64 sum, as Norm::of).
    double a = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        double v = __fsub_rn(best[src + j], x[src + j]);
        a += L1 ? fabs(v) : v * v;
    }
    a = block_sum_d(a, scratch);
    float ni = L1 ? __double2float_rn(a) : __double2float_rn(sqrt(a));
    // (2) Per-channel sums over w1 and over the union, in the raster order of the windows'
    // bounding box (the CPU's order, so the same f32 bits).
    if (threadIdx.x < c) {
        u32 ch = threadIdx.x;
        u32 r0 = min(p.vh1, p.vh2), r1 = max(p.vh1, p.vh2) + s;
        u32 q0 = min(p.vw1, p.vw2), q1 = max(p.vw1, p.vw2) + s;
        float s1 = 0.0f, su = 0.0f;
        for (u32 r = r0; r < r1; ++r) {
            bool h1 = r - p.vh1 < s, h2 = r - p.vh2 < s;
            if (!h1 && !h2) continue;
            for (u32 q = q0; q < q1; ++q) {
                bool i1 = h1 && q - p.vw1 < s, i2 = h2 && q - p.vw2 < s;
                if (!i1 && !i2) continue;
                u64 k = src + ((u64)r * w + q) * c + ch;
                float v = __fsub_rn(best[k], x[k]);
                float m = L1 ? fabsf(v) : __fmul_rn(v, v);
                if (i1) s1 = __fadd_rn(s1, m);
                su = __fadd_rn(su, m);
            }
        }
        nw1[ch] = L1 ? s1 : __fsqrt_rn(s1);
        nws[ch] = L1 ? su : __fsqrt_rn(su);
    }
    __syncthreads();
    // (3) Per channel: the norm of the new window content before its scale (f64, as Norm::of),
    // then the scale (thread 0, the CPU's operation order).
    float fc = (float)c;
    for (u32 ch = 0; ch < c; ++ch) {
        double t = 0.0;
        float den = __fadd_rn(1e-12f, nw1[ch]);
        float sg = __uint_as_float(p.sign[ch]);
        for (u32 j = threadIdx.x; j < s * s; j += blockDim.x) {
            u32 i = j / s, k = j - i * s;
            u64 e = src + ((u64)(p.vh1 + i) * w + p.vw1 + k) * c + ch;
            float ev = __uint_as_float(p.prof[p.tr ? k * s + i : j]);
            double nd = __fadd_rn(__fmul_rn(ev, sg), __fdiv_rn(__fsub_rn(best[e], x[e]), den));
            t += L1 ? fabs(nd) : nd * nd;
        }
        t = block_sum_d(t, scratch);
        if (threadIdx.x == 0) {
            float sc;
            if (L1) {
                float tn = __double2float_rn(t);
                float room = __fdiv_rn(fmaxf(__fsub_rn(eps, ni), 0.0f), fc);
                sc = __fdiv_rn(__fmul_rn(__fadd_rn(room, nws[ch]), fc), __fadd_rn(1e-12f, tn));
            } else {
                float tn = __double2float_rn(sqrt(t));
                float room = __fsub_rn(__fmul_rn(eps, eps), __fmul_rn(ni, ni));
                room = __fdiv_rn(fmaxf(room, 0.0f), fc);
                sc = __fdiv_rn(__fsqrt_rn(__fadd_rn(room, __fmul_rn(nws[ch], nws[ch]))),
                               __fadd_rn(1e-12f, tn));
            }
            scale[ch] = sc;
        }
    }
    __syncthreads();
    // (4) The new delta into out, with the caller's per-element accumulation.
    u64 dst = (u64)blockIdx.x * d;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        u32 ch = j % c, q = (j / c) % w, r = j / (c * w);
        float xv = x[src + j];
        float v = sq_delta(p, r, q, ch, s, best[src + j], xv, nw1, scale);
        out[dst + j] = v;
        acc(v, xv);
    }
}

// l2 candidates. cand (NA, H, W, C) from best and the clean x (N, H, W, C); meta as SqRow.
// Thread mapping: one block (1024 threads) per candidate row; threads 0..C-1 alone run the
// window sums (pass 2 of sq_new_delta, <= 2 s^2 serial steps: ~80k at s = 201, the first 10
// queries at 224 px; ~1k from query 2000 on). Traffic per element of a row: best and x read
// twice (passes 1 and 4: 16 bytes), out written (4), then out and x read and out written again
// (12): 32 bytes, from L2 when a row fits there, plus the windows (passes 2-3).
// Preconditions (launcher): C <= SQ_MAX_C, windows inside the image, blockDim.x = 1024.
extern "C" __global__ void __launch_bounds__(1024) square_l2_cand_f32(float* cand, const float* best,
        const float* x, const u32* meta, u32 na, u32 h, u32 w, u32 c, u32 s, float eps) {
    __shared__ double scratch[32];
    __shared__ float nw1[SQ_MAX_C], nws[SQ_MAX_C], scale[SQ_MAX_C];
    SqRow p = sq_row(meta, na, c, blockIdx.x);
    double a = 0.0;
    sq_new_delta<false>(cand, best, x, p, h, w, c, s, eps, scratch, nw1, nws, scale,
                        [&](float v, float) { a += (double)v * (double)v; });
    a = block_sum_d(a, scratch);
    float t = __fadd_rn(__double2float_rn(sqrt(a)), 1e-12f);
    u32 d = h * w * c;
    u64 src = (u64)p.row * d, dst = (u64)blockIdx.x * d;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = __fadd_rn(x[src + j], __fmul_rn(__fdiv_rn(cand[dst + j], t), eps));
        cand[dst + j] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

// |delta_i + r_i| for the shrink lambda (norms::l1_projection): |y| - clamp(lambda, u, |y|)
// with u = -min(1 - x - y, x + y, 0) the overshoot of x + y out of [0, 1], all in f64.
__device__ __forceinline__ double sq_l1_left(float xv, float y, double lambda) {
    double xd = xv, yd = y;
    double u = -fmin(fmin(1.0 - xd - yd, xd + yd), 0.0);
    double ay = fabs(yd);
    return ay - fmin(fmax(u, lambda), ay);
}

// l1 candidates. Same inputs and mapping as square_l2_cand_f32. After the new delta (written
// into cand), its clipped l1 norm g(0) = sum_i |delta_i| - u_i and max |delta_i|; when g(0) is
// above eps' = eps (1 - 1e-6), lambda by regula falsi with the Illinois rule on the bracket
// [0, max |delta|] (g is decreasing and piecewise linear, so a secant inside one piece is
// exact), each round a pass over the row (f64 block sum), stopping when
// eps' (1 - SQ_L1_TOL) <= g <= eps' and keeping the end inside the ball; then
// out = clip01((x + delta) + r) with
// r = -sign(delta) clamp(lambda, u, |delta|) rounded to f32 (the CPU's expression).
// Traffic per element: as the l2 kernel, plus 8 bytes (delta, x) per search round, from L2
// when a row fits there (6 to 20 rounds in a host emulation of this kernel on 17x13 to
// 224x224 rows).
extern "C" __global__ void __launch_bounds__(1024) square_l1_cand_f32(float* cand, const float* best,
        const float* x, const u32* meta, u32 na, u32 h, u32 w, u32 c, u32 s, float eps) {
    __shared__ double scratch[32];
    __shared__ float fscratch[32];
    __shared__ float nw1[SQ_MAX_C], nws[SQ_MAX_C], scale[SQ_MAX_C];
    SqRow p = sq_row(meta, na, c, blockIdx.x);
    double g0 = 0.0;
    float ymax = 0.0f;
    sq_new_delta<true>(cand, best, x, p, h, w, c, s, eps, scratch, nw1, nws, scale,
                       [&](float v, float xv) {
                           g0 += sq_l1_left(xv, v, 0.0);
                           ymax = fmaxf(ymax, fabsf(v));
                       });
    g0 = block_sum_d(g0, scratch);
    ymax = block_max(ymax, fscratch);
    u32 d = h * w * c;
    u64 src = (u64)p.row * d, dst = (u64)blockIdx.x * d;
    double e = (double)__fmul_rn(eps, 1.0f - 1e-6f);
    double lambda = 0.0;
    if (g0 > e) {
        // f = g - e: f(0) > 0 >= f(max |delta|) = -e (common.cuh's `Bracket`).
        Bracket<double> br = {0.0, (double)ymax, g0 - e, -e, 0};
        for (int it = 0; it < SQ_L1_ROUNDS && br.open(); ++it) {
            double m = br.next();
            double gm = 0.0;
            for (u32 j = threadIdx.x; j < d; j += blockDim.x)
                gm += sq_l1_left(x[src + j], cand[dst + j], m);
            gm = block_sum_d(gm, scratch);
            br.update(m, gm - e);
            if (gm <= e && gm >= e * (1.0 - SQ_L1_TOL)) break;
        }
        lambda = br.hi;   // the end inside the ball
    }
    __syncthreads();
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float xv = x[src + j], y = cand[dst + j];
        double xd = xv, yd = y;
        double u = -fmin(fmin(1.0 - xd - yd, xd + yd), 0.0);
        double cl = fmin(fmax(u, lambda), fabs(yd));
        double sg = y > 0.0f ? 1.0 : (y < 0.0f ? -1.0 : 0.0);
        float r = __double2float_rn(sg * -cl);
        float v = __fadd_rn(__fadd_rn(xv, y), r);
        cand[dst + j] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}
