// mask_targets.cu: segmentation soft targets straight from a 16-bit label map (DESIGN.md §1):
// nearest resize of the (N, H, W) label map to the base grid (28x28), one-hot over S with
// label smoothing (on = 1 - s + s/S, off = s/S), then bilinear (align_corners=False) resize of
// that one-hot to the coarser levels (14x14, 7x7). Written straight into NHWC targets.
//
// Neither the one-hot nor the nearest-resized map is materialised: an output pixel of a
// bilinear level has 4 taps on the base grid; each tap's label comes from the full-resolution
// map by the nearest rule, so channel c gets off + (on - off) * sum(tap weights with label c).
// Nearest rule (PyTorch mode="nearest"): src = min(floor(dst * (in/out)), in - 1), f32 scale.
//
// Thread mapping: one block (128 threads) per output pixel, threads stride over S channels.
// Bytes: each block reads <= 4 labels (2 bytes each) and writes S * sizeof(T); the write of the
// targets is the whole cost (N*28*28*S*4 bytes = 2.7 GB in f32 at N=256, S=3311).
// Labels >= S are counted in bad[0] (and treated as absent); the launcher reports them.
#include "common.cuh"

__device__ __forceinline__ u32 nearest_src(u32 dst, u32 in, u32 out) {
    float scale = (float)in / (float)out;
    return min((u32)floorf((float)dst * scale), in - 1);
}
__device__ __forceinline__ void tap(u32 d, u32 in, u32 out, u32* i0, u32* i1, float* l1) {
    float scale = (float)in / (float)out;
    float src = fmaxf(((float)d + 0.5f) * scale - 0.5f, 0.0f);
    u32 a = min((u32)floorf(src), in - 1);
    *i0 = a; *i1 = a < in - 1 ? a + 1 : a; *l1 = src - (float)a;
}

// Base level: out (N, BH, BW, S). grid = N*BH*BW blocks.
template <typename T>
__device__ void mask_nearest(const unsigned short* labels, T* out, u32 h, u32 w, u32 bh, u32 bw,
                             u32 s, float on, float off, u32* bad) {
    u32 pix = blockIdx.x;
    u32 bx = pix % bw, by = (pix / bw) % bh, n = pix / (bw * bh);
    u32 l = labels[((u64)n * h + nearest_src(by, h, bh)) * w + nearest_src(bx, w, bw)];
    if (threadIdx.x == 0 && l >= s) atomicAdd(bad, 1u);
    T* o = out + (u64)pix * s;
    for (u32 c = threadIdx.x; c < s; c += blockDim.x) store(&o[c], c == l ? on : off);
}
extern "C" __global__ void mask_nearest_f32(const unsigned short* labels, float* out, u32 h, u32 w, u32 bh, u32 bw, u32 s, float on, float off, u32* bad) { mask_nearest(labels, out, h, w, bh, bw, s, on, off, bad); }
extern "C" __global__ void mask_nearest_bf16(const unsigned short* labels, bf16_t* out, u32 h, u32 w, u32 bh, u32 bw, u32 s, float on, float off, u32* bad) { mask_nearest(labels, out, h, w, bh, bw, s, on, off, bad); }

// Bilinear level: out (N, OH, OW, S) = bilinear resize of the base level's one-hot
// (BH x BW), computed from the label map. grid = N*OH*OW blocks.
template <typename T>
__device__ void mask_bilinear(const unsigned short* labels, T* out, u32 h, u32 w, u32 bh, u32 bw,
                              u32 oh, u32 ow, u32 s, float on, float off) {
    u32 pix = blockIdx.x;
    u32 ox = pix % ow, oy = (pix / ow) % oh, n = pix / (ow * oh);
    u32 y0, y1, x0, x1; float ly, lx;
    tap(oy, bh, oh, &y0, &y1, &ly); tap(ox, bw, ow, &x0, &x1, &lx);
    u32 ys[2] = {y0, y1}, xs[2] = {x0, x1};
    float wy[2] = {1.0f - ly, ly}, wx[2] = {1.0f - lx, lx};
    u32 lab[4];
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
            lab[a * 2 + b] = labels[((u64)n * h + nearest_src(ys[a], h, bh)) * w + nearest_src(xs[b], w, bw)];
    T* o = out + (u64)pix * s;
    for (u32 c = threadIdx.x; c < s; c += blockDim.x) {
        // Same association as the CPU bilinear: h0*(w0*a + w1*b) + h1*(w0*d + w1*e).
        float v00 = lab[0] == c ? on : off, v01 = lab[1] == c ? on : off;
        float v10 = lab[2] == c ? on : off, v11 = lab[3] == c ? on : off;
        store(&o[c], wy[0] * (wx[0] * v00 + wx[1] * v01) + wy[1] * (wx[0] * v10 + wx[1] * v11));
    }
}
extern "C" __global__ void mask_bilinear_f32(const unsigned short* labels, float* out, u32 h, u32 w, u32 bh, u32 bw, u32 oh, u32 ow, u32 s, float on, float off) { mask_bilinear(labels, out, h, w, bh, bw, oh, ow, s, on, off); }
extern "C" __global__ void mask_bilinear_bf16(const unsigned short* labels, bf16_t* out, u32 h, u32 w, u32 bh, u32 bw, u32 oh, u32 ow, u32 s, float on, float off) { mask_bilinear(labels, out, h, w, bh, bw, oh, ow, s, on, off); }
