//! Image and label-map files: decode (JPEG, PNG 8/16-bit), 16-bit PNG label maps, atomic writes.

use std::path::Path;

use image::{ImageBuffer, Luma, RgbImage};

use crate::{Error, Result};

/// Decodes an image file (format from its content) to 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let r = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let img = r
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    Ok(img.into_rgb8())
}

/// Decodes from memory (for benchmarks and tests).
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    image::load_from_memory(bytes)
        .map(|i| i.into_rgb8())
        .map_err(|e| e.to_string())
}

/// A label map: row-major `(h, w)` global part ids, 0 = background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    pub h: usize,
    pub w: usize,
    pub data: Vec<u16>,
}

impl LabelMap {
    pub fn zeros(h: usize, w: usize) -> Self {
        LabelMap {
            h,
            w,
            data: vec![0; h * w],
        }
    }
    pub fn is_blank(&self) -> bool {
        self.data.iter().all(|&v| v == 0)
    }
}

/// Reads a label map PNG (16-bit or 8-bit grayscale; other colour types are an error, since
/// converting colours to ids would silently invent labels).
pub fn read_label_map(path: &Path) -> Result<LabelMap> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode label map: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<u16> = match img {
        image::DynamicImage::ImageLuma16(b) => b.into_raw(),
        image::DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(u16::from).collect(),
        other => {
            return Err(Error::format(
                path,
                format!(
                    "label map must be 8/16-bit grayscale, found {:?}",
                    other.color()
                ),
            ))
        }
    };
    Ok(LabelMap { h, w, data })
}

/// Writes a 16-bit grayscale PNG atomically (temp file + rename).
pub fn write_label_map(path: &Path, m: &LabelMap) -> Result<()> {
    let buf: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(m.w as u32, m.h as u32, m.data.clone())
            .ok_or_else(|| Error::format(path, "label map buffer size mismatch"))?;
    let tmp = path.with_extension("png.tmp");
    buf.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::format(&tmp, format!("cannot write PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes bytes atomically (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Creates a directory and its parents.
pub fn mkdirs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}
