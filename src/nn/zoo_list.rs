//! The known Table 2 models (`assets/zoo/table2.toml`, compiled in): names, files, download
//! addresses, layouts, preprocessing and the paper's numbers. `mpm-attack zoo` prints it;
//! `mpm-attack --zoo NAME` checks a checkpoint against its entry; `mpm-eval table --published`
//! puts the published numbers beside the measured ones.

use super::zoo::{InputNorm, Layout, Preprocessing};
use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The list as committed.
pub const TABLE2_TOML: &str = include_str!("../../assets/zoo/table2.toml");

/// Table 2's columns: (TOML key, column name as `mpm-eval table` writes it).
pub const TABLE2_COLUMNS: [(&str, &str); 5] = [
    ("clean", "Clean"),
    ("linf4", "Linf 4/255"),
    ("linf8", "Linf 8/255"),
    ("l1", "L1 75"),
    ("l2", "L2 2"),
];

#[derive(Debug, Clone, Deserialize)]
pub struct ZooEntry {
    pub name: String,
    pub row: String,
    pub identified: bool,
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub layout: String,
    #[serde(default)]
    pub act: String,
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    #[serde(default)]
    pub transform: String,
    #[serde(default)]
    pub flags: String,
    /// Percentages by column key (`TABLE2_COLUMNS`).
    #[serde(default)]
    pub table2: BTreeMap<String, f64>,
    #[serde(default)]
    pub other: BTreeMap<String, f64>,
    #[serde(default)]
    pub other_source: String,
}

#[derive(Debug, Deserialize)]
struct ZooFile {
    model: Vec<ZooEntry>,
}

impl ZooEntry {
    /// The eval transform the model is evaluated with, as (resize, crop, interpolation):
    /// `Crop288` = no resize, centre crop 288, bicubic; `Res256Crop224` (RobustBench) =
    /// resize 256, crop 224, bilinear; otherwise the timm/torchvision default, bicubic.
    pub fn eval_transform(&self) -> (u32, u32, &'static str) {
        match self.transform.as_str() {
            "Crop288" => (0, 288, "bicubic"),
            "Res256Crop224" => (256, 224, "bilinear"),
            _ => (256, 224, "bicubic"),
        }
    }

    pub fn norm(&self) -> Option<InputNorm> {
        Some(InputNorm {
            mean: self.mean?,
            std: self.std?,
        })
    }
}

/// Parses a zoo list (the committed one: [`table2`]), checking every field it relies on.
pub fn parse(text: &str, origin: &str) -> Result<Vec<ZooEntry>> {
    let f: ZooFile =
        toml::from_str(text).map_err(|e| Error::Msg(format!("{origin}: not a zoo list: {e}")))?;
    let bad = |n: &str, m: String| Error::Msg(format!("{origin}: model '{n}': {m}"));
    let mut seen = std::collections::BTreeSet::new();
    for e in &f.model {
        if !seen.insert(e.name.clone()) {
            return Err(bad(&e.name, "listed twice".into()));
        }
        for k in e.table2.keys().chain(e.other.keys()) {
            if !TABLE2_COLUMNS.iter().any(|(c, _)| c == k) {
                return Err(bad(
                    &e.name,
                    format!("unknown column '{k}' (expected clean, linf4, linf8, l1, l2)"),
                ));
            }
        }
        if let Some(v) = e
            .table2
            .values()
            .chain(e.other.values())
            .find(|v| !(0.0..=100.0).contains(*v))
        {
            return Err(bad(&e.name, format!("{v} is not a percentage")));
        }
        if e.identified {
            if Layout::parse(&e.layout).is_none() {
                return Err(bad(&e.name, format!("unknown layout '{}'", e.layout)));
            }
            if e.norm().is_none() {
                return Err(bad(
                    &e.name,
                    "an identified model needs mean and std".into(),
                ));
            }
        }
    }
    Ok(f.model)
}

