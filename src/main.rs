//! `sluice`: Kafka → Delta Lake with exactly-once offsets. See the README and docs/ for a tour.

mod bench;
mod demo;
mod job;
mod ops;
mod output;
mod policy;
mod reveal;
mod run;
mod schedule;
mod serve;
mod shell;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_jobs::JobContext;
use sluice_jobs::clock::SystemClock;
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;

use crate::output::Format;

/// Log filter when `SLUICE_LOG` is unset. delta-rs reports expected events loudly (a
/// skipped statistics column per file, a refused commit that sluice retries, a MERGE metric
/// it derives itself); the Delta
/// kernel logs an error for every probe of a table not yet created. Failures still
/// reach the user as errors.
const DEFAULT_LOG_FILTER: &str = "info,deltalake=warn,deltalake_core=warn,deltalake_core::writer::stats=error,\
     deltalake_core::operations::merge=error,deltalake_core::kernel::transaction=off,datafusion=warn,buoyant_kernel=off";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Streaming lakehouse pipeline: Kafka to Delta Lake, exactly once"
)]
struct Cli {
    /// Configuration file (default: ./sluice.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Root of the lake: a directory, or an object store (s3://bucket/prefix,
    /// abfss://container@account.dfs.core.windows.net/prefix, gs://bucket/prefix);
    /// overrides `pipeline.lake` (default: ./lake). `SLUICE_LAKE` in the environment sets it too.
    #[arg(long, global = true, env = "SLUICE_LAKE", value_name = "DIR|URL", value_parser = Lake::parse)]
    lake: Option<Lake>,
    /// Output format for results.
    #[arg(long, global = true, value_enum, default_value_t)]
    format: Format,
    /// Log lines on stderr: `text`, or `json` (one object per line, with fields such as
    /// table, topic, partition; never message keys or values).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SLUICE_LOG_FORMAT",
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume Kafka into bronze Delta tables until SIGTERM or SIGINT, then commit and exit.
    Run {
        /// Stop once every assigned partition has been read to its end.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Run the pipeline end to end on an embedded Kafka broker with synthetic bank data.
    Demo {
        /// Print the built-in demo configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Check a configuration file, listing every problem at once.
    ValidateConfig {
        /// The file (default: --config, then ./sluice.toml).
        file: Option<PathBuf>,
    },
    /// Run a SQL query over every table of the lake (`bronze.<table>`, `sluice.dead_letters`, ...).
    Sql {
        /// The query; without one, a shell reads statements (from a terminal with line
        /// editing and history, or from standard input).
        query: Option<String>,
        /// List the tables with their row counts.
        #[arg(long)]
        tables: bool,
        /// Read as this role of `[roles]`: only its tables, without its denied columns
        /// and rows.
        #[arg(long)]
        role: Option<String>,
        /// Read a table at a version: `layer.name=VERSION`; repeatable.
        #[arg(long = "version", value_name = "TABLE=VERSION")]
        versions: Vec<String>,
        /// Read every other table as it was at this time (RFC 3339, e.g.
        /// 2026-11-22T10:00:00Z); tables created later are left out.
        #[arg(long)]
        as_of: Option<String>,
        /// Write the result to this file (whole or not at all) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Serve the lake over the Postgres wire protocol (psql, BI tools, drivers) to the
    /// users of [serve.users], each reading as its role, until SIGTERM or SIGINT.
    Serve {
        /// host:port to listen on (default: [serve] address, else 127.0.0.1:5433; port 0
        /// picks a free one, printed on start).
        #[arg(long)]
        address: Option<String>,
    },
    /// Measure end-to-end ingest throughput on this machine.
    Bench(bench::BenchArgs),
    /// Run a batch job once (for cron, a Kubernetes CronJob, Airflow); every run is
    /// recorded in sluice.job_runs.
    Job {
        #[command(subcommand)]
        job: JobCommand,
    },
    /// Run the jobs of [schedule] at their cron times (UTC) until SIGTERM or SIGINT.
    Schedule,
    /// Audit the lake's records.
    Audit {
        #[command(subcommand)]
        audit: AuditCommand,
    },
    /// Reverse format-preserving encryption and per-subject encryption, or open sealed dead
    /// letters, with the key.
    ///
    /// `sluice reveal --table T --column C VALUE...` decrypts values of an `encrypt_fpe` or
    /// `encrypt` column (from stdin, one per line, when no value is given); an `encrypt`
    /// value whose subject was erased fails to open; `sluice reveal
    /// --dead-letters [--where PREDICATE]` prints dead letters with key and payload opened.
    /// Only the key the command needs is read.
    Reveal {
        #[arg(long, requires = "column", conflicts_with = "dead_letters")]
        table: Option<String>,
        #[arg(long, requires = "table")]
        column: Option<String>,
        /// Values to decrypt.
        values: Vec<String>,
        #[arg(long)]
        dead_letters: bool,
        /// SQL predicate over the dead-letter table, e.g. "kafka_topic = 'customers'".
        #[arg(long = "where", requires = "dead_letters")]
        filter: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum JobCommand {
    /// Retention deletes, compaction to the target file size, vacuum and checkpoints, per
    /// table as `[maintenance]` says (every table, or those given).
    Maintain {
        /// Only this table (`layer.name`, e.g. bronze.card_transactions); repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Pin every silver and gold table (as `[snapshot]` says) at its current version,
    /// record row counts, checksums and the invariants' results in sluice.snapshots;
    /// exit 1 naming the violating keys when an invariant fails.
    Snapshot,
    /// Build every gold table from the definitions in `[sql] gold_dir` (one query per
    /// `<name>.sql`, views of `views_dir` available), each replaced whole in one commit.
    Gold {
        /// Only this table (`gold.<name>`); repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Anonymise aged rows in place as `[anonymise.tables]` says (identifiers nulled,
    /// quasi-identifiers generalised, older versions purged), then check k-anonymity of
    /// `[anonymise.publish]` tables and write those that pass; exit 1 if one is refused.
    Anonymise {
        /// Only this table (`layer.name`); repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Right to be forgotten: remove every row holding each subject from every table,
    /// purge the files and log entries that held it (older versions included) and write
    /// a certificate to sluice.erasures. Subjects are found raw or by their pseudonyms
    /// under the PII policy's keys, in the columns `[erasure]` names.
    Erase {
        /// Subject identifiers (e.g. customer ids). Prefer --file: arguments show in
        /// process listings and shell history.
        subjects: Vec<String>,
        /// A file of subject identifiers, one per line (`-`: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Request id recorded in each certificate (default: erase-<time>).
        #[arg(long)]
        request_id: Option<String>,
        /// Erase nothing: read every byte of every file of the lake (data files decoded,
        /// log, checkpoints, dead letters opened) and exit 1 if a subject is found.
        #[arg(long)]
        verify: bool,
        /// Carry out the requests waiting on `[erasure] requests_topic`, committing each
        /// in Kafka once its certificate is written.
        #[arg(long, conflicts_with_all = ["subjects", "file", "verify", "request_id"])]
        requests: bool,
        /// Change nothing: list, per table, the rows, files and log entries that would go.
        #[arg(long, conflicts_with_all = ["verify", "requests"])]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum AuditCommand {
    /// Check the chain of sluice.job_runs (seals under the audit key of [audit] key_env
    /// when set): exit 1 if a run was changed, removed or reordered, or resealed without
    /// the key.
    Verify {
        /// A seal printed earlier by `sluice audit head`: the chain must still hold it
        /// (so runs cut off the end, or a chain rewritten whole, are found).
        #[arg(long, value_name = "SEAL")]
        head: Option<String>,
    },
    /// Print the seal of the last run of sluice.job_runs, to keep outside the lake (with
    /// --format json: the number of runs, the last run's id and whether it is keyed).
    Head,
}

/// An error with its exit code: 2 for usage and configuration, 1 for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

/// `--version TABLE=N` and `--as-of TIME`, checked.
fn time_travel(versions: &[String], as_of: Option<&str>) -> anyhow::Result<sluice_sql::TimeTravel> {
    let mut travel = sluice_sql::TimeTravel::default();
    for v in versions {
        let (table, version) = v
            .split_once('=')
            .and_then(|(t, n)| Some((t, n.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                anyhow::anyhow!("--version {v}: give layer.name=VERSION, e.g. silver.customers=12")
            })?;
        travel.versions.insert(table.to_string(), version);
    }
    if let Some(at) = as_of {
        chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
            anyhow::anyhow!("--as-of {at}: not an RFC 3339 time ({e}), e.g. 2026-11-22T10:00:00Z")
        })?;
        travel.as_of = Some(at.to_string());
    }
    Ok(travel)
}

/// The limits of `[roles.<role>]`, with the column tags the configuration knows.
fn access_for(config: Option<&Config>, role: &str) -> anyhow::Result<sluice_sql::access::Access> {
    let config = config.ok_or_else(|| {
        anyhow::anyhow!("--role needs a configuration with a [roles.{role}] section")
    })?;
    let r = config
        .roles
        .get(role)
        .ok_or_else(|| anyhow::anyhow!("no role '{role}' in [roles]"))?;
    Ok(sluice_sql::access::Access {
        role: role.to_string(),
        tables: r.tables.clone(),
        deny_tags: r.deny_tags.clone(),
        deny_columns: r.deny_columns.clone(),
        row_filters: r.row_filters.clone(),
        tags: config.column_tags(),
        sources: config.table_sources(),
        allow_derived: r.allow_derived.clone(),
        gold_dir: Some(config.sql.gold_dir.clone()),
        views_dir: Some(config.sql.views_dir.clone()),
    })
}

fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

/// `error` and its causes joined by `: ` (as anyhow's `{:#}` does), each cause left out
/// when the text before it already ends with it: sluice's errors keep their source and
/// quote it at the end of their own text too. (A cause that only appears inside the text,
/// a short word such as "timeout", is still said.)
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if !said.is_empty() && text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// Exit 2 for configuration problems found at start-up (a missing key, a policy naming a
/// column the data lacks), 1 for anything else.
fn config_failure(error: anyhow::Error) -> Failure {
    let is_config = error.chain().any(|e| {
        matches!(
            e.downcast_ref::<sluice_pipeline::Error>(),
            Some(
                sluice_pipeline::Error::Config(_) | sluice_pipeline::Error::TransformSchema { .. }
            )
        )
    });
    Failure {
        code: if is_config { 2 } else { 1 },
        error,
    }
}

fn config_path(cli: &Cli, explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| cli.config.clone())
        .or_else(|| {
            Path::new("sluice.toml")
                .exists()
                .then(|| PathBuf::from("sluice.toml"))
        })
}

/// The configuration if there is one; otherwise the defaults (for jobs, which need none).
fn config_or_defaults(cli: &Cli) -> Result<Config, Failure> {
    match config_path(cli, None) {
        Some(p) => load_config(&p),
        None => Ok(Config::default()),
    }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| usage(anyhow::anyhow!("{}: {e}", path.display())))
}

/// The lake: `--lake`, else `pipeline.lake`, else `./lake` (both checked when parsed: by
/// the argument's parser and the config's validation).
fn lake(cli: &Cli, config: Option<&Config>) -> Lake {
    cli.lake
        .clone()
        .or_else(|| {
            config
                .and_then(|c| c.pipeline.lake.as_deref())
                .and_then(|l| Lake::parse(l).ok())
        })
        .unwrap_or_else(|| Lake::Local(PathBuf::from("lake")))
}

/// What the jobs run in: the lake, and the system's clock.
fn job_context(lake: Lake) -> JobContext {
    JobContext::new(lake, std::sync::Arc::new(SystemClock))
}

async fn execute(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Run { until_caught_up } => {
            let path = config_path(&cli, None).ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "no configuration: pass --config FILE or create ./sluice.toml"
                ))
            })?;
            let config = load_config(&path)?;
            let lake = lake(&cli, Some(&config));
            let stop = run::stop_on_signals();
            let summary = run::run_pipeline(&config, &lake, *until_caught_up, stop)
                .await
                .map_err(config_failure)?;
            match cli.format {
                Format::Json => println!("{}", serde_json::to_string(&summary)?),
                _ => eprintln!(
                    "sluice: {} messages → {} rows, {} dead letters in {} commits; {:.1} cpu-s, peak RSS {} MiB",
                    summary.messages,
                    summary.rows,
                    summary.dead_letters,
                    summary.commits,
                    summary.cpu_seconds,
                    summary.peak_rss_bytes / 1_048_576
                ),
            }
        }
        Command::Demo { print_config } => {
            if *print_config {
                print!("{}", demo::DEMO_CONFIG);
                return Ok(());
            }
            let config = match config_path(&cli, None) {
                Some(p) => Some(load_config(&p)?),
                None => None,
            };
            let lake = lake(&cli, config.as_ref());
            demo::demo(config, &lake, cli.format).await?;
        }
        Command::ValidateConfig { file } => {
            let path = config_path(&cli, file.as_deref())
                .ok_or_else(|| usage(anyhow::anyhow!("no configuration file given")))?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))
                .map_err(usage)?;
            let checked = Config::from_toml(&text).and_then(|c| {
                let mut problems = c.kafka.resolved_properties().err().unwrap_or_default();
                problems.extend(policy::prepare(&c).err().unwrap_or_default());
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems)
                }
            });
            match checked {
                Ok(()) => println!("{}: valid", path.display()),
                Err(problems) => {
                    for p in &problems {
                        println!("{}: {p}", path.display());
                    }
                    return Err(usage(anyhow::anyhow!(
                        "{} problem(s) in {}",
                        problems.len(),
                        path.display()
                    )));
                }
            }
        }
        Command::Sql {
            query,
            tables,
            role,
            versions,
            as_of,
            out,
        } => {
            let config = match config_path(&cli, None) {
                Some(p) => Some(load_config(&p)?),
                None => None,
            };
            let lake = lake(&cli, config.as_ref());
            let access = match role {
                None => None,
                Some(role) => Some(access_for(config.as_ref(), role).map_err(usage)?),
            };
            let travel = time_travel(versions, as_of.as_deref()).map_err(usage)?;
            let mut catalog = sluice_sql::Catalog::open_at(&lake, access, &travel).await?;
            let views = config.as_ref().map_or_else(
                || sluice_pipeline::config::sql::SqlConfig::default().views_dir,
                |c| c.sql.views_dir.clone(),
            );
            for (view, why) in catalog.register_views(&views).await?.skipped {
                tracing::debug!(view, reason = %why, "view not registered");
            }
            if *tables {
                let mut rows = Vec::new();
                for t in catalog.tables() {
                    rows.push(format!("{}\t{}", t.qualified(), catalog.count(t).await?));
                }
                println!("{}", rows.join("\n"));
            } else if let Some(q) = query.as_deref() {
                let batches = catalog.query(q).await.map_err(|e| usage(e.into()))?;
                output::print_to(&batches, cli.format, out.as_deref())?;
            } else {
                shell::shell(&catalog, cli.format).await?;
            }
        }
        Command::Serve { address } => {
            let path = config_path(&cli, None).ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "no configuration: pass --config FILE with [serve.users.<name>] sections"
                ))
            })?;
            let config = load_config(&path)?;
            let lake = lake(&cli, Some(&config));
            serve::serve(&config, &lake, address.as_deref(), run::stop_on_signals()).await?;
        }
        Command::Bench(args) => bench::bench(args.clone()).await?,
        Command::Job {
            job: JobCommand::Maintain { tables },
        } => {
            let config = config_or_defaults(&cli)?;
            let cx = job_context(lake(&cli, Some(&config)));
            job::maintain(&config, &cx, tables, cli.format).await?;
        }
        Command::Schedule => {
            let path = config_path(&cli, None).ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "no configuration: pass --config FILE with a [schedule] section"
                ))
            })?;
            let config = load_config(&path)?;
            let cx = job_context(lake(&cli, Some(&config)));
            schedule::schedule(&config, &cx, run::stop_on_signals())
                .await
                .map_err(config_failure)?;
        }
        Command::Job {
            job: JobCommand::Snapshot,
        } => {
            let config = config_or_defaults(&cli)?;
            let cx = job_context(lake(&cli, Some(&config)));
            job::snapshot(&config, &cx, cli.format).await?;
        }
        Command::Job {
            job: JobCommand::Gold { tables },
        } => {
            let config = config_or_defaults(&cli)?;
            let cx = job_context(lake(&cli, Some(&config)));
            job::gold(&config, &cx, tables, cli.format).await?;
        }
        Command::Job {
            job: JobCommand::Anonymise { tables },
        } => {
            let config = config_or_defaults(&cli)?;
            let cx = job_context(lake(&cli, Some(&config)));
            job::anonymise(&config, &cx, tables, cli.format).await?;
        }
        Command::Job {
            job:
                JobCommand::Erase {
                    subjects,
                    file,
                    request_id,
                    verify,
                    requests,
                    dry_run,
                },
        } => {
            let config = config_or_defaults(&cli)?;
            let cx = job_context(lake(&cli, Some(&config)));
            if *requests {
                return Ok(job::erase_requests(&config, &cx, cli.format).await?);
            }
            let subjects = job::subjects(subjects, file.as_deref()).map_err(usage)?;
            job::check_subjects(&config, &subjects).map_err(usage)?;
            // The policy's keys are read once, for the check and the run.
            let found = job::find_subjects(&config, &subjects).map_err(usage)?;
            job::check_request_id(&found, request_id.as_deref()).map_err(usage)?;
            if *verify {
                job::erase_verify(&config, &cx, &subjects, &found, cli.format).await?;
            } else {
                job::erase(
                    &config,
                    &cx,
                    &subjects,
                    found,
                    request_id.as_deref(),
                    *dry_run,
                    cli.format,
                )
                .await?;
            }
        }
        Command::Audit { audit } => {
            let config = config_or_defaults(&cli)?;
            let lake = lake(&cli, Some(&config));
            match audit {
                AuditCommand::Verify { head } => {
                    job::verify(&config, &lake, head.as_deref()).await?
                }
                AuditCommand::Head => job::head(&lake, cli.format).await?,
            }
        }
        Command::Reveal {
            table,
            column,
            values,
            dead_letters,
            filter,
        } => {
            let path = config_path(&cli, None).ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "no configuration: reveal reads the policy and its keys from --config FILE"
                ))
            })?;
            let config = load_config(&path)?;
            match (table, column, dead_letters) {
                (Some(t), Some(c), false) => {
                    let lake = lake(&cli, Some(&config));
                    reveal::column_values(&config, &lake, t, c, values)
                        .await
                        .map_err(config_failure)?
                }
                (None, None, true) => {
                    let lake = lake(&cli, Some(&config));
                    reveal::dead_letters(&config, &lake, filter.as_deref(), cli.format)
                        .await
                        .map_err(config_failure)?
                }
                _ => {
                    return Err(usage(anyhow::anyhow!(
                        "give --table and --column with values, or --dead-letters"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Panics are contained where input is handled; their messages may quote values.
    sluice_pipeline::panic::install_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("sluice: error: {}", error_text(&error));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_text_says_each_cause_once() {
        // A job's error quoting its source, which it also keeps as its source.
        let source = std::io::Error::other("disk full");
        let typed = sluice_jobs::Error::Io {
            path: PathBuf::from("/lake/x"),
            source,
        };
        let e = anyhow::Error::from(typed).context("sluice job snapshot");
        assert_eq!(
            format!("{e:#}"),
            "sluice job snapshot: /lake/x: disk full: disk full"
        );
        assert_eq!(error_text(&e), "sluice job snapshot: /lake/x: disk full");
        // Causes not in the text before are kept, in order.
        let plain = anyhow::anyhow!("no such table").context("gold");
        assert_eq!(error_text(&plain), "gold: no such table");
        // A short cause that only appears inside the text before is still said.
        let inner = anyhow::anyhow!("timeout").context("a timeout of 5 s was set; the broker");
        assert_eq!(
            error_text(&inner),
            "a timeout of 5 s was set; the broker: timeout"
        );
    }
}
