//! Max pooling (with argmax kept for backward) and adaptive average pooling, NHWC.

use rayon::prelude::*;

/// Max pool `k x k`, stride `s`, zero-free padding `p` (padded taps are ignored, as in
/// PyTorch). Returns `(y[N,OH,OW,C], argmax)` where `argmax` holds the flat input index of
/// the first maximum (PyTorch's tie rule: scan order kh, kw; NaN wins).
#[allow(clippy::too_many_arguments)]
pub fn max_pool_forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f32>, Vec<u32>, usize, usize) {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut y = vec![f32::NEG_INFINITY; n * oh * ow * c];
    let mut arg = vec![0u32; n * oh * ow * c];
    y.par_chunks_mut(ow * c)
        .zip(arg.par_chunks_mut(ow * c))
        .enumerate()
        .for_each(|(row, (yr, ar))| {
            let nn = row / oh;
            let oy = row % oh;
            for ox in 0..ow {
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - p as isize;
                        if ix < 0 || ix as usize >= w {
                            continue;
                        }
                        let base = ((nn * h + iy as usize) * w + ix as usize) * c;
                        // Selects over slices, not indexed branches: the loop vectorises.
                        let (yo, ao) =
                            (&mut yr[ox * c..(ox + 1) * c], &mut ar[ox * c..(ox + 1) * c]);
                        for (j, ((y, a), v)) in yo
                            .iter_mut()
                            .zip(ao.iter_mut())
                            .zip(&x[base..base + c])
                            .enumerate()
                        {
                            let take = *v > *y || v.is_nan();
                            *y = if take { *v } else { *y };
                            *a = if take { (base + j) as u32 } else { *a };
                        }
                    }
                }
            }
        });
    (y, arg, oh, ow)
}

/// Scatter `dy` to the argmax positions. Output windows overlap (k > s), so images are the
/// unit of parallelism (a window never crosses images).
pub fn max_pool_backward(dy: &[f32], arg: &[u32], in_numel: usize, n: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; in_numel];
    let img_in = in_numel / n.max(1);
    let img_out = dy.len() / n.max(1);
    dx.par_chunks_mut(img_in.max(1))
        .enumerate()
        .for_each(|(i, dxi)| {
            let base = i * img_in;
            for j in i * img_out..(i + 1) * img_out {
                dxi[arg[j] as usize - base] += dy[j];
            }
        });
    dx
}

/// PyTorch's adaptive window for output index `i`: `[floor(i*in/out), ceil((i+1)*in/out))`.
#[inline]
pub fn adaptive_window(i: usize, inp: usize, out: usize) -> (usize, usize) {
    let start = (i * inp) / out;
    let end = ((i + 1) * inp).div_ceil(out);
    (start, end)
}

pub fn adaptive_avg_pool_forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * oh * ow * c];
    y.par_chunks_mut(c).enumerate().for_each(|(pix, yr)| {
        let nn = pix / (oh * ow);
        let oy = (pix / ow) % oh;
        let ox = pix % ow;
        let (y0, y1) = adaptive_window(oy, h, oh);
        let (x0, x1) = adaptive_window(ox, w, ow);
        let mut acc = vec![0.0f64; c];
        for iy in y0..y1 {
            for ix in x0..x1 {
                let base = ((nn * h + iy) * w + ix) * c;
                for (a, v) in acc.iter_mut().zip(&x[base..base + c]) {
                    *a += *v as f64;
                }
            }
        }
        let cnt = ((y1 - y0) * (x1 - x0)) as f64;
        for (o, a) in yr.iter_mut().zip(acc) {
            *o = (a / cnt) as f32;
        }
    });
    y
}

pub fn adaptive_avg_pool_backward(
    dy: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let mut dx = vec![0.0f32; n * h * w * c];
    dx.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(nn, dxi)| {
            for oy in 0..oh {
                let (y0, y1) = adaptive_window(oy, h, oh);
                for ox in 0..ow {
                    let (x0, x1) = adaptive_window(ox, w, ow);
                    let cnt = ((y1 - y0) * (x1 - x0)) as f32;
                    let d = &dy[((nn * oh + oy) * ow + ox) * c..][..c];
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let t = &mut dxi[(iy * w + ix) * c..][..c];
                            for (a, b) in t.iter_mut().zip(d) {
                                *a += *b / cnt;
                            }
                        }
                    }
                }
            }
        });
    dx
}
