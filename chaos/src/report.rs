//! The report of a chaos run: `results.json` for machines, `report.html` for
//! people.
//!
//! [`write`] takes what a run leaves behind (its [`RunInfo`], the
//! [`History`], the checkers' [`checker::Report`] and the [`NemesisWindow`]s
//! during which faults were active) and writes two files into one directory:
//!
//! - `results.json` (pretty-printed): the checker report (`validity`,
//!   `checkers`, `counts`, `anomalies`, `details`) plus `valid` (true only for
//!   [`Validity::Valid`]: `unknown` is never a pass), `run`,
//!   `nemesis_windows`, `latency_ms` (p50/p99/max of the `ok` operations per
//!   operation kind) and `operations` (their total).
//! - `report.html`: one self-contained page (no scripts, no external files),
//!   so it can be opened offline or attached to a bug. From the top, what a
//!   reader needs first: the verdict in big letters, the checkers' verdicts,
//!   every anomaly with its (shrunk) sub-history as a table; then the run
//!   facts, cluster events and fault tally as tables; then one small latency
//!   chart per operation kind (a CAS that found another value is a `fail` of
//!   its own chart, not a red smear over every other), a throughput chart,
//!   and the tables of operations and nemesis windows. Fault windows are
//!   coloured bands, one colour per fault kind, with one legend above the
//!   charts (pale bands: the fault did not take effect).
//!
//! The SVG is written by hand: two axes and a few hundred lines do not need
//! a plotting crate. Every piece of text that comes from the run (window
//! names, anomaly messages, run facts) is HTML-escaped. Beyond [`MAX_POINTS`]
//! operations the scatter keeps every k-th `ok` operation but every `fail`
//! and `info` one (the interesting ones) and the page says so; the throughput
//! chart, the tables and `results.json` always use every operation.
//!
//! [`History::operations`] gives an `info` operation no return (it may take
//! effect at any later time), but what a chart should show is when the client
//! gave up: the scatter places it at its `info` event, or on the top edge if
//! it never completed at all.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checker::{self, Validity};
use crate::history::{EventType, History, OpName, Operation, Outcome, ProcessId};

/// Beyond this many operations the latency scatter is subsampled. A point is
/// about 40 bytes of SVG, so the page stays well under 10 MB.
pub const MAX_POINTS: usize = 50_000;

/// A time window during which a fault was active (ns since the run started,
/// same clock as history events).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NemesisWindow {
    /// The fault as shown on the charts (e.g. `partition-majority n1,n2`).
    pub name: String,
    /// The fault's kind (`--nemesis` name, e.g. `partition-halves`).
    #[serde(default)]
    pub kind: String,
    /// Whether the fault took effect (see `nemesis`).
    #[serde(default)]
    pub effective: bool,
    /// When the fault began, ns since the run started.
    pub start_ns: u64,
    /// When it was healed, ns since the run started. A fault still active at
    /// the end of the run should end at the run's end; a window with
    /// `end_ns < start_ns` is drawn empty.
    pub end_ns: u64,
}

/// Facts about the run shown at the top of the report and stored in
/// results.json.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunInfo {
    /// Seed of the run's random choices; the same seed replays the schedule.
    pub seed: u64,
    /// Planned length of the run, seconds.
    pub duration_s: u64,
    /// Name of the nemesis (the fault schedule).
    pub nemesis: String,
    /// Name of the workload (register, set, counter).
    pub workload: String,
    /// Number of storage nodes.
    pub nodes: usize,
    /// Whether the store ran with a safety mechanism deliberately disabled
    /// (anomalies are then expected: the run tests the checkers).
    pub unsafe_mode: bool,
    /// Directory holding the run's history, logs and node data.
    pub data_dir: String,
    /// Anything else worth keeping, as JSON (`null` when unused).
    pub extra: serde_json::Value,
}

