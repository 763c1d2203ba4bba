//! A table as a role reads it: without its denied columns, with its row filter applied
//! before anything of the query sees a row.
//!
//! ```text
//!   user's query (filters, casts, joins, …)
//!        │ only rows that passed the role's filter, only allowed columns
//!   ┌────┴───────────────────────────────┐
//!   │ RestrictedScan (opaque to planners) │  no children, no statistics, no metrics
//!   │   projection (allowed columns)      │
//!   │   filter (the role's row filter)    │
//!   │   Delta scan                        │
//!   └─────────────────────────────────────┘
//! ```
//!
//! The user's filters are never pushed into the scan when the table has a row filter,
//! and the node has no children for an optimiser to push anything into, so no
//! expression the user wrote is evaluated over a row the role may not see: an error it
//! raises (a failing cast, a division by zero) can only be about a visible row. The node
//! reports no statistics (which would count hidden rows or show their minimum and
//! maximum) and `EXPLAIN` shows its name only, not the scan's files or predicate.

use std::fmt::Formatter;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, internal_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use crate::readonly::Refusal;

/// A table restricted for a role (see the module docs).
#[derive(Debug)]
pub struct RestrictedTable {
    /// `layer.table`.
    name: String,
    inner: Arc<dyn TableProvider>,
    /// The allowed columns, as the role sees them.
    schema: SchemaRef,
    /// The role's row filter, over the columns of `inner` (unqualified).
    filter: Option<Expr>,
}

impl RestrictedTable {
    /// `inner` with only `columns` (names of its columns), and only the rows meeting
    /// `filter` (an expression over its columns, which may name columns left out).
    pub fn new(
        name: impl Into<String>,
        inner: Arc<dyn TableProvider>,
        columns: &[String],
        filter: Option<Expr>,
    ) -> datafusion::error::Result<Self> {
        let full = inner.schema();
        let fields = columns
            .iter()
            .map(|c| full.field_with_name(c).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.into(),
            inner,
            schema: Arc::new(Schema::new_with_metadata(fields, full.metadata().clone())),
            filter,
        })
    }

    fn refuse(&self, what: &str) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(Refusal {
            sqlstate: crate::readonly::READ_ONLY,
            message: format!(
                "the lake is read-only here: {what} ({}) is not allowed",
                self.name
            ),
        }))
    }
}

#[async_trait]
impl TableProvider for RestrictedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        if self.filter.is_some() {
            // The user's conditions run above the role's filter, never inside the scan.
            return Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ]);
        }
        // Every row is visible: the scan may prune with them (they name allowed columns).
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let full = self.inner.schema();
        let wanted: Vec<String> = match projection {
            Some(p) => p
                .iter()
                .map(|i| self.schema.field(*i).name().clone())
                .collect(),
            None => self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        };
        let mut needed: Vec<usize> = wanted
            .iter()
            .map(|n| full.index_of(n))
            .collect::<Result<_, _>>()?;
        if let Some(f) = &self.filter {
            for c in f.column_refs() {
                let i = full.index_of(&c.name)?;
                if !needed.contains(&i) {
                    needed.push(i);
                }
            }
        }
        needed.sort_unstable();
        let (pushed, limit) = match &self.filter {
            // The role's own filter may prune files; the limit applies after it.
            Some(f) => (vec![f.clone()], None),
            None => (filters.to_vec(), limit),
        };
        let mut plan = self
            .inner
            .scan(state, Some(&needed), &pushed, limit)
            .await?;
        if let Some(f) = &self.filter {
            let schema = DFSchema::try_from(plan.schema().as_ref().clone())?;
            let predicate = state.create_physical_expr(f.clone(), &schema)?;
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
        }
        let scanned = plan.schema();
        let columns = wanted
            .iter()
            .map(|n| {
                let expr: Arc<dyn PhysicalExpr> = Arc::new(Column::new(n, scanned.index_of(n)?));
                Ok((expr, n.clone()))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let plan = Arc::new(ProjectionExec::try_new(columns, plan)?);
        Ok(Arc::new(RestrictedScan::new(self.name.clone(), plan)))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("INSERT"))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("DELETE"))
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("UPDATE"))
    }
}

