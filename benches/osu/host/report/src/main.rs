//! `osu-report RESULTS_DIR`: reads `RESULTS_DIR/runs.tsv` (one run per line:
//! `id<TAB>label<TAB>np<TAB>kind<TAB>note`, kind = toro | ompi | mpich) and the raw
//! OSU outputs `RESULTS_DIR/raw/<id>/<bench>.txt`, and writes
//! `RESULTS_DIR/REPORT.md` (tables with ratios against each baseline) and
//! `RESULTS_DIR/osu_<bench>.png` (log-log, one line per system, one panel per np).
//! `RESULTS_DIR/machine.md`, when present, is copied at the top of the report.
//! `raw/<id>/<bench>.<round>.line`, when present, holds the host's cache-line
//! one-way time (ns) measured just before that run: the host moves the VM's two
//! vCPUs between near and far cores, and the report says which run saw which.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

const BENCHES: [&str; 11] =
    ["latency", "bw", "bibw", "barrier", "bcast", "reduce", "allreduce", "gather", "scatter", "allgather", "alltoall"];

#[derive(Clone, Debug)]
struct Run {
    id: String,
    label: String,
    np: u32,
    kind: String,
    note: String,
}

/// Parsed OSU output: (size, value) rows; barrier has one row with size 0.
type Series = Vec<(u64, f64)>;

fn higher_is_better(bench: &str) -> bool {
    bench == "bw" || bench == "bibw"
}

fn p2p(bench: &str) -> bool {
    matches!(bench, "latency" | "bw" | "bibw")
}

fn unit(bench: &str) -> &'static str {
    if higher_is_better(bench) {
        "MB/s"
    } else {
        "µs"
    }
}

fn parse_output(text: &str) -> Series {
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [size, value] => {
                if let (Ok(s), Ok(v)) = (size.parse::<u64>(), value.parse::<f64>()) {
                    rows.push((s, v));
                }
            }
            [value] => {
                if let Ok(v) = value.parse::<f64>() {
                    rows.push((0, v));
                }
            }
            _ => {}
        }
    }
    rows
}

type Rounds = BTreeMap<String, usize>;

/// Cache-line one-way times (ns) before each round, by (run id, bench).
type Placements = BTreeMap<(String, String), Vec<f64>>;

/// A line crossing faster than this: the two vCPUs were near each other.
const NEAR_NS: f64 = 60.0;

/// Where most of a run's rounds ran, "near" or "far" ("mixed" on a tie; None: not
/// recorded). Most rounds decide, as the report's figure is their median.
fn placement(lines: Option<&Vec<f64>>) -> Option<&'static str> {
    let lines = lines.filter(|l| !l.is_empty())?;
    let near = lines.iter().filter(|&&ns| ns < NEAR_NS).count();
    Some(match (2 * near).cmp(&lines.len()) {
        std::cmp::Ordering::Greater => "near",
        std::cmp::Ordering::Less => "far",
        std::cmp::Ordering::Equal => "mixed",
    })
}

fn load_placements(dir: &Path, runs: &[Run]) -> Placements {
    let mut out = Placements::new();
    for run in runs {
        let Ok(entries) = std::fs::read_dir(dir.join("raw").join(&run.id)) else { continue };
        let mut files: Vec<(String, f64)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".line")?.to_string();
                let ns = std::fs::read_to_string(e.path()).ok()?.trim().parse::<f64>().ok()?;
                Some((stem, ns))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (stem, ns) in files {
            let Some((bench, _round)) = stem.rsplit_once('.') else { continue };
            out.entry((run.id.clone(), bench.to_string())).or_default().push(ns);
        }
    }
    out
}

