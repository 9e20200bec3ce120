//! Tape autograd: forward records, backward replays in reverse.
pub mod grad_check;
pub mod tape;

pub use tape::{BackwardCtx, GradMode, Gradients, Tape, Var};
