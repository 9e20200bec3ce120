//! 2-D convolution on NHWC activations with OHWI weights (`[O, KH, KW, C/groups]`).
//!
//! Algorithm: im2col + GEMM. A column row holds, for one output pixel, the `KH*KW*Cg` input
//! values it sees in (kh, kw, c) order, which is exactly the layout of one weight row, so
//! `out[M, O] = cols[M, KKC] * w[O, KKC]^T` with M = N*OH*OW. A 1x1/stride-1/no-padding conv
//! needs no im2col at all (NHWC input already is the column matrix). Depthwise convs
//! (groups = C = O) use direct loops: their GEMMs would be 1 column wide.
//! Backward: dx = col2im(dout * w), dw = dout^T * cols (cols recomputed, not stored).

use super::gemm::{matmul, MatRef};
use rayon::prelude::*;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub dilation: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Upper bound on im2col buffer size (floats) before the batch is processed in chunks.
const COLS_BUDGET: usize = 1 << 25;

impl ConvGeom {
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    pub fn og(&self) -> usize {
        self.o / self.groups
    }
    pub fn kkc(&self) -> usize {
        self.kh * self.kw * self.cg()
    }
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0 && self.groups == 1
    }
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c && self.o == self.c
    }
    fn pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// Images per chunk so that the column buffer stays within budget.
    fn chunk_images(&self) -> usize {
        let per = self.pixels() * self.kkc();
        (COLS_BUDGET / per.max(1)).clamp(1, self.n.max(1))
    }
    /// Input coordinate seen by output `oy` and kernel tap `ky`, if inside the image.
    #[inline]
    fn src(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        let v = (o * self.stride + k * self.dilation) as isize - self.pad as isize;
        if v >= 0 && (v as usize) < size {
            Some(v as usize)
        } else {
            None
        }
    }
}

/// The input columns `ix0..ix0 + kw` seen by output column `ox` when all of them lie inside
/// the image and the kernel row is contiguous in memory (dilation 1, every channel in one
/// group): then one copy moves the whole kernel row, `kw * c` values, instead of `kw` copies
/// of `c` (for the narrow layers of a ResNet a call per 16 or 64 values was most of im2col).
#[inline]
fn whole_row(g: &ConvGeom, ox: usize) -> Option<usize> {
    let ix0 = (ox * g.stride) as isize - g.pad as isize;
    (g.dilation == 1 && g.groups == 1 && ix0 >= 0 && ix0 as usize + g.kw <= g.w)
        .then_some(ix0 as usize)
}

