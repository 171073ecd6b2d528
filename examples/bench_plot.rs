//! Plots `scripts/peft_train_compare.py --json` results: tokens/s and peak memory against tokens
//! per step (or rank), ours and PEFT's, DoRA and LoRA, as one SVG with two panels.
//!
//! ```text
//! cargo run --release --example bench_plot -- --x tokens OUT.svg run1.json run2.json ...
//! cargo run --release --example bench_plot -- --x rank OUT.svg r4.json r16.json ...
//! ```
//! Each input is one comparison run; its `summary` gives one point per method and side.

#[path = "support/bench.rs"]
#[allow(dead_code)]
mod bench;

use bench::Res;
use clap::{Parser, ValueEnum};
use plotters::prelude::*;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Axis {
    /// Tokens per step (batch × sequence length).
    Tokens,
    /// Adapter rank.
    Rank,
}

#[derive(Parser)]
#[command(about = "Plots tokens/s and peak memory of bench_train vs PEFT comparison runs")]
struct Args {
    /// The x axis.
    #[arg(long, value_enum, default_value_t = Axis::Tokens)]
    x: Axis,
    /// The SVG to write.
    out: PathBuf,
    /// Comparison JSON files (`peft_train_compare.py --json`).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// One line: `(x, tokens/s, peak GiB)` points.
struct Line {
    label: String,
    points: Vec<(f64, f64, f64)>,
    color: RGBColor,
    dashed: bool,
}

fn main() -> std::process::ExitCode {
    bench::exit(run(Args::parse()))
}

fn run(args: Args) -> Res<()> {
    let mut lines: Vec<Line> = Vec::new();
    for (method, color) in [
        ("lora", RGBColor(31, 119, 180)),
        ("dora", RGBColor(214, 39, 40)),
    ] {
        for (side, dashed) in [("ours", false), ("peft", true)] {
            lines.push(Line {
                label: format!(
                    "{} {}",
                    if side == "ours" { "adapters" } else { "PEFT" },
                    method
                ),
                points: Vec::new(),
                color,
                dashed,
            });
            let line = lines.last_mut().expect("just pushed");
            for path in &args.inputs {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
                let Some(s) = v["summary"].get(method) else {
                    continue;
                };
                let a = &v["args"];
                let x = match args.x {
                    Axis::Tokens => {
                        a["batch"].as_f64().unwrap_or(0.0) * a["seq"].as_f64().unwrap_or(0.0)
                    }
                    Axis::Rank => a["rank"].as_f64().unwrap_or(0.0),
                };
                let tps = s[format!("{side}_tps")].as_f64().unwrap_or(f64::NAN);
                let rss =
                    s[format!("{side}_rss")].as_f64().unwrap_or(f64::NAN) / (1u64 << 30) as f64;
                line.points.push((x, tps, rss));
            }
            line.points.sort_by(|p, q| p.0.total_cmp(&q.0));
        }
    }
    lines.retain(|l| !l.points.is_empty());
    if lines.is_empty() {
        return Err("no `summary` records for dora or lora in the inputs".into());
    }
    draw(&args, &lines)
}

fn draw(args: &Args, lines: &[Line]) -> Res<()> {
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let root = SVGBackend::new(&args.out, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let xname = match args.x {
        Axis::Tokens => "tokens per step",
        Axis::Rank => "rank",
    };
    for (i, panel) in panels.iter().enumerate() {
        let value = |p: &(f64, f64, f64)| if i == 0 { p.1 } else { p.2 };
        let top = all()
            .map(value)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.1
            + 1e-9;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                if i == 0 {
                    "training throughput (tokens/s)"
                } else {
                    "peak resident memory (GiB)"
                },
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..top)?;
        chart.configure_mesh().x_desc(xname).draw()?;
        for l in lines {
            let pts: Vec<(f64, f64)> = l.points.iter().map(|p| (p.0, value(p))).collect();
            let style = l.color.stroke_width(2);
            if l.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))?
                    .label(&l.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))?
                    .label(&l.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, l.color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    println!("wrote {}", args.out.display());
    Ok(())
}
