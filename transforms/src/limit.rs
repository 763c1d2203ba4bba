//! The longest value an action will process (`pii.max_value_bytes`).
//!
//! Keyed hashes, encryption and redaction cost time in proportion to a value's length,
//! and a producer chooses the length: a megabyte of text in a tokenised field. [`Limited`]
//! wraps such an action: a row whose value at the action's column is longer than the
//! limit is rejected (a dead letter at stage `transform`, naming the column and the
//! limit, never the value) before the action sees it.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use sluice_pipeline::{Result, Transform};

use crate::path::{ColumnPath, column_at};

/// An action whose values are at most `max_bytes` long.
pub struct Limited {
    pub inner: Box<dyn Transform>,
    pub path: ColumnPath,
    pub max_bytes: usize,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("action", &self.inner.name())
            .field("path", &self.path.to_string())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Lengths of the values of a string or binary array (`None` for other types).
fn lengths(a: &dyn Array) -> Option<Vec<Option<usize>>> {
    Some(match a.data_type() {
        DataType::Utf8 => a
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::len))
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(str::len))
            .collect(),
        DataType::Utf8View => a.as_string_view().iter().map(|v| v.map(str::len)).collect(),
        DataType::Binary => a
            .as_binary::<i32>()
            .iter()
            .map(|v| v.map(<[u8]>::len))
            .collect(),
        DataType::LargeBinary => a
            .as_binary::<i64>()
            .iter()
            .map(|v| v.map(<[u8]>::len))
            .collect(),
        _ => return None,
    })
}

impl Transform for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.inner.output_schema(input)
    }

    fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        let column = column_at(batch, &self.path, self.inner.name())?;
        let mut out: Vec<(usize, String)> = lengths(&column)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n?;
                (n > self.max_bytes).then(|| {
                    (
                        i,
                        format!(
                            "column '{}' holds {n} bytes; pii.max_value_bytes is {}",
                            self.path, self.max_bytes
                        ),
                    )
                })
            })
            .collect();
        if out.is_empty() {
            return self.inner.reject(batch);
        }
        // The action's own checks on the rest (they are linear: digit counts, subjects).
        let long: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
        out.extend(
            self.inner
                .reject(batch)?
                .into_iter()
                .filter(|(i, _)| !long.contains(i)),
        );
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        self.inner.apply(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, StringArray};

    use crate::memo::Memo;
    use crate::tokenize::Tokenize;

    #[test]
    fn long_values_are_rejected_naming_the_limit_and_short_ones_pass() {
        let t = Limited {
            inner: Box::new(Tokenize {
                path: ColumnPath::parse("note").expect("path"),
                key_id: "k".into(),
                key: b"a secret of enough bytes".to_vec(),
                memo: Memo::default(),
            }),
            path: ColumnPath::parse("note").expect("path"),
            max_bytes: 8,
        };
        let long = "é".repeat(5);
        let b = RecordBatch::try_from_iter([(
            "note",
            Arc::new(StringArray::from(vec![
                Some("short"),
                Some(long.as_str()),
                None,
                Some("12345678"),
            ])) as ArrayRef,
        )])
        .expect("batch");
        let rejected = t.reject(&b).expect("reject");
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 1, "ten bytes in five characters");
        assert!(rejected[0].1.contains("pii.max_value_bytes is 8"));
        assert!(!rejected[0].1.contains('é'), "never the value");
        assert_eq!(t.name(), "tokenize");
    }
}
