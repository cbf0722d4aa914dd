//! Campaigns: their definition and state, planning (the audience written as `planned` messages),
//! the fan-out cursor, progress counters, failures and replies.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::StoreError;
use crate::domain::Category;
use crate::domain::campaign::{CampaignState, CostCount, CostKind};
use crate::domain::reason::Reason;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    pub template_name: String,
    pub template_language: String,
    #[sqlx(try_from = "String")]
    pub category: Category,
    pub senders: Vec<String>,
    #[schemars(with = "Value")]
    pub audience: Json<Value>,
    #[schemars(with = "Value")]
    pub variables: Json<Value>,
    pub start_at: Option<DateTime<Utc>>,
    #[schemars(with = "Option<Value>")]
    pub quiet_hours: Option<Json<Value>>,
    pub end_by: Option<DateTime<Utc>>,
    pub rate_cap: Option<i32>,
    #[sqlx(try_from = "String")]
    pub state: CampaignState,
    pub paused_by: Option<String>,
    pub pause_causes: Vec<String>,
    pub planned: bool,
    pub plan_cursor: i64,
    pub recipients: i64,
    pub fanout_claimed: i64,
    pub fanout_cursor: i64,
    pub api_key_id: Option<Uuid>,
    /// Who created it ("api_key:…" or "user:…"); unknown for campaigns older than the console.
    pub created_by: Option<String>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! campaign_columns {
    () => {
        "id, name, template_name, template_language, category, senders, audience, variables, start_at,
    quiet_hours, end_by, rate_cap, state, paused_by, pause_causes, planned, plan_cursor, recipients,
    fanout_claimed, fanout_cursor, api_key_id, created_by, lease_owner, created_at, launched_at, finished_at, updated_at"
    };
}

