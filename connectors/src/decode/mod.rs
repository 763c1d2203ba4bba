//! Decoders: message bytes → Arrow rows, bad messages isolated as dead letters.

pub mod json;
