//! Logging set-up shared by every subcommand.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are rendered.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// Installs the global subscriber, logging to stderr, filtered by `RUST_LOG` if set,
/// otherwise by `filter`. A second call is a no-op, so tests
/// and `demo` (which runs several components in one process) can call it freely.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    // `RUST_LOG`, when set, wins: the convention of kube-rs and most Rust services, so a
    // user debugging the operator does not have to learn another variable.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| filter.to_string());
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        filter: filter.clone(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colour codes would corrupt log files and collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    Ok(())
}
