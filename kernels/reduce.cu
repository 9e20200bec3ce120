// reduce.cu: deterministic reductions (fixed order: same inputs -> same bits on every run).
// Two levels everywhere: blocks write f64 partials, one small kernel folds them. No atomics.
#include "common.cuh"

// partial[b] = sum of x over block b's grid-stride share (f64). Launch with blockDim 256 and
// exactly `gridDim.x` partial slots. Reads n elements once.
template <typename T> __device__ void sum_partial(const T* x, double* partial, u64 n) {
    __shared__ double scratch[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)to_f32(x[i]);
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
extern "C" __global__ void sum_partial_f32(const float* x, double* partial, u64 n) { sum_partial(x, partial, n); }
extern "C" __global__ void sum_partial_bf16(const bf16_t* x, double* partial, u64 n) { sum_partial(x, partial, n); }

// out[0] = scale * sum(partial[0..parts]). One block of 256 threads.
extern "C" __global__ void sum_finish(const double* partial, u32 parts, float scale, float* out) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) out[0] = (float)(acc * (double)scale);
}

// Column moments of a row-major (M, C) matrix (an NHWC tensor viewed as M = N*H*W rows):
// partial[chunk, c] = sum over the rows of `chunk` of (x - center[c])^power, power 1 or 2,
// center may be null (0). Thread mapping: blockIdx.y = row chunk, x threads = columns, so a
// warp reads 32 consecutive channels of one row (coalesced). Reads M*C elements once.
template <typename T>
__device__ void col_partial(const T* x, const float* center, u32 m, u32 c, u32 rows_per_chunk,
                            u32 power, double* partial) {
    u32 col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    u32 r0 = blockIdx.y * rows_per_chunk;
    u32 r1 = min(m, r0 + rows_per_chunk);
    double ctr = center ? (double)center[col] : 0.0;
    double acc = 0.0;
    for (u32 r = r0; r < r1; ++r) {
        double v = (double)to_f32(x[(u64)r * c + col]) - ctr;
        acc += power == 2 ? v * v : v;
    }
    partial[(u64)blockIdx.y * c + col] = acc;
}
extern "C" __global__ void col_partial_f32(const float* x, const float* center, u32 m, u32 c, u32 rpc, u32 power, double* partial) { col_partial(x, center, m, c, rpc, power, partial); }
extern "C" __global__ void col_partial_bf16(const bf16_t* x, const float* center, u32 m, u32 c, u32 rpc, u32 power, double* partial) { col_partial(x, center, m, c, rpc, power, partial); }

// out[c] = scale * sum over chunks of partial[chunk, c] (=). One thread per column.
extern "C" __global__ void col_finish(const double* partial, u32 chunks, u32 c, double scale, float* out) {
    u32 col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    double acc = 0.0;
    for (u32 k = 0; k < chunks; ++k) acc += partial[(u64)k * c + col];
    out[col] = (float)(acc * scale);
}
