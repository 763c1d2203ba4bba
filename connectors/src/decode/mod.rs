//! Decoders: message bytes → Arrow rows, bad messages isolated as dead letters.

pub mod avro;
mod chunk;
pub mod debezium;
pub mod json;
pub mod limits;
pub mod registry;
mod screen;

use sluice_pipeline::panic::guard;
use sluice_pipeline::{SourceBatch, Stage};

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
    /// The message's Kafka headers, read only for tables that capture some.
    pub headers: RawHeaders<'a>,
}

/// One Kafka header: its name and its value (`None`: null).
pub type RawHeader<'a> = (&'a str, Option<&'a [u8]>);

/// A message's Kafka headers as the source read them: `(name, value)` in the order the
/// producer sent them, names possibly repeated, values possibly null.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RawHeaders<'a> {
    /// Not read: the message's table captures no headers.
    #[default]
    NotRead,
    Read(&'a [RawHeader<'a>]),
    /// The client library could not read them (a header name that is not UTF-8).
    Unreadable,
}

/// The decoder of one table, in the format of its topics.
#[derive(Debug)]
pub enum TableDecoder {
    Json(json::JsonDecoder),
    Avro(avro::AvroDecoder),
}

impl TableDecoder {
    /// Buffer one message.
    ///
    /// The decoders contain panics of the code they call per message; should one escape
    /// them anyway, the buffered messages are kept for [`TableDecoder::finish`], which
    /// makes them dead letters.
    pub fn push(&mut self, m: &RawMessage<'_>) {
        let pushed = guard(|| match self {
            Self::Json(d) => d.push(m),
            Self::Avro(d) => d.push(m),
        });
        if let Err(p) = pushed {
            self.chunk().poisoned.get_or_insert(p.to_string());
        }
    }

    /// Everything buffered as one batch: rows with lineage, and dead letters.
    ///
    /// A panic the decoder did not isolate to messages makes every message of the batch a
    /// dead letter at stage `decode` naming the internal error: the run goes on and
    /// nothing is lost.
    pub fn finish(&mut self) -> Result<Option<SourceBatch>> {
        if let Some(error) = self.chunk().poisoned.take() {
            return self.abandon(&error);
        }
        match guard(|| match self {
            Self::Json(d) => d.finish(),
            Self::Avro(d) => d.finish(),
        }) {
            Ok(result) => result,
            Err(p) => self.abandon(&p.to_string()),
        }
    }

    fn abandon(&mut self, error: &str) -> Result<Option<SourceBatch>> {
        tracing::error!(
            error,
            "A decoder failed on a whole batch; its messages go to the dead letters."
        );
        let table = self.table().to_string();
        let chunk = self.chunk();
        if chunk.len() == 0 {
            return Ok(None);
        }
        chunk.abandon(&table, Stage::Decode, error).map(Some)
    }

    fn chunk(&mut self) -> &mut chunk::Chunk {
        match self {
            Self::Json(d) => d.chunk_mut(),
            Self::Avro(d) => d.chunk_mut(),
        }
    }

    fn table(&self) -> &str {
        match self {
            Self::Json(d) => d.table(),
            Self::Avro(d) => d.table(),
        }
    }

    /// Capture the Kafka headers `spec` declares into the `_kafka_headers` column.
    pub fn capture_headers(&mut self, spec: std::sync::Arc<sluice_pipeline::lineage::HeaderSpec>) {
        self.chunk().capture_headers(spec);
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