/// im2col for images `n0..n0+nc`, channels `c0..c0+cg` -> rows `[nc*OH*OW, KH*KW*cg]`.
fn im2col(g: &ConvGeom, x: &[f32], n0: usize, nc: usize, c0: usize, cols: &mut [f32]) {
    let cg = g.cg();
    let kkc = g.kkc();
    let krow = g.kw * cg;
    cols[..nc * g.pixels() * kkc]
        .par_chunks_mut(g.ow * kkc)
        .enumerate()
        .for_each(|(row, out)| {
            let n = n0 + row / g.oh;
            let oy = row % g.oh;
            for ox in 0..g.ow {
                let dst = &mut out[ox * kkc..(ox + 1) * kkc];
                let whole = whole_row(g, ox);
                for ky in 0..g.kh {
                    let iy = g.src(oy, ky, g.h);
                    let drow = &mut dst[ky * krow..(ky + 1) * krow];
                    match (iy, whole) {
                        (None, _) => drow.fill(0.0),
                        (Some(iy), Some(ix0)) => {
                            let s = ((n * g.h + iy) * g.w + ix0) * g.c;
                            drow.copy_from_slice(&x[s..s + krow]);
                        }
                        (Some(iy), None) => {
                            for kx in 0..g.kw {
                                let d = &mut drow[kx * cg..(kx + 1) * cg];
                                match g.src(ox, kx, g.w) {
                                    Some(ix) => {
                                        let s = ((n * g.h + iy) * g.w + ix) * g.c + c0;
                                        d.copy_from_slice(&x[s..s + cg]);
                                    }
                                    None => d.fill(0.0),
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// col2im (scatter-add) for images `n0..n0+nc`, channels `c0..c0+cg` into `dx`.
fn col2im(g: &ConvGeom, cols: &[f32], n0: usize, nc: usize, c0: usize, dx: &mut [f32]) {
    let cg = g.cg();
    let kkc = g.kkc();
    let krow = g.kw * cg;
    let img = g.h * g.w * g.c;
    let add = |d: &mut [f32], s: &[f32]| {
        for (a, b) in d.iter_mut().zip(s) {
            *a += *b;
        }
    };
    dx[n0 * img..(n0 + nc) * img]
        .par_chunks_mut(img)
        .enumerate()
        .for_each(|(i, dximg)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let row = (i * g.oh + oy) * g.ow + ox;
                    let src = &cols[row * kkc..(row + 1) * kkc];
                    let whole = whole_row(g, ox);
                    for ky in 0..g.kh {
                        let Some(iy) = g.src(oy, ky, g.h) else {
                            continue;
                        };
                        let srow = &src[ky * krow..(ky + 1) * krow];
                        if let Some(ix0) = whole {
                            add(&mut dximg[(iy * g.w + ix0) * g.c..][..krow], srow);
                            continue;
                        }
                        for kx in 0..g.kw {
                            let Some(ix) = g.src(ox, kx, g.w) else {
                                continue;
                            };
                            let s = &srow[kx * cg..(kx + 1) * cg];
                            add(&mut dximg[(iy * g.w + ix) * g.c + c0..][..cg], s);
                        }
                    }
                }
            }
        });
}

/// Copies columns `c0..c0+w` of a row-major `[m, total]` matrix into a dense `[m, w]`.
fn take_cols(src: &[f32], m: usize, total: usize, c0: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * w];
    out.par_chunks_mut(w.max(1))
        .zip(src.par_chunks(total))
        .for_each(|(d, s)| d.copy_from_slice(&s[c0..c0 + w]));
    out
}

/// Group `grp`'s `og` columns of `dy[m, O]`: the matrix itself when there is one group.
fn group_cols<'a>(g: &ConvGeom, dy: &'a [f32], m: usize, grp: usize) -> Cow<'a, [f32]> {
    if g.groups == 1 {
        Cow::Borrowed(dy)
    } else {
        Cow::Owned(take_cols(dy, m, g.o, grp * g.og(), g.og()))
    }
}

fn put_cols(dst: &mut [f32], total: usize, c0: usize, w: usize, src: &[f32]) {
    dst.par_chunks_mut(total)
        .zip(src.par_chunks(w.max(1)))
        .for_each(|(d, s)| d[c0..c0 + w].copy_from_slice(s));
}

/// Forward: `y[N,OH,OW,O] = conv(x[N,H,W,C], w[O,KH,KW,Cg]) + bias`.
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let m_all = g.n * g.pixels();
    let mut y = vec![0.0f32; m_all * g.o];
    if g.is_depthwise() {
        depthwise_forward(g, x, w, &mut y);
    } else if g.is_pointwise() {
        matmul(
            MatRef::new(x, m_all, g.c),
            MatRef::t(w, g.c, g.o),
            &mut y,
            false,
        );
    } else {
        let (cg, og, kkc) = (g.cg(), g.og(), g.kkc());
        let chunk = g.chunk_images();
        let mut cols = vec![0.0f32; chunk * g.pixels() * kkc];
        for n0 in (0..g.n).step_by(chunk) {
            let nc = chunk.min(g.n - n0);
            let m = nc * g.pixels();
            let ydst = &mut y[n0 * g.pixels() * g.o..(n0 + nc) * g.pixels() * g.o];
            for grp in 0..g.groups {
                im2col(g, x, n0, nc, grp * cg, &mut cols);
                let wg = &w[grp * og * kkc..(grp + 1) * og * kkc];
                if g.groups == 1 {
                    matmul(
                        MatRef::new(&cols, m, kkc),
                        MatRef::t(wg, kkc, og),
                        ydst,
                        false,
                    );
                } else {
                    let mut tmp = vec![0.0f32; m * og];
                    matmul(
                        MatRef::new(&cols, m, kkc),
                        MatRef::t(wg, kkc, og),
                        &mut tmp,
                        false,
                    );
                    put_cols(ydst, g.o, grp * og, og, &tmp);
                }
            }
        }
    }
    if let Some(b) = bias {
        y.par_chunks_mut(g.o).for_each(|row| {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += *bb;
            }
        });
    }
    y
}

/// Backward to the input: `dx[N,H,W,C]` from `dy[N,OH,OW,O]`.
pub fn conv2d_backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let m_all = g.n * g.pixels();
    let mut dx = vec![0.0f32; g.n * g.h * g.w * g.c];
    if g.is_depthwise() {
        depthwise_backward_input(g, dy, w, &mut dx);
        return dx;
    }
    if g.is_pointwise() {
        matmul(
            MatRef::new(dy, m_all, g.o),
            MatRef::new(w, g.o, g.c),
            &mut dx,
            false,
        );
        return dx;
    }
    let (cg, og, kkc) = (g.cg(), g.og(), g.kkc());
    let chunk = g.chunk_images();
    let mut cols = vec![0.0f32; chunk * g.pixels() * kkc];
    for n0 in (0..g.n).step_by(chunk) {
        let nc = chunk.min(g.n - n0);
        let m = nc * g.pixels();
        let dyc = &dy[n0 * g.pixels() * g.o..(n0 + nc) * g.pixels() * g.o];
        for grp in 0..g.groups {
            let wg = &w[grp * og * kkc..(grp + 1) * og * kkc];
            let dyg = group_cols(g, dyc, m, grp);
            matmul(
                MatRef::new(&dyg, m, og),
                MatRef::new(wg, og, kkc),
                &mut cols,
                false,
            );
            col2im(g, &cols, n0, nc, grp * cg, &mut dx);
        }
    }
    dx
}

