//! The published contract (`/v1/openapi.json`), attacked: every documented operation refuses a
//! request without a key and lets in exactly the roles it lists; schemathesis, from PyPI, sends
//! generated and mutated requests with every role's key and finds no server error and no answer
//! the document does not describe.

use std::collections::BTreeMap;
use std::process::Stdio;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use pregon::api::auth::{Role, create_key};

use crate::harness::{Env, Options};

const SENDER: &str = "1065550700";
const OTHER_SENDER: &str = "1065550701";

fn options() -> Options {
    Options {
        // Thousands of requests a key in a few seconds: the request rate is not what is tested.
        tweak: |c| {
            c.api_key_rate = 100_000;
            c.api_key_burst = 100_000;
        },
        ..Options::default()
    }
}

async fn document(env: &Env) -> Value {
    // Served without a key, like the health checks.
    let response = env
        .http
        .get(format!("{}/v1/openapi.json", env.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// Every operation: (method, path, the roles it lists, or None when it takes no key).
fn operations(doc: &Value) -> Vec<(Method, String, Option<Vec<String>>)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let roles = op.get("x-pregon-roles").map(|roles| {
                roles
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect()
            });
            let keyless = op.get("security") == Some(&json!([]));
            assert!(
                keyless != roles.is_some(),
                "{method} {path}: an operation either lists its roles or takes no key"
            );
            ops.push((
                method.to_ascii_uppercase().parse().unwrap(),
                path.clone(),
                roles,
            ));
        }
    }
    ops
}

#[tokio::test]
async fn every_operation_refuses_a_missing_key_and_admits_exactly_the_roles_it_lists() {
    let env = Env::start(options()).await;
    let doc = document(&env).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 50, "only {} operations documented", ops.len());
    let mut keys = BTreeMap::new();
    for role in Role::ALL {
        let (_, secret) = create_key(&env.services.pool, role.as_str(), role, None)
            .await
            .unwrap();
        keys.insert(role.as_str(), secret);
    }
    let mut checked = 0;
    for (method, path, roles) in &ops {
        // Placeholders filled with a value no handler knows: the key is checked first.
        let url = format!("{}{}", env.api_url, fill_placeholders(path));
        let answer = env.http.request(method.clone(), &url).send().await.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["code"], "unknown_route",
            "{method} {path} is documented but not served"
        );
        let Some(roles) = roles else { continue };
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a key"
        );
        for (role, secret) in &keys {
            let answer = env
                .http
                .request(method.clone(), &url)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            let listed = roles.iter().any(|r| r == role);
            let refused_by_role =
                status == StatusCode::FORBIDDEN && body["error"]["code"] == "forbidden";
            assert_eq!(
                !refused_by_role, listed,
                "{method} {path} with a {role} key answered {status} {body}; the document lists {roles:?}"
            );
            assert!(
                !status.is_server_error(),
                "{method} {path}: {status} {body}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} keyed operations checked");
    env.cleanup().await;
}

fn fill_placeholders(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "0".to_string()
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Runs schemathesis against the live API with one key and the checks the contract promises;
/// returns its JSON report. Any failed check fails the test at once. A run whose only trouble
/// was an error inside schemathesis itself (its generator trips over a schema now and then,
/// more often on a loaded machine) is run again with another seed, up to three times.
async fn run_schemathesis(schema_url: &str, secret: &str, extra: &[&str]) -> Value {
    let report_path = std::env::temp_dir().join(format!(
        "pregon-schemathesis-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let mut last = String::new();
    // The seed changes between attempts: the same seed would meet the same internal error.
    for seed in ["20261203", "20261204", "20261205"] {
        let output = tokio::process::Command::new(schemathesis())
            .args([
                "run",
                schema_url,
                "--header",
                &format!("Authorization: Bearer {secret}"),
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,ignored_auth",
                "--max-examples",
                "25",
                "--seed",
                seed,
                "--workers",
                "2",
                "--no-color",
                "--suppress-health-check",
                "all",
                "--generation-database",
                "none",
                "--report",
                "json",
                "--report-json-path",
            ])
            .arg(&report_path)
            .args(extra)
            // Whatever else it writes stays out of the source tree.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {}: {e}; `deploy/dev.sh test` installs schemathesis, or set \
                     SCHEMATHESIS_BIN",
                    schemathesis()
                )
            });
        last = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = std::fs::read(&report_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null);
        let _ = std::fs::remove_file(&report_path);
        let failures = report["failures"].as_array().map_or(0, Vec::len);
        assert_eq!(failures, 0, "schemathesis found failures:\n{last}");
        if output.status.success() {
            return report;
        }
    }
    panic!("schemathesis did not complete in three runs:\n{last}");
}

