// bn_gelu.cu: batch normalisation over the channel (last) axis of NHWC tensors viewed as
// (M, C), M = N*H*W, with an optional activation fused into the apply pass (training path):
//   forward : y = act(x * scale_c + shift_c), scale = gamma * invstd, shift = beta - mean*scale
//   backward: recomputes the pre-activation from x (nothing extra is stored), so the fused
//             pair moves the same bytes as a plain BN: reads x, dy; writes dx.
// Statistics (mean, biased var) come from reduce.cu's col_partial/col_finish in f64, two
// passes, exactly as cpu::batch_norm::batch_stats. act: 0 none, 1 GELU(erf), 2 ReLU.
#include "common.cuh"

__device__ __forceinline__ float act_f(float v, u32 act) {
    return act == 1 ? gelu_f(v) : act == 2 ? fmaxf(v, 0.0f) : v;
}
__device__ __forceinline__ float act_grad_f(float v, u32 act) {
    return act == 1 ? gelu_grad_f(v) : act == 2 ? (v > 0.0f ? 1.0f : 0.0f) : 1.0f;
}

// Training: running stats update (momentum, unbiased variance) and invstd; eval: invstd of the
// running variance (mean/var null, momentum ignored). One thread per channel. Writes invstd.
extern "C" __global__ void bn_finalize(const float* mean, const float* var, float* running_mean,
                                       float* running_var, float* invstd, u32 c, float momentum,
                                       float unbias, float eps, u32 train) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c) return;
    if (train) {
        running_mean[i] = (1.0f - momentum) * running_mean[i] + momentum * mean[i];
        running_var[i] = (1.0f - momentum) * running_var[i] + momentum * var[i] * unbias;
        invstd[i] = 1.0f / sqrtf(var[i] + eps);
    } else {
        invstd[i] = 1.0f / sqrtf(running_var[i] + eps);
    }
}

// y (M, C) = act(x * scale + shift). Grid-stride over M*C. Reads 1, writes 1 element; the
// per-channel scale/shift (4 floats) come from L1. `mean` is the batch or running mean.
template <typename T>
__device__ void bn_apply(const T* x, T* y, const float* mean, const float* invstd, const float* gamma,
                         const float* beta, u64 total, u32 c, u32 act) {
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c);
        float sc = invstd[ch] * gamma[ch];
        float sh = beta[ch] - mean[ch] * sc;
        store(&y[i], act_f(to_f32(x[i]) * sc + sh, act));
    }
}
extern "C" __global__ void bn_apply_f32(const float* x, float* y, const float* mean, const float* invstd, const float* gamma, const float* beta, u64 total, u32 c, u32 act) { bn_apply(x, y, mean, invstd, gamma, beta, total, c, act); }
extern "C" __global__ void bn_apply_bf16(const bf16_t* x, bf16_t* y, const float* mean, const float* invstd, const float* gamma, const float* beta, u64 total, u32 c, u32 act) { bn_apply(x, y, mean, invstd, gamma, beta, total, c, act); }

// Backward sums, per row chunk: partial[0, chunk, c] = sum dpre, partial[1, chunk, c] =
// sum dpre * xhat, where dpre = dy * act'(xhat*gamma + beta) (the activation's backward fused)
// and xhat = (x - mean) * invstd. Mapping as col_partial (blockIdx.y = chunk, x = channel).
// Reads x and dy once.
template <typename T>
__device__ void bn_bwd_partial(const T* x, const T* dy, const float* mean, const float* invstd,
                               const float* gamma, const float* beta, u32 m, u32 c, u32 rpc,
                               u32 act, u32 chunks, double* partial) {
    u32 col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    u32 r0 = blockIdx.y * rpc, r1 = min(m, r0 + rpc);
    float mu = mean[col], is = invstd[col], g = gamma[col], b = beta[col];
    double s1 = 0.0, s2 = 0.0;
    for (u32 r = r0; r < r1; ++r) {
        u64 i = (u64)r * c + col;
        float xhat = (to_f32(x[i]) - mu) * is;
        float d = to_f32(dy[i]);
        if (act) d *= act_grad_f(xhat * g + b, act);
        s1 += (double)d;
        s2 += (double)(d * xhat);
    }
    partial[(u64)blockIdx.y * c + col] = s1;
    partial[((u64)chunks + blockIdx.y) * c + col] = s2;
}
extern "C" __global__ void bn_bwd_partial_f32(const float* x, const float* dy, const float* mean, const float* invstd, const float* gamma, const float* beta, u32 m, u32 c, u32 rpc, u32 act, u32 chunks, double* partial) { bn_bwd_partial(x, dy, mean, invstd, gamma, beta, m, c, rpc, act, chunks, partial); }
extern "C" __global__ void bn_bwd_partial_bf16(const bf16_t* x, const bf16_t* dy, const float* mean, const float* invstd, const float* gamma, const float* beta, u32 m, u32 c, u32 rpc, u32 act, u32 chunks, double* partial) { bn_bwd_partial(x, dy, mean, invstd, gamma, beta, m, c, rpc, act, chunks, partial); }

// dx (=): train: gamma*invstd/M * (M*dpre - sum_dpre - xhat*sum_dpre_xhat); eval: dpre*gamma*invstd.
// Grid-stride over M*C; reads x, dy, writes dx.
template <typename T>
__device__ void bn_bwd_input(const T* x, const T* dy, T* dx, const float* mean, const float* invstd,
                             const float* gamma, const float* beta, const float* sum_dy,
                             const float* sum_dy_xhat, u64 total, u32 m, u32 c, u32 train, u32 act) {
    float mf = (float)m;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c);
        float xhat = (to_f32(x[i]) - mean[ch]) * invstd[ch];
        float d = to_f32(dy[i]);
        if (act) d *= act_grad_f(xhat * gamma[ch] + beta[ch], act);
        float v = train ? gamma[ch] * invstd[ch] / mf * (mf * d - sum_dy[ch] - xhat * sum_dy_xhat[ch])
                        : d * gamma[ch] * invstd[ch];
        store(&dx[i], v);
    }
}
extern "C" __global__ void bn_bwd_input_f32(const float* x, const float* dy, float* dx, const float* mean, const float* invstd, const float* gamma, const float* beta, const float* sum_dy, const float* sum_dy_xhat, u64 total, u32 m, u32 c, u32 train, u32 act) { bn_bwd_input(x, dy, dx, mean, invstd, gamma, beta, sum_dy, sum_dy_xhat, total, m, c, train, act); }
extern "C" __global__ void bn_bwd_input_bf16(const bf16_t* x, const bf16_t* dy, bf16_t* dx, const float* mean, const float* invstd, const float* gamma, const float* beta, const float* sum_dy, const float* sum_dy_xhat, u64 total, u32 m, u32 c, u32 train, u32 act) { bn_bwd_input(x, dy, dx, mean, invstd, gamma, beta, sum_dy, sum_dy_xhat, total, m, c, train, act); }
