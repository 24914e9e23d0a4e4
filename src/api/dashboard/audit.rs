//! The audit log page: the same rows and filters as `GET /admin/v1/audit`.

use super::{Signed, invalid_text, link, page, time};
use crate::api::AppState;
use crate::api::error::{Error, Result};
use crate::api::operators::audit::{self, AuditFilter};
use axum::extract::{Query, State};
use axum::response::Response;

pub(super) async fn audit_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Query(filter): Query<AuditFilter>,
) -> Result<Response> {
    let (entries, next_cursor, error) = match audit::page_of(&state, &actor, &filter).await {
        Ok(p) => (p.items, p.next_cursor, None),
        Err(Error::Validation(errors)) => (vec![], None, Some(invalid_text(&errors))),
        Err(e) => return Err(e),
    };
    let entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            minijinja::context! {
                at => time(e.at), actor => e.actor, action => e.action, target => e.target,
                tenant => e.tenant, before => e.before.map(|v| v.to_string()),
                after => e.after.map(|v| v.to_string()), request_id => e.request_id,
                client_address => e.client_address,
            }
        })
        .collect();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let older = next_cursor.map(|cursor| {
        link(
            "/admin/audit",
            &[
                ("actor", &text(&filter.actor)),
                ("action", &text(&filter.action)),
                ("tenant", &text(&filter.tenant)),
                ("since", &text(&filter.since)),
                ("cursor", &cursor),
            ],
        )
    });
    page(
        "audit.html",
        minijinja::context! {
            title => "Audit log", nav => "audit", limited => actor.tenants.is_some(), csrf => s.csrf.clone(), entries, older,
            error, actor => text(&filter.actor), action => text(&filter.action),
            tenant => text(&filter.tenant), since => text(&filter.since),
        },
    )
}
