//! Decoders: message bytes → Arrow rows, bad messages isolated as dead letters.

pub mod avro;
mod chunk;
pub(crate) mod evolve;
pub mod json;
pub mod registry;

use sluice_pipeline::SourceBatch;

use crate::error::Result;

/// A message as the decoder sees it, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone (a key with a null value).
    pub payload: Option<&'a [u8]>,
}

/// The decoder of one table, in the format of its topics.
#[derive(Debug)]
pub enum TableDecoder {
    Json(json::JsonDecoder),
    Avro(avro::AvroDecoder),
}

impl TableDecoder {
    /// Buffer one message.
    pub fn push(&mut self, m: &RawMessage<'_>) {
        match self {
            Self::Json(d) => d.push(m),
            Self::Avro(d) => d.push(m),
        }
    }

    /// Everything buffered as one batch: rows with lineage, and dead letters.
    pub fn finish(&mut self) -> Result<Option<SourceBatch>> {
        match self {
            Self::Json(d) => d.finish(),
            Self::Avro(d) => d.finish(),
        }
    }

    /// Messages buffered since the last [`TableDecoder::finish`].
    pub fn len(&self) -> usize {
        match self {
            Self::Json(d) => d.len(),
            Self::Avro(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
