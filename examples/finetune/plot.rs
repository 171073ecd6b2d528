//! The loss curve (training loss per step, eval loss at each evaluation) as an SVG, via plotters.

use plotters::prelude::*;
use std::path::Path;

/// `(step, loss)` points.
pub type Series = Vec<(u64, f64)>;

/// Registers the embedded DejaVu Sans as plotters' `sans-serif` (no system fonts needed).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// The training and eval loss series of a `metrics.jsonl` (the whole run, resumed runs included).
pub fn read_metrics(path: &Path) -> Result<(Series, Series), Box<dyn std::error::Error>> {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(path)?.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(step) = v["step"].as_u64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(l) = v["eval_loss"].as_f64() {
            eval.push((step, l));
        }
    }
    Ok((train, eval))
}

/// Draws `train` and `eval` (`(step, loss)` points) into `path`.
pub fn loss_curve(
    path: &Path,
    title: &str,
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    register_font();
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || train.iter().chain(eval);
    let steps = points().map(|(s, _)| *s).max().unwrap_or(1).max(1) as f64;
    let top = points()
        .map(|(_, l)| *l)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        * 1.05
        + 1e-9;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..steps, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            train.iter().map(|(s, l)| (*s as f64, *l)),
            &BLUE,
        ))?
        .label("train loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            eval.iter().map(|(s, l)| (*s as f64, *l)),
            RED.stroke_width(2),
        ))?
        .label("eval loss (held out)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.draw_series(
        eval.iter()
            .map(|(s, l)| Circle::new((*s as f64, *l), 4, RED.filled())),
    )?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
