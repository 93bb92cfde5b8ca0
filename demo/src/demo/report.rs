//! What the demo shows: the terminal table, the targets of the issue, and the report
//! directory (`report.json`, `summary.md`, `time-vs-n.png`, `throughput.png`).
//!
//! Charts use plotters' bitmap backend with text through `ab_glyph`, which needs a TrueType
//! font at run time: the first of the usual system fonts found (or `STORE_DEMO_FONT`). A
//! machine without any gets the report without charts and a note saying why, rather than a
//! font compiled into the binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::results::{DemoReport, Row, Target};
use super::setup::{Case, Method};

pub const TIME_CHART: &str = "time-vs-n.png";
pub const THROUGHPUT_CHART: &str = "throughput.png";
pub const SUMMARY: &str = "summary.md";
pub const JSON: &str = "report.json";

fn case_label(case: Case) -> &'static str {
    match case {
        Case::One => "1 consumer, other node",
        Case::Local => "k consumers, one node",
        Case::Nodes => "N nodes",
        Case::Runner => "s2t-runner",
    }
}

fn n_label(row: &Row) -> String {
    match row.case {
        Case::Local => format!("k={}", row.n),
        Case::Runner => row.consumers.first().map_or_else(String::new, |c| c.who.clone()),
        _ => format!("N={}", row.n),
    }
}

fn secs(s: f64) -> String {
    if !s.is_finite() {
        "FAILED".into()
    } else if s < 0.1 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn megabytes(b: u64) -> String {
    let m = b as f64 / 1e6;
    if b == 0 {
        "0".into()
    } else if m < 10.0 {
        format!("{m:.2} MB")
    } else {
        format!("{m:.0} MB")
    }
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), megabytes)
}

fn status(row: &Row) -> String {
    if row.all_ok {
        "equal".into()
    } else {
        let bad = row.consumers.iter().filter(|c| c.error.is_some() || !c.digest_ok).count();
        format!("{bad} BAD")
    }
}

/// One line per row for the live log.
pub fn row_line(row: &Row) -> String {
    let mut line = format!(
        "{:<22} {:<30} {:>7} {:>10} {:>8.1} MB/s {:>5.2} x S/B  S3 {:>7}  BLAKE3 of mapped bytes {}",
        case_label(row.case),
        row.method.label(),
        n_label(row),
        secs(row.seconds),
        row.mb_per_s,
        row.x_bound,
        mb(row.s3_bytes),
        status(row)
    );
    for c in row.consumers.iter().filter(|c| c.error.is_some()) {
        let _ = write!(line, "\n    {}: {}", c.who, c.error.as_deref().unwrap_or_default());
    }
    line
}

/// The last column: every copy's bytes (a store consumer's mapping, an S3 download's buffer,
/// the runner's weights) hashed with BLAKE3 and compared to the weights file's.
const HEADER: [&str; 9] =
    ["case", "method", "N/k", "time", "MB/s each", "S/B", "x S/B", "from S3", "BLAKE3 of mapped bytes"];

fn cells(row: &Row) -> [String; 9] {
    [
        case_label(row.case).into(),
        row.method.label().into(),
        n_label(row),
        secs(row.seconds),
        if row.mb_per_s.is_finite() && row.mb_per_s < 1e4 {
            format!("{:.1}", row.mb_per_s)
        } else if row.mb_per_s.is_finite() {
            format!("{:.0}", row.mb_per_s)
        } else {
            "-".into()
        },
        format!("{:.2} s", row.s_over_b),
        format!("{:.2}", row.x_bound),
        mb(row.s3_bytes),
        status(row),
    ]
}

/// The table for the terminal.
pub fn table(report: &DemoReport) -> String {
    let rows: Vec<[String; 9]> = report.rows.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: &[String]| {
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            // Text columns left, numbers right.
            if i < 2 {
                let _ = write!(line, "{c:<w$}  ");
            } else {
                let _ = write!(line, "{c:>w$}  ");
            }
        }
        line.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "S = {} of weights, B = {} Mbit/s per node: S/B = {:.2} s ({})",
        megabytes(report.model.weights_bytes),
        report.rate_mbit,
        report.s_over_b,
        report.network
    );
    let header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(out, "{}", fmt(&header));
    let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    let mut last = None;
    for (row, c) in report.rows.iter().zip(&rows) {
        if last.is_some_and(|l| l != row.case) {
            out.push('\n');
        }
        last = Some(row.case);
        let _ = writeln!(out, "{}", fmt(c));
    }
    out
}