/// Writes `dir/results.json` and `dir/report.html`, creating `dir` if needed.
/// A history that breaks the invoke/complete protocol is `InvalidData`.
pub fn write(
    dir: &Path,
    info: &RunInfo,
    history: &History,
    report: &checker::Report,
    windows: &[NemesisWindow],
) -> io::Result<()> {
    let ops = history.operations().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let latency = latency_ms(&ops);
    let mut results = serde_json::to_value(report)?;
    results["valid"] = json!(report.validity == Validity::Valid);
    results["run"] = serde_json::to_value(info)?;
    results["nemesis_windows"] = serde_json::to_value(windows)?;
    results["latency_ms"] = serde_json::to_value(&latency)?;
    results["operations"] = json!(ops.len());
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let page = html(info, report, &points(history, &ops), &latency, windows);
    std::fs::write(dir.join("report.html"), page)
}

/// Latency of the `ok` operations of one kind, milliseconds.
#[derive(Serialize)]
struct LatencyMs {
    p50: f64,
    p99: f64,
    max: f64,
}

fn latency_ms(ops: &[Operation]) -> BTreeMap<OpName, LatencyMs> {
    let mut by_name: BTreeMap<OpName, Vec<u64>> = BTreeMap::new();
    for o in ops {
        if let (Outcome::Ok(_), Some(ret)) = (&o.outcome, o.ret_ns) {
            by_name.entry(o.op.name()).or_default().push(ret.saturating_sub(o.call_ns));
        }
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    by_name
        .into_iter()
        .map(|(name, mut ns)| {
            ns.sort_unstable();
            let max = ms(ns[ns.len() - 1]);
            (name, LatencyMs { p50: ms(quantile(&ns, 0.50)), p99: ms(quantile(&ns, 0.99)), max })
        })
        .collect()
}

/// The nearest-rank `q`-quantile (0..=1) of sorted values; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How an operation ended, as the charts colour it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Fail,
    Info,
}

/// Drawing order: the rarer, more interesting outcomes on top.
const KINDS: [Kind; 3] = [Kind::Ok, Kind::Fail, Kind::Info];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Ok => "#2ca02c",
            Kind::Fail => "#d62728",
            Kind::Info => "#ff7f0e",
        }
    }
}

/// One operation as the charts see it.
struct Point {
    op: OpName,
    call_ns: u64,
    /// Completion, or the `info` event for an operation the client gave up
    /// on; `None` if the history never completed it.
    done_ns: Option<u64>,
    kind: Kind,
}

impl Point {
    fn latency_ms(&self) -> Option<f64> {
        self.done_ns.map(|d| d.saturating_sub(self.call_ns) as f64 / 1e6)
    }
}

fn points(history: &History, ops: &[Operation]) -> Vec<Point> {
    // A process is retired after `info`, so it has at most one info event:
    // the one that ended its last operation.
    let gave_up: HashMap<ProcessId, u64> =
        history.events.iter().filter(|e| e.kind == EventType::Info).map(|e| (e.process, e.time_ns)).collect();
    let point = |o: &Operation| Point {
        op: o.op.name(),
        call_ns: o.call_ns,
        done_ns: o.ret_ns.or_else(|| gave_up.get(&o.process).copied()),
        kind: match o.outcome {
            Outcome::Ok(_) => Kind::Ok,
            Outcome::Fail => Kind::Fail,
            Outcome::Info => Kind::Info,
        },
    };
    ops.iter().map(point).collect()
}

/// The scatter's points: all of them up to [`MAX_POINTS`], else every k-th
/// `ok` one and all the others. Returns the points kept and k (1: all kept).
fn subsample<'a>(points: &[&'a Point], max: usize) -> (Vec<&'a Point>, usize) {
    let oks = points.iter().filter(|p| p.kind == Kind::Ok).count();
    let k = if points.len() <= max {
        1
    } else {
        // Keep some ok points even when failures alone exceed the budget:
        // they show what normal latency looked like.
        let budget = max.saturating_sub(points.len() - oks).max(max / 10);
        oks.div_ceil(budget).max(1)
    };
    let mut nth_ok = 0;
    let kept = points
        .iter()
        .copied()
        .filter(|p| {
            let keep = p.kind != Kind::Ok || nth_ok % k == 0;
            nth_ok += usize::from(p.kind == Kind::Ok);
            keep
        })
        .collect();
    (kept, k)
}

