//! Clean accuracy, ImageNet-C (the paper's Table 3) and the OOD datasets (Table 4): each builds
//! its sets, runs the shared prediction loop and returns the JSON report (with its Markdown
//! table under `"table"`).

use super::assets::{alexnet_errors, imagenet_wnids, ClassSubset};
use super::predict::{predict, tally, Head, Outcome, PredictionJournal, Throughput};
use super::report::{frac, markdown_table, pct};
use super::sets::{EvalTransform, Images};
use crate::attack::imagefolder::EvalSet;
use crate::attack::model::Classifier;
use crate::attack::report::wilson95;
use crate::attack::shard::Shard;
use crate::attack::subset::{ClassMap, MappedSet};
use crate::data::corrupt::Corruption;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A model, its batch size and the run's journal: what every evaluation needs.
pub struct Runner<'a> {
    pub model: &'a mut dyn Classifier,
    pub batch_size: usize,
    pub journal: PredictionJournal,
    pub throughput: Throughput,
    /// The model's name in reports and tables.
    pub name: String,
    /// `--shard I/N`: each set's block of images (`attack::shard`).
    pub shard: Option<Shard>,
    /// `--class-subset` / `--super-classes`: logits regrouped, images of the listed classes
    /// only (`attack::subset`).
    pub class_map: Option<ClassMap>,
}

impl Runner<'_> {
    /// The indices of a set of `n` images this run evaluates (all, or its shard's block).
    pub fn indices(&self, n: usize) -> std::ops::Range<usize> {
        crate::attack::shard::indices(self.shard, n)
    }

    /// Predicts one subset (numbered `subset` in the journal), adds to the throughput.
    pub fn run(
        &mut self,
        set: &(dyn EvalSet + Sync),
        heads: &[Head],
        subset: u32,
        label: &str,
    ) -> Result<Vec<Outcome>> {
        super::predict::check_heads(&*self.model, heads, label)?;
        let mapped;
        let grouped;
        let (set, heads): (&(dyn EvalSet + Sync), &[Head]) = match &self.class_map {
            None => (set, heads),
            Some(map) => {
                if heads != [Head::Top1] {
                    return Err(Error::flag(
                        map.flag(),
                        format!(
                            "{label} reads its own classes: a class subset applies to top-1 \
                             evaluations over all logits (clean, corruptions, and the OOD sets \
                             without a class restriction)"
                        ),
                    ));
                }
                mapped = MappedSet::new(set, map)?;
                grouped = [Head::Groups(map.groups.clone())];
                (&mapped, &grouped[..])
            }
        };
        let (out, tp) = predict(
            &mut *self.model,
            set,
            heads,
            subset,
            self.batch_size,
            &mut self.journal,
            label,
            self.shard,
        )?;
        if tp.images > 0 {
            eprintln!("{label}: {}", tp.line());
        }
        self.throughput.add(&tp);
        Ok(out)
    }
}

/// Accuracy summary of one set: fraction, counts and the Wilson 95% interval.
fn summary(outcomes: &[Outcome], head: usize) -> Value {
    let (right, n, skipped) = tally(outcomes, head);
    let (lo, hi) = wilson95(right, n);
    json!({"accuracy": frac(right, n), "correct": right, "n": n, "skipped": skipped, "ci95": [lo, hi]})
}

/// Keeps the first `k` images (by name) of each class.
pub fn limit_per_class(set: &mut Images, k: Option<usize>) {
    let Some(k) = k else { return };
    let mut seen = std::collections::HashMap::new();
    set.items.retain(|(_, c)| {
        let e = seen.entry(*c).or_insert(0usize);
        *e += 1;
        *e <= k
    });
}

/// Clean accuracy on an ImageFolder (the val set).
pub fn clean(r: &mut Runner, set: &Images) -> Result<Value> {
    let out = r.run(set, &[Head::Top1], 0, "clean")?;
    let s = summary(&out, 0);
    let table = markdown_table(
        &["Model".into(), "Clean".into()],
        &[vec![r.name.clone(), pct(s["accuracy"].as_f64())]],
    );
    println!("{table}");
    Ok(json!({
        "kind": "clean", "model": r.name, "data": set.describe(),
        "transform": set.transform.describe(),
        "clean_accuracy": s["accuracy"], "result": s, "table": table,
    }))
}

/// The short column names of Table 3.
pub fn corruption_label(c: Corruption) -> &'static str {
    match c {
        Corruption::GaussianNoise => "Gauss",
        Corruption::ShotNoise => "Shot",
        Corruption::ImpulseNoise => "Impul",
        Corruption::DefocusBlur => "Defoc",
        Corruption::GlassBlur => "Glass",
        Corruption::MotionBlur => "Motion",
        Corruption::ZoomBlur => "Zoom",
        Corruption::Snow => "Snow",
        Corruption::Frost => "Frost",
        Corruption::Fog => "Fog",
        Corruption::Brightness => "Bright",
        Corruption::Contrast => "Contr",
        Corruption::ElasticTransform => "Elastic",
        Corruption::Pixelate => "Pixel",
        Corruption::JpegCompression => "JPEG",
    }
}

