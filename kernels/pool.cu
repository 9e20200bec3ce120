// pool.cu: max pooling (argmax kept for backward) and adaptive average pooling, NHWC.
// Backward kernels gather (each input element sums the outputs that chose it), so they need no
// atomics and are deterministic; they write (=) dx.
#include "common.cuh"

// y (N, OH, OW, C), arg (N, OH, OW, C) = flat input index of the first maximum in (ky, kx) scan
// order, NaN wins (PyTorch's rule; cpu::pool::max_pool_forward). One thread per output.
// Reads k*k inputs (L1/L2 hits for neighbours), writes 1 value + 1 index.
template <typename T>
__device__ void maxpool_fwd(const T* x, T* y, u32* arg, u32 n, u32 h, u32 w, u32 c, u32 k, u32 s,
                            u32 pad, u32 oh, u32 ow) {
    u64 total = (u64)n * oh * ow * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ox = (u32)(r % ow); r /= ow; u32 oy = (u32)(r % oh); u32 nn = (u32)(r / oh);
        float best = -__int_as_float(0x7f800000); u32 besti = 0;
        for (u32 ky = 0; ky < k; ++ky) {
            int iy = (int)(oy * s + ky) - (int)pad;
            if (iy < 0 || iy >= (int)h) continue;
            for (u32 kx = 0; kx < k; ++kx) {
                int ix = (int)(ox * s + kx) - (int)pad;
                if (ix < 0 || ix >= (int)w) continue;
                u64 idx = (((u64)nn * h + iy) * w + ix) * c + ch;
                float v = to_f32(x[idx]);
                if (v > best || v != v) { best = v; besti = (u32)idx; }  // same rule as the CPU
            }
        }
        store(&y[i], best);
        arg[i] = besti;
    }
}
extern "C" __global__ void maxpool_fwd_f32(const float* x, float* y, u32* arg, u32 n, u32 h, u32 w, u32 c, u32 k, u32 s, u32 pad, u32 oh, u32 ow) { maxpool_fwd(x, y, arg, n, h, w, c, k, s, pad, oh, ow); }
extern "C" __global__ void maxpool_fwd_bf16(const bf16_t* x, bf16_t* y, u32* arg, u32 n, u32 h, u32 w, u32 c, u32 k, u32 s, u32 pad, u32 oh, u32 ow) { maxpool_fwd(x, y, arg, n, h, w, c, k, s, pad, oh, ow); }

// dx (N, H, W, C) (=): for each input element, the sum of dy over the (at most
// ceil(k/s)^2) output windows that contain it and whose argmax is this element.
template <typename T>
__device__ void maxpool_bwd(const T* dy, const u32* arg, T* dx, u32 n, u32 h, u32 w, u32 c, u32 k,
                            u32 s, u32 pad, u32 oh, u32 ow) {
    u64 total = (u64)n * h * w * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ix = (u32)(r % w); r /= w; u32 iy = (u32)(r % h); u32 nn = (u32)(r / h);
        // outputs oy with oy*s - pad <= iy < oy*s - pad + k
        int py = (int)iy + (int)pad, px = (int)ix + (int)pad;
        int oy0 = py - (int)k + 1; oy0 = oy0 < 0 ? 0 : (oy0 + (int)s - 1) / (int)s;
        int ox0 = px - (int)k + 1; ox0 = ox0 < 0 ? 0 : (ox0 + (int)s - 1) / (int)s;
        int oy1 = min(py / (int)s, (int)oh - 1), ox1 = min(px / (int)s, (int)ow - 1);
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                u64 o = (((u64)nn * oh + oy) * ow + ox) * c + ch;
                if (arg[o] == (u32)i) acc += to_f32(dy[o]);
            }
        store(&dx[i], acc);
    }
}
extern "C" __global__ void maxpool_bwd_f32(const float* dy, const u32* arg, float* dx, u32 n, u32 h, u32 w, u32 c, u32 k, u32 s, u32 pad, u32 oh, u32 ow) { maxpool_bwd(dy, arg, dx, n, h, w, c, k, s, pad, oh, ow); }
extern "C" __global__ void maxpool_bwd_bf16(const bf16_t* dy, const u32* arg, bf16_t* dx, u32 n, u32 h, u32 w, u32 c, u32 k, u32 s, u32 pad, u32 oh, u32 ow) { maxpool_bwd(dy, arg, dx, n, h, w, c, k, s, pad, oh, ow); }

// PyTorch adaptive window [floor(i*in/out), ceil((i+1)*in/out)).
__device__ __forceinline__ void awin(u32 i, u32 in, u32 out, u32* a, u32* b) {
    *a = (i * in) / out;
    *b = ((i + 1) * in + out - 1) / out;
}

// y (N, OH, OW, C) = window means (f32 accumulation). One thread per output; reads the window.
template <typename T>
__device__ void avgpool_fwd(const T* x, T* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) {
    u64 total = (u64)n * oh * ow * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ox = (u32)(r % ow); r /= ow; u32 oy = (u32)(r % oh); u32 nn = (u32)(r / oh);
        u32 y0, y1, x0, x1; awin(oy, h, oh, &y0, &y1); awin(ox, w, ow, &x0, &x1);
        double acc = 0.0;
        for (u32 iy = y0; iy < y1; ++iy)
            for (u32 ix = x0; ix < x1; ++ix) acc += (double)to_f32(x[(((u64)nn * h + iy) * w + ix) * c + ch]);
        store(&y[i], (float)(acc / (double)((y1 - y0) * (x1 - x0))));
    }
}
extern "C" __global__ void avgpool_fwd_f32(const float* x, float* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { avgpool_fwd(x, y, n, h, w, c, oh, ow); }
extern "C" __global__ void avgpool_fwd_bf16(const bf16_t* x, bf16_t* y, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { avgpool_fwd(x, y, n, h, w, c, oh, ow); }

// dx (=): sum over the output cells whose window holds this input of dy / window size.
// Loops over all OH*OW cells: meant for small outputs (global pool 1x1, two-stage 4x4).
template <typename T>
__device__ void avgpool_bwd(const T* dy, T* dx, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) {
    u64 total = (u64)n * h * w * c;
    GRID_STRIDE(i, total) {
        u32 ch = (u32)(i % c); u64 r = i / c; u32 ix = (u32)(r % w); r /= w; u32 iy = (u32)(r % h); u32 nn = (u32)(r / h);
        float acc = 0.0f;
        for (u32 oy = 0; oy < oh; ++oy) {
            u32 y0, y1; awin(oy, h, oh, &y0, &y1);
            if (iy < y0 || iy >= y1) continue;
            for (u32 ox = 0; ox < ow; ++ox) {
                u32 x0, x1; awin(ox, w, ow, &x0, &x1);
                if (ix < x0 || ix >= x1) continue;
                float cnt = (float)((y1 - y0) * (x1 - x0));
                acc += to_f32(dy[(((u64)nn * oh + oy) * ow + ox) * c + ch]) / cnt;
            }
        }
        store(&dx[i], acc);
    }
}
extern "C" __global__ void avgpool_bwd_f32(const float* dy, float* dx, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { avgpool_bwd(dy, dx, n, h, w, c, oh, ow); }
extern "C" __global__ void avgpool_bwd_bf16(const bf16_t* dy, bf16_t* dx, u32 n, u32 h, u32 w, u32 c, u32 oh, u32 ow) { avgpool_bwd(dy, dx, n, h, w, c, oh, ow); }
