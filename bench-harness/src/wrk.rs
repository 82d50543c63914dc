//! Running wrk (pinned with taskset) and parsing its `--latency` report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procstat::reaped_children_cpu_seconds;
use crate::setup::{check_interrupted, kill_with_parent};

/// Load is one wrk invocation's shape.
#[derive(Debug, Clone)]
pub struct Load {
    /// The wrk binary.
    pub wrk: PathBuf,
    /// taskset, to pin wrk.
    pub taskset: PathBuf,
    /// CPU wrk runs on.
    pub cpu: usize,
    /// wrk threads (`-t`).
    pub threads: u32,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Request headers (`-H`), e.g. `Connection: close` for a new connection per request.
    pub headers: Vec<String>,
}

/// WrkResult is what one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    /// Completed requests.
    pub requests: u64,
    /// Wall time of the run as wrk measured it, in seconds.
    pub seconds: f64,
    /// `Requests/sec`.
    pub req_per_s: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th-percentile latency, µs.
    pub p99_us: f64,
    /// Socket errors: connect + read + write + timeout.
    pub socket_errors: u64,
    /// The socket errors by kind, as wrk lists them.
    pub socket_error_kinds: SocketErrors,
    /// Responses wrk counts as errors ("Non-2xx or 3xx responses": status >= 400).
    pub bad_status: u64,
}

/// SocketErrors is wrk's `Socket errors:` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    /// Connections that could not be opened.
    pub connect: u64,
    /// Reads that failed, including connections closed by the server.
    pub read: u64,
    /// Writes that failed.
    pub write: u64,
    /// Requests without a response within wrk's timeout (2 s by default).
    pub timeout: u64,
}

impl WrkResult {
    /// Socket errors plus bad statuses.
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.bad_status
    }
}

impl Load {
    /// The command line, for printing (what a human would type to repeat the run).
    pub fn command_line(&self, seconds: u64, url: &str) -> String {
        let headers: String = self.headers.iter().map(|h| format!(" -H '{h}'")).collect();
        format!(
            "taskset -c {} wrk -t{} -c{} -d{}s --latency{headers} {url}",
            self.cpu, self.threads, self.connections, seconds
        )
    }

    /// Runs wrk against `url` for `seconds`, writing its report to `out` and parsing it; also
    /// returns the CPU seconds wrk used. Polls for Ctrl-C and kills wrk then; gives up if wrk
    /// overruns by 30 s.
    pub fn run(&self, url: &str, seconds: u64, out: &Path) -> Result<(WrkResult, f64)> {
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(self.cpu.to_string())
            .arg(&self.wrk)
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .args(self.headers.iter().flat_map(|h| ["-H", h.as_str()]))
            .arg(url);
        let (text, cpu) = self.run_tool(cmd, "wrk", seconds, out)?;
        let result = parse(&text).with_context(|| format!("cannot parse wrk output:\n{text}"))?;
        Ok((result, cpu))
    }

    /// The command line of an h2load run (HTTP/2 with prior knowledge, `streams` concurrent
    /// streams per connection), for printing.
    pub fn h2load_command_line(&self, streams: u32, seconds: u64, url: &str) -> String {
        format!(
            "taskset -c {} h2load -t{} -c{} -m{streams} -D{seconds} {url}",
            self.cpu, self.threads, self.connections
        )
    }

    /// Runs h2load against `url` for `seconds` (`-m streams`), like [`Load::run`]. h2load
    /// reports no percentiles: the result's `p50_us` holds its mean request time and `p99_us`
    /// its maximum.
    pub fn run_h2load(
        &self,
        streams: u32,
        url: &str,
        seconds: u64,
        out: &Path,
    ) -> Result<(WrkResult, f64)> {
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(self.cpu.to_string())
            .arg("h2load")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-m{streams}"))
            .arg(format!("-D{seconds}"))
            .arg(url);
        let (text, cpu) = self.run_tool(cmd, "h2load", seconds, out)?;
        let result =
            parse_h2load(&text).with_context(|| format!("cannot parse h2load output:\n{text}"))?;
        Ok((result, cpu))
    }

    /// Runs a load tool to completion, its output into `out`; returns the output and the CPU
    /// seconds the tool used.
    fn run_tool(
        &self,
        mut cmd: Command,
        name: &str,
        seconds: u64,
        out: &Path,
    ) -> Result<(String, f64)> {
        let stdout =
            std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let stderr = stdout.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        kill_with_parent(&mut cmd);
        // The tool is the only child reaped while it runs (proxies are reaped when stopped).
        let reaped_before = reaped_children_cpu_seconds();
        let mut child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if check_interrupted().is_err() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                check_interrupted()?;
                bail!("{name} did not finish within {} s", seconds + 30);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cpu = (reaped_children_cpu_seconds() - reaped_before).max(0.0);
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if !status.success() {
            bail!("{name} failed ({status}):\n{text}");
        }
        Ok((text, cpu))
    }
}

