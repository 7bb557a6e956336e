//! The clock floor (spec §10): the rule that turns the system time and the
//! kernel's "synchronized" answer into the effective time roostd uses for
//! token checks and `ts`. Pure: the times and the flag are inputs, so the
//! rule is tested with plain values; `writer::Clock` reads the real ones.
//!
//! Why: a board without a battery-backed clock boots with a wrong time
//! (often 1970) until NTP syncs. The floor is the last time known good; the
//! effective time never goes below it, so an unsynced boot still checks
//! tokens against a sane time. Only a synchronized clock moves the floor:
//! up as time passes, and down when it is more than a minute below it (an
//! earlier jump ahead was wrong), so one bad jump cannot lock every token
//! out, nor make retention delete history, for longer than it takes NTP to
//! sync.

/// How far below the floor a synchronized clock may be before the floor
/// follows it down. Smaller steps back keep the floor, so `ts` stays
/// monotonic over the small corrections NTP makes.
pub const LOWER_AFTER_MS: u64 = 60_000;

/// The floor after reading `system_ms`, with the kernel reporting the clock
/// `synced` or not.
pub fn next_floor(floor_ms: u64, system_ms: u64, synced: bool) -> u64 {
    if !synced {
        return floor_ms;
    }
    if system_ms >= floor_ms || floor_ms - system_ms > LOWER_AFTER_MS {
        system_ms
    } else {
        floor_ms
    }
}

/// The time roostd uses: never below the floor.
pub fn effective(floor_ms: u64, system_ms: u64) -> u64 {
    system_ms.max(floor_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    const NOW: u64 = 1_764_100_000_000;

    #[test]
    fn a_synchronized_clock_raises_the_floor() {
        assert_eq!(next_floor(NOW - DAY, NOW, true), NOW);
        assert_eq!(next_floor(NOW, NOW, true), NOW);
    }

    #[test]
    fn an_unsynchronized_clock_never_moves_the_floor() {
        // A board booting in 1970: the floor holds, the effective time is the floor.
        assert_eq!(next_floor(NOW, 0, false), NOW);
        assert_eq!(effective(next_floor(NOW, 0, false), 0), NOW);
        // Nor does an unsynchronized clock ahead of the floor raise it.
        assert_eq!(next_floor(NOW, NOW + DAY, false), NOW);
        assert_eq!(effective(NOW, NOW + DAY), NOW + DAY);
    }

    #[test]
    fn a_synchronized_clock_far_below_the_floor_lowers_it() {
        // The floor was saved after a jump a day ahead; NTP has synced since.
        assert_eq!(next_floor(NOW + DAY, NOW, true), NOW);
        assert_eq!(effective(next_floor(NOW + DAY, NOW, true), NOW), NOW);
        // Just past the minute.
        assert_eq!(next_floor(NOW + LOWER_AFTER_MS + 1, NOW, true), NOW);
    }

    #[test]
    fn a_synchronized_clock_within_a_minute_below_keeps_the_floor() {
        assert_eq!(next_floor(NOW + LOWER_AFTER_MS, NOW, true), NOW + LOWER_AFTER_MS);
        assert_eq!(next_floor(NOW + 1, NOW, true), NOW + 1);
        assert_eq!(effective(NOW + 1, NOW), NOW + 1, "ts does not step back");
    }
}
