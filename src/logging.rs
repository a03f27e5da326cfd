//! The process's log on stderr: text for people, or one JSON object per
//! line for a platform's log pipeline (`--log-format json`).
//!
//! Request lines (target [`ACCESS`], one per request) are many and cheap
//! to lose one by one, so they collect in a buffer written out when it
//! fills or every [`FLUSH_EVERY`]: one `write(2)` for many requests instead
//! of one each, which a manifest GET would feel. Every other line (start-up,
//! warnings, errors) is written at once, after whatever request lines came
//! before it, so the order on stderr is the order of events. On a terminal
//! everything is written at once.
//!
//! JSON lines carry the fields of the spans they were logged in at the top
//! level: a warning inside a request has the request's `request_id`.
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The target of the one line per request.
pub const ACCESS: &str = "cartorio::access";

/// Buffered request lines are written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Buffered request lines are written once they reach this size.
const FLUSH_AT: usize = 32 * 1024;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL target: message key=value ...`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's subscriber: `RUST_LOG` filters (default `info`;
/// `RUST_LOG=info,cartorio::access=off` drops the request lines).
pub fn init(format: LogFormat) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    INTERACTIVE.store(tty, Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(Sink)
        .with_env_filter(filter);
    let set = match format {
        LogFormat::Text => builder.with_ansi(tty).try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonEvent)
            .try_init(),
    };
    if set.is_ok() && !tty {
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
    }
}

/// Writes out buffered request lines (at exit, and periodically).
pub fn flush() {
    let mut buf = BUF.lock().unwrap_or_else(|e| e.into_inner());
    drain(&mut buf);
}

static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INTERACTIVE: AtomicBool = AtomicBool::new(false);

fn drain(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nowhere to report a failing stderr.
        let _ = io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// stderr, through the request-line buffer.
struct Sink;

/// One log line on its way out; written when dropped unless it is a
/// request line (then with the next flush).
struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut buf = BUF.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(b);
        if buf.len() >= FLUSH_AT {
            drain(&mut buf);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.urgent {
            flush();
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: meta.target() != ACCESS || INTERACTIVE.load(Relaxed),
        }
    }
}

/// Formats fields as `,"name":value` pairs, to splice into an object.
struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = JsonVisitor::default();
        fields.record(&mut v);
        writer.write_str(&v.out)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut v = JsonVisitor::default();
        fields.record(&mut v);
        current.fields.push_str(&v.out);
        Ok(())
    }
}

#[derive(Default)]
struct JsonVisitor {
    out: String,
}

impl JsonVisitor {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        push_json_str(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(&mut self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json_str(&mut self.out, &format!("{value:?}"));
    }
}

fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// `{"timestamp":…,"level":…,"target":…, span fields, event fields}`.
struct JsonEvent;

impl<S, N> FormatEvent<S, N> for JsonEvent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        let mut head = String::with_capacity(64);
        let _ = write!(head, "\",\"level\":\"{}\",\"target\":", meta.level());
        push_json_str(&mut head, meta.target());
        w.write_str(&head)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    w.write_str(f.fields.as_str())?;
                }
            }
        }
        let mut v = JsonVisitor::default();
        event.record(&mut v);
        w.write_str(&v.out)?;
        w.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<StdMutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_span_fields_and_escape_values() {
        let cap = Capture::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(cap.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonEvent)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", request_id = "abc123");
            let _g = span.enter();
            tracing::warn!(bytes = 42u64, ok = true, "a \"quoted\"\nline");
        });
        let out = String::from_utf8(cap.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["request_id"], "abc123");
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["ok"], true);
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
