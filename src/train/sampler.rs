//! The training order of a run whose batch is split into batch-norm groups (`bn_group`), made
//! the way PyTorch's `DistributedSampler` splits an epoch between data-parallel ranks, so that a
//! one-device ghost-batch-norm run sees exactly the images each rank of a DDP run sees.
//!
//! With `G` groups of `b` images each, the epoch's shuffled order (`BatchSource::order`) is
//! padded to a multiple of `G` by repeating it from its start (DistributedSampler's padding),
//! and group `r` at step `k` holds the images at padded positions `r + G * (k * b + j)`,
//! `j < b`: rank `r` of a `DistributedSampler` takes every `G`-th image starting at `r`, and its
//! `DataLoader` (drop_last) cuts that list into batches of `b`. An epoch has
//! `ceil(N / G) / b` steps (rounded down), which can be one more than `N / (G * b)` because of
//! the padding, as in the reference run. With `G = 1` this is the plain order of
//! `BatchSource::batch` (images `k * b ..`), bit for bit.
//!
//! A process that runs groups `first .. first + local` (one rank of a data-parallel run, or all
//! of them on one device) loads only those, one group after another, concatenated.

use super::source::{Batch, BatchSource};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// How a global batch is split into batch-norm groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    /// `G`: groups in the whole batch (over all processes).
    pub groups: usize,
    /// `b`: images per group.
    pub per_group: usize,
}

impl GroupLayout {
    /// Steps per epoch over `n` images (DistributedSampler padding, DataLoader drop_last).
    pub fn steps(&self, n: usize) -> usize {
        n.div_ceil(self.groups.max(1)) / self.per_group.max(1)
    }

    /// Positions in the epoch's order of group `group`'s images at step `step`.
    pub fn group_indices(&self, order: &[usize], step: usize, group: usize) -> Vec<usize> {
        let (g, b) = (self.groups.max(1), self.per_group);
        (0..b)
            .map(|j| padded(order, group + g * (step * b + j)))
            .collect()
    }
}

/// Element `i` of `order` padded by repetition from its start (DistributedSampler: the padding
/// is `indices[:padding]`, repeated when the padding exceeds the list).
fn padded(order: &[usize], i: usize) -> usize {
    order[i % order.len().max(1)]
}

/// A batch source that yields, as batch `k`, the images of groups `first .. first + local` at
/// step `k` (see the module doc), group after group.
pub struct GroupedSource<'a> {
    pub inner: &'a dyn BatchSource,
    pub layout: GroupLayout,
    pub first: usize,
    pub local: usize,
}

/// The grouped order of a one-process run with `bn_group` (None with one group: the plain
/// order).
pub fn single_process<'a>(
    cfg: &super::config::TrainConfig,
    train: &'a dyn BatchSource,
) -> Option<GroupedSource<'a>> {
    let g = cfg.bn_groups(1);
    (g > 1).then(|| GroupedSource {
        inner: train,
        layout: GroupLayout {
            groups: g,
            per_group: cfg.batch_size / g,
        },
        first: 0,
        local: g,
    })
}

impl<'a> GroupedSource<'a> {
    /// Batch `step` of `epoch` as `local` groups of `per_group` images. A group the loader
    /// returned short (it skips unreadable files, and says so) is filled up by repeating its
    /// own images, so that every group keeps `per_group` images and its batch statistics
    /// stay those of a full group; a group with no readable image is an error.
    pub fn step_batch(&self, epoch: usize, step: usize) -> Result<Batch> {
        let n = self.inner.len();
        let steps = self.layout.steps(n);
        if step >= steps {
            return Err(Error::Msg(format!(
                "step {step} of an epoch of {steps} steps ({n} images in {} groups of {})",
                self.layout.groups, self.layout.per_group
            )));
        }
        let order = self.inner.order(epoch, true);
        let mut parts = Vec::with_capacity(self.local);
        for g in self.first..self.first + self.local {
            let idx = self.layout.group_indices(&order, step, g);
            let b = self.inner.load(epoch, &idx, true)?;
            if b.is_empty() {
                return Err(Error::Msg(format!(
                    "epoch {epoch} step {step}: no image of batch-norm group {g} could be loaded"
                )));
            }
            let want = self.layout.per_group;
            parts.push(if b.len() < want {
                let fill: Vec<usize> = (0..want).map(|i| i % b.len()).collect();
                b.select(&fill)?
            } else {
                b
            });
        }
        Batch::concat(&parts)
    }
}

impl BatchSource for GroupedSource<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn seg_classes(&self) -> Option<usize> {
        self.inner.seg_classes()
    }
    fn order(&self, epoch: usize, train: bool) -> Vec<usize> {
        self.inner.order(epoch, train)
    }
    fn load(&self, epoch: usize, indices: &[usize], train: bool) -> Result<Batch> {
        self.inner.load(epoch, indices, train)
    }
    /// Steps per epoch of the grouped order (the batch size is the layout's).
    fn num_batches(&self, _batch_size: usize, _drop_last: bool) -> usize {
        self.layout.steps(self.inner.len())
    }
    fn batch(&self, epoch: usize, index: usize, _batch_size: usize, train: bool) -> Result<Batch> {
        if !train {
            return Err(Error::Msg(
                "a grouped training source has no evaluation order".into(),
            ));
        }
        self.step_batch(epoch, index)
    }
}

