//! Reduction of a batch's change rows, in memory: the newest change per key, by
//! sequence and then Kafka offset, with Debezium's unavailable-value placeholder filled
//! from older changes of the key; and the truncates among them.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices};
use arrow::datatypes::Int64Type;
use arrow::row::{RowConverter, SortField};

use crate::decode::debezium::{DELETE, TRUNCATE, is_unavailable};
use crate::error::{Error, Result};

/// A row converter for a table's key columns: keys compared (and hashed) as one value.
pub(super) fn key_converter(key_columns: &[ArrayRef]) -> Result<RowConverter> {
    Ok(RowConverter::new(
        key_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?)
}

/// The newest change per key of `changes` (by `_cdc_sequence`, then `_kafka_offset`).
/// Changes without a full key are left out. A text column holding the unavailable-value
/// placeholder takes the value of the newest older change of the key that had one, back to
/// the key's last delete; with none in the batch the placeholder stays (the MERGE keeps the
/// table's value). Truncates are kept as they are, apart from the keys.
pub fn reduce(changes: &RecordBatch, key: &[String]) -> Result<RecordBatch> {
    let col = |name: &str| -> Result<ArrayRef> {
        changes
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::MissingColumn {
                rows: "change rows",
                column: name.to_string(),
            })
    };
    let ops = col("_cdc_op")?;
    let ops = ops.as_string::<i32>();
    let key_columns: Vec<ArrayRef> = key.iter().map(|k| col(k)).collect::<Result<_>>()?;
    let mut sort: Vec<SortColumn> = key_columns
        .iter()
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    for c in ["_cdc_sequence", "_kafka_offset"] {
        sort.push(SortColumn {
            values: col(c)?,
            options: None,
        });
    }
    let order = lexsort_to_indices(&sort, None)?;
    let converter = key_converter(&key_columns)?;
    let keys = converter.convert_columns(&key_columns)?;
    let full_key = |i: usize| key_columns.iter().all(|c| c.is_valid(i));
    // Groups of equal keys in sorted order; truncates each form their own group.
    let mut winners: Vec<u32> = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new(); // [start, end) into `order`
    let order: Vec<usize> = order.values().iter().map(|i| *i as usize).collect();
    let mut start = 0;
    for pos in 1..=order.len() {
        let boundary = pos == order.len()
            || ops.value(order[pos]) == TRUNCATE
            || ops.value(order[pos - 1]) == TRUNCATE
            || keys.row(order[pos]) != keys.row(order[pos - 1]);
        if boundary {
            let last = order[pos - 1];
            if ops.value(last) == TRUNCATE || full_key(last) {
                winners.push(last as u32);
                groups.push((start, pos));
            }
            start = pos;
        }
    }
    let schema = changes.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(changes.columns()) {
        let text = c.as_string_opt::<i32>();
        let fill = match text {
            Some(s) if !key.contains(f.name()) && !f.name().starts_with('_') => {
                let mut idx: Vec<u32> = Vec::with_capacity(winners.len());
                let mut changed = false;
                for (w, (start, end)) in winners.iter().zip(&groups) {
                    let w = *w as usize;
                    let mut chosen = w;
                    if is_unavailable(s, w) {
                        for &j in order[*start..*end - 1].iter().rev() {
                            if ops.value(j) == DELETE {
                                break;
                            }
                            if !is_unavailable(s, j) {
                                chosen = j;
                                changed = true;
                                break;
                            }
                        }
                    }
                    idx.push(chosen as u32);
                }
                changed.then_some(idx)
            }
            _ => None,
        };
        let indices = UInt32Array::from(fill.unwrap_or_else(|| winners.clone()));
        columns.push(arrow::compute::take(c, &indices, None)?);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The highest sequence of a truncate among `rows`, if any.
pub(super) fn truncate_point(rows: &RecordBatch) -> Option<i64> {
    let ops = rows.column_by_name("_cdc_op")?.as_string_opt::<i32>()?;
    let seq = rows
        .column_by_name("_cdc_sequence")?
        .as_primitive_opt::<Int64Type>()?;
    (0..rows.num_rows())
        .filter(|i| ops.value(*i) == TRUNCATE)
        .map(|i| seq.value(i))
        .max()
}

/// Rows a truncate at sequence `at` leaves: those at `at` or later (a truncate removes
/// strictly older rows, here as in the table and the history), truncates aside.
pub(super) fn not_removed_by(rows: &RecordBatch, at: i64) -> BooleanArray {
    let seq = rows
        .column_by_name("_cdc_sequence")
        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
    let ops = rows
        .column_by_name("_cdc_op")
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    (0..rows.num_rows())
        .map(|i| {
            let newer = seq.as_ref().is_some_and(|s| s.value(i) >= at);
            let truncate = ops.as_ref().is_some_and(|o| o.value(i) == TRUNCATE);
            Some(newer && !truncate)
        })
        .collect()
}

/// The rows of `rows` whose sequence is `w` or newer (truncates among them too); `None`
/// when none is.
pub(super) fn not_older_than(rows: &RecordBatch, w: i64) -> Result<Option<RecordBatch>> {
    let Some(seq) = rows
        .column_by_name("_cdc_sequence")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
    else {
        return Ok(Some(rows.clone()));
    };
    let keep: BooleanArray = seq.iter().map(|s| Some(s.is_none_or(|s| s >= w))).collect();
    let kept = arrow::compute::filter_record_batch(rows, &keep)?;
    Ok((kept.num_rows() > 0).then_some(kept))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::decode::debezium::UNAVAILABLE;

    #[test]
    fn the_placeholder_takes_the_newest_real_value_of_the_batch() {
        let rows = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef),
            (
                "bio",
                Arc::new(StringArray::from(vec!["old", "new", UNAVAILABLE])),
            ),
            ("_cdc_op", Arc::new(StringArray::from(vec!["c", "u", "u"]))),
            ("_cdc_sequence", Arc::new(Int64Array::from(vec![1, 2, 3]))),
            ("_kafka_offset", Arc::new(Int64Array::from(vec![9, 8, 7]))),
        ])
        .expect("batch");
        let w = reduce(&rows, &["id".to_string()]).expect("reduce");
        assert_eq!(w.num_rows(), 1);
        assert_eq!(w.column(1).as_string::<i32>().value(0), "new");
        assert_eq!(
            w.column_by_name("_cdc_sequence")
                .expect("seq")
                .as_primitive::<Int64Type>()
                .value(0),
            3
        );
    }
}
