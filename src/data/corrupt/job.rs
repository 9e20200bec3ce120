//! `mpm-data corrupt` (DESIGN.md contract D): images from a folder (recursive) or a list file
//! -> `OUT/<corruption>/<severity>/<relative path>` with the extension of the output format.
//!
//! - Per-image seeds come from `--seed` and the image's relative path, so an output does not
//!   depend on which other images are in the run, their order or the thread count.
//! - Parallel over images (rayon); the slow corruptions are also parallel inside an image.
//! - Resumable: outputs are written atomically (temp file + rename) and an existing output
//!   whose file ends with its format's trailer (PNG `IEND`, JPEG `EOI`) is kept.
//! - Bad images (unreadable, undecodable, smaller than 32 px after the resize) are skipped,
//!   counted and reported with their reason. A failed write (full disk, read-only folder) is
//!   not a skip: it stops the job with its error (exit 1); the outputs already written stay
//!   and a rerun keeps them. Written directories are fsynced once, at the end.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::RgbImage;
use rayon::prelude::*;

use super::filters::{pil_resize, PilFilter};
use super::{corrupt, Corruption, MIN_SIDE};
use crate::data::imageio::{mkdirs, read_rgb};
use crate::data::report::Skip;
use crate::{Error, Result};

/// Output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    /// Lossless 8-bit RGB.
    Png,
    /// Quality 85, as the released ImageNet-C files.
    Jpeg,
}

impl OutFormat {
    pub fn parse(s: &str) -> Result<OutFormat> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(OutFormat::Png),
            "jpeg" | "jpg" => Ok(OutFormat::Jpeg),
            other => Err(Error::flag(
                "--format",
                format!("expected png or jpeg, found {other:?}"),
            )),
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            OutFormat::Png => "png",
            OutFormat::Jpeg => "jpeg",
        }
    }
}

/// Parses `all` or a comma-separated list of corruption names.
pub fn parse_corruptions(s: &str) -> Result<Vec<Corruption>> {
    if s.trim() == "all" {
        return Ok(Corruption::ALL.to_vec());
    }
    let mut v = Vec::new();
    for name in s.split(',').filter(|t| !t.trim().is_empty()) {
        let c = Corruption::from_name(name)?;
        if !v.contains(&c) {
            v.push(c);
        }
    }
    if v.is_empty() {
        return Err(Error::flag("--corruptions", "no corruption named"));
    }
    Ok(v)
}

/// Parses `1-5`, `2-3` or `1,3,5`.
pub fn parse_severities(s: &str) -> Result<Vec<u8>> {
    let bad = || {
        Error::flag(
            "--severities",
            format!("expected a range like 1-5 or a list like 1,3,5 (values 1..=5), found {s:?}"),
        )
    };
    let num = |t: &str| -> Result<u8> {
        let v: u8 = t.trim().parse().map_err(|_| bad())?;
        if (1..=5).contains(&v) {
            Ok(v)
        } else {
            Err(bad())
        }
    };
    let mut v: Vec<u8> = if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(bad());
        }
        (a..=b).collect()
    } else {
        s.split(',').map(num).collect::<Result<_>>()?
    };
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        return Err(bad());
    }
    Ok(v)
}

#[derive(Clone, Debug)]
pub struct CorruptConfig {
    /// A folder (read recursively) or a list file.
    pub images: PathBuf,
    pub out: PathBuf,
    pub corruptions: Vec<Corruption>,
    pub severities: Vec<u8>,
    /// 224: resize 256 (bilinear) + centre crop 224 first; 0: the image as it is.
    pub size: u32,
    pub format: OutFormat,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Clone, Debug, Default)]
pub struct CorruptSummary {
    pub images: usize,
    /// Outputs written by this run.
    pub written: usize,
    /// Outputs that were already complete and were kept.
    pub kept: usize,
    pub skipped: Vec<Skip>,
    /// Temp files of an interrupted run (`.<name>.tmp.<pid>.<nonce>` of a dead process) found
    /// in the output tree and removed before anything was written.
    pub stale_temps_removed: usize,
}

impl CorruptSummary {
    pub fn text(&self) -> String {
        let mut t = format!(
            "corrupt: {} images, {} outputs written, {} already complete and kept, {} images skipped\n",
            self.images,
            self.written,
            self.kept,
            self.skipped.len()
        );
        if self.stale_temps_removed > 0 {
            t += &format!(
                "corrupt: removed {} temp files left by an interrupted run\n",
                self.stale_temps_removed
            );
        }
        t
    }
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, root, out)?;
        } else if is_image_name(&p) {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    Ok(())
}

