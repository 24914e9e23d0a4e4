//! Dashboard sessions: signing in (as an admin user, or with the admin token) gives an HttpOnly,
//! SameSite=Strict cookie naming a session kept in Redis (so any `serve` process can take over,
//! and signing out ends it everywhere). Each session carries a CSRF token that every
//! state-changing request made with the cookie must echo (a form field, or the `x-csrf-token`
//! header for scripts).
//!
//! A session is bound to the credential it was made with and is checked against it on every
//! request: a user's session ends when the user is disabled or their password reset (their
//! credential version moves), a token session when the admin token changes or is turned off.

use super::AppState;
use super::error::{Error, Result};
use super::operators::{Actor, users};
use crate::config::CookieSecure;
use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const COOKIE_NAME: &str = "backroom_session";
const TTL_SECS: u64 = 12 * 3600;

/// A signed-in admin session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub credential: Credential,
}

/// What a session was made with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// The admin token, by a fingerprint of it (not the token).
    Token { fingerprint: String },
    /// An admin user, at the credential version they signed in with.
    User { id: Uuid, version: i32 },
}

/// What Redis keeps per session.
#[derive(Serialize, Deserialize)]
struct Stored {
    csrf: String,
    credential: Credential,
}

/// Names the current admin token without revealing it; `None` when the token is turned off.
pub fn token_fingerprint(state: &AppState) -> Option<String> {
    let digest = state.admin_token_digest?;
    let mut h = Sha256::new();
    h.update(b"backroom-session:");
    h.update(digest);
    Some(hex::encode(&h.finalize()[..16]))
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
pub async fn create(
    state: &AppState,
    credential: Credential,
    headers: &HeaderMap,
) -> Result<(Session, String)> {
    let session = Session {
        id: random_token(),
        csrf: random_token(),
        credential,
    };
    let stored = serde_json::to_string(&Stored {
        csrf: session.csrf.clone(),
        credential: session.credential.clone(),
    })
    .expect("a session serializes");
    let mut conn = state.redis.conn().await?;
    let _: () = redis::cmd("SET")
        .arg(key(state, &session.id))
        .arg(stored)
        .arg("EX")
        .arg(TTL_SECS)
        .query_async(&mut conn)
        .await?;
    let cookie = format!(
        "{COOKIE_NAME}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={TTL_SECS}{}",
        session.id,
        if is_secure(state.settings.cookie_secure, headers) {
            "; Secure"
        } else {
            ""
        }
    );
    Ok((session, cookie))
}

/// The session the request's cookie names and who it stands for, if it is live and its
/// credential still holds (a session whose credential no longer holds is ended).
pub async fn from_headers(
    state: &AppState,
    headers: &HeaderMap,
    address: Option<IpAddr>,
) -> Result<Option<(Session, Actor)>> {
    let Some(id) = cookie_value(headers) else {
        return Ok(None);
    };
    let mut conn = state.redis.conn().await?;
    let raw: Option<String> = redis::cmd("GET")
        .arg(key(state, &id))
        .query_async(&mut conn)
        .await?;
    let Some(stored) = raw.and_then(|r| serde_json::from_str::<Stored>(&r).ok()) else {
        return Ok(None);
    };
    let actor = match &stored.credential {
        Credential::Token { fingerprint } => token_fingerprint(state)
            .filter(|current| bool::from(current.as_bytes().ct_eq(fingerprint.as_bytes())))
            .map(|_| Actor::token(address)),
        Credential::User { id, version } => {
            users::session_actor(&state.db, *id, *version, address).await?
        }
    };
    let session = Session {
        id,
        csrf: stored.csrf,
        credential: stored.credential,
    };
    match actor {
        Some(actor) => Ok(Some((session, actor))),
        None => {
            destroy(state, &session).await?;
            Ok(None)
        }
    }
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

/// Whether cookies get the Secure flag (and pages HSTS): as `BACKROOM_COOKIE_SECURE` says, or, on
/// `auto`, when the request reached us over TLS through a proxy (`X-Forwarded-Proto: https`).
pub fn is_secure(setting: CookieSecure, headers: &HeaderMap) -> bool {
    match setting {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https")),
    }
}

/// Appends a `Set-Cookie` header.
pub fn set_cookie(headers: &mut HeaderMap, value: &str) {
    if let Ok(v) = value.parse() {
        headers.append(SET_COOKIE, v);
    }
}
