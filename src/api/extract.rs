//! Request extractors: JSON bodies that fail with problem documents naming the field, and the two
//! kinds of credentials (tenant API keys, the admin token).
//!
//! JSON is read in two steps so that the status says what went wrong: bytes that are not JSON at
//! all are a 400; JSON of the wrong shape (a missing, unknown or mistyped field) is a 422 whose
//! `errors[].field` is the JSON path of the culprit.

use super::AppState;
use super::error::{Error, FieldError};
use super::lookups::KeyOwner;
use super::operators::Actor;
use crate::domain::{ApiKey, ApiKeyHash};
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A JSON request body.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
            return Err(Error::UnsupportedMediaType(
                "send the body as application/json".into(),
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// The raw body, honouring the configured size limit (413 above it).
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge("the request body exceeds the size limit".into())
        } else if body_stalled(&rejection) {
            Error::RequestTimeout("the request body stopped arriving".into())
        } else {
            Error::BadRequest(format!("could not read the request body: {rejection}"))
        }
    })
}

/// Whether reading a body failed because it stalled (`api::router`'s body idle timeout).
pub fn body_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Parses a JSON object into `T`: syntax errors are 400, shape errors 422 with the field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::invalid("body", "must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        Error::Validation(vec![shape_error(&path, &message)])
    })
}

/// Names the field of a serde shape error. The field's name is in the message for unknown and
/// missing fields; the path already ends with it for unknown ones, but stops at the parent for
/// missing ones.
fn shape_error(path: &str, message: &str) -> FieldError {
    let join = |name: &str| {
        if path == name || path.ends_with(&format!(".{name}")) {
            path.to_string()
        } else if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    for (prefix, text) in [
        ("unknown field `", "is not a known field"),
        ("missing field `", "is required"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let name = rest.split('`').next().unwrap_or(rest);
            return FieldError::new(join(name), text);
        }
    }
    let field = if path == "." { "body" } else { path };
    FieldError::new(field, message)
}

/// Collects field errors so one response lists every bad field, not just the first.
#[derive(Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Keeps `Ok` values; records `Err` messages against `field`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.0.push(FieldError::new(field, message));
                None
            }
        }
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends another collection's errors.
    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }

    /// `Err(422)` if anything was recorded.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.0))
        }
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, Error> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("send Authorization: Bearer <key>".into()))?
        .to_str()
        .map_err(|_| Error::Unauthorized("the Authorization header is not readable".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| Error::Unauthorized("expected Authorization: Bearer <key>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::Unauthorized(
            "expected Authorization: Bearer <key>".into(),
        ));
    }
    Ok(token.trim())
}

/// The tenant whose API key authenticated this request, holding one of its request slots in
/// this process (`inflight`) for as long as the handler keeps it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    _slot: Option<std::sync::Arc<super::inflight::Slot>>,
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer_token(parts)?;
        let hash = ApiKeyHash::of(token);
        let owner = match state.lookups.key(hash.as_bytes()) {
            Some(owner) => owner,
            None => {
                // Uncached: throttled per client address, and only well-formed keys are looked up
                // (`auth_throttle` says why).
                let address = client_address(parts, state);
                throttled(state, address, Some(hash.as_bytes()))?;
                if !ApiKey::is_well_formed(token) {
                    state.auth_failures.failed(address);
                    return Err(Error::Unauthorized("the API key is not valid".into()));
                }
                let _lookup = state
                    .key_lookups
                    .acquire()
                    .await
                    .expect("the key lookup semaphore is never closed");
                let generation = state.lookups.generation();
                let Some(row) = sqlx::query!(
                    r#"SELECT t.id, t.slug, t.active
                       FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                       WHERE k.key_hash = $1 AND k.revoked_at IS NULL"#,
                    hash.as_bytes()
                )
                .fetch_optional(&state.db)
                .await?
                else {
                    state.auth_failures.failed(address);
                    return Err(Error::Unauthorized("the API key is not valid".into()));
                };
                state.auth_failures.vouch(hash.as_bytes());
                let owner = KeyOwner {
                    tenant_id: row.id,
                    slug: row.slug,
                    active: row.active,
                };
                state
                    .lookups
                    .remember_key(generation, hash.as_bytes().to_vec(), owner.clone());
                owner
            }
        };
        if !owner.active {
            return Err(Error::Forbidden("this tenant is deactivated".into()));
        }
        if let Some(wait) = state
            .settings
            .tenant_rate
            .check(
                &state.redis,
                &state.settings.redis_namespace,
                "api",
                owner.tenant_id,
            )
            .await
        {
            return Err(Error::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        tracing::Span::current().record("tenant_id", tracing::field::display(owner.tenant_id));
        let slot = state.requests.start(owner.tenant_id).await?;
        Ok(Tenant {
            id: owner.tenant_id,
            slug: owner.slug,
            _slot: slot.map(std::sync::Arc::new),
        })
    }
}

