//! What a role reads of each table: its columns without the denied ones (and, for a
//! gold table, without those computed from denied ones, through its definition's plan),
//! its row filter, and whether a derived table may be read at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::readonly::ReadOnlyTable;
use crate::restricted::RestrictedTable;
use crate::views::register_views_in;
use crate::{
    Error, LAYERS, Opened, Result, TableRef, access, definitions, lineage, session_config,
};

/// What decides a table's columns for a role beyond its own name and tags.
pub(crate) struct Restriction<'a> {
    /// Each column's sources, for a gold table whose definition was read.
    pub(crate) lineage: Option<&'a Vec<(String, std::collections::BTreeSet<lineage::Source>)>>,
    /// The tags each table records.
    pub(crate) recorded: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// `provider` as `access` lets its role read it: a [`RestrictedTable`] without the denied
/// columns (recorded in `denied`; for a gold table also those computed from a denied
/// column) and with the role's row filter; `provider` itself, read-only, when nothing is
/// restricted.
pub(crate) fn restrict(
    ctx: &SessionContext,
    a: &access::Access,
    qualified: &str,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
    r: &Restriction<'_>,
    denied: &mut Vec<access::Denied>,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let schema = provider.schema();
    let none = BTreeMap::new();
    let tags = |t: &str| r.recorded.get(t).unwrap_or(&none);
    let mut keep = Vec::new();
    for f in schema.fields() {
        let own = a.denies(qualified, f.name(), tags(qualified));
        let inherited = || {
            let (_, sources) = r.lineage?.iter().find(|(c, _)| c == f.name())?;
            sources.iter().find_map(|(table, column)| {
                a.denies(table, column, tags(table))
                    .map(|policy| format!("{policy}, computed from {table}.{column}"))
            })
        };
        match own.or_else(inherited) {
            Some(policy) => denied.push(access::Denied {
                table: qualified.to_string(),
                column: f.name().clone(),
                policy,
            }),
            None => keep.push(f.name().clone()),
        }
    }
    let filter = a.row_filter(qualified);
    if keep.len() == schema.fields().len() && filter.is_none() {
        return Ok(Arc::new(ReadOnlyTable::new(qualified, provider)));
    }
    let filter = match filter {
        Some((condition, written_for)) => {
            let columns = DFSchema::try_from(schema.as_ref().clone())?;
            Some(ctx.parse_sql_expr(condition, &columns).map_err(|e| {
                Error::Denied(format!(
                    "roles.{}.row_filters.\"{written_for}\" (on {qualified}): {e}",
                    a.role
                ))
            })?)
        }
        None => None,
    };
    Ok(Arc::new(RestrictedTable::new(
        qualified, provider, &keep, filter,
    )?))
}

/// The definition hash a gold table's last build recorded (`sluice job gold` writes
/// `sluice.gold = sha256:<hex>` into each commit).
pub(crate) async fn last_definition(t: &deltalake::DeltaTable) -> Option<String> {
    use futures::StreamExt;
    let mut history = t.history(Some(50));
    while let Some(commit) = history.next().await {
        let commit = commit.ok()?;
        if let Some(v) = commit.info.get("sluice.gold").and_then(|v| v.as_str()) {
            return Some(v.trim_start_matches("sha256:").to_string());
        }
    }
    None
}

/// What each table is computed from, for a role.
#[derive(Debug, Default)]
pub(crate) struct Derivation {
    /// Tables each table is computed from: the configuration's, the lake's own internal
    /// tables', and each gold table's from the plan of its definition.
    pub(crate) sources: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Each gold table's columns and what they are computed from.
    pub(crate) columns:
        BTreeMap<String, Vec<(String, std::collections::BTreeSet<lineage::Source>)>>,
    /// Gold tables whose definition is missing or differs from the one they were built with.
    pub(crate) unknown: std::collections::BTreeSet<String>,
}

impl Derivation {
    /// Why the role may not read `qualified`, when it is derived from what the role may
    /// not see.
    pub(crate) fn refuses(&self, a: &access::Access, qualified: &str) -> Option<String> {
        let r = &a.role;
        let hidden = a.hidden_sources(qualified, &self.sources);
        if !hidden.is_empty() {
            let hidden: Vec<_> = hidden.into_iter().collect();
            return Some(format!(
                "it is computed from rows of {} that roles.{r}.row_filters hide; \
                 roles.{r}.allow_derived lists derived tables the role may read",
                hidden.join(", ")
            ));
        }
        (self.unknown.contains(qualified) && !a.allow_derived.iter().any(|t| t == qualified)).then(
            || {
                format!(
                    "its definition is not in sql.gold_dir or changed since it was built, so \
                     what it is computed from is unknown; roles.{r}.allow_derived lists \
                     derived tables the role may read"
                )
            },
        )
    }
}

/// Internal tables computed from the layers' rows: snapshots record counts and
/// checksums of silver and gold tables; dead letters, quarantine and quality results hold
/// bronze rows.
const INTERNAL_SOURCES: [(&str, &[&str]); 5] = [
    ("sluice.snapshots", &["silver", "gold"]),
    ("sluice.snapshot_diffs", &["silver", "gold"]),
    ("sluice.dead_letters", &["bronze"]),
    ("sluice.quarantine", &["bronze"]),
    ("sluice.quality", &["bronze"]),
];

