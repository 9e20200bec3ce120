//! Evaluation during training and in the demo: clean accuracy, PGD accuracy (the reference's
//! validation attack: l-inf, `steps` iterations of `eps / 4`, random start, plain CE, last
//! iterate) at one or more radii, and part pixel accuracy / mIoU of the highest-resolution
//! head, upsampled to the label map's resolution and scored on every pixel of the map
//! (images with parts only; `part_metrics`).

use super::part_metrics::PartScores;
use super::pgd::{pgd_linf, step_rng, PgdConfig};
use super::source::{Batch, BatchSource};
use super::trainer::count_correct;
use crate::autograd::GradMode;
use crate::device::Device;
use crate::nn::{Ctx, ModelSpec, ParamStore};
use crate::Result;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalResult {
    pub images: usize,
    pub clean_acc: f64,
    /// `(eps, accuracy)` per attack radius.
    pub pgd_acc: Vec<(f32, f64)>,
    pub pgd_steps: usize,
    /// Part pixel accuracy and mean IoU (None without a part head or without part maps).
    pub pixel_acc: Option<f64>,
    pub miou: Option<f64>,
    /// The part counts behind `pixel_acc` and `miou` (sharded evaluation adds them over the
    /// ranks: `dist::train`).
    #[serde(skip)]
    pub parts: Option<PartScores>,
}

pub struct EvalOptions<'a> {
    pub eps: &'a [f32],
    pub steps: usize,
    pub batch_size: usize,
    pub max_images: usize,
    pub seed: u64,
    /// Label-map transform (object-mask ablation); identity when None.
    pub maps: &'a dyn Fn(&Batch) -> Vec<u16>,
    pub device: Device,
}

/// Evaluates `store` (eval mode) on `src`.
pub fn evaluate(
    spec: &ModelSpec,
    store: &ParamStore,
    src: &dyn BatchSource,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalResult> {
    let mut store = store.clone();
    let total = if opts.max_images > 0 {
        src.len().min(opts.max_images)
    } else {
        src.len()
    };
    let bs = opts.batch_size.max(1);
    let nb = total.div_ceil(bs);
    let s = spec.seg_classes.max(1);
    let mut clean = 0usize;
    let mut adv = vec![0usize; opts.eps.len()];
    let mut seen = 0usize;
    let mut parts = PartScores::new(s);
    for b in 0..nb {
        let mut batch = src.batch(0, b, bs, false)?;
        let keep = (total - seen).min(batch.len());
        if keep < batch.len() {
            truncate(&mut batch, keep)?;
        }
        let n = batch.len();
        // Clean pass: logits (and part logits for the pixel metrics).
        {
            let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, false);
            let x = ctx.tape.input(batch.images.to_device(opts.device)?, false);
            let out = spec.forward(&mut ctx, x)?;
            clean += count_correct(ctx.tape.value(out.logits), &batch.labels);
            if let Some(seg) = out.segs.first() {
                // Scored at the label map's resolution (`part_metrics`).
                let z = ctx.tape.value(*seg);
                let [_, h, w, c] = [z.shape()[0], z.shape()[1], z.shape()[2], z.shape()[3]];
                let maps = (opts.maps)(&batch);
                let side = batch.side();
                for i in 0..n {
                    if batch.has_parts[i] {
                        parts.add_image(
                            &z.data()[i * h * w * c..(i + 1) * h * w * c],
                            (h, w, c),
                            &maps[i * side * side..(i + 1) * side * side],
                        );
                    }
                }
            }
        }
        for (k, &eps) in opts.eps.iter().enumerate() {
            let cfg = PgdConfig {
                eps,
                step: eps / 4.0,
                steps: opts.steps,
                smoothing: 0.0,
                keep_best: false,
                device: opts.device,
            };
            let mut rng = step_rng(opts.seed ^ 0xE7A1 ^ ((k as u64) << 40), b as u64);
            let xa = pgd_linf(
                spec,
                &mut store,
                &batch.images,
                &batch.labels,
                &cfg,
                &mut rng,
            )?;
            let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, false);
            let x = ctx.tape.input(xa.to_device(opts.device)?, false);
            let logits = spec.forward_logits(&mut ctx, x)?;
            adv[k] += count_correct(ctx.tape.value(logits), &batch.labels);
        }
        seen += n;
        progress(seen, total);
    }
    let frac = |k: usize| k as f64 / seen.max(1) as f64;
    Ok(EvalResult {
        images: seen,
        clean_acc: frac(clean),
        pgd_acc: opts
            .eps
            .iter()
            .zip(&adv)
            .map(|(&e, &a)| (e, frac(a)))
            .collect(),
        pgd_steps: opts.steps,
        pixel_acc: parts.pixel_acc(),
        miou: parts.miou(),
        parts: Some(parts),
    })
}

fn truncate(b: &mut Batch, n: usize) -> Result<()> {
    let side = b.side();
    let data = b.images.data()[..n * side * side * 3].to_vec();
    b.images = crate::tensor::Tensor::from_vec(&[n, side, side, 3], data)?;
    b.labels.truncate(n);
    b.label_maps.truncate(n * side * side);
    b.has_parts.truncate(n);
    b.pseudo.truncate(n);
    Ok(())
}
