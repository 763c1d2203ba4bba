//! Printing query results for people (`table`) and machines (`csv`, `json`, `jsonl`,
//! `parquet`), to standard output or a file.

use std::io::Write;
use std::path::Path;

use arrow::array::RecordBatch;

/// Output format of commands that print rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A Parquet file (with --out, or to a redirected standard output).
    Parquet,
}

/// Print `batches` to stdout in `format`.
pub fn print(batches: &[RecordBatch], format: Format) -> anyhow::Result<()> {
    write(batches, format, &mut std::io::stdout().lock())
}

/// Write `batches` in `format` to `out`, or to stdout when none; a file is written whole
/// or not at all.
pub fn print_to(batches: &[RecordBatch], format: Format, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = out else {
        return print(batches, format);
    };
    let partial = path.with_extension("partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    write(batches, format, &mut file)?;
    file.flush()?;
    drop(file);
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?,
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
        }
        Format::Parquet => {
            let Some(first) = batches.first() else {
                anyhow::bail!("no rows: nothing to write as Parquet");
            };
            // The writer needs a `Send` sink; standard output's lock is not one.
            let mut buffer = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buffer, first.schema(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
            out.write_all(&buffer)?;
        }
    }
    Ok(())
}