/// The derivations of the lake's tables for `a`: the configuration's, the internal
/// tables', and each gold table's, read from the plan of its definition over every table
/// (and view) of the lake.
pub(crate) async fn derive(a: &access::Access, opened: &[Opened]) -> Result<Derivation> {
    use sha2::Digest;
    let mut d = Derivation::default();
    for (t, from) in &a.sources {
        d.sources
            .entry(t.clone())
            .or_default()
            .extend(from.iter().cloned());
    }
    for (table, layers) in INTERNAL_SOURCES {
        let from = opened
            .iter()
            .filter(|o| layers.contains(&o.table.schema.as_str()))
            .map(|o| o.table.qualified());
        d.sources.entry(table.to_string()).or_default().extend(from);
    }
    let gold: Vec<&Opened> = opened.iter().filter(|o| o.table.schema == "gold").collect();
    if gold.is_empty() {
        return Ok(d);
    }
    // Every table and view, unrestricted: only planned, never run.
    let shadow = SessionContext::new_with_config(session_config()?);
    let catalog = shadow
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Plan("no default catalog".into()))?;
    for schema in LAYERS.iter().map(|(_, s)| *s).chain(["views"]) {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    for o in opened {
        shadow.register_table(
            datafusion::common::TableReference::partial(
                o.table.schema.as_str(),
                o.table.name.as_str(),
            ),
            Arc::new(ReadOnlyTable::new(o.table.qualified(), o.provider.clone())),
        )?;
    }
    if let Some(dir) = &a.views_dir {
        register_views_in(&shadow, dir, None).await?;
    }
    let definitions = match &a.gold_dir {
        Some(dir) => definitions::read_dir(dir)?,
        None => Vec::new(),
    };
    for g in gold {
        let qualified = g.table.qualified();
        let definition = definitions.iter().find(|def| def.name == g.table.name);
        let lineage = match definition {
            Some(def)
                if g.built.as_deref() == Some(&hex(&sha2::Sha256::digest(def.sql.as_bytes()))) =>
            {
                match shadow.state().create_logical_plan(&def.sql).await {
                    Ok(plan) => lineage::of(&plan).ok(),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        match lineage {
            Some(l) => {
                d.sources
                    .entry(qualified.clone())
                    .or_default()
                    .extend(l.tables);
                d.columns.insert(qualified, l.columns);
            }
            None => {
                d.unknown.insert(qualified);
            }
        }
    }
    Ok(d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuse a role whose `deny_columns` names, as `layer.table.column`, a table of the lake
/// without that column: a misspelt name would deny nothing.
/// Refuse a `deny_columns` entry of `a` that names nothing in a lake holding `all` (of
/// which `opened` are open): a misspelt name would deny nothing. A bare column name must
/// be a column of some table; `<layer>.<table>.<column>[.<field>…]` a table of the lake,
/// a column of it and fields of that column (through lists). An empty lake has nothing to
/// check against.
pub(crate) fn check_denied_paths(
    a: &access::Access,
    all: &[TableRef],
    opened: &[Opened],
) -> Result<()> {
    let refuse = |path: &str, why: String| {
        Err(Error::Denied(format!(
            "roles.{}.deny_columns: '{path}' {why}",
            a.role
        )))
    };
    if all.is_empty() {
        return Ok(());
    }
    for path in &a.deny_columns {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            [column] => {
                let found = opened
                    .iter()
                    .any(|o| o.provider.schema().field_with_name(column).is_ok());
                if !found && !opened.is_empty() {
                    return refuse(path, "names no column of any table of the lake".into());
                }
            }
            [layer, name, column, fields @ ..] => {
                let table = format!("{layer}.{name}");
                if !all.iter().any(|t| t.qualified() == table) {
                    return refuse(
                        path,
                        format!("names {table}, a table the lake does not hold"),
                    );
                }
                let Some(o) = opened.iter().find(|o| o.table.qualified() == table) else {
                    continue;
                };
                let schema = o.provider.schema();
                let Ok(field) = schema.field_with_name(column) else {
                    return refuse(path, format!("names no column of {table}"));
                };
                let mut at = field.data_type().clone();
                for f in fields {
                    match child_type(&at, f) {
                        Some(t) => at = t,
                        None => {
                            return refuse(
                                path,
                                format!("names no field of column {column} of {table}"),
                            );
                        }
                    }
                }
            }
            // Other shapes are refused with the configuration.
            _ => {}
        }
    }
    Ok(())
}

/// The type of field `name` of a struct of type `t` (inside lists, as many as there are).
fn child_type(t: &arrow::datatypes::DataType, name: &str) -> Option<arrow::datatypes::DataType> {
    use arrow::datatypes::DataType;
    match t {
        DataType::List(item) | DataType::LargeList(item) | DataType::ListView(item) => {
            child_type(item.data_type(), name)
        }
        DataType::FixedSizeList(item, _) => child_type(item.data_type(), name),
        DataType::Struct(fields) => fields.find(name).map(|(_, f)| f.data_type().clone()),
        _ => None,
    }
}
