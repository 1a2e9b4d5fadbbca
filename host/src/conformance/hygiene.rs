//! Plugin hygiene, beyond what either platform checks: variable names a shell and both
//! platforms accept, all carrying the add-on's prefix, no empty values, `*_URL` values that
//! are URLs; and the time calls take against the deadline, measured over a few dozen calls
//! with the headroom reported — a plugin that needs most of its deadline when idle will miss
//! it under load.

use std::time::Duration;

use super::client::Http;
use super::{BitriseTarget, Report, Target, XervoTarget, expect, random_hex};

pub(super) enum Protocol<'a> {
    Bitrise(&'a BitriseTarget),
    Xervo(&'a XervoTarget),
}

/// That the first provision returned variables at all: without any, the app gets nothing
/// from the add-on and every rule of [`vars`] holds trivially, so it fails unless
/// `--allow-empty` says it is meant.
pub(super) fn any(report: &mut Report, protocol: &str, target: &Target, count: usize) {
    let result = match (count, target.allow_empty) {
        (0, true) => Ok("none, allowed by --allow-empty: the app gets nothing from this add-on".to_owned()),
        (0, false) => Err("no variables at all: the app gets nothing from this add-on, and every variable rule \
             holds trivially; pass --allow-empty if that is meant"
            .to_owned()),
        (n, _) => Ok(format!("{n} variable(s)")),
    };
    report.check(format!("{protocol}: provision returns variables"), result);
}

/// The naming, prefix, value and URL rules on every variable one protocol's sequence saw
/// (the provision's, the plan change's, and a provision repeated after it).
pub(super) fn vars(report: &mut Report, protocol: &str, target: &Target, vars: Option<&[(String, String)]>) {
    let prefix = &target.prefix;
    let names = [
        format!("{protocol}: variable names are A-Z, 0-9 and '_'"),
        format!("{protocol}: variable names start with {prefix}_"),
        format!("{protocol}: variable values are not empty"),
        format!("{protocol}: *_URL values are URLs"),
    ];
    let Some(vars) = vars else {
        names.into_iter().for_each(|n| report.skip(n, "no successful provision to look at"));
        return;
    };
    let bad = |f: &dyn Fn(&(String, String)) -> bool| -> Vec<String> {
        vars.iter().filter(|v| f(v)).map(|(k, v)| format!("{k}={v:?}")).collect()
    };
    let verdict = |bad: Vec<String>, rule: &str| {
        if bad.is_empty() {
            Ok(format!("{} variable(s)", vars.len()))
        } else {
            Err(format!("{rule}: {}", bad.join(", ")))
        }
    };
    let [shell, prefixed, values, urls] = names;
    let name_ok = |k: &str| {
        k.starts_with(|c: char| c.is_ascii_uppercase())
            && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    report.check(shell, verdict(bad(&|(k, _)| !name_ok(k)), "not a portable variable name"));
    let want = format!("{prefix}_");
    report
        .check(prefixed, verdict(bad(&|(k, _)| !k.starts_with(&want)), "would collide with other add-ons' variables"));
    report.check(values, verdict(bad(&|(_, v)| v.trim().is_empty()), "empty"));
    report.check(urls, verdict(bad(&|(k, v)| k.ends_with("_URL") && !is_url(v)), "not an absolute URL"));
}

/// `scheme://host…`, parsed as an absolute URI with a host.
fn is_url(value: &str) -> bool {
    value.parse::<axum::http::Uri>().is_ok_and(|u| u.scheme().is_some() && u.host().is_some_and(|h| !h.is_empty()))
}

/// Provision `target.timed_calls` fresh resources one after another and compare the p99 with
/// the deadline. More than half the deadline fails: the headroom is what load eats.
pub(super) fn timing(http: &Http, target: &Target, report: &mut Report, protocol: Protocol<'_>) {
    let name = format!(
        "call time: p99 of {} provisions within half the {} ms deadline",
        target.timed_calls,
        target.deadline.as_millis()
    );
    let mut times = Vec::with_capacity(target.timed_calls);
    for _ in 0..target.timed_calls {
        let app = random_hex(8);
        let answer = match protocol {
            Protocol::Bitrise(b) => {
                let body = serde_json::json!({ "app_slug": app, "api_token": "t", "plan": target.plans.0 }).to_string();
                let headers = [("Authentication", b.shared_token.as_str()), ("Content-Type", "application/json")];
                expect(
                    http.send("POST", &format!("{}/provision", target.base), &headers, Some(body.as_bytes())),
                    &[201],
                )
            }
            Protocol::Xervo(x) => {
                let body = serde_json::json!({ "modulus_id": app, "email": "kit@example.com", "plan": target.plans.0 })
                    .to_string();
                let auth = super::xervo::basic(x);
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                expect(
                    http.send("POST", &format!("{}/resources", target.base), &headers, Some(body.as_bytes())),
                    &[200],
                )
            }
        };
        match answer {
            Ok(a) => times.push(a.elapsed),
            Err(why) => {
                report.check(name, Err(format!("call {} of {}: {why}", times.len() + 1, target.timed_calls)));
                return;
            }
        }
    }
    times.sort();
    let at =
        |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
    let (p50, p99) = (at(0.50), at(0.99));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let deadline = ms(target.deadline);
    let detail = format!(
        "p50 {:.1} ms, p99 {:.1} ms: headroom {:.0} ms ({:.0}% of the deadline)",
        ms(p50),
        ms(p99),
        deadline - ms(p99),
        100.0 * (deadline - ms(p99)) / deadline
    );
    let result = if p99 * 2 > target.deadline {
        Err(format!("{detail}; calls this slow when idle miss the deadline under load"))
    } else {
        Ok(detail)
    };
    report.check(name, result);
}
