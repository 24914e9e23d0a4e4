//! The SMTP mailer (a pooled lettre transport) and the email templates.

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use std::time::Duration;
use uuid::Uuid;

/// Sends mail over SMTP with a connection pool.
pub struct Mailer {
    pub(super) transport: AsyncSmtpTransport<Tokio1Executor>,
    pub(super) from: Mailbox,
    /// The domain of our Message-IDs.
    domain: String,
}

impl Mailer {
    /// `smtp://user:pass@host:port` (plain, or `?tls=required` for STARTTLS) or `smtps://…`.
    pub fn new(smtp_url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .context("SMTP_URL is not a usable SMTP URL")?
            .timeout(Some(Duration::from_secs(15)))
            .pool_config(
                PoolConfig::new()
                    .max_size(16)
                    .idle_timeout(Duration::from_secs(60)),
            )
            .build();
        let from: Mailbox = from
            .parse()
            .context("BACKROOM_MAIL_FROM is not a mailbox")?;
        let domain = from.email.domain().to_string();
        Ok(Mailer {
            transport,
            from,
            domain,
        })
    }

    pub fn message_id(&self, email_id: Uuid) -> String {
        format!("<{email_id}@{}>", self.domain)
    }
}

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        // `.html.j2` templates escape every value; `.txt.j2` ones are plain text.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html.j2") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        for (name, source) in [
            (
                "invoice.txt.j2",
                include_str!("../../../templates/emails/invoice.txt.j2"),
            ),
            (
                "invoice.html.j2",
                include_str!("../../../templates/emails/invoice.html.j2"),
            ),
            (
                "low_stock.txt.j2",
                include_str!("../../../templates/emails/low_stock.txt.j2"),
            ),
            (
                "low_stock.html.j2",
                include_str!("../../../templates/emails/low_stock.html.j2"),
            ),
            (
                "reorder_digest.txt.j2",
                include_str!("../../../templates/emails/reorder_digest.txt.j2"),
            ),
            (
                "reorder_digest.html.j2",
                include_str!("../../../templates/emails/reorder_digest.html.j2"),
            ),
            (
                "webhook_disabled.txt.j2",
                include_str!("../../../templates/emails/webhook_disabled.txt.j2"),
            ),
            (
                "webhook_disabled.html.j2",
                include_str!("../../../templates/emails/webhook_disabled.html.j2"),
            ),
        ] {
            env.add_template(name, source).expect("templates parse");
        }
        env
    })
}

/// Renders `<name>.txt.j2` and `<name>.html.j2` with the same context.
pub fn render(name: &str, context: minijinja::Value) -> anyhow::Result<(String, String)> {
    let env = templates();
    let text = env
        .get_template(&format!("{name}.txt.j2"))?
        .render(&context)?;
    let html = env
        .get_template(&format!("{name}.html.j2"))?
        .render(&context)?;
    Ok((text, html))
}
