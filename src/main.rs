//! The `backroom` command: parses the command line, sets up logging, loads settings and runs the
//! chosen mode. Everything it runs lives in the library.

use backroom::config::{self, LogFormat, Settings};
use backroom::domain::{TenantName, TenantSlug};
use backroom::process::serve;
use backroom::{api, db, telemetry};
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
    /// Manage the dashboard's admin users (only DATABASE_URL is needed).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage tenants from the shell.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Everything in one process for a laptop: migrate, API, workers and scheduler, plus a demo
    /// tenant whose API key is printed.
    Dev,
    /// Demand forecasting for analysts.
    Forecast {
        #[command(subcommand)]
        command: ForecastCommand,
    },
}

#[derive(Subcommand)]
enum ForecastCommand {
    /// Score every model and the per-series choice on a series file: the last HORIZON points of
    /// each series are held out and models are chosen on the rest, as a nightly run would.
    Backtest {
        /// CSV with header `series_id,period,value` (rows in any order).
        #[arg(long)]
        csv: std::path::PathBuf,
        /// Season length (7 for daily data with a weekly pattern, 12 monthly, 52 weekly).
        #[arg(long)]
        season: usize,
        /// Points to forecast and hold out.
        #[arg(long)]
        horizon: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a tenant's forecast now, in this process, and print where its results are.
    Run {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// Days to forecast (default BACKROOM_FORECAST_HORIZON_DAYS).
        #[arg(long)]
        horizon: Option<i32>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin user; prints a generated password once, or reads one from stdin.
    Create {
        email: String,
        /// viewer (reads only), operator (repairs queues) or owner (also tenants, keys, users).
        #[arg(long)]
        role: String,
        /// Read the password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        /// Limit a viewer or operator to these tenants (slugs, comma-separated): every page,
        /// list, count, search and chart then shows only them.
        #[arg(long, value_delimiter = ',')]
        tenants: Option<Vec<String>>,
    },
    /// List admin users.
    List,
    /// Disable an admin user: no more sign-ins, and their sessions end.
    Disable { email: String },
    /// Set a new password (generated, or from stdin); the user's sessions end.
    ResetPassword {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
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
    let outcome = runtime.block_on(run(cli));
    drop(runtime);
    telemetry::shutdown();
    match outcome {
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

/// A progress bar on stderr.
fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]",
        )
        .expect("a valid template"),
    );
    bar.set_message(what);
    bar
}

fn log_from_env() {
    let format = match std::env::var("BACKROOM_LOG_FORMAT").as_deref() {
        Ok("pretty") => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    let filter = std::env::var("BACKROOM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    telemetry::init(format, &filter, None);
}

/// One arm per command, each a few lines handing over to `backroom::process` or a CLI task;
/// long only because there are many commands.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let settings = Settings::from_env()?;
            telemetry::init(
                settings.log_format,
                &settings.log_filter,
                settings.traces.as_ref(),
            );
            let app = serve::Application::build(settings).await?;
            app.run_until(serve::shutdown_signal()).await
        }
        Command::Work {
            queues,
            concurrency,
        } => {
            let settings = Settings::from_env()?;
            telemetry::init(
                settings.log_format,
                &settings.log_filter,
                settings.traces.as_ref(),
            );
            let plan = backroom::process::work::WorkPlan::parse(queues.as_deref(), concurrency)?;
            backroom::process::work::run(&settings, plan, serve::shutdown_signal()).await
        }
        Command::Schedule => {
            let settings = Settings::from_env()?;
            telemetry::init(
                settings.log_format,
                &settings.log_filter,
                settings.traces.as_ref(),
            );
            backroom::process::schedule::run(&settings, serve::shutdown_signal()).await
        }
        Command::Migrate => {
            let url = config::database_url_from_env()?;
            log_from_env();
            let pool = db::pool(&url, 2, backroom::db::Role::Tool)?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin { command } => {
            let url = config::database_url_from_env()?;
            log_from_env();
            let pool = db::pool(&url, 2, backroom::db::Role::Tool)?;
            admin_command(&pool, command).await
        }
        Command::Tenant {
            command: TenantCommand::Create { slug, name },
        } => {
            let url = config::database_url_from_env()?;
            log_from_env();
            let slug = TenantSlug::parse(&slug).map_err(|m| anyhow::anyhow!("slug {m}"))?;
            let name = TenantName::parse(&name).map_err(|m| anyhow::anyhow!("name {m}"))?;
            let pool = db::pool(&url, 2, backroom::db::Role::Tool)?;
            let created = api::tenants::create_tenant_with_key(
                &pool,
                &api::operators::Actor::cli(),
                &slug,
                &name,
            )
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
        Command::Dev => backroom::process::dev::run().await,
        Command::Forecast {
            command:
                ForecastCommand::Backtest {
                    csv,
                    season,
                    horizon,
                    json,
                },
        } => {
            anyhow::ensure!(season >= 1, "--season must be at least 1");
            anyhow::ensure!(horizon >= 1, "--horizon must be at least 1");
            let series = backroom::forecast::evaluate::read_series_file(&csv)?;
            let bar = progress_bar("backtesting series");
            let report = tokio::task::spawn_blocking(move || {
                backroom::forecast::evaluate::backtest(series, season, horizon, &|done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", backroom::forecast::evaluate::render_table(&report));
            }
            Ok(())
        }
        Command::Forecast {
            command: ForecastCommand::Run { tenant, horizon },
        } => {
            let settings = Settings::from_env()?;
            log_from_env();
            let pool = db::pool(&settings.database_url, 4, backroom::db::Role::Tool)?;
            let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", tenant)
                .fetch_optional(&pool)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no tenant '{tenant}'"))?;
            use backroom::jobs::forecasts;
            let horizon = horizon.unwrap_or(settings.forecast.horizon_days);
            anyhow::ensure!(
                (1..=365).contains(&horizon),
                "--horizon must be between 1 and 365"
            );
            let run_id = forecasts::create_run(
                &pool,
                tenant_id,
                forecasts::Trigger::Cli,
                horizon,
                None,
                settings.queue.clock.today(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the run: {e}"))?;
            let bar = progress_bar("forecasting SKUs");
            forecasts::run_in_process(
                &pool,
                &forecasts::RunOptions {
                    service_level: settings.forecast.service_level,
                    full_backtest_max_skus: settings.forecast.full_backtest_max_skus,
                    history_days: settings.forecast.history_days,
                },
                tenant_id,
                run_id,
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )
            .await?;
            bar.finish();
            println!("forecast run {run_id} finished; GET /v1/forecasts/runs/{run_id}");
            Ok(())
        }
    }
}

/// `backroom admin …`: each change is written to the audit log as `cli:<os user>`.
async fn admin_command(pool: &sqlx::PgPool, command: AdminCommand) -> anyhow::Result<()> {
    use api::operators::{Actor, Role, users};
    let fail = |e: api::error::Error| anyhow::anyhow!("{e}");
    let password = |from_stdin: bool| -> anyhow::Result<(String, bool)> {
        if !from_stdin {
            return Ok((users::generate_password(), true));
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        users::check_password(&line).map_err(|m| anyhow::anyhow!("the password {m}"))?;
        Ok((line, false))
    };
    let actor = Actor::cli();
    match command {
        AdminCommand::Create {
            email,
            role,
            password_stdin,
            tenants,
        } => {
            let email = users::parse_email(&email).map_err(|m| anyhow::anyhow!("email {m}"))?;
            let role = Role::parse(&role).map_err(|m| anyhow::anyhow!("--role {m}"))?;
            let (password, generated) = password(password_stdin)?;
            let mut tx = pool.begin().await?;
            let user = users::create(&mut tx, &actor, &email, role, &password, tenants.as_deref())
                .await
                .map_err(fail)?;
            tx.commit().await?;
            match user.tenants {
                Some(t) => println!(
                    "admin user {email} created ({}, limited to {})",
                    role.as_str(),
                    t.join(", ")
                ),
                None => println!("admin user {email} created ({})", role.as_str()),
            }
            if generated {
                println!("password (shown once): {password}");
            }
        }
        AdminCommand::List => {
            for u in users::list(pool).await? {
                let state = match u.disabled_at {
                    Some(at) => format!("disabled {}", at.format("%Y-%m-%d %H:%M")),
                    None => "enabled".into(),
                };
                let tenants = u.tenants.map_or("every tenant".into(), |t| t.join(","));
                println!(
                    "{:<40} {:<9} {state:<26} {tenants}",
                    u.email,
                    u.role.as_str()
                );
            }
        }
        AdminCommand::Disable { email } => {
            let mut tx = pool.begin().await?;
            users::disable(&mut tx, &actor, &email.to_lowercase())
                .await
                .map_err(fail)?;
            tx.commit().await?;
            println!("admin user {email} disabled");
        }
        AdminCommand::ResetPassword {
            email,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            let mut tx = pool.begin().await?;
            users::reset_password(&mut tx, &actor, &email.to_lowercase(), &password)
                .await
                .map_err(fail)?;
            tx.commit().await?;
            println!("password of {email} reset; their sessions have ended");
            if generated {
                println!("password (shown once): {password}");
            }
        }
    }
    Ok(())
}
