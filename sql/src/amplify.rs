//! Functions' results, bounded.
//!
//! A query's memory pool counts what operators buffer (sorts, joins, aggregates), not
//! the arrays a function returns: `repeat('x', 2000000000)` made one 2 GB string (and
//! the server grew by 8 GB) with a pool of a few megabytes. [`guard`] replaces each
//! function call of a plan by the same function [`Bounded`]:
//!
//! ```text
//!   f(a, b)  ──►  f'(a, b)     f' = f, but each batch:
//!                                1. before f runs: an upper bound of what it returns
//!                                   (its own rule for a function that can return far
//!                                   more than it is given, e.g. repeat: Σ len(s) × n;
//!                                   the arguments' bytes for one that puts them
//!                                   together, e.g. concat, make_array; a constant
//!                                   argument's bytes once per row for one that returns
//!                                   a part of one, e.g. substr, length; else 4 × the
//!                                   arguments' bytes + 64 per row)
//!                                   > query_memory_bytes  → 53200
//!                                2. after: the bytes returned > query_memory_bytes → 53200
//!                                3. the bytes returned stay reserved in the query's pool
//!                                   until the call's next batch (→ 53200 when the results
//!                                   of all calls together are more than the query may hold)
//! ```
//!
//! Arguments count as often as they are given (`make_array(r, r, …)` counts `r` each
//! time), so no function of those rules makes more than the query may hold before it is
//! measured. So a result is never much more than the query may hold, whatever calls it
//! is nested in or combined with (`concat(r, r, …)`, `make_array(r, r, …)`, `s || s` doubled in
//! each of 40 subqueries, a recursive CTE doubling a string). The wrapper evaluates
//! each argument once: wrapping does not copy arguments, so a plan grows by one node per
//! call, however deeply calls nest. `a || b` is not a function call: it is held like one
//! (step 3), and a side that is a constant is checked once per row (step 1).

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

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
const UNBOUNDED: [&str; 1] = ["get_field"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
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

fn growth_of(name: &str) -> Growth {
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

/// Rewrite every function call in `plan` (subqueries included) so that a batch whose
/// result would exceed `limit` bytes fails with SQLSTATE 53200, before the function
/// runs when its arguments tell, else as soon as it returns; each call's last result is
/// reserved in `pool` (the query's own) until its next batch.
pub fn guard(
    plan: LogicalPlan,
    limit: usize,
    pool: Option<&Arc<dyn MemoryPool>>,
) -> Result<LogicalPlan> {
    refuse_nested_text_casts(&plan)?;
    guard_with(plan, limit, pool, true)
}

/// SQLSTATE of a cast refused here: `feature_not_supported`.
pub const NOT_SUPPORTED: &str = "0A000";

/// Refuse a cast (or `try_cast`) of a list, struct or map to text, written or added by
/// type coercion: its text repeats field names and separators for every element, many
/// times the bytes of a list of small values (a list of booleans is one bit an element,
/// `false, ` six bytes), and a cast is no function call to bound. A cast whose argument's
/// type cannot be told here (a column of an outer query) is let through.
fn refuse_nested_text_casts(plan: &LogicalPlan) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::ExprSchemable as _;
    plan.apply_with_subqueries(|node| {
        let mut schemas: Vec<&datafusion::common::DFSchemaRef> =
            node.inputs().iter().map(|i| i.schema()).collect();
        schemas.push(node.schema());
        for e in node.expressions() {
            e.apply(|e| {
                let (inner, to) = match e {
                    Expr::Cast(c) => (&c.expr, c.field.data_type()),
                    Expr::TryCast(c) => (&c.expr, c.field.data_type()),
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                let text = matches!(to, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
                let from = schemas
                    .iter()
                    .find_map(|s| inner.get_type(s.as_ref()).ok());
                if text && from.is_some_and(|t| t.is_nested()) {
                    return Err(DataFusionError::External(Box::new(crate::readonly::Refusal {
                        sqlstate: NOT_SUPPORTED,
                        message: "a cast of a list, struct or map to text is not supported here (its text may take many times its bytes); select its elements or fields instead".to_string(),
                    })));
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// [`guard`], `a || b` included or not (held already by an earlier pass).
fn guard_with(
    plan: LogicalPlan,
    limit: usize,
    pool: Option<&Arc<dyn MemoryPool>>,
    concatenations: bool,
) -> Result<LogicalPlan> {
    let hold = || {
        pool.map(|p| {
            Arc::new(Mutex::new(
                MemoryConsumer::new("a function's result").register(p),
            ))
        })
    };
    let guarded = plan.transform_up_with_subqueries(|node| {
        let node = node.map_expressions(|e| {
            e.transform_up(|e| match e {
                Expr::ScalarFunction(f) => Ok(bound_call(f, limit, hold())),
                Expr::BinaryExpr(b) if concatenations && b.op == Operator::StringConcat => {
                    Ok(bound_concat(b, limit, hold()))
                }
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

/// After the optimizer ran over a plan [`guard`]ed: calls its rewrites made are bounded
/// too (a function's simplification returns calls of its own), and a constant is refused
/// when copied into every row of a batch of `batch_rows` it would take more than `limit`
/// bytes (a call over constants was folded into one, checked once, then copied).
pub fn guard_optimized(
    plan: LogicalPlan,
    limit: usize,
    pool: Option<&Arc<dyn MemoryPool>>,
    batch_rows: usize,
) -> Result<LogicalPlan> {
    let most = limit / batch_rows.max(1);
    plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            e.apply(|e| {
                if let Expr::Literal(v, _) = e {
                    let bytes = scalar_bytes(v);
                    if bytes > most {
                        return Err(DataFusionError::ResourcesExhausted(format!(
                            "a constant of {bytes} bytes, copied into each of a batch's \
                             {batch_rows} rows, would take more than the query's {limit} \
                             bytes (query_memory_bytes)"
                        )));
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    refuse_nested_text_casts(&plan)?;
    guard_with(plan, limit, pool, false)
}

fn bound_call(f: ScalarFunction, limit: usize, held: Option<Held>) -> Transformed<Expr> {
    let name = f.func.name();
    if f.args.is_empty()
        || UNBOUNDED.contains(&name)
        || is::<Bounded>(f.func.inner())
        || is::<Holder>(f.func.inner())
    {
        return Transformed::no(Expr::ScalarFunction(f));
    }
    let bounded = Bounded {
        growth: growth_of(name),
        inner: Arc::clone(f.func.inner()),
        limit,
        held,
    };
    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(bounded)),
        f.args,
    )))
}

/// `a || b`, held as a call is; a constant side (one value for the batch, copied into
/// every row) is first checked against the rows by a call that passes the other side on.
fn bound_concat(b: BinaryExpr, limit: usize, held: Option<Held>) -> Transformed<Expr> {
    let constant =
        |e: &Expr| e.column_refs().is_empty() && !e.exists(|e| Ok(is_subquery(e))).unwrap_or(true);
    let check = |value: Expr, other: &Expr| {
        Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(Holder::check(limit))),
            vec![value, other.clone()],
        ))
    };
    let BinaryExpr { left, op, right } = b;
    let (left, right) = match (constant(&left), constant(&right)) {
        (false, true) => (Box::new(check(*left, &right)), right),
        (true, false) => {
            let checked = check(*right, &left);
            (left, Box::new(checked))
        }
        _ => (left, right),
    };
    let concat = Expr::BinaryExpr(BinaryExpr { left, op, right });
    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Holder::hold(limit, held))),
        vec![concat],
    )))
}

/// Whether `f` is a `T`.
fn is<T: 'static>(f: &Arc<dyn ScalarUDFImpl>) -> bool {
    let any: &dyn std::any::Any = f.as_ref();
    any.is::<T>()
}

fn is_subquery(e: &Expr) -> bool {
    matches!(
        e,
        Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
    )
}

/// A call's last result, reserved in the query's pool.
type Held = Arc<Mutex<MemoryReservation>>;

fn too_big(bytes: u128, limit: usize, what: &str) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "{what} would take up to {bytes} bytes for one batch, more than the query's {limit} \
         bytes (query_memory_bytes)"
    ))
}

/// Check `value`'s bytes against `limit` and keep them reserved in `held`.
fn hold(value: &ColumnarValue, limit: usize, held: Option<&Held>) -> Result<()> {
    let bytes = match value {
        ColumnarValue::Array(a) => array_bytes(a),
        ColumnarValue::Scalar(s) => s.size(),
    };
    if bytes > limit {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "a function's result took {bytes} bytes for one batch, more than the query's \
             {limit} bytes (query_memory_bytes)"
        )));
    }
    if let Some(h) = held {
        h.lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_resize(bytes)?;
    }
    Ok(())
}

/// The bytes `array` takes: its own slice of its buffers (the values a view points at
/// counted one by one).
fn array_bytes(array: &ArrayRef) -> usize {
    let views = |lengths: &mut dyn Iterator<Item = usize>| {
        lengths.fold(array.len().saturating_mul(16), usize::saturating_add)
    };
    match array.data_type() {
        DataType::Utf8View => {
            views(&mut array.as_string_view().iter().map(|s| s.map_or(0, str::len)))
        }
        DataType::BinaryView => views(
            &mut array
                .as_binary_view()
                .iter()
                .map(|b| b.map_or(0, <[u8]>::len)),
        ),
        _ => array
            .to_data()
            .get_slice_memory_size()
            .unwrap_or_else(|_| array.get_array_memory_size()),
    }
}

/// A function that fails a batch whose result would take more than `limit` bytes
/// (known from its arguments before it runs, or from the result), and holds its last
/// result's bytes in the query's pool. Otherwise the function itself: same name,
/// signature, types, simplifications.
#[derive(Debug)]
struct Bounded {
    inner: Arc<dyn ScalarUDFImpl>,
    growth: Growth,
    limit: usize,
    held: Option<Held>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        let inner: &dyn std::any::Any = other.inner.as_ref();
        self.inner.dyn_eq(inner) && self.growth == other.growth && self.limit == other.limit
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.dyn_hash(state);
        self.growth.hash(state);
        self.limit.hash(state);
    }
}

impl Bounded {
    fn with(&self, inner: Arc<dyn ScalarUDFImpl>) -> Self {
        Self {
            inner,
            growth: self.growth,
            limit: self.limit,
            held: self.held.clone(),
        }
    }
}

#[allow(deprecated)]
impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(
            self.with(Arc::clone(updated.inner())),
        ))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        self.inner.is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows.max(1);
        let before = bound(self.growth, &args.args, rows)?;
        if before > self.limit as u128 {
            return Err(too_big(before, self.limit, "a function's result"));
        }
        let result = self.inner.invoke_with_args(args)?;
        hold(&result, self.limit, self.held.as_ref())?;
        Ok(result)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn evaluate_bounds(
        &self,
        input: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> Result<datafusion::logical_expr::interval_arithmetic::Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &datafusion::logical_expr::interval_arithmetic::Interval,
        inputs: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> Result<Option<Vec<datafusion::logical_expr::interval_arithmetic::Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<datafusion::logical_expr::sort_properties::SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn placement(
        &self,
        args: &[datafusion::logical_expr::ExpressionPlacement],
    ) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.placement(args)
    }
}

