//! Addressing a column by path (`email`, or `after.email` inside a struct) and rewriting
//! it in place, rebuilding the structs around it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use sluice_pipeline::{Error, Result};

/// A dotted path to a column, possibly nested in structs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPath(Vec<String>);

impl ColumnPath {
    /// Parse `a.b.c`; empty segments are rejected.
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        (!parts.iter().any(String::is_empty)).then_some(ColumnPath(parts))
    }
}

impl ColumnPath {
    /// The path's segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for ColumnPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.join("."))
    }
}

/// The field at `path` in `schema`, or an error naming the missing segment.
pub fn field_at<'a>(
    schema: &'a Schema,
    path: &ColumnPath,
) -> std::result::Result<&'a Field, String> {
    let mut fields: &Fields = schema.fields();
    let mut found: Option<&Field> = None;
    for (i, name) in path.0.iter().enumerate() {
        let f = fields
            .iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("no column '{}'", path.0[..=i].join(".")))?;
        found = Some(f.as_ref());
        if i + 1 < path.0.len() {
            match f.data_type() {
                DataType::Struct(children) => fields = children,
                other => {
                    return Err(format!(
                        "'{}' is {other}, not a struct",
                        path.0[..=i].join(".")
                    ));
                }
            }
        }
    }
    found.ok_or_else(|| "empty path".to_string())
}

/// `schema` with the field at `path` replaced by `f(field)`.
pub fn replace_field(
    schema: &SchemaRef,
    path: &ColumnPath,
    f: &dyn Fn(&Field) -> Field,
) -> SchemaRef {
    fn go(fields: &Fields, path: &[String], f: &dyn Fn(&Field) -> Field) -> Fields {
        fields
            .iter()
            .map(|field| {
                if field.name() != &path[0] {
                    return field.clone();
                }
                if path.len() == 1 {
                    return Arc::new(f(field));
                }
                match field.data_type() {
                    DataType::Struct(children) => {
                        Arc::new(field.as_ref().clone().with_data_type(DataType::Struct(go(
                            children,
                            &path[1..],
                            f,
                        ))))
                    }
                    _ => field.clone(),
                }
            })
            .collect()
    }
    Arc::new(Schema::new_with_metadata(
        go(schema.fields(), &path.0, f),
        schema.metadata().clone(),
    ))
}

/// `batch` with the array at `path` replaced by `f(array)`; struct parents keep their nulls.
pub fn map_column(
    batch: &RecordBatch,
    path: &ColumnPath,
    transform: &str,
    f: &dyn Fn(&ArrayRef) -> Result<ArrayRef>,
) -> Result<RecordBatch> {
    fn go(
        array: &ArrayRef,
        path: &[String],
        transform: &str,
        f: &dyn Fn(&ArrayRef) -> Result<ArrayRef>,
    ) -> Result<ArrayRef> {
        if path.is_empty() {
            return keep_unavailable(array, f);
        }
        let s = array.as_struct_opt().ok_or_else(|| {
            schema_error(transform, "path goes through a column that is not a struct")
        })?;
        let (fields, columns, nulls) = s.clone().into_parts();
        let idx = fields
            .iter()
            .position(|c| c.name() == &path[0])
            .ok_or_else(|| schema_error(transform, "no such nested column"))?;
        let mut columns = columns;
        columns[idx] = go(&columns[idx], &path[1..], transform, f)?;
        let fields: Fields = fields
            .iter()
            .zip(&columns)
            .map(|(fd, c)| Arc::new(fd.as_ref().clone().with_data_type(c.data_type().clone())))
            .collect();
        Ok(Arc::new(
            StructArray::try_new(fields, columns, nulls).map_err(|e| arrow_error(transform, e))?,
        ))
    }
    let schema = batch.schema();
    let idx = schema
        .index_of(&path.0[0])
        .map_err(|_| schema_error(transform, "no such column"))?;
    let mut columns = batch.columns().to_vec();
    columns[idx] = go(&columns[idx], &path.0[1..], transform, f)?;
    let fields: Fields = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(fd, c)| Arc::new(fd.as_ref().clone().with_data_type(c.data_type().clone())))
        .collect();
    let out = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(out, columns).map_err(|e| arrow_error(transform, e))
}

pub use sluice_pipeline::columns::UNAVAILABLE;

/// Whether `v` is Debezium's unavailable-value placeholder.
pub fn is_unavailable(v: Option<&str>) -> bool {
    v == Some(UNAVAILABLE)
}

/// `f(array)`, with Debezium's placeholder kept where a string column held it.
fn keep_unavailable(
    array: &ArrayRef,
    f: &dyn Fn(&ArrayRef) -> Result<ArrayRef>,
) -> Result<ArrayRef> {
    let Some(s) = array.as_string_opt::<i32>() else {
        return f(array);
    };
    let n = UNAVAILABLE.len();
    let offsets = s.value_offsets();
    let hit = |i: usize| {
        (offsets[i + 1] - offsets[i]) as usize == n && s.is_valid(i) && s.value(i) == UNAVAILABLE
    };
    if !(0..s.len()).any(hit) {
        return f(array);
    }
    let out = f(array)?;
    let Some(o) = out.as_string_opt::<i32>() else {
        return Ok(out);
    };
    let kept: arrow::array::StringArray = (0..s.len())
        .map(|i| {
            if hit(i) {
                Some(UNAVAILABLE)
            } else {
                o.is_valid(i).then(|| o.value(i))
            }
        })
        .collect();
    Ok(Arc::new(kept))
}

/// The array at `path` in `batch`.
pub(crate) fn column_at(
    batch: &RecordBatch,
    path: &ColumnPath,
    transform: &str,
) -> Result<ArrayRef> {
    let mut column = batch
        .column_by_name(&path.0[0])
        .ok_or_else(|| schema_error(transform, "no such column"))?
        .clone();
    for name in &path.0[1..] {
        column = column
            .as_struct_opt()
            .and_then(|s| s.column_by_name(name))
            .ok_or_else(|| schema_error(transform, "no such nested column"))?
            .clone();
    }
    Ok(column)
}

pub(crate) fn schema_error(transform: &str, reason: &str) -> Error {
    Error::TransformSchema {
        transform: transform.to_string(),
        table: String::new(),
        reason: reason.to_string(),
    }
}

pub(crate) fn arrow_error(transform: &str, source: arrow::error::ArrowError) -> Error {
    Error::Transform {
        transform: transform.to_string(),
        source,
    }
}

/// Check at start-up that `path` exists in `input` with a type `accepts` allows.
pub(crate) fn check(
    transform: &str,
    input: &SchemaRef,
    path: &ColumnPath,
    accepts: &dyn Fn(&DataType) -> bool,
) -> Result<()> {
    let field = field_at(input, path).map_err(|r| schema_error(transform, &r))?;
    if accepts(field.data_type()) {
        Ok(())
    } else {
        Err(schema_error(
            transform,
            &format!(
                "column '{path}' is {}, which this action does not handle",
                field.data_type()
            ),
        ))
    }
}

/// Null buffer of `a`, shared by the rewritten array: nulls stay null.
pub(crate) fn same_nulls(a: &dyn Array) -> Option<arrow::buffer::NullBuffer> {
    a.logical_nulls()
}
