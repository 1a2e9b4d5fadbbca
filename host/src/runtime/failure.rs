//! Why a plugin call failed, told apart so the platform gets the right status and the
//! partner a message that says what their plugin did; and what a finished call comes to.

use std::collections::HashSet;
use std::time::Duration;

use wasmtime::Trap;

use super::state::CallState;
use super::{Answer, Completed, Returned};
use crate::config::Limits;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("exceeded its {deadline_ms} ms deadline")]
    Deadline { deadline_ms: u64 },
    #[error("exceeded its {memory_mib} MiB memory limit")]
    Memory { memory_mib: u64 },
    #[error("ran out of its {fuel} fuel budget")]
    Fuel { fuel: u64 },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded a key-value limit: {0}")]
    Quota(String),
    #[error("returned an invalid reply: {0}")]
    InvalidReply(String),
    #[error("returned a reply of {size} bytes, over the {max}-byte limit")]
    ReplyTooLarge { size: usize, max: usize },
    #[error("answered HTTP with a body over the {max}-byte limit")]
    ResponseTooLarge { max: usize },
    #[error("could not be run: {0}")]
    Host(String),
    /// The shared database failed a key-value read the call made: nothing was stored, and
    /// the same request succeeds once the database answers again.
    #[error("could not read its key-value data: {0}")]
    StorageUnavailable(String),
    /// A key-value import found the data disk full: the host's failure, answered as its
    /// storage's (507 `disk_full`), not the plugin's.
    #[error("could not use its key-value data: {0}")]
    DiskFull(String),
    #[error("was not run: the host is shutting down")]
    ShuttingDown,
}

impl CallFailure {
    /// Stable machine-readable name of the failure, used in JSON errors.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Deadline { .. } => "deadline_exceeded",
            CallFailure::Memory { .. } => "memory_limit",
            CallFailure::Fuel { .. } => "fuel_exhausted",
            CallFailure::Trap(_) => "plugin_trap",
            CallFailure::Quota(_) => "quota_exceeded",
            CallFailure::InvalidReply(_) => "invalid_reply",
            CallFailure::ReplyTooLarge { .. } | CallFailure::ResponseTooLarge { .. } => "reply_too_large",
            CallFailure::Host(_) => "host_error",
            CallFailure::StorageUnavailable(_) => "storage_error",
            CallFailure::DiskFull(_) => "disk_full",
            CallFailure::ShuttingDown => "shutting_down",
        }
    }
}

/// Turn wasmtime's error for a failed call into a [`CallFailure`].
pub(super) fn classify(error: wasmtime::Error, state: &CallState, deadline_ms: u64, elapsed: Duration) -> CallFailure {
    let limits = &state.env.limits;
    let trap = error.downcast_ref::<Trap>().copied();
    tracing::warn!(addon = %state.log.addon, call = state.log.call, elapsed_ms = elapsed.as_millis() as u64, "plugin call failed: {error:?}");
    if trap == Some(Trap::Interrupt) {
        return CallFailure::Deadline { deadline_ms };
    }
    if trap == Some(Trap::OutOfFuel) {
        return CallFailure::Fuel { fuel: limits.fuel.unwrap_or(u64::MAX) };
    }
    if state.limiter.memory_denied {
        return CallFailure::Memory { memory_mib: limits.memory_mib };
    }
    if let Some(q) = &state.kv.quota_violation {
        return CallFailure::Quota(q.clone());
    }
    // A `kv` import's storage failure traps with the storage error itself (see `kv.rs`).
    match error.downcast_ref() {
        Some(crate::storage::StorageError::Database(e)) => return CallFailure::StorageUnavailable(e.clone()),
        Some(crate::storage::StorageError::DiskFull(e)) => return CallFailure::DiskFull(e.clone()),
        _ => {}
    }
    let root = error.root_cause().to_string();
    let Some(trap) = trap else {
        return CallFailure::Host(root);
    };
    // Rust guests print their panic message on stderr before aborting; it says far more
    // than "unreachable instruction executed".
    let (stderr, _) = state.stderr.contents();
    let panic_line = panic_message(&String::from_utf8_lossy(&stderr));
    CallFailure::Trap(match panic_line {
        Some(line) => format!("{trap}: {line}"),
        None => trap.to_string(),
    })
}

/// The panic report a Rust guest printed: `thread '..' panicked at FILE:LINE:COL:` and the
/// message on the next line (or an allocator failure), shortened.
fn panic_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines.iter().position(|l| l.contains("panicked at") || l.contains("memory allocation"))?;
    let mut text = lines[at].trim().to_owned();
    if let Some(next) = lines.get(at + 1).filter(|_| text.ends_with(':')) {
        text.push(' ');
        text.push_str(next.trim());
    }
    Some(text.chars().take(400).collect())
}

