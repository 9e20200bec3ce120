//! The 15 ImageNet-C common corruptions at 5 severities (Hendrycks & Dietterich, ICLR 2019),
//! following the `imagecorruptions` 1.1.2 package: its parameters, its order of operations and
//! its final `np.uint8` truncation. `docs/corruptions.md` lists where that package departs from
//! Hendrycks' original generator and what this module follows.
//!
//! - [`corrupt`]: one image, one corruption, one severity, one seed (the library entry point;
//!   `mpm-eval corruptions --on-the-fly` calls it).
//! - [`job`]: `mpm-data corrupt` (DESIGN.md contract D): a folder or list of images -> the
//!   `OUT/<name>/<severity>/<relative path>` tree, parallel, resumable, bad images skipped.
//!
//! Files: [`noise`] (gaussian, shot, impulse), [`blur`] (defocus, glass, motion, zoom),
//! [`weather`] (snow, frost, fog), [`digital`] (brightness, contrast, elastic, pixelate),
//! [`jpeg`] (the libjpeg-turbo round trip), [`filters`] (the SciPy / OpenCV / Pillow
//! resampling and filtering rules the corruptions are built from), [`draws`] (random streams).
//!
//! Determinism: every random number comes from ChaCha8 streams keyed by
//! `(seed, corruption, severity)`; a stream is chosen by what it is used for (and the image row
//! for row-parallel draws), never by thread, so an output depends only on its inputs.
//! The random draws follow the package's distributions, not NumPy's bit stream, so random
//! corruptions match it in distribution; the deterministic ones match it pixel for pixel (to
//! within the rounding of the package's own float64 arithmetic).

pub mod blur;
pub mod digital;
pub mod draws;
pub mod filters;
pub mod job;
pub mod jpeg;
pub mod noise;
pub mod weather;

use image::RgbImage;

use crate::{Error, Result};
use draws::Draws;

/// One of the 15 ImageNet-C corruptions, in the package's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    DefocusBlur,
    GlassBlur,
    MotionBlur,
    ZoomBlur,
    Snow,
    Frost,
    Fog,
    Brightness,
    Contrast,
    ElasticTransform,
    Pixelate,
    JpegCompression,
}

impl Corruption {
    /// All 15, in the order of `imagecorruptions.get_corruption_names()` (and Table 3).
    pub const ALL: [Corruption; 15] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::Snow,
        Corruption::Frost,
        Corruption::Fog,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::ElasticTransform,
        Corruption::Pixelate,
        Corruption::JpegCompression,
    ];

    /// The package's name (also the output folder name).
    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GlassBlur => "glass_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::ZoomBlur => "zoom_blur",
            Corruption::Snow => "snow",
            Corruption::Frost => "frost",
            Corruption::Fog => "fog",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::ElasticTransform => "elastic_transform",
            Corruption::Pixelate => "pixelate",
            Corruption::JpegCompression => "jpeg_compression",
        }
    }

    /// Parses a package name (`gaussian_noise`, ...); the error lists the valid names.
    pub fn from_name(s: &str) -> Result<Corruption> {
        let t = s.trim();
        Corruption::ALL
            .into_iter()
            .find(|c| c.name() == t)
            .ok_or_else(|| {
                Error::flag(
                    "--corruptions",
                    format!(
                        "unknown corruption {t:?}; expected one of: {}",
                        Corruption::ALL.map(|c| c.name()).join(", ")
                    ),
                )
            })
    }

    /// True where the package draws random numbers (these match it in distribution only).
    pub fn is_random(self) -> bool {
        !matches!(
            self,
            Corruption::DefocusBlur
                | Corruption::ZoomBlur
                | Corruption::Brightness
                | Corruption::Contrast
                | Corruption::Pixelate
                | Corruption::JpegCompression
        )
    }

    fn index(self) -> u64 {
        Corruption::ALL.iter().position(|&c| c == self).unwrap_or(0) as u64
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The smallest side the package accepts (`imagecorruptions.corrupt` refuses smaller images).
pub const MIN_SIDE: u32 = 32;

/// Corrupts one image: `c` at `severity` (1..=5). The same `(img, c, severity, seed)` always
/// gives the same output, whatever the thread count; different corruptions and severities draw
/// independent random numbers from the same seed.
pub fn corrupt(img: &RgbImage, c: Corruption, severity: u8, seed: u64) -> Result<RgbImage> {
    if !(1..=5).contains(&severity) {
        return Err(Error::flag(
            "severity",
            format!("expected 1..=5, found {severity}"),
        ));
    }
    let (w, h) = img.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(Error::shape(
            "corrupt",
            format!(
                "image is {w}x{h}; the corruptions need at least {MIN_SIDE}x{MIN_SIDE} pixels \
                 (as imagecorruptions)"
            ),
        ));
    }
    let s = (severity - 1) as usize;
    let draws = Draws::new(seed, c.index(), severity);
    let out = match c {
        Corruption::GaussianNoise => noise::gaussian_noise(img, s, &draws),
        Corruption::ShotNoise => noise::shot_noise(img, s, &draws),
        Corruption::ImpulseNoise => noise::impulse_noise(img, s, &draws),
        Corruption::DefocusBlur => blur::defocus_blur(img, s),
        Corruption::GlassBlur => blur::glass_blur(img, s, &draws),
        Corruption::MotionBlur => blur::motion_blur(img, s, &draws),
        Corruption::ZoomBlur => blur::zoom_blur(img, s),
        Corruption::Snow => weather::snow(img, s, &draws),
        Corruption::Frost => weather::frost(img, s, &draws)?,
        Corruption::Fog => weather::fog(img, s, &draws),
        Corruption::Brightness => digital::brightness(img, s),
        Corruption::Contrast => digital::contrast(img, s),
        Corruption::ElasticTransform => digital::elastic_transform(img, s, &draws),
        Corruption::Pixelate => digital::pixelate(img, s),
        Corruption::JpegCompression => jpeg::jpeg_compression(img, s),
    };
    debug_assert_eq!(out.dimensions(), img.dimensions());
    Ok(out)
}

/// `np.uint8(np.clip(v, 0, 255))` for a value already scaled to grey levels: truncation
/// toward zero, the package's last step.
#[inline(always)]
pub(crate) fn to_u8(v: f64) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// Same, for f32 pipelines.
#[inline(always)]
pub(crate) fn to_u8_f32(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// Runs `f(y, row)` over the rows of an interleaved RGB output in parallel.
pub(crate) fn par_rows(w: u32, h: u32, f: impl Fn(usize, &mut [u8]) + Sync) -> RgbImage {
    use rayon::prelude::*;
    let row = w as usize * 3;
    let mut buf = vec![0u8; row * h as usize];
    buf.par_chunks_mut(row)
        .enumerate()
        .for_each(|(y, r)| f(y, r));
    // The buffer has exactly w * h * 3 bytes.
    RgbImage::from_raw(w, h, buf).unwrap_or_else(|| RgbImage::new(w, h))
}
