//! Signing people in and out: argon2id password hashes, sessions in PostgreSQL behind an
//! HttpOnly, SameSite cookie, a CSRF token on every form, and failed sign-ins counted per address
//! and per client to slow down guessing.

use std::net::SocketAddr;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::i18n::{Locale, Text};
use super::page::{self, Shown};
use crate::api::ApiState;
use crate::api::auth::{Caller, Principal, Role};
use crate::store::{StoreError, users};

const SESSION_COOKIE: &str = "pregon_session";
const LOGIN_CSRF_COOKIE: &str = "pregon_login_csrf";
const LANGUAGE_COOKIE: &str = "pregon_lang";

/// Failed sign-ins allowed within [`FAILURE_WINDOW`]: per address (someone guessing one
/// person's password) and per client (someone trying many addresses).
const FAILURES_PER_EMAIL: i64 = 5;
const FAILURES_PER_CLIENT: i64 = 30;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The largest form the console takes (sign-in, an action): no page posts more.
const FORM_LIMIT: usize = 64 * 1024;

/// Roles a person may have: a console user is never a `service` (that is what API keys are for).
pub const USER_ROLES: [Role; 3] = [Role::Admin, Role::Marketing, Role::Viewer];

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("a user with the email {0} exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An argon2id hash (Argon2's defaults: 19 MiB, 2 passes, OWASP's recommendation), salted with
/// 128 random bits, in the PHC string format.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::encode_b64(Uuid::new_v4().as_bytes())
        .map_err(|e| UserError::Invalid(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Invalid(e.to_string()))
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Adds a console user (`pregon user create`).
pub async fn create_user(
    pool: &sqlx::PgPool,
    email: &str,
    password: &str,
    role: &str,
    senders: Option<&[String]>,
) -> Result<users::User, UserError> {
    let email = normalize_email(email)
        .ok_or_else(|| UserError::Invalid(format!("{email:?} is not an email address")))?;
    let role = Role::parse(role)
        .filter(|r| USER_ROLES.contains(r))
        .ok_or_else(|| UserError::Invalid("role is admin, marketing or viewer".into()))?;
    if password.chars().count() < 12 {
        return Err(UserError::Invalid(
            "the password must be at least 12 characters".into(),
        ));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| UserError::Invalid(e.to_string()))??;
    users::insert_user(pool, &email, &hash, role.as_str(), senders)
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                UserError::Exists(email.clone())
            } else {
                UserError::Store(e)
            }
        })
}

/// Lower-cased and trimmed; None when it cannot be an address.
fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty()
        && domain.contains('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.len() <= 254)
        .then_some(email)
}

/// A generated password: 20 hex digits of a random UUID (74 random bits), what the demo and
/// `pregon user create` without --password-stdin hand out.
pub fn generate_password() -> String {
    Uuid::new_v4().simple().to_string()[..20].to_string()
}

