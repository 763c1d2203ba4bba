//! `sluice sql` without a query: a SQL shell over the session (role and time travel
//! applied). On a terminal it edits lines with history (`~/.sluice_history`); from a
//! pipe it reads the statements of standard input. A statement ends with `;` at the end
//! of a line and may span lines. `\d` lists the tables and views, `\d <table>` its
//! columns, `\q` quits.

use std::io::{BufRead, IsTerminal};

use sluice_sql::Catalog;

use crate::output::{self, Format};

/// What one line does to the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    /// A complete statement to run.
    Statement(String),
    /// A meta command (`\d`, `\d t`, `\q`, …).
    Meta(String),
    /// More lines are needed.
    Pending,
}

/// Gathers lines into statements.
#[derive(Debug, Default)]
struct Reader {
    buffer: String,
}

impl Reader {
    fn push(&mut self, line: &str) -> Input {
        let trimmed = line.trim();
        if self.buffer.is_empty() && trimmed.starts_with('\\') {
            return Input::Meta(trimmed.to_string());
        }
        if self.buffer.is_empty() && trimmed.is_empty() {
            return Input::Pending;
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        if trimmed.ends_with(';') {
            let statement = std::mem::take(&mut self.buffer);
            let statement = statement.trim().trim_end_matches(';').trim().to_string();
            if statement.is_empty() {
                return Input::Pending;
            }
            return Input::Statement(statement);
        }
        Input::Pending
    }

    /// What is left at the end of input, as a last statement.
    fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim().trim_end_matches(';').trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    fn pending(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// A name safe to put in a SQL string literal.
fn quoted(text: &str) -> String {
    text.replace('\'', "''")
}

/// Run a meta command; false when the shell should stop.
async fn meta(catalog: &Catalog, command: &str, format: Format) -> anyhow::Result<bool> {
    let mut words = command.split_whitespace();
    match (words.next(), words.next()) {
        (Some("\\q"), _) => return Ok(false),
        (Some("\\d"), None) => {
            let rows = catalog
                .query(
                    "SELECT table_schema || '.' || table_name AS name, lower(table_type) AS kind \
                     FROM information_schema.tables \
                     WHERE table_schema NOT IN ('information_schema') ORDER BY name",
                )
                .await?;
            output::print(&rows, format)?;
        }
        (Some("\\d"), Some(table)) => {
            let (schema, name) = table.split_once('.').unwrap_or(("", table));
            let rows = catalog
                .query(&format!(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                     WHERE table_schema = '{}' AND table_name = '{}' ORDER BY ordinal_position",
                    quoted(schema),
                    quoted(name)
                ))
                .await?;
            if rows.iter().all(|b| b.num_rows() == 0) {
                anyhow::bail!("no table {table} in this session");
            }
            output::print(&rows, format)?;
        }
        _ => anyhow::bail!("unknown command {command}: \\d, \\d <layer.table>, \\q"),
    }
    Ok(true)
}

/// Run one input; errors are printed and the shell goes on. False when it should stop.
async fn run(catalog: &Catalog, input: Input, format: Format) -> (bool, bool) {
    let result = match input {
        Input::Pending => return (true, true),
        Input::Meta(m) => meta(catalog, &m, format).await,
        Input::Statement(s) => match catalog.query(&s).await {
            Ok(rows) => output::print(&rows, format).map(|()| true),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(go_on) => (go_on, true),
        Err(e) => {
            eprintln!("error: {e:#}");
            (true, false)
        }
    }
}

/// The shell; fails (exit 1) when a statement read from a pipe failed.
pub async fn shell(catalog: &Catalog, format: Format) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        return interactive(catalog, format).await;
    }
    let mut reader = Reader::default();
    let mut failed = 0usize;
    for line in std::io::stdin().lock().lines() {
        let (go_on, ok) = run(catalog, reader.push(&line?), format).await;
        failed += usize::from(!ok);
        if !go_on {
            return finish(failed);
        }
    }
    if let Some(last) = reader.finish() {
        let (_, ok) = run(catalog, Input::Statement(last), format).await;
        failed += usize::from(!ok);
    }
    finish(failed)
}

fn finish(failed: usize) -> anyhow::Result<()> {
    if failed > 0 {
        anyhow::bail!("{failed} statement(s) failed");
    }
    Ok(())
}

async fn interactive(catalog: &Catalog, format: Format) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".sluice_history"));
    if let Some(h) = &history {
        // A first session has no history yet.
        let _ = editor.load_history(h);
    }
    eprintln!(
        "sluice sql: statements end with ';'. \\d lists tables, \\d <table> its columns, \\q quits."
    );
    let mut reader = Reader::default();
    loop {
        let prompt = if reader.pending() {
            "   ...> "
        } else {
            "sluice> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let input = reader.push(&line);
                if !matches!(input, Input::Pending) {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !run(catalog, input, format).await.0 {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => {
                reader = Reader::default();
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_with_a_semicolon_and_may_span_lines() {
        let mut r = Reader::default();
        assert_eq!(r.push("select 1,"), Input::Pending);
        assert!(r.pending());
        assert_eq!(r.push("  2;"), Input::Statement("select 1,\n  2".into()));
        assert_eq!(r.push(""), Input::Pending);
        assert_eq!(
            r.push("\\d silver.customers"),
            Input::Meta("\\d silver.customers".into())
        );
        assert_eq!(r.push("select 3"), Input::Pending);
        assert_eq!(r.finish(), Some("select 3".into()));
        assert_eq!(r.push(";"), Input::Pending);
    }
}
