//! A planning error said in a role's terms: DataFusion knows a column or table the role
//! may not read only as missing; the catalog says which policy keeps it from the role.

use datafusion::error::DataFusionError;

use crate::{Catalog, Error, access, limits};

/// The field of DataFusion's "No field named <qualifier>.<column>.", split.
pub(crate) fn missing_field(text: &str) -> Option<(Option<String>, String)> {
    let rest = text.split("No field named ").nth(1)?;
    // The name ends the sentence: "… named c.email.\nValid fields are …".
    let name = rest.split_whitespace().next()?.trim_end_matches('.');
    let parts: Vec<&str> = name.split('.').map(|p| p.trim_matches('"')).collect();
    let (column, qualifier) = parts.split_last()?;
    Some((
        (!qualifier.is_empty()).then(|| qualifier.join(".")),
        (*column).to_string(),
    ))
}

/// The table of DataFusion's "table '<catalog>.<layer>.<name>' not found", as `layer.name`.
pub(crate) fn missing_table(text: &str) -> Option<String> {
    let rest = text
        .split_once("table '")
        .or_else(|| text.split_once("Table '"))?
        .1;
    let name = rest.split("' not found").next()?;
    Some(name.strip_prefix("datafusion.").unwrap_or(name).to_string())
}

/// Whether planning failed because a table or view does not exist.
pub(crate) fn is_missing_table(e: &datafusion::error::DataFusionError) -> bool {
    missing_table(&e.to_string()).is_some()
}

impl Catalog {
    /// `e`, said in the role's terms when it comes from a column or table the role may
    /// not read; with its SQLSTATE when it is a refusal, a timeout or over memory.
    pub fn explain(&self, e: DataFusionError) -> Error {
        self.explain_in(e, "")
    }

    /// [`Catalog::explain`] for an error of planning `sql`.
    pub(crate) fn explain_in(&self, e: DataFusionError, sql: &str) -> Error {
        if let Some(sqlstate) = limits::sqlstate(&e) {
            return Error::Sql {
                sqlstate,
                message: limits::message(&e),
            };
        }
        match self.explain_message_in(&e.to_string(), sql) {
            Some(m) => Error::Denied(m),
            None => e.into(),
        }
    }

    /// The role's reason for an error whose text names a column or table the role may
    /// not read (DataFusion only knows it as missing); none for any other error.
    pub fn explain_message(&self, text: &str) -> Option<String> {
        self.explain_message_in(text, "")
    }

    /// [`Catalog::explain_message`] for an error of `sql`: a column named without its
    /// table is looked for first in the tables `sql` names.
    fn explain_message_in(&self, text: &str, sql: &str) -> Option<String> {
        let a = self.access.as_ref()?;
        let sql = sql.to_lowercase();
        if let Some((qualifier, column)) = missing_field(text) {
            let same_table = |d: &&&access::Denied| {
                qualifier
                    .as_deref()
                    .is_some_and(|q| d.table == q || d.table.ends_with(&format!(".{q}")))
            };
            let named: Vec<&access::Denied> =
                self.denied.iter().filter(|d| d.column == column).collect();
            let in_query = |d: &&&access::Denied| sql.contains(&d.table.to_lowercase());
            // An alias (`c.email`) names no table: a denied column of that name, of a
            // table the query reads if there is one.
            if let Some(d) = named
                .iter()
                .find(same_table)
                .or_else(|| named.iter().find(in_query))
                .or(named.first())
            {
                return Some(format!(
                    "column {} of {} is not readable by role '{}' ({})",
                    d.column, d.table, a.role, d.policy
                ));
            }
        }
        if let Some(table) = missing_table(text)
            && let Some((_, why)) = self.denied_tables.iter().find(|(t, _)| *t == table)
        {
            return Some(format!(
                "table {table} is not readable by role '{}' ({why})",
                a.role
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{missing_field, missing_table};

    #[test]
    fn errors_name_the_missing_field_and_table() {
        assert_eq!(
            missing_field("Schema error: No field named c.email. Valid fields are c.segment."),
            Some((Some("c".into()), "email".into()))
        );
        assert_eq!(
            missing_field("Schema error: No field named email.\nValid fields are x."),
            Some((None, "email".into()))
        );
        assert_eq!(
            missing_table("Error during planning: table 'datafusion.bronze.t' not found"),
            Some("bronze.t".into())
        );
    }
}
