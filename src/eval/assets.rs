//! The small public tables `mpm-eval` needs, embedded in the binary (`assets/eval/`, sources in
//! its README): ImageNet's class order, the 200-class subsets of ImageNet-A and -R, AlexNet's
//! ImageNet-C errors (the mCE denominators) and the model-vs-human category and condition tables.

use crate::{Error, Result};
use std::collections::BTreeMap;

const IMAGENET_CLASSES: &str = include_str!("../../assets/eval/imagenet_classes.tsv");
const IMAGENET_A_WNIDS: &str = include_str!("../../assets/eval/imagenet_a_wnids.txt");
const IMAGENET_R_WNIDS: &str = include_str!("../../assets/eval/imagenet_r_wnids.txt");
const ALEXNET_ERRORS: &str = include_str!("../../assets/eval/alexnet_errors.tsv");
const SIXTEEN_CLASS_INDICES: &str = include_str!("../../assets/eval/sixteen_class_indices.tsv");
const DATA_CONDITIONS: &str = include_str!("../../assets/eval/data_conditions.tsv");
const EXCLUDED_CONDITIONS: &str = include_str!("../../assets/eval/excluded_conditions.tsv");

fn bad(what: &str, msg: String) -> Error {
    // The tables are compiled in: a parse failure is a build defect, reported like a bad file.
    Error::format(format!("assets/eval/{what}"), msg)
}

/// The 1,000 ImageNet-1K wnids in class-index order.
pub fn imagenet_wnids() -> Vec<&'static str> {
    IMAGENET_CLASSES
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The two 200-class subsets whose evaluation restricts the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassSubset {
    /// ImageNet-A and ImageNet-A-Plus.
    A,
    /// ImageNet-R.
    R,
}

impl ClassSubset {
    /// The subset's wnids, in class-index order (= sorted, so also the ImageFolder order).
    pub fn wnids(self) -> Vec<&'static str> {
        let text = match self {
            ClassSubset::A => IMAGENET_A_WNIDS,
            ClassSubset::R => IMAGENET_R_WNIDS,
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The subset's ImageNet-1K class indices, ascending.
    pub fn indices(self) -> Result<Vec<usize>> {
        let all = imagenet_wnids();
        self.wnids()
            .iter()
            .map(|w| {
                all.iter().position(|a| a == w).ok_or_else(|| {
                    bad(
                        "imagenet_*_wnids.txt",
                        format!("{w} is not an ImageNet class"),
                    )
                })
            })
            .collect()
    }
}

/// AlexNet's top-1 error per corruption (mean over the 5 severities), in the table's order.
pub fn alexnet_errors() -> Result<Vec<(String, f64)>> {
    ALEXNET_ERRORS
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap_or_default().to_string();
            let v = f
                .next()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| bad("alexnet_errors.tsv", format!("bad line '{l}'")))?;
            Ok((name, v))
        })
        .collect()
}

/// The 16 model-vs-human categories (alphabetical, the benchmark's order) and the ImageNet
/// indices whose probabilities are averaged into each.
pub fn sixteen_classes() -> Result<Vec<(String, Vec<usize>)>> {
    SIXTEEN_CLASS_INDICES
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, idx) = l
                .split_once('\t')
                .ok_or_else(|| bad("sixteen_class_indices.tsv", format!("bad line '{l}'")))?;
            let idx = idx
                .split(',')
                .map(|v| v.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("sixteen_class_indices.tsv", format!("{name}: {e}")))?;
            Ok((name.to_string(), idx))
        })
        .collect()
}

fn dataset_lists(text: &str, what: &str) -> BTreeMap<String, Vec<String>> {
    let _ = what;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, list) = l.split_once('\t').unwrap_or((l, ""));
            let items = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            (name.trim().to_string(), items)
        })
        .collect()
}

/// The 17 model-vs-human datasets, in the benchmark's default order.
pub const HUMAN_DATASETS: [&str; 17] = [
    "edge",
    "silhouette",
    "cue-conflict",
    "colour",
    "contrast",
    "high-pass",
    "low-pass",
    "phase-scrambling",
    "power-equalisation",
    "false-colour",
    "rotation",
    "eidolonI",
    "eidolonII",
    "eidolonIII",
    "uniform-noise",
    "sketch",
    "stylized",
];

/// Each model-vs-human dataset's experiment conditions (empty: scored as one block).
pub fn data_conditions() -> BTreeMap<String, Vec<String>> {
    dataset_lists(DATA_CONDITIONS, "data_conditions.tsv")
}

/// The conditions the benchmark leaves out of its aggregate metrics.
pub fn excluded_conditions() -> BTreeMap<String, Vec<String>> {
    dataset_lists(EXCLUDED_CONDITIONS, "excluded_conditions.tsv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_with_the_expected_sizes() {
        let w = imagenet_wnids();
        assert_eq!(w.len(), 1000);
        assert_eq!(w[0], "n01440764");
        let a = ClassSubset::A.indices().unwrap();
        let r = ClassSubset::R.indices().unwrap();
        assert_eq!((a.len(), r.len()), (200, 200));
        assert!(a.windows(2).all(|p| p[0] < p[1]));
        // The authors' thousand_k_to_200 map starts 6 -> 0, 11 -> 1, 13 -> 2.
        assert_eq!(&a[..3], &[6, 11, 13]);
        let e = alexnet_errors().unwrap();
        assert_eq!(e.len(), 15);
        assert_eq!(e[0].0, "gaussian_noise");
        assert!((e[14].1 - 0.6065).abs() < 1e-12);
        let s = sixteen_classes().unwrap();
        assert_eq!(s.len(), 16);
        assert_eq!(s.iter().map(|c| c.1.len()).sum::<usize>(), 207);
        assert_eq!(s[0], ("airplane".to_string(), vec![404]));
        let dc = data_conditions();
        assert_eq!(dc.len(), 17);
        assert!(dc["edge"].is_empty());
        assert_eq!(dc["uniform-noise"].len(), 8);
        assert_eq!(
            excluded_conditions()["contrast"],
            vec!["c100", "c03", "c01"]
        );
        for d in HUMAN_DATASETS {
            assert!(dc.contains_key(d), "{d}");
        }
    }
}