fn random_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Equal tokens, compared without an early exit (no timing hint of how much matched).
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn set_cookie(state: &ApiState, name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let secure = if state.services.config.console_secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let age = max_age.map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Lax{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The reader's language: the switch's cookie, else the browser's `Accept-Language`.
pub fn locale_of(headers: &HeaderMap) -> Locale {
    cookie(headers, LANGUAGE_COOKIE)
        .and_then(Locale::parse)
        .unwrap_or_else(|| {
            Locale::negotiate(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        })
}

/// The reader's language, for pages that need no sign-in.
pub struct Lang(pub Locale);

impl FromRequestParts<ApiState> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(Lang(locale_of(&parts.headers)))
    }
}

/// A signed-in person: the [`Caller`] their role and sender limits make, their session's CSRF
/// token, and their language. Without a live session a page redirects to the sign-in form.
pub struct Signed {
    pub caller: Caller,
    pub email: String,
    pub csrf: String,
    pub locale: Locale,
}

impl FromRequestParts<ApiState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let locale = locale_of(&parts.headers);
        let to_login = || {
            let next = parts.uri.path();
            Redirect::to(&format!(
                "/console/login?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let config = &state.services.config;
        let found = users::session_user(
            &state.services.pool,
            &token_hash(token),
            config.console_session_idle.0,
            config.console_session_lifetime.0,
        )
        .await
        .map_err(|e| Shown::internal(locale, e).into_response())?;
        let Some((user, csrf)) = found else {
            return Err(to_login());
        };
        let role = Role::parse(&user.role).unwrap_or(Role::Viewer);
        Ok(Signed {
            caller: Caller {
                principal: Principal::User {
                    id: user.id,
                    email: user.email.clone(),
                },
                role,
                senders: user.senders,
            },
            email: user.email,
            csrf,
            locale,
        })
    }
}

impl Signed {
    /// The posted token is this session's, or the page that says the form expired (403).
    fn check_csrf(&self, token: Option<&str>) -> Result<(), Shown> {
        if token.is_some_and(|t| same_token(t, &self.csrf)) {
            Ok(())
        } else {
            Err(Shown::text(
                self.locale,
                StatusCode::FORBIDDEN,
                Text::FormExpired,
            ))
        }
    }

    /// The person's role allows `permission`, or the page that says it does not (403).
    pub fn require(&self, permission: crate::api::auth::Permission) -> Result<(), Shown> {
        self.caller
            .require(permission)
            .map_err(|e| Shown::api(self.locale, e))
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

/// A form posted by a signed-in person, its CSRF token checked: a console handler that takes
/// `Posted<F>` cannot run for a forged cross-site post.
pub struct Posted<F> {
    pub signed: Signed,
    pub form: F,
}

impl<F: DeserializeOwned + Send> FromRequest<ApiState> for Posted<F> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let locale = signed.locale;
        let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
            Shown::status(locale, StatusCode::PAYLOAD_TOO_LARGE, "").into_response()
        })?;
        let token = serde_urlencoded::from_bytes::<CsrfField>(&bytes)
            .ok()
            .and_then(|f| f.csrf);
        signed
            .check_csrf(token.as_deref())
            .map_err(IntoResponse::into_response)?;
        let form = serde_urlencoded::from_bytes::<F>(&bytes).map_err(|e| {
            Shown::status(locale, StatusCode::BAD_REQUEST, &e.to_string()).into_response()
        })?;
        Ok(Posted { signed, form })
    }
}

/// A file posted by a signed-in person (`multipart/form-data`), its CSRF token checked like
/// [`Posted`]'s: the file's name and bytes.
pub struct Uploaded {
    pub signed: Signed,
    pub file_name: String,
    pub body: axum::body::Bytes,
}

