//! Image and label-map files: decode (JPEG, PNG 8/16-bit), 16-bit PNG label maps, atomic writes.

use std::path::Path;

use image::RgbImage;

use crate::{Error, Result};

/// Decodes an image file (format from its content) to 8-bit RGB. A JPEG cut short is an
/// error: the decoder would fill the missing part with grey and call it an image.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Some(why) = jpeg_truncation(&bytes) {
        return Err(Error::format(path, format!("cannot decode image: {why}")));
    }
    let r = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let img = r
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    Ok(img.into_rgb8())
}

/// For a JPEG: `Some(reason)` when its last scan has no end-of-image marker after it (the
/// file was cut). Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart
/// marker, so an `FF D9` after the last start-of-scan can only be the real end.
pub fn jpeg_truncation(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let Some(sos) = last_sos else {
        return Some("truncated JPEG: no image data (no start-of-scan marker)");
    };
    if bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        None
    } else {
        Some("truncated JPEG: the file ends before its end-of-image marker")
    }
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
                    "label map must be 8/16-bit grayscale, found {} channel(s) of {} bits",
                    other.color().channel_count(),
                    other.color().bits_per_pixel() / u16::from(other.color().channel_count())
                ),
            ))
        }
    };
    Ok(LabelMap { h, w, data })
}

/// Writes a 16-bit grayscale PNG atomically. The PNG is encoded in memory and written with
/// checked writes through [`crate::io::write_bytes_atomic`] (the `image` crate's file writer
/// drops its buffer without a checked flush, which hid full-disk errors). A bulk write: the
/// job calls [`crate::io::sync_dir`] on its output directories at the end.
pub fn write_label_map(path: &Path, m: &LabelMap) -> Result<()> {
    let bytes = encode_label_map(m).map_err(|e| Error::format(path, e))?;
    crate::io::write_bytes_atomic(path, &bytes, crate::io::Durability::Bulk)
}

/// A label map as 16-bit grayscale PNG bytes.
pub fn encode_label_map(m: &LabelMap) -> std::result::Result<Vec<u8>, String> {
    if m.data.len() != m.w * m.h {
        return Err(format!(
            "label map buffer holds {} values for {}x{}",
            m.data.len(),
            m.w,
            m.h
        ));
    }
    let (w, h) = match (u32::try_from(m.w), u32::try_from(m.h)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(format!("label map {}x{} is too large for PNG", m.w, m.h)),
    };
    let mut out = Vec::new();
    // The encoder takes 16-bit samples in native byte order (it writes them big-endian).
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        bytemuck::cast_slice(&m.data),
        w,
        h,
        image::ExtendedColorType::L16,
    )
    .map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(out)
}

/// Writes bytes atomically and durably (temp file, checked write, fsync, rename, directory
/// fsync): reports, lists, JSON.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::write_bytes_atomic(path, bytes, crate::io::Durability::Fsync)
}

/// Writes bytes atomically without fsync, for bulk outputs (one file per image); sync the
/// directory once at the end with [`crate::io::sync_dir`].
pub fn write_bulk(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::write_bytes_atomic(path, bytes, crate::io::Durability::Bulk)
}

/// Creates a directory and its parents.
pub fn mkdirs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn truncated_jpegs_are_refused_whole_ones_read() {
        let dir = tempfile::tempdir().unwrap();
        let whole = jpeg(40, 30);
        assert_eq!(jpeg_truncation(&whole), None);
        let p = dir.path().join("a.jpg");
        std::fs::write(&p, &whole).unwrap();
        assert_eq!(read_rgb(&p).unwrap().dimensions(), (40, 30));
        std::fs::write(&p, &whole[..whole.len() * 2 / 3]).unwrap();
        let e = read_rgb(&p).unwrap_err().to_string();
        assert!(e.contains("truncated JPEG") && e.contains("a.jpg"), "{e}");
    }

    #[test]
    fn label_maps_round_trip_through_the_atomic_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        let m = LabelMap {
            h: 3,
            w: 4,
            data: (0..12).map(|v| v * 1000).collect(),
        };
        write_label_map(&p, &m).unwrap();
        assert_eq!(read_label_map(&p).unwrap(), m);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