/// Who is making an admin request, allowed by their role to make it (see `operators`).
#[derive(Debug, Clone)]
pub struct Admin(pub Actor);

/// SHA-256 of the admin token; comparing digests in constant time hides both the token's
/// content and its length from timing.
pub fn admin_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` is the admin token (never, when the token is turned off).
pub fn is_admin_token(state: &AppState, token: &str) -> bool {
    state
        .admin_token_digest
        .is_some_and(|digest| bool::from(admin_digest(token).ct_eq(&digest)))
}

/// The admin token, or a dashboard session cookie (whose unsafe requests must carry the
/// session's CSRF token in `x-csrf-token`); then the actor's role must allow the request.
impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let address = client_address(parts, state);
        let signed = match parts.headers.get(header::AUTHORIZATION) {
            None => super::session::from_headers(state, &parts.headers, address).await?,
            Some(_) => None,
        };
        let actor = match signed {
            Some((session, actor)) => {
                if !parts.method.is_safe() {
                    let presented = parts
                        .headers
                        .get("x-csrf-token")
                        .and_then(|v| v.to_str().ok());
                    session.check_csrf(presented)?;
                }
                actor
            }
            None => {
                let token = bearer_token(parts)?;
                if !is_admin_token(state, token) {
                    // The right token always passes: only failures are throttled (the comparison
                    // costs nothing shared; the throttle keeps a guessing client from trying on).
                    throttled(state, address, None)?;
                    state.auth_failures.failed(address);
                    return Err(Error::Unauthorized("the admin token is not valid".into()));
                }
                Actor::token(address)
            }
        };
        actor.allow(&parts.method, parts.uri.path())?;
        Ok(Admin(actor))
    }
}

/// The client's address: the last entry of `BACKROOM_CLIENT_ADDRESS_HEADER` behind a proxy,
/// else the peer of the connection (`None` when neither is known, e.g. a router called directly).
pub fn client_address(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    match &state.settings.client_address_header {
        Some(name) => parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|last| last.trim().parse().ok()),
        None => parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip()),
    }
}

/// The client's address as an extractor (see [`client_address`]).
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts, state)))
    }
}

/// 429 while `address` is over its budget of failed authentications (unless `key_hash` is of a
/// key that authenticated lately).
pub fn throttled(
    state: &AppState,
    address: Option<IpAddr>,
    key_hash: Option<&[u8]>,
) -> Result<(), Error> {
    match state.auth_failures.wait(address, key_hash) {
        Some(wait) => Err(Error::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        }),
        None => Ok(()),
    }
}

/// Query-string parameters; a malformed query string is a 400 problem.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| Error::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

/// The queue a path names; an unknown one is 404, naming the queues there are.
pub fn queue_named(raw: &str) -> Result<crate::queue::QueueName, Error> {
    crate::jobs::Queue::parse(raw)
        .map(crate::jobs::Queue::id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no queue '{raw}'; queues are {}",
                crate::jobs::Queue::names()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        lines: Vec<Line>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: i64,
    }

    fn field_of(json: &str) -> (u16, Vec<String>) {
        match parse_json::<Body>(json.as_bytes()) {
            Ok(_) => (200, vec![]),
            Err(Error::Validation(errs)) => (422, errs.into_iter().map(|e| e.field).collect()),
            Err(e) => (e.status().as_u16(), vec![]),
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let cases = [
            (r#"{"name":"a","lines":[]}"#, 200, vec![], "valid"),
            (
                r#"{"name":"a","lines":[],"x":1}"#,
                422,
                vec!["x"],
                "unknown top-level field",
            ),
            (r#"{"lines":[]}"#, 422, vec!["name"], "missing field"),
            (r#"{"name":5,"lines":[]}"#, 422, vec!["name"], "wrong type"),
            (
                r#"{"name":"a","lines":[{"quantity":1},{"quantity":"x"}]}"#,
                422,
                vec!["lines[1].quantity"],
                "nested wrong type",
            ),
            (
                r#"{"name":"a","lines":[{"quantity":1,"oops":2}]}"#,
                422,
                vec!["lines[0].oops"],
                "nested unknown field",
            ),
            (r#"{"name":"a","#, 400, vec![], "truncated JSON"),
            ("[1,2]", 422, vec!["body"], "array instead of object"),
        ];
        for (json, status, fields, why) in cases {
            let (got_status, got_fields) = field_of(json);
            assert_eq!(got_status, status, "{why}");
            assert_eq!(got_fields, fields, "{why}");
        }
    }
}
