// fab_step.cu: FAB's iteration on attack state that stays on the GPU (attack/fab.rs, the
// host loop, is the reference; attack::resident::{fab_step, row_dist, shrink_rows} are the CPU
// twins):
//   fab_step:    both projections onto the linearised decision boundary and the biased step;
//   row_dist:    per-row l-inf / l2 / l1 distance between two batches;
//   shrink_rows: x <- c + (x - c) beta on listed rows (FAB's step back once adversarial).
// Rows are images in the model's input layout (H, W, C), f32.
#include "common.cuh"

#define FAB_TOL 1e-6
#define FAB_ROUNDS 80
#define FAB_INF __longlong_as_double(0x7ff0000000000000ULL)   // +infinity (no math headers under NVRTC)

__device__ __forceinline__ bool fab_masked(float wi, u32 l2) { return l2 ? fabsf(wi) <= 1e-8f : wi == 0.0f; }

// Coordinate i of the projection of t whose boundary distance has sign sg: its direction
// (-sg sign(w_i)), its step scale s_i (l-inf 1, l2 |w_i|), the u at which it reaches the box
// (r_i = room_i / s_i) and its weight in G (q_i = |w_i| s_i).
struct FabCoord {
    float dir;
    double s, r, q;
};

__device__ __forceinline__ FabCoord fab_coord(float ti, float wi, float sg, u32 l2) {
    FabCoord k;
    k.dir = (sg * wi > 0.0f) ? -1.0f : 1.0f;
    double room = k.dir > 0.0f ? 1.0 - (double)ti : (double)ti;
    double aw = fabs((double)wi);
    k.s = l2 ? aw : 1.0;
    k.r = room / k.s;
    k.q = aw * k.s;
    return k;
}

// Coordinate i's move for the root u: dir s min(u, r) (0 when masked).
__device__ __forceinline__ float fab_move(float ti, float wi, float sg, double u, u32 l2) {
    if (fab_masked(wi, l2)) return 0.0f;
    FabCoord k = fab_coord(ti, wi, sg, l2);
    return k.dir * (float)(k.s * fmin(u, k.r));
}

// G(u) = sum_i q_i min(u, r_i) over the row (u = FAB_INF: the box-limited maximum), on every
// thread of the block.
__device__ double fab_g(const float* t, const float* w, u64 b, u32 d, float sg, double u, u32 l2,
                        double* scratch) {
    double acc = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j];
        if (fab_masked(wi, l2)) continue;
        FabCoord k = fab_coord(t[b + j], wi, sg, l2);
        acc += k.q * fmin(u, k.r);
    }
    return block_sum_d(acc, scratch);
}

// The root u of G(u) = |c| for the projection of t (sg = sign of c, +1 for c >= 0).
__device__ double fab_root(const float* t, const float* w, u64 b, u32 d, double c, float sg, u32 l2,
                           double* scratch_d, float* scratch_f) {
    double ginf = fab_g(t, w, b, d, sg, FAB_INF, l2, scratch_d);
    if (c >= ginf) return FAB_INF;   // out of reach within the box: all the way to it
    if (c <= 0.0) return 0.0;
    float rmax = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j];
        if (!fab_masked(wi, l2)) rmax = fmaxf(rmax, (float)fab_coord(t[b + j], wi, sg, l2).r);
    }
    // Any u >= max r_i gives G(inf); the f32 maximum is widened so that it is one.
    double hi = (double)block_max(rmax, scratch_f) * (1.0 + 1e-6) + 1e-30;
    Bracket<double> br = {0.0, hi, c, c - ginf, 0};   // F(u) = |c| - G(u), decreasing
    for (int it = 0; it < FAB_ROUNDS && br.open(); ++it) {
        double m = br.next();
        double f = c - fab_g(t, w, b, d, sg, m, l2, scratch_d);
        br.update(m, f);
        if (f <= 0.0 && f >= -FAB_TOL * c) break;
    }
    return br.hi;   // the side that reaches the boundary
}

