//! How much a function call may return, told from its arguments before it runs: each
//! function's class ([`Growth`]) and the bound of each class.

use std::hash::Hash;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};

use super::array_bytes;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;

/// The functions whose result can be far larger than their arguments, and how it grows.
const AMPLIFIERS: [(&str, Growth); 26] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("list_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::Resize),
    ("list_resize", Growth::Resize),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
    ("array_replace_all", Growth::ReplaceElements),
    ("list_replace_all", Growth::ReplaceElements),
    ("array_replace_n", Growth::ReplaceElements),
    ("list_replace_n", Growth::ReplaceElements),
    ("array_to_string", Growth::JoinElements),
    ("list_to_string", Growth::JoinElements),
    ("array_join", Growth::JoinElements),
    ("list_join", Growth::JoinElements),
    ("regexp_match", Growth::Groups),
    ("string_to_array", Growth::Split),
    ("string_to_list", Growth::Split),
    ("levenshtein", Growth::Quadratic),
    ("concat_ws", Growth::Separated),
    ("array_positions", Growth::Positions),
    ("list_positions", Growth::Positions),
];

/// Functions formatting values with a pattern, each letter of which may become a long
/// word (`%c` is 24 characters): 32 bytes per byte of the pattern (their second argument).
const FORMATTERS: [&str; 3] = ["to_char", "date_format", "time_format"];

/// Functions whose result per row is no larger than their largest argument's value (a
/// slice, a part, a test, a number), so only a constant copied into every row counts
/// before they run. (Hashes are not: `md5('')` is 32 bytes.)
const KEEPERS: [&str; 56] = [
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "substr_index",
    "substring_index",
    "left",
    "right",
    "btrim",
    "ltrim",
    "rtrim",
    "trim",
    "split_part",
    "strpos",
    "instr",
    "position",
    "starts_with",
    "ends_with",
    "contains",
    "ascii",
    "coalesce",
    "nullif",
    "nvl",
    "ifnull",
    "nvl2",
    "greatest",
    "least",
    "date_part",
    "datepart",
    "extract",
    "date_trunc",
    "datetrunc",
    "cardinality",
    "array_length",
    "list_length",
    "array_element",
    "list_element",
    "array_extract",
    "list_extract",
    "array_slice",
    "list_slice",
    "array_has",
    "list_has",
    "array_has_all",
    "array_has_any",
    "array_position",
    "list_position",
    "abs",
    "round",
    "trunc",
    "regexp_like",
    "regexp_count",
    "isnan",
];

/// Functions whose result is their arguments put together (once each): the sum of
/// their arguments' bytes, and a little per row.
const COMBINERS: [&str; 16] = [
    "concat",
    "make_array",
    "make_list",
    "array_concat",
    "array_cat",
    "list_concat",
    "list_cat",
    "array_append",
    "list_append",
    "array_push_back",
    "array_prepend",
    "list_prepend",
    "array_push_front",
    "struct",
    "named_struct",
    "map",
];

/// How many times its arguments' bytes a function of no other rule may return, and the
/// bytes per row it may add (a hash, a formatted number): upper or lower case may take
/// three times the bytes (`ΐ` is 2 bytes, `Ϊ́` 6), hexadecimal twice.
const ANY_GROWTH: u128 = 4;
const ANY_PER_ROW: u128 = 64;

