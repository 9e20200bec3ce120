//! `mpm-data pseudo`: part label maps for images without annotations, from a trained MPM's
//! part heads, with the Category Filter (paper §3, Tab. 5).
//!
//! Per image: the whole image is resized (bicubic) to the model's input size, the model runs
//! in eval mode, and its highest-resolution part logits `[h, w, S]` are bilinearly upsampled
//! (align_corners=False) to the image's own size pixel by pixel; each pixel takes the argmax
//! over all S channels (no filter) or over background + the image's own class's parts (the
//! filter: zeroing the other classes' probabilities before the argmax is the same as leaving
//! their logits out). Upsampling streams one pixel at a time, so no `H x W x S` buffer exists.
//! Images whose index entry has a label map are also scored: pixel accuracy and part mIoU
//! with and without the filter.
//!
//! Next to each map, `OUT/prob/<wnid>/<stem>.png` (16-bit, round(p * 65535)) holds the head's
//! probability of each pixel's label, so `mpm-data part-ap --label-maps` can score the maps as
//! instances (docs/part-labels.md).
//!
//! Output in the reference's training layout (`super::layout`): `OUT/seg/<wnid>/<stem>.png`,
//! `OUT/img/<wnid>/<file>` (a symlink, unless an entry is already there) and flag 1 in
//! `OUT/whether_pseudo/<wnid>.txt`. An image flagged 0 there (annotated, written by
//! `mpm-data labels`) keeps its map and flag; so does a map that exists without a flag (its
//! origin is unknown). Flags are merged into the existing files every 64 batches and at the end.

use super::augment::{resize_bicubic, CropBox};
use super::imageio::{self, LabelMap};
use super::index::Index;
use super::layout::{self, Flags, ImageMode};
use super::pin_json::PartTable;
use super::report::Skip;
use crate::autograd::GradMode;
use crate::cpu::resize::taps;
use crate::nn::{Ctx, ModelSpec, ParamStore};
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

pub struct PseudoConfig {
    pub input_size: usize,
    pub batch_size: usize,
    pub category_filter: bool,
    /// Leave images that already have a label map unwritten (they are still scored).
    pub skip_annotated: bool,
    pub out: PathBuf,
    pub progress: bool,
}

/// Per-class intersection / union counts and pixel accuracy.
#[derive(Clone, Debug, Default)]
pub struct SegScore {
    pub correct: u64,
    pub pixels: u64,
    inter: Vec<u64>,
    gt: Vec<u64>,
    pred: Vec<u64>,
}

impl SegScore {
    fn new(s: usize) -> Self {
        SegScore {
            inter: vec![0; s],
            gt: vec![0; s],
            pred: vec![0; s],
            ..Default::default()
        }
    }
    fn add(&mut self, gt: &[u16], pred: &[u16]) {
        for (&g, &p) in gt.iter().zip(pred) {
            let (g, p) = (g as usize, p as usize);
            if g >= self.gt.len() || p >= self.pred.len() {
                continue;
            }
            self.pixels += 1;
            self.gt[g] += 1;
            self.pred[p] += 1;
            if g == p {
                self.correct += 1;
                self.inter[g] += 1;
            }
        }
    }
    pub fn pixel_accuracy(&self) -> f64 {
        self.correct as f64 / self.pixels.max(1) as f64
    }
    /// Mean IoU over part classes (background excluded) that occur in the ground truth or
    /// the prediction.
    pub fn part_miou(&self) -> f64 {
        let ious: Vec<f64> = (1..self.gt.len())
            .filter_map(|c| {
                let union = self.gt[c] + self.pred[c] - self.inter[c];
                (union > 0).then(|| self.inter[c] as f64 / union as f64)
            })
            .collect();
        if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }
}

#[derive(Debug, Default)]
pub struct PseudoSummary {
    pub written: usize,
    /// Images left as they were: flagged annotated, or a map without a flag.
    pub kept_annotated: usize,
    pub scored: usize,
    pub with_filter: Option<SegScore>,
    pub without_filter: Option<SegScore>,
    pub skipped: Vec<Skip>,
    /// Folders synced once at the end (the maps, prob maps and image links are written
    /// without a per-file fsync).
    pub dirs_synced: usize,
    /// Temp files of killed earlier runs, removed at start.
    pub stale_temps_removed: usize,
}

