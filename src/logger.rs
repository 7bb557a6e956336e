//! A small stderr logger for the `log` facade.
//!
//! roostd logs little (starts, stops, refusals, failures), so a full
//! logging crate buys nothing on a Pi but size. Lines are
//! `2026-11-25T22:40:23Z INFO message`; journald adds its own timestamps,
//! but a terminal or a file does not. The level comes from `RUST_LOG`
//! (read by `main`): `error`, `warn`, `info` (default), `debug`, `trace`,
//! `off`, or env_logger-style `roostd=debug`.

use std::io::Write as _;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Other crates' debug chatter (tungstenite logs frames at trace) is
        // noise for an operator; keep it out below warn.
        let ours = record.target().starts_with("roostd");
        if !ours && record.level() > Level::Warn {
            return;
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let line = format!("{} {:<5} {}\n", utc(secs), record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Parses a `RUST_LOG` value into a level; unknown text means `info`.
pub fn parse_level(spec: Option<&str>) -> LevelFilter {
    let Some(spec) = spec else { return LevelFilter::Info };
    spec.split(',')
        .filter_map(|part| {
            let level = part.rsplit('=').next().unwrap_or("").trim();
            level.parse::<LevelFilter>().ok()
        })
        .max()
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_100_000), "2025-11-25T19:46:40Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level(None), LevelFilter::Info);
        assert_eq!(parse_level(Some("debug")), LevelFilter::Debug);
        assert_eq!(parse_level(Some("roostd=trace")), LevelFilter::Trace);
        assert_eq!(parse_level(Some("warn,roostd=debug")), LevelFilter::Debug);
        assert_eq!(parse_level(Some("nonsense")), LevelFilter::Info);
        assert_eq!(parse_level(Some("off")), LevelFilter::Off);
    }
}
