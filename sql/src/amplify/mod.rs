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

mod growth;

use growth::{Growth, UNBOUNDED, bound, growth_of, scalar_bytes};

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
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
