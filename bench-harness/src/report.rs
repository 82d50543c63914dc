//! Results: one [`RunRow`] per wrk run, medians per proxy, ratios against ringlb, rendered as an
//! aligned text table, a Markdown table, or hand-written JSON.

use std::fmt::Write as _;

use crate::wrk::WrkResult;

/// RunRow is one measured wrk run against one target.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// The target: a proxy name, or `backend` for the direct baseline.
    pub label: String,
    /// 1-based round; 0 for the baseline.
    pub round: u32,
    /// What wrk reported.
    pub wrk: WrkResult,
    /// CPU seconds (user + system) the proxy's process tree spent during the run; `None` for
    /// the baseline (the backends share the harness process).
    pub cpu_seconds: Option<f64>,
    /// Resident memory of the proxy's process tree after the run, KiB.
    pub rss_kib: Option<u64>,
    /// Requests each backend answered during the run, to check the balancing.
    pub backend_requests: Vec<u64>,
    /// CPU seconds the load side (wrk + the backend threads) spent during the run.
    pub load_cpu_seconds: f64,
    /// How busy the proxy's core was (all processes), %: well above the proxy's own CPU %
    /// means something else ran there.
    pub proxy_core_busy: Option<f64>,
    /// How busy the load core was (all processes), %.
    pub load_core_busy: Option<f64>,
}

/// LOAD_BOUND_PERCENT is the load side's own CPU share above which a run counts as
/// load-bound: wrk + backends, not the proxy, limited its req/s.
const LOAD_BOUND_PERCENT: f64 = 90.0;
/// STOLEN_PERCENT is how much busier than the proxy itself its core may be before we call the
/// run disturbed by other processes.
const STOLEN_PERCENT: f64 = 15.0;

impl RunRow {
    /// CPU µs per request: proxy CPU time ÷ requests wrk completed.
    pub fn cpu_us_per_req(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.wrk.requests > 0).then(|| cpu * 1e6 / self.wrk.requests as f64)
    }

    /// Proxy CPU time as a share of the run's wall time (100 % = its core was saturated).
    pub fn cpu_percent(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.wrk.seconds > 0.0).then(|| cpu * 100.0 / self.wrk.seconds)
    }

    /// The load side's (wrk + backends) CPU as a share of wall time, %.
    pub fn load_cpu_percent(&self) -> Option<f64> {
        (self.wrk.seconds > 0.0).then(|| self.load_cpu_seconds * 100.0 / self.wrk.seconds)
    }

    /// The proxy's core was much busier than the proxy: other processes ran there.
    fn disturbed(&self) -> bool {
        match (self.proxy_core_busy, self.cpu_percent()) {
            (Some(core), Some(own)) => core - own > STOLEN_PERCENT,
            _ => false,
        }
    }

    /// `proxy/load` core busy %, e.g. `100/97`.
    fn cores(&self) -> String {
        format!(
            "{}/{}",
            opt(self.proxy_core_busy, 0),
            opt(self.load_core_busy, 0)
        )
    }

    /// Each backend's share of the requests, e.g. `33/33/34`.
    fn split(&self) -> String {
        let total: u64 = self.backend_requests.iter().sum();
        if total == 0 {
            return "-".into();
        }
        self.backend_requests
            .iter()
            .map(|&n| format!("{:.0}", n as f64 * 100.0 / total as f64))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Summary is one proxy's medians over its rounds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The proxy.
    pub label: String,
    /// How many rounds went into the medians.
    pub rounds: usize,
    /// Median requests/s.
    pub req_per_s: f64,
    /// Median p50 latency, µs.
    pub p50_us: f64,
    /// Median p99 latency, µs.
    pub p99_us: f64,
    /// Median proxy CPU µs per request.
    pub cpu_us_per_req: Option<f64>,
    /// Median proxy CPU utilisation, %.
    pub cpu_percent: Option<f64>,
    /// Median RSS, KiB.
    pub rss_kib: Option<f64>,
    /// Errors summed over all rounds (socket errors + bad statuses).
    pub errors: u64,
}

/// Ratio is ringlb's figure divided by another proxy's.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// The other proxy.
    pub other: String,
    /// ringlb req/s ÷ other req/s (> 1: ringlb is faster).
    pub req_per_s: f64,
    /// ringlb CPU µs/req ÷ other CPU µs/req (< 1: ringlb is cheaper).
    pub cpu_us_per_req: Option<f64>,
}

