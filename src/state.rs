//! Redis adapter: the hot state the worker decides on (sender health, template status, consent,
//! service windows), the exact messaging-limit counters, send claims and sender
//! leases.
//!
//! Every key starts with `{prefix}`, a Redis Cluster hash tag, so the scripts that touch several
//! keys together stay valid on a cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use crate::domain::campaign::CampaignState;
use crate::domain::decision::{
    CampaignGate, Consent, ConsentAction, Quality, SenderState, SenderStatus, Snapshot,
    TemplateStatus,
};
use crate::domain::job::TemplateRef;
use crate::domain::tier::TIER_WINDOW;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected Redis answer: {0}")]
    Parse(#[from] redis::ParsingError),
    /// Redis lost its data (its copy marker is gone) and the copy of PostgreSQL's state is being
    /// rebuilt: nothing read from it may be trusted yet.
    #[error("Redis lost its copy of PostgreSQL's state; it is being rebuilt")]
    CopyMissing,
}

impl StateError {
    /// Whether the failure may pass by itself (Redis unreachable or being rebuilt), as opposed
    /// to an answer pregon cannot read.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StateError::Parse(_))
    }
}

/// A batch read answered nothing for one of the items it was asked about.
fn missing_answer(what: &str) -> StateError {
    StateError::Parse(redis::ParsingError::from(format!(
        "no {what} in the answer for one of the items asked about"
    )))
}

/// How long send claims and "already sent" markers live: longer than any redelivery can take.
const CLAIM_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The key whose presence says Redis holds a complete copy of PostgreSQL's state; its value is
/// when that copy was built (ms). Written last by a rebuild; a Redis that restarts empty has
/// lost it with everything else, and every reader holds until it is back.
const COPY_MARKER: &str = "copy";

/// The key a rebuilding process holds, so several processes starting at once rebuild once.
const REBUILD_LOCK: &str = "copy-rebuild";

#[derive(Clone)]
pub struct State {
    conn: ConnectionManager,
    prefix: String,
    reserve: Script,
    renew_lease: Script,
    release_lease: Script,
    finish_rebuild: Script,
}

/// The sender fields the worker decides on, mirrored from PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderMirror {
    pub status: SenderStatus,
    pub quality: Quality,
    pub paused: bool,
}

/// The mirrored sender hash: status, quality, paused, marketing held until (ms).
type SenderHash = (Option<String>, Option<String>, Option<String>, Option<i64>);

/// What the enqueue-time check knows about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientState {
    pub consent: Consent,
    pub window_open: bool,
    pub suppressed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Slot taken (or not needed) and the send claimed: go.
    Granted,
    /// The messaging limit is full; a slot frees at this instant (ms since the epoch).
    TierFull { frees_at_ms: i64 },
    /// Another delivery of the same attempt claimed the send first.
    AlreadyClaimed,
    /// Redis lost its data since the snapshot: nothing was reserved; wait for the rebuild.
    CopyMissing,
}

/// One message whose send decision needs a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotQuery<'a> {
    pub message_id: Uuid,
    pub attempt: u32,
    pub recipient: &'a str,
    pub template: Option<&'a TemplateRef>,
    pub campaign: Option<Uuid>,
}

/// One message to take a tier slot (when it counts against the tier) and a send claim for.
#[derive(Debug, Clone, Copy)]
pub struct ReserveItem<'a> {
    pub recipient: &'a str,
    pub message_id: Uuid,
    pub attempt: u32,
    pub counts_against_tier: bool,
}

/// For each message of a batch, in order: trims the moving 24 h window, counts the recipient if
/// new, and claims the send, all in one atomic script (one round trip for the batch). A recipient
/// already counted in the window is refreshed, never counted twice. Nothing is taken when the copy
/// marker (KEYS[1]) is gone: an emptied Redis would count from zero.
///
/// KEYS: copy marker, tier counter, then one claim key per message. ARGV: now (ms), window (ms),
/// limit (negative: none), claim owner, claim TTL (ms), then per message its recipient and "1" if
/// it counts against the tier. Answers two numbers per message: a code (1 granted, 0 tier full,
/// 2 already claimed, 3 copy missing) and, when full, when a slot frees (ms).
const RESERVE_LUA: &str = r#"
local n = #KEYS - 2
local out = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 1, n do
    out[2 * i - 1] = 3
    out[2 * i] = 0
  end
  return out
