//! Views: the definitions of a `views/` directory registered as `views.<name>`, and for
//! a role, the ones it may not read denied like tables.

use std::path::Path;

use datafusion::prelude::SessionContext;

use crate::explain::is_missing_table;
use crate::{Catalog, Error, Result, access, definitions};

/// The views of a session.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub registered: Vec<String>,
    /// Views left out, with why (they read a table that is not there).
    pub skipped: Vec<(String, String)>,
}

impl Catalog {
    /// Register each definition of `dir` as the view `views.<name>`; a view may read
    /// another. A view reading a table this lake (or this role) lacks is skipped, with
    /// the reason; any other error in a definition fails, naming its file.
    ///
    /// For a role, a view left out is denied like a table: a query naming it is told
    /// which table or column of its definition the role may not read.
    pub async fn register_views(&mut self, dir: &Path) -> Result<Views> {
        let views = register_views_in(&self.ctx, dir, self.access.as_ref()).await?;
        if let Some(a) = &self.access {
            for (view, why) in &views.skipped {
                let why = match self.explain_message(why) {
                    Some(reason) => format!("its definition reads what the role may not: {reason}"),
                    None if !a.allows_table(view) => format!("roles.{}.tables", a.role),
                    None => "its definition reads a table the lake does not hold".to_string(),
                };
                self.denied_tables.push((view.clone(), why));
            }
        }
        Ok(views)
    }
}

/// Register each definition of `dir` as the view `views.<name>` in `ctx` (see
/// [`Catalog::register_views`]).
pub(crate) async fn register_views_in(
    ctx: &SessionContext,
    dir: &Path,
    access: Option<&access::Access>,
) -> Result<Views> {
    let defs = definitions::in_dependency_order(definitions::read_dir(dir)?, "views")?;
    let mut views = Views::default();
    for d in defs {
        let name = format!("views.{}", d.name);
        if let Some(a) = access
            && !a.allows_table(&name)
        {
            views
                .skipped
                .push((name, format!("not readable by role '{}'", a.role)));
            continue;
        }
        match ctx.sql(&format!("CREATE VIEW {name} AS {}", d.sql)).await {
            Ok(_) => views.registered.push(name),
            Err(e) if is_missing_table(&e) || access.is_some() => {
                views.skipped.push((name, e.to_string()))
            }
            Err(e) => {
                return Err(Error::View {
                    path: d.path.clone(),
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(views)
}
