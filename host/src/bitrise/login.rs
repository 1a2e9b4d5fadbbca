//! Bitrise SSO: `POST /addons/{addon}/login` with `app_slug`, `timestamp` and `token` in the
//! form body and `app_title` / `build_slug` in the query. The token is
//! `hex(sha1(app_slug:sso_secret:timestamp))` (or `sha256-` + the SHA-256 form), fresh within
//! five minutes and usable once. The answer is the add-on's dashboard as well-formed XHTML
//! carrying Bitrise's Beam navigation header — answered directly, because the platform's
//! client follows redirects without a cookie jar.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::Offered;
use crate::error::ServiceError;
use crate::http::{FormBody, query};
use crate::pages;
use crate::service::check_resource_id;
use crate::service::{Platform, Record, Service};

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    app_slug: String,
    timestamp: String,
    token: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginQuery {
    app_title: Option<String>,
    build_slug: Option<String>,
}

pub(super) async fn login(
    State(service): State<Arc<Service>>,
    Offered(addon): Offered,
    login_query: Result<Query<LoginQuery>, QueryRejection>,
    headers: HeaderMap,
    FormBody(form): FormBody<LoginForm>,
) -> Result<Response, ServiceError> {
    let secret = addon.bitrise()?.sso_secret.clone();
    let login_query = query(login_query)?;
    check_resource_id("app_slug", &form.app_slug)?;
    let id = addon.id();
    service.verify_sso(&format!("{id}/bitrise"), &form.app_slug, &secret, &form.timestamp, &form.token).await?;
    let record = service
        .record(&addon, Platform::Bitrise, &form.app_slug)
        .await?
        .filter(Record::is_active)
        .ok_or_else(|| ServiceError::NotFound(format!("app `{}` has not provisioned `{id}`", form.app_slug)))?;
    let title = login_query.app_title.as_deref();
    let page = || pages::bitrise_dashboard(&addon.config, &record, title, login_query.build_slug.as_deref());
    crate::web::open(&service, &addon, &record, None, &headers, page).await
}
