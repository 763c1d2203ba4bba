//! `generalize`: keep a coarser version of a value.
//!
//! * dates and timestamps → the first day of their year or month (type kept);
//! * numbers → the lower bound of a bucket of a given width (ages 37 → 30 with width 10);
//! * UK postcodes → the outward code (`SW1A 1AA` → `SW1A`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, SchemaRef, TimeUnit};
use sluice_pipeline::{Result, Transform};

use crate::path::{ColumnPath, arrow_error, check, column_at, map_column, schema_error};

/// How to generalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Generalization {
    /// Date or timestamp → 1 January of its year.
    Year,
    /// Date or timestamp → the first of its month.
    Month,
    /// Number → lower bound of its bucket of this width.
    Bucket(f64),
    /// UK postcode → outward code.
    Outward,
}

/// Generalise one column.
#[derive(Debug, Clone)]
pub struct Generalize {
    pub path: ColumnPath,
    pub to: Generalization,
}

const DAYS_FROM_CE_TO_EPOCH: i32 = 719_163;

/// Days since the epoch cut to the first of their year or month; `None` beyond the
/// calendar's range (such rows are rejected).
fn truncate_days(days: i32, to: Generalization) -> Option<i32> {
    use chrono::Datelike;
    let d = chrono::NaiveDate::from_num_days_from_ce_opt(days.checked_add(DAYS_FROM_CE_TO_EPOCH)?)?;
    let first = match to {
        Generalization::Year => d.with_day(1).and_then(|d| d.with_month(1)),
        _ => d.with_day(1),
    }?;
    Some(first.num_days_from_ce() - DAYS_FROM_CE_TO_EPOCH)
}

/// An epoch timestamp in units of which `per_day` make a day, cut the same way.
fn truncate_timestamp(v: i64, per_day: i64, to: Generalization) -> Option<i64> {
    let days = i32::try_from(v.div_euclid(per_day)).ok()?;
    i64::from(truncate_days(days, to)?).checked_mul(per_day)
}

fn per_day(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 86_400,
        TimeUnit::Millisecond => 86_400_000,
        TimeUnit::Microsecond => 86_400_000_000,
        TimeUnit::Nanosecond => 86_400_000_000_000,
    }
}

/// The outward code of a UK postcode: everything before the last three characters
/// (characters, not bytes: any text may arrive in a postcode field).
pub fn outward_code(postcode: &str) -> String {
    let compact: Vec<char> = postcode
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect();
    let keep = if compact.len() > 3 {
        compact.len() - 3
    } else {
        compact.len()
    };
    compact[..keep].iter().collect()
}

/// An ISO-8601 date or timestamp in text (`1985-07-23`, `1985-07-23T10:00:00Z`) cut to
/// the first day of its year or month (`1985-01-01`); `None` if it is not one.
pub fn truncate_iso(value: &str, to: Generalization) -> Option<String> {
    let b = value.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7)) {
        return None;
    }
    Some(match to {
        Generalization::Year => format!("{}-01-01", &value[..4]),
        _ => format!("{}-01", &value[..7]),
    })
}

impl Generalize {
    fn accepts(&self, dt: &DataType) -> bool {
        match self.to {
            Generalization::Year | Generalization::Month => {
                matches!(
                    dt,
                    DataType::Date32 | DataType::Timestamp(_, _) | DataType::Utf8
                )
            }
            Generalization::Bucket(w) => w > 0.0 && (dt.is_integer() || dt.is_floating()),
            Generalization::Outward => matches!(dt, DataType::Utf8),
        }
    }

