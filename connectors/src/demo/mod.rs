//! The embedded default: an in-process broker and a synthetic bank data set (and hostile
//! messages for benchmarks).

pub mod bank;
pub mod broker;
pub mod hostile;
pub mod registry;
