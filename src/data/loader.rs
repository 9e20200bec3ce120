//! Batches: parallel decode + aligned augmentation + soft targets.
//!
//! A batch is a pure function of `(seed, epoch, dataset indices)`: each sample's RNG is
//! [`sample_rng`]`(seed, epoch, index)`, so batches are reproducible whatever the thread count.
//!
//! Bad input: a sample whose image cannot be decoded is dropped from the batch (the batch gets
//! smaller) and reported; a label map that is unreadable, of another size than its image, or
//! holds a value >= S is dropped (the image stays, with segmentation weight 0) and reported.
//! Images without a map or with an all-background map get weight 0 ("ignore_blank").

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::augment::{apply, sample_rng, Transform};
use super::imageio::{read_label_map, read_rgb, LabelMap};
use super::index::Sample;
use super::report::Skip;
use super::targets::{soft_targets, TargetSpec};
use crate::Result;

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub transform: Transform,
    /// Soft targets to build (None: label maps only).
    pub targets: Option<TargetSpec>,
    /// Number of segmentation classes S used to validate label values (None: no check).
    pub seg_classes: Option<usize>,
    pub seed: u64,
}

/// One batch. Shapes use the glossary: N batch, H/W spatial, S segmentation channels.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// `(N, H, W, 3)` f32 in [0, 1].
    pub images: Vec<f32>,
    /// `(N,)` class indices.
    pub labels: Vec<u32>,
    /// `(N, H, W)` global part ids (zeros where the sample has no usable map).
    pub label_maps: Vec<u16>,
    /// `(N,)` 1 when the sample has a non-blank map, else 0.
    pub seg_weight: Vec<f32>,
    /// `(N,)` dataset indices of the samples kept.
    pub indices: Vec<usize>,
    /// Per target level `(N, h, h, S)` NHWC f32 (empty when no targets were requested).
    pub targets: Vec<Vec<f32>>,
}

struct Loaded {
    index: usize,
    label: u32,
    pixels: Vec<f32>,
    map: Option<LabelMap>,
}

/// Loads one sample. `Err` = the sample is dropped; `Ok(_, Some(skip))` = its map was dropped.
fn load_one(
    s: &Sample,
    index: usize,
    epoch: u64,
    cfg: &LoaderConfig,
) -> std::result::Result<(Loaded, Option<Skip>), Skip> {
    let img = read_rgb(&s.image).map_err(|e| Skip::from_error(&s.image, &e))?;
    let mut note = None;
    let map = match &s.seg {
        None => None,
        Some(p) => match read_label_map(p) {
            Err(e) => {
                note = Some(Skip::new(p, format!("label map dropped: {e}")));
                None
            }
            Ok(m) if (m.w, m.h) != (img.width() as usize, img.height() as usize) => {
                note = Some(Skip::new(
                    p,
                    format!(
                        "label map dropped: {}x{} but the image is {}x{}",
                        m.w,
                        m.h,
                        img.width(),
                        img.height()
                    ),
                ));
                None
            }
            Ok(m) => match cfg
                .seg_classes
                .and_then(|sc| m.data.iter().find(|&&v| v as usize >= sc).map(|v| (v, sc)))
            {
                Some((v, sc)) => {
                    note = Some(Skip::new(
                        p,
                        format!("label map dropped: value {v} >= S = {sc}"),
                    ));
                    None
                }
                None => Some(m),
            },
        },
    };
    let mut rng = sample_rng(cfg.seed, epoch, index as u64);
    let a = apply(&img, map.as_ref(), &cfg.transform, &mut rng)
        .map_err(|e| Skip::from_error(&s.image, &e))?;
    Ok((
        Loaded {
            index,
            label: s.label as u32,
            pixels: a.pixels,
            map: a.map,
        },
        note,
    ))
}

/// Loads the samples `indices` of `samples` (decode and augment in parallel).
pub fn load_batch(
    samples: &[Sample],
    indices: &[usize],
    epoch: u64,
    cfg: &LoaderConfig,
) -> Result<(Batch, Vec<Skip>)> {
    let results: Vec<_> = indices
        .par_iter()
        .map(|&i| match samples.get(i) {
            Some(s) => load_one(s, i, epoch, cfg),
            None => Err(Skip::new("<index>", format!("sample {i} out of range"))),
        })
        .collect();
    let side = cfg.transform.out_size();
    let mut b = Batch {
        h: side,
        w: side,
        ..Default::default()
    };
    let mut skips = Vec::new();
    let mut maps: Vec<Option<LabelMap>> = Vec::new();
    for r in results {
        match r {
            Err(s) => skips.push(s),
            Ok((l, note)) => {
                skips.extend(note);
                b.n += 1;
                b.images.extend_from_slice(&l.pixels);
                b.labels.push(l.label);
                b.indices.push(l.index);
                let weight = l.map.as_ref().is_some_and(|m| !m.is_blank());
                b.seg_weight.push(if weight { 1.0 } else { 0.0 });
                match &l.map {
                    Some(m) => b.label_maps.extend_from_slice(&m.data),
                    None => b.label_maps.extend(std::iter::repeat_n(0u16, side * side)),
                }
                maps.push(l.map);
            }
        }
    }
    if let Some(spec) = &cfg.targets {
        let refs: Vec<Option<&LabelMap>> = maps.iter().map(|m| m.as_ref()).collect();
        b.targets = soft_targets(&refs, spec)?;
    }
    Ok((b, skips))
}

/// The sample order of an epoch: a seeded shuffle (or identity).
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0000_0000_0000);
        rng.set_stream(epoch);
        v.shuffle(&mut rng);
    }
    v
}

/// Iterates over the batches of one epoch.
pub struct Loader<'a> {
    pub samples: &'a [Sample],
    pub cfg: LoaderConfig,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
}

impl<'a> Loader<'a> {
    pub fn num_batches(&self) -> usize {
        let n = self.samples.len();
        if self.drop_last {
            n / self.batch_size.max(1)
        } else {
            n.div_ceil(self.batch_size.max(1))
        }
    }

    /// Batch `b` of `epoch` (recomputes the epoch order: use [`Loader::epoch`] to iterate).
    pub fn batch(&self, epoch: u64, b: usize) -> Result<(Batch, Vec<Skip>)> {
        let order = epoch_order(self.samples.len(), self.cfg.seed, epoch, self.shuffle);
        self.batch_in(&order, epoch, b)
    }

    fn batch_in(&self, order: &[usize], epoch: u64, b: usize) -> Result<(Batch, Vec<Skip>)> {
        let bs = self.batch_size.max(1);
        let lo = (b * bs).min(order.len());
        let hi = ((b + 1) * bs).min(order.len());
        load_batch(self.samples, &order[lo..hi], epoch, &self.cfg)
    }

    /// All batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<(Batch, Vec<Skip>)>> + '_ {
        let order = epoch_order(self.samples.len(), self.cfg.seed, epoch, self.shuffle);
        (0..self.num_batches()).map(move |b| self.batch_in(&order, epoch, b))
    }

    /// Like [`Loader::epoch`], but batches are prepared by a background thread, `depth` ahead,
    /// while the caller consumes them (same batches, same order). Runs inside `scope`.
    pub fn prefetch<'s>(
        &'s self,
        scope: &'s std::thread::Scope<'s, '_>,
        epoch: u64,
        depth: usize,
    ) -> std::sync::mpsc::Receiver<Result<(Batch, Vec<Skip>)>>
    where
        'a: 's,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        scope.spawn(move || {
            for item in self.epoch(epoch) {
                if tx.send(item).is_err() {
                    break; // the consumer hung up
                }
            }
        });
        rx
    }
}