/// Enforce the output limits on a successful answer.
pub(super) fn check_answer(answer: Answer, limits: &Limits) -> Result<Answer, CallFailure> {
    let size: usize = answer.config.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + answer.message.as_ref().map_or(0, String::len);
    if size > limits.max_reply_bytes {
        return Err(CallFailure::ReplyTooLarge { size, max: limits.max_reply_bytes });
    }
    if answer.config.len() > limits.max_vars {
        return Err(CallFailure::InvalidReply(format!(
            "{} variables, over the limit of {}",
            answer.config.len(),
            limits.max_vars
        )));
    }
    let mut seen = HashSet::new();
    for (key, value) in &answer.config {
        if !valid_var_name(key) {
            return Err(CallFailure::InvalidReply(format!(
                "variable name {key:?} is not of the form [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        if value.is_empty() {
            return Err(CallFailure::InvalidReply(format!("variable `{key}` has an empty value")));
        }
        if !seen.insert(key.as_str()) {
            return Err(CallFailure::InvalidReply(format!("variable `{key}` appears twice")));
        }
    }
    Ok(answer)
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_')) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What a finished call comes to, from what it returned and the state it left.
pub(super) fn settle(
    outcome: Result<wasmtime::Result<Result<Returned, CallFailure>>, tokio::time::error::Elapsed>,
    state: &mut CallState,
    limits: &Limits,
    deadline_ms: u64,
    elapsed: Duration,
) -> Result<Completed, CallFailure> {
    let Ok(outcome) = outcome else {
        tracing::warn!(addon = %state.log.addon, call = state.log.call, deadline_ms, "plugin call cancelled at its deadline");
        return Err(CallFailure::Deadline { deadline_ms });
    };
    let result = match outcome {
        Err(error) => return Err(classify(error, state, deadline_ms, elapsed)),
        Ok(Err(failure)) => return Err(failure),
        Ok(Ok(r)) => r,
    };
    let refused = match &result {
        Returned::Reply(r) => r.is_err(),
        Returned::Job(r) => r.is_err(),
        Returned::Http(response) => response.status >= 500,
    };
    // A plugin that hit a key-value limit and then gave up failed because of the limit.
    if let (true, Some(quota)) = (refused, &state.kv.quota_violation) {
        return Err(CallFailure::Quota(quota.clone()));
    }
    // So did one refused memory that then gave up: JS and Python engines report a refused
    // growth as their own "out of memory" error instead of trapping.
    if refused && state.limiter.memory_denied {
        return Err(CallFailure::Memory { memory_mib: limits.memory_mib });
    }
    let result = match result {
        Returned::Reply(Ok(answer)) => Returned::Reply(Ok(check_answer(answer, limits)?)),
        other => other,
    };
    let Some(kv) = state.kv.txn.take() else {
        return Err(CallFailure::Host("the call's key-value transaction is missing".into()));
    };
    Ok(Completed { result, kv, jobs: std::mem::take(&mut state.jobs.enqueued), elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(vars: &[(&str, &str)], message: Option<&str>) -> Answer {
        Answer {
            config: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            message: message.map(str::to_owned),
        }
    }

    fn problem(a: Answer, limits: &Limits) -> String {
        match check_answer(a, limits) {
            Err(CallFailure::InvalidReply(why)) => why,
            other => panic!("expected an invalid reply, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_answer_passes_unchanged() {
        let ok = answer(&[("MY_URL", "https://x"), ("_private2", "v")], Some("hi"));
        assert_eq!(check_answer(ok.clone(), &Limits::default()).unwrap(), ok);
    }

    #[test]
    fn names_values_and_duplicates_are_checked() {
        let limits = Limits::default();
        assert!(problem(answer(&[("1BAD", "v")], None), &limits).contains("1BAD"));
        assert!(problem(answer(&[("HAS-DASH", "v")], None), &limits).contains("HAS-DASH"));
        assert!(problem(answer(&[("EMPTY", "")], None), &limits).contains("empty value"));
        assert!(problem(answer(&[("A", "1"), ("A", "2")], None), &limits).contains("twice"));
    }

    #[test]
    fn size_and_count_limits_apply() {
        let limits = Limits { max_reply_bytes: 10, max_vars: 2, ..Limits::default() };
        let big = check_answer(answer(&[("A", "0123456789")], None), &limits);
        assert!(matches!(big, Err(CallFailure::ReplyTooLarge { size: 11, max: 10 })), "{big:?}");
        let long_message = check_answer(answer(&[], Some("01234567890")), &limits);
        assert!(matches!(long_message, Err(CallFailure::ReplyTooLarge { .. })));
        assert!(problem(answer(&[("A", "1"), ("B", "2"), ("C", "3")], None), &limits).contains("over the limit of 2"));
    }
}
