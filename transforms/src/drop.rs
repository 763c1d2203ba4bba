//! `drop`: remove a column (top level or inside a struct) before anything lands.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Fields, Schema, SchemaRef};
use sluice_pipeline::{Result, Transform};

use crate::path::{ColumnPath, arrow_error, check};

/// Drop one column.
#[derive(Debug, Clone)]
pub struct Drop {
    pub path: ColumnPath,
}

fn drop_field(fields: &Fields, path: &[String]) -> Fields {
    fields
        .iter()
        .filter(|f| !(path.len() == 1 && f.name() == &path[0]))
        .map(|f| match (f.data_type(), path) {
            (DataType::Struct(children), [head, rest @ ..])
                if f.name() == head && !rest.is_empty() =>
            {
                Arc::new(
                    f.as_ref()
                        .clone()
                        .with_data_type(DataType::Struct(drop_field(children, rest))),
                )
            }
            _ => f.clone(),
        })
        .collect()
}

fn drop_array(fields: &Fields, columns: &[ArrayRef], path: &[String]) -> Result<Vec<ArrayRef>> {
    let mut out = Vec::with_capacity(columns.len());
    for (f, c) in fields.iter().zip(columns) {
        match path {
            [only] if f.name() == only => continue,
            [head, rest @ ..] if f.name() == head && !rest.is_empty() => {
                let s = c.as_struct();
                let (child_fields, child_columns, nulls) = s.clone().into_parts();
                let kept = drop_array(&child_fields, &child_columns, rest)?;
                let kept_fields = drop_field(&child_fields, rest);
                out.push(Arc::new(
                    StructArray::try_new(kept_fields, kept, nulls)
                        .map_err(|e| arrow_error("drop", e))?,
                ) as ArrayRef);
            }
            _ => out.push(c.clone()),
        }
    }
    Ok(out)
}

impl Transform for Drop {
    fn name(&self) -> &str {
        "drop"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &|_| true)?;
        Ok(Arc::new(Schema::new(drop_field(
            input.fields(),
            self.path.segments(),
        ))))
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = self.output_schema(&batch.schema())?;
        let columns = drop_array(
            batch.schema().fields(),
            batch.columns(),
            self.path.segments(),
        )?;
        RecordBatch::try_new(schema, columns).map_err(|e| arrow_error("drop", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;

    #[test]
    fn drops_top_level_and_nested_columns() {
        let inner = StructArray::new(
            Fields::from(vec![
                Field::new("email", DataType::Utf8, true),
                Field::new("id", DataType::Int64, true),
            ]),
            vec![
                Arc::new(StringArray::from(vec!["a@b.c"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1])) as ArrayRef,
            ],
            None,
        );
        let b = RecordBatch::try_from_iter([
            ("after", Arc::new(inner) as ArrayRef),
            ("notes", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ])
        .expect("batch");
        let b = Drop {
            path: ColumnPath::parse("notes").expect("p"),
        }
        .apply(b)
        .expect("drop notes");
        let b = Drop {
            path: ColumnPath::parse("after.email").expect("p"),
        }
        .apply(b)
        .expect("drop email");
        assert_eq!(b.num_columns(), 1);
        let s = b.column(0).as_struct();
        assert_eq!(s.num_columns(), 1);
        assert_eq!(s.fields()[0].name(), "id");
        assert_eq!(b.num_rows(), 1);
    }
}