fn load(dir: &Path) -> (Vec<Run>, BTreeMap<(String, String), Series>, Rounds) {
    let manifest = std::fs::read_to_string(dir.join("runs.tsv"))
        .unwrap_or_else(|e| fail(&format!("{}: {e} (run benches/osu/run.sh first)", dir.join("runs.tsv").display())));
    let mut runs = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            continue;
        }
        runs.push(Run {
            id: f[0].into(),
            label: f[1].into(),
            np: f[2].parse().unwrap_or(0),
            kind: f[3].into(),
            note: f.get(4).copied().unwrap_or("").into(),
        });
    }
    let mut data = BTreeMap::new();
    let mut most_rounds = Rounds::new();
    for run in &runs {
        for bench in BENCHES {
            // Every round's `<bench>.<round>.txt`; the median of each size over the rounds.
            let mut rounds: Vec<Series> = Vec::new();
            if let Ok(entries) = std::fs::read_dir(dir.join("raw").join(&run.id)) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let is_round = name
                        .strip_prefix(&format!("{bench}."))
                        .and_then(|rest| rest.strip_suffix(".txt"))
                        .is_some_and(|r| r.chars().all(|c| c.is_ascii_digit()));
                    if is_round {
                        let series = parse_output(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                        if !series.is_empty() {
                            rounds.push(series);
                        }
                    }
                }
            }
            let seen = most_rounds.entry(run.id.clone()).or_insert(0);
            *seen = (*seen).max(rounds.len());
            let mut sizes: Vec<u64> = rounds.iter().flatten().map(|(s, _)| *s).collect();
            sizes.sort();
            sizes.dedup();
            let series: Series = sizes
                .into_iter()
                .filter_map(|size| median(rounds.iter().filter_map(|r| value_at(r, size)).collect()).map(|m| (size, m)))
                .collect();
            if !series.is_empty() {
                data.insert((run.id.clone(), bench.to_string()), series);
            }
        }
    }
    (runs, data, most_rounds)
}

