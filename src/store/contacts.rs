//! Contacts, lists and imports; pages of contacts and of the consent log for CSV export and for
//! rebuilding the Redis consent copy.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;

use super::StoreError;

/// One contact as an import gives it (already validated and normalised).
#[derive(Debug, Clone, PartialEq)]
pub struct ContactInput {
    pub phone: String,
    pub name: Option<String>,
    pub language: Option<String>,
    pub country: String,
    pub attributes: Value,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ContactRow {
    pub id: i64,
    pub phone: String,
    pub name: Option<String>,
    pub language: Option<String>,
    pub country: String,
    #[schemars(with = "Value")]
    pub attributes: sqlx::types::Json<Value>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create_import(
    pool: &PgPool,
    id: Uuid,
    list: Option<&str>,
    actor: &str,
) -> Result<Option<Uuid>, StoreError> {
    let list_id = match list {
        Some(name) => {
            let list_id = Uuid::now_v7();
            sqlx::query("INSERT INTO contact_lists (id, name) VALUES ($1, $2)")
                .bind(list_id)
                .bind(name)
                .execute(pool)
                .await?;
            Some(list_id)
        }
        None => None,
    };
    sqlx::query("INSERT INTO contact_imports (id, list_id, actor) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(list_id)
        .bind(actor)
        .execute(pool)
        .await?;
    Ok(list_id)
}

/// Which of these numbers this import already wrote (a repeated row in the file).
pub async fn touched_by_import(
    pool: &PgPool,
    import: Uuid,
    phones: &[String],
) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT phone FROM contacts WHERE phone = ANY($1) AND last_import = $2")
            .bind(phones)
            .bind(import)
            .fetch_all(pool)
            .await?,
    )
}

/// Inserts or merges contacts (attributes merged, tags added, name and language kept unless
/// given) and adds them to the import's list; returns (created, updated, ids by phone).
pub async fn upsert_contacts(
    pool: &PgPool,
    import: Uuid,
    list: Option<Uuid>,
    rows: &[ContactInput],
) -> Result<(u64, u64, Vec<(String, i64)>), StoreError> {
    let tags: Vec<Value> = rows.iter().map(|r| serde_json::json!(r.tags)).collect();
    let result = sqlx::query(
        "WITH up AS (
             INSERT INTO contacts AS c (phone, name, language, country, attributes, tags, last_import)
             SELECT u.phone, u.name, u.language, u.country, u.attributes,
                    ARRAY(SELECT jsonb_array_elements_text(u.tags)), $7
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[])
                  AS u(phone, name, language, country, attributes, tags)
             ON CONFLICT (phone) DO UPDATE SET
                 name = COALESCE(EXCLUDED.name, c.name),
                 language = COALESCE(EXCLUDED.language, c.language),
                 attributes = c.attributes || EXCLUDED.attributes,
                 tags = ARRAY(SELECT DISTINCT t FROM unnest(c.tags || EXCLUDED.tags) t ORDER BY t),
                 last_import = EXCLUDED.last_import,
                 updated_at = now()
             RETURNING c.id, c.phone, (xmax = 0) AS created
         ), listed AS (
             INSERT INTO contact_list_members (list_id, contact_id)
             SELECT $8, id FROM up WHERE $8::uuid IS NOT NULL
             ON CONFLICT DO NOTHING
         )
         SELECT id, phone, created FROM up",
    )
    .bind(rows.iter().map(|r| r.phone.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.language.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.country.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.attributes.clone()).collect::<Vec<_>>())
    .bind(tags)
    .bind(import)
    .bind(list)
    .fetch_all(pool)
    .await?;
    let created = result.iter().filter(|r| r.get::<bool, _>(2)).count() as u64;
    let ids = result
        .iter()
        .map(|r| (r.get::<String, _>(1), r.get::<i64, _>(0)))
        .collect();
    Ok((created, result.len() as u64 - created, ids))
}

