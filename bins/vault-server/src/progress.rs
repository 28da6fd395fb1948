//! Progress of long operations: a bar on a terminal, plain lines otherwise
//! (logs, CI, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Shows how far a long operation is, on standard error.
#[derive(Debug)]
pub struct Progress {
    what: std::borrow::Cow<'static, str>,
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
}

impl Progress {
    /// Progress of `what` (e.g. "rewrap"), out of `total` units if known.
    pub fn new(what: impl Into<std::borrow::Cow<'static, str>>, total: Option<u64>) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = indicatif::ProgressStyle::with_template(
                "{msg:>8} [{bar:30}] {pos}/{len} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_message(what.clone());
            bar
        });
        Self {
            what,
            bar,
            last_line: Instant::now() - Duration::from_secs(60),
        }
    }

    /// `done` of `total` units so far.
    pub fn update(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
            None => {
                // One line a second at most, and always the last one.
                if self.last_line.elapsed() >= Duration::from_secs(1) || done >= total {
                    eprintln!("{}: {done}/{total}", self.what);
                    self.last_line = Instant::now();
                }
            }
        }
    }

    /// Ends the bar (or prints nothing more).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
