// conv_gelu.cu: convolution with batch norm folded in and the activation in the epilogue,
// one kernel, for the evaluation/attack path (BN uses running statistics, so it is an affine
// map per output channel that folds into the convolution):
//   pre[n,oy,ox,o] = sum_{ky,kx,c} x[n, oy*s-p+ky*d, ox*s-p+kx*d, c] * wf[o,ky,kx,c] + shift[o]
//   y = act(pre)
// with wf = w * scale[o], scale = gamma / sqrt(running_var + eps), shift = beta - mean*scale,
// folded once per weight version by bn_fold below (src/cuda/fused.rs caches the result).
// Versus cuDNN conv + a separate BN/GELU pass it saves one write and one read of y. The model
// times both per layer shape on first use and keeps the faster (src/cuda/fused.rs; mpm-bench
// prints the table); `MPM_CONV_GELU=fused|cudnn` forces one.
// Backward (input gradient only, the attack path): the kernel can also write `pre`; then
// dpre = act'(pre) * dy (elementwise.cu) and dx = cuDNN backward-data(dpre, wf).
//
// Algorithm: implicit GEMM, out[M, O] = A[M, K] * Wf[O, K]^T with M = N*OH*OW, K = KH*KW*C; A is
// never materialised (im2col addresses computed while loading tiles). Block tile 64 (M) x 64 (O)
// x 16 (K), 256 threads, each thread 4x4 outputs, f32 accumulation in registers; tiles staged
// in shared memory (2 * 16 * 64 floats = 8 KiB).
// FLOPs: 2*M*O*K. Bytes: x read ceil(O/64) times through L2, wf read ceil(M/64) times, y (and
// pre when asked) written once.
// Preconditions: groups == 1 (depthwise/grouped convs go through cuDNN); OHWI weights (f32);
// all sizes < 2^31.
#include "common.cuh"

struct ConvParams {
    u32 n, h, w, c, o, kh, kw, stride, pad, dilation, oh, ow;
};

#define CG_BM 64
#define CG_BN 64
#define CG_BK 16

