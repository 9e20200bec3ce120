// resize.cu: bilinear resize, align_corners=False (PyTorch F.interpolate, no antialias), NHWC.
// Source coordinate max(0, (dst + 0.5) * in/out - 0.5), taps i0 = floor, i1 = min(i0+1, in-1),
// computed in f32 exactly as cpu::resize::taps.
#include "common.cuh"

__device__ __forceinline__ void tap(u32 d, u32 in, u32 out, u32* i0, u32* i1, float* l1) {
    float scale = (float)in / (float)out;
    float src = fmaxf(((float)d + 0.5f) * scale - 0.5f, 0.0f);
    u32 a = min((u32)floorf(src), in - 1);
    *i0 = a; *i1 = a < in - 1 ? a + 1 : a; *l1 = src - (float)a;
}

// y (N, OH, OW, C). One thread per output; reads 4 inputs (neighbouring threads share them
// through L1), writes 1.
template <typename T>
__device__ void bilinear_fwd(const T* x, T* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) {
    u64 total = (u64)n * oh * ow * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ox = (u32)(r % ow); r /= ow; u32 oy = (u32)(r % oh); u32 nn = (u32)(r / oh);
        u32 y0, y1, x0, x1; float ly, lx;
        tap(oy, h, oh, &y0, &y1, &ly); tap(ox, w, ow, &x0, &x1, &lx);
        u64 b = (u64)nn * h;
        float a = to_f32(x[((b + y0) * w + x0) * c + ch]), bb = to_f32(x[((b + y0) * w + x1) * c + ch]);
        float d = to_f32(x[((b + y1) * w + x0) * c + ch]), e = to_f32(x[((b + y1) * w + x1) * c + ch]);
        float h0 = 1.0f - ly, w0 = 1.0f - lx;
        store(&y[i], h0 * (w0 * a + lx * bb) + ly * (w0 * d + lx * e));
    }
}
extern "C" __global__ void bilinear_fwd_f32(const float* x, float* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { bilinear_fwd(x, y, n, h, w, c, oh, ow); }
extern "C" __global__ void bilinear_fwd_bf16(const bf16_t* x, bf16_t* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { bilinear_fwd(x, y, n, h, w, c, oh, ow); }

// dx (N, H, W, C) += scatter of dy with the 4 tap weights (atomicAdd, f32 only: the caller
// zeroes dx first). One thread per dy element; reads 1, 4 atomic read-modify-writes.
// Float atomics make the summation order vary between runs (last-bit differences only).
extern "C" __global__ void bilinear_bwd_f32(const float* dy, float* dx, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) {
    u64 total = (u64)n * oh * ow * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ox = (u32)(r % ow); r /= ow; u32 oy = (u32)(r % oh); u32 nn = (u32)(r / oh);
        u32 y0, y1, x0, x1; float ly, lx;
        tap(oy, h, oh, &y0, &y1, &ly); tap(ox, w, ow, &x0, &x1, &lx);
        float d = dy[i], h0 = 1.0f - ly, w0 = 1.0f - lx;
        u64 b = (u64)nn * h;
        atomicAdd(&dx[((b + y0) * w + x0) * c + ch], h0 * w0 * d);
        atomicAdd(&dx[((b + y0) * w + x1) * c + ch], h0 * lx * d);
        atomicAdd(&dx[((b + y1) * w + x0) * c + ch], ly * w0 * d);
        atomicAdd(&dx[((b + y1) * w + x1) * c + ch], ly * lx * d);
    }
}