/// Functions left as they are: a field of a struct is a slice of it, and DataFusion
/// recognises `get_field` by its type when it pushes projections down.
pub(super) const UNBOUNDED: [&str; 1] = ["get_field"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Growth {
    /// Any other function: [`ANY_GROWTH`] times its arguments' bytes (a constant argument,
    /// one value for the whole batch, counted once per row, as the function may copy it
    /// into every row), and [`ANY_PER_ROW`] per row. An argument named twice counts
    /// twice: `f(r, r, …)` may copy `r` each time.
    Args,
    /// [`KEEPERS`]: only a constant argument, once per row.
    Keeps,
    /// [`COMBINERS`] (and `a || b`): their arguments' bytes (constants once per row), and
    /// 16 bytes per row and argument (offsets, validity).
    Combines,
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
    /// `array_resize(a, n[, fill])`: `n` elements, each a copy of `fill`.
    Resize,
    /// `range([start,] stop[, step])` (and `generate_series`) as a list: `|stop - start| /
    /// |step| + 1` elements; dates and timestamps stepped by intervals count in
    /// nanoseconds, a month as 28 days (the shortest, so the count is an upper bound).
    Range,
    /// `array_replace_all(a, from, to[, n])`: every element of `a` may become `to`.
    ReplaceElements,
    /// `array_to_string(a, sep[, null])`: per element, the element, `sep` and `null`.
    JoinElements,
    /// `to_char(value, pattern)`: 32 bytes per byte of the pattern.
    Format,
    /// `regexp_match(s, pattern)`: a copy of `s` per group of the pattern, and one.
    Groups,
    /// `string_to_array(s, delimiter)`: each byte of `s` may become an element (a view of
    /// 16 bytes, or an offset and its byte).
    Split,
    /// `concat_ws(sep, a, b, …)`: the arguments, and the separator between each two of
    /// them (empty ones included), with 16 bytes per row and argument.
    Separated,
    /// `array_positions(a, e)`: 8 bytes per element of `a` (each may be a position), and
    /// 16 per row.
    Positions,
    /// `levenshtein(a, b)`: no more memory, but `len(a) × len(b)` steps, counted as bytes
    /// so that a comparison of two megabyte strings (10¹² steps, which nothing could
    /// cancel) is refused.
    Quadratic,
}

pub(super) fn growth_of(name: &str) -> Growth {
    if FORMATTERS.contains(&name) {
        return Growth::Format;
    }
    if KEEPERS.contains(&name) {
        return Growth::Keeps;
    }
    if COMBINERS.contains(&name) {
        return Growth::Combines;
    }
    AMPLIFIERS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Growth::Args, |(_, growth)| *growth)
}

/// The bytes of `args` for one batch of `rows` rows, each argument counted each time it
/// is given: an array its own slice of its buffers, a constant once per row beside an
/// argument of many rows (else once).
pub(super) fn arguments(args: &[ColumnarValue], rows: usize) -> u128 {
    let many = args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
    args.iter()
        .map(|a| match a {
            ColumnarValue::Array(a) => array_bytes(a) as u128,
            ColumnarValue::Scalar(s) if many => {
                (scalar_bytes(s) as u128).saturating_mul(rows as u128)
            }
            ColumnarValue::Scalar(s) => scalar_bytes(s) as u128,
        })
        .fold(0u128, u128::saturating_add)
}

/// An upper bound of the bytes the function returns for one batch of `rows` rows.
pub(super) fn bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u128> {
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
        Growth::Repeat => times(len(0)?, int(1)?),
        // Each element costs its offset too, even an empty one.
        Growth::ArrayRepeat => times(
            len(0)?.into_iter().map(|l| l.saturating_add(8)).collect(),
            int(1)?,
        ),
        Growth::Pad => total(int(1)?).saturating_mul(4),
        // Each new element is a copy of the fill value.
        Growth::Resize => times(
            int(1)?,
            len(2)?.into_iter().map(|l| l.saturating_add(16)).collect(),
        ),
        Growth::Range => {
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
        Growth::Replace => {
            let s = len(0)?;
            let to = len(2)?;
            total(
                s.into_iter()
                    .zip(to)
                    .map(|(s, to)| s.saturating_add(s.saturating_add(1).saturating_mul(to)))
                    .collect(),
            )
        }
        Growth::RegexpReplace => {
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
        Growth::Keeps => {
            // Constants are copied into each row only beside an argument of many rows.
            if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
                args.iter()
                    .filter_map(|a| match a {
                        ColumnarValue::Scalar(s) => Some(scalar_bytes(s) as u128),
                        ColumnarValue::Array(_) => None,
                    })
                    .fold(0u128, u128::saturating_add)
                    .saturating_mul(rows as u128)
            } else {
                0
            }
        }
        Growth::Separated => {
            let between = args.len().saturating_sub(2) as u128;
            arguments(args, rows)
                .saturating_add(total(len(0)?).saturating_mul(between))
                .saturating_add((rows as u128).saturating_mul(16 * args.len().max(1) as u128))
        }
        Growth::Positions => {
            let each = match args.first() {
                Some(a) => leaves(a, rows)?,
                None => vec![0; rows],
            };
            total(each)
                .saturating_mul(8)
                .saturating_add((rows as u128).saturating_mul(16))
        }
        Growth::Combines => arguments(args, rows)
            .saturating_add((rows as u128).saturating_mul(16 * args.len().max(1) as u128)),
        Growth::Args => arguments(args, rows)
            .saturating_mul(ANY_GROWTH)
            .saturating_add((rows as u128).saturating_mul(ANY_PER_ROW)),
        Growth::ReplaceElements => {
            let to = len(2)?;
            let each = match args.first() {
                Some(a) => leaves(a, rows)?,
                None => vec![0; rows],
            };
            total(len(0)?).saturating_add(times(
                each,
                to.into_iter().map(|l| l.saturating_add(16)).collect(),
            ))
        }
        Growth::JoinElements => {
            let sep = len(1)?;
            let null = len(2)?;
            let each = match args.first() {
                Some(a) => leaves(a, rows)?,
                None => vec![0; rows],
            };
            // An element is at most 3 times its bytes as text (a number of 8 bytes has
            // up to 20 digits), plus a separator or the null text.
            total(len(0)?).saturating_mul(3).saturating_add(times(
                each,
                sep.into_iter()
                    .zip(null)
                    .map(|(s, n)| s.saturating_add(n).saturating_add(40))
                    .collect(),
            ))
        }
        Growth::Format => {
            total(len(1)?.into_iter().map(|l| l.saturating_add(1)).collect()).saturating_mul(32)
        }
        Growth::Groups => {
            let groups = match args.get(1) {
                Some(p) => parentheses(p, rows)?,
                None => vec![0; rows],
            };
            times(
                len(0)?.into_iter().map(|l| l.saturating_add(16)).collect(),
                groups.into_iter().map(|g| g.saturating_add(1)).collect(),
            )
        }
        Growth::Split => total(len(0)?)
            .saturating_add(rows as u128)
            .saturating_mul(24),
        Growth::Quadratic => times(len(0)?, len(1)?),
    })
}

