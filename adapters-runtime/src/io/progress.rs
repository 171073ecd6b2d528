//! The progress bar of long commands (training steps, bytes merged), drawn on stderr only when
//! it is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// What a bar counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Steps (`12/300`), with elapsed time and ETA.
    Steps,
    /// Bytes (`1.2 GiB/4.0 GiB`).
    Bytes,
}

/// A bar of `total` units starting at `start`; hidden unless `show` and stderr is a terminal.
pub fn progress_bar(show: bool, unit: Unit, total: u64, start: u64) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = match unit {
        Unit::Steps => "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        Unit::Bytes => "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(start);
    bar
}