/// The targets of the issue, checked against this run.
pub fn evaluate(report: &DemoReport) -> Vec<Target> {
    let mut targets = Vec::new();
    let all_ok = report.rows.iter().all(|r| r.all_ok);
    targets.push(Target {
        target: "every case completed, BLAKE3 of every copy's mapped bytes equal to the source's".into(),
        met: all_ok && !report.rows.is_empty(),
        detail: format!("{} of {} rows", report.rows.iter().filter(|r| r.all_ok).count(), report.rows.len()),
    });
    let max_n = report.rows.iter().filter(|r| r.case == Case::Nodes).map(|r| r.n).max();
    if let Some(n) = max_n {
        if let Some(r) = report.row(Case::Nodes, Method::Swarm, n) {
            targets.push(Target {
                target: format!("swarm broadcast to N={n} within 1.3 x S/B"),
                met: r.all_ok && r.x_bound <= 1.3,
                detail: format!("{} = {:.2} x S/B", secs(r.seconds), r.x_bound),
            });
        }
        if let (Some(one), Some(all)) =
            (report.row(Case::One, Method::StoreReplication, 1), report.row(Case::Nodes, Method::FanOut, n))
        {
            let growth = all.seconds / one.seconds;
            targets.push(Target {
                target: format!("single-source fan-out grows ~N x (N={n})"),
                met: growth >= 0.75 * n as f64,
                detail: format!("{} at N={n} vs {} at N=1: {growth:.2} x", secs(all.seconds), secs(one.seconds)),
            });
        }
        match report.row(Case::Nodes, Method::CooperativeS3, n) {
            Some(r) => {
                let ratio = r.s3_bytes.map_or(f64::NAN, |b| b as f64 / report.model.weights_bytes as f64);
                targets.push(Target {
                    target: format!("cooperative S3 fetch on N={n} serves ~1 x S from S3"),
                    met: r.all_ok && ratio <= 1.1,
                    detail: format!("S3 served {ratio:.2} x S; {} = {:.2} x S/B", secs(r.seconds), r.x_bound),
                });
            }
            None => targets.push(Target {
                target: format!("cooperative S3 fetch on N={n} serves ~1 x S from S3"),
                met: false,
                detail: "not measured (see missing)".into(),
            }),
        }
    }
    if let Some(r) = report.rows.iter().find(|r| r.method == Method::StoreSharedCopy) {
        targets.push(Target {
            target: format!("k={} local consumers cost one transfer", r.n),
            met: r.all_ok && r.x_bound <= 1.3,
            detail: format!("{} = {:.2} x S/B; {}", secs(r.seconds), r.x_bound, r.note.as_deref().unwrap_or_default()),
        });
    }
    if report.runner.len() == 2 {
        targets.push(Target {
            target: "s2t-runner: identical transcripts via store and via S3".into(),
            met: report.transcripts_equal,
            detail: report.runner.iter().map(|r| format!("{:?}", r.transcript)).collect::<Vec<_>>().join(" / "),
        });
    }
    targets
}

/// The runner's report as a few lines.
pub fn runner_text(report: &DemoReport) -> String {
    let mut out = String::new();
    if report.model.random_weights {
        out.push_str("note: random weights (generated): the transcripts are noise, but must be identical\n");
    }
    let _ = writeln!(out, "audio: {}", report.audio);
    for r in &report.runner {
        let f = |k: &str| r.report.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "{} on {} ({}): transcript {:?}, tokens {}\n    weights in memory after {}, model ready after {}, inference {:.2} s (RTF {:.2})\n    BLAKE3 of the weight bytes it held: {} ({})",
            r.method.label(),
            r.node,
            r.model,
            r.transcript,
            r.report.get("tokens").map_or_else(String::new, |t| t.to_string()),
            secs(f("transfer_seconds")),
            secs(f("ready_seconds")),
            f("inference_seconds"),
            f("real_time_factor"),
            r.report.get("weights_blake3").and_then(|d| d.as_str()).unwrap_or("not reported"),
            if r.report.get("weights_blake3").and_then(|d| d.as_str()) == Some(report.model.digest.as_str()) {
                "equal to the source's"
            } else {
                "DIFFERS from the source's"
            },
        );
    }
    let _ = writeln!(out, "transcripts (and tokens) identical: {}", report.transcripts_equal);
    out
}