/// Parses h2load's summary: `finished in 5.00s, 1234.5 req/s, …`, `requests: N total, …, N
/// succeeded, N failed, N errored, N timeout`, `status codes: …` and `time for request: min
/// max mean sd …`.
pub fn parse_h2load(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut saw_rps, mut saw_requests, mut saw_time) = (false, false, false);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["finished", "in", t, rps, "req/s,", ..] => {
                r.seconds = duration_us(t.trim_end_matches(','))? / 1e6;
                r.req_per_s = rps.parse().context("req/s")?;
                saw_rps = true;
            }
            ["requests:", total, "total,", rest @ ..] => {
                let _ = total;
                let mut it = rest.chunks(2);
                for pair in &mut it {
                    if let [n, kind] = pair {
                        let n: u64 = n.parse().context("request counts")?;
                        match kind.trim_end_matches(',') {
                            "succeeded" => r.requests = n,
                            "failed" | "errored" | "timeout" => r.socket_errors += n,
                            _ => {}
                        }
                    }
                }
                saw_requests = true;
            }
            ["status", "codes:", _, _, _, _, c4, _, c5, _] => {
                r.bad_status = c4.parse::<u64>().unwrap_or(0)
                    + c5.trim_end_matches(',').parse::<u64>().unwrap_or(0);
            }
            ["time", "for", "request:", _min, max, mean, ..] => {
                r.p50_us = duration_us(mean)?;
                r.p99_us = duration_us(max)?;
                saw_time = true;
            }
            _ => {}
        }
    }
    if !(saw_rps && saw_requests && saw_time) {
        bail!("missing `finished in`, `requests:` or `time for request:` lines");
    }
    Ok(r)
}

/// Parses wrk 4.x output run with `--latency`.
pub fn parse(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut saw_rps, mut saw_p50, mut saw_p99, mut saw_requests) = (false, false, false, false);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => {
                r.p50_us = duration_us(v)?;
                saw_p50 = true;
            }
            ["99%", v] => {
                r.p99_us = duration_us(v)?;
                saw_p99 = true;
            }
            ["Requests/sec:", v] => {
                r.req_per_s = v.parse().context("Requests/sec")?;
                saw_rps = true;
            }
            // "500000 requests in 10.00s, 70.00MB read"
            [n, "requests", "in", t, ..] => {
                r.requests = n.parse().context("request count")?;
                r.seconds = duration_us(t.trim_end_matches(','))? / 1e6;
                saw_requests = true;
            }
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            ["Socket", "errors:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [kind, n] = pair {
                        let n = n
                            .trim_end_matches(',')
                            .parse::<u64>()
                            .context("socket errors")?;
                        r.socket_errors += n;
                        let k = &mut r.socket_error_kinds;
                        match *kind {
                            "connect" => k.connect = n,
                            "read" => k.read = n,
                            "write" => k.write = n,
                            "timeout" => k.timeout = n,
                            _ => {}
                        }
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                r.bad_status = n.parse().context("Non-2xx count")?;
            }
            _ => {}
        }
    }
    if !(saw_rps && saw_p50 && saw_p99 && saw_requests) {
        bail!(
            "missing Requests/sec, request count or latency distribution (was --latency passed?)"
        );
    }
    Ok(r)
}

/// Converts a wrk duration (`637.20us`, `1.20ms`, `2.00s`, `1.00m`, `1.00h`) to µs.
fn duration_us(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("duration without unit: {v}"))?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("bad duration {v}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown duration unit in {v}"),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let text = "starting benchmark...\n\
finished in 5.00s, 41234.60 req/s, 9.05MB/s\n\
requests: 206173 total, 206173 started, 206173 done, 206170 succeeded, 3 failed, 3 errored, 0 timeout\n\
status codes: 206170 2xx, 0 3xx, 2 4xx, 1 5xx\n\
traffic: 45.26MB (47455040) total, 2.36MB (2474076) headers (space savings 92.53%), 19.66MB (20617000) data\n\
                     min         max         mean         sd        +/- sd\n\
time for request:      220us     15.92ms      1.53ms       402us    75.30%\n\
time for connect:      158us      1.03ms       555us       291us    57.81%\n";
        let r = parse_h2load(text).unwrap();
        assert_eq!(r.requests, 206_170);
        assert!((r.req_per_s - 41_234.6).abs() < 1e-6);
        assert!((r.seconds - 5.0).abs() < 1e-9);
        assert_eq!(r.socket_errors, 6);
        assert_eq!(r.bad_status, 3);
        assert!((r.p50_us - 1530.0).abs() < 1e-6, "{}", r.p50_us);
        assert!((r.p99_us - 15_920.0).abs() < 1e-6);
        assert!(parse_h2load("nothing").is_err());
    }

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   637.20us  200.10us   5.00ms   80.00%
    Req/Sec    50.00k     2.00k   55.00k    70.00%
  Latency Distribution
     50%  600.00us
     75%  700.00us
     90%  800.00us
     99%    1.20ms
  500000 requests in 10.00s, 70.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  50000.00
Transfer/sec:      7.00MB
";

    #[test]
    fn parses_a_full_report() {
        let r = parse(SAMPLE).expect("parses");
        assert_eq!(
            r,
            WrkResult {
                requests: 500_000,
                seconds: 10.0,
                req_per_s: 50_000.0,
                p50_us: 600.0,
                p99_us: 1200.0,
                socket_errors: 10,
                socket_error_kinds: SocketErrors {
                    connect: 1,
                    read: 2,
                    write: 3,
                    timeout: 4,
                },
                bad_status: 5,
            }
        );
        assert_eq!(r.errors(), 15);
    }

    #[test]
    fn clean_report_has_no_errors_and_seconds_latency_converts() {
        let text = SAMPLE
            .replace(
                "  Socket errors: connect 1, read 2, write 3, timeout 4\n",
                "",
            )
            .replace("  Non-2xx or 3xx responses: 5\n", "")
            .replace("1.20ms", "1.50s");
        let r = parse(&text).expect("parses");
        assert_eq!(r.errors(), 0);
        assert_eq!(r.p99_us, 1_500_000.0);
    }

    #[test]
    fn report_without_latency_distribution_is_an_error() {
        assert!(parse("Requests/sec: 10.0\n").is_err());
    }
}
