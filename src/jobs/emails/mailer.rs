//! The SMTP mailer and the email templates.
//!
//! The mailer keeps its own small pool of lettre connections rather than lettre's pooled
//! transport, because a send must be able to stop between `RCPT` and `DATA`: right before the
//! message goes out, the worker checks that it still owns the job (a worker that froze past its
//! lease has lost it to another, which sends the email itself). Every step has a deadline, so a
//! relay that stops answering fails the send instead of holding the job to its timeout.

use anyhow::Context;
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Connections open at once (and kept idle at most).
const CONNECTIONS: usize = 16;
/// An idle connection older than this is closed rather than reused.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// The deadline of each step: connecting (with TLS and login), each command, the message.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends mail over SMTP, reusing connections.
pub struct Mailer {
    server: Server,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    slots: Semaphore,
    pub(super) from: Mailbox,
    /// The domain of our Message-IDs.
    domain: String,
}

/// Where and how to connect, from `SMTP_URL`.
struct Server {
    host: String,
    port: u16,
    tls: Tls,
    credentials: Option<Credentials>,
    hello: ClientId,
}

enum Tls {
    None,
    /// `smtp://…?tls=required`: STARTTLS or fail.
    Required(TlsParameters),
    /// `smtp://…?tls=opportunistic`: STARTTLS where the server offers it.
    Opportunistic(TlsParameters),
    /// `smtps://…`: TLS from the first byte.
    Wrapper(TlsParameters),
}

/// How a send ended without an error.
#[derive(Debug)]
pub enum Sent {
    /// The server accepted the message: its reply (`250 …`).
    Accepted(String),
    /// The job was lost to another worker before `DATA`: nothing was sent.
    NotOwned,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("the SMTP server did not answer {0} within {STEP_TIMEOUT:?}")]
    TimedOut(&'static str),
}

impl SendError {
    /// A 5xx reply: sending again will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Smtp(e) if e.is_permanent())
    }

    /// The server's reply code, when the failure was a reply.
    pub fn status(&self) -> Option<String> {
        match self {
            SendError::Smtp(e) => e.status().map(|code| code.to_string()),
            SendError::TimedOut(_) => None,
        }
    }

    /// Not a reply of the server: the connection broke (or never was).
    fn is_connection(&self) -> bool {
        match self {
            SendError::Smtp(e) => e.status().is_none(),
            SendError::TimedOut(_) => true,
        }
    }
}

/// After a step's deadline, how long the step may still finish with what has already arrived.
const STEP_GRACE: Duration = Duration::from_millis(200);

/// Runs one step of the conversation within [`STEP_TIMEOUT`].
///
/// The deadline can pass while this process is stopped (SIGSTOP, a paused VM) with the server's
/// reply already waiting in the socket; on waking, the timer fires before the reactor has seen
/// the reply. A short grace lets the step read it, so a message the server accepted is not
/// taken for a failed send (and sent again by the next delivery).
async fn step<T>(
    what: &'static str,
    work: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, SendError> {
    let mut work = std::pin::pin!(work);
    if let Ok(done) = tokio::time::timeout(STEP_TIMEOUT, &mut work).await {
        return Ok(done?);
    }
    match tokio::time::timeout(STEP_GRACE, &mut work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(SendError::TimedOut(what)),
    }
}

impl Mailer {
    /// `smtp://user:pass@host:port` (plain, or `?tls=required` / `?tls=opportunistic` for
    /// STARTTLS) or `smtps://…`; a path names the client in `EHLO`.
    pub fn new(smtp_url: &str, from: &str) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .context("BACKROOM_MAIL_FROM is not a mailbox")?;
        let domain = from.email.domain().to_string();
        Ok(Mailer {
            server: Server::from_url(smtp_url).context("SMTP_URL is not a usable SMTP URL")?,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(CONNECTIONS),
            from,
            domain,
        })
    }

    pub fn message_id(&self, email_id: Uuid) -> String {
        format!("<{email_id}@{}>", self.domain)
    }

    /// Sends `message`. After the server has taken the envelope (`MAIL`, `RCPT`) and right before
    /// `DATA`, `still_owned` is asked whether this worker still owns the job; if not, the
    /// transaction is reset and nothing is sent ([`Sent::NotOwned`]).
    pub async fn send<F, Fut>(
        &self,
        message: &lettre::Message,
        still_owned: F,
    ) -> Result<Sent, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let envelope = message.envelope();
        let body = message.formatted();
        let (mut conn, reused) = match self.reuse() {
            Some(conn) => (conn, true),
            None => (self.server.connect().await?, false),
        };
        let mut started = envelope_steps(&mut conn, envelope, &body).await;
        // A kept connection the server has closed meanwhile: once more on a new one.
        if reused && started.as_ref().is_err_and(SendError::is_connection) {
            conn = self.server.connect().await?;
            started = envelope_steps(&mut conn, envelope, &body).await;
        }
        if let Err(e) = started {
            close(conn, &e).await;
            return Err(e);
        }
        if !still_owned().await {
            if step("RSET", conn.command(Rset)).await.is_ok() {
                self.keep(conn);
            }
            return Ok(Sent::NotOwned);
        }
        let sent = async {
            step("DATA", conn.command(Data)).await?;
            step("the message", conn.message(&body)).await
        }
        .await;
        match sent {
            Ok(response) => {
                self.keep(conn);
                Ok(Sent::Accepted(reply_text(&response)))
            }
            Err(e) => {
                close(conn, &e).await;
                Err(e)
            }
        }
    }

    /// The newest idle connection still young enough to use.
    fn reuse(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap();
        idle.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        idle.pop().map(|(conn, _)| conn)
    }

    fn keep(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < CONNECTIONS {
            idle.push((conn, Instant::now()));
        }
    }
}