/// Upsamples `logits[h, w, S]` to `out_h x out_w` and takes the argmax per pixel over
/// `channels` (all channels when `None`).
pub fn upsampled_argmax(
    logits: &[f32],
    h: usize,
    w: usize,
    s: usize,
    out_h: usize,
    out_w: usize,
    channels: Option<&[usize]>,
) -> Vec<u16> {
    let ty = taps(h, out_h);
    let tx = taps(w, out_w);
    let all: Vec<usize>;
    let chans = match channels {
        Some(c) => c,
        None => {
            all = (0..s).collect();
            &all
        }
    };
    let mut out = vec![0u16; out_h * out_w];
    out.par_chunks_mut(out_w).enumerate().for_each(|(y, row)| {
        let t = ty[y];
        for (x, slot) in row.iter_mut().enumerate() {
            let u = tx[x];
            let at = |yy: usize, xx: usize| &logits[(yy * w + xx) * s..(yy * w + xx + 1) * s];
            let (a, b, c, d) = (
                at(t.i0, u.i0),
                at(t.i0, u.i1),
                at(t.i1, u.i0),
                at(t.i1, u.i1),
            );
            let (h0, h1, w0, w1) = (1.0 - t.l1, t.l1, 1.0 - u.l1, u.l1);
            let mut best = f32::NEG_INFINITY;
            let mut arg = chans[0];
            for &ch in chans {
                let v = h0 * (w0 * a[ch] + w1 * b[ch]) + h1 * (w0 * c[ch] + w1 * d[ch]);
                if v > best {
                    best = v;
                    arg = ch;
                }
            }
            *slot = arg as u16;
        }
    });
    out
}

/// The head's probability (softmax over all S channels of the upsampled logits) of the label
/// each pixel got, for `part-ap`'s instance scores (`OUT/prob/`). With the filter it is the
/// label's unfiltered probability: zeroing the other classes does not renormalise.
pub fn upsampled_label_prob(
    logits: &[f32],
    h: usize,
    w: usize,
    s: usize,
    out_h: usize,
    out_w: usize,
    labels: &[u16],
) -> Vec<f32> {
    let ty = taps(h, out_h);
    let tx = taps(w, out_w);
    let mut out = vec![0f32; out_h * out_w];
    out.par_chunks_mut(out_w).enumerate().for_each(|(y, row)| {
        let t = ty[y];
        let mut v = vec![0f32; s];
        for (x, slot) in row.iter_mut().enumerate() {
            let u = tx[x];
            let at = |yy: usize, xx: usize| &logits[(yy * w + xx) * s..(yy * w + xx + 1) * s];
            let (a, b, c, d) = (
                at(t.i0, u.i0),
                at(t.i0, u.i1),
                at(t.i1, u.i0),
                at(t.i1, u.i1),
            );
            let (h0, h1, w0, w1) = (1.0 - t.l1, t.l1, 1.0 - u.l1, u.l1);
            let mut max = f32::NEG_INFINITY;
            for (ch, slot) in v.iter_mut().enumerate() {
                *slot = h0 * (w0 * a[ch] + w1 * b[ch]) + h1 * (w0 * c[ch] + w1 * d[ch]);
                max = max.max(*slot);
            }
            let sum: f32 = v.iter().map(|&z| (z - max).exp()).sum();
            let label = labels[y * out_w + x] as usize;
            *slot = (v[label.min(s - 1)] - max).exp() / sum;
        }
    });
    out
}

/// Channels the filter keeps for a class: background and the class's own parts.
fn filter_channels(table: &PartTable, wnid: &str, s: usize) -> Option<Vec<usize>> {
    let c = table.wnids.iter().position(|w| w == wnid)?;
    let (lo, hi) = table.ranges()[c];
    Some(
        std::iter::once(0)
            .chain((lo as usize..hi as usize).filter(|&i| i < s))
            .collect(),
    )
}

