//! A bounded ring of the relay's recent warnings and errors, fed by a
//! tracing layer, for the status page. Process-wide, like the log itself.

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Entries kept; older ones fall off.
pub const CAPACITY: usize = 100;
/// Longest message kept per entry (bytes).
const MAX_TEXT: usize = 512;

#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    /// Increases by one per entry, so a reader can tell what is new.
    pub id: u64,
    pub at_ms: u64,
    pub level: &'static str,
    pub target: String,
    /// The message and its fields, `key=value` after the text.
    pub text: String,
}

#[derive(Default)]
pub struct LogRing {
    inner: Mutex<(u64, VecDeque<LogLine>)>,
}

impl LogRing {
    pub fn push(&self, level: &'static str, target: &str, text: String, at_ms: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.0 += 1;
            let id = g.0;
            if g.1.len() >= CAPACITY {
                g.1.pop_front();
            }
            g.1.push_back(LogLine {
                id,
                at_ms,
                level,
                target: target.to_string(),
                text,
            });
        }
    }

    /// Newest last.
    pub fn lines(&self) -> Vec<LogLine> {
        self.inner
            .lock()
            .map(|g| g.1.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The ring the process logs into.
pub fn global() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(LogRing::default)
}

/// Records WARN and ERROR events into [`global`] (filter it with
/// `LevelFilter::WARN` so it is independent of the configured log level).
pub struct RingLayer;

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            _ => return,
        };
        let mut v = Text::default();
        event.record(&mut v);
        let mut text = v.message;
        if !v.fields.is_empty() {
            text.push_str(&v.fields);
        }
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        global().push(
            level,
            event.metadata().target(),
            text,
            crate::engine::now_ms(),
        );
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_ordered() {
        let r = LogRing::default();
        for i in 0..(CAPACITY + 5) {
            r.push("warn", "t", format!("m{i}"), i as u64);
        }
        let l = r.lines();
        assert_eq!(l.len(), CAPACITY);
        assert_eq!(l[0].text, "m5");
        assert_eq!(l.last().unwrap().id, (CAPACITY + 5) as u64);
    }
}