impl FromRequest<ApiState> for Uploaded {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let locale = signed.locale;
        let bad =
            |detail: &str| Shown::status(locale, StatusCode::BAD_REQUEST, detail).into_response();
        let request = Request::from_parts(parts, body);
        let mut multipart = axum::extract::Multipart::from_request(request, state)
            .await
            .map_err(|e| bad(&e.body_text()))?;
        let (mut token, mut file) = (None, None);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| bad(&e.body_text()))?
        {
            match field.name() {
                Some("_csrf") => token = Some(field.text().await.map_err(|e| bad(&e.body_text()))?),
                Some("file") => {
                    let name = field.file_name().unwrap_or("upload.csv").to_string();
                    file = Some((name, field.bytes().await.map_err(|e| bad(&e.body_text()))?));
                }
                _ => {}
            }
        }
        signed
            .check_csrf(token.as_deref())
            .map_err(IntoResponse::into_response)?;
        let (file_name, body) = file.ok_or_else(|| bad("file: choose a CSV file"))?;
        Ok(Uploaded {
            signed,
            file_name,
            body,
        })
    }
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct Empty {}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only a console page may be where sign-in leads (never another site).
fn safe_next(next: Option<&str>) -> &str {
    next.filter(|n| n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/console/campaigns")
}

pub async fn login_page(
    State(state): State<ApiState>,
    Lang(locale): Lang,
    Query(query): Query<LoginQuery>,
) -> Response {
    login_form(&state, locale, query.next.as_deref(), None, StatusCode::OK)
}

/// The sign-in form, with a fresh CSRF token in a cookie and in the form (a double submit: a
/// sign-in posted from another site cannot read the cookie to copy it).
fn login_form(
    state: &ApiState,
    locale: Locale,
    next: Option<&str>,
    problem: Option<Text>,
    status: StatusCode,
) -> Response {
    let csrf = random_token();
    let t = |text: Text| text.get(locale);
    let body = html! {
        main id="main" class="narrow" {
            h1 { (t(Text::SignInTitle)) }
            @if let Some(problem) = problem {
                p class="problem" role="alert" { (t(problem)) }
            }
            form method="post" action="/console/login" {
                input type="hidden" name="_csrf" value=(csrf);
                input type="hidden" name="next" value=(safe_next(next));
                label for="email" { (t(Text::Email)) }
                input id="email" name="email" type="email" autocomplete="username" required autofocus;
                label for="password" { (t(Text::Password)) }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { (t(Text::SignIn)) }
            }
        }
    };
    let mut response = (
        status,
        page::document(locale, t(Text::SignInTitle), None, body),
    )
        .into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            state,
            LOGIN_CSRF_COOKIE,
            &csrf,
            Some(Duration::from_secs(3600)),
        ),
    );
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    email: String,
    password: String,
    next: Option<String>,
}

/// The peer's address (behind a proxy: the proxy's, so the per-client limit is then shared).
fn client_of(peer: Option<&ConnectInfo<SocketAddr>>) -> String {
    peer.map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

pub async fn login(State(state): State<ApiState>, request: Request) -> Response {
    let locale = locale_of(request.headers());
    let headers = request.headers().clone();
    let client = client_of(request.extensions().get::<ConnectInfo<SocketAddr>>());
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), FORM_LIMIT).await else {
        return Shown::status(locale, StatusCode::PAYLOAD_TOO_LARGE, "").into_response();
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&bytes) else {
        return login_form(
            &state,
            locale,
            None,
            Some(Text::BadCredentials),
            StatusCode::BAD_REQUEST,
        );
    };
    let next = form.next.as_deref();
    if !cookie(&headers, LOGIN_CSRF_COOKIE).is_some_and(|c| same_token(c, &form.csrf)) {
        return login_form(
            &state,
            locale,
            next,
            Some(Text::FormExpired),
            StatusCode::FORBIDDEN,
        );
    }
    let pool = &state.services.pool;
    let email = normalize_email(&form.email).unwrap_or_default();
    match users::recent_login_failures(pool, &email, &client, FAILURE_WINDOW).await {
        Ok((by_email, by_client))
            if by_email >= FAILURES_PER_EMAIL || by_client >= FAILURES_PER_CLIENT =>
        {
            let mut refused = login_form(
                &state,
                locale,
                next,
                Some(Text::TooManyAttempts),
                StatusCode::TOO_MANY_REQUESTS,
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("900"));
            return refused;
        }
        Ok(_) => {}
        Err(e) => return Shown::internal(locale, e).into_response(),
    }
    let user = match users::user_by_email(pool, &email).await {
        Ok(user) => user.filter(|u| u.disabled_at.is_none()),
        Err(e) => return Shown::internal(locale, e).into_response(),
    };
    // Unknown addresses cost a hash too, so the answer's timing does not tell which exist.
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let password = form.password.clone();
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => password_matches(&password, &hash),
        None => {
            let _ = hash_password(&password);
            false
        }
    })
    .await
    .unwrap_or(false);
    let Some(user) = user.filter(|_| matches) else {
        if let Err(e) = users::record_login_failure(pool, &email, &client).await {
            return Shown::internal(locale, e).into_response();
        }
        tracing::info!(%client, "console sign-in refused");
        return login_form(
            &state,
            locale,
            next,
            Some(Text::BadCredentials),
            StatusCode::UNAUTHORIZED,
        );
    };
    let token = random_token();
    let csrf = random_token();
    let idle = state.services.config.console_session_idle.0;
    let created = async {
        users::clear_login_failures(pool, &email).await?;
        users::insert_session(pool, &token_hash(&token), user.id, &csrf, idle).await
    };
    if let Err(e) = created.await {
        return Shown::internal(locale, e).into_response();
    }
    tracing::info!(user = %user.email, "console sign-in");
    let mut response = Redirect::to(safe_next(next)).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &token, None),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_CSRF_COOKIE, "", Some(Duration::ZERO)),
    );
    response
}

