//! Kafka: the consumer-group source whose offsets live in Delta.

pub mod erasure;
pub mod limit;
pub mod source;
