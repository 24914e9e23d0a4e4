//! The SMTP servers backroom mails to in tests and benches. Two, for two purposes:
//! - [`SmtpServer`]: a real SMTP server (Python's aiosmtpd, `scripts/smtp-sink.py`) that stores
//!   each message, for tests that read what was sent, and that can be frozen or stopped;
//! - [`SmtpSink`]: a minimal in-process sink that only counts and times conversations, for
//!   benches whose throughput a Python server would cap.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use uuid::Uuid;

/// A real SMTP server (aiosmtpd) on a port; stores what it receives. Killed on drop.
pub struct SmtpServer {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Option<Child>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::start_on(super::free_port()).await
    }

    /// Starts on a chosen port (to bring a server "back" where workers expect it).
    pub async fn start_on(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("backroom-smtp-{}", Uuid::new_v4().simple()));
        let mut server = SmtpServer {
            port,
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smtp-sink.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd is installed (scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        super::poll(
            Duration::from_secs(15),
            Duration::from_millis(20),
            || async move { std::net::TcpStream::connect(("127.0.0.1", port)).ok() },
        )
        .await
        .expect("the SMTP server listens within 15 s");
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SmtpServer {
    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but nothing is
    /// answered, as when a mail relay hangs mid-conversation.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            assert!(signal("STOP", child.id()), "SIGSTOP the SMTP server");
        }
    }

    /// Lets a frozen server go on where it stopped (SIGCONT).
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            assert!(signal("CONT", child.id()), "SIGCONT the SMTP server");
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`, …) to process `pid`; false if it is gone.
fn signal(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the Rust sink saw.
#[derive(Default)]
pub struct SinkStats {
    pub received: AtomicU64,
    /// SMTP connections accepted.
    pub connections: AtomicU64,
    /// Per message, µs from the first line of the body to the lone "." that ends it. The
    /// client writes the body and then the terminator "\r\n.\r\n" back to back: anything
    /// beyond a fraction of a ms is the client's TCP stack holding the 5-byte terminator back
    /// (Nagle) until the body is acknowledged. (The body's last line is not a fair start: it
    /// may lack its CRLF, which comes with the terminator.)
    pub terminator_wait_us: std::sync::Mutex<Vec<u64>>,
    /// Per message, µs from its first command (NOOP, RSET, EHLO or MAIL) to the final 250.
    pub conversation_us: std::sync::Mutex<Vec<u64>>,
    /// Per message after the first on a connection, µs from the previous message's final 250
    /// to this message's first command: time the client spent elsewhere.
    pub between_us: std::sync::Mutex<Vec<u64>>,
    /// How often each `Message-ID` arrived: more than once is an email sent twice.
    pub message_ids: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// When each repeat arrived, with its `Message-ID`.
    pub repeated_at: std::sync::Mutex<Vec<(Instant, String)>>,
}

impl SinkStats {
    /// Messages whose `Message-ID` arrived more than once, counting each repeat.
    pub fn repeats(&self) -> u64 {
        let ids = self.message_ids.lock().unwrap();
        ids.values().map(|&n| u64::from(n.saturating_sub(1))).sum()
    }
}

/// A minimal SMTP sink (just enough of RFC 5321 for lettre: 220 greeting, EHLO/HELO 250,
/// MAIL/RCPT/NOOP/RSET 250, DATA 354 then up to the lone "." line, 250, QUIT 221) on a thread
/// and single-threaded runtime of its own, timing each conversation; stops on drop.
pub struct SmtpSink {
    pub port: u16,
    pub stats: Arc<SinkStats>,
    /// The sink thread's id, for its CPU time in `/proc/self/task/<tid>`.
    pub tid: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmtpSink {
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(SinkStats::default());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("smtp-sink".into())
            .spawn(move || {
                // "/proc/thread-self" links to "<pid>/task/<tid>".
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                let _ = tid_tx.send(tid);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the sink");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    shared.connections.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(smtp_session(stream, shared.clone()));
                                }
                            }
                            _ = &mut stopped => return,
                        }
                    }
                });
            })?;
        let tid = tid_rx.recv()?;
        Ok(SmtpSink {
            port,
            stats,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl SmtpSink {
    /// `SMTP_URL` for backroom.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Messages accepted so far.
    pub fn received(&self) -> u64 {
        self.stats.received.load(Ordering::Relaxed)
    }

    /// SMTP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One SMTP conversation: just enough of RFC 5321 for lettre.
async fn smtp_session(stream: tokio::net::TcpStream, stats: Arc<SinkStats>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    // When the current message's first command came, and when the previous message ended.
    let mut first_command: Option<Instant> = None;
    let mut previous_end: Option<Instant> = None;
    let outcome: std::io::Result<()> = async {
        write.write_all(b"220 bench-sink ESMTP\r\n").await?;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            if first_command.is_none() {
                let now = Instant::now();
                first_command = Some(now);
                if let Some(end) = previous_end {
                    let gap = (now - end).as_micros() as u64;
                    stats.between_us.lock().unwrap().push(gap);
                }
            }
            let verb = line
                .get(..4)
                .map(|v| v.to_ascii_uppercase())
                .unwrap_or_default();
            match verb.as_slice() {
                b"EHLO" => {
                    write
                        .write_all(b"250-bench-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                        .await?
                }
                b"HELO" => write.write_all(b"250 bench-sink\r\n").await?,
                b"DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let mut first_line = None;
                    let mut message_id = None;
                    loop {
                        line.clear();
                        if reader.read_until(b'\n', &mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == b".\r\n" || line == b".\n" {
                            break;
                        }
                        first_line.get_or_insert_with(Instant::now);
                        if message_id.is_none()
                            && line.len() > 11
                            && line[..11].eq_ignore_ascii_case(b"message-id:")
                        {
                            message_id =
                                Some(String::from_utf8_lossy(&line[11..]).trim().to_string());
                        }
                    }
                    if let Some(id) = message_id {
                        let mut ids = stats.message_ids.lock().unwrap();
                        let seen = ids.entry(id.clone()).or_default();
                        *seen += 1;
                        if *seen > 1 {
                            stats.repeated_at.lock().unwrap().push((Instant::now(), id));
                        }
                    }
                    let waited = first_line.map_or(0, |t| t.elapsed().as_micros() as u64);
                    stats.terminator_wait_us.lock().unwrap().push(waited);
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    write.write_all(b"250 2.0.0 OK queued\r\n").await?;
                    let end = Instant::now();
                    if let Some(start) = first_command.take() {
                        let took = (end - start).as_micros() as u64;
                        stats.conversation_us.lock().unwrap().push(took);
                    }
                    previous_end = Some(end);
                }
                b"QUIT" => {
                    write.write_all(b"221 2.0.0 bye\r\n").await?;
                    return Ok(());
                }
                // MAIL, RCPT, NOOP, RSET and anything else.
                _ => write.write_all(b"250 2.0.0 OK\r\n").await?,
            }
        }
    }
    .await;
    let _ = outcome;
}
