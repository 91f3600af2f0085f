//! Loopback benchmark: the bare app, the same app wrapped by tower-perf's
//! layers and by the peer crates that do the same jobs, side by side in one
//! run, with ratios against bare.
//!
//! Every contender serves its own copy of the app on `127.0.0.1:0`; a
//! built-in load generator drives them one at a time, interleaved over
//! several rounds (the order rotates each round), and the report gives
//! medians. Run it through `scripts/bench-loopback.sh`, or
//! `cargo run --release -p tower-perf-bench --bin loopback -- --help`.
//!
//! The load generator is built in rather than `wrk`: the overload job needs
//! an open loop that measures latency from each request's intended arrival
//! (wrk is a closed loop and hides queueing), one generator keeps the method
//! the same across jobs, and its own CPU use is measured and reported, so a
//! client-bound run says so.

mod app;
mod contenders;
mod cpu;
mod jobs;
mod load;
mod report;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::BoxError;
use tokio::runtime::Runtime;

use app::{Calls, Db};
use contenders::{Contender, BARE};
use jobs::Job;
use report::{Context, Results, Run};

const HELP: &str = "\
loopback: tower-perf vs the bare app vs the peers, side by side over loopback

USAGE: loopback [OPTIONS]

OPTIONS:
  --duration SECS       measured seconds per contender per round   [2]
  --warmup SECS         unmeasured seconds before each measurement [0.5]
  --rounds N            rounds; contenders interleave, medians     [3]
  --connections N       closed-loop connections                    [32]
  --jobs LIST           comma-separated: trivial,hit-1k,hit-100k,miss-1k,hot-key,overload [all]
  --contenders LIST     comma-separated name fragments; bare always runs [all]
  --db-permits N        queries the simulated database runs at once [8]
  --db-latency-ms MS    time of one query                          [10]
  --overload X          overload rate as a multiple of the database's capacity [2]
  --no-load X           reference rate as a multiple of capacity   [0.25]
  --max-connections N   open-loop connection cap                   [4096]
  --max-requests N      request budget of one run                  [5000000]
  --server-threads N    server runtime worker threads              [1]
  --client-threads N    load generator worker threads              [1]
  --out PATH            also write the Markdown report to PATH
  --list                print the contenders and their configuration, then exit
  -h, --help            this text
";

#[derive(Clone, Debug)]
struct Options {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    connections: usize,
    jobs: Vec<Job>,
    contenders: Vec<String>,
    db: Db,
    overload: f64,
    no_load: f64,
    max_connections: usize,
    max_requests: u64,
    server_threads: usize,
    client_threads: usize,
    out: Option<String>,
    list: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            rounds: 3,
            connections: 32,
            jobs: Job::ALL.to_vec(),
            contenders: Vec::new(),
            db: Db {
                permits: 8,
                latency: Duration::from_millis(10),
            },
            overload: 2.0,
            no_load: 0.25,
            max_connections: 4096,
            max_requests: 5_000_000,
            server_threads: 1,
            client_threads: 1,
            out: None,
            list: false,
        }
    }
}

