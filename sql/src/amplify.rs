//! Functions whose result can be far larger than their arguments, bounded.
//!
//! A query's memory pool counts what operators buffer (sorts, joins, aggregates), not
//! the arrays a function returns: `repeat('x', 2000000000)` made one 2 GB string (and
//! the server grew by 8 GB) with a pool of a few megabytes. [`guard`] rewrites each call
//! of such a function in a plan so that, before it runs on a batch, a guard computes an
//! upper bound of the bytes it would return from its arguments and fails the query with
//! SQLSTATE 53200 when that is more than the query may hold (`query_memory_bytes`).
//!
//! ```text
//!   repeat(s, n)  ──►  repeat(s, sluice_output_guard('repeat', n, s, n))
//!                                 └ Σ len(s) × n over the batch ≤ limit, else 53200
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

/// The functions bounded, the argument the guard wraps, and how their result grows.
const AMPLIFIERS: [(&str, usize, Growth); 11] = [
    ("repeat", 1, Growth::Repeat),
    ("lpad", 1, Growth::Pad),
    ("rpad", 1, Growth::Pad),
    ("replace", 2, Growth::Replace),
    ("regexp_replace", 2, Growth::RegexpReplace),
    ("array_repeat", 1, Growth::ArrayRepeat),
    ("list_repeat", 1, Growth::ArrayRepeat),
    ("array_resize", 1, Growth::Resize),
    ("list_resize", 1, Growth::Resize),
    ("range", 0, Growth::Range),
    ("generate_series", 0, Growth::Range),
];

/// The guard's name in plans.
const GUARD: &str = "sluice_output_guard";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) × n`.
    Repeat,
    /// `lpad(s, n[, fill])`: `n` characters of at most 4 bytes.
    Pad,
    /// `replace(s, from, to)`: at most `len(s) + 1` replacements by `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement[, flags])`: at most `len(s) + 1` matches,
    /// each replaced by `replacement` whose references (`\1`, `$1`) may each copy `s`.
    RegexpReplace,
    /// `array_repeat(e, n)`: `n` copies of `e`.
    ArrayRepeat,
    /// `array_resize(a, n[, fill])`: `n` elements.
    Resize,
    /// `range([start,] stop[, step])` (and `generate_series`) as a list: `|stop - start| /
    /// |step| + 1` elements; dates and timestamps stepped by intervals count in
    /// nanoseconds, a month as 28 days (the shortest, so the count is an upper bound).
    Range,
}

fn growth_of(name: &str) -> Option<(usize, Growth)> {
    AMPLIFIERS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, wrapped, growth)| (*wrapped, *growth))
}