/// A relative path that stays inside its root (no `..`, no absolute parts).
fn safe_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The images to corrupt: `(root, relative paths)`, plus list lines that were refused.
/// A list line may carry a trailing class index (`<path> <index>`, as the paper's 10K list).
pub fn list_images(src: &Path) -> Result<(PathBuf, Vec<PathBuf>, Vec<Skip>)> {
    if src.is_dir() {
        let mut v = Vec::new();
        walk(src, src, &mut v)?;
        return Ok((src.to_path_buf(), v, Vec::new()));
    }
    let text = std::fs::read_to_string(src).map_err(|e| Error::io(src, e))?;
    let root = src.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut v = Vec::new();
    let mut refused = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut rel = PathBuf::from(line);
        if !root.join(&rel).is_file() {
            if let Some((path, label)) = line.rsplit_once(char::is_whitespace) {
                if label.trim().parse::<u64>().is_ok() {
                    rel = PathBuf::from(path.trim());
                }
            }
        }
        if !safe_relative(&rel) {
            refused.push(Skip::new(
                src,
                format!(
                    "line {}: {line:?} is not a relative path inside the list's folder",
                    n + 1
                ),
            ));
            continue;
        }
        v.push(rel);
    }
    Ok((root, v, refused))
}

/// torchvision's `Resize(256)` (shorter side to 256, Pillow bilinear) + `CenterCrop(224)`.
pub fn resize_center_crop(img: &RgbImage, resize: u32, crop: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (resize, (resize as u64 * h as u64 / w as u64) as u32)
    } else {
        ((resize as u64 * w as u64 / h as u64) as u32, resize)
    };
    let data = pil_resize(
        img.as_raw(),
        h as usize,
        w as usize,
        nh as usize,
        nw as usize,
        PilFilter::Bilinear,
    );
    let resized = RgbImage::from_raw(nw, nh, data).unwrap_or_else(|| RgbImage::new(nw, nh));
    let (cw, ch) = (crop.min(nw), crop.min(nh));
    let top = super::filters::round_half_even((nh - ch) as f64 / 2.0) as u32;
    let left = super::filters::round_half_even((nw - cw) as f64 / 2.0) as u32;
    image::imageops::crop_imm(&resized, left, top, cw, ch).to_image()
}

/// The seed of one image: `--seed` mixed with its relative path (FNV-1a, then splitmix).
pub fn image_seed(seed: u64, rel: &Path) -> u64 {
    let mut hsh: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rel.to_string_lossy().replace('\\', "/").bytes() {
        hsh ^= b as u64;
        hsh = hsh.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = hsh ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `OUT/<corruption>/<severity>/<relative path with the format's extension>`.
pub fn output_path(out: &Path, c: Corruption, severity: u8, rel: &Path, f: OutFormat) -> PathBuf {
    out.join(c.name())
        .join(severity.to_string())
        .join(rel)
        .with_extension(f.extension())
}

/// True if the file exists and ends with its format's trailer (a complete, atomic write).
pub fn is_complete(path: &Path, f: OutFormat) -> bool {
    let trailer: &[u8] = match f {
        OutFormat::Png => &[0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82],
        OutFormat::Jpeg => &[0xFF, 0xD9],
    };
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    if file.seek(SeekFrom::End(-(trailer.len() as i64))).is_err() {
        return false;
    }
    let mut buf = vec![0u8; trailer.len()];
    file.read_exact(&mut buf).is_ok() && buf == trailer
}

/// Encodes and writes an image atomically.
pub fn write_image(path: &Path, img: &RgbImage, f: OutFormat) -> Result<()> {
    if let Some(dir) = path.parent() {
        mkdirs(dir)?;
    }
    let mut bytes = Vec::new();
    let enc = match f {
        OutFormat::Png => img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        ),
        OutFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85).encode_image(img)
        }
    };
    enc.map_err(|e| Error::format(path, format!("cannot encode: {e}")))?;
    // A bulk output: atomic and checked, without a per-file fsync.
    crate::data::imageio::write_bulk(path, &bytes)
}

/// Loads and prepares one input image.
pub fn load_input(path: &Path, size: u32) -> Result<RgbImage> {
    let img = read_rgb(path)?;
    let img = match size {
        0 => img,
        s => {
            let (w, h) = img.dimensions();
            if w == 0 || h == 0 {
                return Err(Error::format(path, "image has no pixels"));
            }
            resize_center_crop(&img, s * 256 / 224, s)
        }
    };
    let (w, h) = img.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(Error::format(
            path,
            format!("image is {w}x{h}; the corruptions need at least {MIN_SIDE}x{MIN_SIDE}"),
        ));
    }
    Ok(img)
}

