//! Printing query results for people (`table`) and machines (`csv`, `json`).

use arrow::array::RecordBatch;

/// Output format of commands that print rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

/// Print `batches` to stdout in `format`.
pub fn print(batches: &[RecordBatch], format: Format) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    match format {
        Format::Table => println!("{}", arrow::util::pretty::pretty_format_batches(batches)?),
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(stdout.lock());
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(stdout.lock());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
            println!();
        }
    }
    Ok(())
}
