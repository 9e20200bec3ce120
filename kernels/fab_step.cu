// fab_step.cu: FAB's iteration on attack state that stays on the GPU (attack/fab.rs, the
// host loop, is the reference; attack::resident::{fab_step, row_dist, shrink_rows} are the CPU
// twins):
//   fab_step:    both projections onto the linearised decision boundary and the biased step
//                (l-inf, l2, l1);
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

// ---- l1: the host's greedy fill (`projection_l1`) ----
// With w flipped by sg (so the step lowers w.z), coordinate i can lower it by at most
// q_i = |w_i| room_i, room_i the distance to the box in the lowering direction. The host sorts
// the coordinates by r_i = min(|1 / w_i|, 1e12) (largest |w| first, ties by position), moves
// them all the way to the box in that order until the next one would reach the boundary, moves
// that one by what is left (-rest / w_i), and the rest not at all; if even all of them do not
// reach it, every coordinate moves to the box. The crossing coordinate is found here by a radix
// select on the 56-bit key (bits of r_i, then the position), each of its 7 passes a 256-bin
// shared-memory histogram of counts and f64 sums of q over the row: the first bin where the
// running sum reaches what is left.
struct FabL1 {
    bool all;      // the boundary is out of reach: every coordinate to the box
    u64 key;       // the crossing coordinate's key
    double rest;   // what is left for it to lower (w.z units)
};

__device__ __forceinline__ u64 fab_l1_key(float wi, u32 j) {
    float r = fminf(fabsf(1.0f / wi), 1e12f);
    return ((u64)__float_as_uint(r) << 24) | (u64)j;
}

__device__ __forceinline__ double fab_l1_q(float ti, float wi, float sg) {
    float wf = sg * wi;
    return wf > 0.0f ? (double)wf * ti : (double)(-wf) * (1.0 - (double)ti);
}

// Shared scratch: cnt[256], qs[256], sel (bin, found) and rest.
__device__ FabL1 fab_l1_select(const float* t, const float* w, u64 b, u32 d, double c, float sg,
                               u32* cnt, double* qs, u32* sel, double* sel_rest, double* scratch) {
    FabL1 res = {false, 0, 0.0};
    double total = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) total += fab_l1_q(t[b + j], w[b + j], sg);
    total = block_sum_d(total, scratch);
    if (!(total > c)) { res.all = true; return res; }
    if (c <= 0.0) return res;   // nothing to lower: no coordinate moves
    u64 prefix = 0;
    double rest = c;
    for (int shift = 48; shift >= 0; shift -= 8) {
        for (u32 k = threadIdx.x; k < 256; k += blockDim.x) { cnt[k] = 0; qs[k] = 0.0; }
        __syncthreads();
        for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
            float wi = w[b + j];
            u64 key = fab_l1_key(wi, j);
            if (shift == 48 || (key >> (shift + 8)) == (prefix >> (shift + 8))) {
                u32 bin = (u32)(key >> shift) & 255u;
                atomicAdd(&cnt[bin], 1u);
                atomicAdd(&qs[bin], fab_l1_q(t[b + j], wi, sg));
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // The first bin whose running sum reaches `rest`; the last non-empty one if the
            // f64 sums (in another order than `total`'s) fall short by a rounding error.
            double acc = 0.0, acc_last = 0.0;
            u32 bin = 256, last = 0;
            for (u32 k = 0; k < 256; ++k) {
                if (cnt[k] == 0) continue;
                if (acc + qs[k] >= rest) { bin = k; break; }
                last = k; acc_last = acc;
                acc += qs[k];
            }
            if (bin == 256) { bin = last; acc = acc_last; }
            sel[0] = bin;
            *sel_rest = rest - acc;
        }
        __syncthreads();
        prefix |= (u64)sel[0] << shift;
        rest = *sel_rest;
        __syncthreads();
    }
    res.key = prefix;
    res.rest = rest;
    return res;
}

// Coordinate j's l1 move (the host's d, masked where |w_j| <= 1e-8 as the host's output).
__device__ __forceinline__ float fab_move_l1(float ti, float wi, u32 j, float sg, const FabL1& p) {
    if (fabsf(wi) <= 1e-8f) return 0.0f;
    float wf = sg * wi;
    float full = (wf < 0.0f ? 1.0f : 0.0f) - ti;
    if (p.all) return full;
    u64 key = fab_l1_key(wi, j);
    if (key < p.key) return full;
    if (key == p.key) return (float)(-p.rest / (double)wf);
    return 0.0f;
}

