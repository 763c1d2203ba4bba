//! Kafka: the consumer-group source whose offsets live in Delta.

pub mod source;