/// Rewrite every call in `plan` (subqueries included) of a function whose result can be
/// far larger than its arguments so that a batch whose result would exceed `limit` bytes
/// fails with SQLSTATE 53200 before the function runs.
pub fn guard(plan: LogicalPlan, limit: usize) -> Result<LogicalPlan> {
    let udf = Arc::new(ScalarUDF::new_from_impl(OutputGuard {
        limit,
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
    let guarded = plan.transform_up_with_subqueries(|node| {
        let node = node.map_expressions(|e| {
            e.transform_up(|e| match e {
                Expr::ScalarFunction(f) => wrap(f, &udf),
                other => Ok(Transformed::no(other)),
            })
        })?;
        if node.transformed {
            node.map_data(|n| n.recompute_schema())
        } else {
            Ok(node)
        }
    })?;
    Ok(guarded.data)
}

fn wrap(f: ScalarFunction, udf: &Arc<ScalarUDF>) -> Result<Transformed<Expr>> {
    let Some((wrapped, growth)) = growth_of(f.func.name()) else {
        return Ok(Transformed::no(Expr::ScalarFunction(f)));
    };
    if f.args.len() <= wrapped {
        return Ok(Transformed::no(Expr::ScalarFunction(f)));
    }
    let mut guard_args = vec![
        Expr::Literal(ScalarValue::Utf8(Some(format!("{growth:?}"))), None),
        f.args[wrapped].clone(),
    ];
    guard_args.extend(f.args.iter().cloned());
    let mut args = f.args;
    args[wrapped] = Expr::ScalarFunction(ScalarFunction::new_udf(udf.clone(), guard_args));
    Ok(Transformed::yes(Expr::ScalarFunction(
        ScalarFunction::new_udf(f.func, args),
    )))
}

/// `sluice_output_guard(growth, value, args…)`: `value`, once the result of the function
/// called with `args` is known to fit in `limit` bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct OutputGuard {
    limit: usize,
    signature: Signature,
}

impl ScalarUDFImpl for OutputGuard {
    fn name(&self) -> &str {
        GUARD
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Named as the value it guards, so no column of a result is renamed.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        match args.get(1) {
            Some(value) => Ok(value.schema_name().to_string()),
            None => Ok(GUARD.to_string()),
        }
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.schema_name(args)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(1) {
            Some(t) => Ok(t.clone()),
            None => exec_err!("{GUARD} takes a value"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields.get(1) {
            Some(f) => Ok(f.clone()),
            None => exec_err!("{GUARD} takes a value"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows.max(1);
        let growth = match args.args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(g)))) => g.clone(),
            _ => return exec_err!("{GUARD} takes the kind of growth first"),
        };
        let called = args.args.get(2..).unwrap_or_default();
        let bytes = bound(&growth, called, rows)?;
        if bytes > self.limit as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "a function's result would take up to {bytes} bytes for one batch, more than \
                 the query's {} bytes (query_memory_bytes)",
                self.limit
            )));
        }
        match args.args.into_iter().nth(1) {
            Some(value) => Ok(value),
            None => exec_err!("{GUARD} takes a value"),
        }
    }
}

/// An upper bound of the bytes the function returns for one batch of `rows` rows.
fn bound(growth: &str, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let len = |i: usize| args.get(i).map_or(Ok(vec![0; rows]), |a| lengths(a, rows));
    let int = |i: usize| args.get(i).map_or(Ok(vec![0; rows]), |a| ints(a, rows));
    let total = |per_row: Vec<u128>| per_row.into_iter().fold(0u128, u128::saturating_add);
    let times = |a: Vec<u128>, b: Vec<u128>| {
        total(
            a.into_iter()
                .zip(b)
                .map(|(a, b)| a.saturating_mul(b))
                .collect(),
        )
    };
    Ok(match growth {
        "Repeat" => times(len(0)?, int(1)?),
        // Each element costs its offset too, even an empty one.
        "ArrayRepeat" => times(
            len(0)?.into_iter().map(|l| l.saturating_add(8)).collect(),
            int(1)?,
        ),
        "Pad" => total(int(1)?).saturating_mul(4),
        "Resize" => total(int(1)?).saturating_mul(16),
        "Range" => {
            if let Some(step) = args.get(2) {
                let dates = args
                    .first()
                    .is_some_and(|a| matches!(a.data_type(), DataType::Date32 | DataType::Date64));
                check_step(step, rows, dates)?;
            }
            let at = |i: usize| {
                args.get(i)
                    .map(|a| {
                        // A step written as text is an interval.
                        let text = matches!(
                            a.data_type(),
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        );
                        if i == 2 && text {
                            let interval = strict_cast(
                                &a.to_array(rows)?,
                                &DataType::Interval(
                                    datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
                                ),
                            )?;
                            signed(&ColumnarValue::Array(interval), rows)
                        } else {
                            signed(a, rows)
                        }
                    })
                    .transpose()
            };
            let (start, stop, step) = match args.len() {
                1 => (None, at(0)?, None),
                2 => (at(0)?, at(1)?, None),
                _ => (at(0)?, at(1)?, at(2)?),
            };
            let stop = stop.unwrap_or_else(|| vec![None; rows]);
            let start = start.unwrap_or_else(|| vec![Some(0); rows]);
            let step = step.unwrap_or_else(|| vec![Some(1); rows]);
            let count = |((start, stop), step): ((Option<i128>, Option<i128>), Option<i128>)| {
                match (start, stop, step) {
                    // Stepping away from `stop` gives an empty list.
                    (Some(a), Some(b), Some(s)) if s != 0 && (b - a).signum() != -s.signum() => {
                        (b.abs_diff(a) / s.unsigned_abs()).saturating_add(1)
                    }
                    _ => 0,
                }
            };
            total(start.into_iter().zip(stop).zip(step).map(count).collect()).saturating_mul(16)
        }
        "Replace" => {
            let s = len(0)?;
            let to = len(2)?;
            total(
                s.into_iter()
                    .zip(to)
                    .map(|(s, to)| s.saturating_add(s.saturating_add(1).saturating_mul(to)))
                    .collect(),
            )
        }
        "RegexpReplace" => {
            let s = len(0)?;
            let replacement = len(2)?;
            let references = match args.get(2) {
                Some(a) => references(a, rows)?,
                None => vec![0; rows],
            };
            total(
                s.into_iter()
                    .zip(replacement)
                    .zip(references)
                    .map(|((s, r), refs)| {
                        let each = r.saturating_add(refs.saturating_mul(s));
                        s.saturating_add(s.saturating_add(1).saturating_mul(each))
                    })
                    .collect(),
            )
        }
        other => return exec_err!("{GUARD}: unknown growth {other}"),
    })
}