// Chart geometry, SVG pixels. The right margin holds the legend.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = WIDTH - 110.0;
const TOP: f64 = 10.0;
/// Below the plot: tick labels and the axis title.
const BELOW: f64 = 38.0;
/// Height of the throughput chart, and of each small latency chart.
const BIG: f64 = 300.0;
const SMALL: f64 = 170.0;

/// Colours of fault kinds, in order of first appearance.
const FAULT_COLOURS: [&str; 12] = [
    "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78",
    "#98df8a", "#c5b0d5", "#c49c94",
];

/// The colour of each fault kind present in `windows`.
fn fault_colours(windows: &[NemesisWindow]) -> BTreeMap<String, &'static str> {
    let mut out: BTreeMap<String, &'static str> = BTreeMap::new();
    for w in windows {
        let kind = window_kind(w);
        if !out.contains_key(&kind) {
            let colour = FAULT_COLOURS[out.len() % FAULT_COLOURS.len()];
            out.insert(kind, colour);
        }
    }
    out
}

/// A window's fault kind (older reports carry it only in the name).
fn window_kind(w: &NemesisWindow) -> String {
    if w.kind.is_empty() {
        w.name.split_whitespace().next().unwrap_or("").to_string()
    } else {
        w.kind.clone()
    }
}

/// Maps data values on one axis to pixels: `lo` to `px0`, `hi` to `px1`.
struct Axis {
    lo: f64,
    hi: f64,
    /// Tick spacing of a linear axis; `None` for log10 with a tick per decade.
    step: Option<f64>,
    px0: f64,
    px1: f64,
}

impl Axis {
    /// 0..`max` rounded up to a whole tick, about five ticks.
    fn linear(max: f64, px0: f64, px1: f64) -> Axis {
        let rough = max.max(f64::MIN_POSITIVE) / 5.0;
        let magnitude = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= rough).unwrap();
        Axis { lo: 0.0, hi: (max / step).ceil().max(1.0) * step, step: Some(step), px0, px1 }
    }

    /// Whole decades around `min..=max` (both > 0; floored at 1e-3).
    fn log(min: f64, max: f64, px0: f64, px1: f64) -> Axis {
        let lo = 10f64.powf(min.max(1e-3).log10().floor());
        let hi = 10f64.powf(max.max(lo).log10().ceil()).max(lo * 10.0);
        Axis { lo, hi, step: None, px0, px1 }
    }

    fn px(&self, v: f64) -> f64 {
        let f = |v: f64| if self.step.is_none() { v.log10() } else { v };
        let t = (f(v.clamp(self.lo, self.hi)) - f(self.lo)) / (f(self.hi) - f(self.lo));
        self.px0 + t * (self.px1 - self.px0)
    }

    /// Tick values with their labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        match self.step {
            Some(step) => {
                let decimals = (-step.log10().floor()).max(0.0) as usize;
                let n = (self.hi / step).round() as usize;
                (0..=n).map(|i| i as f64 * step).map(|v| (v, format!("{v:.decimals$}"))).collect()
            }
            None => {
                let (lo, hi) = (self.lo.log10().round() as i32, self.hi.log10().round() as i32);
                let label = |e: i32| format!("{:.*}", (-e).max(0) as usize, 10f64.powi(e));
                (lo..=hi).map(|e| (10f64.powi(e), label(e))).collect()
            }
        }
    }
}

