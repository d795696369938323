//! The tracing subscriber: human-readable or JSON lines, filtered by `RUST_LOG`
//! (default `info`), written to a writer the caller chooses (stderr in the
//! binary, a file or the space above the progress bars in `demo`) so tests
//! can capture it.

use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call is ignored.
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(format, writer, None);
}

/// As [`init`], into a file: the same lines without terminal colours.
pub fn init_file(format: LogFormat, file: std::fs::File) {
    install(format, Arc::new(file), Some(false));
}

/// `ansi`: `None` keeps tracing-subscriber's default (colours unless `NO_COLOR`).
fn install<W>(format: LogFormat, writer: W, ansi: Option<bool>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let mut builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if let Some(ansi) = ansi {
        builder = builder.with_ansi(ansi);
    }
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
