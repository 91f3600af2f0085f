//! What each tower-perf layer buys, in one command:
//!
//! ```text
//! cargo run --release --example showcase            # about a minute
//! cargo run --release --example showcase -- --help
//! ```
//!
//! An axum service on loopback, whose handlers query a simulated database with a limited
//! connection pool, is driven by an open-loop load generator through a steady phase, a
//! spike past the database's capacity, and a recovery. The same workload runs against the
//! bare service and then against each scenario in [`scenario`]; the results are printed as
//! one table and written to a Markdown report and an SVG chart.

mod backend;
mod chart;
mod cli;
mod load;
mod redis_server;
mod report;
mod scenario;
mod stats;
mod workload;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cli::{Command, Options};
use crate::load::Plan;
use crate::report::{Context, Row};
use crate::scenario::Scenario;

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\nRun with --help for the options.");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let plan = Plan {
        duration: options.duration,
        rate: options.rate,
        phases: workload::phases(options.spike),
        seed: options.seed,
        timeout: options.timeout,
        max_in_flight: options.max_in_flight,
    };
    // Fail before a minute of load, not after it.
    let dir = &options.out;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let n = options.scenarios.len();
    println!(
        "tower-perf showcase: {n} scenario{} × {:.1}s, {:.0} req/s with a {:.0} req/s spike, \
         {} database connections (about {:.0}s in all)\nmachine: {}\n",
        if n == 1 { "" } else { "s" },
        plan.duration.as_secs_f64(),
        plan.rate,
        plan.rate * options.spike,
        options.db_connections,
        n as f64 * (plan.duration.as_secs_f64() + 0.5),
        machine(),
    );

    let width = options
        .scenarios
        .iter()
        .map(|s| s.name().len())
        .max()
        .unwrap_or(0);
    // A private Redis for the scenarios that share a cache tier; stopped on return.
    let _redis = if options.scenarios.iter().any(|s| s.needs_redis()) {
        let server = redis_server::RedisServer::start()?;
        let _ = scenario::REDIS_URL.set(server.url.clone());
        Some(server)
    } else {
        None
    };
    let mut rows = Vec::with_capacity(n);
    for (i, &scenario) in options.scenarios.iter().enumerate() {
        let label = format!("[{}/{n}] {:<width$}", i + 1, scenario.name());
        let row = run_scenario(scenario, &plan, options.db_connections, &label).await?;
        eprintln!("[{}/{n}] {}", i + 1, row.one_line());
        rows.push(row);
    }

    println!("\n{}", report::terminal(&rows));
    let (markdown, svg) = write_results(&options, &plan, &rows)?;
    println!("report: {}\nchart:  {}", markdown.display(), svg.display());
    Ok(())
}

/// Serves a fresh backend wrapped in `scenario`'s layers on loopback and drives `plan`
/// against it.
async fn run_scenario(
    scenario: Scenario,
    plan: &Plan,
    db_connections: usize,
    label: &str,
) -> Result<Row, String> {
    let backend = backend::Backend::new(db_connections, plan.seed);
    let built = scenario::build(scenario, backend::app(Arc::clone(&backend)));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, built.router).await });

    let live = {
        let (backend, layers) = (Arc::clone(&backend), built.live);
        move || match &layers {
            Some(probe) => format!("{}  | {}", backend.pool_status(), probe()),
            None => backend.pool_status(),
        }
    };
    let run = load::run(addr, plan, label, Box::new(live)).await;
    server.abort();
    let notes = built
        .notes
        .map(|probe| probe().lines().map(str::to_owned).collect());
    Ok(Row::new(
        scenario,
        &run,
        plan,
        &backend,
        notes.unwrap_or_default(),
    ))
}

/// Writes the Markdown report and the SVG chart; returns their paths.
fn write_results(
    options: &Options,
    plan: &Plan,
    rows: &[Row],
) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let dir = &options.out;
    let (md_path, svg_path) = (dir.join("showcase.md"), dir.join("latency.svg"));
    let subtitle = format!(
        "{:.0} req/s base, {:.0} req/s spike, {:.0}s per scenario, {} database connections; {}",
        plan.rate,
        plan.rate * options.spike,
        plan.duration.as_secs_f64(),
        options.db_connections,
        machine()
    );
    let context = Context {
        command: command_line(),
        machine: machine(),
        date: utc_now(),
        db_connections: options.db_connections,
        chart: "latency.svg".to_owned(),
    };
    write(&svg_path, &chart::svg(rows, &subtitle))?;
    write(&md_path, &report::markdown(rows, plan, &context))?;
    Ok((md_path, svg_path))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release --example showcase".to_owned();
    if !args.is_empty() {
        command = format!("{command} -- {}", args.join(" "));
    }
    command
}

/// CPU model and core count as far as the OS tells us, plus OS and architecture.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!(
        "{model}, {cores} cores available, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`, without a date-time dependency.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator, the server and the backend's counters agree over real TCP.
    #[tokio::test]
    async fn a_short_bare_run_adds_up() {
        let plan = Plan {
            duration: std::time::Duration::from_millis(400),
            rate: 100.0,
            phases: workload::phases(2.0),
            seed: 7,
            timeout: std::time::Duration::from_secs(10),
            max_in_flight: 1_000,
        };
        let row = run_scenario(Scenario::Bare, &plan, 8, "test")
            .await
            .unwrap();
        assert!(row.sent > 0);
        assert_eq!((row.ok, row.shed, row.errors), (row.sent, 0, 0));
        assert_eq!(
            row.backend_calls, row.sent,
            "bare: every request reaches the backend"
        );
        assert_eq!(row.hit_ratio, None, "no cache, no Cache-Status");
        assert_eq!(row.latency.map(|l| l.count as u64), Some(row.ok));
        let per_route: u64 = row.by_route.iter().map(|(_, _, calls)| calls).sum();
        assert_eq!(per_route, row.backend_calls);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