pub async fn insert_campaign(pool: &PgPool, c: &Campaign) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO campaigns (id, name, template_name, template_language, category, senders, audience,
             variables, start_at, quiet_hours, end_by, rate_cap, api_key_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(c.id)
    .bind(&c.name)
    .bind(&c.template_name)
    .bind(&c.template_language)
    .bind(c.category.as_str())
    .bind(&c.senders)
    .bind(&c.audience)
    .bind(&c.variables)
    .bind(c.start_at)
    .bind(&c.quiet_hours)
    .bind(c.end_by)
    .bind(c.rate_cap)
    .bind(c.api_key_id)
    .bind(&c.created_by)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get_campaign(pool: &PgPool, id: Uuid) -> Result<Option<Campaign>, StoreError> {
    Ok(sqlx::query_as::<_, Campaign>(concat!(
        "SELECT ",
        campaign_columns!(),
        " FROM campaigns WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The newest campaigns; with `senders`, only those whose whole pool is among them.
pub async fn list_campaigns(
    pool: &PgPool,
    senders: Option<&[String]>,
    limit: i64,
) -> Result<Vec<Campaign>, StoreError> {
    Ok(sqlx::query_as::<_, Campaign>(concat!(
        "SELECT ",
        campaign_columns!(),
        " FROM campaigns WHERE ($2::text[] IS NULL OR senders <@ $2)
          ORDER BY created_at DESC LIMIT $1"
    ))
    .bind(limit)
    .bind(senders)
    .fetch_all(pool)
    .await?)
}

/// A state change, made only from one of `from`, recorded in `campaign_events` in the same
/// transaction. None when the campaign was not in one of those states.
pub struct StateChange<'a> {
    pub from: &'a [CampaignState],
    pub to: CampaignState,
    pub paused_by: Option<&'a str>,
    pub causes: &'a [String],
    pub event: &'a str,
    pub actor: &'a str,
}

pub async fn change_state(
    pool: &PgPool,
    id: Uuid,
    change: &StateChange<'_>,
) -> Result<Option<Campaign>, StoreError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query_as::<_, Campaign>(concat!(
        "UPDATE campaigns SET state = $3, paused_by = $4, pause_causes = $5, updated_at = now(),
             launched_at = CASE WHEN $6 = 'launched' THEN now() ELSE launched_at END,
             finished_at = CASE WHEN $3 IN ('completed', 'cancelled') THEN now() ELSE finished_at END
         WHERE id = $1 AND state = ANY($2)
         RETURNING ",
        campaign_columns!()
    ))
    .bind(id)
    .bind(change.from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    .bind(change.to.as_str())
    .bind(change.paused_by)
    .bind(change.causes)
    .bind(change.event)
    .fetch_optional(&mut *tx)
    .await?;
    if updated.is_some() {
        sqlx::query(
            "INSERT INTO campaign_events (campaign_id, event, cause, actor) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(change.event)
        .bind((!change.causes.is_empty()).then(|| change.causes.join(",")))
        .bind(change.actor)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(updated)
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct CampaignEvent {
    pub event: String,
    pub cause: Option<String>,
    pub actor: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub async fn campaign_events(pool: &PgPool, id: Uuid) -> Result<Vec<CampaignEvent>, StoreError> {
    Ok(sqlx::query_as::<_, CampaignEvent>(
        "SELECT event, cause, actor, created_at FROM campaign_events WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Takes or renews the lease of every campaign that needs a runner (scheduled, running, or
/// paused automatically and waiting for its cause to clear) and is free or already ours.
pub async fn claim_runnable(
    pool: &PgPool,
    owner: &str,
    ttl: std::time::Duration,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE campaigns SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM campaigns
             WHERE (state IN ('scheduled', 'running') OR (state = 'paused' AND paused_by = 'auto'))
               AND (lease_owner = $1 OR lease_until IS NULL OR lease_until < now())
             FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

pub async fn release_lease(pool: &PgPool, id: Uuid, owner: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// One planned campaign message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMessage {
    pub id: Uuid,
    pub seq: i64,
    pub sender: String,
    pub recipient: String,
    /// The recipient's country (ISO 3166 alpha-2), for the cost counters.
    pub country: String,
    pub body: String,
}

/// Writes one chunk of planning in one transaction: the messages, the exclusions and their
/// counts, and the planning cursor. A crash leaves either all of it or none of it.
pub async fn plan_chunk(
    pool: &PgPool,
    campaign: &Campaign,
    messages: &[PlannedMessage],
    exclusions: &[(String, &'static str)],
    cursor: i64,
    done: bool,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    // The planned cost counts only the rows inserted (a chunk planned again after a crash adds
    // nothing), in the same statement.
    let inserted: i64 = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO messages (id, sender, recipient, category, message_type, template_name,
                 template_language, delivery, body, status, campaign_id, campaign_seq, country)
             SELECT u.id, u.sender, u.recipient, $5, 'template', $6, $7, 'at_most_once', u.body, 'planned', $8,
                    u.seq, u.country
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $9::bigint[], $10::text[])
                  AS u(id, sender, recipient, body, seq, country)
             ON CONFLICT (campaign_id, recipient) WHERE campaign_id IS NOT NULL DO NOTHING
             RETURNING country, sender
         ), costs AS (
             INSERT INTO campaign_costs AS k (campaign_id, kind, country, category, n)
             SELECT $8, 'planned', country, $5, count(*) FROM ins GROUP BY country ORDER BY country
             ON CONFLICT (campaign_id, kind, country, category) DO UPDATE SET n = k.n + excluded.n
         ), shares AS (
             INSERT INTO campaign_sender_shares AS s (campaign_id, sender, planned)
             SELECT $8, sender, count(*) FROM ins GROUP BY sender ORDER BY sender
             ON CONFLICT (campaign_id, sender) DO UPDATE SET planned = s.planned + excluded.planned
         )
         SELECT count(*) FROM ins",
    )
    .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.sender.clone()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.recipient.clone()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>())
    .bind(campaign.category.as_str())
    .bind(&campaign.template_name)
    .bind(&campaign.template_language)
    .bind(campaign.id)
    .bind(messages.iter().map(|m| m.seq).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.country.clone()).collect::<Vec<_>>())
    .fetch_one(&mut *tx)
    .await?;
    let inserted = inserted as u64;
    if !exclusions.is_empty() {
        sqlx::query(
            "WITH x AS (
                 INSERT INTO campaign_exclusions (campaign_id, recipient, reason)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[])
                 RETURNING reason
             )
             INSERT INTO campaign_counts AS cc (campaign_id, status, detail, n)
             SELECT $1, 'excluded', reason, count(*) FROM x GROUP BY reason ORDER BY reason
             ON CONFLICT (campaign_id, status, detail) DO UPDATE SET n = cc.n + excluded.n",
        )
        .bind(campaign.id)
        .bind(exclusions.iter().map(|e| e.0.clone()).collect::<Vec<_>>())
        .bind(exclusions.iter().map(|e| e.1).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE campaigns SET plan_cursor = $2, planned = $3, recipients = recipients + $4,
             updated_at = now() WHERE id = $1",
    )
    .bind(campaign.id)
    .bind(cursor)
    .bind(done)
    .bind(inserted as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(inserted)
}

/// A campaign message ready to be handed to RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Handoff {
    pub id: Uuid,
    pub campaign_seq: i64,
    pub sender: String,
    pub recipient: String,
    pub body: String,
    pub attempts: i32,
    pub not_before: Option<DateTime<Utc>>,
}

macro_rules! handoff_columns {
    () => {
        "SELECT id, campaign_seq, sender, recipient, body, attempts, not_before FROM messages"
    };
}

pub async fn planned_after(
    pool: &PgPool,
    campaign: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Handoff>, StoreError> {
    Ok(sqlx::query_as::<_, Handoff>(concat!(
        handoff_columns!(),
        " WHERE campaign_id = $1 AND status = 'planned' AND campaign_seq > $2
         ORDER BY campaign_seq LIMIT $3"
    ))
    .bind(campaign)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Rows marked as handed over but maybe not published (a crash between the two): still queued or
/// deferred by quiet hours, with seq in (from, through].
pub async fn handed_between(
    pool: &PgPool,
    campaign: Uuid,
    from: i64,
    through: i64,
) -> Result<Vec<Handoff>, StoreError> {
    Ok(sqlx::query_as::<_, Handoff>(concat!(
        handoff_columns!(),
        " WHERE campaign_id = $1 AND campaign_seq > $2 AND campaign_seq <= $3
           AND (status = 'queued' OR (status = 'deferred' AND status_reason = $4))
         ORDER BY campaign_seq"
    ))
    .bind(campaign)
    .bind(from)
    .bind(through)
    .bind(Reason::QuietHours.code())
    .fetch_all(pool)
    .await?)
}

/// Marks rows as handed over (queued, or deferred to the end of the recipient's quiet hours) and
/// moves the claimed mark, in one transaction, before they are published.
pub async fn mark_handed(
    pool: &PgPool,
    campaign: Uuid,
    groups: &[(Option<DateTime<Utc>>, Vec<Uuid>)],
    claimed_after: i64,
    claimed_through: i64,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // One statement per distinct `not_before` (queued now, or deferred by quiet hours until one
    // moment per UTC offset), ids as an array: no join for the planner to get wrong. The seq
    // range keeps it on the planned-rows index even with statistics from before a large
    // planning run; joined to UNNEST with such statistics it went quadratic (1.3 s a chunk).
    for (not_before, ids) in groups {
        sqlx::query(
            "UPDATE messages SET
                 status = CASE WHEN $2::timestamptz IS NULL THEN 'queued' ELSE 'deferred' END,
                 status_reason = CASE WHEN $2::timestamptz IS NULL THEN NULL ELSE $6 END,
                 not_before = $2, updated_at = now()
             WHERE campaign_id = $1 AND status = 'planned'
               AND campaign_seq > $3 AND campaign_seq <= $4 AND id = ANY($5)",
        )
        .bind(campaign)
        .bind(not_before)
        .bind(claimed_after)
        .bind(claimed_through)
        .bind(ids)
        .bind(Reason::QuietHours.code())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE campaigns SET fanout_claimed = GREATEST(fanout_claimed, $2), updated_at = now() WHERE id = $1",
    )
    .bind(campaign)
    .bind(claimed_through)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Everything through `seq` is published (confirmed by RabbitMQ).
pub async fn set_fanout_cursor(pool: &PgPool, campaign: Uuid, seq: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE campaigns SET fanout_cursor = $2, updated_at = now() WHERE id = $1")
        .bind(campaign)
        .bind(seq)
        .execute(pool)
        .await?;
    Ok(())
}

/// Moves the cursor back before the earliest planned row behind it (messages handed back on
/// pause, or failures queued again); returns the new cursor when it moved.
pub async fn rewind(pool: &PgPool, campaign: Uuid) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE campaigns c SET fanout_cursor = p.seq - 1, fanout_claimed = p.seq - 1, updated_at = now()
         FROM (SELECT min(campaign_seq) AS seq FROM messages WHERE campaign_id = $1 AND status = 'planned') p
         WHERE c.id = $1 AND p.seq IS NOT NULL AND p.seq <= c.fanout_cursor
         RETURNING c.fanout_cursor",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await?)
}

/// Campaigns ops watch: scheduled, running or paused, and those finished within the last hour;
/// the newest `$1`.
macro_rules! watched_campaigns {
    () => {
        "WITH watched AS (
           SELECT id, name FROM campaigns
            WHERE state IN ('scheduled', 'running', 'paused')
               OR finished_at > now() - interval '1 hour'
            ORDER BY created_at DESC LIMIT $1) "
    };
}

/// The watched campaigns' message counts by status (`campaign_counts`, summed over details).
pub async fn watched_counts(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(Uuid, String, String, i64)>, StoreError> {
    let rows = sqlx::query(concat!(
        watched_campaigns!(),
        "SELECT w.id, w.name, c.status, sum(c.n)::bigint
           FROM watched w JOIN campaign_counts c ON c.campaign_id = w.id
          GROUP BY w.id, w.name, c.status"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The watched campaigns' cost counters, by campaign (with its name).
pub async fn watched_costs(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(Uuid, String, CostCount)>, StoreError> {
    let rows = sqlx::query(concat!(
        watched_campaigns!(),
        "SELECT w.id, w.name, k.kind, k.country, k.category, k.n
           FROM watched w JOIN campaign_costs k ON k.campaign_id = w.id"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), r.get(1), cost_count(r, 2)?)))
        .collect())
}

/// A campaign's cost counters: planned (the estimate) and billed, by country and category.
pub async fn costs(pool: &PgPool, campaign: Uuid) -> Result<Vec<CostCount>, StoreError> {
    let rows = sqlx::query(
        "SELECT kind, country, category, n FROM campaign_costs WHERE campaign_id = $1 AND n <> 0",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().filter_map(|r| cost_count(r, 0)).collect())
}

/// One counter row, its columns (kind, country, category, n) from `at` on. The table checks the
/// kind, so one this build does not know (a newer one's) is skipped, not fatal.
fn cost_count(r: &sqlx::postgres::PgRow, at: usize) -> Option<CostCount> {
    Some(CostCount {
        kind: CostKind::parse(r.get(at))?,
        country: r.get(at + 1),
        category: r.get(at + 2),
        n: r.get(at + 3),
    })
}

/// How many of a campaign's recipients each sender was given at planning.
pub async fn sender_shares(
    pool: &PgPool,
    campaign: Uuid,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT sender, planned FROM campaign_sender_shares WHERE campaign_id = $1 ORDER BY sender",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await?)
}

/// Counts by status (summed over details) of several campaigns: (campaign, status, count).
pub async fn counts_of(
    pool: &PgPool,
    campaigns: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT campaign_id, status, sum(n)::bigint FROM campaign_counts
         WHERE campaign_id = ANY($1) GROUP BY 1, 2",
    )
    .bind(campaigns)
    .fetch_all(pool)
    .await?)
}

/// Progress counters: (status, detail, count), including `excluded` at planning.
pub async fn counts(
    pool: &PgPool,
    campaign: Uuid,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT status, detail, n FROM campaign_counts WHERE campaign_id = $1 AND n <> 0
         ORDER BY status, detail",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Marks what was never handed over as cancelled; queued ones are cancelled by the worker.
pub async fn cancel_planned(
    pool: &PgPool,
    campaign: Uuid,
    reason: Reason,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE messages SET status = 'cancelled', status_reason = $2, updated_at = now()
         WHERE campaign_id = $1 AND status = 'planned'",
    )
    .bind(campaign)
    .bind(reason.code())
    .execute(pool)
    .await?
    .rows_affected())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Failure {
    pub id: Uuid,
    pub campaign_seq: i64,
    pub recipient: String,
    pub last_error_code: Option<i64>,
    pub status_reason: Option<String>,
    pub last_error: Option<String>,
    pub attempts: i32,
    pub updated_at: DateTime<Utc>,
}

pub async fn failures_after(
    pool: &PgPool,
    campaign: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Failure>, StoreError> {
    Ok(sqlx::query_as::<_, Failure>(
        "SELECT id, campaign_seq, recipient, last_error_code, status_reason, last_error, attempts, updated_at
         FROM messages WHERE campaign_id = $1 AND status = 'failed' AND campaign_seq > $2
         ORDER BY campaign_seq LIMIT $3",
    )
    .bind(campaign)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Hands failed messages back to the fan-out.
pub async fn requeue_failed(
    pool: &PgPool,
    campaign: Uuid,
    ids: &[Uuid],
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE messages SET status = 'planned', status_reason = $3, not_before = NULL,
             updated_at = now()
         WHERE campaign_id = $1 AND id = ANY($2) AND status = 'failed'",
    )
    .bind(campaign)
    .bind(ids)
    .bind(Reason::RetryRequested.code())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Seconds since the longest-paused campaign was paused (0 when none is).
pub async fn longest_pause_seconds(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(max(extract(epoch FROM now() - e.created_at)), 0)::bigint
         FROM campaigns c
         CROSS JOIN LATERAL (SELECT created_at FROM campaign_events
                             WHERE campaign_id = c.id ORDER BY id DESC LIMIT 1) e
         WHERE c.state = 'paused'",
    )
    .fetch_one(pool)
    .await?)
}

/// Who planning left out of a campaign, and why, after `after` in the order it was recorded:
/// (position, recipient as given, reason).
pub async fn exclusions_after(
    pool: &PgPool,
    campaign: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT seq, recipient, reason FROM campaign_exclusions
         WHERE campaign_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(campaign)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    pub wamid: String,
    pub recipient: String,
    pub message_type: String,
    pub text: Option<String>,
    pub payload: Option<String>,
    pub message_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

pub async fn replies(pool: &PgPool, campaign: Uuid, limit: i64) -> Result<Vec<Reply>, StoreError> {
    Ok(sqlx::query_as::<_, Reply>(
        "SELECT i.wamid, i.recipient, i.message_type, i.text, i.payload, m.id AS message_id, i.occurred_at
         FROM inbound_messages i JOIN messages m ON m.id = i.reply_to
         WHERE m.campaign_id = $1 ORDER BY i.occurred_at DESC LIMIT $2",
    )
    .bind(campaign)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