pub fn run(cfg: &CorruptConfig) -> Result<CorruptSummary> {
    if cfg.size != 0 && cfg.size != 224 {
        return Err(Error::flag(
            "--size",
            format!("expected 224 or 0, found {}", cfg.size),
        ));
    }
    let (root, rels, refused) = list_images(&cfg.images)?;
    if rels.is_empty() {
        return Err(Error::format(
            &cfg.images,
            "no images found (.png, .jpg, .jpeg in a folder, or a list of paths)",
        ));
    }
    mkdirs(&cfg.out)?;
    // A run killed mid-write leaves its temp files beside the outputs
    // (OUT/<corruption>/<severity>/<relative path>): remove them before writing anything.
    let depth = 2 + rels
        .iter()
        .map(|r| r.components().count().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let stale_temps_removed = crate::io::remove_stale_temps_tree(&cfg.out, depth)?;
    let tasks: Vec<(Corruption, u8)> = cfg
        .corruptions
        .iter()
        .flat_map(|&c| cfg.severities.iter().map(move |&s| (c, s)))
        .collect();
    let pb = crate::data::labels::progress_bar(
        (rels.len() * tasks.len()) as u64,
        cfg.progress,
        "corrupt",
    );
    let written = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let skipped = Mutex::new(refused);
    let skip = |s: Skip| {
        if let Ok(mut v) = skipped.lock() {
            v.push(s);
        }
    };
    // Directories that received an output: synced once at the end (the images themselves are
    // written without a per-file fsync).
    let written_dirs = crate::io::BulkDirs::new(&cfg.out);
    // An image that cannot be read or corrupted is skipped and counted; a failed write (a
    // full disk, a read-only folder) stops the job with its error: it is not the image's
    // fault, and counting it as a skip would report success over missing outputs.
    let res = rels.par_iter().try_for_each(|rel| -> Result<()> {
        let todo: Vec<(Corruption, u8, PathBuf)> = tasks
            .iter()
            .map(|&(c, s)| (c, s, output_path(&cfg.out, c, s, rel, cfg.format)))
            .filter(|(_, _, p)| {
                let done = is_complete(p, cfg.format);
                if done {
                    kept.fetch_add(1, Ordering::Relaxed);
                    pb.inc(1);
                }
                !done
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let src = root.join(rel);
        let img = match load_input(&src, cfg.size) {
            Ok(i) => i,
            Err(e) => {
                skip(Skip::from_error(&src, &e));
                pb.inc(todo.len() as u64);
                return Ok(());
            }
        };
        let seed = image_seed(cfg.seed, rel);
        for (c, s, path) in todo {
            match corrupt(&img, c, s, seed) {
                Ok(o) => {
                    write_image(&path, &o, cfg.format)
                        .map_err(|e| Error::Msg(format!("corrupt: cannot write an output: {e}")))?;
                    written.fetch_add(1, Ordering::Relaxed);
                    written_dirs.wrote(&path);
                }
                Err(e) => skip(Skip::new(&src, format!("{c} severity {s}: {e}"))),
            }
            pb.inc(1);
        }
        Ok(())
    });
    pb.finish_and_clear();
    res?;
    written_dirs.sync()?;
    Ok(CorruptSummary {
        images: rels.len(),
        written: written.into_inner(),
        kept: kept.into_inner(),
        skipped: skipped.into_inner().unwrap_or_default(),
        stale_temps_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_and_name_lists_parse() {
        assert_eq!(parse_severities("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse_severities("3,1,3").unwrap(), vec![1, 3]);
        assert!(parse_severities("0-2").is_err());
        assert!(parse_severities("4-2").is_err());
        assert_eq!(parse_corruptions("all").unwrap().len(), 15);
        assert_eq!(
            parse_corruptions("fog,snow").unwrap(),
            vec![Corruption::Fog, Corruption::Snow]
        );
        let e = parse_corruptions("fog,rain").unwrap_err().to_string();
        assert!(e.contains("rain") && e.contains("gaussian_noise"), "{e}");
    }

    #[test]
    fn output_paths_follow_the_contract() {
        let p = output_path(
            Path::new("/o"),
            Corruption::Fog,
            3,
            Path::new("n01/a.JPEG"),
            OutFormat::Png,
        );
        assert_eq!(p, PathBuf::from("/o/fog/3/n01/a.png"));
    }

    #[test]
    fn resize_crop_gives_224_from_any_aspect() {
        let img = RgbImage::new(500, 375);
        let o = resize_center_crop(&img, 256, 224);
        assert_eq!(o.dimensions(), (224, 224));
        let img = RgbImage::new(300, 700);
        assert_eq!(resize_center_crop(&img, 256, 224).dimensions(), (224, 224));
    }
}
