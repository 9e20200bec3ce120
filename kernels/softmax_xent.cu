// softmax_xent.cu: row-wise (last axis) softmax / log-softmax and the soft-target
// cross-entropy fused with its gradient. Rows are the contiguous channel vectors of NHWC
// tensors or (N, classes) logits. Thread mapping: one block (256 threads) per row, threads
// stride over the columns; max and sum are block reductions. Each kernel reads its row twice
// (second read hits L1/L2) and writes once; nothing is stored between kernels but the output.
#include "common.cuh"

// y = softmax(z) or log_softmax(z) per row (log != 0). Reads z, writes y.
template <typename T>
__device__ void softmax_rows(const T* z, T* y, u32 cols, u32 log) {
    __shared__ float scratch[32];
    const T* zr = z + (u64)blockIdx.x * cols;
    T* yr = y + (u64)blockIdx.x * cols;
    float m = -MPM_FLT_MAX;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, to_f32(zr[j]));
    m = block_max(m, scratch);
    float s = 0.0f;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) s += expf(to_f32(zr[j]) - m);
    s = block_sum(s, scratch);
    float lse = m + logf(s);
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f32(zr[j]) - lse;
        store(&yr[j], log ? v : expf(v));
    }
}
extern "C" __global__ void softmax_rows_f32(const float* z, float* y, u32 cols, u32 log) { softmax_rows(z, y, cols, log); }
extern "C" __global__ void softmax_rows_bf16(const bf16_t* z, bf16_t* y, u32 cols, u32 log) { softmax_rows(z, y, cols, log); }

// dz = y * (dy - sum(dy * y)) for y = softmax(z) (=). Reads y, dy twice, writes dz.
template <typename T>
__device__ void softmax_bwd_rows(const T* y, const T* dy, T* dz, u32 cols) {
    __shared__ float scratch[32];
    u64 b = (u64)blockIdx.x * cols;
    float dot = 0.0f;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) dot += to_f32(y[b + j]) * to_f32(dy[b + j]);
    dot = block_sum(dot, scratch);
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x)
        store(&dz[b + j], to_f32(y[b + j]) * (to_f32(dy[b + j]) - dot));
}
extern "C" __global__ void softmax_bwd_rows_f32(const float* y, const float* dy, float* dz, u32 cols) { softmax_bwd_rows(y, dy, dz, cols); }
extern "C" __global__ void softmax_bwd_rows_bf16(const bf16_t* y, const bf16_t* dy, bf16_t* dz, u32 cols) { softmax_bwd_rows(y, dy, dz, cols); }

// Soft-target cross-entropy, fused: row_loss[r] = -sum_c t_c log softmax(z)_c and
// dz = (softmax(z) * sum(t) - t) * grad_scale (=; grad_scale = 1/rows for the mean). The
// probabilities are never stored. Reads z twice (L1), t twice, writes dz and one float per row.
template <typename T>
__device__ void soft_xent_rows(const T* z, const float* t, T* dz, float* row_loss, u32 cols, float grad_scale) {
    __shared__ float scratch[32];
    u64 b = (u64)blockIdx.x * cols;
    float m = -MPM_FLT_MAX;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, to_f32(z[b + j]));
    m = block_max(m, scratch);
    float s = 0.0f, tz = 0.0f, ts = 0.0f;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) {
        float zj = to_f32(z[b + j]), tj = t[b + j];
        s += expf(zj - m); tz += tj * zj; ts += tj;
    }
    s = block_sum(s, scratch); tz = block_sum(tz, scratch); ts = block_sum(ts, scratch);
    float lse = m + logf(s);
    if (threadIdx.x == 0) row_loss[blockIdx.x] = lse * ts - tz;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x)
        store(&dz[b + j], (expf(to_f32(z[b + j]) - lse) * ts - t[b + j]) * grad_scale);
}
extern "C" __global__ void soft_xent_rows_f32(const float* z, const float* t, float* dz, float* row_loss, u32 cols, float gs) { soft_xent_rows(z, t, dz, row_loss, cols, gs); }
extern "C" __global__ void soft_xent_rows_bf16(const bf16_t* z, const float* t, bf16_t* dz, float* row_loss, u32 cols, float gs) { soft_xent_rows(z, t, dz, row_loss, cols, gs); }

// Smoothed one-hot targets (timm): t (N, C) = off everywhere, on at the label. One thread per
// element. Labels >= C are counted in bad[0] and get no `on` entry (the launcher fails).
extern "C" __global__ void smoothed_one_hot(const u32* labels, float* t, u32 n, u32 c, float on, float off, u32* bad) {
    u64 total = (u64)n * c;
    GRID_STRIDE(i, total) {
        u32 r = (u32)(i / c), col = (u32)(i % c);
        u32 l = labels[r];
        if (col == 0 && l >= c) atomicAdd(bad, 1u);
        t[i] = l == col ? on : off;
    }
}

// Column sums of dy (M, C) for bias gradients live in reduce.cu (col_partial + col_finish).