/// What `mpm-eval corruptions` evaluates.
pub struct CorruptionPlan {
    /// The pre-generated tree (`<corruption>/<severity>/<class>/<image>`), or with
    /// `on_the_fly` the clean val ImageFolder.
    pub data: PathBuf,
    pub on_the_fly: bool,
    pub corruptions: Vec<Corruption>,
    pub severities: Vec<u8>,
    pub seed: u64,
    pub crop: u32,
    /// The eval transform's shorter-side resize is bilinear instead of bicubic
    /// (`--interpolation bilinear`; the on-the-fly generation pipeline keeps its own).
    pub bilinear: bool,
    pub num_classes: usize,
    pub per_class: Option<usize>,
}

/// Table 3: accuracy per corruption (mean over the severities), per severity in the JSON, the
/// mean over corruptions and mCE against AlexNet's errors.
pub fn corruptions(r: &mut Runner, plan: &CorruptionPlan) -> Result<Value> {
    let transform = EvalTransform::standard(plan.crop).with_bilinear(plan.bilinear);
    let base = if plan.on_the_fly {
        let mut b = Images::folder(&plan.data, plan.num_classes, transform, "val set")?;
        limit_per_class(&mut b, plan.per_class);
        Some(b)
    } else {
        // Every requested folder must exist before hours of work start.
        for c in &plan.corruptions {
            for s in &plan.severities {
                let d = plan.data.join(c.name()).join(s.to_string());
                if !d.is_dir() {
                    return Err(Error::format(
                        &d,
                        format!(
                            "missing ImageNet-C folder {}/{s} (expected <data>/<corruption>/<severity>/<class>/<image>; \
                             use --corruptions/--severities to evaluate a part, or --on-the-fly with the val set)",
                            c.name()
                        ),
                    ));
                }
            }
        }
        None
    };
    let alex = alexnet_errors()?;
    let mut per = serde_json::Map::new();
    let mut accs = Vec::new();
    let mut ces = Vec::new();
    let mut data_desc = Vec::new();
    for &c in &plan.corruptions {
        let mut sev = serde_json::Map::new();
        let mut mean = 0.0;
        for &s in &plan.severities {
            let set = match &base {
                Some(b) => Images {
                    root: b.root.clone(),
                    classes: b.classes.clone(),
                    items: b.items.clone(),
                    transform,
                    corruption: Some((c, s, plan.seed)),
                    what: "val set".into(),
                },
                None => {
                    let mut set = Images::folder(
                        &plan.data.join(c.name()).join(s.to_string()),
                        plan.num_classes,
                        transform,
                        "ImageNet-C",
                    )?;
                    limit_per_class(&mut set, plan.per_class);
                    set
                }
            };
            if data_desc.is_empty() {
                data_desc.push(set.describe());
            }
            let ci = Corruption::ALL.iter().position(|&x| x == c).unwrap_or(0);
            let subset = (ci * 5 + (s as usize - 1)) as u32;
            let out = r.run(&set, &[Head::Top1], subset, &format!("{} {s}", c.name()))?;
            let sm = summary(&out, 0);
            mean += sm["accuracy"].as_f64().unwrap_or(0.0);
            sev.insert(s.to_string(), sm);
        }
        mean /= plan.severities.len() as f64;
        let alex_err = alex
            .iter()
            .find(|a| a.0 == c.name())
            .map(|a| a.1)
            .ok_or_else(|| Error::Msg(format!("no AlexNet error for {}", c.name())))?;
        let ce = (1.0 - mean) / alex_err;
        accs.push(mean);
        ces.push(ce);
        per.insert(
            c.name().to_string(),
            json!({"accuracy": mean, "error": 1.0 - mean, "ce": ce,
                   "alexnet_error": alex_err, "per_severity": sev}),
        );
    }
    let avg = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
    let mce = ces.iter().sum::<f64>() / ces.len().max(1) as f64;
    let all_severities = plan.severities.len() == 5;
    let mut header = vec!["Model".to_string()];
    header.extend(
        plan.corruptions
            .iter()
            .map(|&c| corruption_label(c).to_string()),
    );
    header.extend(["Avg".to_string(), "mCE".to_string()]);
    let mut row = vec![r.name.clone()];
    row.extend(accs.iter().map(|&a| pct(Some(a))));
    row.extend([pct(Some(avg)), pct(Some(mce))]);
    let mut table = markdown_table(&header, &[row]);
    if !all_severities {
        table.push_str(&format!(
            "\n\nSeverities {:?} only: accuracies are their mean; mCE divides by AlexNet's \
             5-severity errors, so it is not the standard figure.",
            plan.severities
        ));
    }
    println!("{table}");
    Ok(json!({
        "kind": "corruptions", "model": r.name,
        "mode": if plan.on_the_fly { "on-the-fly" } else { "pre-generated" },
        "data": plan.data.display().to_string(), "first_set": data_desc.first(),
        "transform": transform.describe(),
        "severities": plan.severities, "seed": plan.seed,
        "corruptions": per, "average_accuracy": avg, "mce": mce,
        "mce_note": "CE_c = (1 - mean accuracy over severities) / AlexNet's mean error; mCE = mean CE over corruptions (fractions)",
        "table": table,
    }))
}

