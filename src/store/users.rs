//! Console users, their sessions and failed sign-ins. Passwords and session secrets arrive here
//! already hashed: this module never sees one in the clear.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub senders: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

macro_rules! user_columns {
    () => {
        "u.id, u.email, u.password_hash, u.role, u.senders, u.created_at, u.disabled_at"
    };
}

/// A new user; `StoreError::is_unique_violation` tells an address already taken.
pub async fn insert_user(
    pool: &PgPool,
    email: &str,
    password_hash: &str,
    role: &str,
    senders: Option<&[String]>,
) -> Result<User, StoreError> {
    Ok(sqlx::query_as::<_, User>(concat!(
        "INSERT INTO users AS u (id, email, password_hash, role, senders) VALUES ($1, $2, $3, $4, $5)
         RETURNING ",
        user_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(password_hash)
    .bind(role)
    .bind(senders)
    .fetch_one(pool)
    .await?)
}

pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<User>, StoreError> {
    Ok(sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users u WHERE u.email = $1"
    ))
    .bind(email)
    .fetch_optional(pool)
    .await?)
}

pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, StoreError> {
    Ok(sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users u ORDER BY u.email"
    ))
    .fetch_all(pool)
    .await?)
}

/// Stops a user signing in and ends their sessions, in one transaction.
pub async fn disable_user(pool: &PgPool, email: &str) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE users SET disabled_at = COALESCE(disabled_at, now()) WHERE email = $1 RETURNING id",
    )
    .bind(email)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id.is_some())
}

pub async fn insert_session(
    pool: &PgPool,
    token_hash: &[u8],
    user: Uuid,
    csrf_token: &str,
    idle: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO console_sessions (token_hash, user_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(token_hash)
    .bind(user)
    .bind(csrf_token)
    .bind(idle.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// The signed-in user of a live session and the session's CSRF token. A session in use has its
/// idle expiry pushed back (at most once a minute, so reads stay reads); one past its expiry,
/// past its absolute lifetime, or of a disabled user signs no one in.
pub async fn session_user(
    pool: &PgPool,
    token_hash: &[u8],
    idle: Duration,
    lifetime: Duration,
) -> Result<Option<(User, String)>, StoreError> {
    let row: Option<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT s.user_id, s.csrf_token, s.last_seen_at FROM console_sessions s
         JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > now()
           AND s.created_at > now() - make_interval(secs => $2) AND u.disabled_at IS NULL",
    )
    .bind(token_hash)
    .bind(lifetime.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some((user_id, csrf, last_seen)) = row else {
        return Ok(None);
    };
    if Utc::now() - last_seen > chrono::Duration::minutes(1) {
        sqlx::query(
            "UPDATE console_sessions SET last_seen_at = now(),
                 expires_at = now() + make_interval(secs => $2) WHERE token_hash = $1",
        )
        .bind(token_hash)
        .bind(idle.as_secs_f64())
        .execute(pool)
        .await?;
    }
    let user = sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users u WHERE u.id = $1"
    ))
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    Ok(Some((user, csrf)))
}

pub async fn delete_session(pool: &PgPool, token_hash: &[u8]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Signs a user out of every browser.
pub async fn delete_user_sessions(pool: &PgPool, user: Uuid) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(user)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

pub async fn record_login_failure(
    pool: &PgPool,
    email: &str,
    client: &str,
) -> Result<(), StoreError> {
    // Old rows go as new ones come: the table holds about one window's worth.
    sqlx::query(
        "WITH gone AS (DELETE FROM login_failures WHERE failed_at < now() - interval '1 day')
         INSERT INTO login_failures (email, client) VALUES ($1, $2)",
    )
    .bind(email)
    .bind(client)
    .execute(pool)
    .await?;
    Ok(())
}

/// Failed sign-ins within `window`: for this address, and from this client.
pub async fn recent_login_failures(
    pool: &PgPool,
    email: &str,
    client: &str,
    window: Duration,
) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM login_failures
             WHERE email = $1 AND failed_at > now() - make_interval(secs => $3)),
           (SELECT count(*) FROM login_failures
             WHERE client = $2 AND failed_at > now() - make_interval(secs => $3))",
    )
    .bind(email)
    .bind(client)
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await?)
}

/// A successful sign-in forgives the address's failures (not the client's).
pub async fn clear_login_failures(pool: &PgPool, email: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM login_failures WHERE email = $1")
        .bind(email)
        .execute(pool)
        .await?;
    Ok(())
}

/// Keeps an uploaded file for the next step; uploads older than a day go with it.
pub async fn insert_upload(
    pool: &PgPool,
    user: Uuid,
    file_name: &str,
    body: &[u8],
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM console_uploads WHERE created_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO console_uploads (id, user_id, file_name, body) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(user)
    .bind(file_name)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// An upload of this user (another user's is not found): its file name and bytes.
pub async fn upload(
    pool: &PgPool,
    id: Uuid,
    user: Uuid,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    Ok(
        sqlx::query_as(
            "SELECT file_name, body FROM console_uploads WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await?,
    )
}

pub async fn delete_upload(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM console_uploads WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
