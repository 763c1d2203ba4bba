//! What happens to batches between source and sink: the PII transforms of each table and
//! the seal of dead letters ([`Protection`]), applied by the runner to every batch.
//!
//! A table's chain is planned against each new input schema before use
//! ([`Protection::plan`]): every transform whose column is present must accept its type; a
//! column the policy names but the data lacks is an error for a declared schema, and waits
//! for a later schema otherwise. Rows a transform rejects, fails or panics on become dead
//! letters at stage `transform`; the others go on.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType};

use crate::error::scrub_values;
use crate::panic::guard;
use crate::{DeadLetter, Error, Result, Seal, SourceBatch, Stage, Transform};

/// One transform of a table's chain and the column (dotted path) it works on.
pub struct Step {
    pub column: String,
    pub transform: Box<dyn Transform>,
}

/// What happens to batches between source and sink: the PII transforms of each table and
/// the seal of dead letters.
#[derive(Default)]
pub struct Protection {
    /// Transforms to apply, in order, by destination table.
    pub chains: HashMap<String, Vec<Step>>,
    /// Encrypts the raw key and payload of every dead letter, when set.
    pub seal: Option<Box<dyn Seal>>,
}

/// Whether `schema` has a column at the dotted `path`.
fn has_column(schema: &arrow::datatypes::Schema, path: &str) -> bool {
    let mut fields = schema.fields();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let Some(f) = fields.iter().find(|f| f.name() == name) else {
            return false;
        };
        if parts.peek().is_some() {
            match f.data_type() {
                arrow::datatypes::DataType::Struct(children) => fields = children,
                _ => return false,
            }
        }
    }
    true
}

/// Which steps of a chain apply to an input schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Indexes of the steps whose column is present.
    pub steps: Vec<usize>,
    /// Columns the policy names that the schema lacks.
    pub missing: Vec<String>,
}

impl Protection {
    /// Check the chain of `table` against `input`: every transform whose column is
    /// present must handle its type. With `strict` (a declared schema) a missing column
    /// is an error too; otherwise (an inferred schema, which may gain the column later)
    /// its step is left out until a schema with the column arrives.
    pub fn plan(&self, table: &str, input: &SchemaRef, strict: bool) -> Result<Plan> {
        let mut schema = input.clone();
        let mut plan = Plan {
            steps: Vec::new(),
            missing: Vec::new(),
        };
        let with_table = |e: Error| match e {
            Error::TransformSchema {
                transform, reason, ..
            } => Error::TransformSchema {
                transform,
                table: table.to_string(),
                reason,
            },
            other => other,
        };
        for (i, step) in self.chains.get(table).into_iter().flatten().enumerate() {
            if !has_column(&schema, &step.column) {
                if strict {
                    return Err(Error::TransformSchema {
                        transform: step.transform.name().to_string(),
                        table: table.to_string(),
                        reason: format!("the data has no column '{}'", step.column),
                    });
                }
                plan.missing.push(step.column.clone());
                continue;
            }
            schema = step.transform.output_schema(&schema).map_err(with_table)?;
            plan.steps.push(i);
        }
        Ok(plan)
    }

    /// Apply the chain of `batch.table` and seal its dead letters. Rows a transform
    /// rejects become dead letters at stage `transform`.
    pub(crate) fn apply(
        &self,
        batch: &mut SourceBatch,
        plans: &mut HashMap<String, (SchemaRef, Plan)>,
    ) -> Result<()> {
        if let Some(chain) = self.chains.get(&batch.table)
            && let Some(mut rows) = batch.rows.take()
        {
            // A new input schema (first batch, or evolution) is checked before use.
            let schema = rows.schema();
            if plans.get(&batch.table).is_none_or(|(s, _)| *s != schema) {
                let plan = self.plan(&batch.table, &schema, false)?;
                if !plan.missing.is_empty() {
                    tracing::warn!(
                        table = %batch.table,
                        columns = %plan.missing.join(","),
                        "policy columns not in the data yet: they are protected as soon as they appear"
                    );
                }
                plans.insert(batch.table.clone(), (schema, plan));
            }
            let steps = plans
                .get(&batch.table)
                .map_or(&[][..], |(_, p)| &p.steps[..]);
            for &i in steps {
                rows = run_step(chain[i].transform.as_ref(), rows, &mut batch.dead_letters)?;
            }
            batch.rows = (rows.num_rows() > 0).then_some(rows);
        }
        if let Some(seal) = &self.seal {
            for letter in &mut batch.dead_letters {
                seal.seal(letter);
            }
        }
        Ok(())
    }
}

