//! Xervo: dia's checks (the manifest, provision answering 200 with an id and every declared
//! config var, plan change with a message, SSO refusing a bad token with 403 and answering a
//! good one with a 302 to a page that opens without cookies, deprovision answering 200) and
//! the refusals dia never sends, the first ones before the resource exists.

use base64::Engine;

use super::client::{Answer, Http, origin};
use super::{
    Declared, Report, Target, UnknownPlan, XervoTarget, expect, plugin_decides, random_hex, refused, sso_token,
    unix_now,
};

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json");
const DENIED: &[u16] = &[401, 403];

/// `Basic base64(id:password)`.
pub(super) fn basic(x: &XervoTarget) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", x.id, x.password)))
}

#[derive(Clone)]
struct Xervo<'a> {
    http: &'a Http,
    creds: &'a XervoTarget,
    resources: String,
    sso: String,
    basic: String,
    app: String,
}

impl Xervo<'_> {
    fn auth(&self) -> (&str, &str) {
        ("Authorization", self.basic.as_str())
    }

    fn body(&self, plan: &str) -> String {
        serde_json::json!({
            "options": {},
            "callback_url": "http://localhost:8000/callback/999",
            "modulus_id": self.app,
            "email": format!("{}@example.com", self.app),
            "plan": plan,
            "region": "us-east-1",
        })
        .to_string()
    }

    fn provision(&self, headers: &[(&str, &str)], body: &str) -> Result<Answer, String> {
        self.http.send("POST", &self.resources, headers, Some(body.as_bytes()))
    }

    fn change_plan(&self, id: &str, headers: &[(&str, &str)], plan: &str) -> Result<Answer, String> {
        let body = serde_json::json!({ "plan": plan, "modulus_id": self.app }).to_string();
        self.http.send("PUT", &format!("{}/{id}", self.resources), headers, Some(body.as_bytes()))
    }

    fn deprovision(&self, id: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        self.http.send("DELETE", &format!("{}/{id}", self.resources), headers, None)
    }

    fn sso(&self, id: &str, timestamp: i64, token: &str) -> Result<Answer, String> {
        let body = serde_json::json!({
            "id": id, "timestamp": timestamp, "email": format!("{}@example.com", self.app),
            "token": token, "nav-data": "",
        });
        self.http.send("POST", &self.sso, &[ACCEPT, JSON], Some(body.to_string().as_bytes()))
    }

    /// A good token: 302 with a Location, which opens with 200 without any cookie.
    fn sso_opens(&self, id: &str, ts: i64) -> Result<String, String> {
        let redirect = expect(self.sso(id, ts, &sso_token(id, &self.creds.sso_salt, ts)), &[302])?;
        let location = redirect.header("Location").ok_or("a 302 without Location (dia crashes on it)")?;
        let url =
            if location.contains("http") { location.to_owned() } else { format!("{}{location}", origin(&self.sso)) };
        // dia follows the landing's GET redirects, without cookies.
        let page = expect(self.http.send("GET", &url, &[], None).and_then(|a| self.http.follow(a, url)), &[200])?;
        Ok(format!("302 then 200 ({} bytes) without cookies", page.body.len()))
    }
}