/// The byte length of each row's value (strings and binaries exactly; other values by
/// their share of the array's memory).
fn lengths(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let array: ArrayRef = match v {
        ColumnarValue::Scalar(s) => {
            let n = match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    v.as_ref().map_or(0, String::len)
                }
                ScalarValue::Binary(v)
                | ScalarValue::LargeBinary(v)
                | ScalarValue::BinaryView(v) => v.as_ref().map_or(0, Vec::len),
                other => other.size(),
            };
            return Ok(vec![n as u128; rows]);
        }
        ColumnarValue::Array(a) => a.clone(),
    };
    let of = |n: Option<usize>| n.unwrap_or(0) as u128;
    Ok(match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|s| of(s.map(str::len)))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|s| of(s.map(str::len)))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|s| of(s.map(str::len)))
            .collect(),
        DataType::Binary => array
            .as_binary::<i32>()
            .iter()
            .map(|b| of(b.map(<[u8]>::len)))
            .collect(),
        DataType::LargeBinary => array
            .as_binary::<i64>()
            .iter()
            .map(|b| of(b.map(<[u8]>::len)))
            .collect(),
        _ => {
            let share = array.get_array_memory_size() / array.len().max(1) + 1;
            vec![share as u128; array.len()]
        }
    })
}

/// Each row's value as a count (negative and null: 0).
fn ints(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let non_negative = |n: i64| u128::try_from(n).unwrap_or(0);
    match v {
        ColumnarValue::Scalar(s) => {
            let n = match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) => non_negative(n),
                _ => 0,
            };
            Ok(vec![n; rows])
        }
        ColumnarValue::Array(a) => {
            let cast = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
            Ok(cast
                .as_primitive::<Int64Type>()
                .iter()
                .map(|n| n.map_or(0, non_negative))
                .collect())
        }
    }
}

/// Nanoseconds in a day, and in the shortest day a time zone has (a day of an interval
/// added across a change of clocks may be 23 hours).
const DAY: i128 = 86_400 * 1_000_000_000;
const SHORTEST_DAY: i128 = 23 * 3_600 * 1_000_000_000;

