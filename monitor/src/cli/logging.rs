//! The agent's own log lines on stderr: readable text by default, or one JSON object per line
//! for log pipelines. When stderr is the systemd journal (`JOURNAL_STREAM` names it), lines carry
//! no timestamp (the journal stamps each one) and begin with their level as the journal's
//! priority (`<3>` error ... `<7>` debug), which the journal reads and strips.

use std::{fmt, io::IsTerminal, os::fd::AsRawFd};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// Installs the process's logger. RUST_LOG sets the levels (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let base = tracing_subscriber::fmt::format().with_target(false);
    match (format, stderr_is_journal()) {
        (LogFormat::Text, false) => {
            builder.event_format(base.with_ansi(std::io::stderr().is_terminal())).init();
        }
        (LogFormat::Text, true) => builder
            .with_ansi(false)
            .event_format(JournalPriority(base.with_ansi(false).without_time().with_level(false)))
            .init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).with_target(false).init(),
        (LogFormat::Json, true) => builder
            .json()
            .event_format(JournalPriority(base.json().flatten_event(true).without_time()))
            .init(),
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds its
/// device and inode (`dev:inode`), which a redirected stderr no longer matches.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes the struct on success; stderr's descriptor is valid.
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    journal_stream_matches(&stream, st.st_dev, st.st_ino)
}

fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    stream.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The journal's priority of a level (syslog's numbers).
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Writes `<priority>` before each line the inner format writes.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_recognised_by_device_and_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8:1234", 9, 1234));
        assert!(!journal_stream_matches("garbage", 8, 1234));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(|l| priority(&l)),
            [3, 4, 6, 7, 7]
        );
    }
}
