//! `sluice job anonymise`: aged data made anonymous in place, then k-anonymity checked
//! before a table is published.
//!
//! For each table of `[anonymise.tables]`, rows whose age column is `after_days` old or
//! more have their direct identifiers nulled (`drop`) and quasi-identifiers masked or
//! generalised with the PII policy's one-way actions. One delta-rs UPDATE per table: its
//! predicate also asks whether a row would change, so rows anonymised by an earlier run
//! are not rewritten again and a second run commits nothing. The files the update
//! replaced are removed from storage at once, and the log entries before it after a
//! checkpoint: the identifiable versions are gone, not just hidden.
//!
//! For each table of `[anonymise.publish]`, the rows are grouped by the quasi-identifiers;
//! the smallest group is reported, and below `k` the table is refused (not written to
//! `to`) and the job fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use chrono::{DateTime, Utc};
use deltalake::datafusion::common::Result as DfResult;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use deltalake::datafusion::prelude::{Expr, lit};
use deltalake::kernel::transaction::CommitProperties;
use serde::Serialize;
use sluice_connectors::delta::table;
use sluice_pipeline::Transform;
use sluice_pipeline::config::anonymise::{AnonymiseConfig, AnonymiseTable, PublishConfig};
use sluice_pipeline::config::pii::Action;
use sluice_sql::{Catalog, find_tables_in};
use sluice_transforms::path::{ColumnPath, map_column};
use sluice_transforms::policy::Policy;

use crate::JobContext;
use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::purge::TableFiles;
use crate::subject::path_expr;
use crate::version;

/// What anonymisation did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableAnonymised {
    pub table: String,
    /// Rows dated at or before this were anonymised.
    pub cutoff: String,
    pub version_before: i64,
    pub version_after: i64,
    pub rows_anonymised: u64,
    pub files_rewritten: u64,
    pub files_purged: u64,
    pub logs_purged: u64,
}

/// The k-anonymity check of one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Publication {
    pub table: String,
    pub version: i64,
    pub quasi_identifiers: Vec<String>,
    pub k: u64,
    pub rows: u64,
    pub groups: u64,
    pub smallest_group: u64,
    pub groups_below_k: u64,
    pub rows_below_k: u64,
    /// Where the table was written; none when refused or no `to`.
    pub published_to: Option<PathBuf>,
    pub refused: bool,
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub tables: Vec<TableAnonymised>,
    pub publications: Vec<Publication>,
}

impl Report {
    pub fn refused(&self) -> Vec<&Publication> {
        self.publications.iter().filter(|p| p.refused).collect()
    }
}

/// Anonymise the rows of every configured table (or those in `only`) aged by the
/// context's clock, then check every publication.
pub async fn anonymise(
    cx: &JobContext,
    config: &AnonymiseConfig,
    only: &[String],
) -> Result<Report> {
    let now = cx.now();
    let tables = find_tables_in(&cx.lake).await?;
    let mut report = Report::default();
    for (name, policy) in &config.tables {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let t = tables
            .iter()
            .find(|t| &t.qualified() == name)
            .ok_or_else(|| Error::NoTable {
                table: name.clone(),
            })?;
        let anonymising = Lock::acquire_in(cx, &format!("anonymise.{name}")).await?;
        // A maintenance or erasure of the table finishes first.
        let maintaining = Lock::acquire_waiting(
            cx,
            &crate::lock::table_lock(name),
            std::time::Duration::from_secs(600),
        )
        .await?;
        let done = anonymise_table(&t.url, name, policy, now).await?;
        maintaining.release().await;
        anonymising.release().await;
        eprintln!(
            "anonymise: {name}: {} rows dated {} or before anonymised, {} files rewritten, {} purged, {} log entries purged (version {} → {})",
            done.rows_anonymised,
            done.cutoff,
            done.files_rewritten,
            done.files_purged,
            done.logs_purged,
            done.version_before,
            done.version_after
        );
        report.tables.push(done);
    }
    if !config.publish.is_empty() {
        let catalog = Catalog::open(&cx.lake).await?;
        for (name, publish) in &config.publish {
            if !only.is_empty() && !only.contains(name) {
                continue;
            }
            report
                .publications
                .push(check_k(&catalog, name, publish).await?);
        }
    }
    Ok(report)
}

/// `drop` in anonymisation: the value becomes null, the column stays (old rows of a Delta
/// table cannot lose a column).
struct Nullify {
    path: ColumnPath,
}

impl Transform for Nullify {
    fn name(&self) -> &str {
        "drop"
    }
    fn output_schema(&self, input: &SchemaRef) -> sluice_pipeline::Result<SchemaRef> {
        Ok(Arc::clone(input))
    }
    fn apply(&self, batch: RecordBatch) -> sluice_pipeline::Result<RecordBatch> {
        map_column(&batch, &self.path, "drop", &|a| {
            Ok(new_null_array(a.data_type(), a.len()))
        })
    }
}