/// `--zoo NAME` (mpm-attack and mpm-eval): the entry for `name`, checked against the loaded
/// checkpoint's preprocessing `prep` and the `--act` given. Another normalisation or activation
/// is an error (the numbers would be another model's); another layout is a note on stderr.
/// The eval transform is left to the caller, whose flags differ ([`ZooEntry::eval_transform`]).
pub fn check_entry<'a>(
    list: &'a [ZooEntry],
    name: &str,
    prep: &Preprocessing,
    act: &str,
) -> Result<&'a ZooEntry> {
    let e = find(list, name)?;
    if !e.identified {
        return Err(Error::flag(
            "--zoo",
            format!("'{}' ({}) has no identified checkpoint", e.name, e.row),
        ));
    }
    if let Some(n) = e.norm() {
        if !n.same(&prep.norm) {
            return Err(Error::flag(
                "--zoo",
                format!(
                    "{} was trained with {}, but this run normalises with {} ({})",
                    e.name,
                    n.describe(),
                    prep.norm.describe(),
                    prep.norm_source
                ),
            ));
        }
    }
    if !e.act.is_empty() && e.act != act {
        return Err(Error::flag(
            "--act",
            format!("{} uses {} activations; got --act {act}", e.name, e.act),
        ));
    }
    if e.layout != prep.layout.name() {
        eprintln!(
            "note: {} is listed in the {} layout; this file is {}",
            e.name,
            e.layout,
            prep.layout.name()
        );
    }
    Ok(e)
}

/// The committed list.
pub fn table2() -> Result<Vec<ZooEntry>> {
    parse(TABLE2_TOML, "assets/zoo/table2.toml")
}

/// Looks a model up by name (case-insensitive), or says which names exist.
pub fn find<'a>(list: &'a [ZooEntry], name: &str) -> Result<&'a ZooEntry> {
    list.iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            Error::flag(
                "--zoo",
                format!(
                    "no model '{name}' in the zoo list; known: {}",
                    list.iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

fn numbers(m: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = TABLE2_COLUMNS
        .iter()
        .filter_map(|(k, col)| m.get(*k).map(|v| format!("{col} {v}")))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The human-readable list (`mpm-attack zoo`).
pub fn listing(list: &[ZooEntry]) -> String {
    let mut s = String::new();
    for e in list {
        s.push_str(&format!("{}\n  {}\n", e.name, e.row));
        if !e.identified {
            s.push_str(
                "  checkpoint not identified from the sources available here (docs/zoo.md)\n",
            );
        } else {
            s.push_str(&format!("  file:       {}\n", e.file));
            if !e.url.is_empty() {
                s.push_str(&format!("  download:   {}\n", e.url));
            }
            let norm = e.norm().map(|n| n.describe()).unwrap_or_default();
            s.push_str(&format!("  layout:     {}\n", e.layout));
            s.push_str(&format!(
                "  preprocess: {}, {norm}, act {}\n",
                e.transform, e.act
            ));
            s.push_str(&format!("  flags:      {}\n", e.flags));
        }
        s.push_str(&format!("  Table 2:    {}\n", numbers(&e.table2)));
        if !e.other.is_empty() {
            s.push_str(&format!(
                "  elsewhere:  {} ({})\n",
                numbers(&e.other),
                e.other_source
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_list_parses_and_has_the_papers_rows() {
        let l = table2().unwrap();
        let mpm = find(&l, "mpm_r50_gelu").unwrap();
        assert_eq!(mpm.table2.get("linf4"), Some(&39.1));
        assert_eq!(mpm.layout, "mpm");
        let bai = find(&l, "Bai2021Are_R50_GELU").unwrap();
        assert_eq!(bai.norm().unwrap().mean, [0.5; 3]);
        assert!(listing(&l).contains("resnet50_linf_eps4.0.ckpt"));
        assert!(find(&l, "nope").is_err());
        // RobustBench's Res256Crop224 is bilinear; the paper's models use timm's bicubic.
        let rb = find(&l, "Salman2020Do_R50_RobustBench").unwrap();
        assert_eq!(rb.eval_transform(), (256, 224, "bilinear"));
        assert_eq!(mpm.eval_transform(), (256, 224, "bicubic"));
    }

    #[test]
    fn bad_lists_are_refused() {
        let e = parse(
            "[[model]]\nname='a'\nrow='r'\nidentified=false\ntable2={clean=120.0}\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("percentage"), "{e}");
        let e = parse(
            "[[model]]\nname='a'\nrow='r'\nidentified=true\nlayout='weird'\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown layout"), "{e}");
    }
}