end
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local trimmed = false
-- Recipients in the window, read once when a limit applies and kept here after (the script is
-- atomic); whether anyone was counted or refreshed, so the counter's expiry moves once.
local count = nil
local counted = false
for i = 1, n do
  local recipient = ARGV[4 + 2 * i]
  local code = 1
  local frees = 0
  if ARGV[5 + 2 * i] == '1' then
    if not trimmed then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
      trimmed = true
    end
    if limit < 0 or redis.call('ZSCORE', KEYS[2], recipient) then
      -- No limit, or already counted: counted now, or its time refreshed.
      redis.call('ZADD', KEYS[2], now, recipient)
      counted = true
    else
      if count == nil then
        count = redis.call('ZCARD', KEYS[2])
      end
      if count >= limit then
        local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        frees = now
        if oldest[2] then frees = tonumber(oldest[2]) + window end
        code = 0
      else
        redis.call('ZADD', KEYS[2], now, recipient)
        count = count + 1
        counted = true
      end
    end
  end
  if code == 1 and not redis.call('SET', KEYS[2 + i], ARGV[4], 'NX', 'PX', ARGV[5]) then
    code = 2
  end
  out[2 * i - 1] = code
  out[2 * i] = frees
end
if counted then
  redis.call('PEXPIRE', KEYS[2], window)
end
return out
"#;

/// Moves a recipient's place in a tier counter to their tombstone, keeping its time: the count
/// Meta keeps does not shrink because pregon forgot who it was.
const RENAME_MEMBER_LUA: &str = r#"
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], at, ARGV[2])
end
return 0
"#;

const RENEW_LEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE_LEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

