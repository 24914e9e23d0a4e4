//! Who may change what. Every admin request has an [`Actor`]: a named admin user signed in to
//! the dashboard (`users`), the bootstrap admin token, or the `backroom admin` CLI. Its [`Role`]
//! is checked in one place, [`required_role`], by the two extractors every admin handler takes
//! (`extract::Admin` for the JSON admin API, `dashboard::Signed` for pages), so a handler cannot
//! forget it. Every change an actor makes writes one row of the audit log (`audit`).
//!
//! A user may be limited to some tenants ([`Actor::tenants`]). The same check refuses such a
//! user every path outside [`SCOPED_PATHS`] (the queue-wide pages and actions, emails, forecasts,
//! webhooks, keys, users), so a new page is closed to them until it is made to show only their
//! tenants; the pages on the list narrow every list, count, search and chart through
//! [`Actor::sees`] and [`Actor::tenant_scope`].

pub mod audit;
pub mod repairs;
pub mod users;

use super::error::Error;
use axum::http::Method;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use utoipa::ToSchema;
use uuid::Uuid;

/// What an admin may do; each role may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees every page and every JSON admin read; changes nothing.
    Viewer,
    /// Also repairs queues: retries, discards, bulk actions, pausing a queue, webhook replays.
    Operator,
    /// Also manages tenants (settings, per-tenant limits and pauses), API keys and admin users.
    Owner,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Owner => "owner",
        }
    }

    pub fn parse(raw: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| "must be one of viewer, operator, owner".to_string())
    }
}

/// Paths whose changes need an owner: tenants and their rules, API keys, admin users.
const OWNER_PATHS: &[&str] = &[
    "/admin/v1/tenants",
    "/admin/v1/api-keys",
    "/admin/v1/users",
    "/admin/tenants/",
    "/admin/users",
];

/// The role a request needs: reading needs a viewer, signing out anyone; a change needs an
/// operator, or an owner under [`OWNER_PATHS`].
pub fn required_role(method: &Method, path: &str) -> Role {
    if method.is_safe() || path == "/admin/logout" {
        Role::Viewer
    } else if OWNER_PATHS.iter().any(|p| path.starts_with(p)) {
        Role::Owner
    } else {
        Role::Operator
    }
}

