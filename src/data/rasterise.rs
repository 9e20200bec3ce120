//! COCO mask rasterisation, bit-exact with pycocotools 2.0 (`maskApi.c` + `coco.py`).
//!
//! pycocotools' `COCO.annToMask(ann)` is the reference:
//! - polygon list `[[x0,y0,x1,y1,...], ...]`: `frPyObjects` then `merge` (union). Quirk kept on
//!   purpose: `frPyObjects` looks at the *first* ring only: with 4 numbers it tries boxes
//!   (pycocotools 2.0.11 raises TypeError there), with fewer it raises; both are errors here.
//!   Later rings of any length go through `rleFrPoly` (fewer than 3 points: nothing painted).
//! - uncompressed RLE `{"size":[h,w],"counts":[..]}`: counts as given (`frUncompressedRLE`).
//! - compressed RLE `{"size":[h,w],"counts":"..."}`: the LEB-like string of `rleFrString`.
//!
//! `iscrowd` does not change rasterisation (annToMask ignores it). RLE runs are column-major
//! (pixel index `x*h + y`) and alternate 0,1,0,... starting with a (possibly empty) run of 0s.
//! Masks returned here are row-major `h*w` bytes (0/1).

use serde_json::Value;

/// Polygon coordinates beyond this (pixels) are rejected: pycocotools walks every point of the
/// 5x-upsampled boundary, so a far-away vertex costs time and memory without changing the mask.
pub const MAX_COORD: f64 = 100_000.0;

/// Run-length encoding, column-major, alternating runs of 0 and 1 (first run is 0s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rle {
    pub h: usize,
    pub w: usize,
    pub counts: Vec<u32>,
}

/// Binary mask, row-major `(h, w)`, values 0/1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn zeros(h: usize, w: usize) -> Self {
        Mask {
            h,
            w,
            data: vec![0; h * w],
        }
    }
    pub fn area(&self) -> usize {
        self.data.iter().map(|&v| v as usize).sum()
    }
}

/// A COCO `segmentation` field, parsed but not yet rasterised.
#[derive(Clone, Debug, PartialEq)]
pub enum Segmentation {
    /// One or more rings of `x,y` pairs (or, with the 4-number quirk, boxes).
    Polygons(Vec<Vec<f64>>),
    /// `counts` as a list of run lengths; `size` is `[h, w]`.
    Uncompressed {
        h: usize,
        w: usize,
        counts: Vec<u32>,
    },
    /// `counts` as pycocotools' compressed string.
    Compressed { h: usize, w: usize, counts: String },
}

impl Segmentation {
    /// Parses the JSON value of an annotation's `segmentation`. Errors are plain messages.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        match v {
            Value::Array(rings) => {
                let mut out = Vec::with_capacity(rings.len());
                for (i, r) in rings.iter().enumerate() {
                    let arr = r
                        .as_array()
                        .ok_or_else(|| format!("segmentation ring {i} is not a list"))?;
                    let mut ring = Vec::with_capacity(arr.len());
                    for x in arr {
                        let f = x
                            .as_f64()
                            .ok_or_else(|| format!("segmentation ring {i}: non-numeric value"))?;
                        if !f.is_finite() || f.abs() > MAX_COORD {
                            return Err(format!(
                                "segmentation ring {i}: coordinate {f} outside +-{MAX_COORD}"
                            ));
                        }
                        ring.push(f);
                    }
                    out.push(ring);
                }
                Ok(Segmentation::Polygons(out))
            }
            Value::Object(o) => {
                let size = o
                    .get("size")
                    .and_then(|s| s.as_array())
                    .ok_or("RLE segmentation without 'size'")?;
                if size.len() != 2 {
                    return Err("RLE 'size' must be [h, w]".into());
                }
                let dim = |x: &Value| {
                    x.as_u64()
                        .filter(|&d| d > 0 && d < (1 << 20))
                        .map(|d| d as usize)
                        .ok_or_else(|| format!("RLE 'size' has a bad value {x}"))
                };
                let (h, w) = (dim(&size[0])?, dim(&size[1])?);
                match o.get("counts") {
                    Some(Value::String(s)) => Ok(Segmentation::Compressed {
                        h,
                        w,
                        counts: s.clone(),
                    }),
                    Some(Value::Array(c)) => {
                        let counts = c
                            .iter()
                            .map(|x| {
                                x.as_u64()
                                    .filter(|&v| v <= u32::MAX as u64)
                                    .map(|v| v as u32)
                                    .ok_or_else(|| format!("RLE count {x} is not a u32"))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(Segmentation::Uncompressed { h, w, counts })
                    }
                    _ => Err("RLE segmentation without 'counts'".into()),
                }
            }
            _ => Err("segmentation is neither a list of polygons nor an RLE object".into()),
        }
    }

