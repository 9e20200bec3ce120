// optim.cu: parameter updates on f32 master weights (timm's "sgd" = torch SGD with Nesterov
// momentum, decoupled nothing: weight decay is added to the gradient) and the EMA of weights.
// Thread mapping: grid-stride, one element per thread.
#include "common.cuh"

// g' = g + wd * w;  buf = momentum * buf + g';  w -= lr * (g' + momentum * buf).
// (torch initialises buf = g' on the first step; with buf = 0 the formula gives the same.)
// Reads w, g, buf; writes w, buf: 20 bytes per element.
extern "C" __global__ void sgd_nesterov_f32(float* w, const float* g, float* buf, float lr,
                                            float momentum, float wd, u64 n) {
    GRID_STRIDE(i, n) {
        float gi = g[i] + wd * w[i];
        float b = momentum * buf[i] + gi;
        buf[i] = b;
        w[i] -= lr * (gi + momentum * b);
    }
}

// ema = decay * ema + (1 - decay) * w (timm ModelEmaV2). Reads 2, writes 1 element.
extern "C" __global__ void ema_update_f32(float* ema, const float* w, float decay, u64 n) {
    GRID_STRIDE(i, n) ema[i] = decay * ema[i] + (1.0f - decay) * w[i];
}
