//! # sluice-connectors
//!
//! Everything that touches the outside world:
//!
//! * [`kafka`]: the consumer-group source, whose resume offsets come from Delta;
//! * [`decode`]: message bytes → Arrow rows, bad messages isolated as dead letters;
//! * [`delta`]: the bronze append sink and the dead-letter table, committing rows and
//!   Kafka offsets together;
//! * [`demo`]: an in-process Kafka broker and a synthetic retail-bank data set.

pub mod decode;
pub mod delta;
pub mod demo;
pub mod error;
pub mod kafka;

pub use error::{Error, Result};