/// Backward to the weights: `dw[O,KH,KW,Cg]`.
pub fn conv2d_backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let m_all = g.n * g.pixels();
    let mut dw = vec![0.0f32; g.o * g.kkc()];
    if g.is_depthwise() {
        depthwise_backward_weight(g, x, dy, &mut dw);
        return dw;
    }
    if g.is_pointwise() {
        matmul(
            MatRef::t(dy, g.o, m_all),
            MatRef::new(x, m_all, g.c),
            &mut dw,
            false,
        );
        return dw;
    }
    let (cg, og, kkc) = (g.cg(), g.og(), g.kkc());
    let chunk = g.chunk_images();
    let mut cols = vec![0.0f32; chunk * g.pixels() * kkc];
    for n0 in (0..g.n).step_by(chunk) {
        let nc = chunk.min(g.n - n0);
        let m = nc * g.pixels();
        let dyc = &dy[n0 * g.pixels() * g.o..(n0 + nc) * g.pixels() * g.o];
        for grp in 0..g.groups {
            im2col(g, x, n0, nc, grp * cg, &mut cols);
            let dwg = &mut dw[grp * og * kkc..(grp + 1) * og * kkc];
            let dyg = group_cols(g, dyc, m, grp);
            matmul(
                MatRef::t(&dyg, og, m),
                MatRef::new(&cols, m, kkc),
                dwg,
                true,
            );
        }
    }
    dw
}

/// Bias gradient: sum of `dy` over all output pixels.
pub fn conv2d_backward_bias(g: &ConvGeom, dy: &[f32]) -> Vec<f32> {
    sum_rows(dy, g.o)
}