    fn rewrite(to: Generalization, a: &ArrayRef) -> Result<ArrayRef> {
        let err = |e| arrow_error("generalize", e);
        Ok(match (to, a.data_type()) {
            (Generalization::Year | Generalization::Month, DataType::Date32) => {
                // Out-of-range dates were rejected; the fallback is never reached.
                let d: Date32Array = a
                    .as_primitive::<Date32Type>()
                    .unary(|v| truncate_days(v, to).unwrap_or(i32::MIN));
                Arc::new(d)
            }
            (Generalization::Year | Generalization::Month, DataType::Timestamp(unit, _)) => {
                // On the epoch integers: to whole days, truncate, back; type and zone kept.
                let per_day = per_day(*unit);
                let raw = cast(a, &DataType::Int64).map_err(err)?;
                let out: Int64Array = raw
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .unary(|v| truncate_timestamp(v, per_day, to).unwrap_or(i64::MIN));
                let data = out
                    .into_data()
                    .into_builder()
                    .data_type(a.data_type().clone())
                    .build()
                    .map_err(err)?;
                arrow::array::make_array(data)
            }
            (Generalization::Bucket(w), dt) if dt.is_integer() => {
                let v = cast(a, &DataType::Int64).map_err(err)?;
                let w = w.max(1.0) as i64;
                let out: Int64Array = v
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .unary(|x| x.div_euclid(w).saturating_mul(w));
                cast(&(Arc::new(out) as ArrayRef), dt).map_err(err)?
            }
            (Generalization::Bucket(w), dt) => {
                let v = cast(a, &DataType::Float64).map_err(err)?;
                let out: Float64Array = v
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .unary(|x| (x / w).floor() * w);
                cast(&(Arc::new(out) as ArrayRef), dt).map_err(err)?
            }
            (Generalization::Year | Generalization::Month, DataType::Utf8) => {
                let s = a.as_string::<i32>();
                Arc::new(
                    s.iter()
                        .map(|v| v.and_then(|v| truncate_iso(v, to)))
                        .collect::<StringArray>(),
                )
            }
            (Generalization::Outward, _) => {
                let s = a.as_string::<i32>();
                Arc::new(
                    s.iter()
                        .map(|v| v.map(outward_code))
                        .collect::<StringArray>(),
                )
            }
            (_, dt) => {
                return Err(schema_error(
                    "generalize",
                    &format!("cannot generalise {dt}"),
                ));
            }
        })
    }
}

