//! Additive schema evolution: widening a schema by another without losing values, and
//! bringing arrays of the narrower type into the wider one (nested structs by name).
//!
//! The decoders widen a table's schema by the fields new messages bring; the sinks widen
//! a Delta table by the columns its batches bring and conform each batch to the table.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, ListArray, MapArray, RecordBatch, StructArray, new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

use crate::error::{Error, Result};

/// `a` widened by `b` where that loses nothing (null → any, integer → wider integer or
/// float, new nested fields); `None` when a field has incompatible types.
pub(crate) fn merge_fields(a: &[Field], b: &[Field]) -> Option<Vec<Field>> {
    let mut out: Vec<Field> = a.to_vec();
    for f in b {
        match out.iter_mut().find(|g| g.name() == f.name()) {
            Some(g) => {
                let dt = merge_types(g.data_type(), f.data_type())?;
                *g = Field::new(g.name(), dt, true);
            }
            None => out.push(f.clone().with_nullable(true)),
        }
    }
    Some(out)
}

/// Fields added to a schema by [`with_new_fields`].
#[derive(Debug, Default)]
pub(crate) struct Additions {
    /// The new fields, and for each struct that gained fields the struct holding only
    /// those (to check their names).
    pub fields: Vec<Field>,
    /// Columns added, at every level.
    pub count: usize,
}

/// `current` with the fields of `theirs` it lacks, at any depth inside structs, and what
/// was added. Only additions: a field `current` has keeps its type (a different type is
/// left for the decoder to refuse), and fields seen only as null are not added.
pub(crate) fn with_new_fields(current: &[Field], theirs: &[Field]) -> (Vec<Field>, Additions) {
    let mut out = current.to_vec();
    let mut added = Additions::default();
    for f in theirs.iter().filter(|f| f.data_type() != &DataType::Null) {
        match out.iter_mut().find(|g| g.name() == f.name()) {
            None => {
                let f = f.clone().with_nullable(true);
                added.count += crate::decode::limits::count_fields(&vec![f.clone()].into());
                out.push(f.clone());
                added.fields.push(f);
            }
            Some(g) => {
                let (DataType::Struct(ours), DataType::Struct(new)) =
                    (g.data_type(), f.data_type())
                else {
                    continue;
                };
                let ours: Vec<Field> = ours.iter().map(|x| x.as_ref().clone()).collect();
                let new: Vec<Field> = new.iter().map(|x| x.as_ref().clone()).collect();
                let (wider, inner) = with_new_fields(&ours, &new);
                if inner.count > 0 {
                    *g = Field::new(g.name(), DataType::Struct(wider.into()), true);
                    added.count += inner.count;
                    added.fields.push(Field::new(
                        f.name(),
                        DataType::Struct(inner.fields.into()),
                        true,
                    ));
                }
            }
        }
    }
    (out, added)
}

/// Two fields of one struct (at any depth of `fields`) whose names differ only in case,
/// which Delta readers take for one column.
pub(crate) fn case_twins(fields: &[Field]) -> Option<(String, String)> {
    for (i, f) in fields.iter().enumerate() {
        if let Some(g) = fields[..i]
            .iter()
            .find(|g| g.name() != f.name() && g.name().eq_ignore_ascii_case(f.name()))
        {
            return Some((g.name().clone(), f.name().clone()));
        }
        if let DataType::Struct(children) = f.data_type() {
            let children: Vec<Field> = children.iter().map(|c| c.as_ref().clone()).collect();
            if let Some(twins) = case_twins(&children) {
                return Some(twins);
            }
        }
    }
    None
}

/// The narrowest type holding values of both `a` and `b`, if any.
pub(crate) fn merge_types(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match (a, b) {
        _ if a == b => a.clone(),
        (Null, x) | (x, Null) => x.clone(),
        (Int32, Int64) | (Int64, Int32) => Int64,
        (Int32 | Int64 | Float32, Float64) | (Float64, Int32 | Int64 | Float32) => Float64,
        (Struct(x), Struct(y)) => {
            let xs: Vec<Field> = x.iter().map(|f| f.as_ref().clone()).collect();
            let ys: Vec<Field> = y.iter().map(|f| f.as_ref().clone()).collect();
            Struct(merge_fields(&xs, &ys)?.into())
        }
        (List(x), List(y)) => List(Arc::new(Field::new(
            x.name(),
            merge_types(x.data_type(), y.data_type())?,
            true,
        ))),
        (Map(x, sorted), Map(y, _)) => map_of(x, *sorted, y, merge_types)?,
        _ => return None,
    })
}

/// Map `x` with key and value types combined with those of map `y` by `combine`; the
/// names of `x` are kept (writers name a map's parts differently).
fn map_of(
    x: &FieldRef,
    sorted: bool,
    y: &FieldRef,
    combine: fn(&DataType, &DataType) -> Option<DataType>,
) -> Option<DataType> {
    let (DataType::Struct(xs), DataType::Struct(ys)) = (x.data_type(), y.data_type()) else {
        return None;
    };
    if xs.len() != 2 || ys.len() != 2 {
        return None;
    }
    let key = combine(xs[0].data_type(), ys[0].data_type())?;
    let value = combine(xs[1].data_type(), ys[1].data_type())?;
    let entries = DataType::Struct(Fields::from(vec![
        xs[0].as_ref().clone().with_data_type(key),
        xs[1].as_ref().clone().with_data_type(value),
    ]));
    Some(DataType::Map(
        Arc::new(x.as_ref().clone().with_data_type(entries)),
        sorted,
    ))
}