/// Column sums of a row-major `[m, cols]` matrix, in f64 then rounded.
pub fn sum_rows(a: &[f32], cols: usize) -> Vec<f32> {
    let acc = a
        .par_chunks(cols * 256)
        .map(|chunk| {
            let mut s = vec![0.0f64; cols];
            for row in chunk.chunks(cols) {
                for (a, b) in s.iter_mut().zip(row) {
                    *a += *b as f64;
                }
            }
            s
        })
        .reduce(
            || vec![0.0f64; cols],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        );
    acc.into_iter().map(|v| v as f32).collect()
}

// Depthwise (groups = C = O): each channel convolved with its own KHxKW filter.
// Thread mapping: one output row (n, oy) per rayon task; inner loop over channels is
// contiguous in NHWC, so loads of x, w and stores of y are unit-stride.

fn depthwise_forward(g: &ConvGeom, x: &[f32], w: &[f32], y: &mut [f32]) {
    let c = g.c;
    // Weights as [KH, KW, C] so the inner loop is contiguous.
    let wt = transpose_dw(g, w);
    y.par_chunks_mut(g.ow * c)
        .enumerate()
        .for_each(|(row, out)| {
            let n = row / g.oh;
            let oy = row % g.oh;
            for ox in 0..g.ow {
                let o = &mut out[ox * c..(ox + 1) * c];
                for ky in 0..g.kh {
                    let Some(iy) = g.src(oy, ky, g.h) else {
                        continue;
                    };
                    for kx in 0..g.kw {
                        let Some(ix) = g.src(ox, kx, g.w) else {
                            continue;
                        };
                        let xs = &x[((n * g.h + iy) * g.w + ix) * c..][..c];
                        let ws = &wt[(ky * g.kw + kx) * c..][..c];
                        for ((a, b), cc) in o.iter_mut().zip(xs).zip(ws) {
                            *a += *b * *cc;
                        }
                    }
                }
            }
        });
}

fn depthwise_backward_input(g: &ConvGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let c = g.c;
    let wt = transpose_dw(g, w);
    let img = g.h * g.w * c;
    dx.par_chunks_mut(img).enumerate().for_each(|(n, dximg)| {
        for oy in 0..g.oh {
            for ky in 0..g.kh {
                let Some(iy) = g.src(oy, ky, g.h) else {
                    continue;
                };
                for ox in 0..g.ow {
                    let d = &dy[((n * g.oh + oy) * g.ow + ox) * c..][..c];
                    for kx in 0..g.kw {
                        let Some(ix) = g.src(ox, kx, g.w) else {
                            continue;
                        };
                        let ws = &wt[(ky * g.kw + kx) * c..][..c];
                        let t = &mut dximg[(iy * g.w + ix) * c..][..c];
                        for ((a, b), cc) in t.iter_mut().zip(d).zip(ws) {
                            *a += *b * *cc;
                        }
                    }
                }
            }
        }
    });
}

fn depthwise_backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let c = g.c;
    let taps = g.kh * g.kw;
    // Per image partial sums in [KH, KW, C], reduced in f64.
    let acc = (0..g.n)
        .into_par_iter()
        .map(|n| {
            let mut s = vec![0.0f64; taps * c];
            for oy in 0..g.oh {
                for ky in 0..g.kh {
                    let Some(iy) = g.src(oy, ky, g.h) else {
                        continue;
                    };
                    for ox in 0..g.ow {
                        let d = &dy[((n * g.oh + oy) * g.ow + ox) * c..][..c];
                        for kx in 0..g.kw {
                            let Some(ix) = g.src(ox, kx, g.w) else {
                                continue;
                            };
                            let xs = &x[((n * g.h + iy) * g.w + ix) * c..][..c];
                            let t = &mut s[(ky * g.kw + kx) * c..][..c];
                            for ((a, b), cc) in t.iter_mut().zip(d).zip(xs) {
                                *a += (*b * *cc) as f64;
                            }
                        }
                    }
                }
            }
            s
        })
        .reduce(
            || vec![0.0f64; taps * c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        );
    // Back to [C, KH, KW, 1].
    for ch in 0..c {
        for t in 0..taps {
            dw[ch * taps + t] = acc[t * c + ch] as f32;
        }
    }
}