/// Row errors of an import, kept so the whole report can be fetched later.
pub async fn insert_import_errors(
    pool: &PgPool,
    import: Uuid,
    errors: &[ImportError],
) -> Result<(), StoreError> {
    if errors.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO contact_import_errors (import_id, row_number, reason, field, value)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(import)
    .bind(errors.iter().map(|e| e.row as i64).collect::<Vec<_>>())
    .bind(errors.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
    .bind(errors.iter().map(|e| e.field.clone()).collect::<Vec<_>>())
    .bind(errors.iter().map(|e| e.value.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ImportError {
    #[sqlx(rename = "row_number", try_from = "i64")]
    pub row: u64,
    pub reason: String,
    pub field: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ImportTotals {
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub errors: u64,
    pub consent_events: u64,
}

pub async fn finish_import(
    pool: &PgPool,
    import: Uuid,
    totals: &ImportTotals,
    state: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE contact_imports SET rows = $2, created = $3, updated = $4, errors = $5,
             consent_events = $6, state = $7, finished_at = now() WHERE id = $1",
    )
    .bind(import)
    .bind(totals.rows as i64)
    .bind(totals.created as i64)
    .bind(totals.updated as i64)
    .bind(totals.errors as i64)
    .bind(totals.consent_events as i64)
    .bind(state)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn import_errors(
    pool: &PgPool,
    import: Uuid,
    after_row: i64,
    limit: i64,
) -> Result<Vec<ImportError>, StoreError> {
    Ok(sqlx::query_as::<_, ImportError>(
        "SELECT row_number, reason, field, value FROM contact_import_errors
         WHERE import_id = $1 AND row_number > $2 ORDER BY row_number, reason LIMIT $3",
    )
    .bind(import)
    .bind(after_row)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn import_exists(pool: &PgPool, import: Uuid) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM contact_imports WHERE id = $1)")
            .bind(import)
            .fetch_one(pool)
            .await?,
    )
}

pub async fn list_exists(pool: &PgPool, list: Uuid) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM contact_lists WHERE id = $1)")
            .bind(list)
            .fetch_one(pool)
            .await?,
    )
}

macro_rules! contact_columns {
    () => {
        "id, phone, name, language, country, attributes, tags, created_at, updated_at"
    };
}

/// What a campaign reads of a contact to check and address it: no tags or timestamps, which a
/// million-recipient audience would otherwise decode for nothing.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AudienceContact {
    pub id: i64,
    pub phone: String,
    pub name: Option<String>,
    pub language: Option<String>,
    pub country: String,
    pub attributes: sqlx::types::Json<Value>,
}

macro_rules! audience_columns {
    () => {
        "id, phone, name, language, country, attributes"
    };
}

/// Creates a contact or replaces its profile (consent is a separate log and is not touched);
/// returns the row and whether it was created.
pub async fn put_contact(
    pool: &PgPool,
    c: &ContactInput,
) -> Result<(ContactRow, bool), StoreError> {
    let row = sqlx::query(concat!(
        "INSERT INTO contacts AS c (phone, name, language, country, attributes, tags)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (phone) DO UPDATE SET
             name = EXCLUDED.name, language = EXCLUDED.language, country = EXCLUDED.country,
             attributes = EXCLUDED.attributes, tags = EXCLUDED.tags, updated_at = now()
         RETURNING (xmax = 0) AS created, ",
        contact_columns!()
    ))
    .bind(&c.phone)
    .bind(&c.name)
    .bind(&c.language)
    .bind(&c.country)
    .bind(&c.attributes)
    .bind(&c.tags)
    .fetch_one(pool)
    .await?;
    let created: bool = row.try_get("created")?;
    Ok((ContactRow::from_row(&row)?, created))
}