/// Apply `protection` to one batch as the runner does, planning its chain on the way (for
/// benchmarks and tests of the protected path outside a run).
pub fn protect(protection: &Protection, batch: &mut SourceBatch) -> Result<()> {
    protection.apply(batch, &mut HashMap::new())
}

/// One step over `rows`: the rows the transform rejects become dead letters, the rest are
/// rewritten. Should the transform fail or panic on the batch, the batch is bisected down
/// to the rows it fails on alone, which become dead letters at stage `transform` naming
/// the failure (never a value); the others go on. A transform that fails on every row
/// thus dead-letters them all rather than stopping the run: nothing is lost either way.
fn run_step(
    t: &dyn Transform,
    rows: RecordBatch,
    dead: &mut Vec<DeadLetter>,
) -> Result<RecordBatch> {
    let attempt =
        |rows: RecordBatch| -> std::result::Result<(RecordBatch, Vec<DeadLetter>), String> {
            guard(|| {
                let rejected = t.reject(&rows)?;
                let (kept, letters) = if rejected.is_empty() {
                    (rows, Vec::new())
                } else {
                    split_rejected(rows, &rejected, t.name())?
                };
                Ok::<_, Error>((t.apply(kept)?, letters))
            })
            .map_err(|p| p.to_string())
            .and_then(|r| r.map_err(|e| scrub_values(&e.to_string())))
        };
    let n = rows.num_rows();
    match attempt(rows.clone()) {
        Ok((out, letters)) => {
            dead.extend(letters);
            Ok(out)
        }
        Err(error) => {
            tracing::warn!(
                transform = t.name(),
                rows = n,
                "Transform failed on a batch; isolating the rows it fails on."
            );
            let output = t.output_schema(&rows.schema())?;
            let mut parts = Vec::new();
            bisect_step(&attempt, rows, error, t.name(), &mut parts, dead)?;
            Ok(
                arrow::compute::concat_batches(&output, &parts).map_err(|source| {
                    Error::Transform {
                        transform: t.name().to_string(),
                        source,
                    }
                })?,
            )
        }
    }
}

/// `rows` failed with `error` as a whole: try each half, down to single rows, which
/// become dead letters.
fn bisect_step(
    attempt: &dyn Fn(RecordBatch) -> std::result::Result<(RecordBatch, Vec<DeadLetter>), String>,
    rows: RecordBatch,
    error: String,
    transform: &str,
    parts: &mut Vec<RecordBatch>,
    dead: &mut Vec<DeadLetter>,
) -> Result<()> {
    let n = rows.num_rows();
    if n <= 1 {
        let failed: Vec<(usize, String)> = (0..n).map(|i| (i, error.clone())).collect();
        let (_, letters) = split_rejected(rows, &failed, transform)?;
        dead.extend(letters);
        return Ok(());
    }
    for half in [rows.slice(0, n / 2), rows.slice(n / 2, n - n / 2)] {
        match attempt(half.clone()) {
            Ok((out, letters)) => {
                parts.push(out);
                dead.extend(letters);
            }
            Err(error) => bisect_step(attempt, half, error, transform, parts, dead)?,
        }
    }
    Ok(())
}