pub fn run(
    spec: &ModelSpec,
    store: &ParamStore,
    table: &PartTable,
    index: &Index,
    cfg: &PseudoConfig,
) -> Result<PseudoSummary> {
    if !matches!(spec.head, crate::nn::Head::Mpm { .. }) {
        return Err(Error::flag(
            "--head",
            "pseudo labels come from the MPM part heads: use --head mpm",
        ));
    }
    let s = spec.seg_classes;
    if table.num_parts() + 1 != s {
        return Err(Error::flag(
            "--seg-classes",
            format!(
                "the part table has {} parts (S = {}), the model S = {s}",
                table.num_parts(),
                table.num_parts() + 1
            ),
        ));
    }
    let mut summary = PseudoSummary {
        // OUT/seg/<wnid>, OUT/prob/<wnid>, OUT/img/<wnid>, OUT/whether_pseudo: two levels.
        stale_temps_removed: crate::io::remove_stale_temps_tree(&cfg.out, 2)?,
        ..Default::default()
    };
    imageio::mkdirs(&cfg.out.join("seg"))?;
    let bulk = crate::io::BulkDirs::new(&cfg.out);
    let mut with_f = SegScore::new(s);
    let mut without_f = SegScore::new(s);
    let mut records = String::new();
    let pb = super::labels::progress_bar(index.samples.len() as u64, cfg.progress, "pseudo");
    let size = cfg.input_size;
    // Per class: the flags as on disk plus this run's, and whether they changed since written.
    let mut flags: std::collections::HashMap<String, (Flags, bool)> = Default::default();
    let flush = |flags: &mut std::collections::HashMap<String, (Flags, bool)>| -> Result<()> {
        for (wnid, (f, dirty)) in flags.iter_mut() {
            if *dirty {
                layout::write_flags(&layout::flags_path(&cfg.out, wnid), f)?;
                *dirty = false;
            }
        }
        Ok(())
    };
    for (chunk_no, chunk) in index.samples.chunks(cfg.batch_size.max(1)).enumerate() {
        if chunk_no % 64 == 63 {
            flush(&mut flags)?;
        }
        // Decode and resize the batch.
        let mut imgs = Vec::new();
        for smp in chunk {
            match imageio::read_rgb(&smp.image).and_then(|img| {
                let (w, h) = (img.width() as usize, img.height() as usize);
                let crop = CropBox {
                    top: 0,
                    left: 0,
                    h,
                    w,
                };
                Ok((resize_bicubic(&img, crop, size, size)?, h, w))
            }) {
                Ok(v) => imgs.push((smp, v)),
                Err(e) => summary.skipped.push(Skip::new(&smp.image, e.to_string())),
            }
        }
        if imgs.is_empty() {
            pb.inc(chunk.len() as u64);
            continue;
        }
        let n = imgs.len();
        let mut x = Vec::with_capacity(n * size * size * 3);
        for (_, (im, _, _)) in &imgs {
            x.extend(im.as_raw().iter().map(|&v| v as f32 / 255.0));
        }
        let mut st = store.clone();
        let mut ctx = Ctx::new(&mut st, GradMode::NoGrad, false);
        let xv = ctx
            .tape
            .input(Tensor::from_vec(&[n, size, size, 3], x)?, false);
        let out = spec.forward(&mut ctx, xv)?;
        let seg = ctx.tape.value(out.segs[0]);
        let [_, h, w, _] = [
            seg.shape()[0],
            seg.shape()[1],
            seg.shape()[2],
            seg.shape()[3],
        ];
        let data = seg.data();
        for (k, (smp, (_, ih, iw))) in imgs.iter().enumerate() {
            let logits = &data[k * h * w * s..(k + 1) * h * w * s];
            let wnid = index.classes.get(smp.label).cloned().unwrap_or_default();
            let chans = filter_channels(table, &wnid, s);
            let gt = match &smp.seg {
                Some(p) => match imageio::read_label_map(p) {
                    Ok(m) if m.h == *ih && m.w == *iw => Some(m),
                    Ok(m) => {
                        summary.skipped.push(Skip::new(
                            p,
                            format!("label map {}x{} but image {iw}x{ih}", m.w, m.h),
                        ));
                        None
                    }
                    Err(e) => {
                        summary.skipped.push(Skip::new(p, e.to_string()));
                        None
                    }
                },
                None => None,
            };
            let filtered = chans
                .as_deref()
                .map(|c| upsampled_argmax(logits, h, w, s, *ih, *iw, Some(c)));
            if cfg.category_filter && filtered.is_none() {
                summary.skipped.push(Skip::new(
                    &smp.image,
                    format!("class '{wnid}' is not in the part table: no filter possible"),
                ));
                continue;
            }
            let plain = (!cfg.category_filter || gt.is_some())
                .then(|| upsampled_argmax(logits, h, w, s, *ih, *iw, None));
            if let Some(g) = &gt {
                summary.scored += 1;
                if let Some(f) = &filtered {
                    with_f.add(&g.data, f);
                }
                if let Some(p) = &plain {
                    without_f.add(&g.data, p);
                }
            }
            if cfg.skip_annotated && smp.seg.is_some() {
                continue;
            }
            let pred = if cfg.category_filter { filtered } else { plain };
            let Some(pred) = pred else { continue };
            let stem = smp
                .image
                .file_stem()
                .and_then(|x| x.to_str())
                .unwrap_or("image");
            let file = smp
                .image
                .file_name()
                .and_then(|x| x.to_str())
                .unwrap_or("image")
                .to_string();
            let dst = cfg.out.join("seg").join(&wnid).join(format!("{stem}.png"));
            if !flags.contains_key(&wnid) {
                let f = layout::read_flags(&layout::flags_path(&cfg.out, &wnid))?;
                flags.insert(wnid.clone(), (f, false));
            }
            let (class_flags, dirty) = flags.get_mut(&wnid).expect("inserted above");
            let annotated = match class_flags.get(&file) {
                Some(&pseudo) => !pseudo,
                None => dst.exists(),
            };
            if annotated {
                summary.kept_annotated += 1;
                continue;
            }
            imageio::mkdirs(dst.parent().unwrap_or(Path::new(".")))?;
            let img_dir = cfg.out.join("img").join(&wnid);
            imageio::mkdirs(&img_dir)?;
            let img_dst = img_dir.join(&file);
            if std::fs::symlink_metadata(&img_dst).is_err() {
                layout::place_image(&smp.image, &img_dst, ImageMode::Symlink)?;
                bulk.wrote(&img_dst);
            }
            // The probability of each pixel's label, for part-ap's instance scores.
            let prob = upsampled_label_prob(logits, h, w, s, *ih, *iw, &pred);
            let prob_dir = cfg.out.join("prob").join(&wnid);
            imageio::mkdirs(&prob_dir)?;
            let prob_dst = prob_dir.join(format!("{stem}.png"));
            imageio::write_label_map(
                &prob_dst,
                &LabelMap {
                    h: *ih,
                    w: *iw,
                    data: prob
                        .iter()
                        .map(|&p| (p.clamp(0.0, 1.0) * 65535.0).round() as u16)
                        .collect(),
                },
            )?;
            imageio::write_label_map(
                &dst,
                &LabelMap {
                    h: *ih,
                    w: *iw,
                    data: pred,
                },
            )?;
            bulk.wrote(&prob_dst);
            bulk.wrote(&dst);
            class_flags.insert(file, true);
            *dirty = true;
            summary.written += 1;
            records.push_str(
                &serde_json::json!({
                    "image": smp.image.display().to_string(),
                    "class": smp.label,
                    "wnid": wnid,
                    "label_map": dst.display().to_string(),
                    "pseudo": true,
                    "category_filter": cfg.category_filter,
                })
                .to_string(),
            );
            records.push('\n');
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    flush(&mut flags)?;
    // The one durability point of the maps: before the record that lists them.
    summary.dirs_synced = bulk.sync()?;
    imageio::write_atomic(&cfg.out.join("pseudo.jsonl"), records.as_bytes())?;
    if summary.scored > 0 {
        summary.with_filter = Some(with_f);
        summary.without_filter = Some(without_f);
    }
    Ok(summary)
}