const FINISH_REBUILD_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Escapes a literal for a Redis glob pattern (the prefix's hash tag holds braces; tests' prefixes
/// may hold other pattern characters).
fn redis_glob_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A sender's mirrored hash (status, quality, paused, marketing held until ms) as the decision
/// reads it: one reading for the send path and a campaign's health check.
/// Where `item` is in `seen`, added at the end the first time.
fn index_of<T: PartialEq>(seen: &mut Vec<T>, item: T) -> usize {
    match seen.iter().position(|known| *known == item) {
        Some(at) => at,
        None => {
            seen.push(item);
            seen.len() - 1
        }
    }
}

fn sender_state((status, quality, paused, until): SenderHash) -> SenderState {
    SenderState {
        connected: status.as_deref().map(SenderStatus::parse) == Some(SenderStatus::Connected),
        quality: Quality::parse(quality.as_deref().unwrap_or("")),
        paused: paused.as_deref() == Some("1"),
        marketing_paused: until.is_some_and(|u| u > now_ms()),
    }
}

/// The answers after a pipeline's leading `EXISTS copy`, or `CopyMissing` when the copy is gone:
/// a missing consent or window would otherwise read as "none" and refuse or skip for good.
fn complete_copy(raw: &[redis::Value]) -> Result<&[redis::Value], StateError> {
    let (marker, rest) = raw.split_first().ok_or(StateError::CopyMissing)?;
    if redis::from_redis_value_ref::<bool>(marker)? {
        Ok(rest)
    } else {
        Err(StateError::CopyMissing)
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl State {
    pub async fn connect(url: &str, prefix: &str) -> Result<State, StateError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(State {
            conn,
            prefix: format!("{{{prefix}}}"),
            reserve: Script::new(RESERVE_LUA),
            renew_lease: Script::new(RENEW_LEASE_LUA),
            release_lease: Script::new(RELEASE_LEASE_LUA),
            finish_rebuild: Script::new(FINISH_REBUILD_LUA),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    // -- mirrors of PostgreSQL state -------------------------------------------------------

    pub async fn mirror_sender(
        &self,
        phone_number_id: &str,
        s: &SenderMirror,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset_multiple(
                self.key(&["sender", phone_number_id]),
                &[
                    ("status", s.status.as_str()),
                    ("quality", s.quality.as_str()),
                    ("paused", if s.paused { "1" } else { "0" }),
                ],
            )
            .await?;
        Ok(())
    }

    /// Holds marketing on a sender until the given instant (after a spam-rate answer).
    pub async fn pause_marketing_until(
        &self,
        phone_number_id: &str,
        until_ms: i64,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(
                self.key(&["sender", phone_number_id]),
                "mk_paused_until",
                until_ms,
            )
            .await?;
        Ok(())
    }

    pub async fn mirror_template(
        &self,
        name: &str,
        language: &str,
        status: &str,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn.set(self.key(&["tpl", name, language]), status).await?;
        Ok(())
    }

    /// Claims the probe of a paused template for `every`: the one message that may be sent to
    /// learn whether Meta still refuses the template. Across all workers, one claim per interval.
    pub async fn claim_template_probe(
        &self,
        name: &str,
        language: &str,
        every: std::time::Duration,
    ) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key(&["tpl-probe", name, language]))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(claimed.is_some())
    }

    /// Mirrors the latest consent of a recipient for a purpose.
    pub async fn mirror_consent(
        &self,
        events: &[(String, String, ConsentAction)],
    ) -> Result<(), StateError> {
        // Redis refuses an empty pipeline ("empty command"): nothing to mirror is done.
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (recipient, purpose, action) in events {
            pipe.hset(self.key(&["consent", recipient]), purpose, action.as_str())
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn consent(&self, recipient: &str) -> Result<Consent, StateError> {
        let mut conn = self.conn.clone();
        let (marketing, utility): (Option<String>, Option<String>) = conn
            .hmget(self.key(&["consent", recipient]), &["marketing", "utility"])
            .await?;
        Ok(Consent {
            marketing: marketing.as_deref().and_then(ConsentAction::parse),
            utility: utility.as_deref().and_then(ConsentAction::parse),
        })
    }

    // -- service windows ---------------------------------------------------------------------

    /// Opens or refreshes the customer-service window of a recipient with a sender number.
    /// Called by the webhook receiver on every inbound message.
    pub async fn open_service_window(
        &self,
        phone_number_id: &str,
        recipient: &str,
        opened_at_ms: i64,
        length: Duration,
    ) -> Result<(), StateError> {
        let expires = opened_at_ms + i64::try_from(length.as_millis()).unwrap_or(i64::MAX);
        if expires <= now_ms() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let key = self.key(&["win", phone_number_id, recipient]);
        let _: () = redis::pipe()
            .set(&key, expires)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(expires)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn window_open(
        &self,
        phone_number_id: &str,
        recipient: &str,
    ) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        Ok(conn
            .exists(self.key(&["win", phone_number_id, recipient]))
            .await?)
    }

    /// Consent and window of many (sender, recipient) pairs in one round trip, for the
    /// enqueue-time policy check of a batch.
    pub async fn recipient_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<RecipientState>, StateError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.exists(self.key(&[COPY_MARKER]));
        for (sender, recipient) in pairs {
            pipe.hmget(self.key(&["consent", recipient]), &["marketing", "utility"])
                .exists(self.key(&["win", sender, recipient]))
                .exists(self.key(&["sup", recipient]));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let raw = complete_copy(&raw)?;
        let mut out = Vec::with_capacity(pairs.len());
        for triple in raw.chunks(3) {
            let (marketing, utility): (Option<String>, Option<String>) =
                redis::from_redis_value_ref(&triple[0])?;
            out.push(RecipientState {
                consent: Consent {
                    marketing: marketing.as_deref().and_then(ConsentAction::parse),
                    utility: utility.as_deref().and_then(ConsentAction::parse),
                },
                window_open: redis::from_redis_value_ref(&triple[1])?,
                suppressed: redis::from_redis_value_ref(&triple[2])?,
            });
        }
        Ok(out)
    }

    // -- the send path -----------------------------------------------------------------------

    /// Everything the send decision needs, in one round trip.
    pub async fn snapshot(
        &self,
        phone_number_id: &str,
        query: SnapshotQuery<'_>,
    ) -> Result<Snapshot, StateError> {
        let mut all = self.snapshots(phone_number_id, &[query]).await?;
        all.pop().ok_or_else(|| missing_answer("snapshot"))
    }

    /// Everything the send decisions about several messages of one sender need, in one round
    /// trip: the sender and the copy marker once, then each message's own keys. Answers one
    /// snapshot per query, in order.
    pub async fn snapshots(
        &self,
        phone_number_id: &str,
        queries: &[SnapshotQuery<'_>],
    ) -> Result<Vec<Snapshot>, StateError> {
        // A batch is mostly one template and one campaign: each is read once, not per message;
        // `shared` says which of them each message has.
        let mut templates: Vec<&TemplateRef> = Vec::new();
        let mut campaigns: Vec<Uuid> = Vec::new();
        let shared: Vec<(Option<usize>, Option<usize>)> = queries
            .iter()
            .map(|q| {
                let template = q.template.map(|t| index_of(&mut templates, t));
                let campaign = q.campaign.map(|c| index_of(&mut campaigns, c));
                (template, campaign)
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.get(self.key(&[COPY_MARKER])).hmget(
            self.key(&["sender", phone_number_id]),
            &["status", "quality", "paused", "mk_paused_until"],
        );
        for t in &templates {
            pipe.get(self.key(&["tpl", &t.name, &t.language]));
        }
        for c in &campaigns {
            pipe.get(self.key(&["camp", &c.to_string()]));
        }
        for q in queries {
            let id = q.message_id.to_string();
            pipe.hmget(
                self.key(&["consent", q.recipient]),
                &["marketing", "utility"],
            )
            .exists(self.key(&["win", phone_number_id, q.recipient]))
            .get(self.key(&["done", &id]))
            .exists(self.key(&["claim", &id, &q.attempt.to_string()]))
            .exists(self.key(&["sup", q.recipient]));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut answers = raw.iter();
        let mut next = || answers.next().unwrap_or(&redis::Value::Nil);
        let copy_since_ms: Option<i64> = redis::from_redis_value_ref(next())?;
        let sender = sender_state(redis::from_redis_value_ref(next())?);
        let mut template_states = Vec::with_capacity(templates.len());
        for _ in &templates {
            let s: Option<String> = redis::from_redis_value_ref(next())?;
            template_states.push(s.map_or(TemplateStatus::Unknown, |s| TemplateStatus::parse(&s)));
        }
        let mut campaign_gates = Vec::with_capacity(campaigns.len());
        for _ in &campaigns {
            let s: Option<String> = redis::from_redis_value_ref(next())?;
            campaign_gates.push(CampaignGate::from_state(
                s.as_deref().and_then(CampaignState::parse),
            ));
        }
        let mut out = Vec::with_capacity(queries.len());
        for (template_at, campaign_at) in shared {
            let consent: (Option<String>, Option<String>) = redis::from_redis_value_ref(next())?;
            let window_open: bool = redis::from_redis_value_ref(next())?;
            let sent_wamid: Option<String> = redis::from_redis_value_ref(next())?;
            let claimed: bool = redis::from_redis_value_ref(next())?;
            let suppressed: bool = redis::from_redis_value_ref(next())?;
            let template = template_at.map(|at| template_states[at].clone());
            let campaign = campaign_at.map_or(CampaignGate::Open, |at| campaign_gates[at]);
            out.push(Snapshot {
                sender,
                template,
                consent: Consent {
                    marketing: consent.0.as_deref().and_then(ConsentAction::parse),
                    utility: consent.1.as_deref().and_then(ConsentAction::parse),
                },
                window_open,
                suppressed,
                sent_wamid,
                claimed,
                campaign,
                template_probe: false,
                copy_since_ms,
            });
        }
        Ok(out)
    }

    // -- campaigns ---------------------------------------------------------------------------

    /// Mirrors a campaign's state for the worker (read with every one of its messages).
    pub async fn mirror_campaign(
        &self,
        campaign: Uuid,
        state: CampaignState,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(self.key(&["camp", &campaign.to_string()]), state.as_str())
            .await?;
        Ok(())
    }

    /// A campaign's mirrored state.
    pub async fn campaign_state(
        &self,
        campaign: Uuid,
    ) -> Result<Option<CampaignState>, StateError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.key(&["camp", &campaign.to_string()])).await?;
        Ok(raw.as_deref().and_then(CampaignState::parse))
    }

    /// Senders as the send decision sees them, in the order asked.
    pub async fn sender_states(
        &self,
        phone_number_ids: &[String],
    ) -> Result<Vec<SenderState>, StateError> {
        let mut pipe = redis::pipe();
        for id in phone_number_ids {
            pipe.hmget(
                self.key(&["sender", id]),
                &["status", "quality", "paused", "mk_paused_until"],
            );
        }
        let mut conn = self.conn.clone();
        let raw: Vec<SenderHash> = pipe.query_async(&mut conn).await?;
        Ok(raw.into_iter().map(sender_state).collect())
    }

    pub async fn template_status(
        &self,
        name: &str,
        language: &str,
    ) -> Result<Option<String>, StateError> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.key(&["tpl", name, language])).await?)
    }

    /// Recipients' consent and suppression in one round trip (campaign planning and estimates).
    pub async fn audience_states(
        &self,
        recipients: &[&str],
    ) -> Result<Vec<(Consent, bool)>, StateError> {
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.exists(self.key(&[COPY_MARKER]));
        for r in recipients {
            pipe.hmget(self.key(&["consent", r]), &["marketing", "utility"])
                .exists(self.key(&["sup", r]));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let raw = complete_copy(&raw)?;
        if raw.len() != 2 * recipients.len() {
            return Err(missing_answer("consent or suppression"));
        }
        let mut out = Vec::with_capacity(recipients.len());
        for pair in raw.chunks(2) {
            let (marketing, utility): (Option<String>, Option<String>) =
                redis::from_redis_value_ref(&pair[0])?;
            out.push((
                Consent {
                    marketing: marketing.as_deref().and_then(ConsentAction::parse),
                    utility: utility.as_deref().and_then(ConsentAction::parse),
                },
                redis::from_redis_value_ref(&pair[1])?,
            ));
        }
        Ok(out)
    }

    /// The consent copy of a recipient as it is, for `consent rebuild-cache` to compare.
    pub async fn consent_raw(
        &self,
        recipients: &[String],
    ) -> Result<Vec<(Option<String>, Option<String>)>, StateError> {
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for r in recipients {
            pipe.hmget(self.key(&["consent", r]), &["marketing", "utility"]);
        }
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// Every recipient with a consent copy (SCAN, so Redis is never blocked).
    pub async fn consent_recipients(&self) -> Result<Vec<String>, StateError> {
        let prefix = self.key(&["consent", ""]);
        let pattern = format!("{}*", redis_glob_escape(&prefix));
        let mut out = Vec::new();
        self.scan(&pattern, async |keys| {
            out.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
            );
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Walks the keys matching `pattern` a page at a time with SCAN (never blocking Redis the way
    /// KEYS would), handing each page to `page`.
    async fn scan(
        &self,
        pattern: &str,
        mut page: impl AsyncFnMut(Vec<String>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                page(keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Replaces the consent copy of recipients: (recipient, marketing, utility).
    pub async fn replace_consent(
        &self,
        rows: &[(String, Option<String>, Option<String>)],
    ) -> Result<(), StateError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (recipient, marketing, utility) in rows {
            let key = self.key(&["consent", recipient]);
            pipe.del(&key).ignore();
            if let Some(m) = marketing {
                pipe.hset(&key, "marketing", m).ignore();
            }
            if let Some(u) = utility {
                pipe.hset(&key, "utility", u).ignore();
            }
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Takes a messaging-limit slot (when the message counts against the tier) and claims the send,
    /// in one atomic script.
    pub async fn reserve(
        &self,
        tier_counter: &str,
        tier_limit: i64,
        owner: &str,
        item: ReserveItem<'_>,
    ) -> Result<Reservation, StateError> {
        let mut all = self
            .reserve_many(tier_counter, tier_limit, owner, &[item])
            .await?;
        all.pop().ok_or_else(|| missing_answer("reservation"))
    }

    /// Takes the tier slots and send claims of several messages of one tier counter, in order, in
    /// one atomic script: one round trip for the batch, and the same counting as one at a time.
    pub async fn reserve_many(
        &self,
        tier_counter: &str,
        tier_limit: i64,
        owner: &str,
        items: &[ReserveItem<'_>],
    ) -> Result<Vec<Reservation>, StateError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(self.key(&[COPY_MARKER]))
            .key(self.key(&["tier", tier_counter]))
            .arg(now_ms())
            .arg(TIER_WINDOW.as_millis() as i64)
            .arg(tier_limit)
            .arg(owner)
            .arg(CLAIM_TTL.as_millis() as i64);
        for item in items {
            invocation
                .key(self.key(&[
                    "claim",
                    &item.message_id.to_string(),
                    &item.attempt.to_string(),
                ]))
                .arg(item.recipient)
                .arg(if item.counts_against_tier { "1" } else { "0" });
        }
        let mut conn = self.conn.clone();
        let answers: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        if answers.len() != items.len() * 2 {
            return Err(StateError::Parse(redis::ParsingError::from(format!(
                "the reservation script answered {} numbers for {} messages",
                answers.len(),
                items.len()
            ))));
        }
        Ok(answers
            .chunks_exact(2)
            .map(|pair| match pair[0] {
                1 => Reservation::Granted,
                0 => Reservation::TierFull {
                    frees_at_ms: pair[1],
                },
                3 => Reservation::CopyMissing,
                _ => Reservation::AlreadyClaimed,
            })
            .collect())
    }

    /// Records that Meta accepted the message, so no redelivery sends it again.
    pub async fn mark_sent(&self, message_id: Uuid, wamid: &str) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set_ex(
                self.key(&["done", &message_id.to_string()]),
                wamid,
                CLAIM_TTL.as_secs(),
            )
            .await?;
        Ok(())
    }

    /// Forgets that a message was sent, so it can be sent again (after a 131049 failure status).
    pub async fn forget_sent(&self, message_id: Uuid) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .del(self.key(&["done", &message_id.to_string()]))
            .await?;
        Ok(())
    }

    /// Marks a recipient as not reachable on WhatsApp (131026): nothing more is sent to them.
    pub async fn set_suppressed(
        &self,
        recipient: &str,
        suppressed: bool,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let key = self.key(&["sup", recipient]);
        if suppressed {
            let _: () = conn.set(key, 1).await?;
        } else {
            let _: () = conn.del(key).await?;
        }
        Ok(())
    }

    /// Forgets a person (every spelling of their number): consent, suppression, service windows
    /// with `senders`; their place in `tier_counters` passes to `tombstone`.
    pub async fn forget_person(
        &self,
        spellings: &[String],
        senders: &[String],
        tier_counters: &[String],
        tombstone: &str,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for r in spellings {
            pipe.del(self.key(&["consent", r]))
                .del(self.key(&["sup", r]))
                .ignore();
            for s in senders {
                pipe.del(self.key(&["win", s, r])).ignore();
            }
        }
        let _: () = pipe.query_async(&mut conn).await?;
        let rename = Script::new(RENAME_MEMBER_LUA);
        for counter in tier_counters {
            for r in spellings {
                let _: i64 = rename
                    .key(self.key(&["tier", counter]))
                    .arg(r)
                    .arg(tombstone)
                    .invoke_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Forgets the claim of an attempt whose outcome is known not to be a send, so a redelivery
    /// of that attempt may try again.
    pub async fn release_claim(&self, message_id: Uuid, attempt: u32) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .del(self.key(&["claim", &message_id.to_string(), &attempt.to_string()]))
            .await?;
        Ok(())
    }

    /// Whether a send of the message may have reached the Cloud API unseen: an attempt up to
    /// `attempt` kept its claim (its outcome is unknown) and no "sent" marker says it was sent.
    pub async fn may_have_been_sent(
        &self,
        message_id: Uuid,
        attempt: u32,
    ) -> Result<bool, StateError> {
        let id = message_id.to_string();
        let mut pipe = redis::pipe();
        pipe.exists(self.key(&["done", &id]));
        for a in 0..=attempt {
            pipe.exists(self.key(&["claim", &id, &a.to_string()]));
        }
        let mut conn = self.conn.clone();
        let found: Vec<bool> = pipe.query_async(&mut conn).await?;
        let (done, claims) = found.split_first().unwrap_or((&false, &[]));
        Ok(!done && claims.iter().any(|c| *c))
    }

    /// Forgets the send claims of attempts up to `attempt` (an operator sends the message again).
    pub async fn forget_claims(&self, message_id: Uuid, attempt: u32) -> Result<(), StateError> {
        let id = message_id.to_string();
        let keys: Vec<String> = (0..=attempt)
            .map(|a| self.key(&["claim", &id, &a.to_string()]))
            .collect();
        let mut conn = self.conn.clone();
        let _: () = conn.del(keys).await?;
        Ok(())
    }

    /// Unique recipients counted in the moving 24 h for a tier counter.
    pub async fn tier_usage(&self, tier_counter: &str) -> Result<u64, StateError> {
        let mut conn = self.conn.clone();
        let key = self.key(&["tier", tier_counter]);
        let from = now_ms() - TIER_WINDOW.as_millis() as i64;
        Ok(conn.zcount(key, from, "+inf").await?)
    }

    // -- the copy of PostgreSQL's state -------------------------------------------------------

    /// When the copy of PostgreSQL's state was built (ms), or `None` when Redis lost it.
    pub async fn copy_since(&self) -> Result<Option<i64>, StateError> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.key(&[COPY_MARKER])).await?)
    }

    /// Claims the rebuild of the copy for one attempt (`token`), so several processes starting
    /// at once rebuild it once. False when another attempt holds it.
    pub async fn claim_rebuild(&self, token: &str, ttl: Duration) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(&[REBUILD_LOCK]))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Keeps the rebuild claim; false when it lapsed or Redis lost it (restarted again), and
    /// then this attempt must not declare the copy complete.
    pub async fn renew_rebuild(&self, token: &str, ttl: Duration) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .renew_lease
            .key(self.key(&[REBUILD_LOCK]))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Declares the copy complete, only if this attempt still holds its claim (so a Redis that
    /// restarted during the rebuild is never declared whole), and gives the claim up. True when
    /// declared.
    pub async fn finish_rebuild(&self, token: &str, built_at_ms: i64) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let done: i64 = self
            .finish_rebuild
            .key(self.key(&[REBUILD_LOCK]))
            .key(self.key(&[COPY_MARKER]))
            .arg(token)
            .arg(built_at_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(done == 1)
    }

    /// Gives up a rebuild claim (a failed attempt), so another process may try at once.
    pub async fn release_rebuild(&self, token: &str) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release_lease
            .key(self.key(&[REBUILD_LOCK]))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Marks recipients suppressed, many at once (a rebuild).
    pub async fn suppress_many(&self, recipients: &[String]) -> Result<(), StateError> {
        if recipients.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for r in recipients {
            pipe.set(self.key(&["sup", r]), 1).ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Opens service windows, many at once: (sender, recipient, closes at ms). A window already
    /// open longer is left as it is.
    pub async fn open_service_windows(
        &self,
        windows: &[(String, String, i64)],
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        for (sender, recipient, closes_at) in windows.iter().filter(|w| w.2 > now) {
            let key = self.key(&["win", sender, recipient]);
            pipe.cmd("SET")
                .arg(&key)
                .arg(closes_at)
                .arg("PXAT")
                .arg(closes_at)
                .arg("NX")
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Counts recipients in tier counters again, many at once: (counter, recipient, reached at
    /// ms). A recipient already counted keeps the later of the two instants.
    pub async fn recount_tier(&self, reached: &[(String, String, i64)]) -> Result<(), StateError> {
        if reached.is_empty() {
            return Ok(());
        }
        let window = TIER_WINDOW.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (counter, recipient, at) in reached {
            let key = self.key(&["tier", counter]);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("GT")
                .arg(at)
                .arg(recipient)
                .ignore()
                .pexpire(&key, window)
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    // -- sender leases -------------------------------------------------------------------------

    /// Takes or keeps the lease on a sender; true while `owner` holds it.
    pub async fn hold_lease(
        &self,
        phone_number_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        self.hold_key(&self.key(&["lease", phone_number_id]), owner, ttl)
            .await
    }

    /// Takes `key` for `owner` when free, or renews it when `owner` holds it.
    async fn hold_key(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let renewed: i64 = self
            .renew_lease
            .key(key)
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release_lease(
        &self,
        phone_number_id: &str,
        owner: &str,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release_lease
            .key(self.key(&["lease", phone_number_id]))
            .arg(owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Deletes every key under this prefix (tests and `pregon demo --reset`).
    pub async fn delete_all(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        self.scan(&pattern, async |keys| {
            let _: () = conn.del(keys).await?;
            Ok(())
        })
        .await
    }
}
