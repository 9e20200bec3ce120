// optim.cu: parameter updates on f32 master weights, the GPU twins of src/train/optim.rs
// (torch SGD, dampening 0, as timm's "sgd" builds it) and src/train/ema.rs (timm ModelEmaV2).
// Both are out of place (new buffers; inputs untouched), so a weight tensor shared with the
// EMA or cached on the host is never changed behind its back.
// Every product and sum is rounded separately (__fmul_rn/__fadd_rn/__fsub_rn: no FMA
// contraction) in the order the CPU code uses, so given the same inputs the GPU gives the same
// bits as the CPU.
// Thread mapping: grid-stride, one element per thread.
#include "common.cuh"

// Per element, as src/train/optim.rs:
//   d = g;  if (wd != 0) d = d + wd * w                        (decay group only: wd = 0 else)
//   if (momentum != 0):
//     buf' = first ? d : momentum * buf + d                      (torch: buf = d on the first step)
//     d = nesterov ? d + momentum * buf' : buf'
//   w' = w - lr * d
// `buf` is not read when `first` is set (it may be null then), nor `buf_out` written when
// momentum is 0. Reads w, g (, buf); writes w' (, buf'): 20 bytes per element.
extern "C" __global__ void sgd_nesterov_f32(const float* w, const float* g, const float* buf,
                                            float* w_out, float* buf_out, float lr,
                                            float momentum, float wd, int first, int nesterov,
                                            u64 n) {
    GRID_STRIDE(i, n) {
        float d = g[i];
        if (wd != 0.0f) d = __fadd_rn(d, __fmul_rn(wd, w[i]));
        if (momentum != 0.0f) {
            float b = first ? d : __fadd_rn(__fmul_rn(momentum, buf[i]), d);
            buf_out[i] = b;
            d = nesterov ? __fadd_rn(d, __fmul_rn(momentum, b)) : b;
        }
        w_out[i] = __fsub_rn(w[i], __fmul_rn(lr, d));
    }
}

// out = decay * ema + one_minus_decay * w (timm ModelEmaV2), over weights and BN buffers alike.
// `one_minus_decay` is passed in (the host computes 1 - decay in f64 and rounds it to f32, as
// src/train/ema.rs and PyTorch do; 1.0f - decay in f32 would differ in the last bits).
// Reads 2, writes 1 element.
extern "C" __global__ void ema_update_f32(const float* ema, const float* w, float* out,
                                          float decay, float one_minus_decay, u64 n) {
    GRID_STRIDE(i, n) out[i] = __fadd_rn(__fmul_rn(decay, ema[i]), __fmul_rn(one_minus_decay, w[i]));
}