impl Batch {
    /// The images `idx` of this batch (repeats allowed), in that order.
    pub fn select(&self, idx: &[usize]) -> Result<Batch> {
        let n = self.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
            return Err(Error::shape(
                "Batch::select",
                format!("image {bad} of a batch of {n}"),
            ));
        }
        let mut shape = self.images.shape().to_vec();
        let per: usize = shape[1..].iter().product();
        let hw = self.label_maps.len().checked_div(n).unwrap_or(0);
        let src = self.images.data();
        let mut images = Vec::with_capacity(idx.len() * per);
        let mut maps = Vec::with_capacity(idx.len() * hw);
        for &i in idx {
            images.extend_from_slice(&src[i * per..(i + 1) * per]);
            maps.extend_from_slice(&self.label_maps[i * hw..(i + 1) * hw]);
        }
        shape[0] = idx.len();
        Ok(Batch {
            images: Tensor::from_vec(&shape, images)?,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            label_maps: maps,
            has_parts: idx.iter().map(|&i| self.has_parts[i]).collect(),
            pseudo: if self.pseudo.is_empty() {
                Vec::new()
            } else {
                idx.iter().map(|&i| self.is_pseudo(i)).collect()
            },
        })
    }

    /// The batches `parts` one after another (same image size).
    pub fn concat(parts: &[Batch]) -> Result<Batch> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("Batch::concat", "no batches"))?;
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let mut shape = first.images.shape().to_vec();
        let mut images = Vec::new();
        let mut out = Batch {
            images: Tensor::zeros(&[0]),
            labels: Vec::new(),
            label_maps: Vec::new(),
            has_parts: Vec::new(),
            pseudo: Vec::new(),
        };
        let flagged = parts.iter().any(|p| !p.pseudo.is_empty());
        for p in parts {
            if p.images.shape()[1..] != shape[1..] {
                return Err(Error::shape(
                    "Batch::concat",
                    format!(
                        "images {:?} and {:?} differ in size",
                        p.images.shape(),
                        shape
                    ),
                ));
            }
            images.extend_from_slice(p.images.data());
            out.labels.extend_from_slice(&p.labels);
            out.label_maps.extend_from_slice(&p.label_maps);
            out.has_parts.extend_from_slice(&p.has_parts);
            if flagged {
                out.pseudo.extend((0..p.len()).map(|i| p.is_pseudo(i)));
            }
        }
        shape[0] = out.labels.len();
        out.images = Tensor::from_vec(&shape, images)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::MemorySource;

    #[test]
    fn groups_take_every_g_th_image_like_distributed_sampler() {
        // 10 images, 4 groups of 2: padded to 12 (positions 10, 11 repeat 0, 1); ceil(10/4) = 3
        // images per group -> 1 step of 2 (drop_last).
        let l = GroupLayout {
            groups: 4,
            per_group: 2,
        };
        let order: Vec<usize> = (100..110).collect();
        assert_eq!(l.steps(10), 1);
        assert_eq!(l.group_indices(&order, 0, 0), vec![100, 104]);
        assert_eq!(l.group_indices(&order, 0, 3), vec![103, 107]);
        // The padding shows up at position 10 = group 2's third image (step 1 with b = 1).
        let l1 = GroupLayout {
            groups: 4,
            per_group: 1,
        };
        assert_eq!(l1.steps(10), 3);
        assert_eq!(l1.group_indices(&order, 2, 2), vec![100]);
        assert_eq!(l1.group_indices(&order, 2, 3), vec![101]);
        // Padding can add a step: 31 images, 2 groups of 8 -> 16 per group -> 2 steps, where
        // 31 / 16 = 1 without it.
        let l2 = GroupLayout {
            groups: 2,
            per_group: 8,
        };
        assert_eq!(l2.steps(31), 2);
    }

    #[test]
    fn one_group_is_the_plain_order() {
        let src = MemorySource::new(3, 4, 32, 9);
        let g = GroupedSource {
            inner: &src,
            layout: GroupLayout {
                groups: 1,
                per_group: 4,
            },
            first: 0,
            local: 1,
        };
        assert_eq!(g.num_batches(4, true), src.num_batches(4, true));
        for k in 0..3 {
            let a = g.batch(1, k, 4, true).unwrap();
            let b = src.batch(1, k, 4, true).unwrap();
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.images.data(), b.images.data());
            assert_eq!(a.label_maps, b.label_maps);
        }
    }

    #[test]
    fn a_process_loads_its_own_groups_and_short_groups_are_filled() {
        let src = MemorySource::new(3, 4, 32, 9);
        let layout = GroupLayout {
            groups: 4,
            per_group: 2,
        };
        let all = GroupedSource {
            inner: &src,
            layout,
            first: 0,
            local: 4,
        };
        let rank1 = GroupedSource {
            inner: &src,
            layout,
            first: 1,
            local: 1,
        };
        let a = all.batch(0, 0, 8, true).unwrap();
        let r = rank1.batch(0, 0, 2, true).unwrap();
        assert_eq!(a.len(), 8);
        assert_eq!(&a.labels[2..4], &r.labels[..]);
        assert_eq!(
            &a.images.data()[2 * 32 * 32 * 3..4 * 32 * 32 * 3],
            r.images.data()
        );
        let short = r.select(&[1]).unwrap();
        let filled = short.select(&[0, 0, 0]).unwrap();
        assert_eq!(filled.len(), 3);
        assert!(r.select(&[2]).is_err());
        assert!(
            all.batch(0, 1, 8, true).is_err(),
            "12 images / 4 groups / 2 = 1 step"
        );
    }
}
