//! On-CPU time of this process's threads by name, from Linux's
//! `/proc/self/task/*/schedstat` (nanoseconds). It tells what each request
//! cost the server whatever else the shared machine was running, and whether
//! the load generator, not the server, was the bottleneck.

use std::fs;
use std::time::Duration;

/// Name of the server runtime's threads.
pub const SERVER: &str = "lb-server";
/// Name of the load generator runtime's threads.
pub const CLIENT: &str = "lb-client";

/// Total on-CPU time of the threads named `name`; `None` where the kernel
/// does not expose it.
pub fn time(name: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut found = false;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue; // the thread exited meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        total += parse_schedstat(&stat)?;
        found = true;
    }
    // A kernel without scheduler statistics reports zeros: treat as absent.
    (found && total > 0).then(|| Duration::from_nanos(total))
}

/// The first field of a `schedstat` line: nanoseconds spent on a CPU.
fn parse_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_on_cpu_field() {
        assert_eq!(parse_schedstat("537365027 1969078 33\n"), Some(537365027));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn measures_a_named_thread() {
        let supported = fs::read_to_string("/proc/self/schedstat")
            .ok()
            .and_then(|s| parse_schedstat(&s))
            .is_some_and(|ns| ns > 0);
        let spin = std::thread::Builder::new()
            .name("lb-cpu-test".into())
            .spawn(move || {
                // Spin until the thread has had 10 ms of CPU (not of wall
                // time: a loaded machine may give it little), or 10 s pass.
                let start = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = x.wrapping_add(std::hint::black_box(1));
                    }
                    let t = time("lb-cpu-test");
                    let enough = t.is_some_and(|t| t > Duration::from_millis(10));
                    if !supported || enough || start.elapsed() > Duration::from_secs(10) {
                        return (x, t);
                    }
                }
            })
            .unwrap();
        let (_, t) = spin.join().unwrap();
        if supported {
            assert!(t.is_some_and(|t| t > Duration::from_millis(5)), "{t:?}");
        } else {
            assert_eq!(t, None);
        }
        assert_eq!(time("no-such-thread"), None);
    }
}