/// The scan of a [`RestrictedTable`]: runs its plan, shows nothing of it.
#[derive(Debug)]
pub struct RestrictedScan {
    table: String,
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl RestrictedScan {
    fn new(table: String, inner: Arc<dyn ExecutionPlan>) -> Self {
        let partitions = inner.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(inner.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            table,
            inner,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for RestrictedScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut Formatter) -> std::fmt::Result {
        write!(f, "RestrictedScan: {}", self.table)
    }
}

impl ExecutionPlan for RestrictedScan {
    fn name(&self) -> &str {
        "RestrictedScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("RestrictedScan has no children")
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// A table that applies every filter pushed into it row by row, as a Delta scan with
    /// `datafusion.execution.parquet.pushdown_filters` does.
    #[derive(Debug)]
    struct Exact(Arc<MemTable>);

    #[async_trait]
    impl TableProvider for Exact {
        fn schema(&self) -> SchemaRef {
            self.0.schema()
        }

        fn table_type(&self) -> TableType {
            TableType::Base
        }

        fn supports_filters_pushdown(
            &self,
            filters: &[&Expr],
        ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
            Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
        }

        async fn scan(
            &self,
            state: &dyn Session,
            projection: Option<&Vec<usize>>,
            filters: &[Expr],
            limit: Option<usize>,
        ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
            let all: Vec<usize> = (0..self.0.schema().fields().len()).collect();
            let mut plan = self.0.scan(state, Some(&all), &[], limit).await?;
            if let Some(f) = datafusion::logical_expr::utils::conjunction(filters.to_vec()) {
                let schema = DFSchema::try_from(plan.schema().as_ref().clone())?;
                let predicate = state.create_physical_expr(f, &schema)?;
                plan = Arc::new(FilterExec::try_new(predicate, plan)?);
            }
            let scanned = plan.schema();
            let columns = projection
                .cloned()
                .unwrap_or(all)
                .iter()
                .map(|i| {
                    let name = self.0.schema().field(*i).name().clone();
                    let expr: Arc<dyn PhysicalExpr> =
                        Arc::new(Column::new(&name, scanned.index_of(&name)?));
                    Ok((expr, name))
                })
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            Ok(Arc::new(ProjectionExec::try_new(columns, plan)?))
        }
    }

    /// `accounts(id, product, secret)`: rows 1 and 2 are visible; row 3 (an `isa`) is
    /// hidden and holds values no expression of the user's may fail on.
    fn session() -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("product", DataType::Utf8, false),
            Field::new("note", DataType::Utf8, false),
            Field::new("secret", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["current", "loan", "isa"])),
                Arc::new(StringArray::from(vec!["10", "20", "hidden-value-7"])),
                Arc::new(StringArray::from(vec!["s1", "s2", "s3"])),
            ],
        )
        .expect("batch");
        let inner = Arc::new(Exact(Arc::new(
            MemTable::try_new(schema, vec![vec![batch]]).expect("table"),
        )));
        let ctx = SessionContext::new();
        let filter = ctx
            .parse_sql_expr(
                "product <> 'isa'",
                &DFSchema::try_from(inner.schema().as_ref().clone()).expect("schema"),
            )
            .expect("filter");
        let table = RestrictedTable::new(
            "silver.accounts",
            inner,
            &["id".into(), "product".into(), "note".into()],
            Some(filter),
        )
        .expect("restricted");
        ctx.register_table("accounts", Arc::new(table))
            .expect("register");
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, String> {
        match ctx.sql(sql).await {
            Ok(df) => df.collect().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn user_expressions_never_see_a_hidden_row() {
        let ctx = session();
        let n = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
        assert_eq!(
            n(&run(&ctx, "select * from accounts").await.expect("all")),
            2
        );
        assert_eq!(
            n(&run(&ctx, "select * from accounts where product = 'isa'")
                .await
                .expect("none")),
            0
        );
        // Every value the user's expressions meet casts: the hidden one would not.
        for q in [
            "select cast(note as int) from accounts",
            "select * from accounts where cast(note as int) > 0",
            "select * from accounts where product = 'isa' or cast(note as int) > 0",
            "select id from accounts order by cast(note as int) limit 1",
            "select count(*) from accounts a join accounts b on cast(a.note as int) = cast(b.note as int)",
            "select 100 / (cast(note as int) - 20) from accounts where id = 1",
        ] {
            let out = run(&ctx, q).await;
            assert!(out.is_ok(), "{q}: {out:?}");
        }
        // The denied column is not there, and the plan shows neither the filter nor the
        // scan under it.
        assert!(run(&ctx, "select secret from accounts").await.is_err());
        let plan = run(&ctx, "explain select * from accounts where id > 0")
            .await
            .expect("explain");
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .expect("text")
            .to_string();
        assert!(text.contains("RestrictedScan: silver.accounts"), "{text}");
        assert!(!text.contains("isa") && !text.contains("secret"), "{text}");
        // count(*) is not answered from statistics that count hidden rows.
        let counted = run(&ctx, "select count(*) from accounts")
            .await
            .expect("count");
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&counted)
            .expect("text")
            .to_string();
        assert!(text.contains("| 2 "), "{text}");
    }
}