/// Toro's advantage over a baseline: > 1 means Toro is better (lower latency or
/// higher bandwidth).
fn advantage(bench: &str, toro: f64, base: f64) -> f64 {
    if higher_is_better(bench) {
        toro / base
    } else {
        base / toro
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        format!("{r:.3}×")
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_size(s: u64) -> String {
    if s >= 1 << 20 {
        format!("{} MiB", s >> 20)
    } else if s >= 1 << 10 {
        format!("{} KiB", s >> 10)
    } else {
        format!("{s} B")
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn value_at(series: &Series, size: u64) -> Option<f64> {
    series.iter().find(|(s, _)| *s == size).map(|(_, v)| *v)
}

/// The pairs compared in ratio columns for a group: every Toro run against every
/// baseline run, except Toro across VMs, which is compared with TCP baselines only.
fn pairs<'a>(group: &[&'a Run]) -> Vec<(&'a Run, &'a Run)> {
    let mut v = Vec::new();
    for t in group.iter().filter(|r| r.kind == "toro") {
        for b in group.iter().filter(|r| r.kind != "toro") {
            let across = t.id.contains("vm");
            if across && !b.id.contains("tcp") {
                continue;
            }
            v.push((*t, *b));
        }
    }
    v
}

fn short(run: &Run) -> String {
    run.label.clone()
}

/// A one-line error and exit status 2, for a missing or unwritable input.
fn fail(message: &str) -> ! {
    eprintln!("osu-report: {message}");
    std::process::exit(2)
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "benches/osu/results".into()));
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_else(|| fail("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)"));
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "bad font").unwrap();

    let (runs, data, rounds) = load(&dir);
    let placements = load_placements(&dir, &runs);
    let mut nps: Vec<u32> = runs.iter().map(|r| r.np).collect();
    nps.sort();
    nps.dedup();
    let group_of = |np: u32| -> Vec<&Run> { runs.iter().filter(|r| r.np == np).collect() };

    let mut md = String::new();
    if let Ok(machine) = std::fs::read_to_string(dir.join("machine.md")) {
        md.push_str(&machine);
        md.push('\n');
    }
    md.push_str("Runs (`np` ranks; Toro: QEMU/KVM VMs, one image; baselines: the same Rust source built with rsmpi):\n\n");
    md.push_str("| run | np | rounds | status |\n|---|---|---|---|\n");
    for run in &runs {
        let got = BENCHES.iter().filter(|b| data.contains_key(&(run.id.clone(), b.to_string()))).count();
        let status = if run.note.is_empty() { format!("{got} benchmarks") } else { format!("{got} benchmarks; {}", run.note) };
        let _ = writeln!(md, "| {} | {} | {} | {} |", run.label, run.np, rounds.get(&run.id).copied().unwrap_or(0), status);
    }
    md.push_str(
        "\nRatios are **Toro's advantage**: baseline latency ÷ Toro latency, or Toro bandwidth ÷ baseline \
         bandwidth — above 1 Toro is better, below 1 it trails. Toro across VMs is compared with the TCP \
         baselines only.\n\n",
    );

    if !placements.is_empty() {
        md.push_str(
            "## vCPU placement\n\nThe host moves this VM's two vCPUs between near cores and far ones, minutes apart. \
             Before each np=2 run the host's two-thread cache-line ping-pong was timed (one-way, ns; near below 60): \
             compare figures measured in the same placement. Where most of Toro's rounds and most of a baseline's ran in different \
             placements the summary says so.\n\n",
        );
        let np2: Vec<&Run> = runs.iter().filter(|r| r.np == 2).collect();
        let mut head = String::from("| benchmark |");
        let mut rule = String::from("|---|");
        for r in &np2 {
            let _ = write!(head, " {} |", short(r));
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for bench in BENCHES {
            if !np2.iter().any(|r| placements.contains_key(&(r.id.clone(), bench.to_string()))) {
                continue;
            }
            let mut line = format!("| osu_{bench} |");
            for r in &np2 {
                let cell = placements
                    .get(&(r.id.clone(), bench.to_string()))
                    .map(|v| v.iter().map(|ns| format!("{ns:.0}")).collect::<Vec<_>>().join(" / "))
                    .unwrap_or_else(|| "—".into());
                let _ = write!(line, " {cell} |");
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
    }

    // Summary: median advantage over sizes, and at the smallest / largest size.
    md.push_str("## Summary\n\nMedian of Toro's advantage over all message sizes (in brackets: smallest size / largest size).\n\n");
    md.push_str("| benchmark | np | Toro run | vs | advantage: median (small / large) |\n|---|---|---|---|---|\n");
    for bench in BENCHES {
        for &np in &nps {
            let group = group_of(np);
            for (t, b) in pairs(&group) {
                let (Some(ts), Some(bs)) = (data.get(&(t.id.clone(), bench.into())), data.get(&(b.id.clone(), bench.into())))
                else {
                    continue;
                };
                let adv: Vec<(u64, f64)> = ts
                    .iter()
                    .filter_map(|(s, tv)| value_at(bs, *s).map(|bv| (*s, advantage(bench, *tv, bv))))
                    .filter(|(_, a)| a.is_finite())
                    .collect();
                if adv.is_empty() {
                    continue;
                }
                let med = median(adv.iter().map(|(_, a)| *a).collect()).unwrap();
                let first = adv.first().unwrap();
                let last = adv.last().unwrap();
                let ends = if adv.len() > 1 {
                    format!(" ({} at {} / {} at {})", fmt_ratio(first.1), fmt_size(first.0), fmt_ratio(last.1), fmt_size(last.0))
                } else {
                    String::new()
                };
                let (tp, bp) = (
                    placement(placements.get(&(t.id.clone(), bench.to_string()))),
                    placement(placements.get(&(b.id.clone(), bench.to_string()))),
                );
                let caveat = match (tp, bp) {
                    (Some(tp), Some(bp)) if tp != bp && t.id != "toro-2vm" => {
                        format!(" — placement differed: Toro {tp}, baseline {bp}")
                    }
                    _ => String::new(),
                };
                let _ = writeln!(md, "| osu_{bench} | {np} | {} | {} | **{}**{ends}{caveat} |", short(t), short(b), fmt_ratio(med));
            }
        }
    }

    // Full tables.
    for bench in BENCHES {
        let _ = writeln!(md, "\n## osu_{bench}\n");
        if bench != "barrier" {
            let _ = writeln!(md, "![osu_{bench}](osu_{bench}.png)\n");
        }
        for &np in &nps {
            if p2p(bench) && np != 2 {
                continue;
            }
            let group: Vec<&Run> =
                group_of(np).into_iter().filter(|r| data.contains_key(&(r.id.clone(), bench.into()))).collect();
            if group.is_empty() {
                continue;
            }
            let ratio_pairs = pairs(&group);
            let _ = writeln!(md, "np = {np}, {} ({}):\n", if higher_is_better(bench) { "bandwidth" } else { "latency" }, unit(bench));
            let mut head = String::from("| size |");
            let mut rule = String::from("|---:|");
            for r in &group {
                let _ = write!(head, " {} |", short(r));
                rule.push_str("---:|");
            }
            for (t, b) in &ratio_pairs {
                let _ = write!(head, " {} vs {} |", short(t), short(b));
                rule.push_str("---:|");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            let mut sizes: Vec<u64> =
                group.iter().flat_map(|r| data[&(r.id.clone(), bench.to_string())].iter().map(|(s, _)| *s)).collect();
            sizes.sort();
            sizes.dedup();
            for size in sizes {
                let mut line = if bench == "barrier" { String::from("| — |") } else { format!("| {} |", fmt_size(size)) };
                for r in &group {
                    let v = value_at(&data[&(r.id.clone(), bench.to_string())], size);
                    let _ = write!(line, " {} |", v.map(fmt_value).unwrap_or_else(|| "—".into()));
                }
                for (t, b) in &ratio_pairs {
                    let tv = value_at(&data[&(t.id.clone(), bench.to_string())], size);
                    let bv = value_at(&data[&(b.id.clone(), bench.to_string())], size);
                    match (tv, bv) {
                        (Some(tv), Some(bv)) => {
                            let _ = write!(line, " {} |", fmt_ratio(advantage(bench, tv, bv)));
                        }
                        _ => line.push_str(" — |"),
                    }
                }
                let _ = writeln!(md, "{line}");
            }
            md.push('\n');
        }
        if bench != "barrier" {
            if let Err(e) = plot(&dir, bench, &runs, &nps, &data) {
                eprintln!("osu-report: plot osu_{bench}: {e}");
            }
        }
    }
    std::fs::write(dir.join("REPORT.md"), md)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", dir.join("REPORT.md").display())));
    eprintln!("osu-report: wrote {}", dir.join("REPORT.md").display());
}

fn style_for(run: &Run, index: usize) -> (RGBColor, bool) {
    let palette = [
        RGBColor(200, 30, 30),
        RGBColor(240, 120, 20),
        RGBColor(150, 40, 160),
        RGBColor(30, 90, 200),
        RGBColor(20, 160, 200),
        RGBColor(30, 150, 60),
        RGBColor(110, 190, 60),
        RGBColor(90, 90, 90),
    ];
    let color = match (run.kind.as_str(), run.id.contains("tcp"), run.id.contains("vm")) {
        ("toro", _, false) => palette[0],
        ("toro", _, true) => palette[1],
        ("ompi", false, _) => palette[3],
        ("ompi", true, _) => palette[4],
        ("mpich", false, _) => palette[5],
        ("mpich", true, _) => palette[6],
        _ => palette[(index + 2) % palette.len()],
    };
    (color, run.kind == "toro")
}

fn plot(
    dir: &Path,
    bench: &str,
    runs: &[Run],
    nps: &[u32],
    data: &BTreeMap<(String, String), Series>,
) -> Result<(), Box<dyn std::error::Error>> {
    let panels: Vec<u32> = nps
        .iter()
        .copied()
        .filter(|np| !p2p(bench) || *np == 2)
        .filter(|np| runs.iter().any(|r| r.np == *np && data.contains_key(&(r.id.clone(), bench.into()))))
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    let path = dir.join(format!("osu_{bench}.png"));
    let width = 640 * panels.len() as u32;
    let root = BitMapBackend::new(&path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, np) in areas.iter().zip(&panels) {
        let series: Vec<(usize, &Run, &Series)> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.np == *np)
            .filter_map(|(i, r)| data.get(&(r.id.clone(), bench.to_string())).map(|s| (i, r, s)))
            .collect();
        let points = series.iter().flat_map(|(_, _, s)| s.iter()).filter(|(s, v)| *s > 0 && *v > 0.0);
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, 0f64, f64::MAX, 0f64);
        for (s, v) in points {
            xmin = xmin.min(*s as f64);
            xmax = xmax.max(*s as f64);
            ymin = ymin.min(*v);
            ymax = ymax.max(*v);
        }
        if xmax <= 0.0 {
            continue;
        }
        let what = if higher_is_better(bench) { "bandwidth (MB/s)" } else { "latency (µs)" };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("osu_{bench}, np={np}"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xmin.log2() - 0.3..xmax.log2() + 0.3, (ymin / 1.5..ymax * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("message size (log scale)")
            .y_desc(what)
            .x_labels(((xmax.log2() - xmin.log2()) / 2.0) as usize + 2)
            .x_label_formatter(&|x| if (x - x.round()).abs() < 0.01 { fmt_size(2f64.powf(x.round()) as u64) } else { String::new() })
            .y_label_formatter(&|y| fmt_value(*y))
            .label_style(("sans-serif", 12))
            .draw()?;
        for (i, run, s) in series {
            let (color, thick) = style_for(run, i);
            let width = if thick { 3 } else { 2 };
            let pts: Vec<(f64, f64)> =
                s.iter().filter(|(x, y)| *x > 0 && *y > 0.0).map(|(x, y)| ((*x as f64).log2(), *y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
                .label(run.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(if higher_is_better(bench) { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperLeft })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