/// An SVG chart `height` pixels tall: fault windows as bands coloured by
/// kind (the full description is the tooltip), grid, ticks, axis labels,
/// the `body` drawn with `x` and `y`, and the outcome legend.
fn chart(
    x: &Axis,
    y: &Axis,
    height: f64,
    y_label: &str,
    windows: &[NemesisWindow],
    colours: &BTreeMap<String, &'static str>,
    body: &str,
) -> String {
    let bottom = height - BELOW;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-size="11">"#
    );
    for w in windows {
        let (x0, x1) = (x.px(w.start_ns as f64 / 1e9), x.px(w.end_ns as f64 / 1e9));
        let colour = colours.get(&window_kind(w)).copied().unwrap_or("#7f7f7f");
        let opacity = if w.effective { 0.28 } else { 0.1 };
        svg += &format!(
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="{opacity}"><title>{}</title></rect>"#,
            (x1 - x0).max(0.0),
            bottom - TOP,
            escape(&w.name),
        );
    }
    for (v, label) in x.ticks() {
        let px = x.px(v);
        svg += &format!(
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{bottom}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 15.0
        );
    }
    for (v, label) in y.ticks() {
        let py = y.px(v);
        svg += &format!(
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT - 5.0,
            py + 4.0
        );
    }
    svg += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">time since start (s)</text><text transform="translate(15 {}) rotate(-90)" text-anchor="middle">{y_label}</text>"#,
        (LEFT + RIGHT) / 2.0,
        height - 6.0,
        (TOP + bottom) / 2.0,
    );
    svg += body;
    svg += &format!(
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        RIGHT - LEFT,
        bottom - TOP
    );
    for (i, kind) in KINDS.iter().enumerate() {
        let ly = TOP + 10.0 + 18.0 * i as f64;
        svg += &format!(
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
            RIGHT + 15.0,
            ly - 9.0,
            kind.colour(),
            RIGHT + 30.0,
            kind.name()
        );
    }
    svg + "</svg>"
}

