//! `mask` and `mask_partial`: replace values, keeping type, row count and nulls.
//!
//! `mask` follows Kafka Connect's MaskField: strings become `""` (or a configured
//! literal), numbers `0`, booleans `false`, dates and timestamps the epoch; nulls stay
//! null. `mask_partial` keeps the last `keep_last` characters of a string and replaces
//! every other letter or digit by `mask_char` (`4111 1111 1111 1234` → `**** **** **** 1234`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayData, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, make_array,
};
use arrow::buffer::{Buffer, MutableBuffer};
use arrow::datatypes::{DataType, SchemaRef};
use sluice_pipeline::{Result, Transform};

use crate::path::{ColumnPath, check, map_column, same_nulls};

/// Whole-value masking of one column.
#[derive(Debug, Clone)]
pub struct Mask {
    pub path: ColumnPath,
    /// Replacement for strings instead of `""`.
    pub literal: Option<String>,
}

fn maskable(dt: &DataType) -> bool {
    dt.is_primitive()
        || matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Boolean | DataType::Binary
        )
}

/// Every non-null value of `a` replaced by the zero of its type (or `literal` for strings).
pub fn mask_array(a: &ArrayRef, literal: Option<&str>) -> Result<ArrayRef> {
    let nulls = same_nulls(a.as_ref());
    Ok(match a.data_type() {
        DataType::Utf8 => {
            let v = literal.unwrap_or("");
            let s: StringArray = (0..a.len()).map(|i| (!a.is_null(i)).then_some(v)).collect();
            Arc::new(s)
        }
        DataType::LargeUtf8 => {
            let v = literal.unwrap_or("");
            let s: arrow::array::LargeStringArray =
                (0..a.len()).map(|i| (!a.is_null(i)).then_some(v)).collect();
            Arc::new(s)
        }
        DataType::Binary => {
            let s: arrow::array::BinaryArray = (0..a.len())
                .map(|i| (!a.is_null(i)).then_some(&b""[..]))
                .collect();
            Arc::new(s)
        }
        DataType::Boolean => Arc::new(BooleanArray::new(
            arrow::buffer::BooleanBuffer::new_unset(a.len()),
            nulls,
        )),
        dt => {
            // Primitive: a zeroed values buffer of the same width, the same nulls. Never
            // fall back to the input: an unmasked column must fail, not pass.
            let width = dt.primitive_width().ok_or_else(|| {
                crate::path::schema_error("mask", &format!("cannot mask values of type {dt}"))
            })?;
            let zeros: Buffer = MutableBuffer::from_len_zeroed(a.len() * width).into();
            let data = ArrayData::try_new(
                dt.clone(),
                a.len(),
                nulls.map(|n| n.into_inner().into_inner()),
                0,
                vec![zeros],
                vec![],
            )
            .map_err(|e| crate::path::arrow_error("mask", e))?;
            make_array(data)
        }
    })
}

impl Transform for Mask {
    fn name(&self) -> &str {
        "mask"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &maskable)?;
        Ok(input.clone())
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let literal = self.literal.clone();
        map_column(&batch, &self.path, "mask", &move |a| {
            mask_array(a, literal.as_deref())
        })
    }
}

/// Keep the last characters of a string column, mask the other letters and digits.
#[derive(Debug, Clone)]
pub struct MaskPartial {
    pub path: ColumnPath,
    pub keep_last: usize,
    pub mask_char: char,
}

/// `value` with every letter or digit but the last `keep_last` ones replaced by `mask_char`;
/// separators stay where they are.
pub fn mask_partial(value: &str, keep_last: usize, mask_char: char) -> String {
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen > total.saturating_sub(keep_last) {
                c
            } else {
                mask_char
            }
        })
        .collect()
}