fn signed_out(state: &ApiState) -> Response {
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, SESSION_COOKIE, "", Some(Duration::ZERO)),
    );
    response
}

pub async fn logout(State(state): State<ApiState>, request: Request) -> Response {
    let token = cookie(request.headers(), SESSION_COOKIE).map(str::to_string);
    let posted = Posted::<Empty>::from_request(request, &state).await;
    if let (Ok(_), Some(token)) = (posted, token)
        && let Err(e) = users::delete_session(&state.services.pool, &token_hash(&token)).await
    {
        tracing::warn!(error = %e, "could not end a console session");
    }
    signed_out(&state)
}

pub async fn logout_everywhere(State(state): State<ApiState>, posted: Posted<Empty>) -> Response {
    let signed = posted.signed;
    if let Principal::User { id, .. } = signed.caller.principal {
        match users::delete_user_sessions(&state.services.pool, id).await {
            Ok(n) => tracing::info!(user = %signed.email, sessions = n, "signed out everywhere"),
            Err(e) => return Shown::internal(signed.locale, e).into_response(),
        }
    }
    signed_out(&state)
}

#[derive(Deserialize)]
pub struct LanguageForm {
    language: String,
    back: Option<String>,
}

/// The language switch: a cookie, then back to the page it was used on. It works signed out too
/// (the sign-in page has it), so it needs no CSRF token: it changes nothing but the reader's view.
pub async fn set_language(
    State(state): State<ApiState>,
    Lang(locale): Lang,
    body: axum::body::Bytes,
) -> Response {
    let form = serde_urlencoded::from_bytes::<LanguageForm>(&body);
    let Some((form, chosen)) = form
        .ok()
        .and_then(|f| Some((Locale::parse(&f.language)?, f)))
        .map(|(l, f)| (f, l))
    else {
        return Shown::status(
            locale,
            StatusCode::BAD_REQUEST,
            "language is es, en or pt-BR",
        )
        .into_response();
    };
    let mut response = Redirect::to(safe_next(form.back.as_deref())).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            LANGUAGE_COOKIE,
            chosen.tag(),
            Some(Duration::from_secs(365 * 86_400)),
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches("correct horse battery", &hash));
        assert!(!password_matches("correct horse batterY", &hash));
        assert!(!password_matches("x", "not a hash"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn emails_next_pages_and_tokens() {
        for (raw, want) in [
            (" Ana@Example.COM ", Some("ana@example.com")),
            ("ana@localhost", None),
            ("@example.com", None),
            ("a b@example.com", None),
            ("no-at.example.com", None),
        ] {
            assert_eq!(normalize_email(raw).as_deref(), want, "{raw:?}");
        }
        for (next, want) in [
            (Some("/console/campaigns/1"), "/console/campaigns/1"),
            (Some("https://evil.example/console"), "/console/campaigns"),
            (Some("//evil.example"), "/console/campaigns"),
            (Some("/console\\@evil"), "/console/campaigns"),
            (None, "/console/campaigns"),
        ] {
            assert_eq!(safe_next(next), want);
        }
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; pregon_session=xyz"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
    }
}
