//! The one error type of `sluice-pipeline`.

use std::path::PathBuf;

/// Errors raised while loading configuration or driving a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The configuration is invalid; every problem found is listed.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, crate::config::check::render_problems(.0))]
    Config(Vec<crate::config::check::Problem>),

    /// A transform's input does not fit its policy; raised at start-up, before data moves.
    #[error("transform '{transform}' cannot apply to table '{table}': {reason}")]
    TransformSchema {
        transform: String,
        table: String,
        reason: String,
    },

    /// A transform failed on a batch.
    #[error("transform '{transform}' failed: {source}")]
    Transform {
        transform: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// The sink failed; the pipeline stops so nothing is acknowledged that was not written.
    /// The sink's own error (a Delta commit, an object store, …) is the source.
    #[error("sink failed: {0}")]
    Sink(#[source] BoxError),

    /// The source failed in a way it cannot recover from; its own error (Kafka's) is the
    /// source.
    #[error("source failed: {0}")]
    Source(#[source] BoxError),

    /// Where to resume could not be read (see [`crate::checkpoints`]): the store's own
    /// error, as it is.
    #[error(transparent)]
    Checkpoints(BoxError),
}

/// An error of another crate carried as a source (this crate knows no connector's types).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error` with the message values it quotes replaced by `<value>`: double-quoted
/// strings, `{...}` and `[...]` fragments and numbers. Field names (single-quoted) and
/// type names stay, so the error still says what is wrong and where.
pub fn scrub_values(error: &str) -> String {
    let mut out = String::with_capacity(error.len());
    let mut chars = error.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("<value>");
            }
            '{' | '[' => {
                let mut depth = 1;
                for c in chars.by_ref() {
                    match c {
                        '{' | '[' => depth += 1,
                        '}' | ']' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                }
                out.push_str("<value>");
            }
            c if (c.is_ascii_digit() || c == '-')
                && !out.ends_with(|p: char| p.is_alphanumeric() || p == '_') =>
            {
                let mut token = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || matches!(n, '.' | '+' | '-' | ':') {
                        token.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if token.chars().any(|c| c.is_ascii_digit()) {
                    out.push_str("<value>");
                } else {
                    out.push_str(&token);
                }
            }
            c => out.push(c),
        }
    }
    out
}
