// elementwise.cu: one-pass element-wise kernels. GELU(erf) and ReLU forward/backward, add,
// scale, casts f32<->bf16, fill, ImageNet input normalisation and NCHW<->NHWC layout
// conversion (PyTorch layouts at the edges). Nothing is fused here: these are the unfused
// building blocks, and the `_slow` references of the fused kernels in bn_gelu.cu/conv_gelu.cu.
//
// Thread mapping (all kernels): grid-stride loop, one element per thread per iteration.
// Bytes moved per element: (reads + writes) * sizeof(T); stated per kernel below.
// Precondition: n < 2^63; pointers are device pointers of at least n elements.
#include "common.cuh"

// y = gelu(x). Reads 1, writes 1 element. CPU reference: cpu::elementwise::gelu_forward.
template <typename T> __device__ void gelu_fwd(const T* x, T* y, u64 n) {
    GRID_STRIDE(i, n) store(&y[i], gelu_f(to_f32(x[i])));
}
// dx = dy * gelu'(x) (=, not +=). Reads 2, writes 1.
template <typename T> __device__ void gelu_bwd(const T* x, const T* dy, T* dx, u64 n) {
    GRID_STRIDE(i, n) store(&dx[i], to_f32(dy[i]) * gelu_grad_f(to_f32(x[i])));
}
// y = max(x, 0). Reads 1, writes 1.
template <typename T> __device__ void relu_fwd(const T* x, T* y, u64 n) {
    GRID_STRIDE(i, n) store(&y[i], fmaxf(to_f32(x[i]), 0.0f));
}
// dx = x > 0 ? dy : 0 (=). Reads 2, writes 1.
template <typename T> __device__ void relu_bwd(const T* x, const T* dy, T* dx, u64 n) {
    GRID_STRIDE(i, n) store(&dx[i], to_f32(x[i]) > 0.0f ? to_f32(dy[i]) : 0.0f);
}
// y = a*x + b*z (add: a = b = 1; the tape's gradient accumulation: y = x, a = b = 1).
// Reads 2, writes 1. y may alias x or z (each thread reads before it writes its element).
template <typename T> __device__ void axpby(const T* x, const T* z, T* y, float a, float b, u64 n) {
    GRID_STRIDE(i, n) store(&y[i], a * to_f32(x[i]) + b * to_f32(z[i]));
}
// y = k*x. Reads 1, writes 1.
template <typename T> __device__ void scale(const T* x, T* y, float k, u64 n) {
    GRID_STRIDE(i, n) store(&y[i], k * to_f32(x[i]));
}

extern "C" __global__ void gelu_fwd_f32(const float* x, float* y, u64 n) { gelu_fwd(x, y, n); }
extern "C" __global__ void gelu_fwd_bf16(const bf16_t* x, bf16_t* y, u64 n) { gelu_fwd(x, y, n); }
extern "C" __global__ void gelu_bwd_f32(const float* x, const float* dy, float* dx, u64 n) { gelu_bwd(x, dy, dx, n); }
extern "C" __global__ void gelu_bwd_bf16(const bf16_t* x, const bf16_t* dy, bf16_t* dx, u64 n) { gelu_bwd(x, dy, dx, n); }
extern "C" __global__ void relu_fwd_f32(const float* x, float* y, u64 n) { relu_fwd(x, y, n); }
extern "C" __global__ void relu_fwd_bf16(const bf16_t* x, bf16_t* y, u64 n) { relu_fwd(x, y, n); }
extern "C" __global__ void relu_bwd_f32(const float* x, const float* dy, float* dx, u64 n) { relu_bwd(x, dy, dx, n); }
extern "C" __global__ void relu_bwd_bf16(const bf16_t* x, const bf16_t* dy, bf16_t* dx, u64 n) { relu_bwd(x, dy, dx, n); }
extern "C" __global__ void axpby_f32(const float* x, const float* z, float* y, float a, float b, u64 n) { axpby(x, z, y, a, b, n); }
extern "C" __global__ void axpby_bf16(const bf16_t* x, const bf16_t* z, bf16_t* y, float a, float b, u64 n) { axpby(x, z, y, a, b, n); }
extern "C" __global__ void scale_f32(const float* x, float* y, float k, u64 n) { scale(x, y, k, n); }
extern "C" __global__ void scale_bf16(const bf16_t* x, bf16_t* y, float k, u64 n) { scale(x, y, k, n); }

