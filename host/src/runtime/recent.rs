//! Each add-on's recent plugin log lines, kept in memory for its deployers and admins
//! (`GET /admin/addons/{addon}/logs`, `addon-host plugin logs ADDON [--follow]`): partners
//! see their own plugin's output without access to the host's log. Bounded in lines and in
//! line length; the oldest lines go first.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Lines kept per add-on.
const KEEP: usize = 1_000;
/// Longer lines are cut (the host's own log has them whole, within the call's budget).
const MAX_LINE: usize = 2_048;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Increases by one per line; ask for lines after it to follow the log.
    pub seq: u64,
    pub at_ms: u64,
    pub level: &'static str,
    pub call: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct RecentLogs {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<LogLine>,
    next: u64,
}

impl RecentLogs {
    pub(crate) fn push(&self, level: &'static str, call: &'static str, message: &str) {
        let mut message = message.to_owned();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.next += 1;
        let line = LogLine { seq: inner.next, at_ms: crate::clock::now_ms(), level, call, message };
        if inner.lines.len() == KEEP {
            inner.lines.pop_front();
        }
        inner.lines.push_back(line);
    }

    /// The kept lines after `seq`, and the sequence number to ask from next.
    pub fn since(&self, seq: u64) -> (Vec<LogLine>, u64) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.lines.iter().filter(|l| l.seq > seq).cloned().collect(), inner.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_cut_to_length_and_pages_by_sequence() {
        let recent = RecentLogs::default();
        for i in 0..KEEP + 5 {
            recent.push("info", "provision", &format!("line {i}"));
        }
        recent.push("warn", "provision", &"é".repeat(MAX_LINE));
        let (lines, next) = recent.since(0);
        assert_eq!((lines.len(), next), (KEEP, KEEP as u64 + 6));
        assert_eq!(lines[0].message, "line 6", "the oldest went first");
        let last = lines.last().unwrap();
        assert!(last.message.len() <= MAX_LINE + '…'.len_utf8() && last.message.ends_with('…'));
        let (newer, _) = recent.since(next - 1);
        assert_eq!(newer.len(), 1);
        assert!(recent.since(next).0.is_empty());
    }
}
