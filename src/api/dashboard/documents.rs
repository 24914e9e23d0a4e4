//! Dashboard pages of what the platform sent: emails, and invoice PDFs.

use crate::api::AppState;
use crate::api::error::{Error, Result};
use crate::domain::format_amount;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{Signed, page, time};

pub(super) async fn emails_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
) -> Result<Response> {
    let emails: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT e.created_at, t.slug, e.kind, e.recipient, e.subject, e.status, e.smtp_reply, e.last_error
           FROM emails e JOIN tenants t ON t.id = e.tenant_id ORDER BY e.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            created_at => time(r.created_at), tenant => r.slug, kind => r.kind,
            recipient => r.recipient, subject => r.subject, status => r.status,
            reply => r.smtp_reply.or(r.last_error).unwrap_or_default(),
        }
    })
    .collect();
    let invoices: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT i.id, i.number, t.slug, i.status, i.failure_reason, i.total, i.currency, i.issued_on
           FROM invoices i JOIN tenants t ON t.id = i.tenant_id ORDER BY i.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            id => r.id.to_string(), number => r.number, tenant => r.slug, status => r.status,
            reason => r.failure_reason, total => format_amount(r.total, &r.currency),
            currency => r.currency, issued_on => r.issued_on.map(|d| d.to_string()),
        }
    })
    .collect();
    page(
        "emails.html",
        minijinja::context! { title => "Emails & invoices", nav => "emails", csrf => s.csrf, emails, invoices },
    )
}

pub(super) async fn invoice_pdf(
    State(state): State<AppState>,
    Signed(..): Signed,
    Path(id): Path<String>,
) -> Result<Response> {
    let invoice_id =
        Uuid::parse_str(&id).map_err(|_| Error::NotFound(format!("no invoice '{id}'")))?;
    let row = sqlx::query!(
        "SELECT number, pdf FROM invoices WHERE id = $1 AND status = 'ready'",
        invoice_id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no ready invoice '{id}'")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "inline; filename=\"{}.pdf\"",
                    row.number.unwrap_or_default()
                ),
            ),
        ],
        row.pdf.unwrap_or_default(),
    )
        .into_response())
}
