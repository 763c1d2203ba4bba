//! A bounded run of the fuzz targets (`benches/fuzz/targets.rs`): generated and mutated
//! inputs for the decoders, the way into silver, every PII action and the config loader.
//! None may panic, be lost, or break a promise. The long runs are `cargo bench --bench
//! fuzz`.

#[path = "../../benches/fuzz/targets.rs"]
mod targets;

fn fuzz(target: &str, inputs: u64) {
    // A fixed seed keeps the suite repeatable; SLUICE_FUZZ_SEED searches elsewhere.
    let seed = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202);
    let r = targets::run(target, inputs, seed);
    eprintln!(
        "{target}: {} inputs in {:.1} s (seed {seed}): {} escaped, {} contained, {} broken",
        r.inputs, r.seconds, r.escaped, r.contained, r.broken
    );
    assert!(
        r.clean(),
        "fuzz target {target} (SLUICE_FUZZ_SEED={seed}): {} escaped, {} contained, {} broken:\n{}",
        r.escaped,
        r.contained,
        r.broken,
        r.findings.join("\n")
    );
}

#[test]
fn fuzzed_json_messages_are_rows_or_dead_letters() {
    fuzz("json", 4_000);
}

#[test]
fn fuzzed_change_events_are_rows_silver_can_take_or_dead_letters() {
    fuzz("envelope", 3_000);
}

#[test]
fn fuzzed_avro_bodies_are_rows_or_dead_letters() {
    fuzz("avro", 4_000);
}

#[test]
fn fuzzed_values_never_break_a_pii_action() {
    fuzz("actions", 1_000);
}

#[test]
fn fuzzed_configs_load_or_fail_with_problems() {
    fuzz("config", 1_500);
}