/// Parses the arguments; `Ok(None)` means `--help`.
fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: not a valid number: {v}"))
        }
        let secs = |flag: &str, v: String| -> Result<Duration, String> {
            let s: f64 = num(flag, v)?;
            Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: not a duration: {s}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--duration" => o.duration = secs(flag, value()?)?,
            "--warmup" => o.warmup = secs(flag, value()?)?,
            "--rounds" => o.rounds = num(flag, value()?)?,
            "--connections" => o.connections = num(flag, value()?)?,
            "--jobs" => {
                o.jobs = value()?
                    .split(',')
                    .map(|k| Job::parse(k.trim()).ok_or_else(|| format!("unknown job: {k}")))
                    .collect::<Result<_, _>>()?;
            }
            "--contenders" => {
                o.contenders = value()?.split(',').map(|s| s.trim().to_string()).collect();
            }
            "--db-permits" => o.db.permits = num(flag, value()?)?,
            "--db-latency-ms" => {
                o.db.latency = Duration::from_secs_f64(num::<f64>(flag, value()?)? / 1000.0);
            }
            "--overload" => o.overload = num(flag, value()?)?,
            "--no-load" => o.no_load = num(flag, value()?)?,
            "--max-connections" => o.max_connections = num(flag, value()?)?,
            "--max-requests" => o.max_requests = num(flag, value()?)?,
            "--server-threads" => o.server_threads = num(flag, value()?)?,
            "--client-threads" => o.client_threads = num(flag, value()?)?,
            "--out" => o.out = Some(value()?),
            "--list" => o.list = true,
            other => return Err(format!("unknown option: {other} (see --help)")),
        }
    }
    let positive = [
        ("--rounds", o.rounds),
        ("--connections", o.connections),
        ("--db-permits", o.db.permits),
        ("--max-connections", o.max_connections),
        ("--server-threads", o.server_threads),
        ("--client-threads", o.client_threads),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(format!("{flag} must be at least 1"));
    }
    if o.duration.is_zero() || o.db.latency.is_zero() {
        return Err("--duration and --db-latency-ms must be positive".into());
    }
    if !(o.overload > 0.0 && o.no_load > 0.0 && o.overload.is_finite() && o.no_load.is_finite()) {
        return Err("--overload and --no-load must be positive".into());
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loopback: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopback: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A contender's server.
struct Server {
    addr: SocketAddr,
    calls: Arc<Calls>,
}

fn runtime(name: &str, threads: usize) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

fn run(opts: &Options, args: &[String]) -> Result<(), BoxError> {
    let load_at_start = load_average();
    let server_rt = runtime(cpu::SERVER, opts.server_threads)?;
    let client_rt = runtime(cpu::CLIENT, opts.client_threads)?;
    // One global metrics recorder for every contender (axum-prometheus
    // installs it): tower-perf's latency layer records into it too.
    server_rt.block_on(async { contenders::prometheus() });

    let wanted = |c: &Contender| {
        c.name == BARE
            || opts.contenders.is_empty()
            || opts.contenders.iter().any(|f| c.name.contains(f.as_str()))
    };
    let contenders: Vec<Contender> = contenders::all(opts.db)
        .into_iter()
        .filter(|c| wanted(c) && c.jobs.iter().any(|j| opts.jobs.contains(j)))
        .collect();
    if opts.list {
        for c in &contenders {
            let jobs: Vec<&str> = c.jobs.iter().map(|j| j.key()).collect();
            println!("{} [{}]: {}", c.name, jobs.join(","), c.config);
        }
        return Ok(());
    }

    let servers: Vec<Server> = contenders
        .iter()
        .map(|c| start(&server_rt, c, opts.db))
        .collect::<Result<_, _>>()?;
    // The no-load reference has its own bare instance: an overload run's
    // leftovers never reach it.
    let reference = start(&server_rt, &contenders[0], opts.db)?;

    let mut results = Results::default();
    for round in 0..opts.rounds {
        for &job in &opts.jobs {
            let mut order: Vec<usize> = (0..contenders.len())
                .filter(|&i| contenders[i].jobs.contains(&job))
                .collect();
            if order.is_empty() {
                continue;
            }
            let shift = round % order.len();
            order.rotate_left(shift);
            if job == Job::Overload {
                let rate = opts.db.capacity() * opts.no_load;
                let run = measure(&client_rt, opts, job, &reference, Some(rate), round)?;
                progress(round, opts.rounds, job, "bare, no load", &run);
                results.no_load.push(run);
            }
            for i in order {
                let rate = (job == Job::Overload).then(|| opts.db.capacity() * opts.overload);
                let run = measure(&client_rt, opts, job, &servers[i], rate, round)?;
                progress(round, opts.rounds, job, &contenders[i].name, &run);
                results
                    .runs
                    .entry((job, contenders[i].name.clone()))
                    .or_default()
                    .push(run);
            }
        }
    }

    let ctx = Context {
        command: std::iter::once("loopback".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        machine: format!(
            "{}; 1-minute load average {load_at_start} at start, {} at end",
            machine(),
            load_average()
        ),
        method: method(opts),
        client_threads: opts.client_threads,
        capacity: opts.db.capacity(),
    };
    let md = report::markdown(&ctx, &contenders, &opts.jobs, &results);
    println!("{md}");
    if let Some(path) = &opts.out {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &md)?;
        eprintln!("report written to {path}");
    }
    // Servers and their connections end with the runtimes.
    server_rt.shutdown_background();
    client_rt.shutdown_background();
    Ok(())
}

fn start(rt: &Runtime, contender: &Contender, db: Db) -> Result<Server, BoxError> {
    rt.block_on(async {
        let calls = Arc::new(Calls::default());
        let app = (contender.wrap)(app::routes(db, calls.clone()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, tower::make::Shared::new(app)).await;
        });
        Ok(Server { addr, calls })
    })
}

