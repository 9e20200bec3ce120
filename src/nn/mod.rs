//! Models: parameter store, layers, ResNet backbones, MPM and two-stage heads, losses.
pub mod checkpoint;
pub mod init;
pub mod layers;
pub mod layout;
pub mod model;
pub mod params;
pub mod resnet;
pub mod zoo;
pub mod zoo_list;

pub use layers::{Act, Ctx};
pub use model::{Head, LossConfig, ModelSpec, Output, StateValue};
pub use params::{Kind, ParamStore, TorchTensor};
pub use resnet::{Arch, Backbone};