/// Refuse a `range` step that may never advance: an interval whose months, days and time
/// have different signs (`1 day -24 hours`, `1 month -28 days`), or one stepping dates by
/// a time that is not whole days (dates move by whole days only).
fn check_step(step: &ColumnarValue, rows: usize, dates: bool) -> Result<()> {
    use datafusion::arrow::datatypes::{IntervalMonthDayNanoType, IntervalUnit};
    let array = step.to_array(rows)?;
    let interval = match array.data_type() {
        DataType::Interval(_) => {
            strict_cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            strict_cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?
        }
        _ => return Ok(()),
    };
    for v in interval
        .as_primitive::<IntervalMonthDayNanoType>()
        .iter()
        .flatten()
    {
        let signs = [
            i64::from(v.months).signum(),
            i64::from(v.days).signum(),
            v.nanoseconds.signum(),
        ];
        if signs.contains(&1) && signs.contains(&-1) {
            return exec_err!(
                "range and generate_series refuse a step whose months, days and time have different signs: it may never advance"
            );
        }
        if dates && i128::from(v.nanoseconds) % DAY != 0 {
            return exec_err!(
                "range and generate_series over dates refuse a step with a time that is not whole days: dates move by whole days"
            );
        }
    }
    Ok(())
}

/// `array` cast to `to`, failing on any value that does not convert (instead of null).
fn strict_cast(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let options = datafusion::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(datafusion::arrow::compute::cast_with_options(
        array, to, &options,
    )?)
}

/// Each row's value as a signed number: integers as they are; dates, timestamps (also
/// written as text) and intervals in nanoseconds (a month of an interval as 28 days, a
/// day as the shortest day a time zone has, so that a count of steps is an upper bound).
/// A value that does not convert fails.
fn signed(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i128>>> {
    use datafusion::arrow::datatypes::{IntervalMonthDayNanoType, IntervalUnit, TimeUnit};
    let cast = strict_cast;
    let array = v.to_array(rows)?;
    let scaled = |array: &ArrayRef, unit: i128| -> Result<Vec<Option<i128>>> {
        let n = cast(array, &DataType::Int64)?;
        Ok(n.as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| i128::from(v).saturating_mul(unit)))
            .collect())
    };
    match array.data_type() {
        DataType::Interval(_) => {
            let i = cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
            Ok(i.as_primitive::<IntervalMonthDayNanoType>()
                .iter()
                .map(|v| {
                    v.map(|v| {
                        i128::from(v.months)
                            .saturating_mul(28 * SHORTEST_DAY)
                            .saturating_add(i128::from(v.days).saturating_mul(SHORTEST_DAY))
                            .saturating_add(i128::from(v.nanoseconds))
                    })
                })
                .collect())
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => scaled(
            &cast(&array, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
            1_000,
        ),
        DataType::Date32 => scaled(&cast(&array, &DataType::Int32)?, DAY),
        DataType::Date64 => scaled(&array, 1_000_000),
        DataType::Timestamp(unit, _) => scaled(
            &array,
            match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            },
        ),
        _ => scaled(&array, 1),
    }
}