/// The OOD datasets of Table 4 (and the usual companions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OodDataset {
    ImagenetA,
    ImagenetAPlus,
    ImagenetR,
    ImagenetSketch,
    StylizedImagenet,
    ImagenetV2,
}

impl OodDataset {
    pub const ALL: [OodDataset; 6] = [
        OodDataset::ImagenetA,
        OodDataset::ImagenetAPlus,
        OodDataset::ImagenetR,
        OodDataset::ImagenetSketch,
        OodDataset::StylizedImagenet,
        OodDataset::ImagenetV2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OodDataset::ImagenetA => "imagenet-a",
            OodDataset::ImagenetAPlus => "imagenet-a-plus",
            OodDataset::ImagenetR => "imagenet-r",
            OodDataset::ImagenetSketch => "imagenet-sketch",
            OodDataset::StylizedImagenet => "stylized-imagenet",
            OodDataset::ImagenetV2 => "imagenet-v2",
        }
    }

    /// Table 4's column name.
    pub fn column(self) -> &'static str {
        match self {
            OodDataset::ImagenetA => "IN-A",
            OodDataset::ImagenetAPlus => "IN-A-Plus",
            OodDataset::ImagenetR => "IN-R",
            OodDataset::ImagenetSketch => "IN-Sketch",
            OodDataset::StylizedImagenet => "SIN",
            OodDataset::ImagenetV2 => "IN-V2",
        }
    }

    pub fn parse(s: &str) -> Result<OodDataset> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::flag(
                    "--dataset",
                    format!(
                        "unknown dataset '{s}'; one of {}",
                        Self::ALL.map(|d| d.name()).join(", ")
                    ),
                )
            })
    }

    fn subset(self) -> Option<ClassSubset> {
        match self {
            OodDataset::ImagenetA | OodDataset::ImagenetAPlus => Some(ClassSubset::A),
            OodDataset::ImagenetR => Some(ClassSubset::R),
            _ => None,
        }
    }

    /// The authors' transform for this dataset at model input `crop` (see
    /// [`EvalTransform::with_bilinear`] for `--interpolation bilinear`).
    pub fn transform(self, crop: u32) -> EvalTransform {
        match self {
            OodDataset::ImagenetAPlus => EvalTransform::Squash {
                size: crop * 256 / 224,
                crop,
            },
            _ => EvalTransform::standard(crop),
        }
    }
}

/// One OOD dataset: top-1 accuracy, over the dataset's 200 classes for A, A-Plus and R.
pub fn ood(
    r: &mut Runner,
    ds: OodDataset,
    root: &Path,
    crop: u32,
    bilinear: bool,
    per_class: Option<usize>,
) -> Result<Value> {
    let transform = ds.transform(crop).with_bilinear(bilinear);
    let num_classes = r.model.num_classes();
    let (mut set, heads) = match ds.subset() {
        Some(_) if num_classes != 1000 => {
            return Err(Error::flag(
                "--num-classes",
                format!(
                    "{} restricts ImageNet-1K's 1,000 logits to its 200 classes, but the model \
                     has {num_classes} classes",
                    ds.name()
                ),
            ))
        }
        Some(sub) => {
            let wnids = sub.wnids();
            let found = super::sets::class_dirs(root, ds.name())?;
            super::sets::require_classes(root, ds.name(), &found, &wnids)?;
            let set = Images::folder(root, wnids.len(), transform, ds.name())?;
            (set, vec![Head::Restricted(sub.indices()?)])
        }
        None => {
            let set = Images::folder(root, num_classes, transform, ds.name());
            let mut set = match (ds, set) {
                // V2's folders are class indices: a count mismatch is still the error to show.
                (_, Err(e)) => return Err(e),
                (_, Ok(s)) => s,
            };
            if ds == OodDataset::ImagenetV2 {
                set.relabel_by_index(num_classes)?;
            } else if num_classes == 1000 {
                set.require_classes(&imagenet_wnids())?;
            }
            (set, vec![Head::Top1])
        }
    };
    limit_per_class(&mut set, per_class);
    let out = r.run(&set, &heads, 0, ds.name())?;
    let s = summary(&out, 0);
    let table = markdown_table(
        &["Model".into(), ds.column().into()],
        &[vec![r.name.clone(), pct(s["accuracy"].as_f64())]],
    );
    println!("{table}");
    Ok(json!({
        "kind": "ood", "dataset": ds.name(), "column": ds.column(), "model": r.name,
        "data": set.describe(), "transform": transform.describe(),
        "classes": if ds.subset().is_some() { "logits restricted to the dataset's 200 classes" } else { "all logits" },
        "accuracy": s["accuracy"], "result": s, "table": table,
    }))
}