/// Run the Xervo checks; every config var the sequence was answered (the first provision's
/// and the plan change's), when the first provision succeeded.
pub(super) fn run(
    http: &Http,
    target: &Target,
    creds: &XervoTarget,
    report: &mut Report,
) -> Option<Vec<(String, String)>> {
    let (mut resources, mut sso) = (format!("{}/resources", target.base), format!("{}/sso/login", target.base));
    match &creds.manifest {
        Some(m) => {
            let checked = manifest(m, creds).map(|detail| match creds.manifest_from_config {
                true => format!(
                    "{detail}; the manifest this config publishes (the kit cannot read what was submitted to Xervo)"
                ),
                false => detail,
            });
            if report.check("xervo: the manifest passes dia's rules", checked) {
                let test = &m["api"]["test"];
                resources = test["base_url"].as_str().unwrap_or(&resources).to_owned();
                sso = test["sso_url"].as_str().unwrap_or(&sso).to_owned();
            }
        }
        None => report.skip("xervo: the manifest passes dia's rules", "no manifest known for this provider"),
    }
    let x = Xervo { http, creds, resources, sso, basic: basic(creds), app: format!("kit{}", random_hex(6)) };
    let (auth, plan) = (x.auth(), target.plans.0.as_str());
    let body = x.body(plan);

    report
        .check("xervo: provision without credentials is refused", refused(x.provision(&[ACCEPT, JSON], &body), DENIED));
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:wrong", creds.id)));
    report.check(
        "xervo: provision with a wrong password is refused",
        refused(x.provision(&[("Authorization", &wrong), JSON], &body), DENIED),
    );
    match &target.bitrise {
        Some(b) => {
            report.check(
                "xervo: provision with Bitrise's shared token is refused",
                refused(x.provision(&[("Authentication", &b.shared_token), JSON], &body), DENIED),
            );
        }
        None => report.skip("xervo: provision with Bitrise's shared token is refused", "the add-on is not on Bitrise"),
    }
    report.check(
        "xervo: a malformed JSON body is refused",
        refused(x.provision(&[auth, JSON], "{\"plan\":"), &[400, 422]),
    );
    let unknown_provision = "xervo: provision of an unknown plan is refused";
    let accepts_any = match &target.unknown_plan {
        UnknownPlan::Listed(unknown) => {
            report.check(unknown_provision, refused(x.provision(&[auth, JSON], &x.body(unknown)), &[400, 422]));
            false
        }
        UnknownPlan::PluginDecides(unknown) => {
            let probe = Xervo { app: format!("kit{}", random_hex(6)), ..x.clone() };
            let answer = probe.provision(&[auth, ACCEPT, JSON], &probe.body(unknown));
            let made = answer.as_ref().ok().and_then(|a| provisioned(a).ok()).map(|(id, _)| id);
            let accepted = plugin_decides(report, unknown_provision, unknown, answer);
            if let (true, Some(id)) = (accepted, made) {
                let _ = probe.deprovision(&id, &[auth]);
            }
            accepted
        }
    };

    let first = expect(x.provision(&[auth, ACCEPT, JSON], &body), &[200]).and_then(|a| {
        let (id, config) = provisioned(&a)?;
        Ok((a, id, config))
    });
    let (answer, id, mut config) = match first {
        Ok(ok) => ok,
        Err(why) => {
            report.check("xervo: provision answers 200 with an id and a config", Err(why));
            report.skip("xervo: the rest of the sequence", "the first provision failed");
            return None;
        }
    };
    report.check(
        "xervo: provision answers 200 with an id and a config",
        Ok(format!("id {id}, {} var(s) in {} ms", config.len(), answer.elapsed.as_millis())),
    );
    super::hygiene::any(report, "xervo", target, config.len());
    let declared = "xervo: every declared config var is returned, not empty";
    match creds.declared {
        Declared::Config => {
            report.check(declared, has_declared(&config, &creds.config_vars));
        }
        Declared::LearnedFromPlugin => report.skip(
            declared,
            "no config declares them: they were learned from the plugin's own first reply, so checking would \
             compare it with itself (give --config)",
        ),
        Declared::Unknown => report.skip(declared, "no config or --xervo-vars declares them"),
    }
    report.check(
        "xervo: the same provision again answers the same resource",
        expect(x.provision(&[auth, ACCEPT, JSON], &body), &[200]).and_then(|again| {
            if again.body == answer.body {
                Ok("identical body".into())
            } else {
                Err(format!("{} then {}", answer.body, again.body))
            }
        }),
    );

    // A plan change's config, if it answers one, is what the app gets from then on.
    let changed = expect(x.change_plan(&id, &[auth, ACCEPT, JSON], &target.plans.1), &[200]).and_then(|a| {
        let v = a.json().filter(|v| v.get("message").is_some());
        let v = v.ok_or_else(|| format!("no `message` (dia requires one): {}", a.brief()))?;
        let Some(vars) = v.get("config").filter(|c| !c.is_null()) else {
            return Ok(format!("to {}, no config", target.plans.1));
        };
        let vars = config_vars(vars).ok_or_else(|| format!("`config` is not an object: {}", a.brief()))?;
        if creds.declared == Declared::Config {
            has_declared(&vars, &creds.config_vars)?;
        }
        let detail = format!("to {}, {} var(s)", target.plans.1, vars.len());
        config.extend(vars);
        Ok(detail)
    });
    report.check("xervo: plan change answers 200 with a message", changed);
    let unknown_change = "xervo: plan change to an unknown plan is refused";
    match &target.unknown_plan {
        _ if accepts_any => report.skip(unknown_change, "the plugin accepts any plan (see the provision of one)"),
        UnknownPlan::Listed(unknown) | UnknownPlan::PluginDecides(unknown) => {
            report.check(unknown_change, refused(x.change_plan(&id, &[auth, JSON], unknown), &[400, 422]));
        }
    }
    report
        .check("xervo: plan change without credentials is refused", refused(x.change_plan(&id, &[JSON], plan), DENIED));
    report.check(
        "xervo: plan change of an unknown resource is refused",
        refused(x.change_plan(&format!("{id}x"), &[auth, JSON], plan), &[404, 410]),
    );

    let ts = unix_now();
    report.check("xervo: SSO with an invalid token answers 403", refused(x.sso(&id, ts, "invalid"), &[403]));
    report.check("xervo: SSO with a good token opens the dashboard", x.sso_opens(&id, ts));
    let token = sso_token(&id, &creds.sso_salt, ts);
    report.check("xervo: a replayed SSO token is refused", refused(x.sso(&id, ts, &token), &[403]));
    let stale = ts - 3_600;
    report.check(
        "xervo: an SSO token an hour old is refused",
        refused(x.sso(&id, stale, &sso_token(&id, &creds.sso_salt, stale)), &[403]),
    );
    report.check(
        "xervo: an SSO body without a token is refused",
        refused(x.http.send("POST", &x.sso, &[JSON], Some(format!("{{\"id\":\"{id}\"}}").as_bytes())), &[400, 403]),
    );

    report.check("xervo: deprovision without credentials is refused", refused(x.deprovision(&id, &[]), DENIED));
    report.check("xervo: deprovision answers 200", expect(x.deprovision(&id, &[auth]), &[200]).map(|_| "200".into()));
    report.check(
        "xervo: deprovision again answers 200",
        expect(x.deprovision(&id, &[auth]), &[200]).map(|_| "200".into()),
    );
    report.check(
        "xervo: deprovision of an unknown resource is refused",
        refused(x.deprovision(&format!("{id}x"), &[auth]), &[404, 410]),
    );
    // What Xervo can observe of a deprovision: the resource no longer takes a plan change.
    report.check(
        "xervo: a plan change after deprovision is refused",
        refused(x.change_plan(&id, &[auth, JSON], &target.plans.0), &[404, 410]),
    );
    // dia's chain signs in after deprovision and expects 403, then 302 and 200.
    report.check("xervo: SSO after deprovision still opens (dia's chain)", x.sso_opens(&id, unix_now() + 1));
    config.sort();
    config.dedup();
    Some(config)
}

