//! Column lineage of a query: which columns of which tables each output column is
//! computed from, and which tables its rows come from (so that a gold table inherits
//! the policy of what it was built from).
//!
//! The walk follows the logical plan: a projection's column comes from the columns its
//! expression names, an aggregate's from its arguments, a join's from the side it comes
//! from, a union's from the same position of every input, a view from its own plan.
//! Where a node's columns cannot be told apart (an unnest, an unknown node, a subquery
//! inside an expression) each output column is taken to come from everything its inputs
//! read: lineage may say too much, never too little.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

/// A source column: `(layer.table, column)`.
pub type Source = (String, String);

/// What a query reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Every table read, anywhere in the plan (filters, joins and subqueries included).
    pub tables: BTreeSet<String>,
    /// Each output column (by name) and the columns it is computed from.
    pub columns: Vec<(String, BTreeSet<Source>)>,
}

/// The lineage of `plan`.
pub fn of(plan: &LogicalPlan) -> Result<Lineage> {
    let mut tables = BTreeSet::new();
    scanned(plan, &mut tables)?;
    let columns = columns(plan)?;
    Ok(Lineage {
        tables,
        columns: plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(columns)
            .collect(),
    })
}

/// Every table `plan` scans, views followed into their own plans.
fn scanned(plan: &LogicalPlan, out: &mut BTreeSet<String>) -> Result<()> {
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match scan.source.get_logical_plan() {
                Some(view) => scanned(&view, out)?,
                None => {
                    out.insert(scan.table_name.to_string());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

fn union<'a>(sets: impl IntoIterator<Item = &'a BTreeSet<Source>>) -> BTreeSet<Source> {
    sets.into_iter().flatten().cloned().collect()
}

/// Every column any input of `plan` is computed from: the lineage of each output
/// column of a node whose columns cannot be told apart.
fn everything(plan: &LogicalPlan) -> Result<BTreeSet<Source>> {
    let mut all = BTreeSet::new();
    for input in plan.inputs() {
        all.extend(union(&columns(input)?));
    }
    Ok(all)
}

/// The sources of `expr` over `input` (whose columns have the lineage `inputs`).
fn of_expr(
    expr: &Expr,
    input: &LogicalPlan,
    inputs: &[BTreeSet<Source>],
) -> Result<BTreeSet<Source>> {
    let mut out = BTreeSet::new();
    let schema = input.schema();
    let mut unresolved = false;
    expr.apply(|e| {
        match e {
            Expr::Column(c) => match schema.index_of_column(c) {
                Ok(i) => out.extend(inputs.get(i).cloned().unwrap_or_default()),
                Err(_) => unresolved = true,
            },
            Expr::ScalarSubquery(s) => out.extend(union(&columns(&s.subquery)?)),
            Expr::Exists(s) => out.extend(union(&columns(&s.subquery.subquery)?)),
            Expr::InSubquery(s) => out.extend(union(&columns(&s.subquery.subquery)?)),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if unresolved {
        out.extend(union(inputs));
    }
    Ok(out)
}

/// The lineage of each output column of `plan`, in order.
fn columns(plan: &LogicalPlan) -> Result<Vec<BTreeSet<Source>>> {
    let width = plan.schema().fields().len();
    let out = match plan {
        LogicalPlan::TableScan(scan) => {
            let base: Vec<BTreeSet<Source>> = match scan.source.get_logical_plan() {
                Some(view) => columns(&view)?,
                None => scan
                    .source
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| BTreeSet::from([(scan.table_name.to_string(), f.name().clone())]))
                    .collect(),
            };
            match &scan.projection {
                Some(p) => p
                    .iter()
                    .map(|i| base.get(*i).cloned().unwrap_or_default())
                    .collect(),
                None => base,
            }
        }
        LogicalPlan::Projection(p) => {
            let inputs = columns(&p.input)?;
            p.expr
                .iter()
                .map(|e| of_expr(e, &p.input, &inputs))
                .collect::<Result<_>>()?
        }
        LogicalPlan::Aggregate(a) => {
            let inputs = columns(&a.input)?;
            a.group_expr
                .iter()
                .chain(&a.aggr_expr)
                .map(|e| of_expr(e, &a.input, &inputs))
                .collect::<Result<_>>()?
        }
        LogicalPlan::Window(w) => {
            let inputs = columns(&w.input)?;
            let mut out = inputs.clone();
            for e in &w.window_expr {
                out.push(of_expr(e, &w.input, &inputs)?);
            }
            out
        }
        LogicalPlan::Join(j) => {
            let (left, right) = (columns(&j.left)?, columns(&j.right)?);
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => right,
                _ => left.into_iter().chain(right).collect(),
            }
        }
        LogicalPlan::Union(u) => {
            let inputs = u
                .inputs
                .iter()
                .map(|i| columns(i))
                .collect::<Result<Vec<_>>>()?;
            (0..width)
                .map(|c| union(inputs.iter().filter_map(|i| i.get(c))))
                .collect()
        }
        LogicalPlan::Distinct(datafusion::logical_expr::Distinct::On(d)) => {
            let inputs = columns(&d.input)?;
            d.select_expr
                .iter()
                .map(|e| of_expr(e, &d.input, &inputs))
                .collect::<Result<_>>()?
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Subquery(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_)) => {
            columns(plan.inputs()[0])?
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => vec![BTreeSet::new(); width],
        _ => vec![everything(plan)?; width],
    };
    // A node whose columns did not line up with its schema (grouping sets, a mark column):
    // every column from everything.
    if out.len() == width {
        Ok(out)
    } else {
        Ok(vec![everything(plan)?; width])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn columns_come_from_what_computes_them() {
        let ctx = SessionContext::new();
        for ddl in [
            "create table a (id int, email varchar, segment varchar, amount double)",
            "create table b (id int, product varchar, balance double)",
            "create view v as select id as customer, upper(email) as mail, segment from a",
        ] {
            ctx.sql(ddl).await.expect("ddl");
        }
        let lineage = |sql: &str| {
            let ctx = ctx.clone();
            let sql = sql.to_string();
            async move {
                let plan = ctx.state().create_logical_plan(&sql).await.expect(&sql);
                of(&plan).expect("lineage")
            }
        };
        let src = |t: &str, c: &str| (t.to_string(), c.to_string());
        let l = lineage(
            "select segment, count(distinct email) as people, sum(amount) as spend, count(*) as n \
             from a where id in (select id from b where product = 'isa') group by segment",
        )
        .await;
        assert_eq!(l.tables, BTreeSet::from(["a".to_string(), "b".to_string()]));
        let cols: Vec<_> = l.columns.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(cols[0], BTreeSet::from([src("a", "segment")]));
        assert_eq!(cols[1], BTreeSet::from([src("a", "email")]));
        assert_eq!(cols[2], BTreeSet::from([src("a", "amount")]));
        assert!(cols[3].is_empty(), "count(*) reads no column's values");
        // Through a view, a join, a union and a window.
        let l = lineage(
            "select v.mail, b.balance, row_number() over (partition by v.segment) as r \
             from v join b on v.customer = b.id \
             union all select 'x', 1.0, 1",
        )
        .await;
        let cols: Vec<_> = l.columns.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(cols[0], BTreeSet::from([src("a", "email")]));
        assert_eq!(cols[1], BTreeSet::from([src("b", "balance")]));
        assert_eq!(cols[2], BTreeSet::from([src("a", "segment")]));
        assert_eq!(l.tables, BTreeSet::from(["a".to_string(), "b".to_string()]));
        // A scalar subquery: everything it reads.
        let l = lineage("select (select max(email) from a) as m, 1 as one").await;
        assert_eq!(l.columns[0].1, BTreeSet::from([src("a", "email")]));
        assert!(l.columns[1].1.is_empty());
    }
}
