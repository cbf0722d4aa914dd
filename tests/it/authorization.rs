//! Every route × every role × a resource of the key's own sender or of another: what each key
//! limited to sender A may see and do. A key is told nothing of another sender's resources (404,
//! as if they did not exist) and may not act through another sender (403); bulk exports of what
//! every sender shares are for keys that are not limited.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use pregon::api::auth::{Role, create_key};

use crate::harness::{Env, Options, recipients, template_body};

const A: &str = "1065550600";
const B: &str = "1065550601";

/// Either answer is right for a state-changing campaign action: the key got through, and the
/// campaign's state decides (a second launch is a conflict).
const OK_OR_CONFLICT: u16 = 1;
/// The roles in the order of the answers in [`Row`].
const ROLES: [Role; 4] = [Role::Admin, Role::Service, Role::Marketing, Role::Viewer];

/// One route: the answer for each role (admin, service, marketing, viewer) on the key's own
/// resources, and on another sender's (`None` when the route names no sender's resource).
struct Row {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    own: [u16; 4],
    other: Option<[u16; 4]>,
}

fn row(method: Method, path: &'static str, own: [u16; 4], other: Option<[u16; 4]>) -> Row {
    Row {
        method,
        path,
        body: None,
        own,
        other,
    }
}

fn with_body(mut r: Row, body: Value) -> Row {
    r.body = Some(body);
    r
}

/// The values a path's placeholders take for one side.
struct Side {
    sender: String,
    message: String,
    campaign: String,
    recipient: String,
    /// A dead-lettered job of this side's sender.
    dead: String,
}

async fn dead_job(env: &Env, sender: &str) -> String {
    pregon::store::dead::insert_dead_job(
        &env.services.pool,
        pregon::store::dead::DeadSource::Send,
        None,
        Some(sender),
        b"not a job",
    )
    .await
    .unwrap()
    .to_string()
}

fn fill(text: &str, side: &Side, subscription: &str, import: &str) -> String {
    text.replace("{sender}", &side.sender)
        .replace("{message}", &side.message)
        .replace("{campaign}", &side.campaign)
        .replace("{recipient}", &side.recipient)
        .replace("{subscription}", subscription)
        .replace("{import}", import)
        .replace("{dead}", &side.dead)
}