/// The actions on the columns under one top-level column, applied to it alone.
struct ColumnSteps {
    field: FieldRef,
    steps: Vec<Box<dyn Transform>>,
}

impl std::fmt::Debug for ColumnSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ColumnSteps({}, {} steps)",
            self.field.name(),
            self.steps.len()
        )
    }
}

impl ColumnSteps {
    /// `array` (values of the column, perhaps as views) anonymised, in the column's own
    /// type.
    fn apply(&self, array: &ArrayRef) -> Result<ArrayRef> {
        let cast_in;
        let array = if array.data_type() == self.field.data_type() {
            array
        } else {
            cast_in = cast(array, self.field.data_type())?;
            &cast_in
        };
        let schema = Arc::new(Schema::new(vec![Arc::clone(&self.field)]));
        let mut batch = RecordBatch::try_new_with_options(
            schema,
            vec![Arc::clone(array)],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(array.len())),
        )?;
        for step in &self.steps {
            let failed = || Error::transform(self.field.name().as_str());
            if let Some((_, why)) = step.reject(&batch).map_err(failed())?.first() {
                return Err(Error::Invalid(format!(
                    "{} cannot anonymise a value of {}: {why}",
                    step.name(),
                    self.field.name()
                )));
            }
            batch = step.apply(batch).map_err(failed())?;
        }
        let out = Arc::clone(batch.column(0));
        Ok(if out.data_type() == self.field.data_type() {
            out
        } else {
            cast(&out, self.field.data_type())?
        })
    }
}

/// The steps of `policy` grouped by top-level column, checked against `schema`.
fn column_steps(
    name: &str,
    policy: &AnonymiseTable,
    schema: &Schema,
) -> Result<Vec<Arc<ColumnSteps>>> {
    let mut out: Vec<ColumnSteps> = Vec::new();
    for (path, rule) in &policy.columns {
        let top = path.split('.').next().unwrap_or_default();
        let field = schema.field_with_name(top).map_err(|_| {
            Error::Invalid(format!(
                "{name}: no column '{top}' (anonymise.tables.\"{name}\".columns.\"{path}\")"
            ))
        })?;
        let step: Box<dyn Transform> = match rule.action {
            Action::Drop => Box::new(Nullify {
                path: ColumnPath::parse(path).ok_or_else(|| {
                    Error::Invalid(format!("{name}: '{path}' is not a column path"))
                })?,
            }),
            _ => Policy::keyless_transform(path, rule).ok_or_else(|| {
                Error::Invalid(format!(
                    "{name}: {} cannot anonymise '{path}'",
                    rule.action.as_str()
                ))
            })?,
        };
        match out.iter_mut().find(|s| s.field.name() == top) {
            Some(s) => s.steps.push(step),
            None => out.push(ColumnSteps {
                field: Arc::new(field.clone()),
                steps: vec![step],
            }),
        }
    }
    for s in &out {
        let mut current: SchemaRef = Arc::new(Schema::new(vec![Arc::clone(&s.field)]));
        for step in &s.steps {
            current = step
                .output_schema(&current)
                .map_err(Error::transform(name))?;
        }
        let to = current.field(0).data_type();
        if !can_cast_types(to, s.field.data_type()) {
            return Err(Error::Invalid(format!(
                "{name}: the actions on '{}' change its type to {to}; anonymisation rewrites rows in place, in the column's own type",
                s.field.name()
            )));
        }
    }
    Ok(out.into_iter().map(Arc::new).collect())
}

/// The cutoff as an expression of the age column's type, and as text.
fn cutoff(
    name: &str,
    policy: &AnonymiseTable,
    schema: &Schema,
    now: DateTime<Utc>,
) -> Result<(Expr, String)> {
    let field = schema.field_with_name(&policy.age_column).map_err(|_| {
        Error::Invalid(format!(
            "{name}: no age column '{}' (anonymise.tables.\"{name}\".age_column)",
            policy.age_column
        ))
    })?;
    let at = now - chrono::Duration::days(i64::from(policy.after_days));
    let text = match field.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::Utf8View => {
            at.date_naive().to_string()
        }
        DataType::Timestamp(_, _) => at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        other => {
            return Err(Error::Invalid(format!(
                "{name}: age column '{}' is {other}; a date, timestamp or YYYY-MM-DD text is needed",
                policy.age_column
            )));
        }
    };
    let bound = deltalake::datafusion::prelude::cast(lit(text.clone()), field.data_type().clone());
    Ok((path_expr(&policy.age_column).lt_eq(bound), text))
}

