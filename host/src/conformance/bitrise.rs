//! Bitrise: the `bitrise-addon-test` sequence (provision three times — 201, then 200 with the
//! same body —, plan change, SSO login answered with well-formed XHTML carrying the Beam
//! header, deprovision three times and once for a never-seen app) and the refusals the kit
//! never tries. Every refusal is sent for the app before it exists, so the first real
//! provision answering 201 also shows that none of them created anything.

use super::client::{Answer, Http};
use super::{
    BitriseTarget, Report, Target, UnknownPlan, expect, plugin_decides, random_hex, refused, sso_token, unix_now,
};

const JSON: (&str, &str) = ("Content-Type", "application/json");
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const DENIED: &[u16] = &[401, 403];

struct Bitrise<'a> {
    http: &'a Http,
    target: &'a Target,
    creds: &'a BitriseTarget,
    slug: String,
}

impl Bitrise<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.base)
    }

    fn auth(&self) -> (&str, &str) {
        ("Authentication", self.creds.shared_token.as_str())
    }

    fn body(&self, plan: &str) -> String {
        serde_json::json!({
            "app_slug": self.slug,
            "app_title": format!("Title of app #{}", self.slug),
            "api_token": random_hex(8),
            "plan": plan,
        })
        .to_string()
    }

    fn provision(&self, headers: &[(&str, &str)], body: &str) -> Result<Answer, String> {
        self.http.send("POST", &self.url("/provision"), headers, Some(body.as_bytes()))
    }

    fn change_plan(&self, slug: &str, headers: &[(&str, &str)], plan: &str) -> Result<Answer, String> {
        let body = serde_json::json!({ "plan": plan }).to_string();
        self.http.send("PUT", &self.url(&format!("/provision/{slug}")), headers, Some(body.as_bytes()))
    }

    fn deprovision(&self, slug: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        self.http.send("DELETE", &self.url(&format!("/provision/{slug}")), headers, Some(b"null"))
    }

    fn login(&self, slug: &str, timestamp: i64, token: &str) -> Result<Answer, String> {
        let form = format!("app_slug={slug}&timestamp={timestamp}&token={token}");
        let path = format!("/login?app_title=Title+of+app+%23{slug}&build_slug={}", random_hex(8));
        // The kit sends the shared token on login too; a browser would not, and neither need.
        // Like Go's client, it follows redirects (a 303 to the add-on's own origin), without
        // a cookie jar.
        let url = self.url(&path);
        let answer = self.http.send("POST", &url, &[self.auth(), FORM], Some(form.as_bytes()))?;
        self.http.follow(answer, url)
    }
}

