//! Kafka: the consumer-group source, which resumes every partition from the sink's
//! checkpoints (the Delta tables' offsets), never from the group's.

pub mod erasure;
pub mod limit;
mod rebalance;
pub mod source;
