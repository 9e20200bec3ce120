//! PyTorch layouts at the edges. The engine keeps activations NHWC and conv weights OHWI;
//! PyTorch files hold NCHW activations and OIHW weights.

/// `[N, C, H, W]` -> `[N, H, W, C]`.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h * w {
                y[(b * h * w + i) * c + ch] = x[(b * c + ch) * h * w + i];
            }
        }
    }
    y
}

/// `[N, H, W, C]` -> `[N, C, H, W]`.
pub fn nhwc_to_nchw(x: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for i in 0..h * w {
            for ch in 0..c {
                y[(b * c + ch) * h * w + i] = x[(b * h * w + i) * c + ch];
            }
        }
    }
    y
}

/// Conv weight `[O, I, KH, KW]` -> `[O, KH, KW, I]`: the same permutation as NCHW -> NHWC.
pub fn oihw_to_ohwi(w: &[f32], shape: &[usize]) -> Vec<f32> {
    nchw_to_nhwc(w, shape[0], shape[1], shape[2], shape[3])
}

/// Conv weight `[O, KH, KW, I]` -> `[O, I, KH, KW]`.
pub fn ohwi_to_oihw(w: &[f32], shape_ohwi: &[usize]) -> Vec<f32> {
    let s = shape_ohwi;
    nhwc_to_nchw(w, s[0], s[1], s[2], s[3])
}

/// PyTorch shape `[O, I, KH, KW]` -> engine shape `[O, KH, KW, I]`.
pub fn ohwi_shape(oihw: &[usize]) -> Vec<usize> {
    vec![oihw[0], oihw[2], oihw[3], oihw[1]]
}