// FAB step, l-inf (norm 0), l2 (1) or l1 (2), one block (1024 threads) per row n. Inputs: the
// iterate x1, the original image im2, w = grad_x (f_t - f_y) at x1 and df[n] = (f_t - f_y)(x1).
// The linearised boundary is {z : w.(z - x1) = -df}; for t in {x1, im2}, c(t) = df + w.(t - x1)
// is t's signed distance in w-units. l-inf / l2: the minimum-norm step from t onto it within
// [0,1] moves coordinate i in the direction -sign(c) sign(w_i) by s_i min(u, r_i)
// (`FabCoord`), u >= 0 the root of G(u) = sum_i |w_i| s_i min(u, r_i) = |c|: the exact
// minimisers of the host's sort-based projections, written as one monotone 1-D problem; if
// |c| >= G(inf) the boundary is out of reach and every coordinate moves to the box. Masked
// coordinates (w_i = 0 for l-inf, |w_i| <= 1e-8 for l2) do not move. l1: the greedy fill of
// `fab_l1_select`. Then, with a_k the norm of step d_k (at least 1e-8) and
// alpha = min(a1 / (a1 + a2), alpha_max):
//   out = clip01((x1 + eta d1) (1 - alpha) + (im2 + eta d2) alpha).
// u by the bracketed search of `Bracket` (f64 sums; stops within 1e-6 of |c| on the side that
// reaches the boundary). Traffic: x1, im2 and w re-read (L2 / DRAM) on each of ~2 x (3 +
// rounds) passes over the row (l1: 2 x 9 passes): small next to the two model passes of a FAB
// iteration.
extern "C" __global__ void __launch_bounds__(1024) fab_step_f32(float* out, const float* x1, const float* im2,
                                                                const float* w, const float* df, u32 norm,
                                                                float eta, float alpha_max, u32 d) {
    __shared__ double scratch_d[32];
    __shared__ float scratch_f[32];
    __shared__ u32 cnt[256];
    __shared__ double qs[256];
    __shared__ u32 sel[1];
    __shared__ double sel_rest[1];
    const u32 l2 = norm == 1;
    u64 b = (u64)blockIdx.x * d;
    double dot = 0.0;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x)
        dot += (double)w[b + j] * ((double)im2[b + j] - (double)x1[b + j]);
    dot = block_sum_d(dot, scratch_d);
    double c1 = (double)df[blockIdx.x], c2 = c1 + dot;
    float sg1 = c1 >= 0.0 ? 1.0f : -1.0f, sg2 = c2 >= 0.0 ? 1.0f : -1.0f;
    double u1 = 0.0, u2 = 0.0;
    FabL1 p1 = {true, 0, 0.0}, p2 = {true, 0, 0.0};
    if (norm == 2) {
        p1 = fab_l1_select(x1, w, b, d, fabs(c1), sg1, cnt, qs, sel, sel_rest, scratch_d);
        p2 = fab_l1_select(im2, w, b, d, fabs(c2), sg2, cnt, qs, sel, sel_rest, scratch_d);
    } else {
        u1 = fab_root(x1, w, b, d, fabs(c1), sg1, l2, scratch_d, scratch_f);
        u2 = fab_root(im2, w, b, d, fabs(c2), sg2, l2, scratch_d, scratch_f);
    }
    auto move = [&](float tv, float wi, u32 j, float sg, double u, const FabL1& p) {
        return norm == 2 ? fab_move_l1(tv, wi, j, sg, p) : fab_move(tv, wi, sg, u, l2);
    };
    double s1 = 0.0, s2 = 0.0;
    float m1 = 0.0f, m2 = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j];
        float e1 = move(x1[b + j], wi, j, sg1, u1, p1), e2 = move(im2[b + j], wi, j, sg2, u2, p2);
        s1 += norm == 1 ? (double)e1 * e1 : fabs((double)e1);
        s2 += norm == 1 ? (double)e2 * e2 : fabs((double)e2);
        m1 = fmaxf(m1, fabsf(e1));
        m2 = fmaxf(m2, fabsf(e2));
    }
    float a1, a2;
    if (norm == 0) {
        a1 = block_max(m1, scratch_f);
        a2 = block_max(m2, scratch_f);
    } else {
        double t1 = block_sum_d(s1, scratch_d), t2 = block_sum_d(s2, scratch_d);
        a1 = (float)(norm == 1 ? sqrt(t1) : t1);
        a2 = (float)(norm == 1 ? sqrt(t2) : t2);
    }
    a1 = fmaxf(a1, 1e-8f);
    a2 = fmaxf(a2, 1e-8f);
    float alpha = fminf(fmaxf(a1 / (a1 + a2), 0.0f), alpha_max);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float wi = w[b + j], xv = x1[b + j], iv = im2[b + j];
        float e1 = move(xv, wi, j, sg1, u1, p1), e2 = move(iv, wi, j, sg2, u2, p2);
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
