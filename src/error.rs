//! One error type for the whole engine. Every message names the op, file or flag involved
//! and says what was expected and what was found.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op received tensors whose shapes do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// Reading or writing a file failed at the OS level.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was readable but its contents are not what the format requires.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// A checkpoint does not fit the model: lists every offending tensor.
    #[error("checkpoint does not fit the model:\n{0}")]
    Checkpoint(String),

    /// A command-line flag or configuration value is invalid.
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },

    /// The requested device is not available.
    #[error("device {device}: {msg}")]
    Device { device: String, msg: String },

    /// A numerical problem: NaN/Inf where a finite value is required.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag: flag.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