/// The targets as lines.
pub fn targets_text(report: &DemoReport) -> String {
    let mut out = String::new();
    for t in &report.targets {
        let _ = writeln!(out, "[{}] {}: {}", if t.met { "met" } else { "NOT met" }, t.target, t.detail);
    }
    for m in &report.missing {
        let _ = writeln!(out, "[missing] {m}");
    }
    out
}

fn markdown(report: &DemoReport, charts: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# store-demo: loading a speech model on several nodes\n");
    let _ = writeln!(
        md,
        "Machine: {} cores, {}, kernel {}. Network: {}. Total run time {:.0} s.\n",
        report.machine.nproc,
        report.machine.cpu_model,
        report.machine.kernel,
        report.network_detail,
        report.total_seconds
    );
    let _ = writeln!(
        md,
        "Model: {}{}; the object moved is its weights, S = {} bytes (BLAKE3 of the file `{}`). B = {} Mbit/s per node, **S/B = {:.2} s**.\n",
        report.model.source,
        if report.model.random_weights { " (random weights: the transcript is noise)" } else { "" },
        report.model.weights_bytes,
        report.model.digest,
        report.rate_mbit,
        report.s_over_b
    );
    let _ = writeln!(md, "| {} |", HEADER.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(HEADER.len()));
    for row in &report.rows {
        let c = cells(row);
        let method = if row.method.is_store() { format!("**{}**", c[1]) } else { c[1].clone() };
        let _ = writeln!(md, "| {} | {method} | {} |", c[0], c[2..].join(" | "));
    }
    let _ = writeln!(
        md,
        "\nTime is until the slowest consumer holds the whole object (for the runner: the model in its address space). \
         Bold rows are this system's answer; the others are the baselines of the published experiment \
         (S3 downloads, and single-source fan-out as Ray's object store does it). \
         The last column hashes the bytes each consumer holds, after its clock stopped: a store copy through \
         the read-only mapping a consumer gets, an S3 download's buffer, the weights the runner ran on \
         (hashed by the runner); each BLAKE3 is compared with the weights file's, never with a daemon's \
         reported digest.\n"
    );
    let notes: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| format!("- {} / {}: {n}", case_label(r.case), r.method.label())))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "{}\n", notes.join("\n"));
    }
    if charts {
        let _ = writeln!(md, "![time vs N]({TIME_CHART})\n\n![MB/s per case]({THROUGHPUT_CHART})\n");
    }
    let _ = writeln!(md, "## Targets\n\n```\n{}```\n", targets_text(report));
    let _ = writeln!(md, "## s2t-runner\n\n```\n{}```", runner_text(report));
    md
}

/// Writes `report.json`, `summary.md` and the charts into `dir`; returns notes for the user.
pub fn write_dir(report: &DemoReport, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut notes = Vec::new();
    std::fs::write(dir.join(JSON), serde_json::to_vec_pretty(report)?)?;
    let charts = match register_font() {
        Ok(font) => {
            match (time_chart(report, &dir.join(TIME_CHART)), throughput_chart(report, &dir.join(THROUGHPUT_CHART))) {
                (Ok(()), Ok(())) => {
                    tracing::debug!(font = %font.display(), "charts drawn");
                    true
                }
                (a, b) => {
                    for e in [a.err(), b.err()].into_iter().flatten() {
                        notes.push(format!("charts not drawn: {e:#}"));
                    }
                    false
                }
            }
        }
        Err(e) => {
            notes.push(format!("charts not drawn: {e:#}"));
            false
        }
    };
    std::fs::write(dir.join(SUMMARY), markdown(report, charts))?;
    notes.push(format!(
        "report: {}{}",
        dir.join(SUMMARY).display(),
        if charts { format!(", charts {TIME_CHART} and {THROUGHPUT_CHART} beside it") } else { String::new() }
    ));
    Ok(notes)
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a system font as plotters' `sans-serif` (once per process); the demo's and
/// broadcast-sim's charts both use it.
pub(crate) fn register_font() -> anyhow::Result<PathBuf> {
    static FONT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let explicit = std::env::var_os("STORE_DEMO_FONT").map(PathBuf::from);
        let path =
            explicit.into_iter().chain(FONT_CANDIDATES.iter().map(PathBuf::from)).find(|p| p.is_file()).ok_or_else(
                || {
                    "no TrueType font found (install fonts-dejavu-core or set STORE_DEMO_FONT=/path/to/font.ttf)"
                        .to_string()
                },
            )?;
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))?;
        Ok(path)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Slowest-consumer seconds per N for the methods of case 3 (N = 1 is case 1).
