//! # sluice-connectors
//!
//! Everything that touches the outside world:
//!
//! * [`kafka`]: the consumer-group source, whose resume offsets come from the sink's
//!   checkpoints;
//! * [`decode`]: message bytes → Arrow rows, bad messages isolated as dead letters;
//! * [`delta`]: the bronze append sink and the dead-letter table, committing rows and
//!   Kafka offsets together, and the checkpoints read back from them;
//! * [`demo`]: an in-process Kafka broker and a synthetic retail-bank data set.

pub mod decode;
pub mod delta;
pub mod demo;
pub mod error;
mod evolve;
pub mod kafka;

pub use error::{Error, Result};
