//! The reference's training layout, as the authors' loader (`PartImageNetSegDataset`) reads it:
//!
//! ```text
//! ROOT/img/<wnid>/<file>              the images (symlinks or copies)
//! ROOT/seg/<wnid>/<stem>.png          one label map per image in img/ (global part ids)
//! ROOT/whether_pseudo/<wnid>.txt      "<file> 0|1" per image: 0 = annotated, 1 = pseudo label
//! ```
//!
//! `mpm-data labels` writes flag 0 for the images it paints; `mpm-data pseudo` writes 1 and
//! never overwrites an image whose flag is 0 (its map stays the annotation). Both merge into an
//! existing flag file, so they can run in either order on one root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::imageio;
use crate::{Error, Result};

/// How images reach `ROOT/img`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageMode {
    Symlink,
    Copy,
    /// Do not create `ROOT/img` entries at all.
    None,
}

/// Puts `src` at `dst` (a symlink to its absolute path, or a copy). An existing `dst` is
/// replaced, except when it is `src` itself (an index built from `ROOT/img`).
pub fn place_image(src: &Path, dst: &Path, mode: ImageMode) -> Result<()> {
    if mode == ImageMode::None {
        return Ok(());
    }
    let abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    if let Ok(meta) = std::fs::symlink_metadata(dst) {
        let same = std::fs::canonicalize(dst).ok().as_deref() == Some(abs.as_path());
        // Already a link to the source, or the source file itself: keep it (removing it
        // would delete the image when an index was built from ROOT/img).
        if same && (mode == ImageMode::Symlink || !meta.file_type().is_symlink()) {
            return Ok(());
        }
        std::fs::remove_file(dst).map_err(|e| Error::io(dst, e))?;
    }
    match mode {
        ImageMode::Copy => {
            let tmp = dst.with_extension("tmp");
            std::fs::copy(&abs, &tmp).map_err(|e| Error::io(src, e))?;
            std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))
        }
        _ => {
            #[cfg(unix)]
            {
                std::os::unix::fs::symlink(&abs, dst).map_err(|e| Error::io(dst, e))
            }
            #[cfg(not(unix))]
            {
                std::fs::copy(&abs, dst)
                    .map(|_| ())
                    .map_err(|e| Error::io(dst, e))
            }
        }
    }
}

/// `ROOT/whether_pseudo/<wnid>.txt`.
pub fn flags_path(root: &Path, wnid: &str) -> PathBuf {
    root.join("whether_pseudo").join(format!("{wnid}.txt"))
}

/// One class's flags: image file name -> pseudo (true = 1, false = 0 = annotated).
pub type Flags = BTreeMap<String, bool>;

/// Reads a flag file (`<file> 0|1` per line; the authors' loader keeps only the part after the
/// last `/` of the name, and so does this). A missing file is an empty map; a malformed line
/// is an error naming the file and the line.
pub fn read_flags(path: &Path) -> Result<Flags> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Flags::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Flags::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let pseudo = match f.as_slice() {
            [_, "0"] => false,
            [_, "1"] => true,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: expected '<image file> 0|1' (one space), found \"{line}\"",
                        i + 1
                    ),
                ))
            }
        };
        let name = f[0].rsplit('/').next().unwrap_or(f[0]);
        out.insert(name.to_string(), pseudo);
    }
    Ok(out)
}

/// Writes a flag file, sorted by name, through the atomic writer.
pub fn write_flags(path: &Path, flags: &Flags) -> Result<()> {
    let mut s = String::with_capacity(flags.len() * 24);
    for (name, &pseudo) in flags {
        s.push_str(name);
        s.push_str(if pseudo { " 1\n" } else { " 0\n" });
    }
    if let Some(dir) = path.parent() {
        imageio::mkdirs(dir)?;
    }
    imageio::write_atomic(path, s.as_bytes())
}

/// Marks `names` as annotated (flag 0) in `ROOT/whether_pseudo/<wnid>.txt`, keeping the other
/// entries (pseudo labels of other images).
pub fn mark_annotated(root: &Path, wnid: &str, names: &[String]) -> Result<()> {
    let p = flags_path(root, wnid);
    let mut flags = read_flags(&p)?;
    for n in names {
        flags.insert(n.clone(), false);
    }
    write_flags(&p, &flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_and_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let p = flags_path(root, "n01440764");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "n01440764_2.JPEG 1\nn01440764/n01440764_3.JPEG 1\n\n").unwrap();
        mark_annotated(
            root,
            "n01440764",
            &["n01440764_1.JPEG".into(), "n01440764_3.JPEG".into()],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "n01440764_1.JPEG 0\nn01440764_2.JPEG 1\nn01440764_3.JPEG 0\n"
        );
        for bad in ["x.JPEG 2\n", "x.JPEG\n", "x.JPEG  0\n", "a b 0\n"] {
            std::fs::write(&p, bad).unwrap();
            let e = read_flags(&p).unwrap_err().to_string();
            assert!(e.contains("n01440764.txt") && e.contains("line 1"), "{e}");
        }
        assert!(read_flags(&root.join("none.txt")).unwrap().is_empty());
    }

    #[test]
    fn place_image_never_clobbers_its_source() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("a.JPEG");
        std::fs::write(&src, b"jpeg").unwrap();
        // dst == src: left alone in both modes.
        place_image(&src, &src, ImageMode::Symlink).unwrap();
        place_image(&src, &src, ImageMode::Copy).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), b"jpeg");
        let dst = tmp.path().join("b.JPEG");
        place_image(&src, &dst, ImageMode::Symlink).unwrap();
        assert!(std::fs::symlink_metadata(&dst)
            .unwrap()
            .file_type()
            .is_symlink());
        place_image(&src, &dst, ImageMode::Copy).unwrap();
        assert!(!std::fs::symlink_metadata(&dst)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&dst).unwrap(), b"jpeg");
    }
}