    /// `annToMask`: the mask of this segmentation for an image of `h x w` (from the JSON
    /// `images` entry). An RLE whose own size differs from `h x w` is an error (pycocotools
    /// would return a mask of the wrong shape).
    pub fn to_mask(&self, h: usize, w: usize) -> Result<Mask, String> {
        if h == 0 || w == 0 {
            return Err(format!("image size {h}x{w} is empty"));
        }
        match self {
            Segmentation::Polygons(rings) => {
                let first = rings.first().ok_or("empty polygon list")?;
                if first.len() <= 4 {
                    return Err(format!(
                        "first polygon ring has {} numbers (pycocotools needs > 4)",
                        first.len()
                    ));
                }
                let rles: Vec<Rle> = rings.iter().map(|p| rle_from_poly(p, h, w)).collect();
                let mut m = Mask::zeros(h, w);
                for r in &rles {
                    decode_or(r, &mut m)?;
                }
                Ok(m)
            }
            Segmentation::Uncompressed {
                h: rh,
                w: rw,
                counts,
            } => {
                check_size(*rh, *rw, h, w)?;
                let mut m = Mask::zeros(h, w);
                decode_or(
                    &Rle {
                        h,
                        w,
                        counts: counts.clone(),
                    },
                    &mut m,
                )?;
                Ok(m)
            }
            Segmentation::Compressed {
                h: rh,
                w: rw,
                counts,
            } => {
                check_size(*rh, *rw, h, w)?;
                let r = rle_from_string(counts, h, w)?;
                let mut m = Mask::zeros(h, w);
                decode_or(&r, &mut m)?;
                Ok(m)
            }
        }
    }
}

fn check_size(rh: usize, rw: usize, h: usize, w: usize) -> Result<(), String> {
    if rh != h || rw != w {
        return Err(format!(
            "RLE size {rh}x{rw} differs from the image's {h}x{w}"
        ));
    }
    Ok(())
}

/// ORs the decoded RLE into `m` (row-major). The runs must cover exactly `h*w` pixels
/// (pycocotools reads uninitialised or out-of-bounds memory otherwise).
pub fn decode_or(r: &Rle, m: &mut Mask) -> Result<(), String> {
    let total: u64 = r.counts.iter().map(|&c| c as u64).sum();
    if total != (r.h * r.w) as u64 || m.h != r.h || m.w != r.w {
        return Err(format!(
            "RLE runs cover {total} pixels, the mask has {}x{} = {}",
            r.h,
            r.w,
            r.h * r.w
        ));
    }
    let (h, w) = (r.h, r.w);
    let mut pos = 0usize;
    for (i, &c) in r.counts.iter().enumerate() {
        let c = c as usize;
        if i % 2 == 1 {
            for p in pos..pos + c {
                let (x, y) = (p / h, p % h);
                m.data[y * w + x] = 1;
            }
        }
        pos += c;
    }
    Ok(())
}

/// Decodes an RLE into a fresh mask.
pub fn decode(r: &Rle) -> Result<Mask, String> {
    let mut m = Mask::zeros(r.h, r.w);
    decode_or(r, &mut m)?;
    Ok(m)
}

/// `rleEncode`: mask (row-major) -> column-major RLE.
pub fn encode(m: &Mask) -> Rle {
    let (h, w) = (m.h, m.w);
    let mut counts = Vec::new();
    let (mut prev, mut c) = (0u8, 0u32);
    for x in 0..w {
        for y in 0..h {
            let v = m.data[y * w + x];
            if v != prev {
                counts.push(c);
                c = 0;
                prev = v;
            }
            c += 1;
        }
    }
    counts.push(c);
    Rle { h, w, counts }
}

