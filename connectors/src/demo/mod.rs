//! The embedded default: an in-process broker and a synthetic bank data set.

pub mod bank;
pub mod broker;
pub mod registry;
