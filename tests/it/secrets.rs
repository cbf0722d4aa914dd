//! Secrets at rest: access tokens and signing secrets are sealed in PostgreSQL, open for the
//! processes that hold the master key, and rotate to a new key without downtime.

use std::time::Duration;

use pregon::sealing::Keyring;
use pregon::store;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Env, Options, recipients, template_body};

const SENDER: &str = "1065550950";
const TOKEN: &str = "EAAG-a-real-looking-access-token";
const SIGNING: &str = "a-subscription-signing-secret";

/// Every text value the two tables hold, as one string to search.
async fn stored_text(env: &Env) -> String {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(s)::text FROM senders s
         UNION ALL SELECT row_to_json(t)::text FROM subscriptions t",
    )
    .fetch_all(&env.services.pool)
    .await
    .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_used_in_memory_and_rotate_to_a_new_key() {
    let mut env = Env::start(Options::default()).await;
    let (status, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": SENDER, "business_portfolio_id": "bp", "tier": 1000,
                   "access_token": TOKEN}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body.to_string().contains(TOKEN), "{body}");
    // The simulator accepts only the real token: a send that works proves it was opened.
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": SENDER, "tier": 1000, "access_token": TOKEN}),
    )
    .await;
    env.template("order_update", "utility").await;
    let (status, body) = env
        .post(
            "/v1/subscriptions",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["message.sent"], "secret": SIGNING}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let at_rest = stored_text(&env).await;
    assert!(!at_rest.contains(TOKEN), "{at_rest}");
    assert!(!at_rest.contains(SIGNING), "{at_rest}");
    assert_eq!(at_rest.matches("pgs1.").count(), 2, "{at_rest}");

    env.start_worker();
    let to = &recipients(1, 950)[0];
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages"),
            template_body(to, "order_update"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["messages"][0]["id"].as_str().unwrap().to_string();
    env.eventually("the send", Duration::from_secs(15), async || {
        (env.message(&id).await["status"] == "sent").then_some(())
    })
    .await;

    // Rotation: the new key first, the old after it, then every value re-wrapped.
    let old = env.config.secret_key.clone();
    let new = pregon::sealing::generate_key().unwrap();
    let both = Keyring::from_settings(&format!("{new},{old}"), "").unwrap();
    let pool = &env.services.pool;
    // A sender stored in the clear by an earlier version is sealed by the same run.
    sqlx::query(
        "INSERT INTO senders (phone_number_id, business_portfolio_id, tier, access_token)
         VALUES ('1065550951', 'bp', 1000, 'legacy-clear-token')",
    )
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(store::rotate_secrets(pool, &both).await.unwrap(), 3);
    assert_eq!(store::rotate_secrets(pool, &both).await.unwrap(), 0);
    let at_rest = stored_text(&env).await;
    assert!(!at_rest.contains("legacy-clear-token"), "{at_rest}");
    let new_only = Keyring::from_settings(&new, "").unwrap();
    let senders = store::list_senders(pool, &new_only).await.unwrap();
    let tokens: Vec<&str> = senders.iter().map(|s| s.access_token.as_str()).collect();
    assert_eq!(tokens, [TOKEN, "legacy-clear-token"]);
    let subs = store::events::list_subscriptions(pool, &new_only, None)
        .await
        .unwrap();
    assert_eq!(subs[0].secret, SIGNING);
    // The old key alone no longer opens anything.
    let old_only = Keyring::from_settings(&old, "").unwrap();
    assert!(store::list_senders(pool, &old_only).await.is_err());
    env.cleanup_senders(&[SENDER, "1065550951"]).await;
}

#[test]
fn pregon_config_and_the_cli_never_print_the_master_key() {
    let key = pregon::sealing::generate_key().unwrap();
    let config = pregon::config::Config {
        secret_key: key.clone(),
        ..pregon::config::Config::default()
    };
    assert!(!config.redacted().contains(&key));
    assert!(!format!("{config:?}").contains(&key));
    let derived = config.derived().unwrap();
    assert!(!format!("{:?}", derived.keyring).contains(&key));
}

#[test]
fn a_sealed_webhook_app_secret_in_the_configuration_is_opened_at_start() {
    let key = pregon::sealing::generate_key().unwrap();
    let keys = Keyring::from_settings(&key, "").unwrap();
    let sealed = keys
        .seal("meta-app-secret", pregon::config::APP_SECRET_CONTEXT)
        .unwrap();
    let config = pregon::config::Config {
        secret_key: key,
        webhook_app_secrets: format!("{sealed},plain-old-secret"),
        ..pregon::config::Config::default()
    };
    let derived = config.derived().unwrap();
    assert_eq!(
        derived.app_secrets,
        vec![b"meta-app-secret".to_vec(), b"plain-old-secret".to_vec()]
    );
    // Without the key the configuration is refused, naming the setting.
    let err = pregon::config::Config {
        secret_key: String::new(),
        ..config
    }
    .derived()
    .unwrap_err();
    assert!(err.to_string().contains("webhook_app_secrets"), "{err}");
}