/// How many `(` each row's pattern holds: at most that many groups.
fn parentheses(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    count_in_text(v, rows, |b| b == b'(')
}

/// Per row, how many bytes of its text `wanted` takes (0 for a null or a value that is
/// not text).
fn count_in_text(v: &ColumnarValue, rows: usize, wanted: impl Fn(u8) -> bool) -> Result<Vec<u128>> {
    let count = |s: Option<&str>| s.map_or(0, |s| s.bytes().filter(|b| wanted(*b)).count()) as u128;
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

/// The bytes of a constant's value.
pub(super) fn scalar_bytes(s: &ScalarValue) -> usize {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            v.as_ref().map_or(0, String::len)
        }
        ScalarValue::Binary(v) | ScalarValue::LargeBinary(v) | ScalarValue::BinaryView(v) => {
            v.as_ref().map_or(0, Vec::len)
        }
        other => other.size(),
    }
}

/// How many values each row's list holds, nested lists counted to their innermost
/// values (anything else: 1).
fn leaves(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    fn of(array: &dyn Array) -> Vec<u128> {
        let sum = |child: Vec<u128>, bounds: &mut dyn Iterator<Item = (usize, usize)>| {
            bounds
                .map(|(a, b)| {
                    child
                        .get(a..b)
                        .unwrap_or_default()
                        .iter()
                        .fold(0u128, |n, c| n.saturating_add(*c))
                })
                .collect()
        };
        match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let offsets = list.offsets();
                sum(
                    of(list.values().as_ref()),
                    &mut offsets.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
                )
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                let offsets = list.offsets();
                sum(
                    of(list.values().as_ref()),
                    &mut offsets.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
                )
            }
            DataType::FixedSizeList(_, n) => {
                let list = array.as_fixed_size_list();
                let n = usize::try_from(*n).unwrap_or(0);
                sum(
                    of(list.values().as_ref()),
                    &mut (0..list.len()).map(|i| {
                        let start = usize::try_from(list.value_offset(i)).unwrap_or(0);
                        (start, start + n)
                    }),
                )
            }
            _ => vec![1; array.len()],
        }
    }
    Ok(match v {
        ColumnarValue::Scalar(s) => {
            let one = of(s.to_array_of_size(1)?.as_ref());
            vec![one.first().copied().unwrap_or(0); rows]
        }
        ColumnarValue::Array(a) => of(a.as_ref()),
    })
}

/// The byte length of each row's value (strings and binaries exactly; other values by
/// their share of the array's memory).
fn lengths(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let array: ArrayRef = match v {
        ColumnarValue::Scalar(s) => return Ok(vec![scalar_bytes(s) as u128; rows]),
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
    count_in_text(v, rows, |b| b == b'\\' || b == b'$')
}
