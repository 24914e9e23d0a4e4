//! Dashboard sessions: signing in with the admin token gives an HttpOnly, SameSite=Strict cookie
//! naming a session kept in Redis (so any `serve` process can take over, and signing out ends it
//! everywhere). Each session carries a CSRF token that every state-changing request made with
//! the cookie must echo (a form field, or the `x-csrf-token` header for scripts).

use super::AppState;
use super::error::{Error, Result};
use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use rand::RngCore;
use subtle::ConstantTimeEq;

pub const COOKIE_NAME: &str = "backroom_session";
const TTL_SECS: u64 = 12 * 3600;

/// A signed-in admin session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key(state: &AppState, id: &str) -> String {
    format!("{{{}:sessions}}:{id}", state.settings.redis_namespace)
}

/// The session id from the request's cookies, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Creates a session; returns it and the `Set-Cookie` value.
pub async fn create(state: &AppState, secure: bool) -> Result<(Session, String)> {
    let session = Session {
        id: random_token(),
        csrf: random_token(),
    };
    let mut conn = state.redis.conn().await?;
    let _: () = redis::cmd("SET")
        .arg(key(state, &session.id))
        .arg(&session.csrf)
        .arg("EX")
        .arg(TTL_SECS)
        .query_async(&mut conn)
        .await?;
    let cookie = format!(
        "{COOKIE_NAME}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={TTL_SECS}{}",
        session.id,
        if secure { "; Secure" } else { "" }
    );
    Ok((session, cookie))
}

/// The session the request's cookie names, if it is live.
pub async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>> {
    let Some(id) = cookie_value(headers) else {
        return Ok(None);
    };
    let mut conn = state.redis.conn().await?;
    let csrf: Option<String> = redis::cmd("GET")
        .arg(key(state, &id))
        .query_async(&mut conn)
        .await?;
    Ok(csrf.map(|csrf| Session { id, csrf }))
}

/// Ends a session; returns the `Set-Cookie` value that clears the cookie.
pub async fn destroy(state: &AppState, session: &Session) -> Result<String> {
    let mut conn = state.redis.conn().await?;
    let _: () = redis::cmd("DEL")
        .arg(key(state, &session.id))
        .query_async(&mut conn)
        .await?;
    Ok(format!(
        "{COOKIE_NAME}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

impl Session {
    /// Checks a presented CSRF token (constant time).
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<()> {
        let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "missing or wrong CSRF token; reload the page and try again".into(),
            ))
        }
    }
}

/// Whether the request reached us over TLS (directly or behind a proxy), for the Secure flag.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// Appends a `Set-Cookie` header.
pub fn set_cookie(headers: &mut HeaderMap, value: &str) {
    if let Ok(v) = value.parse() {
        headers.append(SET_COOKIE, v);
    }
}