impl Transform for Generalize {
    fn name(&self) -> &str {
        "generalize"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &|dt| self.accepts(dt))?;
        Ok(input.clone())
    }
    fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        // Dates in text must look like dates; anything else would be kept as it is.
        // Dates and timestamps must lie in the calendar's range.
        let column = column_at(batch, &self.path, self.name())?;
        if !matches!(self.to, Generalization::Year | Generalization::Month) {
            return Ok(Vec::new());
        }
        let out_of_range = |i: usize| {
            (
                i,
                format!(
                    "column '{}' holds a date beyond the calendar's range",
                    self.path
                ),
            )
        };
        match column.data_type() {
            DataType::Date32 => {
                return Ok(column
                    .as_primitive::<Date32Type>()
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_some_and(|v| truncate_days(v, self.to).is_none()))
                    .map(|(i, _)| out_of_range(i))
                    .collect());
            }
            DataType::Timestamp(unit, _) => {
                let per_day = per_day(*unit);
                let raw =
                    cast(&column, &DataType::Int64).map_err(|e| arrow_error("generalize", e))?;
                return Ok(raw
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| {
                        v.is_some_and(|v| truncate_timestamp(v, per_day, self.to).is_none())
                    })
                    .map(|(i, _)| out_of_range(i))
                    .collect());
            }
            DataType::Utf8 => {}
            _ => return Ok(Vec::new()),
        }
        Ok(column
            .as_string::<i32>()
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                !crate::path::is_unavailable(*v)
                    && v.is_some_and(|v| truncate_iso(v, self.to).is_none())
            })
            .map(|(i, _)| (i, format!("column '{}' is not an ISO-8601 date", self.path)))
            .collect())
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let to = self.to;
        map_column(&batch, &self.path, "generalize", &move |a| {
            let out = Self::rewrite(to, a)?;
            debug_assert_eq!(out.null_count(), a.null_count());
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;
    use proptest::prelude::*;

    fn one(col: ArrayRef, to: Generalization) -> ArrayRef {
        let b = RecordBatch::try_from_iter([("c", col)]).expect("batch");
        let g = Generalize {
            path: ColumnPath::parse("c").expect("p"),
            to,
        };
        g.output_schema(&b.schema()).expect("accepted");
        g.apply(b).expect("apply").column(0).clone()
    }

    #[test]
    fn dates_become_their_year_or_month() {
        // 1985-07-23 is day 5682 after the epoch.
        let dob: ArrayRef = Arc::new(Date32Array::from(vec![Some(5682), None]));
        let year = one(dob.clone(), Generalization::Year);
        assert_eq!(
            year.as_primitive::<Date32Type>().value(0),
            5479,
            "1985-01-01"
        );
        assert!(year.is_null(1));
        let month = one(dob, Generalization::Month);
        assert_eq!(
            month.as_primitive::<Date32Type>().value(0),
            5660,
            "1985-07-01"
        );
    }

    #[test]
    fn dates_in_text_are_cut_and_non_dates_rejected() {
        let g = Generalize {
            path: ColumnPath::parse("dob").expect("p"),
            to: Generalization::Year,
        };
        let b = RecordBatch::try_from_iter([(
            "dob",
            Arc::new(StringArray::from(vec![
                Some("1985-07-23"),
                Some("23/07/1985"),
                None,
            ])) as ArrayRef,
        )])
        .expect("batch");
        assert_eq!(
            g.reject(&b)
                .expect("reject")
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            truncate_iso("1985-07-23T10:00:00Z", Generalization::Month).as_deref(),
            Some("1985-07-01")
        );
        let out = one(
            Arc::new(StringArray::from(vec![Some("1985-07-23"), None])),
            Generalization::Year,
        );
        assert_eq!(
            out.as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("1985-01-01"), None]
        );
    }

    #[test]
    fn outward_codes_cut_characters_not_bytes() {
        for (input, expected) in [
            ("££", "££"),
            ("ÄÖÜ", "ÄÖÜ"),
            ("M1 ¹AA", "M1"),
            ("ÄÖÜ é1X", "ÄÖÜ"),
            ("sw1a 1aa", "SW1A"),
            ("", ""),
            ("😀😀😀😀", "😀"),
        ] {
            assert_eq!(outward_code(input), expected, "{input}");
        }
    }

    #[test]
    fn boundary_dates_and_numbers_never_overflow() {
        let g = Generalize {
            path: ColumnPath::parse("d").expect("p"),
            to: Generalization::Year,
        };
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![i32::MAX, i32::MIN, 0]));
        let b = RecordBatch::try_from_iter([("d", dates)]).expect("batch");
        let rejected: Vec<usize> = g.reject(&b).expect("reject").iter().map(|r| r.0).collect();
        assert_eq!(rejected, vec![0, 1], "beyond the calendar: dead letters");
        let ts: ArrayRef = Arc::new(
            arrow::array::TimestampNanosecondArray::from(vec![i64::MAX, i64::MIN, 0])
                .with_timezone("UTC"),
        );
        let b = RecordBatch::try_from_iter([("d", ts.clone())]).expect("batch");
        assert!(g.reject(&b).expect("reject").len() <= 2);
        one(ts, Generalization::Month);
        let n: ArrayRef = Arc::new(Int64Array::from(vec![i64::MIN, i64::MAX]));
        let out = one(n, Generalization::Bucket(10.0));
        let out = out.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(out.value(0), i64::MIN, "the lowest bucket saturates");
        assert_eq!(out.value(1), 9_223_372_036_854_775_800);
    }

    #[test]
    fn timestamps_keep_their_type() {
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![1_767_312_245_000_000]).with_timezone("UTC"),
        );
        let out = one(ts.clone(), Generalization::Month);
        assert_eq!(out.data_type(), ts.data_type());
        assert_eq!(
            out.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            1_767_225_600_000_000
        );
    }

    #[test]
    fn ages_fall_into_bands_and_postcodes_lose_the_inward_code() {
        let ages: ArrayRef = Arc::new(Int64Array::from(vec![Some(37), Some(40), None, Some(-3)]));
        let out = one(ages, Generalization::Bucket(10.0));
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .collect::<Vec<_>>(),
            vec![Some(30), Some(40), None, Some(-10)]
        );
        let pc: ArrayRef = Arc::new(StringArray::from(vec!["sw1a 1aa", "M1 1AE"]));
        let out = one(pc, Generalization::Outward);
        assert_eq!(
            out.as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("SW1A"), Some("M1")]
        );
    }

    proptest! {
        #[test]
        fn buckets_contain_their_values(v in proptest::collection::vec(proptest::option::of(-1_000_000i64..1_000_000), 0..100), w in 1i64..1000) {
            let out = one(Arc::new(Int64Array::from(v.clone())), Generalization::Bucket(w as f64));
            let out = out.as_primitive::<arrow::datatypes::Int64Type>();
            prop_assert_eq!(out.len(), v.len());
            for (i, x) in v.iter().enumerate() {
                match x {
                    None => prop_assert!(out.is_null(i)),
                    Some(x) => prop_assert!(out.value(i) <= *x && *x < out.value(i) + w && out.value(i) % w == 0),
                }
            }
        }
    }
}