async fn call(
    env: &Env,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = env.http.request(method, format!("{}{path}", env.api_url));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = match body {
            Value::String(text) => req.body(text),
            json => req.json(&json),
        };
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

fn matches(expected: u16, got: StatusCode) -> bool {
    match expected {
        OK_OR_CONFLICT => got == StatusCode::OK || got == StatusCode::CONFLICT,
        code => got.as_u16() == code,
    }
}

async fn create_campaign(env: &Env, sender: &str, to: &str) -> String {
    let (status, body) = env
        .post(
            "/v1/campaigns",
            json!({"name": format!("for {sender}"), "template": {"name": "notice", "language": "es_MX"},
                   "category": "utility", "senders": [sender], "audience": {"numbers": [to]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn send(env: &Env, sender: &str, to: &str) -> String {
    let (status, body) = env
        .post(
            &format!("/v1/{sender}/messages"),
            template_body(to, "notice"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["messages"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_route_answers_each_role_only_for_its_own_senders() {
    let mut env = Env::start(Options::default()).await;
    env.sender(A, json!(1000), 80).await;
    env.sender(B, json!(1000), 80).await;
    env.template("notice", "utility").await;
    let rs = recipients(4, 60);
    let own = Side {
        sender: A.into(),
        message: send(&env, A, &rs[0]).await,
        campaign: create_campaign(&env, A, &rs[0]).await,
        recipient: rs[0].clone(),
        dead: dead_job(&env, A).await,
    };
    let other = Side {
        sender: B.into(),
        message: send(&env, B, &rs[1]).await,
        campaign: create_campaign(&env, B, &rs[1]).await,
        recipient: rs[1].clone(),
        dead: dead_job(&env, B).await,
    };
    for r in [&own.recipient, &other.recipient] {
        env.services.suppress(r, "reported spam").await.unwrap();
    }
    let (status, import) = call(
        &env,
        Method::POST,
        "/v1/contacts/import?phone=phone",
        Some(&env.admin_key),
        Some(Value::String(format!("phone\n{}\n", rs[2]))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{import}");
    let import: Value = serde_json::from_str(&import).unwrap();
    let import = import["import_id"].as_str().unwrap().to_string();
    // Each role's key is limited to A; their subscriptions are their own, the other's belongs to
    // an unlimited key.
    let pool = &env.services.pool;
    let mut keys = Vec::new();
    let mut subscriptions = Vec::new();
    for role in ROLES {
        let (key, secret) = create_key(pool, role.as_str(), role, Some(vec![A.into()]))
            .await
            .unwrap();
        let sub = pregon::store::events::insert_subscription(
            pool,
            &env.services.derived.keyring,
            key.id,
            "https://hooks.example.com/own",
            &["*".into()],
            "0123456789abcdef",
        )
        .await
        .unwrap();
        keys.push(secret);
        subscriptions.push(sub.id.to_string());
    }
    let (someone, _) = create_key(pool, "someone", Role::Service, None)
        .await
        .unwrap();
    let others_subscription = pregon::store::events::insert_subscription(
        pool,
        &env.services.derived.keyring,
        someone.id,
        "https://hooks.example.com/other",
        &["*".into()],
        "0123456789abcdef",
    )
    .await
    .unwrap()
    .id
    .to_string();

    const ALL: [u16; 4] = [200, 200, 200, 200];
    const HIDDEN: [u16; 4] = [404, 404, 404, 404];
    const REFUSED: [u16; 4] = [403, 403, 403, 403];
    const ADMIN_ONLY: [u16; 4] = [200, 403, 403, 403];
    const CAMPAIGNERS: [u16; 4] = [200, 403, 200, 403];
    const CAMPAIGNERS_HIDDEN: [u16; 4] = [404, 403, 404, 403];
    const CAMPAIGN_ACTION: [u16; 4] = [OK_OR_CONFLICT, 403, OK_OR_CONFLICT, 403];
    const CONSENT_READERS_HIDDEN: [u16; 4] = [404, 404, 404, 403];
    let get = Method::GET;
    let post = Method::POST;
    let rows = vec![
        with_body(
            row(
                post.clone(),
                "/v1/{sender}/messages",
                [202, 202, 403, 403],
                Some(REFUSED),
            ),
            template_body(&rs[3], "notice"),
        ),
        with_body(
            row(
                post.clone(),
                "/v1/{sender}/messages/batch",
                [200, 200, 403, 403],
                Some(REFUSED),
            ),
            json!({"messages": [template_body(&rs[3], "notice")]}),
        ),
        row(get.clone(), "/v1/messages/{message}", ALL, Some(HIDDEN)),
        row(get.clone(), "/v1/senders", ALL, None),
        with_body(
            row(
                post.clone(),
                "/v1/senders",
                [201, 403, 403, 403],
                Some(REFUSED),
            ),
            json!({"phone_number_id": "{sender}", "business_portfolio_id": "bp-auth",
                   "tier": 1000, "mps": 80, "access_token": "token"}),
        ),
        row(
            post.clone(),
            "/v1/senders/{sender}/pause",
            ADMIN_ONLY,
            Some(REFUSED),
        ),
        row(
            post.clone(),
            "/v1/senders/{sender}/resume",
            ADMIN_ONLY,
            Some(REFUSED),
        ),
        row(get.clone(), "/v1/templates", ALL, None),
        with_body(
            row(post.clone(), "/v1/templates", [201, 403, 403, 403], None),
            json!({"name": "notice", "language": "es_MX", "category": "utility"}),
        ),
        with_body(
            row(
                post.clone(),
                "/v1/consent",
                [201, 201, 201, 403],
                Some(CONSENT_READERS_HIDDEN),
            ),
            json!({"recipient": "{recipient}", "purpose": "utility", "action": "opt_in",
                   "source": "web form", "evidence": "ticked the box"}),
        ),
        // Erasing a person spans every sender: no key limited to some senders may, whatever its
        // role, whoever the person has talked to.
        with_body(
            row(post.clone(), "/v1/erasures", REFUSED, Some(REFUSED)),
            json!({"recipient": "{recipient}"}),
        ),
        row(
            get.clone(),
            "/v1/consent/{recipient}",
            [200, 200, 200, 403],
            Some(CONSENT_READERS_HIDDEN),
        ),
        row(
            get.clone(),
            "/v1/suppressions/{recipient}",
            [200, 200, 200, 403],
            Some(CONSENT_READERS_HIDDEN),
        ),
        row(
            Method::DELETE,
            "/v1/suppressions/{recipient}",
            [204, 403, 403, 403],
            Some([404, 403, 403, 403]),
        ),
        row(get.clone(), "/v1/consent.csv", REFUSED, None),
        row(get.clone(), "/v1/contacts.csv", REFUSED, None),
        with_body(
            row(
                post.clone(),
                "/v1/contacts/import?phone=phone",
                CAMPAIGNERS,
                None,
            ),
            Value::String(format!("phone\n{}\n", rs[3])),
        ),
        with_body(
            row(
                post.clone(),
                "/v1/contacts/import?phone=phone&consent_column=ok&evidence=form",
                REFUSED,
                None,
            ),
            Value::String(format!("phone,ok\n{},yes\n", rs[3])),
        ),
        row(
            get.clone(),
            "/v1/contacts/imports/{import}/errors.csv",
            CAMPAIGNERS,
            None,
        ),
        row(get.clone(), "/v1/contacts", CAMPAIGNERS, None),
        with_body(
            row(
                Method::PUT,
                "/v1/contacts/{recipient}",
                [201, 403, 200, 403],
                None,
            ),
            json!({"name": "Ana"}),
        ),
        row(get.clone(), "/v1/contacts/{recipient}", CAMPAIGNERS, None),
        row(
            Method::DELETE,
            "/v1/contacts/{recipient}",
            [204, 403, 404, 403],
            None,
        ),
        with_body(
            row(
                post.clone(),
                "/v1/campaigns",
                [201, 403, 201, 403],
                Some(REFUSED),
            ),
            json!({"name": "more", "template": {"name": "notice", "language": "es_MX"},
                   "category": "utility", "senders": ["{sender}"],
                   "audience": {"numbers": ["{recipient}"]}}),
        ),
        row(get.clone(), "/v1/campaigns", ALL, None),
        row(get.clone(), "/v1/campaigns/{campaign}", ALL, Some(HIDDEN)),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/estimate",
            CAMPAIGNERS,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/launch",
            CAMPAIGN_ACTION,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/pause",
            CAMPAIGN_ACTION,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/resume",
            CAMPAIGN_ACTION,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        row(
            get.clone(),
            "/v1/campaigns/{campaign}/failures.csv",
            ALL,
            Some(HIDDEN),
        ),
        row(
            get.clone(),
            "/v1/campaigns/{campaign}/exclusions.csv",
            ALL,
            Some(HIDDEN),
        ),
        row(
            get.clone(),
            "/v1/campaigns/{campaign}/replies",
            ALL,
            Some(HIDDEN),
        ),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/cancel",
            CAMPAIGN_ACTION,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        row(
            post.clone(),
            "/v1/campaigns/{campaign}/retry-failed",
            CAMPAIGN_ACTION,
            Some(CAMPAIGNERS_HIDDEN),
        ),
        with_body(
            row(post.clone(), "/v1/templates/sync", CAMPAIGNERS, None),
            json!({}),
        ),
        row(get.clone(), "/v1/dead", ADMIN_ONLY, None),
        row(get.clone(), "/v1/dead/999999", [404, 403, 403, 403], None),
        row(
            get.clone(),
            "/v1/dead/{dead}",
            ADMIN_ONLY,
            Some([404, 403, 403, 403]),
        ),
        row(
            post.clone(),
            "/v1/dead/999999/redrive",
            [404, 403, 403, 403],
            None,
        ),
        with_body(
            row(
                post.clone(),
                "/v1/apikeys",
                [201, 403, 403, 403],
                Some(REFUSED),
            ),
            json!({"name": "child", "role": "viewer", "senders": ["{sender}"]}),
        ),
        row(get.clone(), "/v1/apikeys", ADMIN_ONLY, None),
        row(
            Method::DELETE,
            "/v1/apikeys/00000000-0000-0000-0000-000000000000",
            [404, 403, 403, 403],
            None,
        ),
        with_body(
            row(post.clone(), "/v1/apikeys", REFUSED, None),
            json!({"name": "wider", "role": "viewer"}),
        ),
        with_body(
            row(
                post.clone(),
                "/v1/subscriptions",
                [201, 201, 403, 403],
                None,
            ),
            json!({"url": "https://hooks.example.com/new"}),
        ),
        row(get.clone(), "/v1/subscriptions", ALL, None),
        row(
            get.clone(),
            "/v1/subscriptions/{subscription}",
            ALL,
            Some(HIDDEN),
        ),
        row(
            get.clone(),
            "/v1/subscriptions/{subscription}/deliveries",
            ALL,
            Some(HIDDEN),
        ),
        row(
            Method::DELETE,
            "/v1/subscriptions/{subscription}",
            [204, 204, 403, 403],
            Some([404, 404, 403, 403]),
        ),
    ];

    let mut wrong = Vec::new();
    for r in &rows {
        // No key, no answer, whatever the route.
        let path = fill(r.path, &own, &subscriptions[0], &import);
        let (status, _) = call(&env, r.method.clone(), &path, None, r.body.clone()).await;
        if status != StatusCode::UNAUTHORIZED {
            wrong.push(format!("{} {path} without a key: {status}", r.method));
        }
        let sides = [(&own, Some(r.own)), (&other, r.other)];
        for (side, expected) in sides {
            let Some(expected) = expected else { continue };
            for (i, role) in ROLES.iter().enumerate() {
                let subscription = if std::ptr::eq(side, &own) {
                    &subscriptions[i]
                } else {
                    &others_subscription
                };
                let path = fill(r.path, side, subscription, &import);
                let body = r.body.as_ref().map(|b| match b {
                    Value::String(text) => Value::String(text.clone()),
                    json => {
                        serde_json::from_str(&fill(&json.to_string(), side, subscription, &import))
                            .unwrap()
                    }
                });
                let (status, answer) =
                    call(&env, r.method.clone(), &path, Some(&keys[i]), body).await;
                let which = if std::ptr::eq(side, &own) {
                    "own"
                } else {
                    "other"
                };
                if !matches(expected[i], status) {
                    wrong.push(format!(
                        "{} {path} as {} ({which}): {status}, expected {}: {answer}",
                        r.method,
                        role.as_str(),
                        expected[i]
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Lists hold only what the key may see.
    let (_, campaigns) = call(&env, Method::GET, "/v1/campaigns", Some(&keys[3]), None).await;
    let campaigns: Value = serde_json::from_str(&campaigns).unwrap();
    let listed: Vec<&Value> = campaigns["data"].as_array().unwrap().iter().collect();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|c| c["senders"] == json!([A])),
        "{campaigns}"
    );
    let (_, senders) = call(&env, Method::GET, "/v1/senders", Some(&keys[3]), None).await;
    let senders: Value = serde_json::from_str(&senders).unwrap();
    let ids: Vec<&str> = senders["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phone_number_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![A]);
    env.cleanup().await;
}
