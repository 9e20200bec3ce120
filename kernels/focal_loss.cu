// focal_loss.cu: the soft-target focal loss of the MPM heads over S = K + 1 channels, loss and
// gradient in one kernel per level (cpu::focal_loss is the reference). Per pixel:
//   l = -sum_c t_c log softmax(z)_c,  p = exp(-l),  f = (1 - p)^gamma * l
//   loss += w_n * f / (N*h*w)   (zero-weight images count in the mean)
//   dz_c  = w_n / (N*h*w) * df/dl * (softmax_c * sum(t) - t_c),
//   df/dl = (1-p)^gamma + gamma (1-p)^(gamma-1) p l      (gradient flows through p: no detach)
// The probabilities are never materialised: the row is staged once in shared memory.
//
// Thread mapping: one block (128 threads) per pixel; threads stride over the S channels.
// Pass 1 reads z and t from global memory once (coalesced: the row is contiguous in NHWC)
// into shared memory (row max, sum of targets); pass 2 (shared memory only) computes each
// exp(z - max) once, kept in place of z, and forms l; pass 3 writes dz = f(e / sum e). One exp
// per channel and no data-dependent branch (the first version's online max paid two exps and a
// branch per channel and reached 51% (f32) / 26% (bf16) of the H200's copy bandwidth). Global traffic per pixel: S*(sizeof z + sizeof t)
// read, S*sizeof(dz) written, 4 bytes of per-pixel loss written (summed by reduce.cu's
// sum_partial/sum_finish, deterministic). This is the minimum: 12 bytes/channel in f32,
// 6 in bf16.
// Preconditions: dynamic shared memory = 2*S*4 bytes (S <= 6144 within the default 48 KiB;
// the launcher raises the limit above that); blockDim.x = 128; grid = N*h*w blocks.
#include "common.cuh"

// Per pixel, from its soft-target cross-entropy l and image weight wn: writes the weighted
// focal loss wn (1-p)^gamma l (thread 0) and returns the gradient scale wn df/dl / (N*h*w),
// df/dl = (1-p)^gamma + gamma (1-p)^(gamma-1) p l, p = exp(-l).
__device__ __forceinline__ float focal_pixel(float l, float wn, float gamma, float inv_total,
                                             float* pixel_loss) {
    float p = expf(-l), q = 1.0f - p;
    float qg = powf(q, gamma);
    float dfdl = qg + gamma * powf(q, gamma - 1.0f) * p * l;
    if (threadIdx.x == 0) *pixel_loss = wn * (qg * l);
    return wn * dfdl * inv_total;
}

#define FOCAL_BATCH 8

template <typename T, typename U>
__device__ void focal_loss_fwd_bwd(const T* z, const U* t, const float* weights, T* dz,
                                   float* pixel_loss, u32 s, u32 pixels_per_image, float gamma,
                                   float inv_total) {
    extern __shared__ float row[];   // [0, s): z, [s, 2s): t
    __shared__ float scratch[32];
    float* zs = row;
    float* ts = row + s;
    u64 pix = blockIdx.x;
    u64 base = pix * s;
    // Pass 1: one global read into shared memory; per-thread max and sum of targets.
    float m = -MPM_FLT_MAX, tsum = 0.0f;
    // Groups of FOCAL_BATCH strided elements that lie wholly inside the row: their 2 x
    // FOCAL_BATCH global loads are issued before any is used (a plain strided loop exits after
    // each element, so only one load pair per thread was in flight: the bf16 case was
    // latency-bound); then the rest one by one. Same elements, same order of the sums.
    const u32 stride = blockDim.x;
    u32 j = threadIdx.x;
    for (; j + (FOCAL_BATCH - 1) * stride < s; j += FOCAL_BATCH * stride) {
        float zv[FOCAL_BATCH], tv[FOCAL_BATCH];
#pragma unroll
        for (int k = 0; k < FOCAL_BATCH; ++k) {
            zv[k] = to_f32(z[base + j + k * stride]);
            tv[k] = to_f32(t[base + j + k * stride]);
        }
#pragma unroll
        for (int k = 0; k < FOCAL_BATCH; ++k) {
            zs[j + k * stride] = zv[k]; ts[j + k * stride] = tv[k]; tsum += tv[k];
            m = fmaxf(m, zv[k]);
        }
    }
    for (; j < s; j += stride) {
        float zj = to_f32(z[base + j]), tj = to_f32(t[base + j]);
        zs[j] = zj; ts[j] = tj; tsum += tj;
        m = fmaxf(m, zj);
    }
    float bm = block_max(m, scratch);
    tsum = block_sum(tsum, scratch);
    // Pass 2 (shared memory): e_j = exp(z_j - max) replaces z_j in place (the only exp per
    // channel), with sum e and sum t_j (z_j - max); then l = -sum t (z - lse) as
    // tsum * log(sum e) - sum t (z - max), both terms on the scale of l.
    float se = 0.0f, tz = 0.0f;
    for (u32 j = threadIdx.x; j < s; j += blockDim.x) {
        float d = zs[j] - bm;
        tz += ts[j] * d;
        float e = expf(d);
        zs[j] = e;
        se += e;
    }
    se = block_sum(se, scratch);
    tz = block_sum(tz, scratch);
    float sc = focal_pixel(tsum * logf(se) - tz, weights[pix / pixels_per_image], gamma,
                           inv_total, pixel_loss + pix);
    float inv_se = 1.0f / se;
    // Pass 3: gradient, one global write.
    for (u32 j = threadIdx.x; j < s; j += blockDim.x)
        store(&dz[base + j], sc * (zs[j] * inv_se * tsum - ts[j]));
}