/// `rleFrPoly`: one polygon ring (`x0,y0,x1,y1,...`; an odd trailing number is ignored, as
/// pycocotools' `len(p)/2` does), with maskApi.c's 5x upsampling and C integer casts.
pub fn rle_from_poly(xy: &[f64], h: usize, w: usize) -> Rle {
    let k = xy.len() / 2;
    let scale = 5.0f64;
    if k == 0 {
        return Rle {
            h,
            w,
            counts: vec![(h * w) as u32],
        };
    }
    // C `(int)(v + .5)`: truncation toward zero (Rust `as` does the same, saturating).
    let mut x: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j] + 0.5) as i32 as i64)
        .collect();
    let mut y: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j + 1] + 0.5) as i32 as i64)
        .collect();
    x.push(x[0]);
    y.push(y[0]);
    let mut u: Vec<i64> = Vec::new();
    let mut v: Vec<i64> = Vec::new();
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            (ye - ys) as f64 / dx as f64
        } else {
            (xe - xs) as f64 / dy as f64
        };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                // dx == dy == 0 gives s = NaN; that point is never read (its u equals its
                // neighbours'), whatever the cast yields.
                v.push((ys as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        }
    }
    // y-boundary points, downsampled.
    let mut a: Vec<u32> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let mut xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
        xd = (xd + 0.5) / scale - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
            continue;
        }
        let mut yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
        yd = (yd + 0.5) / scale - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > h as f64 {
            yd = h as f64;
        }
        yd = yd.ceil();
        a.push((xd as i64 * h as i64 + yd as i64) as u32);
    }
    a.push((h * w) as u32);
    a.sort_unstable();
    let mut p = 0u32;
    for t in a.iter_mut() {
        let cur = *t;
        *t -= p;
        p = cur;
    }
    let mut b: Vec<u32> = Vec::with_capacity(a.len());
    let mut j = 0;
    b.push(a[j]);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                *b.last_mut().unwrap() += a[j];
                j += 1;
            }
        }
    }
    Rle { h, w, counts: b }
}

/// `rleFrBbox`: box `[x, y, w, h]` as a 4-corner polygon.
pub fn rle_from_bbox(bb: &[f64], h: usize, w: usize) -> Rle {
    let (xs, ys) = (bb[0], bb[1]);
    let (xe, ye) = (xs + bb[2], ys + bb[3]);
    rle_from_poly(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
}

/// `rleFrString`: pycocotools' compressed counts string (delta coding from the 4th count on,
/// 5 bits per char + continuation bit, offset 48).
pub fn rle_from_string(s: &str, h: usize, w: usize) -> Result<Rle, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        let mut more = true;
        while more {
            if p >= bytes.len() {
                return Err("compressed RLE string ends inside a number".into());
            }
            if k >= 12 {
                return Err("compressed RLE string has an over-long number".into());
            }
            let c = bytes[p] as i64 - 48;
            if !(0..64).contains(&c) {
                return Err(format!("compressed RLE string has a bad character at {p}"));
            }
            x |= (c & 0x1f) << (5 * k);
            more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more && (c & 0x10) != 0 {
                x |= -1i64 << (5 * k);
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        if !(0..=u32::MAX as i64).contains(&x) {
            return Err(format!("compressed RLE count {x} out of range"));
        }
        counts.push(x as u32);
    }
    Ok(Rle { h, w, counts })
}

/// `rleToString`: the inverse of [`rle_from_string`].
pub fn rle_to_string(r: &Rle) -> String {
    let mut s = String::new();
    for i in 0..r.counts.len() {
        let mut x = r.counts[i] as i64;
        if i > 2 {
            x -= r.counts[i - 2] as i64;
        }
        let mut more = true;
        while more {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c + 48) as char);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_roundtrip() {
        let r = Rle {
            h: 7,
            w: 9,
            counts: vec![0, 3, 10, 1, 20, 29],
        };
        let s = rle_to_string(&r);
        assert_eq!(rle_from_string(&s, 7, 9).unwrap(), r);
    }

    #[test]
    fn encode_decode_roundtrip() {
        let mut m = Mask::zeros(5, 6);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = ((i * 7) % 3 == 0) as u8;
        }
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn square_polygon() {
        // pycocotools: a 2x2 square from (1,1) to (3,3) covers pixels 1..=2 in x and y.
        let m = Segmentation::Polygons(vec![vec![1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]])
            .to_mask(5, 5)
            .unwrap();
        assert_eq!(m.area(), 4);
        assert_eq!(m.data[5 + 1], 1);
        assert_eq!(m.data[2 * 5 + 2], 1);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Segmentation::Polygons(vec![]).to_mask(4, 4).is_err());
        assert!(Segmentation::Polygons(vec![vec![1.0, 2.0]])
            .to_mask(4, 4)
            .is_err());
        let r = Segmentation::Uncompressed {
            h: 4,
            w: 4,
            counts: vec![3, 4],
        };
        assert!(r.to_mask(4, 4).is_err());
        assert!(rle_from_string("\u{7f}", 4, 4).is_err());
        assert!(rle_from_string("h", 4, 4).is_err());
        // A far-away vertex is rejected instead of walking billions of boundary points.
        let far = serde_json::json!([[0, 0, 1e12, 0, 5, 5]]);
        assert!(Segmentation::from_json(&far).is_err());
    }
}
