//! Audits: PyTorch parity of a model (contract A), the input-gradient check against finite
//! differences (`grad`) and the gradient-masking sanity checks (`masking`).
pub mod files;
pub mod grad;
pub mod grad_layers;
pub mod masking;
pub mod parity;