/// A line of the time chart: its name, colour and (N, seconds) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn series(report: &DemoReport) -> Vec<Series> {
    let at = |n: usize, methods: &[Method]| -> Option<f64> {
        report
            .rows
            .iter()
            .find(|r| r.n == n && matches!(r.case, Case::One | Case::Nodes) && methods.contains(&r.method) && r.all_ok)
            .map(|r| r.seconds)
    };
    let mut ns: Vec<usize> =
        report.rows.iter().filter(|r| matches!(r.case, Case::One | Case::Nodes)).map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let line = |methods: &[Method]| -> Vec<(f64, f64)> {
        ns.iter().filter_map(|&n| at(n, methods).map(|s| (n as f64, s))).collect()
    };
    vec![
        ("single-source fan-out (Ray)", RGBColor(214, 39, 40), line(&[Method::StoreReplication, Method::FanOut])),
        ("N S3 downloads", RGBColor(255, 127, 14), line(&[Method::S3Download, Method::S3NDownloads])),
        ("store swarm broadcast", RGBColor(31, 119, 180), line(&[Method::StoreReplication, Method::Swarm])),
        ("cooperative S3 fetch", RGBColor(44, 160, 44), line(&[Method::CooperativeS3])),
    ]
}

fn time_chart(report: &DemoReport, path: &Path) -> anyhow::Result<()> {
    let series = series(report);
    let max_n = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).fold(1.0, f64::max);
    let max_t = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(report.s_over_b, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Time until every node has the model ({}, {} Mbit/s per node)",
                megabytes(report.model.weights_bytes),
                report.rate_mbit
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.8f64..(max_n + 0.2), 0f64..max_t)?;
    chart
        .configure_mesh()
        .x_desc("N (receiving nodes)")
        .y_desc("seconds (slowest node)")
        .x_labels(max_n as usize + 1)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { String::new() })
        .label_style(("sans-serif", 14))
        .draw()?;
    let bound = vec![(0.8, report.s_over_b), (max_n + 0.2, report.s_over_b)];
    chart
        .draw_series(LineSeries::new(bound, BLACK.mix(0.5).stroke_width(1)))?
        .label(format!("S/B = {:.1} s", report.s_over_b))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    for (name, color, points) in series {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 5, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn throughput_chart(report: &DemoReport, path: &Path) -> anyhow::Result<()> {
    // Reversed: the segmented axis counts from the bottom, the table from the top.
    let rows: Vec<&Row> = report.rows.iter().filter(|r| r.seconds.is_finite()).rev().collect();
    let link = f64::from(report.rate_mbit) / 8.0;
    // A model mapped in place takes milliseconds: its bar would flatten every other one, so
    // the axis stops at a few times the link rate and such bars say their value in text.
    let typical = rows.iter().map(|r| r.mb_per_s).filter(|v| *v <= link * 4.0).fold(link, f64::max);
    let max_x = typical * 1.25;
    let labels: Vec<String> = rows.iter().map(|r| format!("{} ({})", r.method.label(), n_label(r))).collect();
    let height = 120 + 34 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("MB/s per consumer (link {link:.0} MB/s = {} Mbit/s)", report.rate_mbit), ("sans-serif", 20))
        .margin(16)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..max_x, (0..rows.len()).into_segmented())?;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("MB/s (10^6 bytes per second) each consumer got the object at")
        .y_label_formatter(&label_of)
        .y_labels(rows.len())
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let color = if r.method.is_store() { RGBColor(31, 119, 180) } else { RGBColor(255, 127, 14) };
        let v = r.mb_per_s.min(max_x);
        let mut bar = Rectangle::new([(0.0, SegmentValue::Exact(i)), (v, SegmentValue::Exact(i + 1))], color.filled());
        bar.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        let text = if r.mb_per_s > max_x { format!("{:.0} MB/s", r.mb_per_s) } else { format!("{:.1}", r.mb_per_s) };
        let x = if r.mb_per_s > max_x { max_x * 0.8 } else { v + max_x * 0.01 };
        let style = ("sans-serif", 13)
            .into_font()
            .color(if r.mb_per_s > max_x { &WHITE } else { &BLACK })
            .pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(std::iter::once(Text::new(text, (x, SegmentValue::CenterOf(i)), style)))?;
    }
    chart.draw_series(LineSeries::new(
        vec![(link, SegmentValue::Exact(0)), (link, SegmentValue::Exact(rows.len()))],
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