/// One run of `job` against `server`: a closed loop, or an open loop at `rate`.
fn measure(
    rt: &Runtime,
    opts: &Options,
    job: Job,
    server: &Server,
    rate: Option<f64>,
    round: usize,
) -> Result<Run, BoxError> {
    let before = server.calls.get();
    let paths = job.paths();
    let timeout = Duration::from_secs(10);
    let sample = rt.block_on(async {
        match rate {
            None => {
                let cfg = load::Closed {
                    connections: opts.connections,
                    warmup: opts.warmup,
                    duration: opts.duration,
                    max_requests: opts.max_requests,
                    timeout,
                };
                load::closed(server.addr, &paths, &cfg).await
            }
            Some(rate) => {
                let cfg = load::Open {
                    rate,
                    warmup: opts.warmup,
                    duration: opts.duration,
                    max_requests: opts.max_requests,
                    max_connections: opts.max_connections,
                    timeout,
                    drain: Duration::from_secs(5),
                    seed: 0x5EED + round as u64,
                };
                load::open(server.addr, &paths, &cfg).await
            }
        }
    })?;
    // Let closed connections and queued work settle before the next run.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Run {
        round,
        sample,
        calls: server.calls.get() - before,
    })
}

fn progress(round: usize, rounds: usize, job: Job, name: &str, run: &Run) {
    let t = &run.sample.tally;
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let p99 = report::percentile(&lat, 0.99).unwrap_or(0);
    eprintln!(
        "round {}/{rounds} {:<9} {name:<36} {:>9.0} ok/s  p99 {:>7} µs  shed {:>6}  failed {:>5}  backend calls {}",
        round + 1,
        job.key(),
        t.ok as f64 / run.sample.window.as_secs_f64(),
        p99,
        t.shed,
        t.other + t.errors + t.unsent,
        run.calls,
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// The machine's 1-minute load average: how much else was running.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "n/a".into())
}

fn method(o: &Options) -> Vec<String> {
    vec![
        format!(
            "method: every contender serves its own copy of the app on 127.0.0.1:0 from one \
             server runtime ({} worker thread(s)); a built-in load generator ({} thread(s), \
             HTTP/1.1 keep-alive, hyper client) drives one contender at a time; {} round(s), \
             the order rotating each round; per run {:.1} s warm-up then {:.1} s measured; \
             figures are medians over rounds, ratios are medians of per-round ratios against \
             bare in the same round",
            o.server_threads,
            o.client_threads,
            o.rounds,
            o.warmup.as_secs_f64(),
            o.duration.as_secs_f64(),
        ),
        format!(
            "closed loop: {} connections, each sending its next request when the last answer \
             is in; server CPU is the on-CPU time of the server threads (schedstat) per 2xx \
             response, robust to other load on the machine",
            o.connections
        ),
        format!(
            "database: {} concurrent queries of {:.1} ms behind a FIFO queue (capacity {:.0} \
             req/s); overload: open loop, Poisson arrivals at {}× capacity ({:.0} req/s) on \
             distinct keys, latency from the intended arrival (no coordinated omission), at \
             most {} connections (arrivals finding none free count as unsent); no-load \
             reference: bare at {}× capacity",
            o.db.permits,
            o.db.latency.as_secs_f64() * 1000.0,
            o.db.capacity(),
            o.overload,
            o.db.capacity() * o.overload,
            o.max_connections,
            o.no_load,
        ),
        "columns: `× bare` is the median of per-round throughput ratios (higher is better); \
         `CPU × bare` is server CPU per 2xx response relative to bare (lower is cheaper); \
         `backend calls/req` is handler invocations per request sent; `503s` are shed \
         responses, `failed` other statuses, transport errors and timeouts (medians per run)"
            .into(),
        "every app instance is boxed the same way (one BoxCloneService); peers whose error \
         type is not Infallible have errors mapped to responses (tower Overloaded → 503, else \
         500), as an axum user must"
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_flags() {
        let o = parse(&args(
            "--duration 1.5 --rounds 2 --jobs trivial,overload --db-permits 4 --out x.md",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.rounds, 2);
        assert_eq!(o.jobs, vec![Job::Trivial, Job::Overload]);
        assert_eq!(o.db.permits, 4);
        assert_eq!(o.out.as_deref(), Some("x.md"));
        assert!(parse(&args("--help")).unwrap().is_none());
    }

    /// The harness end to end over loopback, briefly: caches answer hits
    /// without the handler, coalescing collapses a hot key, a limiter sheds
    /// overload that bare queues.
    #[test]
    fn measures_contenders_over_loopback() {
        let server_rt = runtime("lb-test-srv", 1).unwrap();
        let client_rt = runtime("lb-test-cli", 1).unwrap();
        let db = Db {
            permits: 1,
            latency: Duration::from_millis(5),
        };
        let opts = Options {
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            connections: 4,
            db,
            ..Options::default()
        };
        server_rt.block_on(async { contenders::prometheus() });
        let all = contenders::all(db);
        let run = |name: &str, job: Job, rate: Option<f64>| {
            let contender = all.iter().find(|c| c.name == name).unwrap();
            let server = start(&server_rt, contender, db).unwrap();
            measure(&client_rt, &opts, job, &server, rate, 0).unwrap()
        };

        let bare = run(BARE, Job::Hit1k, None);
        assert!(bare.sample.tally.ok > 20, "{bare:?}");
        assert_eq!(bare.calls, bare.sample.tally.sent);
        for cache in ["tower-http-cache", "http-cache-tower-server"] {
            let hit = run(cache, Job::Hit1k, None);
            let t = &hit.sample.tally;
            assert!(t.ok > 20 && t.errors + t.other == 0, "{cache}: {t:?}");
            assert_eq!(t.bytes, t.ok * app::SMALL as u64, "{cache}");
            assert!(hit.calls * 10 < t.sent, "{cache}: {} calls", hit.calls);
        }

        // Distinct keys: every request misses and reaches the handler.
        let miss = run(contenders::TP_CACHE, Job::Miss1k, None);
        let t = &miss.sample.tally;
        assert!(t.ok > 20 && t.errors + t.other == 0, "{t:?}");
        assert_eq!(t.bytes, t.ok * app::SMALL as u64);
        assert_eq!(miss.calls, t.sent);

        let hot = run("tower-resilience-coalesce", Job::HotKey, None);
        assert!(hot.calls * 2 < hot.sample.tally.sent, "{hot:?}");

        let rate = Some(db.capacity() * 3.0);
        let queued = run(BARE, Job::Overload, rate);
        assert_eq!(queued.sample.tally.shed, 0);
        let shed = run("ConcurrencyLimit(1)+LoadShed", Job::Overload, rate);
        assert!(shed.sample.tally.shed > 0, "{shed:?}");
        assert!(shed.sample.tally.ok > 0, "{shed:?}");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "--rounds",
            "--rounds x",
            "--rounds 0",
            "--jobs nope",
            "--duration -1",
            "--duration 0",
            "--overload 0",
            "--frobnicate",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
