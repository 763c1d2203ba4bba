//! `[pipeline]`: the pipeline's name, where its lake lives, and the memory budget its
//! buffers are sized to.
//!
//! ```toml
//! [pipeline]
//! name = "sluice"                    # part of every Delta transaction id
//! lake = "s3://bank-lake/prod"       # or a directory; --lake overrides it
//! memory_budget_bytes = 1073741824   # sluice run lowers its buffers to fit
//! ```

use serde::Deserialize;

use super::check::Problem;
use crate::lake::Lake;

/// `[pipeline]`: identity of this pipeline and where its lake lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Name of the pipeline; part of every Delta transaction id (`<name>-<topic>-<partition>`).
    /// Two pipelines with different names keep separate offsets in the same table.
    pub name: String,
    /// Root of the lake: a directory, or an object store URL (`s3://bucket/prefix`,
    /// `abfss://…`, `gs://…`); `--lake` overrides it. Default `./lake`.
    pub lake: Option<String>,
    /// Upper bound of the process's resident memory (bytes) that `sluice run` sizes its
    /// buffers to: the prefetch queue, the batches in flight and the rows waiting for a
    /// commit. None: the buffer settings apply as they are.
    pub memory_budget_bytes: Option<u64>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: "sluice".into(),
            lake: None,
            memory_budget_bytes: None,
        }
    }
}

/// Resident memory of sluice before any data: the binary, the runtime, the Delta and
/// DataFusion machinery. A memory budget must leave room above it.
pub const MEMORY_BASELINE_BYTES: u64 = 96 * 1024 * 1024;

/// Buffer sizes under a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// librdkafka's prefetch queue.
    pub prefetch_bytes: u64,
    /// Payload bytes buffered before a commit.
    pub flush_max_bytes: usize,
    /// Messages per decoded batch.
    pub decode_batch_max_messages: usize,
}

impl PipelineConfig {
    /// The `configured` buffer sizes, lowered to fit `memory_budget_bytes` when one is
    /// set. Above the baseline, a sixteenth of the budget goes to the prefetch queue, and
    /// the rows waiting for a commit get a sixth of it in payload bytes (their Arrow form,
    /// the Parquet being written and the batches in flight take about three times as
    /// much).
    pub fn fit_buffers(&self, configured: BufferSizes) -> BufferSizes {
        let Some(budget) = self.memory_budget_bytes else {
            return configured;
        };
        let room = budget.saturating_sub(MEMORY_BASELINE_BYTES);
        BufferSizes {
            prefetch_bytes: configured.prefetch_bytes.min((room / 16).max(1024 * 1024)),
            flush_max_bytes: configured
                .flush_max_bytes
                .min((room / 6).max(1024 * 1024) as usize),
            decode_batch_max_messages: configured.decode_batch_max_messages.min(
                // About 1 KiB per message: four batches in flight stay within a 64th.
                ((room / 64 / 1024) as usize).max(256),
            ),
        }
    }

    /// Problems of the `[pipeline]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(lake) = &self.lake
            && let Err(e) = Lake::parse(lake)
        {
            p.push(Problem::new("pipeline.lake", e));
        }
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.push(Problem::new(
                "pipeline.name",
                "must be non-empty and use only letters, digits, '-' and '_'",
            ));
        }
        if let Some(b) = self.memory_budget_bytes
            && b < 2 * MEMORY_BASELINE_BYTES
        {
            p.push(Problem::new(
                "pipeline.memory_budget_bytes",
                format!(
                    "must be at least {} (sluice itself needs about {} MiB)",
                    2 * MEMORY_BASELINE_BYTES,
                    MEMORY_BASELINE_BYTES / 1024 / 1024
                ),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn an_unknown_lake_scheme_is_refused_and_object_stores_accepted() {
        let config = |lake: &str| {
            Config::from_toml(&format!(
                "[pipeline]\nlake = \"{lake}\"\n\
                 [kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"t\"]\n"
            ))
        };
        let Err(problems) = config("ftp://bank/lake") else {
            panic!("an ftp:// lake was accepted");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        assert!(
            text.starts_with("pipeline.lake: 'ftp://' is not a supported lake location"),
            "{text}"
        );
        assert!(config("s3://bank/lake").is_ok());
    }
}
