//! The `backroom` command: parses the command line, sets up logging, loads settings and runs the
//! chosen mode. Everything it runs lives in the library.

use backroom::config::{self, LogFormat, Settings};
use backroom::domain::{TenantName, TenantSlug};
use backroom::{api, db, startup, telemetry};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "backroom", version, about = "Job-queue worker platform for multi-tenant inventory and order businesses.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (BACKROOM_BIND, default 0.0.0.0:8080).
    Serve,
    /// Run job workers and the outbox relay until SIGTERM (graceful: running jobs finish within
    /// BACKROOM_SHUTDOWN_GRACE_SECS, the rest go back to the queue).
    Work {
        /// Comma-separated queues to work, e.g. `stock,emails` (default: every queue this build
        /// has workers for).
        #[arg(long)]
        queues: Option<String>,
        /// Jobs at once per queue (default depends on the queue).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Run the time-driven schedules (maintenance; nightly work) until SIGTERM. Several
    /// schedulers may run at once.
    Schedule,
    /// Apply pending database migrations and exit (only DATABASE_URL is needed).
    Migrate,
    /// Manage tenants from the shell.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Everything in one process for a laptop: migrate, API, workers and scheduler, plus a demo
    /// tenant whose API key is printed.
    Dev,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API key (shown once).
    Create {
        /// URL-safe handle, e.g. `acme-shop`.
        slug: String,
        /// Display name, e.g. "ACME Shop".
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Settings errors are one line naming the variable; others show their context chain.
            match e.downcast_ref::<config::SettingsError>() {
                Some(settings) => eprintln!("{settings}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn log_from_env() {
    let format = match std::env::var("BACKROOM_LOG_FORMAT").as_deref() {
        Ok("pretty") => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    let filter = std::env::var("BACKROOM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    telemetry::init(format, &filter);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let settings = Settings::from_env()?;
            telemetry::init(settings.log_format, &settings.log_filter);
            let app = startup::Application::build(settings).await?;
            app.run_until(startup::shutdown_signal()).await
        }
        Command::Work {
            queues,
            concurrency,
        } => {
            let settings = Settings::from_env()?;
            telemetry::init(settings.log_format, &settings.log_filter);
            let plan = backroom::workers::WorkPlan::parse(queues.as_deref(), concurrency)?;
            backroom::workers::run(&settings, plan, startup::shutdown_signal()).await
        }
        Command::Schedule => {
            let settings = Settings::from_env()?;
            telemetry::init(settings.log_format, &settings.log_filter);
            backroom::scheduler::run(&settings, startup::shutdown_signal()).await
        }
        Command::Migrate => {
            let url = config::database_url_from_env()?;
            log_from_env();
            let pool = db::pool(&url, 2)?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { slug, name },
        } => {
            let url = config::database_url_from_env()?;
            log_from_env();
            let slug = TenantSlug::parse(&slug).map_err(|m| anyhow::anyhow!("slug {m}"))?;
            let name = TenantName::parse(&name).map_err(|m| anyhow::anyhow!("name {m}"))?;
            let pool = db::pool(&url, 2)?;
            let created = api::tenants::create_tenant_with_key(&pool, &slug, &name)
                .await
                .map_err(
                    |e| match e.as_database_error().and_then(|d| d.constraint()) {
                        Some("tenants_slug_key") => {
                            anyhow::anyhow!("a tenant with slug '{}' exists", slug.as_str())
                        }
                        _ => anyhow::Error::new(e).context("while creating the tenant"),
                    },
                )?;
            println!("tenant '{}' created", slug.as_str());
            println!("API key (shown once): {}", created.api_key());
            Ok(())
        }
        Command::Dev => backroom::dev::run().await,
    }
}