/// Report is a whole `compare` run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Settings, as (key, value) pairs, for the JSON header.
    pub settings: Vec<(String, String)>,
    /// Tool versions, as (tool, version line).
    pub versions: Vec<(String, String)>,
    /// wrk directly against one backend.
    pub baseline: Option<RunRow>,
    /// Every measured run, in the order run.
    pub runs: Vec<RunRow>,
}

impl Report {
    /// Medians per proxy, in first-run order.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut labels: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !labels.contains(&r.label.as_str()) {
                labels.push(&r.label);
            }
        }
        labels
            .into_iter()
            .map(|label| {
                let rows: Vec<&RunRow> = self.runs.iter().filter(|r| r.label == label).collect();
                Summary {
                    label: label.to_string(),
                    rounds: rows.len(),
                    req_per_s: median(rows.iter().map(|r| r.wrk.req_per_s)).unwrap_or(0.0),
                    p50_us: median(rows.iter().map(|r| r.wrk.p50_us)).unwrap_or(0.0),
                    p99_us: median(rows.iter().map(|r| r.wrk.p99_us)).unwrap_or(0.0),
                    cpu_us_per_req: median(rows.iter().filter_map(|r| r.cpu_us_per_req())),
                    cpu_percent: median(rows.iter().filter_map(|r| r.cpu_percent())),
                    rss_kib: median(rows.iter().filter_map(|r| r.rss_kib.map(|k| k as f64))),
                    errors: rows.iter().map(|r| r.wrk.errors()).sum(),
                }
            })
            .collect()
    }

    /// ringlb against each other proxy, when ringlb ran.
    pub fn ratios(&self) -> Vec<Ratio> {
        let sums = self.summaries();
        let Some(r) = sums.iter().find(|s| s.label == "ringlb") else {
            return Vec::new();
        };
        sums.iter()
            .filter(|s| s.label != "ringlb")
            .map(|o| Ratio {
                other: o.label.clone(),
                req_per_s: r.req_per_s / o.req_per_s,
                cpu_us_per_req: match (r.cpu_us_per_req, o.cpu_us_per_req) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
            })
            .collect()
    }

    /// The full human-readable report: every run, then the medians and ratios.
    pub fn render(&self, markdown: bool) -> String {
        let mut out = String::new();
        let mut rounds = Table::new(
            2,
            &[
                "round",
                "target",
                "req/s",
                "p50 µs",
                "p99 µs",
                "CPU µs/req",
                "CPU %",
                "load CPU %",
                "RSS MiB",
                "errors",
                "split %",
                "cores busy %",
            ],
        );
        for r in self.baseline.iter().chain(&self.runs) {
            rounds.row(vec![
                if r.round == 0 {
                    "base".into()
                } else {
                    r.round.to_string()
                },
                r.label.clone(),
                format!("{:.0}", r.wrk.req_per_s),
                fmt_us(r.wrk.p50_us),
                fmt_us(r.wrk.p99_us),
                opt(r.cpu_us_per_req(), 2),
                opt(r.cpu_percent(), 0),
                opt(r.load_cpu_percent(), 0),
                opt(r.rss_kib.map(|k| k as f64 / 1024.0), 1),
                r.wrk.errors().to_string(),
                r.split(),
                r.cores(),
            ]);
        }
        let _ = writeln!(out, "Every run:\n");
        out.push_str(&rounds.render(markdown));

        let mut med = Table::new(
            1,
            &[
                "proxy",
                "rounds",
                "req/s",
                "p50 µs",
                "p99 µs",
                "CPU µs/req",
                "CPU %",
                "RSS MiB",
                "errors",
            ],
        );
        for s in self.summaries() {
            med.row(vec![
                s.label.clone(),
                s.rounds.to_string(),
                format!("{:.0}", s.req_per_s),
                fmt_us(s.p50_us),
                fmt_us(s.p99_us),
                opt(s.cpu_us_per_req, 2),
                opt(s.cpu_percent, 0),
                opt(s.rss_kib.map(|k| k / 1024.0), 1),
                s.errors.to_string(),
            ]);
        }
        let _ = writeln!(out, "\nMedian over rounds:\n");
        out.push_str(&med.render(markdown));
        let n = self.runs.len();
        let load_bound = self
            .runs
            .iter()
            .filter(|r| {
                r.load_cpu_percent()
                    .is_some_and(|p| p >= LOAD_BOUND_PERCENT)
            })
            .count();
        if load_bound > 0 {
            let _ = writeln!(
                out,
                "\nnote: in {load_bound} of {n} runs wrk + backends used >= \
                 {LOAD_BOUND_PERCENT:.0} % of the load core: req/s there is capped by the load \
                 side, not the proxy; compare CPU µs/req."
            );
        }
        let disturbed = self.runs.iter().filter(|r| r.disturbed()).count();
        if disturbed > 0 {
            let _ = writeln!(
                out,
                "\nnote: in {disturbed} of {n} runs the proxy core was > {STOLEN_PERCENT:.0} points \
                 busier than the proxy itself (other processes ran there): req/s and latency \
                 are noisy; CPU µs/req is still the proxy's own."
            );
        }

        let ratios = self.ratios();
        if !ratios.is_empty() {
            let mut t = Table::new(1, &["ratio", "req/s", "CPU µs/req"]);
            for r in ratios {
                t.row(vec![
                    format!("ringlb/{}", r.other),
                    format!("{:.2}", r.req_per_s),
                    opt(r.cpu_us_per_req, 2),
                ]);
            }
            let _ = writeln!(
                out,
                "\nRatios (req/s > 1: ringlb faster; CPU µs/req < 1: ringlb cheaper):\n"
            );
            out.push_str(&t.render(markdown));
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        let mut o = String::from("{\n");
        // Settings that are plain numbers are written as JSON numbers; versions stay strings.
        let pairs = |v: &[(String, String)], numbers: bool| {
            v.iter()
                .map(|(k, v)| {
                    let value = match v.parse::<u64>() {
                        Ok(n) if numbers => n.to_string(),
                        _ => json_str(v),
                    };
                    format!("{}: {value}", json_str(k))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(o, "  \"settings\": {{{}}},", pairs(&self.settings, true));
        let _ = writeln!(o, "  \"versions\": {{{}}},", pairs(&self.versions, false));
        let _ = writeln!(
            o,
            "  \"baseline\": {},",
            self.baseline.as_ref().map_or("null".into(), run_json)
        );
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("    {}", run_json(r)))
            .collect();
        let _ = writeln!(o, "  \"runs\": {},", json_array(&runs));
        let sums: Vec<String> = self
            .summaries()
            .iter()
            .map(|s| {
                format!(
                    "    {{\"proxy\": {}, \"rounds\": {}, \"req_per_s\": {}, \"p50_us\": {}, \
                     \"p99_us\": {}, \"cpu_us_per_req\": {}, \"cpu_percent\": {}, \
                     \"rss_kib\": {}, \"errors\": {}}}",
                    json_str(&s.label),
                    s.rounds,
                    json_num(Some(s.req_per_s)),
                    json_num(Some(s.p50_us)),
                    json_num(Some(s.p99_us)),
                    json_num(s.cpu_us_per_req),
                    json_num(s.cpu_percent),
                    json_num(s.rss_kib),
                    s.errors
                )
            })
            .collect();
        let _ = writeln!(o, "  \"median\": {},", json_array(&sums));
        let ratios: Vec<String> = self
            .ratios()
            .iter()
            .map(|r| {
                format!(
                    "    {{\"ratio\": {}, \"req_per_s\": {}, \"cpu_us_per_req\": {}}}",
                    json_str(&format!("ringlb/{}", r.other)),
                    json_num(Some(r.req_per_s)),
                    json_num(r.cpu_us_per_req)
                )
            })
            .collect();
        let _ = writeln!(o, "  \"ratios\": {}", json_array(&ratios));
        o.push_str("}\n");
        o
    }
}

/// A JSON array of already-formatted, indented items, one per line.
fn json_array(items: &[String]) -> String {
    if items.is_empty() {
        "[]".into()
    } else {
        format!("[\n{}\n  ]", items.join(",\n"))
    }
}

fn run_json(r: &RunRow) -> String {
    format!(
        "{{\"target\": {}, \"round\": {}, \"requests\": {}, \"seconds\": {}, \"req_per_s\": {}, \
         \"p50_us\": {}, \"p99_us\": {}, \"socket_errors\": {}, \"bad_status\": {}, \
         \"cpu_seconds\": {}, \"cpu_us_per_req\": {}, \"cpu_percent\": {}, \"rss_kib\": {}, \
         \"backend_requests\": [{}], \"load_cpu_seconds\": {}, \"load_cpu_percent\": {}, \
         \"proxy_core_busy_percent\": {}, \"load_core_busy_percent\": {}}}",
        json_str(&r.label),
        r.round,
        r.wrk.requests,
        json_num(Some(r.wrk.seconds)),
        json_num(Some(r.wrk.req_per_s)),
        json_num(Some(r.wrk.p50_us)),
        json_num(Some(r.wrk.p99_us)),
        r.wrk.socket_errors,
        r.wrk.bad_status,
        json_num(r.cpu_seconds),
        json_num(r.cpu_us_per_req()),
        json_num(r.cpu_percent()),
        r.rss_kib.map_or("null".into(), |k| k.to_string()),
        r.backend_requests
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        json_num(Some(r.load_cpu_seconds)),
        json_num(r.load_cpu_percent()),
        json_num(r.proxy_core_busy),
        json_num(r.load_core_busy),
    )
}

/// A JSON number with up to 4 decimals, or `null` (also for NaN/inf, which JSON lacks).
fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => {
            let s = format!("{x:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s.is_empty() || s == "-" {
                "0".into()
            } else {
                s.to_string()
            }
        }
        _ => "null".into(),
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

pub(crate) fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// Table is a small column-aligned table: the first `left` columns left-aligned (labels), the
/// rest right-aligned (numbers).
pub(crate) struct Table {
    /// How many leading columns are labels.
    left: usize,
    /// Column titles.
    headers: Vec<String>,
    /// Cells, one Vec per row, as many as headers.
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(left: usize, headers: &[&str]) -> Table {
        Table {
            left,
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, markdown: bool) -> String {
        let cols = self.headers.len();
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r[c].chars().count())
                .chain([self.headers[c].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    let pad = " ".repeat(widths[c] - s.chars().count());
                    if c < self.left {
                        format!("{s}{pad}")
                    } else {
                        format!("{pad}{s}")
                    }
                })
                .collect();
            if markdown {
                format!("| {} |\n", padded.join(" | "))
            } else {
                format!("{}\n", padded.join("  ").trim_end())
            }
        };
        let mut out = line(&self.headers);
        if markdown {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, &w)| {
                    if c < self.left {
                        format!(":{}", "-".repeat(w.max(2) - 1))
                    } else {
                        format!("{}:", "-".repeat(w.max(2) - 1))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        } else {
            let total = widths.iter().sum::<usize>() + 2 * (cols - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, round: u32, rps: f64, cpu: f64) -> RunRow {
        RunRow {
            label: label.into(),
            round,
            wrk: WrkResult {
                requests: (rps * 10.0) as u64,
                seconds: 10.0,
                req_per_s: rps,
                p50_us: 500.0,
                p99_us: 2000.0,
                socket_errors: 0,
                bad_status: 1,
                ..WrkResult::default()
            },
            cpu_seconds: Some(cpu),
            rss_kib: Some(10240),
            backend_requests: vec![1, 1, 2],
            load_cpu_seconds: 5.0,
            proxy_core_busy: Some(100.0),
            load_core_busy: Some(50.0),
        }
    }

    fn report() -> Report {
        Report {
            settings: vec![("rounds".into(), "3".into())],
            versions: vec![("nginx".into(), "nginx version: \"1.22\"".into())],
            baseline: None,
            runs: vec![
                row("ringlb", 1, 100.0, 5.0),
                row("nginx", 1, 50.0, 10.0),
                row("ringlb", 2, 300.0, 9.0),
                row("nginx", 2, 60.0, 10.0),
                row("ringlb", 3, 200.0, 8.0),
                row("nginx", 3, 40.0, 10.0),
            ],
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn summaries_take_medians_per_proxy_and_ratios_divide_them() {
        let r = report();
        let s = r.summaries();
        assert_eq!(s[0].label, "ringlb");
        assert_eq!(s[0].req_per_s, 200.0);
        assert_eq!(s[0].errors, 3);
        // ringlb cpu µs/req per round: 5000, 3000, 4000 → median 4000; nginx 20000, 16667, 25000.
        assert_eq!(s[0].cpu_us_per_req, Some(4000.0));
        let ratios = r.ratios();
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0].req_per_s, 4.0);
        assert_eq!(ratios[0].cpu_us_per_req, Some(0.2));
    }

    #[test]
    fn markdown_table_has_a_rule_and_pipes() {
        let text = report().render(true);
        assert!(text.contains("| proxy  | rounds | req/s |"));
        assert!(text.contains("| ringlb/nginx |  4.00 |       0.20 |"));
    }

    #[test]
    fn json_escapes_strings_and_drops_trailing_zeros() {
        let j = report().to_json();
        assert!(j.contains("\"nginx\": \"nginx version: \\\"1.22\\\"\""));
        assert!(j.contains("\"settings\": {\"rounds\": 3},"));
        assert!(j.contains("\"req_per_s\": 200,"));
        assert!(j.contains("\"cpu_us_per_req\": 0.2}"));
        assert_eq!(json_num(Some(f64::NAN)), "null");
        assert_eq!(json_num(Some(0.00001)), "0");
    }
}
