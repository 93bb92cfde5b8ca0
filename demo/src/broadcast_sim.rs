//! The broadcast simulator as a bench (bin `broadcast-sim`): for each object size and number
//! of receivers N, one broadcast per schedule in `store_daemon::replication::sim` (the swarm
//! running the production pull policy, the swarm with receivers dying mid-transfer, a chain,
//! a binary tree), each row printed as soon as it is computed, and a chart per size of the
//! slowest receiver's time over S/B against N, beside the pipelined lower bound.
//!
//! A run cannot be interrupted, so `max_wall` is applied before it: a run whose wall time,
//! extrapolated from the runs already done, would exceed it is skipped and reported as such.
//! A run with nothing to extrapolate from is run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;
use store_daemon::replication::sim::{self, Schedule, SimConfig};

/// What is broadcast, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Every receiver runs the production pull policy.
    Swarm,
    /// The swarm, with a fraction of the receivers dying mid-transfer.
    #[serde(rename = "swarm+failures")]
    SwarmFailures,
    Chain,
    BinaryTree,
}

impl Case {
    pub const ALL: [Case; 4] = [Case::Swarm, Case::SwarmFailures, Case::Chain, Case::BinaryTree];

    pub fn label(self) -> &'static str {
        match self {
            Case::Swarm => "swarm",
            Case::SwarmFailures => "swarm+failures",
            Case::Chain => "chain",
            Case::BinaryTree => "binary-tree",
        }
    }

    fn schedule(self) -> Schedule {
        match self {
            Case::Swarm | Case::SwarmFailures => Schedule::Swarm,
            Case::Chain => Schedule::Chain,
            Case::BinaryTree => Schedule::BinaryTree,
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Case::Swarm => RGBColor(31, 119, 180),
            Case::SwarmFailures => RGBColor(44, 160, 44),
            Case::Chain => RGBColor(214, 39, 40),
            Case::BinaryTree => RGBColor(255, 127, 14),
        }
    }
}

/// The bench's parameters.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Receivers of each broadcast.
    pub nodes: Vec<usize>,
    /// Object sizes, bytes.
    pub sizes: Vec<u64>,
    /// Uplink and downlink of every node, bytes per second.
    pub rate: f64,
    /// Fraction of the receivers that die in [`Case::SwarmFailures`], and when (in S/B).
    pub fail_fraction: f64,
    pub fail_at: f64,
    /// Probability that a chunk fetch fails (every case).
    pub loss: f64,
    pub seed: u64,
    pub cases: Vec<Case>,
    /// Skip a run whose estimated wall time is longer.
    pub max_wall: Duration,
}

impl BenchConfig {
    pub fn new() -> Self {
        Self {
            nodes: vec![2, 5, 16, 64, 256, 1000],
            sizes: vec![256 << 20, 16 << 30],
            rate: 200e6 / 8.0,
            fail_fraction: 0.05,
            fail_at: 0.3,
            loss: 0.0,
            seed: 1,
            cases: Case::ALL.to_vec(),
            max_wall: Duration::from_secs(600),
        }
    }

    /// The simulator's configuration of one run.
    pub fn sim_config(&self, size: u64, n: usize, case: Case) -> SimConfig {
        let mut config = SimConfig::new(n, size, self.rate);
        config.schedule = case.schedule();
        config.loss = self.loss;
        config.seed = self.seed;
        if case == Case::SwarmFailures {
            config.fail_fraction = self.fail_fraction;
            config.fail_at = self.fail_at;
        }
        config
    }

    /// The legend of a case (the failure case says how many fail, and when).
    pub fn case_legend(&self, case: Case) -> String {
        match case {
            Case::Swarm => "swarm (production pull policy)".into(),
            Case::SwarmFailures => {
                format!("swarm, {} % of receivers die at {} S/B", self.fail_fraction * 100.0, self.fail_at)
            }
            Case::Chain => "chain (pipelined)".into(),
            Case::BinaryTree => "binary tree (pipelined)".into(),
        }
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub size: u64,
    pub size_label: String,
    pub n: usize,
    pub schedule: Case,
    /// Slowest surviving receiver over S/B.
    pub ratio: f64,
    /// The pipelined broadcast's lower bound over S/B.
    pub lower_bound_ratio: f64,
    /// Bytes the source sent over S.
    pub source_egress: f64,
    /// Every surviving receiver completed with the source's bytes.
    pub verified: bool,
    /// Wall-clock seconds of the simulation.
    pub wall_secs: f64,
    /// S/B, seconds.
    pub transfer_time_secs: f64,
    pub slowest_secs: f64,
    /// The run reached the simulator's limit before every survivor completed.
    pub hit_limit: bool,
    pub failed_nodes: usize,
    pub completed: usize,
    pub verified_receivers: usize,
    pub retries: u64,
    pub corrupt_chunks: u64,
    /// The simulation panicked with this message (the other measures are then NaN or 0).
    pub panicked: Option<String>,
}

impl Row {
    pub fn name(&self) -> String {
        format!("{} N={} {}", self.size_label, self.n, self.schedule.label())
    }

