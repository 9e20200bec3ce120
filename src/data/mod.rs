//! PIN++ data pipeline.