async fn anonymise_table(
    url: &url::Url,
    name: &str,
    policy: &AnonymiseTable,
    now: DateTime<Utc>,
) -> Result<TableAnonymised> {
    let delta = table::open(name, url).await?;
    let schema = table::arrow_schema(name, &delta)?;
    let steps = column_steps(name, policy, &schema)?;
    let (aged, cutoff) = cutoff(name, policy, &schema, now)?;
    let mut done = TableAnonymised {
        table: name.to_string(),
        cutoff: cutoff.clone(),
        version_before: version(&delta),
        ..Default::default()
    };
    let pending = ScalarUDF::new_from_impl(Pending {
        columns: steps.clone(),
        signature: Signature::variadic_any(Volatility::Immutable),
    })
    .call(steps.iter().map(|s| path_expr(s.field.name())).collect());
    let mut update = delta
        .update()
        .with_predicate(aged.and(pending))
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "sluice.anonymise".to_string(),
            serde_json::Value::from(format!("rows dated {cutoff} or before")),
        )]));
    for s in &steps {
        let column = s.field.name().clone();
        let udf = ScalarUDF::new_from_impl(Anonymised {
            column: Arc::clone(s),
            signature: Signature::variadic_any(Volatility::Immutable),
        });
        update = update.with_update(column.as_str(), udf.call(vec![path_expr(&column)]));
    }
    let (delta, metrics) = update.await.map_err(Error::delta(name))?;
    done.version_after = version(&delta);
    done.rows_anonymised = metrics.num_updated_rows as u64;
    done.files_rewritten = metrics.num_added_files as u64;
    if done.version_after > done.version_before {
        let files = TableFiles::of(name, &delta);
        let replaced = files.replaced_files(done.version_after).await?;
        // Older versions still describe the identifiable rows (their files' statistics):
        // the log up to the update is scrubbed of them, after a checkpoint of it (see
        // `purge::TableFiles::scrub`: entries rewritten, never deleted, so live writers
        // are safe).
        let log = files.checkpoint_and_read(&delta).await?;
        done.files_purged = files.remove(&replaced).await?;
        let purged = replaced.into_iter().collect();
        done.logs_purged = files.scrub(&log, &purged, true).await?;
    }
    Ok(done)
}

/// `sluice_anonymised(column)`: the column with its anonymisation applied.
#[derive(Debug)]
struct Anonymised {
    column: Arc<ColumnSteps>,
    signature: Signature,
}

impl PartialEq for Anonymised {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.column, &other.column)
    }
}
impl Eq for Anonymised {}
impl std::hash::Hash for Anonymised {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column.field.name().hash(state);
    }
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(e.into())
}

impl ScalarUDFImpl for Anonymised {
    fn name(&self) -> &str {
        "sluice_anonymised"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(self.column.field.data_type().clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let input = arrays
            .first()
            .ok_or_else(|| DataFusionError::Internal("sluice_anonymised takes a column".into()))?;
        Ok(ColumnarValue::Array(
            self.column.apply(input).map_err(external)?,
        ))
    }
}

/// `sluice_anonymise_pending(columns…)`: true on rows anonymisation would change.
#[derive(Debug)]
struct Pending {
    columns: Vec<Arc<ColumnSteps>>,
    signature: Signature,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}
impl Eq for Pending {}
impl std::hash::Hash for Pending {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for c in &self.columns {
            c.field.name().hash(state);
        }
    }
}

/// Rows where `a` and `b` (same type) differ, nulls equal to nulls.
fn differs(a: &ArrayRef, b: &ArrayRef) -> Result<Vec<bool>> {
    let converter = RowConverter::new(vec![SortField::new(a.data_type().clone())])?;
    let ra = converter.convert_columns(std::slice::from_ref(a))?;
    let rb = converter.convert_columns(std::slice::from_ref(b))?;
    Ok((0..a.len()).map(|i| ra.row(i) != rb.row(i)).collect())
}

impl ScalarUDFImpl for Pending {
    fn name(&self) -> &str {
        "sluice_anonymise_pending"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut any = vec![false; args.number_rows];
        for (column, input) in self.columns.iter().zip(&arrays) {
            let input = if input.data_type() == column.field.data_type() {
                Arc::clone(input)
            } else {
                cast(input, column.field.data_type())?
            };
            let out = column.apply(&input).map_err(external)?;
            for (slot, d) in any.iter_mut().zip(differs(&input, &out).map_err(external)?) {
                *slot |= d;
            }
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(any))))
    }
}

