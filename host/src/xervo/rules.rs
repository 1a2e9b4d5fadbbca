//! Xervo's rules on the variables a plugin returns, checked by the service before anything is
//! recorded: every config var the manifest declares must be present and non-empty, every var
//! must carry the add-on's prefix, and `*_URL` vars must be URLs. A plugin that breaks the
//! contract gets the platform a 5xx naming the variable, and nothing is stored.

use crate::service::ConfigRules;

use super::manifest::XervoSettings;

/// The rules of one add-on's manifest.
pub(super) struct XervoRules {
    prefix: String,
    declared: Vec<String>,
}

impl XervoRules {
    pub(super) fn of(settings: &XervoSettings) -> XervoRules {
        XervoRules { prefix: settings.var_prefix(), declared: settings.config_vars.clone() }
    }
}

impl ConfigRules for XervoRules {
    fn problem(&self, config: &[(String, String)]) -> Option<String> {
        xervo_problem(&self.prefix, &self.declared, config)
    }
}

fn xervo_problem(prefix: &str, declared: &[String], config: &[(String, String)]) -> Option<String> {
    for var in declared {
        match config.iter().find(|(k, _)| k == var) {
            None => return Some(format!("config var {var} declared in the manifest is missing")),
            Some((_, v)) if v.trim().is_empty() => return Some(format!("config var {var} is empty")),
            Some(_) => {}
        }
    }
    for (key, value) in config {
        if !key.starts_with(prefix) {
            return Some(format!("config var {key} does not start with {prefix}"));
        }
        if key.ends_with("_URL") && !looks_like_url(value) {
            return Some(format!("config var {key} is not a URL: {value:?}"));
        }
    }
    None
}

/// `scheme://host[...]` with an RFC 3986 scheme and a non-empty host.
fn looks_like_url(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    scheme_ok && !host.is_empty() && !value.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(looks_like_url("https://a.example.com/x"));
        assert!(looks_like_url("postgres://u:p@db:5432/x"));
        assert!(!looks_like_url("a.example.com"));
        assert!(!looks_like_url("https:///path"));
        assert!(!looks_like_url("1http://x"));
    }

    #[test]
    fn declared_vars_and_prefix() {
        let declared = vec!["MY_URL".to_owned()];
        let ok = vec![("MY_URL".to_owned(), "https://x".to_owned())];
        assert_eq!(xervo_problem("MY", &declared, &ok), None);
        assert!(xervo_problem("MY", &declared, &[]).unwrap().contains("MY_URL"));
        let bad = vec![("MY_URL".to_owned(), "https://x".to_owned()), ("OTHER".to_owned(), "v".to_owned())];
        assert!(xervo_problem("MY", &declared, &bad).unwrap().contains("OTHER"));
    }
}