    fn panicked(size: u64, n: usize, case: Case, config: &SimConfig, wall: Duration, message: String) -> Self {
        let tt = config.transfer_time();
        Row {
            size,
            size_label: size_label(size),
            n,
            schedule: case,
            ratio: f64::NAN,
            lower_bound_ratio: config.lower_bound() / tt,
            source_egress: f64::NAN,
            verified: false,
            wall_secs: wall.as_secs_f64(),
            transfer_time_secs: tt,
            slowest_secs: f64::NAN,
            hit_limit: false,
            failed_nodes: 0,
            completed: 0,
            verified_receivers: 0,
            retries: 0,
            corrupt_chunks: 0,
            panicked: Some(message),
        }
    }

    pub fn table_line(&self) -> String {
        if let Some(message) = &self.panicked {
            return format!(
                "{:<8} {:>5}  {:<15} the simulation panicked after {:.3} s: {}",
                self.size_label,
                self.n,
                self.schedule.label(),
                self.wall_secs,
                message
            );
        }
        format!(
            "{:<8} {:>5}  {:<15} {:>10.3} {:>11.3} {:>11.2} {:>6}  {:<8} {:>8.3}{}",
            self.size_label,
            self.n,
            self.schedule.label(),
            self.ratio,
            self.lower_bound_ratio,
            self.source_egress,
            self.failed_nodes,
            if self.verified { "yes" } else { "NO" },
            self.wall_secs,
            if self.hit_limit { "  (hit the simulator's limit)" } else { "" },
        )
    }
}

pub const TABLE_HEADER: &str =
    "size         N  schedule        time/(S/B) bound/(S/B) egress (xS) failed  verified   wall s";

/// What [`run_size`] reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Row(&'a Row),
    Skipped { size_label: &'a str, n: usize, case: Case, reason: String },
}

/// `16GiB`, `256MiB`, ... (a whole number of the largest binary unit that divides it).
pub fn size_label(size: u64) -> String {
    for (unit, name) in [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if size >= unit && size.is_multiple_of(unit) {
            return format!("{}{name}", size / unit);
        }
    }
    format!("{size}B")
}

/// Runs every N and case of one size, in that order, calling `on_event` as each row is done
/// or skipped. `earlier` (rows of other sizes) help estimate wall times.
pub fn run_size(
    config: &BenchConfig,
    size: u64,
    earlier: &[Row],
    mut on_event: impl FnMut(Event<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Row>> {
    let label = size_label(size);
    let mut rows: Vec<Row> = Vec::new();
    // Runs skipped, with their estimates.
    let mut skipped: Vec<(usize, Case, f64)> = Vec::new();
    for &n in &config.nodes {
        for &case in &config.cases {
            let estimate = estimate_wall(size, n, case, &rows, &skipped, earlier);
            if let Some((secs, basis)) = &estimate
                && *secs > config.max_wall.as_secs_f64()
            {
                skipped.push((n, case, *secs));
                let reason = format!(
                    "estimated wall time {} ({basis}) is over --max-wall-secs {}",
                    seconds(*secs),
                    config.max_wall.as_secs_f64()
                );
                on_event(Event::Skipped { size_label: &label, n, case, reason })?;
                continue;
            }
            let sim_config = config.sim_config(size, n, case);
            let started = Instant::now();
            let report = match std::panic::catch_unwind(|| sim::run(&sim_config)) {
                Ok(report) => report,
                Err(payload) => {
                    let row = Row::panicked(size, n, case, &sim_config, started.elapsed(), panic_message(&*payload));
                    on_event(Event::Row(&row))?;
                    rows.push(row);
                    continue;
                }
            };
            let tt = report.transfer_time;
            let row = Row {
                size,
                size_label: label.clone(),
                n,
                schedule: case,
                ratio: report.ratio(),
                lower_bound_ratio: report.lower_bound / tt,
                source_egress: report.source_egress,
                verified: report.all_verified(),
                wall_secs: report.wall.as_secs_f64(),
                transfer_time_secs: tt,
                slowest_secs: report.slowest,
                hit_limit: report.slowest >= sim_config.limit * tt * (1.0 - 1e-9),
                failed_nodes: report.failed_nodes,
                completed: report.completed,
                verified_receivers: report.verified,
                retries: report.retries,
                corrupt_chunks: report.corrupt_chunks,
                panicked: None,
            };
            on_event(Event::Row(&row))?;
            rows.push(row);
        }
    }
    Ok(rows)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_string(),
    }
}

/// A wall-time estimate of a run, and what it is based on, from runs of the same size:
/// for the failure case, the plain swarm at the same N (its wall time, or the estimate it
/// was skipped for); else the same case at smaller N (linear in N from one run; from two,
/// the growth between them, clamped between linear and cubic; a run that panicked counts
/// with the time it ran). Else the same N and case of another size, scaled by size (the
/// simulator steps through virtual time).
fn estimate_wall(
    size: u64,
    n: usize,
    case: Case,
    rows: &[Row],
    skipped: &[(usize, Case, f64)],
    earlier: &[Row],
) -> Option<(f64, String)> {
    if case == Case::SwarmFailures {
        if let Some(r) = rows.iter().find(|r| r.schedule == Case::Swarm && r.n == n && r.panicked.is_none()) {
            return Some((r.wall_secs, format!("the swarm without failures took {}", seconds(r.wall_secs))));
        }
        if let Some((_, _, secs)) = skipped.iter().find(|s| s.0 == n && s.1 == Case::Swarm) {
            return Some((*secs, "as the swarm without failures".into()));
        }
    }
    let mut same: Vec<&Row> = rows.iter().filter(|r| r.schedule == case && r.n < n).collect();
    same.sort_by_key(|r| r.n);
    match same.as_slice() {
        [.., a, b] if a.wall_secs > 0.05 && b.wall_secs > 0.05 && b.n > a.n => {
            let k = ((b.wall_secs / a.wall_secs).ln() / (b.n as f64 / a.n as f64).ln()).clamp(1.0, 3.0);
            let secs = b.wall_secs * (n as f64 / b.n as f64).powf(k);
            return Some((secs, format!("{} at N={} growing as N^{k:.2}", seconds(b.wall_secs), b.n)));
        }
        [.., b] => {
            let secs = b.wall_secs * n as f64 / b.n as f64;
            return Some((secs, format!("{} at N={}, linear in N", seconds(b.wall_secs), b.n)));
        }
        [] => {}
    }
    let other = earlier.iter().filter(|r| r.schedule == case && r.n == n && r.panicked.is_none());
    if let Some(r) = other.max_by_key(|r| r.size) {
        let secs = r.wall_secs * size as f64 / r.size as f64;
        return Some((secs, format!("{} for {}, linear in size", seconds(r.wall_secs), r.size_label)));
    }
    None
}

/// The chart of one size: `path` itself for a single size, else `<stem>-<size>.<ext>`.
pub fn chart_path(path: &Path, size: u64, sizes: usize) -> PathBuf {
    if sizes <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", size_label(size), ext.to_string_lossy()),
        None => format!("{stem}-{}", size_label(size)),
    };
    path.with_file_name(name)
}

/// Draws time/(S/B) against N (log scale) for every case of `rows` (one size; verified
/// runs only) and the lower bound, into a PNG at `path`.
pub fn write_chart(config: &BenchConfig, size: u64, rows: &[Row], path: &Path) -> anyhow::Result<()> {
    crate::demo::report::register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut ns: Vec<usize> = config.nodes.clone();
    ns.sort_unstable();
    ns.dedup();
    let (min_n, max_n) = (ns.first().copied().unwrap_or(1) as f64, ns.last().copied().unwrap_or(1) as f64);
    let bound: Vec<(f64, f64)> = ns
        .iter()
        .map(|&n| {
            let c = config.sim_config(size, n, Case::Swarm);
            (n as f64, c.lower_bound() / c.transfer_time())
        })
        .collect();
    let series: Vec<(Case, Vec<(f64, f64)>)> = config
        .cases
        .iter()
        .map(|&case| {
            let points = rows
                .iter()
                .filter(|r| r.schedule == case && r.verified && r.size == size)
                .map(|r| (r.n as f64, r.ratio))
                .collect();
            (case, points)
        })
        .collect();
    let max_y =
        series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).chain(bound.iter().map(|p| p.1)).fold(1.0, f64::max);
    // Log y as well: a chain spans 1 to N/M + 1 S/B, the swarm and the bound sit near 1.
    let y_range = (0.9f64..max_y * 1.25).log_scale().with_key_points(
        [1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]
            .into_iter()
            .filter(|&v| v <= max_y * 1.25)
            .collect(),
    );
    let x_range = (min_n / 1.3..max_n * 1.3).log_scale().with_key_points(ns.iter().map(|&n| n as f64).collect());
    // Points missing from the chart, and why, in a footnote: "swarm N=64, 256 (skipped)".
    let mut missing: Vec<(Case, &str, Vec<usize>)> = Vec::new();
    for &case in &config.cases {
        for &n in &ns {
            let row = rows.iter().find(|r| r.schedule == case && r.n == n && r.size == size);
            let why = match row {
                Some(r) if r.verified => continue,
                Some(r) if r.panicked.is_some() => "panicked",
                Some(r) if r.hit_limit => "not verified, hit the limit",
                Some(_) => "not verified",
                None => "skipped",
            };
            match missing.iter_mut().find(|m| m.0 == case && m.1 == why) {
                Some(m) => m.2.push(n),
                None => missing.push((case, why, vec![n])),
            }
        }
    }
    let mut foot_lines: Vec<String> = Vec::new();
    for (k, (case, why, ns)) in missing.iter().enumerate() {
        let ns: Vec<String> = ns.iter().map(|n| n.to_string()).collect();
        let item = format!("{} N={} ({why})", case.label(), ns.join(", "));
        match foot_lines.last_mut() {
            Some(line) if line.len() + item.len() < 130 => {
                line.push_str("; ");
                line.push_str(&item);
            }
            _ => foot_lines.push(if k == 0 { format!("Not plotted: {item}") } else { item }),
        }
    }
    let plot_height = 620;
    let height = plot_height + 20 * foot_lines.len() as u32 + if foot_lines.is_empty() { 0 } else { 10 };
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, foot) = root.split_vertically(plot_height);
    for (k, line) in foot_lines.iter().enumerate() {
        let style = ("sans-serif", 13).into_font().color(&RGBColor(120, 0, 0));
        foot.draw(&Text::new(line.as_str(), (20, 4 + 20 * k as i32), style))?;
    }
    let tt = config.sim_config(size, 1, Case::Swarm).transfer_time();
    let chunks = size.div_ceil(config.sim_config(size, 1, Case::Swarm).chunk_size);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!(
                "Broadcast of {} to N receivers, simulated ({} Mbit/s per link, S/B = {})",
                size_label(size),
                config.rate * 8.0 / 1e6,
                seconds(tt)
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .margin_right(30)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("N (receiving nodes, log scale)")
        .y_desc("slowest receiver's time / (S/B), log scale")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    let grey = RGBColor(90, 90, 90);
    chart
        .draw_series(LineSeries::new(bound.clone(), ShapeStyle::from(grey).stroke_width(2)))?
        .label(format!("lower bound (S/B)(1 + log2(N)/M), M = {chunks} chunks"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    for (case, points) in series {
        if points.is_empty() {
            continue;
        }
        let color = case.color();
        let style = color.stroke_width(3);
        if case == Case::SwarmFailures {
            // Dashed, with triangles: it often lies on the swarm's line.
            chart
                .draw_series(DashedLineSeries::new(points.clone(), 10, 6, style))?
                .label(config.case_legend(case))
                .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 3, style));
            chart.draw_series(points.into_iter().map(|p| TriangleMarker::new(p, 6, color.filled())))?;
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(config.case_legend(case))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
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

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.3} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_labelled_and_charts_named_by_size() {
        assert_eq!(size_label(256 << 20), "256MiB");
        assert_eq!(size_label(16 << 30), "16GiB");
        assert_eq!(size_label(1000), "1000B");
        let p = Path::new("docs/broadcast-sim.png");
        assert_eq!(chart_path(p, 16 << 30, 2), Path::new("docs/broadcast-sim-16GiB.png"));
        assert_eq!(chart_path(p, 16 << 30, 1), p);
    }
}