/// The id and config of a provision answer.
fn provisioned(answer: &Answer) -> Result<(String, Vec<(String, String)>), String> {
    let v = answer.json().ok_or_else(|| format!("the body is not JSON: {}", answer.brief()))?;
    let id = match v.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(n @ serde_json::Value::Number(_)) => n.to_string(),
        _ => return Err(format!("no `id`: {}", answer.brief())),
    };
    let config =
        v.get("config").and_then(config_vars).ok_or_else(|| format!("no `config` object: {}", answer.brief()))?;
    Ok((id, config))
}

/// A `config` object as (name, value) pairs; `None` if it is not an object.
fn config_vars(config: &serde_json::Value) -> Option<Vec<(String, String)>> {
    let config = config.as_object()?;
    Some(config.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect())
}

/// Every declared var is among `config`, with a value.
fn has_declared(config: &[(String, String)], declared: &[String]) -> Result<String, String> {
    for var in declared {
        match config.iter().find(|(k, _)| k == var) {
            Some((_, value)) if !value.is_empty() => {}
            _ => return Err(format!("config var {var} (declared in the manifest) is missing or empty")),
        }
    }
    Ok(format!("{} declared var(s)", declared.len()))
}

/// dia's manifest rules, the blocking and the non-blocking ones alike.
fn manifest(m: &serde_json::Value, creds: &XervoTarget) -> Result<String, String> {
    let id = m["id"].as_str().ok_or("`id` is not a string")?;
    let api = m.get("api").ok_or("no `api`")?;
    let vars = api["config_vars"].as_array().ok_or("`api.config_vars` is not an array")?;
    if vars.is_empty() {
        return Err("`api.config_vars` is empty".into());
    }
    let prefix = id.to_ascii_uppercase();
    for var in vars {
        let var = var.as_str().ok_or("a config var is not a string")?;
        if !var.starts_with(&prefix) {
            return Err(format!("config var {var} does not start with {prefix}"));
        }
    }
    for field in ["password", "sso_salt"] {
        if api[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("`api.{field}` is not a non-empty string"));
        }
    }
    for block in ["production", "test"] {
        for field in ["base_url", "sso_url"] {
            if api[block][field].as_str().is_none_or(str::is_empty) {
                return Err(format!("`api.{block}.{field}` is not a non-empty string"));
            }
        }
    }
    if id != creds.id {
        return Err(format!("the manifest's id {id:?} is not the Basic user {:?}", creds.id));
    }
    Ok(format!("{} config var(s)", vars.len()))
}
