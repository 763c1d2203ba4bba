//! # sluice-transforms
//!
//! PII transforms over Arrow record batches: one file per transform, each implementing
//! [`sluice_pipeline::Transform`]. The pipeline applies the transforms configured for a
//! table to every batch before anything lands.
//!
//! The transforms themselves arrive with the PII-protection work (issue 3); until then
//! the chain is empty and batches land as decoded.

pub use sluice_pipeline::Transform;