extern "C" __global__ void __launch_bounds__(128) focal_loss_f32(const float* z, const float* t, const float* weights, float* dz, float* pixel_loss, u32 s, u32 ppi, float gamma, float inv_total) {
    focal_loss_fwd_bwd(z, t, weights, dz, pixel_loss, s, ppi, gamma, inv_total);
}
extern "C" __global__ void __launch_bounds__(128) focal_loss_bf16(const bf16_t* z, const bf16_t* t, const float* weights, bf16_t* dz, float* pixel_loss, u32 s, u32 ppi, float gamma, float inv_total) {
    focal_loss_fwd_bwd(z, t, weights, dz, pixel_loss, s, ppi, gamma, inv_total);
}

// Register-staged variant (candidate replacement, chosen with MPM_FOCAL_KERNEL=registers until
// its speed is measured): same formulas, but each of the 128 threads keeps its (at most
// FOCAL_ITEMS) channels of z and t in registers instead of shared memory. All of a thread's
// loads are issued before any is used (FOCAL_ITEMS independent loads in flight per thread, where
// the shared-memory version has one), no dynamic shared memory limits how many blocks share an
// SM, and the three sums of pass 2 share one block reduction (2 barrier rounds per pixel instead
// of 4). Global traffic is the same minimum. Preconditions: S <= 128 * FOCAL_ITEMS = 4096;
// blockDim.x = 128; grid = N*h*w blocks.
#define FOCAL_ITEMS 32

__device__ __forceinline__ void block_sum3(float& a, float& b, float& c, float* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    a = warp_sum(a); b = warp_sum(b); c = warp_sum(c);
    __syncthreads();
    if (lane == 0) { scratch[wid] = a; scratch[32 + wid] = b; scratch[64 + wid] = c; }
    __syncthreads();
    a = warp_sum(lane < nw ? scratch[lane] : 0.0f);
    b = warp_sum(lane < nw ? scratch[32 + lane] : 0.0f);
    c = warp_sum(lane < nw ? scratch[64 + lane] : 0.0f);
}

template <typename T, typename U>
__device__ void focal_loss_regs(const T* z, const U* t, const float* weights, T* dz,
                                float* pixel_loss, u32 s, u32 pixels_per_image, float gamma,
                                float inv_total) {
    __shared__ float scratch[96];
    u64 pix = blockIdx.x;
    u64 base = pix * s;
    float zr[FOCAL_ITEMS], tr[FOCAL_ITEMS];
    float m = -MPM_FLT_MAX;
#pragma unroll
    for (int k = 0; k < FOCAL_ITEMS; ++k) {
        u32 j = threadIdx.x + k * 128u;
        bool in = j < s;
        zr[k] = in ? to_f32(z[base + j]) : -MPM_FLT_MAX;
        tr[k] = in ? to_f32(t[base + j]) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < FOCAL_ITEMS; ++k) m = fmaxf(m, zr[k]);
    float bm = block_max(m, scratch);
    float se = 0.0f, tz = 0.0f, tsum = 0.0f;
#pragma unroll
    for (int k = 0; k < FOCAL_ITEMS; ++k) {
        u32 j = threadIdx.x + k * 128u;
        if (j < s) {
            float d = zr[k] - bm;
            tz += tr[k] * d;
            tsum += tr[k];
            float e = expf(d);
            zr[k] = e;
            se += e;
        }
    }
    block_sum3(se, tz, tsum, scratch);
    float sc = focal_pixel(tsum * logf(se) - tz, weights[pix / pixels_per_image], gamma,
                           inv_total, pixel_loss + pix);
    float inv_se = 1.0f / se;
#pragma unroll
    for (int k = 0; k < FOCAL_ITEMS; ++k) {
        u32 j = threadIdx.x + k * 128u;
        if (j < s) store(&dz[base + j], sc * (zr[k] * inv_se * tsum - tr[k]));
    }
}

extern "C" __global__ void __launch_bounds__(128) focal_loss_regs_f32(const float* z, const float* t, const float* weights, float* dz, float* pixel_loss, u32 s, u32 ppi, float gamma, float inv_total) {
    focal_loss_regs(z, t, weights, dz, pixel_loss, s, ppi, gamma, inv_total);
}
extern "C" __global__ void __launch_bounds__(128) focal_loss_regs_bf16(const bf16_t* z, const bf16_t* t, const float* weights, bf16_t* dz, float* pixel_loss, u32 s, u32 ppi, float gamma, float inv_total) {
    focal_loss_regs(z, t, weights, dz, pixel_loss, s, ppi, gamma, inv_total);
}