/// `array` as type `to`, which [`merge_types`] made from its type: struct fields are
/// matched by name and the ones `array` lacks are null.
pub(crate) fn conform_array(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    match (array.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array.as_struct();
            let columns = fields
                .iter()
                .map(|f| match s.column_by_name(f.name()) {
                    Some(c) => conform_array(c, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), s.len())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Fields = fields.clone();
            Ok(Arc::new(StructArray::try_new(
                fields,
                columns,
                s.nulls().cloned(),
            )?))
        }
        (DataType::List(_), DataType::List(item)) => {
            let l = array.as_list::<i32>();
            let values = conform_array(l.values(), item.data_type())?;
            Ok(Arc::new(ListArray::try_new(
                item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?))
        }
        (DataType::Map(_, _), DataType::Map(entries, sorted)) => {
            let m = array.as_map();
            let DataType::Struct(parts) = entries.data_type() else {
                return cast(array, to);
            };
            let keys = conform_array(m.keys(), parts[0].data_type())?;
            let values = conform_array(m.values(), parts[1].data_type())?;
            let inner = StructArray::try_new(parts.clone(), vec![keys, values], None)?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                m.offsets().clone(),
                inner,
                m.nulls().cloned(),
                *sorted,
            )?))
        }
        _ => cast(array, to),
    }
}

/// Whether `to` is `from` with struct fields added (at any depth) and nothing else
/// changed but nullability: values of `from` become values of `to` by adding nulls alone.
pub(crate) fn adds_only(from: &DataType, to: &DataType) -> bool {
    match (from, to) {
        (DataType::Struct(f), DataType::Struct(t)) => f.iter().all(|a| {
            t.find(a.name())
                .is_some_and(|(_, b)| adds_only(a.data_type(), b.data_type()))
        }),
        (DataType::List(a), DataType::List(b)) => adds_only(a.data_type(), b.data_type()),
        _ => from == to,
    }
}

/// Whether values of type `from` fit a column of type `to` by a cast that loses nothing
/// a reader would miss (narrower integers, numbers and booleans into strings).
pub(crate) fn fits(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    from == to
        || matches!(
            (from, to),
            (Int32, Int64)
                | (Int64, Float64)
                | (Int32, Float64)
                | (Float32, Float64)
                | (Null, _)
                | (Int64 | Float64 | Boolean, Utf8)
        )
}

/// The columns `table` with the fields of `rows` it lacks added (at any depth) and no
/// existing type changed, or `None` when a row type does not fit its column (see
/// [`add_fields`]).
pub(crate) fn extend_fields(table: &[Field], rows: &[Field]) -> Option<Vec<Field>> {
    let t = DataType::Struct(table.to_vec().into());
    let r = DataType::Struct(rows.to_vec().into());
    match add_fields(&t, &r)? {
        DataType::Struct(f) => Some(f.iter().map(|f| f.as_ref().clone()).collect()),
        _ => None,
    }
}

/// The type of an existing table column `table` after rows of type `rows` are added:
/// the same type, or the same with struct fields the rows add (at any depth). Never a
/// change of an existing leaf type, which older data files could not be read as.
pub(crate) fn add_fields(table: &DataType, rows: &DataType) -> Option<DataType> {
    match (table, rows) {
        (DataType::Struct(t), DataType::Struct(r)) => {
            let mut out: Vec<Field> = Vec::with_capacity(t.len());
            for f in t {
                let dt = match r.iter().find(|g| g.name() == f.name()) {
                    Some(g) => add_fields(f.data_type(), g.data_type())?,
                    None => f.data_type().clone(),
                };
                out.push(f.as_ref().clone().with_data_type(dt));
            }
            for g in r.iter().filter(|g| t.find(g.name()).is_none()) {
                out.push(g.as_ref().clone().with_nullable(true));
            }
            Some(DataType::Struct(out.into()))
        }
        (DataType::List(t), DataType::List(r)) => Some(DataType::List(Arc::new(
            t.as_ref()
                .clone()
                .with_data_type(add_fields(t.data_type(), r.data_type())?),
        ))),
        (DataType::Map(t, sorted), DataType::Map(r, _)) => map_of(t, *sorted, r, add_fields),
        _ if fits(rows, table) => Some(table.clone()),
        _ => None,
    }
}

/// The union of `schemas` by column name. A column in several schemas keeps the type it
/// has first, widened by the struct fields later ones add; a later type that does not fit
/// it is a conflict.
pub(crate) fn merged_schema(
    table: &str,
    schemas: impl Iterator<Item = SchemaRef>,
) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = Vec::new();
    for schema in schemas {
        for f in schema.fields() {
            match fields.iter_mut().find(|g| g.name() == f.name()) {
                Some(g) => match add_fields(g.data_type(), f.data_type()) {
                    Some(dt) => *g = g.clone().with_data_type(dt),
                    None => {
                        return Err(Error::SchemaConflict {
                            table: table.to_string(),
                            column: f.name().clone(),
                            found: f.data_type().to_string(),
                            expected: g.data_type().to_string(),
                        });
                    }
                },
                None => fields.push(f.as_ref().clone().with_nullable(true)),
            }
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `batch` with exactly the columns of `target`, in its order; missing columns are null.
pub(crate) fn conform(table: &str, batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().as_ref() == target.as_ref() {
        return Ok(batch.clone());
    }
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => conform_array(c, f.data_type()).map_err(|_| Error::SchemaConflict {
                table: table.to_string(),
                column: f.name().clone(),
                found: c.data_type().to_string(),
                expected: f.data_type().to_string(),
            }),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}
