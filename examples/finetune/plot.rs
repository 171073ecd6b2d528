//! The loss curve (training loss per step, eval loss at each evaluation) as an SVG, via plotters.

use plotters::prelude::*;
use std::path::Path;

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

/// Draws `train` (loss of step `i + 1`) and `eval` (`(step, loss)`) into `path`.
pub fn loss_curve(
    path: &Path,
    title: &str,
    train: &[f64],
    eval: &[(u64, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    register_font();
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = train.len().max(1) as f64;
    let finite = train
        .iter()
        .chain(eval.iter().map(|(_, l)| l))
        .copied()
        .filter(|v| v.is_finite());
    let top = finite.fold(0.0f64, f64::max) * 1.05 + 1e-9;
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
            train.iter().enumerate().map(|(i, l)| (i as f64 + 1.0, *l)),
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
