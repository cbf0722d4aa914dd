//! The operator commands that are not long-lived processes: campaigns, contacts, consent and
//! templates through the HTTP API (with [`Client`]), and API keys straight in the database.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;

use super::{ApiArgs, Client, print};
use crate::api::auth::{self, Role};
use crate::app::AppError;
use crate::config::Config;
use crate::store;

#[derive(Subcommand)]
pub enum CampaignCommand {
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
pub enum ContactsCommand {
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
pub enum ConsentCommand {
    /// The whole consent log as CSV, for an audit.
    Export {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Rewrite Redis's consent copy from PostgreSQL's log and report what differed (uses the
    /// database and Redis settings directly).
    RebuildCache,
}

#[derive(Subcommand)]
pub enum StateCommand {
    /// Whether Redis holds a complete copy, and since when (uses the Redis settings directly).
    Status,
    /// Rewrite the copy from PostgreSQL now and report what was written and how long it took
    /// (every process does this by itself when Redis lost its data).
    Rebuild,
}

#[derive(Subcommand)]
pub enum DeadCommand {
    /// Dead jobs waiting for an operator, oldest first (`--all`: also those sent again).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// One dead job, with the job itself.
    Show { id: i64 },
    /// Send a dead job again, with a fresh attempt budget. A message whose send may have reached
    /// the Cloud API unseen is refused unless `--force`.
    Redrive {
        id: i64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Fill the registry from the Cloud API's template list of every sender's business account.
    Sync,
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Print a new master key (64 hex digits) for PREGON_SECRET_KEY.
    Generate,
    /// Seal every access token and signing secret under the current (first) master key: values
    /// in the clear are sealed, those under an older key re-wrapped. Run it after putting the new
    /// key first in PREGON_SECRET_KEY (the old one after it) on every process; then drop the old.
    Rotate,
    /// Seal a webhook app secret read from standard input, for PREGON_WEBHOOK_APP_SECRETS.
    Seal,
}

/// GETs `path` from this process's own listener (`listen`, with a wildcard address asked on
/// loopback): Ok when it answers 200.
pub async fn probe(config: &Config, path: &str) -> Result<(), AppError> {
    let address = config
        .listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let url = format!("http://{address}{path}");
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| AppError::Invalid(format!("{url}: {e}")))?;
    if answer.status() != reqwest::StatusCode::OK {
        return Err(AppError::Invalid(format!(
            "{url} answered {}",
            answer.status()
        )));
    }
    Ok(())
}

pub async fn erase(config: Config, phone: &str) -> Result<(), AppError> {
    let (services, background) = crate::app::Services::connect(config, "cli").await?;
    let erased = crate::privacy::erase(&services, phone, "cli").await;
    background.writer.close().await;
    print(&serde_json::to_value(erased?).unwrap_or_default());
    Ok(())
}

/// The configured master keys, refused when there are none: these commands only seal.
fn sealing_keyring(config: &Config) -> Result<crate::sealing::Keyring, AppError> {
    let keys = config.derived()?.keyring;
    if keys.seals() {
        Ok(keys)
    } else {
        Err(AppError::Invalid(
            "no master key is set (PREGON_SECRET_KEY or PREGON_SECRET_KEY_FILE)".into(),
        ))
    }
}

pub async fn secrets(config: &Config, command: SecretsCommand) -> Result<(), AppError> {
    match command {
        SecretsCommand::Generate => {
            println!("{}", crate::sealing::generate_key()?);
            Ok(())
        }
        SecretsCommand::Rotate => {
            let keys = sealing_keyring(config)?;
            let current = keys.current_id().unwrap_or_default().to_string();
            let pool = key_database(config).await?;
            let rotated = store::rotate_secrets(&pool, &keys).await?;
            eprintln!("{rotated} secrets sealed under master key {current}");
            Ok(())
        }
        SecretsCommand::Seal => {
            let keys = sealing_keyring(config)?;
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .map_err(|e| AppError::Invalid(format!("reading standard input: {e}")))?;
            println!(
                "{}",
                keys.seal(secret.trim(), crate::config::APP_SECRET_CONTEXT)?
            );
            Ok(())
        }
    }
}

#[derive(Subcommand)]
pub enum ApikeyCommand {
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
        /// The key stops working after this long (e.g. 90d, 12h); never when left out.
        #[arg(long, value_parser = crate::domain::duration::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List every key (never a secret): role, senders, created, expires, last used, revoked.
    List,
    /// Revoke a key: every process refuses it within a second.
    Revoke { id: uuid::Uuid },
}

pub async fn apikey(config: &Config, command: ApikeyCommand) -> Result<(), AppError> {
    match command {
        ApikeyCommand::Create {
            name,
            role,
            senders,
            expires_in,
        } => {
            let role = Role::parse(&role)
                .ok_or_else(|| AppError::Invalid(format!("role is {}", Role::NAMES)))?;
            let pool = key_database(config).await?;
            let senders = (!senders.is_empty()).then_some(senders);
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .map_err(|_| AppError::Invalid("--expires-in is too long".into()))?;
            let (key, secret) =
                auth::create_expiring_key(&pool, &name, role, senders, expires_at).await?;
            println!("{secret}");
            eprintln!(
                "created {} key \"{}\" ({}); the secret above is shown only once",
                key.role, key.name, key.id
            );
            Ok(())
        }
        ApikeyCommand::List => {
            let pool = key_database(config).await?;
            let keys = store::list_api_keys(&pool).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&keys)
                    .map_err(|e| AppError::Invalid(e.to_string()))?
            );
            Ok(())
        }
        ApikeyCommand::Revoke { id } => {
            let pool = key_database(config).await?;
            if store::revoke_api_key(&pool, id, "cli").await? {
                eprintln!("revoked {id}; every process refuses it within a second");
                Ok(())
            } else {
                Err(AppError::Invalid(format!(
                    "no API key {id}, or it was revoked already"
                )))
            }
        }
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a person who signs in to the console. The password is read from standard input with
    /// --password-stdin; otherwise one is generated and printed once.
    Create {
        #[arg(long)]
        email: String,
        /// admin, marketing or viewer
        #[arg(long, default_value = "marketing")]
        role: String,
        /// Limit the user to these sender phone_number_ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        senders: Vec<String>,
        /// Read the password (at least 12 characters) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users (never a password hash): email, role, senders, created, disabled.
    List,
    /// Stop a user signing in and end their sessions.
    Disable { email: String },
}

pub async fn user(config: &Config, command: UserCommand) -> Result<(), AppError> {
    let pool = key_database(config).await?;
    match command {
        UserCommand::Create {
            email,
            role,
            senders,
            password_stdin,
        } => {
            let generated = !password_stdin;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                crate::console::generate_password()
            };
            let senders = (!senders.is_empty()).then_some(senders);
            let user =
                crate::console::create_user(&pool, &email, &password, &role, senders.as_deref())
                    .await
                    .map_err(|e| AppError::Invalid(e.to_string()))?;
            if generated {
                println!("{password}");
            }
            eprintln!(
                "created {} user {}{}",
                user.role,
                user.email,
                if generated {
                    "; the password above is shown only once"
                } else {
                    ""
                }
            );
            Ok(())
        }
        UserCommand::List => {
            for u in store::users::list_users(&pool).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    u.email,
                    u.role,
                    u.senders.map_or("*".into(), |s| s.join(",")),
                    u.created_at.to_rfc3339(),
                    u.disabled_at
                        .map_or("active".into(), |d| format!("disabled {}", d.to_rfc3339())),
                );
            }
            Ok(())
        }
        UserCommand::Disable { email } => {
            if store::users::disable_user(&pool, &email.trim().to_lowercase()).await? {
                eprintln!("disabled {email}; their sessions are ended");
                Ok(())
            } else {
                Err(AppError::Invalid(format!("no user {email}")))
            }
        }
    }
}

/// The database the keys live in, migrated, for the key commands that work on it directly.
async fn key_database(config: &Config) -> Result<sqlx::PgPool, AppError> {
    store::ensure_database(&config.database_url).await?;
    let pool = store::connect(&config.database_url, 2).await?;
    store::migrate(&pool).await?;
    Ok(pool)
}

pub async fn consent(config: Config, command: ConsentCommand) -> Result<(), AppError> {
    match command {
        ConsentCommand::Export { api, output } => {
            Client::new(&api)?
                .download("/v1/consent.csv", output.as_deref())
                .await
        }
        ConsentCommand::RebuildCache => {
            let (services, background) = crate::app::Services::connect(config, "cli").await?;
            let report = crate::contacts::rebuild_consent_cache(&services).await?;
            background.writer.close().await;
            print(&serde_json::to_value(&report).unwrap_or_default());
            Ok(())
        }
    }
}

pub async fn state(config: Config, command: StateCommand) -> Result<(), AppError> {
    let (services, background) = crate::app::Services::connect(config, "cli").await?;
    let answer = match command {
        StateCommand::Status => {
            let since = services.state.copy_since().await?;
            serde_json::json!({
                "complete": since.is_some(),
                "built_at": since.and_then(chrono::DateTime::from_timestamp_millis),
            })
        }
        StateCommand::Rebuild => {
            let report = crate::state_copy::rebuild_now(&services).await?;
            serde_json::to_value(&report).unwrap_or_default()
        }
    };
    background.writer.close().await;
    print(&answer);
    Ok(())
}

pub async fn dead(api: &ApiArgs, command: DeadCommand) -> Result<(), AppError> {
    let client = Client::new(api)?;
    let answer = match command {
        DeadCommand::List { all, after } => {
            client
                .json(
                    Method::GET,
                    &format!("/v1/dead?after={after}&all={all}"),
                    None,
                )
                .await?
        }
        DeadCommand::Show { id } => {
            client
                .json(Method::GET, &format!("/v1/dead/{id}"), None)
                .await?
        }
        DeadCommand::Redrive { id, force } => {
            client
                .json(
                    Method::POST,
                    &format!("/v1/dead/{id}/redrive?force={force}"),
                    None,
                )
                .await?
        }
    };
    print(&answer);
    Ok(())
}

pub async fn templates(api: &ApiArgs, command: TemplatesCommand) -> Result<(), AppError> {
    match command {
        TemplatesCommand::Sync => {
            let report = Client::new(api)?
                .json(Method::POST, "/v1/templates/sync", None)
                .await?;
            print(&report);
            Ok(())
        }
    }
}

pub async fn campaign(api: &ApiArgs, command: CampaignCommand) -> Result<(), AppError> {
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
            eprintln!("{}", super::progress_line(&p));
            p
        }
        CampaignCommand::Estimate { id } => {
            let e = client
                .json(Method::POST, &path(&id, "/estimate"), None)
                .await?;
            eprintln!("{}", super::estimate_summary(&e));
            e
        }
        CampaignCommand::Launch { id, yes } => {
            let e = client
                .json(Method::POST, &path(&id, "/estimate"), None)
                .await?;
            eprintln!("{}", super::estimate_summary(&e));
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
            return super::watch(&client, &id, every).await;
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
    print(&value);
    Ok(())
}

pub async fn contacts(api: &ApiArgs, command: ContactsCommand) -> Result<(), AppError> {
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
                .map(|(k, v)| format!("{k}={}", crate::whatsapp::percent_encode(&v)))
                .collect();
            let body = std::fs::read(&file)?;
            let report = client
                .json(
                    Method::POST,
                    &format!("/v1/contacts/import?{}", query.join("&")),
                    Some(body),
                )
                .await?;
            print(&report);
            Ok(())
        }
        ContactsCommand::Export { output } => {
            client.download("/v1/contacts.csv", output.as_deref()).await
        }
        ContactsCommand::Show { phone } => {
            let path = format!("/v1/contacts/{}", crate::whatsapp::percent_encode(&phone));
            print(&client.json(Method::GET, &path, None).await?);
            Ok(())
        }
        ContactsCommand::Put { phone, file } => {
            let path = format!("/v1/contacts/{}", crate::whatsapp::percent_encode(&phone));
            let body = std::fs::read(&file)?;
            print(&client.json(Method::PUT, &path, Some(body)).await?);
            Ok(())
        }
        ContactsCommand::Delete { phone } => {
            let path = format!("/v1/contacts/{}", crate::whatsapp::percent_encode(&phone));
            client.send(Method::DELETE, &path).await?;
            eprintln!("deleted {phone}; its consent log is kept");
            Ok(())
        }
    }
}