/// The run reached every operation it selected and tried at least `min_cases` requests: a run
/// that tested nothing does not pass.
fn assert_tested_everything(who: &str, report: &Value, min_cases: u64) {
    let operations = &report["operations"];
    assert_eq!(
        operations["tested"], operations["selected"],
        "{who}: not every operation was tested: {operations}"
    );
    let generated = report["test_cases"]["generated"].as_u64().unwrap_or(0);
    assert!(
        generated >= min_cases,
        "{who}: only {generated} requests generated"
    );
}

/// Where schemathesis is: `SCHEMATHESIS_BIN`, set by `deploy/dev.sh test` after installing
/// it, or on the PATH.
fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS_BIN").unwrap_or_else(|_| "schemathesis".into())
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_contract_with_any_key() {
    let mut env = Env::start(options()).await;
    // Something for the generated requests to find: senders, a template, a contact with
    // consent, a campaign, a subscription.
    env.sender(SENDER, json!(1000), 80).await;
    env.sender(OTHER_SENDER, json!(1000), 80).await;
    env.template("contract_offer", "marketing").await;
    let (status, _) = env
        .request(
            Method::PUT,
            "/v1/contacts/5215512340001",
            Some(&env.admin_key),
            Some(json!({"name": "Ana", "tags": ["vip"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    env.opt_in(&["5215512340001".to_string()]).await;
    let (status, campaign) = env
        .post(
            "/v1/campaigns",
            json!({"name": "contract", "template": {"name": "contract_offer", "language": "es_MX"},
                   "sender": SENDER, "audience": {"numbers": ["5215512340001"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let (status, _) = env
        .post(
            "/v1/subscriptions",
            json!({"url": "https://example.com/pregon"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut keys = vec![("admin".to_string(), env.admin_key.clone())];
    for role in [Role::Service, Role::Marketing, Role::Viewer] {
        let (_, secret) = create_key(&env.services.pool, role.as_str(), role, None)
            .await
            .unwrap();
        keys.push((role.as_str().to_string(), secret));
    }
    let (_, limited) = create_key(
        &env.services.pool,
        "limited",
        Role::Admin,
        Some(vec![SENDER.to_string()]),
    )
    .await
    .unwrap();
    keys.push(("admin limited to one sender".to_string(), limited));

    let schema_url = format!("{}/v1/openapi.json", env.api_url);
    // A key revoking itself half-way would leave the rest of its run testing nothing but 401s:
    // key revocation gets a run of its own, with a key made for it.
    let revoke = "delete_v1_apikeys_id";
    for (who, secret) in &keys {
        let report =
            run_schemathesis(&schema_url, secret, &["--exclude-operation-id", revoke]).await;
        assert_tested_everything(who, &report, 1000);
    }
    let (_, throwaway) = create_key(&env.services.pool, "revoker", Role::Admin, None)
        .await
        .unwrap();
    let report = run_schemathesis(
        &schema_url,
        &throwaway,
        &[
            "--include-operation-id",
            revoke,
            "--include-operation-id",
            "get_v1_apikeys",
            "--include-operation-id",
            "post_v1_apikeys",
        ],
    )
    .await;
    assert_tested_everything("revoking", &report, 30);
    env.stop_worker().await;
    env.cleanup().await;
}
