//! The console: sign-in, sessions, CSRF and roles over plain HTTP, then a campaign run from the
//! pages in a real Chromium against the simulator.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::harness::{CONTACTS_WITH_MISTAKES, Env, Options, inbound, recipients};

const PASSWORD: &str = "una clave bastante larga";

async fn user(env: &Env, email: &str, role: &str, senders: Option<&[String]>) {
    pregon::console::create_user(&env.services.pool, email, PASSWORD, role, senders)
        .await
        .unwrap();
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of cookie `name` among the `Set-Cookie` headers, with its attributes.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap()
}

/// The first `_csrf` field of a page.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
    html[at..].split('"').next().unwrap().to_string()
}

/// Signs in over HTTP; answers the session cookie, or the refusal's status.
async fn sign_in(
    env: &Env,
    http: &reqwest::Client,
    email: &str,
    password: &str,
) -> Result<String, StatusCode> {
    let page = http
        .get(format!("{}/console/login", env.api_url))
        .send()
        .await
        .unwrap();
    let login_csrf = cookie_value(&set_cookie(page.headers(), "pregon_login_csrf").unwrap());
    let form = page.text().await.unwrap();
    assert_eq!(
        csrf_of(&form),
        login_csrf,
        "the form and its cookie carry one token"
    );
    let answer = http
        .post(format!("{}/console/login", env.api_url))
        .header("cookie", format!("pregon_login_csrf={login_csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("_csrf", login_csrf.as_str()),
                ("email", email),
                ("password", password),
                ("next", "/console/senders"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    if answer.status() != StatusCode::SEE_OTHER {
        return Err(answer.status());
    }
    assert_eq!(answer.headers()[LOCATION], "/console/senders");
    let session = set_cookie(answer.headers(), "pregon_session").unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/console"] {
        assert!(session.contains(attribute), "{session} lacks {attribute}");
    }
    Ok(cookie_value(&session))
}

async fn page(
    env: &Env,
    http: &reqwest::Client,
    path: &str,
    session: &str,
) -> (StatusCode, String) {
    let answer = http
        .get(format!("{}{path}", env.api_url))
        .header("cookie", format!("pregon_session={session}"))
        .send()
        .await
        .unwrap();
    (answer.status(), answer.text().await.unwrap())
}

#[tokio::test]
async fn sign_in_sessions_csrf_and_failed_attempts() {
    let env = Env::start(Options::default()).await;
    let http = no_redirects();
    user(&env, "Ana@Example.com", "marketing", None).await;
    user(&env, "eva@example.com", "viewer", None).await;

    // The root leads to the console; a page without a session leads to the sign-in form.
    let root = http.get(format!("{}/", env.api_url)).send().await.unwrap();
    assert_eq!(root.headers()[LOCATION], "/console");
    let (status, _) = page(&env, &http, "/console/campaigns", "made-up").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let bare = http
        .get(format!("{}/console/campaigns", env.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bare.headers()[LOCATION],
        "/console/login?next=%2Fconsole%2Fcampaigns"
    );

    // A sign-in whose token does not match its cookie is refused, whatever the password.
    let refused = http
        .post(format!("{}/console/login", env.api_url))
        .header("cookie", "pregon_login_csrf=aaaa")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("_csrf", "bbbb"),
                ("email", "ana@example.com"),
                ("password", PASSWORD),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(refused.headers(), "pregon_session").is_none());

    // Five wrong passwords for one address, then even the right one waits.
    for _ in 0..5 {
        assert_eq!(
            sign_in(&env, &http, "ana@example.com", "not the password").await,
            Err(StatusCode::UNAUTHORIZED)
        );
    }
    assert_eq!(
        sign_in(&env, &http, "ana@example.com", PASSWORD).await,
        Err(StatusCode::TOO_MANY_REQUESTS)
    );
    // Other addresses are not locked out by it; case and spaces do not matter.
    let eva = sign_in(&env, &http, " EVA@example.com", PASSWORD)
        .await
        .unwrap();
    let (status, html) = page(&env, &http, "/console/campaigns", &eva).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<h1>Campañas</h1>"),
        "Spanish without a preference: {html}"
    );
    assert!(html.contains("eva@example.com (viewer)"), "{html}");
    let en = http
        .get(format!("{}/console/campaigns", env.api_url))
        .header("cookie", format!("pregon_session={eva}"))
        .header("accept-language", "pt-BR,pt;q=0.9")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(en.contains("<h1>Campanhas</h1>"), "{en}");

    // Posts need the session's CSRF token: checked before anything else is looked at.
    let forged = http
        .post(format!(
            "{}/console/campaigns/{}/pause",
            env.api_url,
            uuid::Uuid::new_v4()
        ))
        .header("cookie", format!("pregon_session={eva}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("confirm", "yes")]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // With it, a viewer is still refused what its role does not allow.
    let csrf = csrf_of(&html);
    let viewer = http
        .post(format!(
            "{}/console/campaigns/{}/pause",
            env.api_url,
            uuid::Uuid::new_v4()
        ))
        .header("cookie", format!("pregon_session={eva}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("_csrf", csrf.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN);
    assert!(
        viewer
            .text()
            .await
            .unwrap()
            .contains("Tu rol no permite hacer esto.")
    );

    // Signing out everywhere ends every session of the person, and only theirs.
    let eva_phone = sign_in(&env, &http, "eva@example.com", PASSWORD)
        .await
        .unwrap();
    let signed_out = http
        .post(format!("{}/console/logout-everywhere", env.api_url))
        .header("cookie", format!("pregon_session={eva}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("_csrf", csrf.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    for session in [&eva, &eva_phone] {
        let (status, _) = page(&env, &http, "/console/campaigns", session).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "the session still works");
    }
    // A disabled user cannot sign in again.
    assert!(
        pregon::store::users::disable_user(&env.services.pool, "eva@example.com")
            .await
            .unwrap()
    );
    assert_eq!(
        sign_in(&env, &http, "eva@example.com", PASSWORD).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    // Refusals on console pages are pages, not the API's JSON.
    user(&env, "leo@example.com", "admin", None).await;
    let leo = sign_in(&env, &http, "leo@example.com", PASSWORD)
        .await
        .unwrap();
    let unknown = http
        .get(format!("{}/console/campaigns/not-an-id", env.api_url))
        .header("cookie", format!("pregon_session={leo}"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(
        unknown.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    env.cleanup().await;
}

/// The estimate's exclusions on the page are the API's, reason by reason.
async fn exclusions_match(browser: &Browser, estimate: &Value) {
    for (reason, n) in estimate["excluded"].as_object().unwrap() {
        let shown = browser
            .all(&format!(
                "[data-estimate=exclusions] li[data-reason={reason}]"
            ))
            .await;
        if n == 0 {
            assert!(shown.is_empty(), "{reason} shown with no exclusion");
        } else {
            let text = browser.text_of(&shown[0]).await;
            assert!(text.ends_with(&format!(": {n}")), "{reason}: {text}");
        }
    }
}

const SENDER: &str = "1065557001";

#[tokio::test]
async fn a_campaign_run_from_the_console_in_a_real_browser() {
    let mut env = Env::start(Options {
        sim_webhooks: true,
        tweak: |c| {
            // Plain HTTP on this machine: cookies cannot be Secure here.
            c.console_secure_cookies = false;
            c.max_attempts = 2;
            c.retry_base = pregon::config::HumanDuration(Duration::from_millis(100));
        },
        ..Options::default()
    })
    .await;
    env.start_worker();
    env.sender(SENDER, json!(1000), 3).await;
    env.template("promo", "marketing").await;
    user(&env, "ana@example.com", "marketing", None).await;
    user(&env, "eva@example.com", "viewer", None).await;
    // 20 opted in (one of them not on WhatsApp, one whose sends fail twice with a temporary
    // error), 2 without an opt-in and 1 invalid number.
    let people = recipients(22, 701);
    env.opt_in(&people[..20]).await;
    let unreachable = people[18].clone();
    let flaky = people[19].clone();
    env.sim("/_sim/undeliverable", json!({"numbers": [unreachable]}))
        .await;
    env.sim(
        "/_sim/faults",
        json!({"kind": "error", "code": 131000, "count": 2, "to": flaky}),
    )
    .await;
    let mut audience = people.clone();
    audience.push("12".into());
    let (status, campaign) = env
        .post(
            "/v1/campaigns",
            json!({"name": "Navidad", "template": {"name": "promo", "language": "es_MX"},
                   "sender": SENDER, "audience": {"numbers": audience}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let id = campaign["id"].as_str().unwrap().to_string();
    let (status, estimate) = env
        .post(&format!("/v1/campaigns/{id}/estimate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{estimate}");
    assert_eq!(estimate["eligible"], 20);

    let browser = Browser::start("es").await;
    let console = format!("{}/console", env.api_url);
    // Signing in leads back to the page asked for.
    browser.goto(&format!("{console}/campaigns/{id}")).await;
    assert!(browser.url().await.contains("/console/login?next="));
    browser.screenshot("sign-in").await;
    browser.type_into("#email", "ana@example.com").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("form[action='/console/login'] button").await;
    browser
        .wait_text("h1", "Navidad Borrador", Duration::from_secs(10))
        .await;

    // The estimate on the page is the API's: eligible and every exclusion by reason.
    assert_eq!(browser.text("[data-estimate=eligible]").await, "20");
    exclusions_match(&browser, &estimate).await;
    let cost = browser.text("[data-estimate=cost]").await;
    assert!(cost.contains("MX") && cost.contains("20"), "{cost}");
    assert!(browser.all("[data-estimate=warnings]").await.is_empty());
    browser.screenshot("estimate").await;
    // Launching needs the confirmation box, which names the count and the cost.
    let confirm = browser.text("form.launch label").await;
    assert!(confirm.contains("20 destinatarios"), "{confirm}");
    assert!(confirm.contains("USD"), "{confirm}");
    browser.click("#confirm-launch").await;
    browser.click("form.launch button").await;
    browser
        .wait_text(
            "[data-live=state_text]",
            "Enviando",
            Duration::from_secs(10),
        )
        .await;

    // A forged post (no CSRF token) changes nothing.
    let forged = browser
        .run(
            "return fetch(arguments[0], {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'confirm=yes'}).then(r => r.status)",
            json!([format!("/console/campaigns/{id}/cancel")]),
        )
        .await;
    assert_eq!(forged, 403);

    // Pause and resume from the page.
    browser.click("form[action$='/pause'] button").await;
    browser
        .wait_text(
            "[data-live=state_text]",
            "En pausa",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        browser
            .text("#paused-title")
            .await
            .contains("En pausa porque")
    );
    browser.screenshot("paused").await;
    browser.click("form[action$='/resume'] button").await;
    browser
        .wait_text(
            "[data-live=state_text]",
            "Enviando",
            Duration::from_secs(10),
        )
        .await;
    // From here the page follows the campaign by itself: no reload until it completes.
    browser
        .run("window.stayed = true; return null", json!([]))
        .await;
    browser
        .wait_text(
            "[data-live=state_text]",
            "Terminada",
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(
        browser
            .run("return window.stayed === true", json!([]))
            .await,
        true,
        "the page reloaded"
    );
    let points = browser
        .run(
            "return document.querySelector('#live-chart polyline').getAttribute('points')",
            json!([]),
        )
        .await;
    assert!(
        points.as_str().unwrap().split(' ').count() >= 2,
        "the chart drew no line: {points}"
    );
    browser.screenshot("running").await;

    // Results: the failures by reason, explained; the report; the retry of what can succeed.
    // Meta reports the unreachable number failed by webhook, after the send.
    let failures = env
        .eventually(
            "both failures on the page",
            Duration::from_secs(15),
            async || {
                browser.goto(&format!("{console}/campaigns/{id}")).await;
                let table = browser
                    .all("section[aria-labelledby=results-title] table")
                    .await;
                let text = match table.first() {
                    Some(t) => browser.text_of(t).await,
                    None => String::new(),
                };
                (text.contains("131026") && text.contains("131000")).then_some(text)
            },
        )
        .await;
    assert!(failures.contains("no usa WhatsApp"), "{failures}");
    assert!(failures.contains("131000"), "{failures}");
    // Each sender's share of the audience, as planned (the page was loaded after planning).
    let shares = browser.text("#sender-shares").await;
    assert!(
        shares.contains(&format!("{SENDER}\t20")) || shares.contains(&format!("{SENDER} 20")),
        "{shares}"
    );
    let report = browser
        .run(
            "return fetch(arguments[0]).then(r => r.text())",
            json!([format!("/console/campaigns/{id}/failures.csv")]),
        )
        .await;
    let report = report.as_str().unwrap();
    assert!(report.starts_with("recipient,error_code,reason,error,attempts,last_attempt"));
    assert!(
        report.contains(&format!("{unreachable},131026")),
        "{report}"
    );
    assert!(report.contains(&format!("{flaky},131000")), "{report}");
    let retry = browser.text("form[action$='/retry'] button").await;
    assert!(retry.contains("(1 se pueden reintentar)"), "{retry}");
    browser.screenshot("results").await;
    browser.click("form[action$='/retry'] button").await;
    assert!(
        browser
            .text("[role=status]")
            .await
            .starts_with("1 mensajes vueltos a la cola")
    );
    browser
        .wait_text(
            "[data-live=state_text]",
            "Terminada",
            Duration::from_secs(60),
        )
        .await;
    browser.goto(&format!("{console}/campaigns/{id}")).await;
    let failures = browser
        .text("section[aria-labelledby=results-title] table")
        .await;
    assert!(
        !failures.contains("131000"),
        "the retried message failed again: {failures}"
    );

    // A reply shows with the message it answered.
    let (wamid, message_id): (String, uuid::Uuid) = sqlx::query_as(
        "SELECT wamid, id FROM messages WHERE campaign_id = $1::uuid AND recipient = $2",
    )
    .bind(&id)
    .bind(&people[0])
    .fetch_one(&env.services.pool)
    .await
    .unwrap();
    env.webhook(&inbound(
        SENDER,
        &people[0],
        "wamid.console-reply",
        json!({"type": "text", "text": {"body": "¿Hasta cuándo vale?"},
               "context": {"from": SENDER, "id": wamid}}),
    ))
    .await;
    env.eventually(
        "the reply on the page",
        Duration::from_secs(10),
        async || {
            browser.goto(&format!("{console}/campaigns/{id}")).await;
            let page = browser.text("main").await;
            (page.contains("¿Hasta cuándo vale?") && page.contains(&message_id.to_string()))
                .then_some(())
        },
    )
    .await;

    // The language switch, kept for the next pages.
    browser.click("#language option[value=en]").await;
    browser
        .wait_text(
            "[data-live=state_text]",
            "Completed",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(browser.text("#results-title").await, "Results");
    browser.screenshot("campaign").await;
    browser.goto(&format!("{console}/senders")).await;
    assert_eq!(browser.text("h1").await, "Senders");
    assert!(browser.text("table").await.contains(SENDER));
    browser.screenshot("senders").await;
    browser.goto(&format!("{console}/campaigns")).await;
    assert!(browser.text("table").await.contains("Navidad"));
    browser.screenshot("campaigns").await;
    // On a phone-sized screen nothing runs off the side: wide tables scroll in their own box.
    browser.resize(390, 844).await;
    for path in [
        format!("/campaigns/{id}"),
        "/campaigns".into(),
        "/senders".into(),
    ] {
        browser.goto(&format!("{console}{path}")).await;
        let overflow = browser
            .run(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                json!([]),
            )
            .await;
        assert_eq!(overflow, 0, "{path} is wider than a phone");
    }
    browser.goto(&format!("{console}/campaigns/{id}")).await;
    browser.screenshot("campaign-phone").await;
    browser.resize(1280, 1000).await;

    // A viewer sees campaigns but no launch, pause or retry, and a post of its own is refused.
    let (status, draft) = env
        .post(
            "/v1/campaigns",
            json!({"name": "Borrador", "template": {"name": "promo", "language": "es_MX"},
                   "sender": SENDER, "audience": {"numbers": people[..3]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let draft = draft["id"].as_str().unwrap().to_string();
    browser.delete_cookies().await;
    browser.goto(&format!("{console}/campaigns/{draft}")).await;
    browser.type_into("#email", "eva@example.com").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("form[action='/console/login'] button").await;
    browser.find("[data-estimate=eligible]").await;
    assert!(
        browser.all("form.launch").await.is_empty(),
        "a viewer sees launch"
    );
    browser.goto(&format!("{console}/campaigns/{id}")).await;
    browser.find("#results-title").await;
    for action in ["pause", "resume", "cancel", "retry"] {
        assert!(
            browser
                .all(&format!("form[action$='/{action}']"))
                .await
                .is_empty(),
            "a viewer sees {action}"
        );
    }
    let refused: Value = browser
        .run(
            "const token = document.querySelector('input[name=_csrf]').value;
             return fetch(arguments[0], {method: 'POST',
                 headers: {'content-type': 'application/x-www-form-urlencoded'},
                 body: '_csrf=' + token + '&confirm=yes'}).then(r => r.status)",
            json!([format!("/console/campaigns/{draft}/launch")]),
        )
        .await;
    assert_eq!(refused, 403);
    let (_, still) = env.get(&format!("/v1/campaigns/{draft}")).await;
    assert_eq!(still["campaign"]["state"], "draft");
    drop(browser);
    env.cleanup().await;
}

const BUILDER_SENDER: &str = "1065557002";

#[tokio::test]
async fn from_a_csv_with_mistakes_to_a_previewed_draft_in_a_real_browser() {
    let mut env = Env::start(Options {
        tweak: |c| c.console_secure_cookies = false,
        ..Options::default()
    })
    .await;
    env.sender(BUILDER_SENDER, json!(100_000), 80).await;
    // Template sync reads the business account's templates with one of its senders' tokens.
    let (status, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": BUILDER_SENDER, "business_portfolio_id": "bp-builder",
                   "tier": 100_000, "mps": 80, "access_token": "test-token", "waba_id": "waba-it"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    env.sim(
        "/_sim/templates",
        json!({"name": "promo", "language": "es_MX", "status": "APPROVED", "category": "MARKETING",
               "components": [{"type": "BODY", "text": "Hola {{1}}, tu cupón es {{2}}"},
                              {"type": "FOOTER", "text": "Responde PARAR para no recibir más"},
                              {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Parar"}]}]}),
    )
    .await;
    let (status, report) = env.post("/v1/templates/sync", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    user(&env, "ana@example.com", "marketing", None).await;
    // Six good rows; one each: invalid number, repeated number, wrong field count, no opt-in,
    // opted out, US number, missing coupon.
    let csv = CONTACTS_WITH_MISTAKES;
    let folder = std::env::temp_dir().join(format!("pregon-csv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("noviembre.csv");
    std::fs::write(&file, csv).unwrap();

    let browser = Browser::start("es").await;
    let console = format!("{}/console", env.api_url);
    browser.goto(&format!("{console}/contacts/import")).await;
    browser.type_into("#email", "ana@example.com").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("form[action='/console/login'] button").await;
    browser.type_into("#file", file.to_str().unwrap()).await;
    browser
        .click("form[enctype='multipart/form-data'] button")
        .await;
    // The mapping: a preview of the first rows, and the columns guessed from their names.
    browser.find("#preview-title").await;
    let preview = browser
        .text("section[aria-labelledby=preview-title] table")
        .await;
    assert!(
        preview.contains("Telefono") && preview.contains("Ana"),
        "{preview}"
    );
    let guessed = browser
        .run(
            "return ['phone', 'name', 'consent_column', 'evidence_column', 'list']
                 .map(id => document.getElementById(id).value)",
            json!([]),
        )
        .await;
    assert_eq!(
        guessed,
        json!(["Telefono", "Nombre", "Acepta", "Prueba", "noviembre"])
    );
    browser.screenshot("import-mapping").await;
    browser
        .click("form[action^='/console/contacts/import/'] button[type=submit]")
        .await;
    // The report lists every bad row with its number and reason.
    assert_eq!(browser.text("[data-total=rows]").await, "13");
    assert_eq!(browser.text("[data-total=created]").await, "10");
    let rows = browser
        .run(
            "return [...document.querySelectorAll('#row-errors tr[data-row]')]
                 .map(r => r.dataset.row + ':' + r.dataset.reason)",
            json!([]),
        )
        .await;
    assert_eq!(
        rows,
        json!(["7:invalid_phone_number", "8:duplicate", "9:bad_column"])
    );
    assert!(
        browser
            .text("#row-errors")
            .await
            .contains("Número de teléfono inválido")
    );
    browser.screenshot("import-report").await;

    // A campaign for the list: the template's variables mapped, with a preview for its first
    // contact rendered like a WhatsApp bubble.
    browser
        .click("a[href^='/console/campaigns/new?list_id=']")
        .await;
    browser.type_into("#name", "Buen Fin").await;
    browser
        .click("form[action='/console/campaigns/new/details'] button")
        .await;
    assert_eq!(
        browser.text("#bubble .bubble-body").await,
        "Hola Ana, tu cupón es {{2}}",
        "before the coupon is mapped"
    );
    browser
        .type_into("input[name='value.body.1']", "cliente")
        .await;
    browser
        .click("select[name='source.body.2'] option[value='attr:Cupon']")
        .await;
    browser.click("button[name=action][value=preview]").await;
    browser
        .wait_text(
            "#bubble .bubble-body",
            "Hola Ana, tu cupón es A1",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser.text("#bubble .bubble-footer").await,
        "Responde PARAR para no recibir más"
    );
    assert_eq!(browser.text(".bubble-button").await, "Parar");
    browser.screenshot("builder").await;
    browser.click("button[name=action][value=create]").await;

    // The draft's page: the estimate, the same as the API's.
    browser.find("[data-estimate=eligible]").await;
    let url = browser.url().await;
    let id = url.rsplit('/').next().unwrap().to_string();
    let (status, estimate) = env
        .post(&format!("/v1/campaigns/{id}/estimate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{estimate}");
    assert_eq!(estimate["eligible"], 6, "{estimate}");
    assert_eq!(browser.text("[data-estimate=eligible]").await, "6");
    exclusions_match(&browser, &estimate).await;
    let (_, campaign) = env.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(campaign["campaign"]["created_by"], "user:ana@example.com");
    browser.goto(&format!("{console}/templates")).await;
    assert!(
        browser
            .text("tr[data-template=promo]")
            .await
            .contains("APPROVED")
    );
    assert_eq!(
        campaign["campaign"]["variables"],
        json!({"body.1": {"attribute": "name", "default": "cliente"},
               "body.2": {"attribute": "Cupon"}})
    );

    // Contacts and consent: find a person by number in any spelling, read their consent with its
    // evidence, record an opt-out; an opt-in without evidence is refused by the API's own rule.
    browser.goto(&format!("{console}/contacts")).await;
    browser.type_into("#q", "+52 1 55 1000 0001").await;
    browser.click("form[role=search] button").await;
    browser.find("#consent-history").await;
    assert_eq!(browser.text("h1").await, "5215510000001");
    assert!(
        browser
            .text("#consent-history")
            .await
            .contains("formulario web 2026-11-01")
    );
    assert_eq!(
        browser.text("[data-consent=marketing]").await,
        "Acepta (opt-in)"
    );
    browser.click("#action option[value=opt_out]").await;
    browser
        .type_into("#evidence", "pidió la baja por teléfono")
        .await;
    browser.click("form.consent button").await;
    browser.find("[role=status]").await;
    assert_eq!(
        browser.text("[data-consent=marketing]").await,
        "Baja (opt-out)"
    );
    let (_, consent) = env.get("/v1/consent/5215510000001").await;
    assert_eq!(consent["marketing"], "opt_out", "{consent}");
    assert_eq!(
        consent["history"].as_array().unwrap().last().unwrap()["actor"],
        "user:ana@example.com"
    );
    browser.click("#action option[value=opt_in]").await;
    browser.click("form.consent button").await;
    browser
        .wait_contains("main", "an opt-in needs evidence", Duration::from_secs(10))
        .await;
    browser
        .goto(&format!("{console}/contacts/5215510000001"))
        .await;
    browser.screenshot("contact").await;
    drop(browser);
    let _ = std::fs::remove_dir_all(&folder);
    env.cleanup().await;
}

#[tokio::test]
async fn roles_and_sender_limits_hold_on_every_console_page() {
    let mut env = Env::start(Options::default()).await;
    let http = no_redirects();
    let (ours, theirs) = ("1065557011", "1065557012");
    env.sender(ours, json!(1000), 80).await;
    env.sender(theirs, json!(1000), 80).await;
    env.template("promo", "marketing").await;
    let (status, campaign) = env
        .post(
            "/v1/campaigns",
            json!({"name": "Solo de ellos", "template": {"name": "promo", "language": "es_MX"},
                   "sender": theirs, "audience": {"numbers": recipients(2, 711)}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let id = campaign["id"].as_str().unwrap().to_string();
    user(&env, "eva@example.com", "viewer", None).await;
    user(
        &env,
        "lim@example.com",
        "marketing",
        Some(&[ours.to_string()]),
    )
    .await;
    let eva = sign_in(&env, &http, "eva@example.com", PASSWORD)
        .await
        .unwrap();
    let lim = sign_in(&env, &http, "lim@example.com", PASSWORD)
        .await
        .unwrap();

    // A viewer reads campaigns, senders and templates, and nothing that needs another role.
    for path in [
        "/console/campaigns",
        "/console/senders",
        "/console/templates",
    ] {
        let (status, _) = page(&env, &http, path, &eva).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, html) = page(&env, &http, &format!("/console/campaigns/{id}"), &eva).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains("form method=\"post\" action=\"/console/campaigns/"),
        "{html}"
    );
    for path in [
        "/console/campaigns/new",
        "/console/contacts",
        "/console/contacts/import",
        "/console/contacts/5215570000001",
    ] {
        let (status, _) = page(&env, &http, path, &eva).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a viewer opened {path}");
    }

    // A user limited to one sender sees only what that sender may: not the other sender's
    // campaign, nor act on it (as if it did not exist), not the other sender, not people its
    // sender never talked to (404, as the API answers).
    let (status, html) = page(&env, &http, "/console/campaigns", &lim).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("Solo de ellos"), "{html}");
    let (status, _) = page(&env, &http, &format!("/console/campaigns/{id}"), &lim).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = page(
        &env,
        &http,
        &format!("/console/campaigns/{id}/failures.csv"),
        &lim,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, html) = page(&env, &http, "/console/senders", &lim).await;
    assert!(html.contains(ours) && !html.contains(theirs), "{html}");
    let (status, _) = page(&env, &http, "/console/contacts/5215570000001", &lim).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, html) = page(&env, &http, "/console/campaigns/new", &lim).await;
    let csrf = csrf_of(&html);
    let refused = http
        .post(format!("{}/console/campaigns/{id}/pause", env.api_url))
        .header("cookie", format!("pregon_session={lim}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("_csrf", csrf.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::NOT_FOUND,
        "paused another sender's campaign"
    );
    let (_, still) = env.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(still["campaign"]["state"], "draft");
    env.cleanup().await;
}