/// Run the Bitrise checks; every variable the sequence was answered (the first provision's,
/// any the plan change answers, and a provision repeated after the plan change), when the
/// first provision succeeded.
pub(super) fn run(
    http: &Http,
    target: &Target,
    creds: &BitriseTarget,
    report: &mut Report,
) -> Option<Vec<(String, String)>> {
    let b = Bitrise { http, target, creds, slug: random_hex(8) };
    let (auth, plan) = (b.auth(), target.plans.0.as_str());
    let body = b.body(plan);

    report.check("bitrise: provision without credentials is refused", refused(b.provision(&[JSON], &body), DENIED));
    let wrong = ("Authentication", "not-the-shared-token");
    report
        .check("bitrise: provision with a wrong token is refused", refused(b.provision(&[wrong, JSON], &body), DENIED));
    match &target.xervo {
        Some(x) => {
            let basic = super::xervo::basic(x);
            let other = [("Authorization", basic.as_str()), JSON];
            report.check(
                "bitrise: provision with Xervo's credentials is refused",
                refused(b.provision(&other, &body), DENIED),
            );
        }
        None => report.skip("bitrise: provision with Xervo's credentials is refused", "the add-on is not on Xervo"),
    }
    let bearer = format!("Bearer {}", creds.shared_token);
    let misplaced = [("Authorization", bearer.as_str()), JSON];
    report.check(
        "bitrise: the shared token in the wrong header is refused",
        refused(b.provision(&misplaced, &body), DENIED),
    );
    report.check(
        "bitrise: a malformed JSON body is refused",
        refused(b.provision(&[auth, JSON], r#"{"app_slug": "#), &[400, 422]),
    );
    report.check(
        "bitrise: a body without app_slug and plan is refused",
        refused(b.provision(&[auth, JSON], r#"{"api_token":"x"}"#), &[400, 422]),
    );
    let padded =
        serde_json::json!({ "app_slug": b.slug, "plan": plan, "api_token": "t", "pad": "p".repeat(target.oversized) });
    report.check(
        "bitrise: an oversized body is refused",
        refused(b.provision(&[auth, JSON], &padded.to_string()), &[413]),
    );
    let unknown_provision = "bitrise: provision of an unknown plan is refused";
    let accepts_any = match &target.unknown_plan {
        UnknownPlan::Listed(unknown) => {
            report.check(unknown_provision, refused(b.provision(&[auth, JSON], &b.body(unknown)), &[400, 422]));
            false
        }
        UnknownPlan::PluginDecides(unknown) => {
            let probe = Bitrise { slug: random_hex(8), ..b };
            let accepted = plugin_decides(
                report,
                unknown_provision,
                unknown,
                probe.provision(&[auth, JSON], &probe.body(unknown)),
            );
            if accepted {
                let _ = probe.deprovision(&probe.slug, &[auth, JSON]);
            }
            accepted
        }
    };
    report.check(
        "bitrise: plan change of an unknown app is refused",
        refused(b.change_plan(&b.slug, &[auth, JSON], &target.plans.1), &[404, 410]),
    );
    // A second earlier than the real login below: a refused token may still count as used.
    let ts = unix_now() - 1;
    report.check(
        "bitrise: login for an app that is not provisioned is refused",
        refused(b.login(&b.slug, ts, &sso_token(&b.slug, &creds.sso_secret, ts)), &[403, 404]),
    );

    // The kit's sequence: provision -r.
    let mut first: Option<Answer> = None;
    for (i, status) in [201u16, 200, 200].into_iter().enumerate() {
        let name = if i == 0 {
            "bitrise: provision answers 201 with envs".to_owned()
        } else {
            format!("bitrise: repeat {i} answers 200 with the same envs")
        };
        let result = expect(b.provision(&[auth, JSON], &body), &[status]).and_then(|a| {
            let envs = envs(&a)?;
            match &first {
                Some(f) if f.body != a.body => Err(format!("a different body: {} then {}", f.body, a.body)),
                _ => Ok((a, envs)),
            }
        });
        let result = result.map(|(a, envs)| {
            let detail = format!("{} env(s) in {} ms", envs.len(), a.elapsed.as_millis());
            if first.is_none() {
                first = Some(a);
            }
            detail
        });
        if !report.check(name, result) && i == 0 {
            report.skip("bitrise: the rest of the sequence", "the first provision failed");
            return None;
        }
    }
    let mut vars = first.as_ref().and_then(|a| envs(a).ok()).unwrap_or_default();
    super::hygiene::any(report, "bitrise", target, vars.len());

    // change-plan: any envs it answers are the app's variables too.
    let changed = expect(b.change_plan(&b.slug, &[auth, JSON], &target.plans.1), &[200, 201, 202, 204]).and_then(|a| {
        let envs = if a.body.trim().is_empty() { Vec::new() } else { envs(&a)? };
        let detail = format!("{} to {}, {} env(s)", a.status, target.plans.1, envs.len());
        vars.extend(envs);
        Ok(detail)
    });
    report.check("bitrise: plan change answers 2xx", changed);
    let unknown_change = "bitrise: plan change to an unknown plan is refused";
    match &target.unknown_plan {
        _ if accepts_any => report.skip(unknown_change, "the plugin accepts any plan (see the provision of one)"),
        UnknownPlan::Listed(unknown) | UnknownPlan::PluginDecides(unknown) => {
            report.check(unknown_change, refused(b.change_plan(&b.slug, &[auth, JSON], unknown), &[400, 422]));
        }
    }
    // Bitrise provisions again ("create or update"): what the app then gets is the variables
    // as they stand after the plan change.
    let again = expect(b.provision(&[auth, JSON], &body), &[200, 201]).and_then(|a| {
        let envs = envs(&a)?;
        let detail = format!("{} with {} env(s)", a.status, envs.len());
        vars.extend(envs);
        Ok(detail)
    });
    report.check("bitrise: a provision repeated after the plan change answers with envs", again);
    vars.sort();
    vars.dedup();
    let api_token = target.build_api.as_ref().map(|api| {
        let token = vars.iter().find(|(k, _)| *k == api.token_var).map(|(_, v)| v.clone());
        build_api(http, api, token.as_deref(), report);
        token
    });
    report.check(
        "bitrise: plan change without credentials is refused",
        refused(b.change_plan(&b.slug, &[JSON], &target.plans.0), DENIED),
    );

    // login, then the same token again, a stale one and a forged one.
    let ts = unix_now();
    let token = sso_token(&b.slug, &creds.sso_secret, ts);
    report.check(
        "bitrise: login answers well-formed XHTML with the Beam header",
        b.login(&b.slug, ts, &token).and_then(|a| login_page(&a)),
    );
    report.check("bitrise: a replayed SSO token is refused", refused(b.login(&b.slug, ts, &token), DENIED));
    let stale = ts - 3_600;
    report.check(
        "bitrise: an SSO token an hour old is refused",
        refused(b.login(&b.slug, stale, &sso_token(&b.slug, &creds.sso_secret, stale)), DENIED),
    );
    report.check(
        "bitrise: a forged SSO token is refused",
        refused(b.login(&b.slug, ts + 1, &sso_token(&b.slug, "not-the-secret", ts + 1)), DENIED),
    );
    report
        .check("bitrise: a malformed SSO token is refused", refused(b.login(&b.slug, ts + 2, "zz"), &[400, 401, 403]));

    // deprovision -r, and one for a never-provisioned app.
    report
        .check("bitrise: deprovision without credentials is refused", refused(b.deprovision(&b.slug, &[JSON]), DENIED));
    for i in 0..3 {
        let name = if i == 0 {
            "bitrise: deprovision answers 2xx".to_owned()
        } else {
            format!("bitrise: deprovision repeat {i} answers 2xx")
        };
        report
            .check(name, expect(b.deprovision(&b.slug, &[auth, JSON]), &[200, 202, 204]).map(|a| a.status.to_string()));
    }
    report.check(
        "bitrise: deprovision of a never-provisioned app answers 2xx",
        expect(b.deprovision(&random_hex(8), &[auth, JSON]), &[200, 202, 204]).map(|a| a.status.to_string()),
    );
    let ts = unix_now() + 3;
    report.check(
        "bitrise: login after deprovision is refused",
        refused(b.login(&b.slug, ts, &sso_token(&b.slug, &creds.sso_secret, ts)), &[401, 403, 404, 410]),
    );
    if let (Some(api), Some(Some(token))) = (&target.build_api, api_token) {
        let bearer = format!("Bearer {token}");
        report.check(
            "bitrise: the build API refuses the app's token after deprovision",
            refused(http.send("GET", &api.url, &[("Authorization", &bearer)], None), DENIED),
        );
    }
    Some(vars)
}

/// The build API: refused without a token and with a wrong one, answered (not refused, not a
/// 5xx) with the token the provision issued.
fn build_api(http: &Http, api: &super::BuildApi, token: Option<&str>, report: &mut Report) {
    report.check(
        "bitrise: the build API refuses a request without a token",
        refused(http.send("GET", &api.url, &[], None), DENIED),
    );
    report.check(
        "bitrise: the build API refuses a wrong token",
        refused(http.send("GET", &api.url, &[("Authorization", "Bearer abt1.kit.not-a-token")], None), DENIED),
    );
    let answered = match token {
        None => Err(format!("the provision returned no `{}`", api.token_var)),
        Some(token) => http.send("GET", &api.url, &[("Authorization", &format!("Bearer {token}"))], None).and_then(|a| {
            if a.status == 404 && a.body.contains("serves no API") {
                Err("the plugin has no HTTP handler: the platform's builds would get 404 (build it for the `web` world)"
                    .into())
            } else if DENIED.contains(&a.status) || a.status >= 500 {
                Err(format!("expected the plugin's answer, got {}", a.brief()))
            } else {
                Ok(format!("{} from GET {} in {} ms", a.status, api.url, a.elapsed.as_millis()))
            }
        }),
    };
    report.check("bitrise: the build API answers with the token the provision issued", answered);
}

/// The envs of a provision answer, as the kit decodes them: `{"envs":[{key,value}]}`.
fn envs(answer: &Answer) -> Result<Vec<(String, String)>, String> {
    let v = answer.json().ok_or_else(|| format!("the body is not JSON: {}", answer.brief()))?;
    let Some(list) = v.get("envs").filter(|e| !e.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| format!("`envs` is not an array: {}", answer.brief()))?;
    list.iter()
        .map(|e| match (e.get("key").and_then(|k| k.as_str()), e.get("value").and_then(|k| k.as_str())) {
            (Some(k), Some(v)) => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("an env without a string key and value: {e}")),
        })
        .collect()
}

/// A 2xx page the kit's strict XML decoder accepts, that loads Bitrise's Beam header.
fn login_page(answer: &Answer) -> Result<String, String> {
    if !(200..300).contains(&answer.status) {
        return Err(format!("expected 2xx, got {}", answer.brief()));
    }
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&answer.body, options)
        .map_err(|e| format!("not well-formed XHTML (Bitrise's kit would refuse it): {e}"))?;
    let beam = doc.descendants().any(|n| {
        n.has_tag_name("script") && n.attribute("src").is_some_and(|s| s.to_ascii_lowercase().contains("beam"))
    });
    if !beam {
        return Err("no <script src=\"…beam…\">: Bitrise shows add-on pages under its Beam navigation header".into());
    }
    Ok(format!("{} bytes of XHTML in {} ms", answer.body.len(), answer.elapsed.as_millis()))
}
