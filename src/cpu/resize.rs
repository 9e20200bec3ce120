//! Bilinear resize with `align_corners=False` (PyTorch `F.interpolate(mode="bilinear")`,
//! no antialias), NHWC. Source coordinate: `max(0, (dst + 0.5) * in/out - 0.5)`; neighbours
//! `i0 = floor(src)`, `i1 = min(i0 + 1, in - 1)`, weight `src - i0`.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub l1: f32,
}

pub fn taps(inp: usize, out: usize) -> Vec<Tap> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(inp - 1);
            let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                l1: src - i0 as f32,
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn bilinear_forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let ty = taps(h, oh);
    let tx = taps(w, ow);
    let mut y = vec![0.0f32; n * oh * ow * c];
    y.par_chunks_mut(ow * c).enumerate().for_each(|(row, yr)| {
        let nn = row / oh;
        let t = ty[row % oh];
        let (r0, r1) = ((nn * h + t.i0) * w, (nn * h + t.i1) * w);
        for (ox, s) in tx.iter().enumerate() {
            let o = &mut yr[ox * c..(ox + 1) * c];
            let a = &x[(r0 + s.i0) * c..][..c];
            let b = &x[(r0 + s.i1) * c..][..c];
            let d = &x[(r1 + s.i0) * c..][..c];
            let e = &x[(r1 + s.i1) * c..][..c];
            let (h0, h1) = (1.0 - t.l1, t.l1);
            let (w0, w1) = (1.0 - s.l1, s.l1);
            for ch in 0..c {
                o[ch] = h0 * (w0 * a[ch] + w1 * b[ch]) + h1 * (w0 * d[ch] + w1 * e[ch]);
            }
        }
    });
    y
}

pub fn bilinear_backward(
    dy: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let ty = taps(h, oh);
    let tx = taps(w, ow);
    let mut dx = vec![0.0f32; n * h * w * c];
    dx.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(nn, dxi)| {
            for (oy, t) in ty.iter().enumerate() {
                for (ox, s) in tx.iter().enumerate() {
                    let d = &dy[((nn * oh + oy) * ow + ox) * c..][..c];
                    let (h0, h1) = (1.0 - t.l1, t.l1);
                    let (w0, w1) = (1.0 - s.l1, s.l1);
                    for (iy, wy) in [(t.i0, h0), (t.i1, h1)] {
                        for (ix, wx) in [(s.i0, w0), (s.i1, w1)] {
                            let f = wy * wx;
                            let tgt = &mut dxi[(iy * w + ix) * c..][..c];
                            for (a, b) in tgt.iter_mut().zip(d) {
                                *a += f * *b;
                            }
                        }
                    }
                }
            }
        });
    dx
}