/// What a user limited to some tenants may open: each of these narrows what it shows to the
/// actor's tenants (`method`, path pattern; `*` is one path segment, a trailing `**` any rest).
const SCOPED_PATHS: &[(&str, &str)] = &[
    ("GET", "/admin"),
    ("GET", "/admin/login"),
    ("POST", "/admin/logout"),
    ("GET", "/admin/assets/**"),
    ("GET", "/admin/tenants"),
    ("GET", "/admin/tenants/*"),
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs/*"),
    ("POST", "/admin/jobs/*/*"),
    ("GET", "/admin/search"),
    ("GET", "/admin/history"),
    ("GET", "/admin/charts/jobs.svg"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/v1/tenants"),
    ("GET", "/admin/v1/tenants/*/queues"),
    ("GET", "/admin/v1/jobs/search"),
    ("POST", "/admin/v1/jobs/*/retry"),
    ("DELETE", "/admin/v1/jobs/*"),
    ("GET", "/admin/v1/stats"),
    ("GET", "/admin/v1/audit"),
];

/// Whether `path` is one of [`SCOPED_PATHS`] for `method` (HEAD as GET).
fn scoped_path(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    SCOPED_PATHS.iter().any(|(m, pattern)| {
        let (fixed, any_rest) = match pattern.strip_suffix("/**") {
            Some(fixed) => (fixed, true),
            None => (*pattern, false),
        };
        let wanted: Vec<&str> = fixed.split('/').collect();
        let length_fits = if any_rest {
            segments.len() > wanted.len()
        } else {
            segments.len() == wanted.len()
        };
        *m == method
            && length_fits
            && wanted
                .iter()
                .zip(&segments)
                .all(|(w, s)| w == s || (*w == "*" && !s.is_empty()))
    })
}

/// Who is making a request or a change.
#[derive(Debug, Clone)]
pub struct Actor {
    /// As the audit log shows it: `user:<email>`, `token` or `cli:<os user>`.
    pub name: String,
    pub user_id: Option<Uuid>,
    pub role: Role,
    pub address: Option<IpAddr>,
    /// The tenants this actor is limited to; `None`: every tenant.
    pub tenants: Option<Vec<Uuid>>,
}

impl Actor {
    /// The bootstrap admin token: an owner.
    pub fn token(address: Option<IpAddr>) -> Actor {
        Actor {
            name: "token".into(),
            user_id: None,
            role: Role::Owner,
            address,
            tenants: None,
        }
    }

    /// The `backroom` CLI, run by someone with the database's credentials: an owner.
    pub fn cli() -> Actor {
        let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Actor {
            name: format!("cli:{who}"),
            user_id: None,
            role: Role::Owner,
            address: None,
            tenants: None,
        }
    }

    /// Whether this actor may see work of `tenant` (`None`: work of no tenant, such as the
    /// nightly maintenance, which only unlimited actors see).
    pub fn sees(&self, tenant: Option<Uuid>) -> bool {
        match &self.tenants {
            None => true,
            Some(mine) => tenant.is_some_and(|t| mine.contains(&t)),
        }
    }

    /// The tenants this actor's reads are limited to, for a query's `= ANY(...)` (`None`: all).
    pub fn tenant_scope(&self) -> Option<&[Uuid]> {
        self.tenants.as_deref()
    }

    /// 403 unless this actor's role may make this request, and, for an actor limited to some
    /// tenants, unless the path is one that shows only their tenants.
    pub fn allow(&self, method: &Method, path: &str) -> Result<(), Error> {
        if self.tenants.is_some() && !scoped_path(method, path) {
            return Err(Error::Forbidden(
                "you are limited to some tenants, and this covers every tenant".into(),
            ));
        }
        let needed = required_role(method, path);
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "your role ({}) cannot do this; it needs the {} role",
                self.role.as_str(),
                needed.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_repairs_an_operator_and_tenants_keys_and_users_an_owner() {
        let cases = [
            (Method::GET, "/admin/v1/tenants", Role::Viewer),
            (Method::GET, "/admin", Role::Viewer),
            (Method::POST, "/admin/logout", Role::Viewer),
            (Method::POST, "/admin/v1/jobs/x/retry", Role::Operator),
            (Method::DELETE, "/admin/v1/jobs/x", Role::Operator),
            (Method::POST, "/admin/queues/stock/pause", Role::Operator),
            (
                Method::POST,
                "/admin/webhooks/deliveries/x/replay",
                Role::Operator,
            ),
            (Method::POST, "/admin/v1/tenants", Role::Owner),
            (Method::PATCH, "/admin/v1/tenants/acme", Role::Owner),
            (Method::DELETE, "/admin/v1/api-keys/x", Role::Owner),
            (Method::POST, "/admin/v1/users", Role::Owner),
            (Method::POST, "/admin/tenants/acme/rotate-key", Role::Owner),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
        let viewer = Actor {
            role: Role::Viewer,
            ..Actor::token(None)
        };
        assert!(viewer.allow(&Method::GET, "/admin/v1/queues").is_ok());
        assert!(
            viewer
                .allow(&Method::POST, "/admin/v1/queues/stock/pause")
                .is_err()
        );
    }

    #[test]
    fn a_user_limited_to_tenants_opens_only_the_paths_that_narrow_to_them() {
        let limited = Actor {
            role: Role::Operator,
            tenants: Some(vec![Uuid::nil()]),
            ..Actor::token(None)
        };
        for (method, path) in [
            (Method::GET, "/admin"),
            (Method::GET, "/admin/assets/app.css"),
            (Method::GET, "/admin/tenants/acme"),
            (Method::GET, "/admin/jobs/stock_1"),
            (Method::POST, "/admin/jobs/stock_1/retry"),
            (Method::GET, "/admin/v1/jobs/search"),
            (Method::GET, "/admin/v1/tenants/acme/queues"),
            (Method::DELETE, "/admin/v1/jobs/stock_1"),
        ] {
            assert!(limited.allow(&method, path).is_ok(), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/admin/queues/stock"),
            (Method::POST, "/admin/queues/stock/pause"),
            (Method::GET, "/admin/charts/throughput.svg"),
            (Method::GET, "/admin/emails"),
            (Method::GET, "/admin/webhooks"),
            (Method::GET, "/admin/v1/queues"),
            (Method::GET, "/admin/v1/queues/stock/jobs"),
            (Method::GET, "/admin/v1/tenants/acme/api-keys"),
            (Method::GET, "/admin/v1/users"),
            (Method::GET, "/admin/tenants/acme/extra"),
            (Method::POST, "/admin/v1/jobs/search"),
        ] {
            assert!(limited.allow(&method, path).is_err(), "{method} {path}");
        }
        assert!(limited.sees(Some(Uuid::nil())));
        assert!(!limited.sees(Some(Uuid::max())));
        assert!(!limited.sees(None));
        assert!(Actor::token(None).sees(None));
    }
}