// Casts. f32 -> bf16 rounds to nearest even. Reads 4 or 2 bytes, writes 2 or 4 per element.
extern "C" __global__ void cast_f32_bf16(const float* x, bf16_t* y, u64 n) {
    GRID_STRIDE(i, n) store(&y[i], x[i]);
}
extern "C" __global__ void cast_bf16_f32(const bf16_t* x, float* y, u64 n) {
    GRID_STRIDE(i, n) y[i] = to_f32(x[i]);
}
// y[i] = v. Writes 1 element.
extern "C" __global__ void fill_f32(float* y, float v, u64 n) {
    GRID_STRIDE(i, n) y[i] = v;
}
// Plain copy, the bandwidth yardstick of mpm-bench (reads 1, writes 1 element of 16 bytes).
// Precondition: n16 counts 16-byte vectors; both pointers 16-byte aligned.
extern "C" __global__ void copy_v4(const float4* x, float4* y, u64 n16) {
    GRID_STRIDE(i, n16) y[i] = x[i];
}

// Input normalisation over the 3 channels of NHWC images: y = (x - mean_c) / std_c
// (backward: dx = dy / std_c, =). Reads 1, writes 1. Precondition: n % 3 == 0.
struct Norm3 { float mean[3]; float inv_std[3]; };
template <typename T> __device__ void normalize3_fwd(const float* x, T* y, Norm3 p, u64 n) {
    GRID_STRIDE(i, n) { int c = (int)(i % 3); store(&y[i], (x[i] - p.mean[c]) * p.inv_std[c]); }
}
extern "C" __global__ void normalize3_fwd_f32(const float* x, float* y, Norm3 p, u64 n) { normalize3_fwd(x, y, p, n); }
extern "C" __global__ void normalize3_fwd_bf16(const float* x, bf16_t* y, Norm3 p, u64 n) { normalize3_fwd(x, y, p, n); }
template <typename T> __device__ void normalize3_bwd(const T* dy, float* dx, Norm3 p, u64 n) {
    GRID_STRIDE(i, n) { int c = (int)(i % 3); dx[i] = to_f32(dy[i]) * p.inv_std[c]; }
}
extern "C" __global__ void normalize3_bwd_f32(const float* dy, float* dx, Norm3 p, u64 n) { normalize3_bwd(dy, dx, p, n); }
extern "C" __global__ void normalize3_bwd_bf16(const bf16_t* dy, float* dx, Norm3 p, u64 n) { normalize3_bwd(dy, dx, p, n); }

// Layout conversion (N, C, H, W) -> (N, H, W, C) and back, f32. One thread per output element
// (reads are strided by H*W in one direction: this runs at the edges only, once per batch).
// Reads 1, writes 1.
extern "C" __global__ void nchw_to_nhwc_f32(const float* x, float* y, u32 n, u32 c, u32 h, u32 w) {
    u64 total = (u64)n * c * h * w;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 xx = (u32)(r % w); r /= w; u32 yy = (u32)(r % h); u32 nn = (u32)(r / h);
        y[i] = x[(((u64)nn * c + ch) * h + yy) * w + xx];
    }
}
extern "C" __global__ void nhwc_to_nchw_f32(const float* x, float* y, u32 n, u32 c, u32 h, u32 w) {
    u64 total = (u64)n * c * h * w;
    GRID_STRIDE(i, total) {
        u32 xx = (u32)(i % w); u64 r = i / w; u32 yy = (u32)(r % h); r /= h; u32 ch = (u32)(r % c); u32 nn = (u32)(r / c);
        y[i] = x[(((u64)nn * h + yy) * w + xx) * c + ch];
    }
}