// FAB step, l-inf (l2 = 0) or l2 (l2 = 1), one block (1024 threads) per row n. Inputs: the
// iterate x1, the original image im2, w = grad_x (f_t - f_y) at x1 and df[n] = (f_t - f_y)(x1).
// The linearised boundary is {z : w.(z - x1) = -df}; for t in {x1, im2}, c(t) = df + w.(t - x1)
// is t's signed distance in w-units. The minimum-norm step from t onto it within [0,1] moves
// coordinate i in the direction -sign(c) sign(w_i) by s_i min(u, r_i) (`FabCoord`), u >= 0 the
// root of G(u) = sum_i |w_i| s_i min(u, r_i) = |c|: the exact minimisers of the host's
// sort-based projections, written as one monotone 1-D problem; if |c| >= G(inf) the boundary is
// out of reach and every coordinate moves to the box. Masked coordinates (w_i = 0 for l-inf,
// |w_i| <= 1e-8 for l2) do not move. Then, with a_k the norm of step d_k (at least 1e-8) and
// alpha = min(a1 / (a1 + a2), alpha_max):
//   out = clip01((x1 + eta d1) (1 - alpha) + (im2 + eta d2) alpha).
// u by the bracketed search of `Bracket` (f64 sums; stops within 1e-6 of |c| on the side that
// reaches the boundary). Traffic: x1, im2 and w re-read (L2 / DRAM) on each of ~2 x (3 +
// rounds) passes over the row: small next to the two model passes of a FAB iteration.
extern "C" __global__ void __launch_bounds__(1024) fab_step_f32(float* out, const float* x1, const float* im2,
                                                                const float* w, const float* df, u32 l2,
                                                                float eta, float alpha_max, u32 d) {
    __shared__ double scratch_d[32];
    __shared__ float scratch_f[32];
    u64 b = (u64)blockIdx.x * d;
    double dot = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x)
        dot += (double)w[b + j] * ((double)im2[b + j] - (double)x1[b + j]);
    dot = block_sum_d(dot, scratch_d);
    double c1 = (double)df[blockIdx.x], c2 = c1 + dot;
    float sg1 = c1 >= 0.0 ? 1.0f : -1.0f, sg2 = c2 >= 0.0 ? 1.0f : -1.0f;
    double u1 = fab_root(x1, w, b, d, fabs(c1), sg1, l2, scratch_d, scratch_f);
    double u2 = fab_root(im2, w, b, d, fabs(c2), sg2, l2, scratch_d, scratch_f);
    double s1 = 0.0, s2 = 0.0;
    float m1 = 0.0f, m2 = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j];
        float e1 = fab_move(x1[b + j], wi, sg1, u1, l2), e2 = fab_move(im2[b + j], wi, sg2, u2, l2);
        s1 += (double)e1 * e1;
        s2 += (double)e2 * e2;
        m1 = fmaxf(m1, fabsf(e1));
        m2 = fmaxf(m2, fabsf(e2));
    }
    float a1, a2;
    if (l2) {
        a1 = (float)sqrt(block_sum_d(s1, scratch_d));
        a2 = (float)sqrt(block_sum_d(s2, scratch_d));
    } else {
        a1 = block_max(m1, scratch_f);
        a2 = block_max(m2, scratch_f);
    }
    a1 = fmaxf(a1, 1e-8f);
    a2 = fmaxf(a2, 1e-8f);
    float alpha = fminf(fmaxf(a1 / (a1 + a2), 0.0f), alpha_max);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j], xv = x1[b + j], iv = im2[b + j];
        float e1 = fab_move(xv, wi, sg1, u1, l2), e2 = fab_move(iv, wi, sg2, u2, l2);
        float v = (xv + eta * e1) * (1.0f - alpha) + (iv + e2 * eta) * alpha;
        out[b + j] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

// Per-row distance ||a_n - b_n|| in l-inf (norm 0), l2 (1) or l1 (2): out[n]. f64 sums.
// Thread mapping: one block (256 threads) per row. Traffic: 8 bytes read per element.
extern "C" __global__ void __launch_bounds__(256) row_dist_f32(float* out, const float* a, const float* b,
                                                               u32 norm, u32 d) {
    __shared__ double scratch_d[32];
    __shared__ float scratch_f[32];
    u64 base = (u64)blockIdx.x * d;
    double s = 0.0;
    float m = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = fabsf(a[base + j] - b[base + j]);
        m = fmaxf(m, v);
        s += norm == 1 ? (double)v * v : (double)v;
    }
    float r;
    if (norm == 0) r = block_max(m, scratch_f);
    else {
        double t = block_sum_d(s, scratch_d);
        r = (float)(norm == 1 ? sqrt(t) : t);
    }
    if (threadIdx.x == 0) out[blockIdx.x] = r;
}

// x <- c + (x - c) beta on rows rows[0..nr), in place (the launcher works on a copy). Every
// operation rounded separately, as the CPU twin. Thread mapping: grid-stride over nr*d.
// Traffic: 8 bytes read + 4 written per element of the listed rows.
extern "C" __global__ void shrink_rows_f32(float* x, const float* c, const u32* rows, float beta, u32 d,
                                           u64 total) {
    GRID_STRIDE(i, total) {
        u32 p = (u32)(i / d);
        u32 off = (u32)(i - (u64)p * d);
        u64 k = (u64)rows[p] * d + off;
        x[k] = __fadd_rn(c[k], __fmul_rn(__fsub_rn(x[k], c[k]), beta));
    }
}
