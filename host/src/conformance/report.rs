//! The kit's outcome: one line per check (PASS, FAIL or SKIP, with what was seen), printed as
//! each is known, and the same as one JSON document for machines.

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The plugin's outbound requests, answered by the kit's stub and never sent (`None` when
    /// they were sent, or the provider is not the kit's own).
    pub stubbed: Option<Vec<String>>,
    /// Print each check on stdout as it is recorded.
    live: bool,
}

impl Report {
    pub fn new(live: bool) -> Report {
        Report { checks: Vec::new(), stubbed: None, live }
    }

    /// Record a check: `Ok(what was seen)` passes, `Err(why)` fails.
    pub fn check(&mut self, name: impl Into<String>, result: Result<String, String>) -> bool {
        let passed = result.is_ok();
        let (outcome, detail) = match result {
            Ok(detail) => (Outcome::Pass, detail),
            Err(why) => (Outcome::Fail, why),
        };
        self.push(Check { name: name.into(), outcome, detail });
        passed
    }

    pub fn skip(&mut self, name: impl Into<String>, why: impl Into<String>) {
        self.push(Check { name: name.into(), outcome: Outcome::Skip, detail: why.into() });
    }

    fn push(&mut self, check: Check) {
        if self.live {
            // A closed pipe only loses the live lines; the exit status still tells.
            let _ = writeln!(std::io::stdout().lock(), "{}", line(&check));
        }
        self.checks.push(check);
    }

    /// The requests the kit's stub answered instead of the plugin's allowed origins.
    pub fn stubbed(&mut self, requests: Vec<String>) {
        if self.live {
            let _ = writeln!(std::io::stdout().lock(), "{}", stubbed_line(&requests));
        }
        self.stubbed = Some(requests);
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        )
    }

    pub fn json(&self, target: &str) -> serde_json::Value {
        serde_json::json!({
            "target": target,
            "passed": self.count(Outcome::Pass),
            "failed": self.count(Outcome::Fail),
            "skipped": self.count(Outcome::Skip),
            "checks": self.checks,
            "outbound": self.stubbed.as_ref().map(|r| serde_json::json!({ "stubbed": true, "requests": r })),
        })
    }
}

fn line(check: &Check) -> String {
    let tag = match check.outcome {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Skip => "SKIP",
    };
    if check.detail.is_empty() {
        format!("{tag}  {}", check.name)
    } else {
        format!("{tag}  {}: {}", check.name, check.detail)
    }
}

/// What the stub answered: no request left the machine.
fn stubbed_line(requests: &[String]) -> String {
    let mut line = format!(
        "NOTE  outbound: {} request(s) answered by the kit's stub (200, `{{}}`), none sent; --allow-net sends them",
        requests.len()
    );
    for request in requests.iter().take(20) {
        line.push_str("\n        ");
        line.push_str(request);
    }
    if requests.len() > 20 {
        line.push_str(&format!("\n        ... and {} more", requests.len() - 20));
    }
    line
}