/// Refreshes the planner's statistics of contacts and list members (after a bulk load).
pub async fn refresh_statistics(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("ANALYZE contacts, contact_list_members")
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn contact(pool: &PgPool, phone: &str) -> Result<Option<ContactRow>, StoreError> {
    Ok(sqlx::query_as::<_, ContactRow>(concat!(
        "SELECT ",
        contact_columns!(),
        " FROM contacts WHERE phone = $1"
    ))
    .bind(phone)
    .fetch_optional(pool)
    .await?)
}

/// Removes a contact and its list memberships; the consent log stays, as the audit record.
pub async fn delete_contact(pool: &PgPool, phone: &str) -> Result<bool, StoreError> {
    let deleted: Option<i64> = sqlx::query_scalar(
        "WITH gone AS (SELECT id FROM contacts WHERE phone = $1),
              members AS (DELETE FROM contact_list_members WHERE contact_id IN (SELECT id FROM gone))
         DELETE FROM contacts WHERE id IN (SELECT id FROM gone) RETURNING id",
    )
    .bind(phone)
    .fetch_optional(pool)
    .await?;
    Ok(deleted.is_some())
}

/// Who a campaign audience selects; each part optional.
pub struct AudienceFilter<'a> {
    pub tags: Option<&'a [String]>,
    /// Every tag rather than any of them.
    pub all_tags: bool,
    pub attributes: Option<&'a Value>,
    pub list: Option<Uuid>,
}

/// The contacts of an audience after `after_id`, in id order.
pub async fn audience_page(
    pool: &PgPool,
    filter: &AudienceFilter<'_>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<AudienceContact>, StoreError> {
    Ok(sqlx::query_as::<_, AudienceContact>(concat!(
        "SELECT ",
        audience_columns!(),
        " FROM contacts c
         WHERE id > $1
           AND ($2::text[] IS NULL OR (CASE WHEN $3 THEN tags @> $2 ELSE tags && $2 END))
           AND ($4::jsonb IS NULL OR attributes @> $4)
           AND ($5::uuid IS NULL OR EXISTS (
                SELECT 1 FROM contact_list_members m WHERE m.list_id = $5 AND m.contact_id = c.id))
         ORDER BY id LIMIT $6"
    ))
    .bind(after_id)
    .bind(filter.tags)
    .bind(filter.all_tags)
    .bind(filter.attributes)
    .bind(filter.list)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A page of contacts after `after_id`, optionally only those with `tag`.
pub async fn contacts_with_tag(
    pool: &PgPool,
    after_id: i64,
    tag: Option<&str>,
    limit: i64,
) -> Result<Vec<ContactRow>, StoreError> {
    Ok(sqlx::query_as::<_, ContactRow>(concat!(
        "SELECT ",
        contact_columns!(),
        " FROM contacts WHERE id > $1 AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
         ORDER BY id LIMIT $3"
    ))
    .bind(after_id)
    .bind(tag)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The contacts among `phones`, as a campaign audience reads them.
pub async fn contacts_by_phone(
    pool: &PgPool,
    phones: &[String],
) -> Result<Vec<AudienceContact>, StoreError> {
    Ok(sqlx::query_as::<_, AudienceContact>(concat!(
        "SELECT ",
        audience_columns!(),
        " FROM contacts WHERE phone = ANY($1)"
    ))
    .bind(phones)
    .fetch_all(pool)
    .await?)
}

/// The consent log after `after_id`, in order, for an audit export.
pub async fn consent_page(
    pool: &PgPool,
    after_id: i64,
    limit: i64,
) -> Result<Vec<super::ConsentRecord>, StoreError> {
    Ok(sqlx::query_as::<_, super::ConsentRecord>(
        "SELECT id, recipient, purpose, action, source, evidence, actor, created_at
         FROM consent_events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The current consent (latest event per purpose) of the recipients after `after`, a page of
/// recipients at a time: (recipient, purpose, action).
pub async fn current_consent_page(
    pool: &PgPool,
    after: &str,
    recipients: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows = sqlx::query(
        "WITH r AS (
             SELECT DISTINCT recipient FROM consent_events WHERE recipient > $1
             ORDER BY recipient LIMIT $2
         )
         SELECT DISTINCT ON (e.recipient, e.purpose) e.recipient, e.purpose, e.action
         FROM consent_events e JOIN r USING (recipient)
         ORDER BY e.recipient, e.purpose, e.id DESC",
    )
    .bind(after)
    .bind(recipients)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Contact lists, newest first, with how many contacts each holds.
pub async fn lists(pool: &PgPool, limit: i64) -> Result<Vec<(Uuid, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT l.id, l.name, (SELECT count(*) FROM contact_list_members m WHERE m.list_id = l.id)
         FROM contact_lists l ORDER BY l.created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