template <typename T>
__device__ void conv_bn_act(const T* x, const float* wt, const float* shift, T* y, T* pre,
                            ConvParams p, u32 act) {
    __shared__ float As[CG_BK][CG_BM];
    __shared__ float Bs[CG_BK][CG_BN];
    const u32 M = p.n * p.oh * p.ow;
    const u32 K = p.kh * p.kw * p.c;
    const u32 m0 = blockIdx.x * CG_BM, o0 = blockIdx.y * CG_BN;
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16, ty = tid / 16;   // outputs: rows ty*4.., cols tx*4..
    float acc[4][4];
    for (int i = 0; i < 4; ++i) for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (u32 k0 = 0; k0 < K; k0 += CG_BK) {
        // Load A tile: 16 x 64 = 1024 values, 4 per thread. Consecutive threads take
        // consecutive k (= consecutive channels in NHWC), so global reads are coalesced.
        for (u32 r = 0; r < 4; ++r) {
            u32 idx = tid + r * 256;
            u32 kk = idx % CG_BK, mm = idx / CG_BK;
            u32 gm = m0 + mm, gk = k0 + kk;
            float v = 0.0f;
            if (gm < M && gk < K) {
                u32 ci = gk % p.c, t = gk / p.c, kx = t % p.kw, ky = t / p.kw;
                u32 ox = gm % p.ow, t2 = gm / p.ow, oy = t2 % p.oh, nn = t2 / p.oh;
                int iy = (int)(oy * p.stride + ky * p.dilation) - (int)p.pad;
                int ix = (int)(ox * p.stride + kx * p.dilation) - (int)p.pad;
                if (iy >= 0 && iy < (int)p.h && ix >= 0 && ix < (int)p.w)
                    v = to_f32(x[(((u64)nn * p.h + iy) * p.w + ix) * p.c + ci]);
            }
            As[kk][mm] = v;
        }
        // Load W tile: 16 x 64, 4 per thread, consecutive k contiguous in a weight row.
        for (u32 r = 0; r < 4; ++r) {
            u32 idx = tid + r * 256;
            u32 kk = idx % CG_BK, oo = idx / CG_BK;
            u32 go = o0 + oo, gk = k0 + kk;
            Bs[kk][oo] = (go < p.o && gk < K) ? wt[(u64)go * K + gk] : 0.0f;
        }
        __syncthreads();
        for (u32 kk = 0; kk < CG_BK; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i) for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    // Epilogue: folded BN shift + activation, one write per output (two when `pre` is asked).
    for (int i = 0; i < 4; ++i) {
        u32 gm = m0 + ty * 4 + i;
        if (gm >= M) continue;
        for (int j = 0; j < 4; ++j) {
            u32 go = o0 + tx * 4 + j;
            if (go >= p.o) continue;
            float v = acc[i][j] + shift[go];
            if (pre) store(&pre[(u64)gm * p.o + go], v);
            if (act == 1) v = gelu_f(v); else if (act == 2) v = fmaxf(v, 0.0f);
            store(&y[(u64)gm * p.o + go], v);
        }
    }
}

// Launch: grid (ceil(M/64), ceil(O/64)), block 256 (the tile loads assume exactly 256 threads),
// no dynamic shared memory. `pre` may be null (no input gradient wanted).
extern "C" __global__ void __launch_bounds__(256) conv_bn_act_f32(const float* x, const float* wf, const float* shift, float* y, float* pre, ConvParams p, u32 act) { conv_bn_act(x, wf, shift, y, pre, p, act); }
extern "C" __global__ void __launch_bounds__(256) conv_bn_act_bf16(const bf16_t* x, const float* wf, const float* shift, bf16_t* y, bf16_t* pre, ConvParams p, u32 act) { conv_bn_act(x, wf, shift, y, pre, p, act); }

// BN folding (once per weight version): wf (O, K) = w * scale[o], shift[o] = beta - mean*scale,
// scale = gamma * (1 / sqrt(running_var + eps)) (the same invstd expression as bn_finalize).
// Grid-stride over O*K; reads w once, writes wf once; the thread holding k == 0 of a row also
// writes that row's shift. All f32.
extern "C" __global__ void bn_fold(const float* w, const float* gamma, const float* beta,
                                   const float* running_mean, const float* running_var,
                                   float* wf, float* shift, u32 o, u32 k, float eps) {
    u64 total = (u64)o * k;
    GRID_STRIDE(i, total) {
        u32 row = (u32)(i / k);
        float sc = gamma[row] * (1.0f / sqrtf(running_var[row] + eps));
        wf[i] = w[i] * sc;
        if (i % k == 0) shift[row] = beta[row] - running_mean[row] * sc;
    }
}

// The cuDNN path's epilogue: pre = z + shift[c] (written when `pre` is not null), y = act(pre).
// Grid-stride over M*C; reads z, writes y (and pre).
template <typename T>
__device__ void shift_act(const T* z, T* y, T* pre, const float* shift, u64 total, u32 c, u32 act) {
    GRID_STRIDE(i, total) {
        float v = to_f32(z[i]) + shift[(u32)(i % c)];
        if (pre) store(&pre[i], v);
        if (act == 1) v = gelu_f(v); else if (act == 2) v = fmaxf(v, 0.0f);
        store(&y[i], v);
    }
}
extern "C" __global__ void shift_act_f32(const float* z, float* y, float* pre, const float* shift, u64 total, u32 c, u32 act) { shift_act(z, y, pre, shift, total, c, act); }
extern "C" __global__ void shift_act_bf16(const bf16_t* z, bf16_t* y, bf16_t* pre, const float* shift, u64 total, u32 c, u32 act) { shift_act(z, y, pre, shift, total, c, act); }
