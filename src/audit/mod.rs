//! Audits: PyTorch parity of a model (contract A) and, later, gradient checks.
pub mod files;
pub mod parity;
