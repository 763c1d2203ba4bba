//! `[schedule]`: cron expressions of the jobs `sluice schedule` runs.
//!
//! ```toml
//! [schedule]
//! maintain = "0 3 * * *"        # every day at 03:00 UTC
//! ```
//!
//! Five fields (`min hour day month weekday`, UTC) or six with seconds first. Weekdays are
//! best given by name (`MON-FRI`): as numbers they count from 1 = Sunday.

use std::collections::BTreeMap;
use std::str::FromStr;

use cron::Schedule;

use super::check::Problem;

/// Jobs `sluice schedule` can run.
pub const SCHEDULABLE: [&str; 4] = ["maintain", "snapshot", "anonymise", "gold"];

/// Parse a five- or six-field cron expression.
pub fn parse(expression: &str) -> Result<Schedule, String> {
    let fields = expression.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expression}"),
        6 => expression.to_string(),
        n => {
            return Err(format!(
                "'{expression}' has {n} fields: give five (min hour day month weekday) or six (seconds first)"
            ));
        }
    };
    Schedule::from_str(&full).map_err(|e| format!("'{expression}': {e}"))
}

/// Problems of the `[schedule]` section: each job of `schedule` must exist and its
/// expression parse.
pub(crate) fn validate(schedule: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut p = Vec::new();
    for (job, expression) in schedule {
        let at = format!("schedule.{job}");
        if !SCHEDULABLE.contains(&job.as_str()) {
            p.push(Problem::new(
                &at,
                format!("no job '{job}' (jobs: {})", SCHEDULABLE.join(", ")),
            ));
        }
        if let Err(e) = parse(expression) {
            p.push(Problem::new(&at, e));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn expressions_take_five_or_six_fields_and_jobs_must_exist() {
        assert!(parse("*/5 * * * *").is_ok());
        assert!(parse("*/10 * * * * *").is_ok());
        assert!(parse("0 3 * *").expect_err("four").contains("4 fields"));
        assert!(parse("0 25 * * *").is_err());
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [schedule]\nmaintain = \"0 3 * *\"\nerase = \"0 4 * * *\"\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("schedule.maintain: '0 3 * *' has 4 fields"),
            "{all}"
        );
        assert!(all.contains("schedule.erase: no job 'erase'"), "{all}");
    }
}