impl Transform for MaskPartial {
    fn name(&self) -> &str {
        "mask_partial"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &|dt| {
            matches!(dt, DataType::Utf8)
        })?;
        Ok(input.clone())
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let (keep, ch) = (self.keep_last, self.mask_char);
        map_column(&batch, &self.path, "mask_partial", &move |a| {
            let s = a.as_string::<i32>();
            let out: StringArray = s
                .iter()
                .map(|v| v.map(|v| mask_partial(v, keep, ch)))
                .collect();
            Ok(Arc::new(out) as ArrayRef)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Float64Array, Int64Array, StructArray};
    use arrow::datatypes::{Field, Fields, Schema};
    use proptest::prelude::*;

    fn batch(col: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("c", col)]).expect("batch")
    }

    #[test]
    fn mask_gives_each_type_its_zero_and_keeps_nulls() {
        let cases: Vec<(ArrayRef, ArrayRef)> = vec![
            (
                Arc::new(StringArray::from(vec![Some("a@b.c"), None])),
                Arc::new(StringArray::from(vec![Some(""), None])),
            ),
            (
                Arc::new(Int64Array::from(vec![Some(42), None])),
                Arc::new(Int64Array::from(vec![Some(0), None])),
            ),
            (
                Arc::new(Float64Array::from(vec![None, Some(1.5)])),
                Arc::new(Float64Array::from(vec![None, Some(0.0)])),
            ),
            (
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(BooleanArray::from(vec![Some(false), None])),
            ),
            (
                Arc::new(Date32Array::from(vec![Some(20000), None])),
                Arc::new(Date32Array::from(vec![Some(0), None])),
            ),
        ];
        for (input, expected) in cases {
            let m = Mask {
                path: ColumnPath::parse("c").expect("path"),
                literal: None,
            };
            let out = m.apply(batch(input)).expect("mask");
            assert_eq!(out.column(0).as_ref(), expected.as_ref());
        }
    }

    #[test]
    fn mask_uses_the_literal_for_strings() {
        let m = Mask {
            path: ColumnPath::parse("c").expect("path"),
            literal: Some("REDACTED".into()),
        };
        let out = m
            .apply(batch(Arc::new(StringArray::from(vec!["x"]))))
            .expect("mask");
        assert_eq!(out.column(0).as_string::<i32>().value(0), "REDACTED");
    }

    #[test]
    fn mask_reaches_nested_columns() {
        let email: ArrayRef = Arc::new(StringArray::from(vec!["a@b.c", "d@e.f"]));
        let id: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let after = StructArray::new(
            Fields::from(vec![
                Field::new("email", DataType::Utf8, true),
                Field::new("id", DataType::Int64, true),
            ]),
            vec![email, id],
            None,
        );
        let b =
            RecordBatch::try_from_iter([("after", Arc::new(after) as ArrayRef)]).expect("batch");
        let m = Mask {
            path: ColumnPath::parse("after.email").expect("path"),
            literal: None,
        };
        m.output_schema(&b.schema()).expect("valid path");
        let out = m.apply(b).expect("mask");
        let s = out.column(0).as_struct();
        assert_eq!(s.column(0).as_string::<i32>().value(1), "");
        assert_eq!(
            s.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(1),
            2
        );
    }

    #[test]
    fn a_column_the_data_lacks_is_an_error_at_start_up() {
        let schema = Arc::new(Schema::new(vec![Field::new("email", DataType::Utf8, true)]));
        let m = Mask {
            path: ColumnPath::parse("after.email").expect("path"),
            literal: None,
        };
        let err = m.output_schema(&schema).expect_err("missing column");
        assert!(err.to_string().contains("no column 'after'"), "{err}");
    }

    #[test]
    fn mask_partial_keeps_the_last_four_digits_of_a_pan() {
        assert_eq!(
            mask_partial("4111 1111 1111 1234", 4, '*'),
            "**** **** **** 1234"
        );
        assert_eq!(mask_partial("12", 4, '*'), "12");
    }

    proptest! {
        #[test]
        fn mask_preserves_rows_and_nulls(values in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..200)) {
            let input: ArrayRef = Arc::new(Int64Array::from(values.clone()));
            let m = Mask { path: ColumnPath::parse("c").expect("path"), literal: None };
            let out = m.apply(batch(input)).expect("mask");
            let col = out.column(0);
            prop_assert_eq!(col.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(col.is_null(i), v.is_none());
            }
        }

        #[test]
        fn mask_partial_keeps_length_and_the_tail(s in "[0-9 -]{0,30}", keep in 0usize..8) {
            let out = mask_partial(&s, keep, '*');
            prop_assert_eq!(out.chars().count(), s.chars().count());
            let digits: Vec<char> = s.chars().filter(|c| c.is_alphanumeric()).collect();
            let kept: String = digits[digits.len().saturating_sub(keep)..].iter().collect();
            let survivors: String = out.chars().filter(|c| c.is_alphanumeric()).collect();
            prop_assert_eq!(survivors, kept.clone());
            prop_assert_eq!(out.chars().filter(|c| *c == '*').count(), digits.len() - kept.chars().count());
        }
    }
}
