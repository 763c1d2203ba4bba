//! The fuzz bench: millions of generated and mutated inputs per target, on stable Rust
//! (see `fuzz/targets.rs`), reporting inputs tried, inputs per second and what was found.
//!
//! ```sh
//! cargo bench --bench fuzz -- --inputs 10000000            # every target
//! cargo bench --bench fuzz -- --target json --inputs 1000000 --seed 7
//! cargo bench --bench fuzz -- --target actions --inputs 10000000 --threads 2
//! ```
//!
//! With `--threads N` each target's inputs are split among N threads, thread `t`
//! generating from seed `seed + t` (inputs per second are then for all threads).
//!
//! Exits 1 when any target found anything (a panic that escaped, a contained one, a
//! broken promise), printing the first inputs that did it.

#[path = "fuzz/targets.rs"]
mod targets;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut inputs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut only: Vec<String> = Vec::new();
    let mut threads: u64 = 1;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--inputs" => inputs = value().replace('_', "").parse().unwrap_or(inputs),
            "--seed" => seed = value().parse().unwrap_or(seed),
            "--target" => only.push(value()),
            "--threads" => threads = value().parse().unwrap_or(threads).max(1),
            // Flags cargo bench passes on.
            _ => {}
        }
    }
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>8} {:>10} {:>7}",
        "target", "inputs", "seconds", "inputs/s", "escaped", "contained", "broken"
    );
    let mut clean = true;
    for target in targets::TARGETS {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let r = run(target, inputs, seed, threads);
        println!(
            "{:<10} {:>12} {:>10.1} {:>12.0} {:>8} {:>10} {:>7}",
            r.target,
            r.inputs,
            r.seconds,
            r.inputs as f64 / r.seconds.max(1e-9),
            r.escaped,
            r.contained,
            r.broken
        );
        for f in &r.findings {
            println!("  finding: {f}");
        }
        clean &= r.clean();
    }
    if !clean {
        std::process::exit(1);
    }
}

/// `target` over `inputs` inputs split among `threads` threads.
fn run(target: &str, inputs: u64, seed: u64, threads: u64) -> targets::Report {
    if threads == 1 {
        return targets::run(target, inputs, seed);
    }
    let started = std::time::Instant::now();
    let parts: Vec<targets::Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = inputs / threads + u64::from(t < inputs % threads);
                scope.spawn(move || targets::run(target, share, seed + t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fuzz thread ended by a panic"))
            .collect()
    });
    let mut all = targets::Report::default();
    for r in parts {
        all.target = r.target;
        all.inputs += r.inputs;
        all.escaped += r.escaped;
        all.contained += r.contained;
        all.broken += r.broken;
        all.findings.extend(r.findings);
    }
    all.seconds = started.elapsed().as_secs_f64();
    all
}
