//! Where training batches come from: a `BatchSource` is a pure function of
//! `(epoch, batch index)`, so the data-order position saved in a checkpoint is enough to
//! continue an epoch exactly. `MemorySource` is a tiny deterministic in-memory dataset
//! (coloured objects made of two parts each) for tests; image folders come through
//! `folder::FolderSource`.

use crate::tensor::Tensor;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One batch, already augmented. Shapes: N batch, H = W = input size.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(N, H, W, 3)` in [0, 1].
    pub images: Tensor,
    pub labels: Vec<usize>,
    /// `(N, H, W)` global part ids, 0 = background (zeros where an image has no map).
    pub label_maps: Vec<u16>,
    /// `(N,)` 1 for images with a usable, non-blank map, else 0.
    pub has_parts: Vec<bool>,
    /// `(N,)` true for an image whose map is a pseudo label (`whether_pseudo` flag 1, read only
    /// with `use_whether_pseudo`); empty when the source has no flags (all real).
    pub pseudo: Vec<bool>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn side(&self) -> usize {
        self.images.shape().get(1).copied().unwrap_or(0)
    }

    /// Whether image `i` carries a pseudo label (false when the source has no flags).
    pub fn is_pseudo(&self, i: usize) -> bool {
        self.pseudo.get(i).copied().unwrap_or(false)
    }

    /// Images `lo..hi` as a batch of their own (a micro-batch of gradient accumulation).
    pub fn slice(&self, lo: usize, hi: usize) -> Result<Batch> {
        let n = self.len();
        if lo > hi || hi > n {
            return Err(Error::shape(
                "Batch::slice",
                format!("images {lo}..{hi} of a batch of {n}"),
            ));
        }
        let mut shape = self.images.shape().to_vec();
        let per: usize = shape[1..].iter().product();
        shape[0] = hi - lo;
        let hw = self.label_maps.len().checked_div(n).unwrap_or(0);
        Ok(Batch {
            images: Tensor::from_vec(&shape, self.images.data()[lo * per..hi * per].to_vec())?,
            labels: self.labels[lo..hi].to_vec(),
            label_maps: self.label_maps[lo * hw..hi * hw].to_vec(),
            has_parts: self.has_parts[lo..hi].to_vec(),
            pseudo: self
                .pseudo
                .get(lo..hi)
                .map(<[bool]>::to_vec)
                .unwrap_or_default(),
        })
    }
}

pub trait BatchSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes the data holds (checked against the configuration).
    fn num_classes(&self) -> usize;
    /// Largest part id + 1 seen in the data's part list (None when unknown).
    fn seg_classes(&self) -> Option<usize>;
    /// The image order of `epoch`: a seeded shuffle when `train`, else the identity.
    fn order(&self, epoch: usize, train: bool) -> Vec<usize>;
    /// Images `indices` (positions in the source, any order, repeats allowed), augmented for
    /// `epoch` when `train`. An image's augmentation depends only on `(seed, epoch, index)`,
    /// so the same image comes out the same whichever batch or process loads it.
    fn load(&self, epoch: usize, indices: &[usize], train: bool) -> Result<Batch>;
    /// Batches per epoch.
    fn num_batches(&self, batch_size: usize, drop_last: bool) -> usize {
        let n = self.len();
        let bs = batch_size.max(1);
        if drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }
    /// Batch `index` of `epoch`: images `index * batch_size ..` of `order(epoch, train)`.
    fn batch(&self, epoch: usize, index: usize, batch_size: usize, train: bool) -> Result<Batch> {
        let order = self.order(epoch, train);
        let bs = batch_size.max(1);
        let lo = index * bs;
        if lo >= order.len() {
            return Err(Error::Msg(format!(
                "batch {index} of {} images at batch size {bs} is past the end",
                order.len()
            )));
        }
        let hi = (lo + bs).min(order.len());
        self.load(epoch, &order[lo..hi], train)
    }
}

/// The sample order of an epoch: a seeded shuffle (identity for evaluation).
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0000_0000_0000);
        rng.set_stream(epoch as u64);
        v.shuffle(&mut rng);
    }
    v
}

/// A small synthetic dataset held in memory: class `c` is an object of colour `c` made of two
/// parts (global ids `1 + 2c` top half, `2 + 2c` bottom half) on a noisy background; every
/// `blank_every`-th image has no part map. Training batches get a random flip.
pub struct MemorySource {
    pub images: Vec<Vec<f32>>,
    pub maps: Vec<Vec<u16>>,
    pub has_parts: Vec<bool>,
    pub labels: Vec<usize>,
    pub side: usize,
    pub classes: usize,
    pub seed: u64,
}

impl MemorySource {
    pub fn new(classes: usize, per_class: usize, side: usize, seed: u64) -> MemorySource {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = MemorySource {
            images: Vec::new(),
            maps: Vec::new(),
            has_parts: Vec::new(),
            labels: Vec::new(),
            side,
            classes,
            seed,
        };
        for i in 0..classes * per_class {
            let c = i % classes;
            let hue = c as f32 / classes as f32;
            let colour = [
                0.5 + 0.5 * (std::f32::consts::TAU * hue).cos(),
                0.5 + 0.5 * (std::f32::consts::TAU * (hue + 0.33)).cos(),
                0.5 + 0.5 * (std::f32::consts::TAU * (hue + 0.67)).cos(),
            ];
            let size = rng.random_range(side / 3..=side * 2 / 3);
            let x0 = rng.random_range(0..=side - size);
            let y0 = rng.random_range(0..=side - size);
            let mut img = vec![0f32; side * side * 3];
            let mut map = vec![0u16; side * side];
            for y in 0..side {
                for x in 0..side {
                    let p = y * side + x;
                    let inside = (y0..y0 + size).contains(&y) && (x0..x0 + size).contains(&x);
                    for k in 0..3 {
                        let noise: f32 = rng.random_range(0.0..0.3);
                        img[p * 3 + k] = if inside {
                            let shade = if y < y0 + size / 2 { 1.0 } else { 0.6 };
                            (colour[k] * shade + noise * 0.3).min(1.0)
                        } else {
                            noise
                        };
                    }
                    if inside {
                        map[p] = (1 + 2 * c + usize::from(y >= y0 + size / 2)) as u16;
                    }
                }
            }
            let has = i % 5 != 4;
            if !has {
                map.iter_mut().for_each(|v| *v = 0);
            }
            s.images.push(img);
            s.maps.push(map);
            s.has_parts.push(has);
            s.labels.push(c);
        }
        s
    }
}

impl BatchSource for MemorySource {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn seg_classes(&self) -> Option<usize> {
        Some(1 + 2 * self.classes)
    }
    fn order(&self, epoch: usize, train: bool) -> Vec<usize> {
        epoch_order(self.len(), self.seed, epoch, train)
    }
    fn load(&self, epoch: usize, indices: &[usize], train: bool) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Msg(format!(
                "image {bad} of a source of {} images",
                self.len()
            )));
        }
        let side = self.side;
        let n = indices.len();
        let mut images = Vec::with_capacity(n * side * side * 3);
        let mut maps = Vec::with_capacity(n * side * side);
        let (mut labels, mut has) = (Vec::new(), Vec::new());
        for &i in indices {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ ((epoch as u64) << 32) ^ i as u64);
            let flip = train && rng.random_bool(0.5);
            for y in 0..side {
                for x in 0..side {
                    let sx = if flip { side - 1 - x } else { x };
                    let p = y * side + sx;
                    images.extend_from_slice(&self.images[i][p * 3..p * 3 + 3]);
                    maps.push(self.maps[i][p]);
                }
            }
            labels.push(self.labels[i]);
            has.push(self.has_parts[i]);
        }
        Ok(Batch {
            images: Tensor::from_vec(&[n, side, side, 3], images)?,
            labels,
            label_maps: maps,
            has_parts: has,
            pseudo: Vec::new(),
        })
    }
}

/// Multi-scale soft targets of a batch (`data::targets`, the CPU spec), NHWC `[N, h, h, S]` per
/// size (highest resolution first): nearest resize of each map to `sizes[0]`, one-hot with smoothing
/// (`on = 1 - s + s/S`, `off = s/S`), bilinear (align_corners=False) to the smaller sizes.
pub fn soft_targets(
    maps: &[u16],
    n: usize,
    side: usize,
    seg_classes: usize,
    smoothing: f32,
    sizes: &[usize],
) -> Result<Vec<Tensor>> {
    use crate::data::imageio::LabelMap;
    use crate::data::targets::{soft_targets as build, TargetSpec};
    if maps.len() != n * side * side {
        return Err(Error::shape(
            "soft_targets",
            format!("{} label values for {n} maps of {side}x{side}", maps.len()),
        ));
    }
    let lm: Vec<LabelMap> = maps
        .chunks(side * side)
        .map(|m| LabelMap {
            h: side,
            w: side,
            data: m.to_vec(),
        })
        .collect();
    let refs: Vec<Option<&LabelMap>> = lm.iter().map(Some).collect();
    let spec = TargetSpec {
        num_classes: seg_classes,
        smoothing,
        sizes: sizes.to_vec(),
    };
    build(&refs, &spec)?
        .into_iter()
        .zip(sizes)
        .map(|(v, &h)| Tensor::from_vec(&[n, h, h, seg_classes], v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_source_is_a_pure_function_of_position() {
        let s = MemorySource::new(3, 4, 32, 7);
        let a = s.batch(1, 1, 5, true).unwrap();
        let b = s.batch(1, 1, 5, true).unwrap();
        assert_eq!(a.images.data(), b.images.data());
        assert_eq!(a.labels, b.labels);
        let c = s.batch(2, 1, 5, true).unwrap();
        assert_ne!(a.labels.len() * 1000 + a.labels[0], 0);
        assert_eq!(s.num_batches(5, true), 2);
        assert_eq!(s.num_batches(5, false), 3);
        assert!(s.batch(0, 3, 5, true).is_err());
        let _ = c;
    }
}
