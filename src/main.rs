use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use pregon::api::auth::{self, Role};
use pregon::app::AppError;
use pregon::cli::{self, Client};
use pregon::config::Config;
use pregon::process::{self, Roles};
use pregon::simulator::SimConfig;
use pregon::store;
use reqwest::Method;

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
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Print the effective configuration (secrets redacted).
    Config,
    /// Campaigns: create, estimate, launch, pause, resume, cancel, watch, failures, retry.
    Campaign {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Contacts: import a CSV, export all.
    Contacts {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// Consent: export the log, or rebuild Redis's copy from PostgreSQL.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// The template registry.
    Templates {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[command(subcommand)]
        command: TemplatesCommand,
    },
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// Create a draft from a JSON definition (see the README).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    List,
    /// Progress: counts by state and reason, rate, ETA.
    Status {
        id: String,
    },
    /// Eligible recipients, exclusions by reason, cost, ETA.
    Estimate {
        id: String,
    },
    /// Shows the estimate; launches with --yes.
    Launch {
        id: String,
        #[arg(long)]
        yes: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// A live progress bar until the campaign completes.
    Watch {
        id: String,
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// The failure report as CSV.
    Failures {
        id: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Who planning left out, and why, as CSV.
    Exclusions {
        id: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Queue again the failures that can succeed.
    RetryFailed {
        id: String,
    },
    /// Replies attributed to the campaign.
    Replies {
        id: String,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ContactsCommand {
    /// Import a CSV: map its columns, optionally record consent with evidence.
    Import {
        file: PathBuf,
        /// Column with the phone number.
        #[arg(long)]
        phone: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        language: Option<String>,
        /// Tags for every row (comma-separated).
        #[arg(long)]
        tags: Option<String>,
        /// Column of ;-separated tags.
        #[arg(long)]
        tags_column: Option<String>,
        /// Columns to keep as attributes (comma-separated), or * for all others.
        #[arg(long)]
        attributes: Option<String>,
        /// Column saying yes/no to consent.
        #[arg(long)]
        consent_column: Option<String>,
        #[arg(long)]
        consent_purpose: Option<String>,
        /// web_form, checkout, whatsapp, import, api or keyword.
        #[arg(long)]
        consent_source: Option<String>,
        #[arg(long)]
        evidence_column: Option<String>,
        /// Evidence for rows without an evidence column value.
        #[arg(long)]
        evidence: Option<String>,
        /// Put the contacts in a new list with this name.
        #[arg(long)]
        list: Option<String>,
    },
    /// Every contact as CSV.
    Export {
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// One contact and its current consent.
    Show { phone: String },
    /// Create a contact or replace its profile from a JSON file (name, language, attributes,
    /// tags).
    Put {
        phone: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a contact (its consent log is kept).
    Delete { phone: String },
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// The whole consent log as CSV, for an audit.
    Export {
        #[command(flatten)]
        api: pregon::cli::ApiArgs,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Rewrite Redis's consent copy from PostgreSQL's log and report what differed (uses the
    /// database and Redis settings directly).
    RebuildCache,
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Fill the registry from the Cloud API's template list of every sender's business account.
    Sync,
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key and print its secret once.
    Create {
        #[arg(long, default_value = "admin")]
        name: String,
        /// admin, service, marketing or viewer
        #[arg(long, default_value = "admin")]
        role: String,
        /// Limit the key to these sender phone_number_ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        senders: Vec<String>,
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
        Some(Command::Demo(_)) | Some(Command::Bench(_))
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
        Command::Apikey(ApikeyCommand::Create {
            name,
            role,
            senders,
        }) => {
            let role = Role::parse(&role)
                .ok_or_else(|| AppError::Invalid(format!("role is {}", Role::NAMES)))?;
            store::ensure_database(&config.database_url).await?;
            let pool = store::connect(&config.database_url, 2).await?;
            store::migrate(&pool).await?;
            let senders = (!senders.is_empty()).then_some(senders);
            let (key, secret) = auth::create_key(&pool, &name, role, senders).await?;
            println!("{secret}");
            eprintln!(
                "created {} key \"{}\" ({}); the secret above is shown only once",
                key.role, key.name, key.id
            );
            Ok(())
        }
        Command::Config => {
            print!("{}", config.redacted());
            Ok(())
        }
        Command::Campaign { api, command } => campaign(&api, command).await,
        Command::Contacts { api, command } => contacts(&api, command).await,
        Command::Consent(ConsentCommand::Export { api, output }) => {
            Client::new(&api)?
                .download("/v1/consent.csv", output.as_deref())
                .await
        }
        Command::Consent(ConsentCommand::RebuildCache) => {
            let (services, background) = pregon::app::Services::connect(config, "cli").await?;
            let report = pregon::contacts::rebuild_consent_cache(&services).await?;
            background.writer.close().await;
            cli::print(&serde_json::to_value(&report).unwrap_or_default());
            Ok(())
        }
        Command::Templates {
            api,
            command: TemplatesCommand::Sync,
        } => {
            let report = Client::new(&api)?
                .json(Method::POST, "/v1/templates/sync", None)
                .await?;
            cli::print(&report);
            Ok(())
        }
    }
}

async fn campaign(api: &cli::ApiArgs, command: CampaignCommand) -> Result<(), AppError> {
    let client = Client::new(api)?;
    let path = |id: &str, rest: &str| format!("/v1/campaigns/{id}{rest}");
    let value = match command {
        CampaignCommand::Create { file } => {
            let body = std::fs::read(&file)?;
            client
                .json(Method::POST, "/v1/campaigns", Some(body))
                .await?
        }
        CampaignCommand::List => client.json(Method::GET, "/v1/campaigns", None).await?,
        CampaignCommand::Status { id } => {
            let p = client.json(Method::GET, &path(&id, ""), None).await?;
            eprintln!("{}", cli::progress_line(&p));
            p
        }
        CampaignCommand::Estimate { id } => {
            let e = client
                .json(Method::POST, &path(&id, "/estimate"), None)
                .await?;
            eprintln!("{}", cli::estimate_summary(&e));
            e
        }
        CampaignCommand::Launch { id, yes } => {
            let e = client
                .json(Method::POST, &path(&id, "/estimate"), None)
                .await?;
            eprintln!("{}", cli::estimate_summary(&e));
            if !yes {
                eprintln!("not launched: run again with --yes to launch");
                return Ok(());
            }
            client
                .json(Method::POST, &path(&id, "/launch"), None)
                .await?
        }
        CampaignCommand::Pause { id } => {
            client
                .json(Method::POST, &path(&id, "/pause"), None)
                .await?
        }
        CampaignCommand::Resume { id } => {
            client
                .json(Method::POST, &path(&id, "/resume"), None)
                .await?
        }
        CampaignCommand::Cancel { id } => {
            client
                .json(Method::POST, &path(&id, "/cancel"), None)
                .await?
        }
        CampaignCommand::Watch { id, interval } => {
            let every = std::time::Duration::from_secs_f64(interval.max(0.2));
            return cli::watch(&client, &id, every).await;
        }
        CampaignCommand::Failures { id, output } => {
            return client
                .download(&path(&id, "/failures.csv"), output.as_deref())
                .await;
        }
        CampaignCommand::Exclusions { id, output } => {
            return client
                .download(&path(&id, "/exclusions.csv"), output.as_deref())
                .await;
        }
        CampaignCommand::RetryFailed { id } => {
            client
                .json(Method::POST, &path(&id, "/retry-failed"), None)
                .await?
        }
        CampaignCommand::Replies { id } => {
            client
                .json(Method::GET, &path(&id, "/replies"), None)
                .await?
        }
    };
    cli::print(&value);
    Ok(())
}

async fn contacts(api: &cli::ApiArgs, command: ContactsCommand) -> Result<(), AppError> {
    let client = Client::new(api)?;
    match command {
        ContactsCommand::Import {
            file,
            phone,
            name,
            language,
            tags,
            tags_column,
            attributes,
            consent_column,
            consent_purpose,
            consent_source,
            evidence_column,
            evidence,
            list,
        } => {
            let mut query = vec![("phone", phone)];
            for (key, value) in [
                ("name", name),
                ("language", language),
                ("tags", tags),
                ("tags_column", tags_column),
                ("attributes", attributes),
                ("consent_column", consent_column),
                ("consent_purpose", consent_purpose),
                ("consent_source", consent_source),
                ("evidence_column", evidence_column),
                ("evidence", evidence),
                ("list", list),
            ] {
                if let Some(v) = value {
                    query.push((key, v));
                }
            }
            let query: Vec<String> = query
                .into_iter()
                .map(|(k, v)| format!("{k}={}", pregon::whatsapp::percent_encode(&v)))
                .collect();
            let body = std::fs::read(&file)?;
            let report = client
                .json(
                    Method::POST,
                    &format!("/v1/contacts/import?{}", query.join("&")),
                    Some(body),
                )
                .await?;
            cli::print(&report);
            Ok(())
        }
        ContactsCommand::Export { output } => {
            client.download("/v1/contacts.csv", output.as_deref()).await
        }
        ContactsCommand::Show { phone } => {
            let path = format!("/v1/contacts/{}", pregon::whatsapp::percent_encode(&phone));
            cli::print(&client.json(Method::GET, &path, None).await?);
            Ok(())
        }
        ContactsCommand::Put { phone, file } => {
            let path = format!("/v1/contacts/{}", pregon::whatsapp::percent_encode(&phone));
            let body = std::fs::read(&file)?;
            cli::print(&client.json(Method::PUT, &path, Some(body)).await?);
            Ok(())
        }
        ContactsCommand::Delete { phone } => {
            let path = format!("/v1/contacts/{}", pregon::whatsapp::percent_encode(&phone));
            client.send(Method::DELETE, &path).await?;
            eprintln!("deleted {phone}; its consent log is kept");
            Ok(())
        }
    }
}
