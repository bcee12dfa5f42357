//! A progress bar on stderr for long operator actions (`store delete
//! --wait`). On a terminal it redraws one line; otherwise (a log, a test)
//! it prints a line whenever the count changes.

use std::io::{IsTerminal, Write};

/// Width of the bar, in characters.
const WIDTH: usize = 30;

/// Progress towards `total`.
pub struct Bar {
    label: String,
    total: u64,
    done: Option<u64>,
    tty: bool,
}

impl Bar {
    /// A bar for `total` units of work (0: nothing to wait for but the end).
    pub fn new(label: &str, total: u64) -> Bar {
        Bar { label: label.to_owned(), total, done: None, tty: std::io::stderr().is_terminal() }
    }

    /// `done` units are finished; draws if that changed.
    pub fn set(&mut self, done: u64) {
        if self.done == Some(done) {
            return;
        }
        self.done = Some(done);
        let line = self.line(done);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty { write!(err, "\r{line}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    /// Ends the bar with a closing line.
    pub fn finish(&mut self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err);
        }
        if !message.is_empty() {
            let _ = writeln!(err, "{message}");
        }
    }

    /// `store 4 drain [#########.....................]  9/30 regions (30%)`.
    pub fn line(&self, done: u64) -> String {
        let done = done.min(self.total);
        let share = if self.total == 0 { 1.0 } else { done as f64 / self.total as f64 };
        let filled = (share * WIDTH as f64).round() as usize;
        format!(
            "{} [{}{}] {done:>w$}/{} regions ({:.0}%)",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.total,
            share * 100.0,
            w = self.total.to_string().len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_share_done() {
        let bar = Bar { label: "drain".into(), total: 4, done: None, tty: false };
        assert_eq!(bar.line(0), format!("drain [{}] 0/4 regions (0%)", ".".repeat(WIDTH)));
        assert_eq!(bar.line(2), format!("drain [{}{}] 2/4 regions (50%)", "#".repeat(15), ".".repeat(15)));
        assert_eq!(bar.line(9), format!("drain [{}] 4/4 regions (100%)", "#".repeat(WIDTH)));
    }
}