/// How many references (`\1`, `$1`, `${name}`) each row's replacement may hold.
fn references(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let count = |s: Option<&str>| {
        s.map_or(0, |s| {
            s.bytes().filter(|b| *b == b'\\' || *b == b'$').count()
        }) as u128
    };
    match v {
        ColumnarValue::Scalar(s) => {
            let n = match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    count(v.as_deref())
                }
                _ => 0,
            };
            Ok(vec![n; rows])
        }
        ColumnarValue::Array(a) => Ok(match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().iter().map(count).collect(),
            DataType::LargeUtf8 => a.as_string::<i64>().iter().map(count).collect(),
            DataType::Utf8View => a.as_string_view().iter().map(count).collect(),
            _ => vec![0; a.len()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// Plan `sql`, guard it at `limit` bytes, run it.
    async fn run(sql: &str, limit: usize) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let ctx = SessionContext::new();
        let plan = ctx.state().create_logical_plan(sql).await?;
        let plan = guard(plan, limit)?;
        ctx.execute_logical_plan(plan).await?.collect().await
    }

    #[tokio::test]
    async fn results_larger_than_the_query_may_hold_fail_before_they_are_made() {
        let limit = 1 << 20;
        for big in [
            "select length(repeat('x', 2000000000))",
            "select length(arrow_cast(repeat('é', 1000000000), 'LargeUtf8'))",
            "select length(repeat(cast(value as varchar), 100000)) from generate_series(1, 1000)",
            "select length(lpad('x', 1000000000))",
            "select length(rpad('x', 1000000000, 'yz'))",
            "select length(replace(repeat('x', 10000), 'x', repeat('y', 10000)))",
            "select length(regexp_replace(repeat('x', 5000), '(x)', '\\1\\1\\1\\1', 'g'))",
            "select cardinality(array_repeat(1, 1000000000))",
            "select cardinality(array_resize([1], 1000000000))",
            "select cardinality(range(1000000000))",
            "select cardinality(range(-9223372036854775808, 9223372036854775807, 1))",
            "select cardinality(generate_series(1, 1000000000, 2))",
            "select cardinality(range(date '1970-01-01', date '9999-12-31', interval '1 day'))",
            "select cardinality(range(timestamp '2020-01-01', timestamp '2020-01-02', interval '1 nanosecond'))",
            "select cardinality(generate_series(timestamp '1900-01-01', timestamp '2100-01-01', interval '1 second'))",
            "select cardinality(range(value)) from generate_series(1, 100000)",
            "select cardinality(array_repeat('', 2000000000))",
            // Dates written as text, over many rows.
            "select cardinality(range(s, '9999-12-31', interval '1 day')) from (select '1970-01-01' as s from generate_series(1, 1000))",
            "select x from (select 1 as x) where x in (select length(repeat('x', 2000000000)))",
        ] {
            let e = run(big, limit).await.expect_err(big);
            assert_eq!(
                crate::limits::sqlstate(&e),
                Some(crate::limits::OUT_OF_MEMORY),
                "{big}: {e}"
            );
            assert!(e.to_string().contains("query_memory_bytes"), "{big}: {e}");
        }
        // The same functions within the limit run, and their columns keep their names.
        for (ok, expect) in [
            ("select length(repeat('é', 1000)) as n", "1000"),
            ("select length(lpad('x', 10, 'ab')) as n", "10"),
            ("select length(replace('abc', 'b', 'xyz')) as n", "5"),
            (
                "select length(regexp_replace('abc', '(b)', '\\1\\1', 'g')) as n",
                "4",
            ),
            ("select cardinality(array_repeat(1, 3)) as n", "3"),
            ("select cardinality(range(10)) as n", "10"),
            ("select cardinality(range(0, 1000000000, -1)) as n", "0"),
            ("select cardinality(generate_series(1, 10, 3)) as n", "4"),
            (
                "select cardinality(range(date '2026-01-01', date '2026-12-31', interval '1 month')) as n",
                "11",
            ),
        ] {
            let batches = run(ok, limit).await.expect(ok);
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .expect("text")
                .to_string();
            assert!(text.contains(&format!("| {expect} ")), "{ok}: {text}");
        }
        // Steps that may never advance are refused, whatever the memory.
        for never in [
            "select range(date '2020-01-01', date '2020-01-02', interval '1 day -24 hours')",
            "select generate_series(timestamp '2001-01-31', timestamp '2001-03-01', interval '1 month -28 days')",
            "select range(date '2001-01-15', date '2001-03-01', interval '-1 month 31 days')",
            "select range(date '2020-01-01', date '2020-01-03', interval '12 hours')",
        ] {
            let e = run(never, usize::MAX).await.expect_err(never);
            assert!(
                e.to_string().contains("may never advance") || e.to_string().contains("whole days"),
                "{never}: {e}"
            );
        }
        // Planned (constants folded) without running away.
        run(
            "explain select range(date '2020-01-01', date '2020-01-02', interval '1 day -24 hours')",
            limit,
        )
        .await
        .expect("explain");
        let batches = run("select repeat('a', 2)", limit).await.expect("named");
        assert_eq!(
            batches[0].schema().field(0).name(),
            "repeat(Utf8(\"a\"),Int64(2))"
        );
    }
}
