//! Command-line flags, parsed by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::scenario::Scenario;

/// Everything a run is configured with.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    pub(crate) duration: Duration,
    pub(crate) rate: f64,
    pub(crate) spike: f64,
    pub(crate) db_connections: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_in_flight: u64,
    pub(crate) out: PathBuf,
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(8),
            rate: 250.0,
            spike: 2.0,
            db_connections: 8,
            timeout: Duration::from_secs(5),
            max_in_flight: 2_000,
            out: PathBuf::from("showcase-results"),
            scenarios: Scenario::ALL.to_vec(),
            seed: 1,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    Run(Options),
    Help,
}

pub(crate) fn help() -> String {
    let d = Options::default();
    let scenarios: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    let about: String = Scenario::ALL
        .iter()
        .map(|s| format!("    {:<12}{}\n", s.name(), s.about()))
        .collect();
    format!(
        "\
tower-perf showcase: one axum service over a simulated database, driven by an open-loop
load generator, run bare and then with each tower-perf layer; prints what each layer buys.

USAGE:
    cargo run --release --example showcase -- [OPTIONS]

OPTIONS:
    -d, --duration <TIME>       load per scenario, e.g. 8, 8s, 1500ms [default: {}s]
    -r, --rate <REQ/S>          base request rate (Poisson arrivals) [default: {}]
        --spike <FACTOR>        rate multiplier during the spike phase [default: {}]
    -c, --db-connections <N>    database connection pool size: the backend's
                                concurrency [default: {}]
        --timeout <TIME>        per-request client timeout [default: {}s]
        --max-in-flight <N>     client-side cap on outstanding requests [default: {}]
    -s, --scenarios <LIST>      comma-separated scenarios to run, or `all`
                                [default: {}]
    -o, --out <DIR>             where the Markdown report and SVG chart go
                                [default: {}]
        --seed <N>              workload seed; same seed, same requests [default: {}]
    -h, --help                  print this help

SCENARIOS:
{about}
Each scenario runs steady load for 50% of the time, a spike for 30%, then steady
load again. Progress goes to stderr, the results table to stdout.
",
        d.duration.as_secs_f64(),
        d.rate,
        d.spike,
        d.db_connections,
        d.timeout.as_secs_f64(),
        d.max_in_flight,
        scenarios.join(","),
        d.out.display(),
        d.seed,
    )
}

/// Parses the arguments after the program name. `Err` holds a message for the user.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut o = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if matches!(flag.as_str(), "-h" | "--help") {
            return Ok(Command::Help);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-d" | "--duration" => o.duration = duration(&flag, &value()?, 0.1, 3600.0)?,
            "-r" | "--rate" => o.rate = number(&flag, &value()?, 1.0, 100_000.0)?,
            "--spike" => o.spike = number(&flag, &value()?, 0.1, 100.0)?,
            "-c" | "--db-connections" | "--concurrency" => {
                o.db_connections = number(&flag, &value()?, 1.0, 10_000.0)? as usize;
            }
            "--timeout" => o.timeout = duration(&flag, &value()?, 0.01, 600.0)?,
            "--max-in-flight" => o.max_in_flight = number(&flag, &value()?, 1.0, 100_000.0)? as u64,
            "-o" | "--out" => {
                let dir = value()?;
                if dir.is_empty() {
                    return Err(format!("{flag} needs a directory"));
                }
                o.out = PathBuf::from(dir);
            }
            "-s" | "--scenarios" => o.scenarios = scenarios(&value()?)?,
            "--seed" => {
                let v = value()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("{flag}: `{v}` is not a whole number"))?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Command::Run(o))
}

fn number(flag: &str, text: &str, min: f64, max: f64) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{flag}: {text} is out of range ({min} to {max})")),
        Err(_) => Err(format!("{flag}: `{text}` is not a number")),
    }
}

/// `8`, `8s`, `1.5s`, `500ms` or `2m`; bare numbers are seconds.
fn duration(flag: &str, text: &str, min_secs: f64, max_secs: f64) -> Result<Duration, String> {
    let (digits, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let secs = digits
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("{flag}: `{text}` is not a duration (try 8s or 500ms)"))?;
    if !(min_secs..=max_secs).contains(&secs) {
        return Err(format!(
            "{flag}: {text} is out of range ({min_secs}s to {max_secs}s)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn scenarios(list: &str) -> Result<Vec<Scenario>, String> {
    if list == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let scenario = Scenario::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("unknown scenario `{name}` (known: {})", known.join(", "))
        })?;
        if !chosen.contains(&scenario) {
            chosen.push(scenario);
        }
    }
    if chosen.is_empty() {
        return Err("--scenarios needs at least one scenario".to_owned());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|a| a.to_string()))? {
            Command::Run(o) => Ok(o),
            Command::Help => Err("help".to_owned()),
        }
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(run(&[]).unwrap(), Options::default());
        let o = run(&[
            "-d",
            "3",
            "--rate=120",
            "-c",
            "4",
            "--timeout",
            "750ms",
            "-o",
            "x",
        ])
        .unwrap();
        assert_eq!(o.duration, Duration::from_secs(3));
        assert_eq!(o.rate, 120.0);
        assert_eq!(o.db_connections, 4);
        assert_eq!(o.timeout, Duration::from_millis(750));
        assert_eq!(o.out, PathBuf::from("x"));
        assert_eq!(
            run(&["--duration", "1.5s"]).unwrap().duration,
            Duration::from_millis(1500)
        );
        assert_eq!(
            run(&["--scenarios", "bare,bare"]).unwrap().scenarios,
            vec![Scenario::Bare]
        );
        assert_eq!(run(&["-r", "1", "-h"]), Err("help".to_owned()));
    }

    #[test]
    fn bad_input_gets_a_clear_message() {
        let err = |args: &[&str]| run(args).unwrap_err();
        assert_eq!(err(&["--nope"]), "unknown argument `--nope`");
        assert_eq!(err(&["--rate"]), "--rate needs a value");
        assert_eq!(err(&["--rate", "fast"]), "--rate: `fast` is not a number");
        assert_eq!(
            err(&["--rate", "0"]),
            "--rate: 0 is out of range (1 to 100000)"
        );
        assert_eq!(
            err(&["--rate", "NaN"]),
            "--rate: NaN is out of range (1 to 100000)"
        );
        assert!(err(&["-d", "soon"]).contains("is not a duration"));
        assert!(err(&["-d", "-1"]).contains("out of range"));
        assert!(err(&["-s", "turbo"]).starts_with("unknown scenario `turbo` (known: bare"));
        assert_eq!(err(&["-s", ","]), "--scenarios needs at least one scenario");
        assert_eq!(err(&["--seed", "x"]), "--seed: `x` is not a whole number");
    }

    #[test]
    fn help_lists_every_scenario() {
        let help = help();
        assert!(Scenario::ALL.iter().all(|s| help.contains(s.name())));
    }
}
