//! Who may change what. Every admin request has an [`Actor`]: a named admin user signed in to
//! the dashboard (`users`), the bootstrap admin token, or the `backroom admin` CLI. Its [`Role`]
//! is checked in one place, [`required_role`], by the two extractors every admin handler takes
//! (`extract::Admin` for the JSON admin API, `dashboard::Signed` for pages), so a handler cannot
//! forget it. Every change an actor makes writes one row of the audit log (`audit`).

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

/// Who is making a request or a change.
#[derive(Debug, Clone)]
pub struct Actor {
    /// As the audit log shows it: `user:<email>`, `token` or `cli:<os user>`.
    pub name: String,
    pub user_id: Option<Uuid>,
    pub role: Role,
    pub address: Option<IpAddr>,
}

impl Actor {
    /// The bootstrap admin token: an owner.
    pub fn token(address: Option<IpAddr>) -> Actor {
        Actor {
            name: "token".into(),
            user_id: None,
            role: Role::Owner,
            address,
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
        }
    }

    /// 403 unless this actor's role may make this request.
    pub fn allow(&self, method: &Method, path: &str) -> Result<(), Error> {
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
}
