//! Checkpoint formats.