/// `sluice_held(value)`: `value`, checked and held as a call's result is;
/// `sluice_checked(value, constant)`: `value`, once `constant` copied into each row of
/// the batch is known to fit.
#[derive(Debug)]
struct Holder {
    limit: usize,
    held: Option<Held>,
    check: bool,
    signature: Signature,
}

impl Holder {
    fn hold(limit: usize, held: Option<Held>) -> Self {
        Self {
            limit,
            held,
            check: false,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn check(limit: usize) -> Self {
        Self {
            limit,
            held: None,
            check: true,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl PartialEq for Holder {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit && self.check == other.check
    }
}

impl Eq for Holder {}

impl Hash for Holder {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.limit.hash(state);
        self.check.hash(state);
    }
}

impl ScalarUDFImpl for Holder {
    fn name(&self) -> &str {
        if self.check {
            "sluice_checked"
        } else {
            "sluice_held"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Named as the value it passes on, so no column of a result is renamed.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        match args.first() {
            Some(value) => Ok(value.schema_name().to_string()),
            None => Ok(self.name().to_string()),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => exec_err!("{} takes a value", self.name()),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields.first() {
            Some(f) => Ok(f.clone()),
            None => exec_err!("{} takes a value", self.name()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows.max(1);
        if self.check {
            let before = bound(Growth::Combines, &args.args, rows)?;
            if before > self.limit as u128 {
                return Err(too_big(before, self.limit, "a concatenation"));
            }
        }
        let Some(value) = args.args.into_iter().next() else {
            return exec_err!("{} takes a value", self.name());
        };
        if !self.check {
            hold(&value, self.limit, self.held.as_ref())?;
        }
        Ok(value)
    }
}

/// The bytes of `args` for one batch of `rows` rows, each argument counted each time it
/// is given: an array its own slice of its buffers, a constant once per row beside an
/// argument of many rows (else once).
fn arguments(args: &[ColumnarValue], rows: usize) -> u128 {
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
fn bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u128> {
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
fn scalar_bytes(s: &ScalarValue) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// Plan `sql`, guard it at `limit` bytes, run it.
    async fn run(sql: &str, limit: usize) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        run_in(sql, limit, None).await
    }

    /// [`run`], each call's results held in `pool`.
    async fn run_in(
        sql: &str,
        limit: usize,
        pool: Option<&Arc<dyn MemoryPool>>,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        // As the catalog runs a plan: bounded, optimized, bounded again, then planned
        // without optimizing again.
        let ctx = SessionContext::new();
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        let plan = guard(plan, limit, pool)?;
        let plan = state.optimize(&plan)?;
        let rows = state.config().batch_size();
        let plan = guard_optimized(plan, limit, pool, rows)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await?;
        datafusion::physical_plan::collect(physical, ctx.task_ctx()).await
    }

    fn out_of_memory(e: &DataFusionError, sql: &str) {
        assert_eq!(
            crate::limits::sqlstate(e),
            Some(crate::limits::OUT_OF_MEMORY),
            "{sql}: {e}"
        );
        assert!(e.to_string().contains("query_memory_bytes"), "{sql}: {e}");
    }

    fn text(batches: &[datafusion::arrow::array::RecordBatch]) -> String {
        datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .expect("text")
            .to_string()
    }

    #[tokio::test]
    async fn results_combined_from_bounded_results_are_bounded_too() {
        let limit = 1 << 20;
        let r = |n: usize, of: &str| vec![of; n].join(", ");
        // Each level names its column anew (DataFusion 55 merges `s || s AS s` over a
        // column `s` of the level below wrongly: twelve levels gave one doubling).
        let doubled = (0..12).fold(
            "select repeat(cast(value as varchar), 1000) as s0 from generate_series(1, 2)"
                .to_string(),
            |q, i| format!("select s{i} || s{i} as s{} from ({q})", i + 1),
        );
        let concatenated = (0..12).fold(
            "select repeat(cast(value as varchar), 1000) as s0 from generate_series(1, 2)"
                .to_string(),
            |q, i| format!("select concat(s{i}, s{i}) as s{} from ({q})", i + 1),
        );
        for big in [
            format!("select length(concat({})) from (select repeat(cast(value as varchar), 200000) as r from generate_series(1, 1))", r(12, "r")),
            format!("select cardinality(make_array({})) from (select array_repeat(value, 20000) as r from generate_series(1, 1))", r(10, "r")),
            format!("select cardinality(array_concat({})) from (select array_repeat(value, 20000) as r from generate_series(1, 1))", r(10, "r")),
            format!("select max(length(s12)) from ({doubled})"),
            format!("select max(length(s12)) from ({concatenated})"),
            "with recursive t(s, n) as (select 'x', 1 union all select s || s, n + 1 from t where n < 40) select max(length(s)) from t".to_string(),
            "select cardinality(array_replace_all(array_repeat('a', 100000), 'a', repeat('x', 100000)))".to_string(),
            "select cardinality(array_replace_n(array_repeat('a', 100000), 'a', repeat('x', 100000), 100000))".to_string(),
            "select length(array_to_string(array_repeat('', 100000), repeat(',', 100000)))".to_string(),
            "select length(array_to_string(array_repeat(array_repeat(1, 1000), 1000), repeat(',', 1000)))".to_string(),
            "select length(to_char(timestamp '2020-01-01', repeat('%c', 100000)))".to_string(),
            // A constant copied into every row of a batch.
            "select max(length(v || repeat('x', 500))) from (select cast(value as varchar) as v from generate_series(1, 100000))".to_string(),
            "select max(length(repeat('x', 500) || v)) from (select cast(value as varchar) as v from generate_series(1, 100000))".to_string(),
            "select max(length(concat(v, repeat('x', 500)))) from (select cast(value as varchar) as v from generate_series(1, 100000))".to_string(),
            // Nested amplifiers, each within the limit, together beyond it.
            "select length(repeat(repeat('x', 2000), 1000))".to_string(),
            // Calls over constants folded once, then copied into every row.
            "select repeat(arrow_cast('x', 'LargeUtf8'), 500000) from generate_series(1, 8192)".to_string(),
            "select concat(cast(value as varchar), '', repeat('x', 250000)) from generate_series(1, 8192)".to_string(),
            "select nvl2(value, repeat('x', 250000), '') from generate_series(1, 8192)".to_string(),
            // A fill value copied into each new element; a copy per group; an element per
            // byte; steps beyond counting.
            "select cardinality(array_resize(make_array(arrow_cast('a', 'LargeUtf8')), 100000, arrow_cast(repeat('x', 100000), 'LargeUtf8')))".to_string(),
            format!("select cardinality(regexp_match(repeat('x', 200000), '{}x*{}'))", "(".repeat(20), ")".repeat(20)),
            "select cardinality(string_to_array(repeat('x', 100000), null))".to_string(),
            "select levenshtein(repeat('a', 100000), repeat('b', 100000))".to_string(),
        ] {
            let e = run(&big, limit).await.expect_err(&big);
            out_of_memory(&e, &big);
        }
        // Results each within the limit but together beyond it: the pool tells.
        let columns = (0..8)
            .map(|i| format!("length(concat(r, '{i}')) as c{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let many = format!(
            "select {columns} from (select repeat(cast(value as varchar), 300000) as r from generate_series(1, 1))"
        );
        run(&many, limit).await.expect("each within the limit");
        let pool: Arc<dyn MemoryPool> = Arc::new(crate::limits::QueryPool::new(limit, None));
        let e = run_in(&many, limit, Some(&pool))
            .await
            .expect_err("together beyond");
        out_of_memory(&e, &many);
        // Everything held is given back with the plan.
        assert_eq!(pool.reserved(), 0);
        // Ordinary calls keep their results, types and names.
        for (ok, expect) in [
            ("select concat('a', 'b') as n", "ab"),
            ("select 'a' || 'b' || 'c' as n", "abc"),
            ("select upper('straße') as n", "STRASSE"),
            ("select coalesce(null, 'x') as n", "x"),
            ("select arrow_cast(1, 'Utf8') as n", "1"),
            ("select date_part('year', date '2020-06-01') as n", "2020"),
            ("select named_struct('a', 'b')['a'] as n", "b"),
            ("select now() is not null as n", "true"),
            ("select array_to_string([1, 2, 3], '-') as n", "1-2-3"),
            (
                "select cardinality(array_replace_all([1, 1, 2], 1, 3)) as n",
                "3",
            ),
            ("select cardinality(array_resize([1], 3, 0)) as n", "3"),
            (
                "select cardinality(regexp_match('abc', '(a)(b)')) as n",
                "2",
            ),
            ("select cardinality(string_to_array('a,b', ',')) as n", "2"),
            ("select levenshtein('kitten', 'sitting') as n", "3"),
            (
                "select date_part('year', d) as n from (select cast(concat('2024-03-0', cast(value as varchar)) as date) as d from generate_series(1, 2)) where date_part('year', d) = 2024 limit 1",
                "2024",
            ),
            (
                "select max(length(v || 'x')) as n from (select cast(value as varchar) as v from generate_series(1, 100000))",
                "7",
            ),
        ] {
            let batches = run_in(ok, limit, Some(&pool)).await.expect(ok);
            let t = text(&batches);
            assert!(t.contains(&format!("| {expect} ")), "{ok}: {t}");
        }
        let batches = run(
            "select concat('a', 'b'), upper(cast(value as varchar)) from generate_series(1, 2)",
            limit,
        )
        .await
        .expect("named");
        let schema = batches[0].schema();
        assert_eq!(schema.field(0).name(), "concat(Utf8(\"a\"),Utf8(\"b\"))");
        assert_eq!(schema.field(1).name(), "upper(generate_series().value)");
    }

    #[tokio::test]
    async fn arguments_given_many_times_or_grown_by_a_function_are_refused_before_the_call() {
        let limit = 1 << 20;
        let r = |n: usize, of: &str| vec![of; n].join(", ");
        let text = |bytes: usize| {
            format!(
                "(select repeat(cast(value as varchar), {bytes}) as r from generate_series(1, 1))"
            )
        };
        let list = "(select array_repeat(value, 20000) as r from generate_series(1, 1))";
        for big in [
            format!(
                "select length(concat({})) from {}",
                r(10, "r"),
                text(200_000)
            ),
            format!(
                "select cardinality(make_array({})) from {}",
                r(10, "r"),
                text(200_000)
            ),
            format!(
                "select cardinality(array_concat({})) from {list}",
                r(10, "r")
            ),
            format!(
                "select cardinality(array_append(make_array({}), r)) from {list}",
                r(8, "r")
            ),
            format!(
                "select struct({}) is null from {}",
                r(6, "r"),
                text(200_000)
            ),
            format!("select length(upper(r)) from {}", text(300_000)),
            format!(
                "select length(translate(r, '1', 'é')) from {}",
                text(300_000)
            ),
            format!("select length(lower(r)) from {}", text(300_000)),
            format!(
                "select length(concat_ws(r, {})) from {}",
                r(20, "''"),
                text(100_000)
            ),
            format!("select length(md5(r)) from {}", text(300_000)),
        ] {
            let e = run(&big, limit).await.expect_err(&big);
            out_of_memory(&e, &big);
            assert!(
                e.to_string().contains("would take up to"),
                "measured only once made: {big}: {e}"
            );
        }
        // A cast of a list, struct or map to text, written or implied, is refused.
        for nested in [
            "select length(cast(make_array(true, false) as varchar))",
            "select try_cast(make_array(make_array(1)) as varchar)",
            "select cast(named_struct('a', 1) as text)",
            "select arrow_cast(a, 'LargeUtf8') from (select make_array(value) as a from generate_series(1, 2))",
            "select length(c) from (select cast(make_array(1) as varchar) as c)",
        ] {
            let e = run(nested, limit).await.expect_err(nested);
            assert_eq!(
                crate::limits::sqlstate(&e),
                Some(NOT_SUPPORTED),
                "{nested}: {e}"
            );
        }
        run("select cast(1 as varchar), cast('2020-01-01' as date), cast(make_array(1) as bigint[])", 64 << 20)
            .await
            .expect("casts of scalars, and of lists to lists");
        // A list of bits (as a table may hold) whose every element is a position of 8 bytes.
        let bits = datafusion::arrow::array::ListArray::from_iter_primitive::<
            datafusion::arrow::datatypes::Int8Type,
            _,
            _,
        >([Some(vec![Some(1i8); 200_000])]);
        let list = ColumnarValue::Array(Arc::new(bits));
        assert!(bound(growth_of("array_positions"), &[list], 1).expect("bound") >= 1_600_000);
        // Within the limit they run; a function returning a part of its argument takes
        // an argument near the limit.
        for ok in [
            format!("select length(concat(r, r)) from {}", text(200_000)),
            format!(
                "select cardinality(make_array(r, r)) from {}",
                text(200_000)
            ),
            format!("select length(upper(r)) from {}", text(200_000)),
            format!(
                "select length(r), length(substr(r, 2)), length(trim(r)) from {}",
                text(900_000)
            ),
            format!(
                "select length(concat_ws(',', r, r)), md5(r) is null from {}",
                text(200_000)
            ),
        ] {
            run(&ok, limit).await.expect(&ok);
        }
    }

    #[tokio::test]
    async fn guarding_adds_one_node_per_call_however_deep_calls_nest() {
        let nodes = |plan: &LogicalPlan| {
            let mut n = 0usize;
            plan.apply_with_subqueries(|p| {
                for e in p.expressions() {
                    e.apply(|_| {
                        n += 1;
                        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                    })?;
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
            .expect("walk");
            n
        };
        let depth = 20;
        for sql in [
            format!(
                "select {}'x'{}",
                "repeat(".repeat(depth),
                ", 1)".repeat(depth)
            ),
            format!(
                "select {}'x'{}",
                "concat(".repeat(depth),
                ", 'y')".repeat(depth)
            ),
            format!(
                "select {}cast(value as varchar){} from generate_series(1, 2)",
                "(".repeat(depth),
                " || 'y')".repeat(depth)
            ),
            format!(
                "select {}cast(value as varchar){} from generate_series(1, 2)",
                "('y' || ".repeat(depth),
                ")".repeat(depth)
            ),
        ] {
            let ctx = SessionContext::new();
            let plan = ctx.state().create_logical_plan(&sql).await.expect("plan");
            let before = nodes(&plan);
            let guarded = guard(plan, 1 << 20, None).expect("guard");
            let after = nodes(&guarded);
            assert!(after <= 3 * before, "{before} nodes became {after}: {sql}");
            ctx.execute_logical_plan(guarded)
                .await
                .expect("runs")
                .collect()
                .await
                .expect("rows");
        }
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
