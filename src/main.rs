use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use pregon::app::AppError;
use pregon::cli::commands;
use pregon::config::Config;
use pregon::process::{self, Roles};
use pregon::simulator::SimConfig;
use pregon::store;

/// jemalloc rather than the system allocator: with glibc's, about a fifth of the dispatcher's
/// CPU went to malloc and free (chunk consolidation) on the hot path. Measured in the README:
/// a quarter less CPU per message for a few MiB more peak RSS; mimalloc saved less and cost
/// 40 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start (a C string under the crate's symbol prefix). Freed
/// pages go back to the system after a second instead of ten: with the default, a 100,000-row
/// import left the API at 111–119 MiB of peak RSS against 70–74 with glibc; with this, 83.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "pregon",
    version,
    about = "WhatsApp Business (Cloud API) broadcast and notification dispatcher"
)]
struct Cli {
    /// TOML configuration file (settings below); environment variables override it.
    #[arg(long, global = true, env = "PREGON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// API and workers in one process (the default).
    Serve,
    /// Only the HTTP API.
    Api,
    /// Only the dispatch workers.
    Worker,
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Run the fake Cloud API used by the demo, the tests and the benchmark.
    Simulator(SimArgs),
    /// Start everything locally and send a campaign-sized burst of notifications.
    Demo(pregon::demo::DemoArgs),
    /// End-to-end load run: enqueue → RabbitMQ → worker → simulator → PostgreSQL.
    Bench(pregon::bench::BenchArgs),
    /// Fault injection: each scenario on services of its own (Redis, a RabbitMQ node, a database),
    /// the API, two workers and the simulator as processes, under load; prints what was lost,
    /// duplicated or over a limit.
    Chaos(pregon::chaos::ChaosArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(commands::ApikeyCommand),
    /// Manage the console's users (people; systems use API keys).
    #[command(subcommand)]
    User(commands::UserCommand),
    /// Erase a person's data everywhere (PostgreSQL and Redis), keeping only a hashed tombstone
    /// so an opt-out survives; prints what was removed.
    Erase {
        /// The person's number, in any spelling.
        phone: String,
    },
    /// Master keys and the secrets they seal at rest.
    #[command(subcommand)]
    Secrets(commands::SecretsCommand),
    /// Print the effective configuration (secrets redacted).
    Config,
    /// Print the API's contract (OpenAPI 3.1), as `/v1/openapi.json` serves it.
    Openapi,
    /// Ask this process's own listener for its health (a container's health check): exits 0
    /// when `path` answers 200.
    Probe {
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Campaigns: create, estimate, launch, pause, resume, cancel, watch, failures, retry.
    Campaign {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: commands::CampaignCommand,
    },
    /// Contacts: import a CSV, export all.
    Contacts {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: commands::ContactsCommand,
    },
    /// Consent: export the log, or rebuild Redis's copy from PostgreSQL.
    #[command(subcommand)]
    Consent(commands::ConsentCommand),
    /// Redis's copy of PostgreSQL's state: whether it is whole, or rebuild it now.
    #[command(subcommand)]
    State(commands::StateCommand),
    /// The template registry.
    Templates {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: commands::TemplatesCommand,
    },
    /// Dead-lettered jobs: list, show one, send one again.
    Dead {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: commands::DeadCommand,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Messages per second allowed per number unless configured otherwise.
    #[arg(long, default_value_t = 80)]
    mps: u32,
    /// Unique recipients per 24 h per number (unlimited when absent).
    #[arg(long)]
    tier: Option<u32>,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests answered with HTTP 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of accepted sends answered only after --late-ms (a slow Cloud API: the message was
    /// sent, the caller's request times out).
    #[arg(long, default_value_t = 0.0)]
    late_rate: f64,
    /// How long a late answer (or a timeout fault) is held, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    late_ms: u64,
    /// Refuse templates the simulator was not told about (132001).
    #[arg(long)]
    strict_templates: bool,
    /// Where to POST signed status webhooks.
    #[arg(long)]
    webhook_url: Option<String>,
    #[arg(long, default_value = "pregon-simulator-secret")]
    app_secret: String,
}

fn main() -> ExitCode {
    let command = Cli::command().after_long_help(Config::settings_help());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pregon: {e}");
            return ExitCode::from(2);
        }
    };
    let quiet = matches!(
        cli.command,
        Some(Command::Demo(_)) | Some(Command::Bench(_)) | Some(Command::Chaos(_))
    );
    init_tracing(
        &config,
        if quiet {
            "warn"
        } else {
            "info,sqlx=warn,lapin=warn"
        },
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pregon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pregon: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command, config: Config) -> Result<(), AppError> {
    match command {
        Command::Serve => {
            process::run(
                config,
                Roles {
                    api: true,
                    worker: true,
                },
            )
            .await
        }
        Command::Api => {
            process::run(
                config,
                Roles {
                    api: true,
                    worker: false,
                },
            )
            .await
        }
        Command::Worker => {
            process::run(
                config,
                Roles {
                    api: false,
                    worker: true,
                },
            )
            .await
        }
        Command::Migrate => {
            store::ensure_database(&config.database_url).await?;
            let pool = store::connect(&config.database_url, 2).await?;
            store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Simulator(args) => {
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;
            tracing::info!(address = %args.listen, "simulator listening");
            let sim = SimConfig {
                default_mps: args.mps,
                default_tier: args.tier,
                latency: std::time::Duration::from_millis(args.latency_ms),
                error_rate: args.error_rate,
                late_rate: args.late_rate,
                timeout_fault: std::time::Duration::from_millis(args.late_ms),
                strict_templates: args.strict_templates,
                webhook_url: args.webhook_url,
                app_secret: args.app_secret,
                ..SimConfig::default()
            };
            pregon::simulator::serve(listener, sim, pregon::app::termination_signal()).await?;
            Ok(())
        }
        Command::Demo(args) => pregon::demo::run(config, args).await,
        Command::Bench(args) => pregon::bench::run(config, args).await,
        Command::Chaos(args) => pregon::chaos::run(config, args).await,
        Command::Apikey(command) => commands::apikey(&config, command).await,
        Command::User(command) => commands::user(&config, command).await,
        Command::Secrets(command) => commands::secrets(&config, command).await,
        Command::Erase { phone } => commands::erase(config, &phone).await,
        Command::Config => {
            print!("{}", config.redacted());
            Ok(())
        }
        Command::Probe { path } => commands::probe(&config, &path).await,
        Command::Openapi => {
            println!("{:#}", pregon::api::openapi(&config));
            Ok(())
        }
        Command::Campaign { api, command } => commands::campaign(&api, command).await,
        Command::Contacts { api, command } => commands::contacts(&api, command).await,
        Command::Consent(command) => commands::consent(config, command).await,
        Command::State(command) => commands::state(config, command).await,
        Command::Templates { api, command } => commands::templates(&api, command).await,
        Command::Dead { api, command } => commands::dead(&api, command).await,
    }
}