/// Remove `rejected` rows from `rows`, turning each into a dead letter whose payload is
/// the row as JSON (lineage columns left out) and whose provenance comes from them.
fn split_rejected(
    rows: RecordBatch,
    rejected: &[(usize, String)],
    transform: &str,
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let arrow_err = |source| Error::Transform {
        transform: transform.to_string(),
        source,
    };
    let mut keep = vec![true; rows.num_rows()];
    for (i, _) in rejected {
        if let Some(k) = keep.get_mut(*i) {
            *k = false;
        }
    }
    let rejected: Vec<&(usize, String)> = rejected
        .iter()
        .filter(|(i, _)| *i < rows.num_rows())
        .collect();
    let kept = filter_record_batch(&rows, &BooleanArray::from(keep)).map_err(arrow_err)?;
    let schema = rows.schema();
    let payload_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| {
            !schema.field(*i).name().starts_with("_kafka_")
                && !schema.field(*i).name().starts_with("_ingest")
        })
        .collect();
    let payload = rows.project(&payload_columns).map_err(arrow_err)?;
    let col = |name: &str| rows.column_by_name(name).cloned();
    let topic = col("_kafka_topic");
    let partition = col("_kafka_partition");
    let offset = col("_kafka_offset");
    let timestamp = col("_kafka_timestamp");
    let key = col("_kafka_key");
    let mut letters = Vec::with_capacity(rejected.len());
    for (i, reason) in rejected {
        let row = payload.slice(*i, 1);
        let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
        json.write(&row).map_err(arrow_err)?;
        json.finish().map_err(arrow_err)?;
        let mut bytes = json.into_inner();
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        letters.push(DeadLetter {
            topic: topic
                .as_ref()
                .and_then(|c| c.as_string_opt::<i32>().map(|s| s.value(*i).to_string()))
                .unwrap_or_default(),
            partition: partition
                .as_ref()
                .and_then(|c| c.as_primitive_opt::<Int32Type>().map(|a| a.value(*i)))
                .unwrap_or(-1),
            offset: offset
                .as_ref()
                .and_then(|c| c.as_primitive_opt::<Int64Type>().map(|a| a.value(*i)))
                .unwrap_or(-1),
            timestamp_ms: timestamp.as_ref().and_then(|c| {
                let a = c.as_primitive_opt::<TimestampMicrosecondType>()?;
                a.is_valid(*i).then(|| a.value(*i) / 1000)
            }),
            // Raw bytes, or the key's text if an earlier step already pseudonymised it.
            key: key.as_ref().and_then(|c| {
                if let Some(a) = c.as_binary_opt::<i32>() {
                    a.is_valid(*i).then(|| a.value(*i).to_vec())
                } else {
                    let a = c.as_string_opt::<i32>()?;
                    a.is_valid(*i).then(|| a.value(*i).as_bytes().to_vec())
                }
            }),
            payload: Some(bytes),
            stage: Stage::Transform,
            error: format!("{transform}: {reason}"),
        });
    }
    Ok((kept, letters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// Rejects odd values of `v`, keeps the rest.
    struct RejectOdd;
    impl Transform for RejectOdd {
        fn name(&self) -> &str {
            "reject_odd"
        }
        fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
            match input.field_with_name("v").map(|f| f.data_type().clone()) {
                Ok(arrow::datatypes::DataType::Int64) => Ok(input.clone()),
                _ => Err(Error::TransformSchema {
                    transform: "reject_odd".into(),
                    table: String::new(),
                    reason: "v must be a long".into(),
                }),
            }
        }
        fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
            let v = batch
                .column_by_name("v")
                .map(|c| c.as_primitive::<Int64Type>().clone());
            Ok(v.into_iter()
                .flat_map(|v| {
                    v.iter()
                        .enumerate()
                        .filter(|(_, x)| x.is_some_and(|x| x % 2 == 1))
                        .map(|(i, _)| (i, "odd".to_string()))
                        .collect::<Vec<_>>()
                })
                .collect())
        }
        fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
            Ok(batch)
        }
    }

    struct Stamp;
    impl Seal for Stamp {
        fn seal(&self, letter: &mut DeadLetter) {
            letter.payload = Some(b"sealed".to_vec());
        }
    }

    fn rows_batch(values: Vec<i64>) -> SourceBatch {
        use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray};
        let n = values.len();
        let rows = RecordBatch::try_from_iter([
            ("v", Arc::new(Int64Array::from(values)) as ArrayRef),
            ("_kafka_topic", Arc::new(StringArray::from(vec!["t"; n]))),
            ("_kafka_partition", Arc::new(Int32Array::from(vec![3; n]))),
            (
                "_kafka_offset",
                Arc::new(Int64Array::from((100..100 + n as i64).collect::<Vec<_>>())),
            ),
            (
                "_kafka_key",
                Arc::new(BinaryArray::from(vec![Some(&b"k"[..]); n])),
            ),
        ])
        .expect("batch");
        SourceBatch {
            table: "t".into(),
            rows: Some(rows),
            offsets: BTreeMap::new(),
            dead_letters: Vec::new(),
            source_bytes: 0,
        }
    }

    /// Table `t` with one `RejectOdd` step on `column`.
    fn reject_odd_on(column: &str, seal: Option<Box<dyn Seal>>) -> Protection {
        Protection {
            chains: HashMap::from([(
                "t".to_string(),
                vec![Step {
                    column: column.into(),
                    transform: Box::new(RejectOdd),
                }],
            )]),
            seal,
        }
    }

    #[test]
    fn rejected_rows_become_sealed_dead_letters_with_their_provenance() {
        let protection = reject_odd_on("v", Some(Box::new(Stamp)));
        let mut b = rows_batch(vec![2, 3, 4, 5]);
        protection
            .apply(&mut b, &mut HashMap::new())
            .expect("apply");
        assert_eq!(b.rows.as_ref().map(|r| r.num_rows()), Some(2));
        assert_eq!(b.dead_letters.len(), 2);
        let d = &b.dead_letters[0];
        assert_eq!((d.topic.as_str(), d.partition, d.offset), ("t", 3, 101));
        assert_eq!(d.stage, Stage::Transform);
        assert_eq!(d.error, "reject_odd: odd");
        assert_eq!(d.payload.as_deref(), Some(&b"sealed"[..]));
        assert_eq!(
            b.message_count(),
            4,
            "every message is a row or a dead letter"
        );
    }

    /// Panics on the value 13, fails (an error) on 7, doubles the rest.
    struct Fragile;
    impl Transform for Fragile {
        fn name(&self) -> &str {
            "fragile"
        }
        fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
            Ok(input.clone())
        }
        fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
            use arrow::array::{ArrayRef, Int64Array};
            let v = batch
                .column_by_name("v")
                .map(|c| c.as_primitive::<Int64Type>().clone())
                .expect("v");
            if v.iter().any(|x| x == Some(7)) {
                return Err(Error::Transform {
                    transform: "fragile".into(),
                    source: arrow::error::ArrowError::ComputeError(
                        "cannot handle \"secret-7\"".into(),
                    ),
                });
            }
            let doubled: Int64Array = v
                .iter()
                .map(|x| {
                    x.map(|x| {
                        assert!(x != 13, "a value that must not reach a log: 13");
                        x * 2
                    })
                })
                .collect();
            let mut columns = batch.columns().to_vec();
            columns[0] = Arc::new(doubled) as ArrayRef;
            Ok(RecordBatch::try_new(batch.schema(), columns).expect("batch"))
        }
    }

    #[test]
    fn a_transform_panicking_or_failing_on_some_rows_dead_letters_only_those() {
        let protection = Protection {
            chains: HashMap::from([(
                "t".to_string(),
                vec![Step {
                    column: "v".into(),
                    transform: Box::new(Fragile),
                }],
            )]),
            seal: None,
        };
        let mut b = rows_batch(vec![1, 13, 2, 7, 3, 4, 13, 5]);
        protection
            .apply(&mut b, &mut HashMap::new())
            .expect("the run goes on");
        let rows = b.rows.as_ref().expect("rows");
        let v: Vec<i64> = rows.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(
            v,
            vec![2, 4, 6, 8, 10],
            "the other rows, in order, transformed"
        );
        let mut dead: Vec<(i64, String)> = b
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.error.clone()))
            .collect();
        dead.sort();
        assert_eq!(
            dead.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![101, 103, 106],
            "offsets of 13, 7 and 13"
        );
        for (_, e) in &dead {
            assert!(e.starts_with("fragile: "), "{e}");
            assert!(
                !e.contains("13") && !e.contains("secret"),
                "no value in {e}"
            );
        }
        assert!(dead[0].1.contains("internal error"), "{}", dead[0].1);
        assert_eq!(
            b.message_count(),
            8,
            "every message is a row or a dead letter"
        );
    }

    #[test]
    fn a_policy_column_missing_from_an_inferred_schema_waits_but_a_declared_one_fails() {
        let protection = reject_odd_on("absent", None);
        let schema = rows_batch(vec![1]).rows.expect("rows").schema();
        let plan = protection.plan("t", &schema, false).expect("inferred");
        assert_eq!(plan.missing, vec!["absent".to_string()]);
        assert!(plan.steps.is_empty());
        assert!(
            protection.plan("t", &schema, true).is_err(),
            "declared: a config error"
        );
    }
}