/// Group `name` by the quasi-identifiers and compare the smallest group with k; write the
/// table to `to` only when every group is large enough.
async fn check_k(catalog: &Catalog, name: &str, publish: &PublishConfig) -> Result<Publication> {
    let table = catalog
        .tables()
        .iter()
        .find(|t| t.qualified() == name)
        .ok_or_else(|| Error::NoTable {
            table: name.to_string(),
        })?;
    let groups = publish.quasi_identifiers.join(", ");
    let sql = format!("SELECT count(*) AS n FROM {name} GROUP BY {groups}");
    let batches = catalog
        .query(&sql)
        .await
        .map_err(Error::sql(format!("k-anonymity of {name}")))?;
    let mut p = Publication {
        table: name.to_string(),
        version: catalog.version(table).unwrap_or(-1),
        quasi_identifiers: publish.quasi_identifiers.clone(),
        k: publish.k,
        smallest_group: u64::MAX,
        ..Default::default()
    };
    for b in &batches {
        let n = cast(b.column(0), &DataType::UInt64)?;
        for v in n
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .iter()
            .flatten()
        {
            p.rows += v;
            p.groups += 1;
            p.smallest_group = p.smallest_group.min(v);
            if v < publish.k {
                p.groups_below_k += 1;
                p.rows_below_k += v;
            }
        }
    }
    if p.groups == 0 {
        p.smallest_group = 0;
    }
    p.refused = p.groups_below_k > 0;
    if !p.refused
        && let Some(to) = &publish.to
    {
        let rows = catalog
            .query(&format!("SELECT * FROM {name}"))
            .await
            .map_err(Error::sql(format!("publishing {name}")))?;
        write_parquet(to, &rows)?;
        p.published_to = Some(to.clone());
    }
    Ok(p)
}

/// Write `batches` to one Parquet file at `to`, whole or not at all.
fn write_parquet(to: &Path, batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        return Err(Error::Invalid(format!(
            "nothing to publish to {}: the table is empty",
            to.display()
        )));
    };
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let partial = to.with_extension("parquet.partial");
    let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let failed = |e| Error::parquet(to.display().to_string())(e);
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, first.schema(), None).map_err(failed)?;
    for b in batches {
        writer.write(b).map_err(failed)?;
    }
    writer.close().map_err(failed)?;
    std::fs::rename(&partial, to).map_err(|e| Error::io(to, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, StringArray, StructArray};
    use arrow::datatypes::Field;
    use sluice_pipeline::config::pii::ColumnRule;

    fn rule(action: &str, extra: &str) -> ColumnRule {
        toml_rule(&format!("action = \"{action}\"{extra}"))
    }

    fn toml_rule(body: &str) -> ColumnRule {
        #[derive(serde::Deserialize)]
        struct W {
            r: ColumnRule,
        }
        let w: W = toml::from_str(&format!("r = {{ {body} }}")).expect("rule");
        w.r
    }

    #[test]
    fn nested_columns_are_nulled_and_generalised_in_their_own_type() {
        let person = Field::new(
            "after",
            DataType::Struct(
                vec![
                    Field::new("email", DataType::Utf8, true),
                    Field::new("born", DataType::Date32, true),
                ]
                .into(),
            ),
            true,
        );
        let schema = Schema::new(vec![person.clone()]);
        let mut columns = std::collections::BTreeMap::new();
        columns.insert("after.email".to_string(), rule("drop", ""));
        columns.insert(
            "after.born".to_string(),
            rule("generalize", ", to = \"year\""),
        );
        let policy = AnonymiseTable {
            after_days: 1,
            age_column: "_ingest_date".into(),
            columns,
        };
        let steps = column_steps("t", &policy, &schema).expect("steps");
        assert_eq!(steps.len(), 1);
        let DataType::Struct(fields) = person.data_type() else {
            unreachable!()
        };
        let input: ArrayRef = Arc::new(StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a@b.c"), None])),
                // 1990-06-15 and 1970-01-01
                Arc::new(Date32Array::from(vec![7470, 0])),
            ],
            None,
        ));
        let out = steps[0].apply(&input).expect("apply");
        assert_eq!(out.data_type(), input.data_type());
        let s = out.as_struct();
        assert_eq!(s.column(0).null_count(), 2);
        let born = s.column(1).as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(born.value(0), 7305); // 1990-01-01
        assert_eq!(born.value(1), 0);
        // A second pass changes nothing: anonymised rows are not pending.
        assert_eq!(
            differs(&out, &steps[0].apply(&out).expect("again")).expect("cmp"),
            vec![false, false]
        );
        assert_eq!(differs(&input, &out).expect("cmp"), vec![true, false]);
    }

    #[test]
    fn a_missing_column_is_named() {
        let schema = Schema::new(vec![Field::new("x", DataType::Utf8, true)]);
        let mut columns = std::collections::BTreeMap::new();
        columns.insert("email".to_string(), rule("drop", ""));
        let policy = AnonymiseTable {
            after_days: 1,
            age_column: "_ingest_date".into(),
            columns,
        };
        let e = column_steps("bronze.t", &policy, &schema).expect_err("missing");
        assert!(e.to_string().contains("no column 'email'"), "{e}");
    }
}