/// One small latency chart of the operations `points` (one kind).
fn latency_chart(
    points: &[&Point],
    x: &Axis,
    windows: &[NemesisWindow],
    colours: &BTreeMap<String, &'static str>,
) -> String {
    let bottom = SMALL - BELOW;
    let (min, max) = points
        .iter()
        .filter_map(|p| p.latency_ms())
        .fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y = if min.is_finite() { Axis::log(min, max, bottom, TOP) } else { Axis::log(1.0, 1e3, bottom, TOP) };
    let mut body = String::new();
    for kind in KINDS {
        body += &format!(r#"<g fill="{}" fill-opacity="0.6">"#, kind.colour());
        for p in points.iter().filter(|p| p.kind == kind) {
            let cy = p.latency_ms().map_or(TOP, |ms| y.px(ms));
            body += &format!(r#"<circle cx="{:.1}" cy="{cy:.1}" r="2"/>"#, x.px(p.call_ns as f64 / 1e9));
        }
        body += "</g>";
    }
    chart(x, &y, SMALL, "latency (ms, log)", windows, colours, &body)
}

fn throughput_chart(
    points: &[Point],
    x: &Axis,
    windows: &[NemesisWindow],
    colours: &BTreeMap<String, &'static str>,
) -> String {
    let bottom = BIG - BELOW;
    let seconds = (x.hi.ceil() as usize).max(1);
    let mut per_second = [vec![0u64; seconds], vec![0u64; seconds], vec![0u64; seconds]];
    for p in points {
        if let Some(done) = p.done_ns {
            let i = KINDS.iter().position(|k| *k == p.kind).unwrap();
            per_second[i][((done / 1_000_000_000) as usize).min(seconds - 1)] += 1;
        }
    }
    let max = per_second.iter().flatten().copied().max().unwrap_or(0);
    let y = Axis::linear((max as f64).max(1.0), bottom, TOP);
    let mut body = String::new();
    for (kind, counts) in KINDS.iter().zip(&per_second) {
        let line: Vec<String> = (counts.iter().enumerate())
            .map(|(s, n)| format!("{:.1},{:.1}", x.px(s as f64 + 0.5), y.px(*n as f64)))
            .collect();
        body += &format!(
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            kind.colour(),
            line.join(" ")
        );
    }
    chart(x, &y, BIG, "completed operations / s", windows, colours, &body)
}

/// The fault-kind legend: a swatch per kind, with how many windows took effect.
fn fault_legend(windows: &[NemesisWindow], colours: &BTreeMap<String, &'static str>) -> String {
    let mut html = String::from("<p class=\"legend\">");
    for (kind, colour) in colours {
        let of_kind: Vec<&NemesisWindow> = windows.iter().filter(|w| window_kind(w) == *kind).collect();
        let effective = of_kind.iter().filter(|w| w.effective).count();
        html += &format!(
            "<span><i style=\"background:{colour}\"></i>{} ({effective}/{})</span> ",
            escape(kind),
            of_kind.len()
        );
    }
    html + "</p>"
}

/// Escapes text for HTML element content and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `<tr>` of escaped cells (`th` for the first).
fn row<S: AsRef<str>>(cells: &[S]) -> String {
    let mut tr = String::from("<tr>");
    for (i, c) in cells.iter().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        tr += &format!("<{tag}>{}</{tag}>", escape(c.as_ref()));
    }
    tr + "</tr>"
}

fn verdict(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "VALID",
        Validity::Unknown => "UNKNOWN",
        Validity::Invalid => "INVALID",
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1000px}\
    .verdict{font-size:3em;font-weight:bold;margin:.2em 0}.VALID{color:#2ca02c}\
    .UNKNOWN{color:#ff7f0e}.INVALID{color:#d62728}table{border-collapse:collapse;margin:.5em 0}\
    th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}\
    pre{background:#f6f6f6;padding:.5em}.legend span{margin-right:1em;white-space:nowrap}\
    .legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}\
    .anomaly{border-left:4px solid #d62728;padding-left:.8em;margin:1em 0}h3{margin:.8em 0 .2em}";

/// Renders JSON as tables: objects as key/value rows (nested), arrays of
/// scalars inline, everything else as text.
fn json_table(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) if !map.is_empty() => {
            let mut t = String::from("<table>");
            for (k, v) in map {
                t += &format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), json_table(v));
            }
            t + "</table>"
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let parts: Vec<String> = items.iter().map(|i| escape(&scalar(i))).collect();
            parts.join(", ")
        }
        Value::Array(items) => items.iter().map(json_table).collect::<Vec<_>>().join("<br>"),
        other => escape(&scalar(other)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// An anomaly's evidence as a table, one operation a row.
fn ops_table(ops: &[Operation]) -> String {
    let mut t = row(&["process", "operation", "invoked (s)", "returned (s)", "outcome"]);
    for o in ops {
        let op = serde_json::to_value(&o.op).map(|v| scalar_compact(&v)).unwrap_or_default();
        let outcome = match &o.outcome {
            Outcome::Ok(out) => {
                format!("ok {}", serde_json::to_value(out).map(|v| scalar_compact(&v)).unwrap_or_default())
            }
            Outcome::Fail => "fail".into(),
            Outcome::Info => "info (unknown)".into(),
        };
        let secs = |ns: u64| format!("{:.6}", ns as f64 / 1e9);
        t +=
            &row(&[o.process.0.to_string(), op, secs(o.call_ns), o.ret_ns.map_or("-".into(), secs), outcome]);
    }
    format!("<table>{t}</table>")
}

fn scalar_compact(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn html(
    info: &RunInfo,
    report: &checker::Report,
    points: &[Point],
    latency: &BTreeMap<OpName, LatencyMs>,
    windows: &[NemesisWindow],
) -> String {
    let end_ns = points.iter().map(|p| p.done_ns.unwrap_or(p.call_ns));
    let end_ns = end_ns.chain(windows.iter().map(|w| w.end_ns)).max().unwrap_or(0);
    let x = Axis::linear((end_ns as f64 / 1e9).max(1.0), LEFT, RIGHT);
    let colours = fault_colours(windows);
    let v = verdict(report.validity);
    // 1. The verdict, the checkers, the anomalies: what a reader needs first.
    let mut page = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{v}: chaos run seed {}</title>\
         <style>{STYLE}</style></head><body><h1>Mnemosyne chaos run</h1><p class=\"verdict {v}\">{v}</p><table>",
        info.seed
    );
    page += &row(&["checker", "verdict"]);
    for (name, validity) in &report.checkers {
        page += &row(&[name.as_str(), verdict(*validity)]);
    }
    page += &format!("</table><h2>Anomalies ({})</h2>", report.anomalies.len());
    if report.anomalies.is_empty() {
        page += "<p>None.</p>";
    }
    for a in &report.anomalies {
        let kind = serde_json::to_value(a.kind).unwrap_or_default();
        let key = a.key.map(|k| format!(" on key {}", k.0)).unwrap_or_default();
        page += &format!(
            "<div class=\"anomaly\"><h3>{}{key}</h3><p>{}</p>",
            escape(kind.as_str().unwrap_or("?")),
            escape(&a.message)
        );
        if !a.ops.is_empty() {
            page += &format!(
                "<details open><summary>{} operations (a smallest sub-history that shows it)</summary>{}</details>",
                a.ops.len(),
                ops_table(&a.ops)
            );
        }
        page += "</div>";
    }
    // 2. The run: facts, cluster events, faults.
    page += "<h2>Run</h2><table>";
    page += &row(&["seed", &info.seed.to_string()]);
    page += &row(&["duration (s)", &info.duration_s.to_string()]);
    page += &row(&["workload", &info.workload]);
    page += &row(&["nemesis", &info.nemesis]);
    page += &row(&["nodes", &info.nodes.to_string()]);
    page += &row(&["planted bug / unsafe", &info.unsafe_mode.to_string()]);
    page += &row(&["data dir", &info.data_dir]);
    page += &row(&["operations", &points.len().to_string()]);
    page += "</table>";
    if let Some(extra) = info.extra.as_object() {
        page += "<h2>Cluster and faults</h2>";
        page += &json_table(&serde_json::Value::Object(extra.clone()));
    }
    // 3. Charts: one latency chart per operation kind, then throughput.
    page += "<h2>Latency by operation</h2><p>Every operation at its invoke time; <code>info</code> \
             operations at the moment the client gave up, or on the top edge if they never completed. \
             Bands: fault windows by kind (pale: did not take effect).</p>";
    page += &fault_legend(windows, &colours);
    let names: Vec<OpName> = {
        let mut n: Vec<OpName> = points.iter().map(|p| p.op).collect();
        n.sort();
        n.dedup();
        n
    };
    for name in names {
        let of_kind: Vec<&Point> = points.iter().filter(|p| p.op == name).collect();
        let (shown, k) = subsample(&of_kind, MAX_POINTS / 10);
        let c = report.counts.get(&name).copied().unwrap_or_default();
        page += &format!("<h3>{}: ok {}, fail {}, info {}</h3>", escape(name.as_str()), c.ok, c.fail, c.info);
        if k > 1 {
            page += &format!(
                "<p><b>Subsampled:</b> {} of {} shown (every {k}th <code>ok</code>, every <code>fail</code> \
                 and <code>info</code>).</p>",
                shown.len(),
                of_kind.len()
            );
        }
        page += &latency_chart(&shown, &x, windows, &colours);
    }
    page += "<h2>Throughput</h2><p>Completed operations per 1 s bucket, by outcome.</p>";
    page += &fault_legend(windows, &colours);
    page += &throughput_chart(points, &x, windows, &colours);
    // 4. The tables.
    page += "<h2>Operations</h2><table>";
    page += &row(&["op", "ok", "fail", "info", "p50 ms", "p99 ms", "max ms"]);
    for (name, c) in &report.counts {
        let (p50, p99, max) =
            latency.get(name).map_or((f64::NAN, f64::NAN, f64::NAN), |l| (l.p50, l.p99, l.max));
        let ms = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.2}") };
        page += &row(&[
            name.as_str(),
            &c.ok.to_string(),
            &c.fail.to_string(),
            &c.info.to_string(),
            &ms(p50),
            &ms(p99),
            &ms(max),
        ]);
    }
    page += "</table><h2>Checker details</h2>";
    page += &json_table(&serde_json::to_value(&report.details).unwrap_or_default());
    page += "<h2>Nemesis windows</h2><table>";
    page += &row(&["fault", "took effect", "start (s)", "end (s)"]);
    for w in windows {
        let secs = |ns: u64| format!("{:.3}", ns as f64 / 1e9);
        page += &row(&[
            w.name.as_str(),
            if w.effective { "yes" } else { "no" },
            &secs(w.start_ns),
            &secs(w.end_ns),
        ]);
    }
    page + "</table></body></html>\n"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::{Event, Key, Op, Output, Recorder};

    fn window(name: &str, start_ms: u64, end_ms: u64) -> NemesisWindow {
        NemesisWindow {
            name: name.to_string(),
            kind: name.split_whitespace().next().unwrap_or(name).to_string(),
            effective: true,
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
        }
    }

    #[test]
    fn small_run_writes_json_and_html() {
        // Three writes and a read succeed, one CAS fails, one times out, and
        // one read is still outstanding when the history is taken.
        let rec = Recorder::new();
        let mut p = rec.process();
        for v in 1..=3 {
            p = rec.invoke(p, Op::Write { key: Key(0), value: v }).ok(Output::Done);
        }
        let p = rec.invoke(p, Op::Read { key: Key(0) }).ok(Output::Read(Some(3)));
        let p = rec.invoke(p, Op::Cas { key: Key(0), from: Some(1), to: 9 }).fail();
        let p = rec.invoke(p, Op::Cas { key: Key(0), from: Some(3), to: 4 }).info();
        let outstanding = rec.invoke(p, Op::Read { key: Key(0) });
        let history = rec.history();
        drop(outstanding);

        let report = checker::check(&history, Duration::from_secs(1)).unwrap();
        let info = RunInfo { seed: 42, workload: "register".into(), nodes: 3, ..Default::default() };
        let windows = [window("partition-majority", 0, 1), window("kill<leader>", 2, 3)];
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &info, &history, &report, &windows).unwrap();

        // results.json: the verdict, the checker's counts and the run facts.
        let text = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["valid"], true);
        assert_eq!(json["validity"], "valid");
        assert_eq!(json["operations"], 7);
        assert_eq!(json["counts"]["write"]["ok"], 3);
        assert_eq!(json["counts"]["cas"], json!({"ok": 0, "fail": 1, "info": 1}));
        assert_eq!(json["counts"]["read"], json!({"ok": 1, "fail": 0, "info": 1}));
        assert_eq!(json["run"]["seed"], 42);
        assert_eq!(json["nemesis_windows"][1]["name"], "kill<leader>");
        assert!(json["latency_ms"]["write"]["p99"].as_f64().unwrap() > 0.0);

        // report.html: charts, escaped window names, the verdict.
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        // One latency chart per operation kind (write, read, cas) and the throughput chart.
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("partition-majority"));
        assert!(html.contains("kill&lt;leader&gt;") && !html.contains("kill<leader>"));
        assert!(html.contains(">VALID</p>"));
        assert!(!html.contains("Subsampled"));
    }

    #[test]
    fn large_history_subsamples_ok_points_only() {
        // 60k operations, one per 100 µs; every 1000th fails.
        let op = Op::Write { key: Key(0), value: 1 };
        let mut events = Vec::new();
        for i in 0..60_000u64 {
            let (process, t) = (ProcessId(i), i * 100_000);
            let kind = if i % 1000 == 0 { EventType::Fail } else { EventType::Ok };
            let output = (kind == EventType::Ok).then_some(Output::Done);
            events.push(Event { process, kind: EventType::Invoke, op: op.clone(), output: None, time_ns: t });
            events.push(Event { process, kind, op: op.clone(), output, time_ns: t + 50_000 });
        }
        let history = History { events };
        let ops = history.operations().unwrap();
        let report = checker::Report {
            validity: Validity::Unknown,
            checkers: BTreeMap::new(),
            counts: checker::count_outcomes(&ops),
            anomalies: Vec::new(),
            details: BTreeMap::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &RunInfo::default(), &history, &report, &[]).unwrap();

        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("Subsampled"));
        let circles = html.matches("<circle").count();
        assert!(circles <= MAX_POINTS / 10 && circles > MAX_POINTS / 20, "{circles} points");
        assert!(html.len() < 10_000_000);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["operations"], 60_000);
        assert_eq!(json["counts"]["write"], json!({"ok": 59_940, "fail": 60, "info": 0}));
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.999), 7);
    }

    #[test]
    fn axes_pick_round_ticks() {
        let x = Axis::linear(7.3, 0.0, 100.0);
        assert_eq!(x.ticks().iter().map(|t| t.1.as_str()).collect::<Vec<_>>(), ["0", "2", "4", "6", "8"]);
        let y = Axis::log(0.02, 350.0, 0.0, 100.0);
        assert_eq!(y.ticks().first().unwrap().1, "0.01");
        assert_eq!(y.ticks().last().unwrap().1, "1000");
        assert_eq!((y.px(0.01), y.px(1000.0)), (0.0, 100.0));
    }
}