/// `MAIL FROM` and one `RCPT TO` per recipient, with the options the message needs.
async fn envelope_steps(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    body: &[u8],
) -> Result<(), SendError> {
    let mut options = vec![];
    let addresses = envelope.from().into_iter().chain(envelope.to());
    if addresses.map(|a| a.as_ref()).any(|a: &str| !a.is_ascii()) {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    step(
        "MAIL",
        conn.command(Mail::new(envelope.from().cloned(), options)),
    )
    .await?;
    for to in envelope.to() {
        step("RCPT", conn.command(Rcpt::new(to.clone(), vec![]))).await?;
    }
    Ok(())
}

/// Ends a connection after a failure: politely when the server still answers, else just drops it.
async fn close(mut conn: AsyncSmtpConnection, failure: &SendError) {
    if !failure.is_connection() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.abort()).await;
    }
}

fn reply_text(response: &Response) -> String {
    format!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    )
}

impl Server {
    fn from_url(smtp_url: &str) -> anyhow::Result<Server> {
        let url = url::Url::parse(smtp_url)?;
        let host = url.host_str().context("no host")?.to_string();
        let tls_mode = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || TlsParameters::new(host.clone());
        let (tls, default_port) = match (url.scheme(), tls_mode.as_deref()) {
            ("smtp", None) => (Tls::None, 25),
            ("smtp", Some("required")) => (Tls::Required(params()?), 587),
            ("smtp", Some("opportunistic")) => (Tls::Opportunistic(params()?), 587),
            ("smtps", _) => (Tls::Wrapper(params()?), 465),
            (scheme, tls) => anyhow::bail!("scheme '{scheme}' with tls={tls:?} is not supported"),
        };
        let decode = |s: &str| -> anyhow::Result<String> {
            Ok(percent_encoding::percent_decode_str(s)
                .decode_utf8()?
                .into_owned())
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_string()),
        };
        Ok(Server {
            port: url.port().unwrap_or(default_port),
            host,
            tls,
            credentials,
            hello,
        })
    }

    /// A new connection: greeted, encrypted as configured, logged in.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let wrapper = match &self.tls {
            Tls::Wrapper(params) => Some(params.clone()),
            _ => None,
        };
        step("the connection", async {
            let mut conn = AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(STEP_TIMEOUT),
                &self.hello,
                wrapper,
                None,
            )
            .await?;
            match &self.tls {
                Tls::Required(params) => conn.starttls(params.clone(), &self.hello).await?,
                Tls::Opportunistic(params) if conn.can_starttls() => {
                    conn.starttls(params.clone(), &self.hello).await?
                }
                _ => {}
            }
            if let Some(credentials) = &self.credentials {
                conn.auth(DEFAULT_MECHANISMS, credentials).await?;
            }
            Ok(conn)
        })
        .await
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