/// `[C, KH, KW, 1]` -> `[KH, KW, C]`.
fn transpose_dw(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let taps = g.kh * g.kw;
    let mut wt = vec![0.0; taps * g.c];
    for ch in 0..g.c {
        for t in 0..taps {
            wt[t * g.c + ch] = w[ch * taps + t];
        }
    }
    wt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(
        n: usize,
        hw: (usize, usize),
        c: usize,
        o: usize,
        k: usize,
        sp: (usize, usize),
        dg: (usize, usize),
    ) -> ConvGeom {
        let (h, w) = hw;
        let (stride, pad) = sp;
        let (dilation, groups) = dg;
        let span = dilation * (k - 1) + 1;
        ConvGeom {
            n,
            h,
            w,
            c,
            o,
            kh: k,
            kw: k,
            stride,
            pad,
            dilation,
            groups,
            oh: (h + 2 * pad - span) / stride + 1,
            ow: (w + 2 * pad - span) / stride + 1,
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5
            })
            .collect()
    }

    /// Direct loops over every (output, tap, channel) triple inside the image: the forward
    /// value `y` and, for output gradient `dy`, the input gradient `dx` it scatters back.
    fn direct(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (cg, og) = (g.cg(), g.og());
        let mut y = vec![0.0f64; g.n * g.oh * g.ow * g.o];
        let mut dx = vec![0.0f64; x.len()];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for o in 0..g.o {
                        let yi = ((n * g.oh + oy) * g.ow + ox) * g.o + o;
                        let grp = o / og;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let (Some(iy), Some(ix)) = (g.src(oy, ky, g.h), g.src(ox, kx, g.w))
                                else {
                                    continue;
                                };
                                for ci in 0..cg {
                                    let xi = ((n * g.h + iy) * g.w + ix) * g.c + grp * cg + ci;
                                    let wv = w[((o * g.kh + ky) * g.kw + kx) * cg + ci] as f64;
                                    y[yi] += x[xi] as f64 * wv;
                                    dx[xi] += dy[yi] as f64 * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx)
    }

    /// im2col / col2im (whole kernel rows where they fit, tap by tap at the borders, with
    /// dilation and groups) against direct loops: the forward value and the input gradient.
    #[test]
    fn im2col_convolution_matches_direct_loops() {
        for g in [
            geom(2, (9, 11), 5, 7, 3, (1, 1), (1, 1)),
            geom(2, (9, 11), 5, 7, 3, (2, 1), (1, 1)),
            geom(1, (12, 10), 3, 4, 7, (2, 3), (1, 1)),
            geom(2, (9, 9), 4, 6, 3, (1, 2), (2, 1)),
            geom(2, (8, 9), 6, 4, 3, (1, 1), (1, 2)),
            geom(1, (6, 7), 4, 3, 3, (1, 0), (1, 1)),
        ] {
            let x = values(g.n * g.h * g.w * g.c, 1);
            let w = values(g.o * g.kkc(), 2);
            let y = conv2d_forward(&g, &x, &w, None);
            let dy = values(y.len(), 3);
            let (want_y, want_dx) = direct(&g, &x, &w, &dy);
            let dx = conv2d_backward_input(&g, &dy, &w);
            let max_err = |a: &[f32], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .fold(0.0f64, |m, (u, v)| m.max((*u as f64 - v).abs()))
            };
            let (ey, ex) = (max_err(&y, &want_y), max_err(&dx, &want_dx));
            assert!(
                ey < 1e-5 && ex < 1e-5,
                "{g:?}: forward error {ey:.2e}, dx error {ex:.2e}"
            );
        }
    }
}
