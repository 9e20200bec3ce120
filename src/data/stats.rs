//! `mpm-data stats`: counts over the PIN++ JSON files (after `discarded_data.json`).
//!
//! images, objects (images with at least one mask: PIN++ annotates one object per image),
//! masks (annotations), part categories, masks-per-image histogram with the paper's Table S1 bins
//! (1-2, 3-4, 5-6, 7+; images with 0 masks counted apart), per-class part lists with mask counts.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::pin_json::{self, Discarded, PartTable, PinClass};
use super::report::Skip;
use crate::{Error, Result};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClassStats {
    pub wnid: String,
    pub name: String,
    pub images: usize,
    pub masks: usize,
    /// `(global id, part name, masks)`.
    pub parts: Vec<(u32, String, usize)>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub classes: usize,
    pub parts: usize,
    pub images: usize,
    pub objects: usize,
    pub masks: usize,
    pub discarded: usize,
    pub polygon_masks: usize,
    pub rle_masks: usize,
    pub crowd_masks: usize,
    /// Images with 0 masks, then Table S1 bins.
    pub masks_per_image: BTreeMap<String, usize>,
    pub per_class: Vec<ClassStats>,
    pub skipped: Vec<Skip>,
}

/// Table S1 bin of a masks-per-image count.
pub fn bin(n: usize) -> &'static str {
    match n {
        0 => "0",
        1..=2 => "1-2",
        3..=4 => "3-4",
        5..=6 => "5-6",
        _ => "7+",
    }
}

pub fn compute(
    json_dir: &Path,
    discarded: Option<&Path>,
    category_names: Option<&Path>,
) -> Result<Stats> {
    let files = pin_json::class_files(json_dir)?;
    let disc = match discarded {
        Some(p) => Discarded::read(p)?,
        None => Discarded::default(),
    };
    let names = match category_names {
        Some(p) => pin_json::read_category_names(p)?,
        None => Default::default(),
    };
    let parsed: Vec<std::result::Result<PinClass, Skip>> = files
        .par_iter()
        .map(|(_, p)| pin_json::read_class(p).map_err(|e| Skip::from_error(p, &e)))
        .collect();
    let mut st = Stats::default();
    for b in ["0", "1-2", "3-4", "5-6", "7+"] {
        st.masks_per_image.insert(b.to_string(), 0);
    }
    let mut classes = Vec::new();
    for r in parsed {
        match r {
            Ok(c) => classes.push(c),
            Err(s) => st.skipped.push(s),
        }
    }
    if classes.is_empty() {
        return Err(Error::format(json_dir, "no readable class JSON"));
    }
    let table = PartTable::from_classes(&classes.iter().collect::<Vec<_>>());
    st.classes = classes.len();
    st.parts = table.num_parts();
    for (ci, c) in classes.iter().enumerate() {
        st.skipped.extend(c.dropped.iter().cloned());
        let mut cs = ClassStats {
            wnid: c.wnid.clone(),
            name: names.get(&c.wnid).cloned().unwrap_or_default(),
            parts: c
                .categories
                .iter()
                .enumerate()
                .map(|(r, (_, n))| (table.first_id[ci] + r as u32, n.clone(), 0))
                .collect(),
            ..Default::default()
        };
        for img in &c.images {
            if disc.contains(&c.wnid, img) {
                st.discarded += 1;
                continue;
            }
            if let Some(p) = &img.problem {
                st.skipped
                    .push(Skip::new(&c.path, format!("{}: {p}", img.file_name)));
            }
            cs.images += 1;
            cs.masks += img.anns.len();
            *st.masks_per_image
                .entry(bin(img.anns.len()).to_string())
                .or_default() += 1;
            if !img.anns.is_empty() {
                st.objects += 1;
            }
            for a in &img.anns {
                if let Some(r) = c.rank(a.category_id) {
                    cs.parts[r].2 += 1;
                }
                match a.segmentation {
                    super::rasterise::Segmentation::Polygons(_) => st.polygon_masks += 1,
                    _ => st.rle_masks += 1,
                }
                st.crowd_masks += usize::from(a.iscrowd);
            }
        }
        st.images += cs.images;
        st.masks += cs.masks;
        st.per_class.push(cs);
    }
    Ok(st)
}

impl Stats {
    pub fn text(&self) -> String {
        let mut s = format!(
            "classes {}  part categories {}  images {}  objects {}  masks {} (polygon {}, RLE {}, \
             crowd {})  discarded {}\n",
            self.classes,
            self.parts,
            self.images,
            self.objects,
            self.masks,
            self.polygon_masks,
            self.rle_masks,
            self.crowd_masks,
            self.discarded
        );
        s.push_str("masks per image (Table S1 bins):\n");
        for b in ["0", "1-2", "3-4", "5-6", "7+"] {
            let n = self.masks_per_image.get(b).copied().unwrap_or(0);
            let pct = 100.0 * n as f64 / self.images.max(1) as f64;
            s.push_str(&format!("  {b:>4}  {n:>8}  {pct:5.1}%\n"));
        }
        s.push_str("per class: wnid  images  masks  parts (global id:name=masks)\n");
        for c in &self.per_class {
            let parts: Vec<String> = c
                .parts
                .iter()
                .map(|(id, n, m)| format!("{id}:{n}={m}"))
                .collect();
            s.push_str(&format!(
                "  {}  {:>5}  {:>6}  {}{}\n",
                c.wnid,
                c.images,
                c.masks,
                parts.join(" "),
                if c.name.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", c.name)
                }
            ));
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!(
                "skipped/unreadable items: {}\n",
                self.skipped.len()
            ));
            for k in self.skipped.iter().take(10) {
                s.push_str(&format!("  {k}\n"));
            }
        }
        s
    }
}
