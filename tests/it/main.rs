//! Integration tests: the real `sluice` binary against real Kafka-protocol brokers.
//!
//! One test binary (the big crates link once). Every test runs against librdkafka's
//! in-process mock cluster; those marked `*_on_tansu` run against a real broker process
//! as well (see `harness::Tansu`).

mod anonymise;
mod avro;
mod cdc;
mod cli;
mod dead_letters;
mod declared;
mod deploy;
mod docs;
mod duckdb;
mod erase;
mod exactly_once;
mod fuzz;
mod group;
mod harness;
mod headers;
mod hostile;
mod jobs;
mod limits;
mod metrics;
mod object_store;
mod outage;
mod pii;
mod quality;
mod residue;
mod serve;
mod sql;
