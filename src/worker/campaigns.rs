//! The campaign runner in worker processes, one PostgreSQL lease per campaign: plans the
//! audience into `planned` messages, hands them to RabbitMQ behind the persisted cursor, pauses and
//! resumes on sender or template health, and completes the campaign when nothing is left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::app::{Services, Shutdown};
use crate::domain::campaign::{self, CampaignState, QuietHours};
use crate::domain::decision::TemplateStatus;
use crate::domain::job::{SendJob, TemplateRef};
use crate::domain::phone;
use crate::domain::reason::Reason;
use crate::state::now_ms;
use crate::store::campaigns::{self as cstore, Campaign, Handoff, PlannedMessage, StateChange};

use crate::campaigns::*;

// -- the runner ------------------------------------------------------------------------------

/// How often a runner refreshes the campaign gauges (the "paused too long" alert reads one).
const PAUSE_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// At most this many campaigns get series of their own: labels stay bounded however many
/// campaigns a business runs.
const WATCHED_CAMPAIGNS: i64 = 20;

/// Claims and runs campaigns in a worker process until shutdown, under the process's owner id.
pub(crate) async fn run(services: Services, owner: String, mut stop: Shutdown) {
    let mut tasks: HashMap<Uuid, tokio::task::JoinHandle<()>> = HashMap::new();
    let poll = services.config.campaign_poll.0;
    let ttl = services.config.lease_ttl.0;
    let mut pause_checked: Option<std::time::Instant> = None;
    loop {
        if pause_checked.is_none_or(|t| t.elapsed() >= PAUSE_GAUGE_EVERY) {
            pause_checked = Some(std::time::Instant::now());
            refresh_campaign_gauges(&services).await;
        }
        match cstore::claim_runnable(&services.pool, &owner, ttl).await {
            Ok(ids) => {
                tasks.retain(|_, t| !t.is_finished());
                for id in ids {
                    tasks.entry(id).or_insert_with(|| {
                        tokio::spawn(run_campaign(
                            services.clone(),
                            id,
                            owner.clone(),
                            stop.clone(),
                        ))
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not claim campaigns"),
        }
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
}

/// The campaign gauges: the longest pause, and each watched campaign's counts and costs.
/// Campaigns that left the watched set leave the gauges with it.
async fn refresh_campaign_gauges(services: &Services) {
    let metrics = &services.metrics;
    match cstore::longest_pause_seconds(&services.pool).await {
        Ok(s) => metrics.campaign_longest_pause_seconds.set(s),
        Err(e) => tracing::warn!(error = %e, "could not read campaign pauses"),
    }
    match cstore::watched_counts(&services.pool, WATCHED_CAMPAIGNS).await {
        Ok(rows) => {
            metrics.campaign_messages.reset();
            for (id, name, status, n) in rows {
                metrics
                    .campaign_messages
                    .with_label_values(&[id.to_string().as_str(), &name, &status])
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read campaign counts"),
    }
    match cstore::watched_costs(&services.pool, WATCHED_CAMPAIGNS).await {
        Ok(rows) => {
            let mut by_campaign: BTreeMap<(Uuid, String), Vec<campaign::CostCount>> =
                BTreeMap::new();
            for (id, name, count) in rows {
                by_campaign.entry((id, name)).or_default().push(count);
            }
            metrics.campaign_cost.reset();
            let card = &services.derived.rate_card;
            for ((id, name), counts) in by_campaign {
                let cost = card.campaign_cost(&counts);
                let id = id.to_string();
                for (kind, priced) in [("estimated", cost.estimated), ("billed", cost.billed)] {
                    metrics
                        .campaign_cost
                        .with_label_values(&[id.as_str(), &name, kind, &cost.currency])
                        .set(priced.amount);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read campaign costs"),
    }
}

/// What a runner step asks for next.
pub(crate) enum Next {
    /// More to do now.
    Continue,
    /// Nothing to do until the next poll.
    Wait,
    /// The campaign no longer needs this runner.
    Done,
}

pub(crate) struct Runner {
    services: Services,
    plan: Option<Plan>,
    seen: HashSet<String>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

pub(crate) async fn run_campaign(services: Services, id: Uuid, owner: String, stop: Shutdown) {
    let poll = services.config.campaign_poll.0;
    let mut runner = Runner {
        services: services.clone(),
        plan: None,
        seen: HashSet::new(),
        limiter: None,
    };
    tracing::info!(campaign = %id, "running campaign");
    while !stop.is_triggered() {
        let c = match cstore::get_campaign(&services.pool, id).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(campaign = %id, error = %e, "could not read the campaign");
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        if c.lease_owner.as_deref() != Some(owner.as_str()) {
            // Our lease lapsed and another process took the campaign over.
            break;
        }
        match runner.step(&c).await {
            Ok(Next::Continue) => tokio::task::yield_now().await,
            Ok(Next::Wait) => tokio::time::sleep(poll).await,
            Ok(Next::Done) => break,
            Err(e) => {
                tracing::warn!(campaign = %id, error = %e, "campaign step failed; trying again");
                tokio::time::sleep(poll).await;
            }
        }
    }
    let _ = cstore::release_lease(&services.pool, id, &owner).await;
}

impl Runner {
    async fn step(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = &self.services;
        services.state.mirror_campaign(c.id, c.state).await?;
        match c.state {
            CampaignState::Scheduled => {
                if c.start_at.is_some_and(|s| s > Utc::now()) {
                    return Ok(Next::Wait);
                }
                self.change(
                    c,
                    CampaignState::Scheduled,
                    CampaignState::Running,
                    None,
                    &[],
                    "started",
                )
                .await?;
                Ok(Next::Continue)
            }
            CampaignState::Paused if c.paused_by.as_deref() == Some("auto") => {
                let causes = health_causes(services, c).await?;
                if causes.is_empty() {
                    self.change(
                        c,
                        CampaignState::Paused,
                        CampaignState::Running,
                        None,
                        &[],
                        "auto_resumed",
                    )
                    .await?;
                    return Ok(Next::Continue);
                }
                Ok(Next::Wait)
            }
            CampaignState::Running => {
                if c.end_by.is_some_and(|e| e <= Utc::now()) {
                    cstore::cancel_planned(&services.pool, c.id, Reason::CampaignEndBy).await?;
                    self.change(
                        c,
                        CampaignState::Running,
                        CampaignState::Completed,
                        None,
                        &[],
                        "ended_by_deadline",
                    )
                    .await?;
                    return Ok(Next::Done);
                }
                let causes = health_causes(services, c).await?;
                if !causes.is_empty() {
                    tracing::warn!(campaign = %c.id, ?causes, "pausing the campaign");
                    self.change(
                        c,
                        CampaignState::Running,
                        CampaignState::Paused,
                        Some("auto"),
                        &causes,
                        "auto_paused",
                    )
                    .await?;
                    return Ok(Next::Wait);
                }
                if !c.planned {
                    // Sending starts with the first planned chunk rather than after the whole
                    // audience: each planning step also hands over what is ready.
                    let planning = self.plan_step(c).await?;
                    self.hand_over(c).await?;
                    return Ok(planning);
                }
                self.hand_over(c).await
            }
            _ => Ok(Next::Done),
        }
    }

    async fn change(
        &self,
        c: &Campaign,
        from: CampaignState,
        to: CampaignState,
        paused_by: Option<&str>,
        causes: &[String],
        event: &str,
    ) -> Result<(), CampaignError> {
        let services = &self.services;
        let changed = cstore::change_state(
            &services.pool,
            c.id,
            &StateChange {
                from: &[from],
                to,
                paused_by,
                causes,
                event,
                actor: "pregon",
            },
        )
        .await?;
        if changed.is_some() {
            services.state.mirror_campaign(c.id, to).await?;
            let cause = causes
                .first()
                .map(|c| c.split(':').next().unwrap_or(c))
                .unwrap_or("");
            services
                .metrics
                .campaign_transitions
                .with_label_values(&[event, if cause.is_empty() { "pregon" } else { cause }])
                .inc();
        }
        Ok(())
    }

    /// Plans one chunk of the audience.
    async fn plan_step(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = &self.services;
        if self.plan.is_none() {
            let plan = plan_of(services, c).await?;
            if let Audience::Numbers(numbers) = &*plan.audience {
                // Duplicates of an explicit list are found against everything planned before a
                // restart, too.
                let through = usize::try_from(c.plan_cursor)
                    .unwrap_or(0)
                    .min(numbers.len());
                self.seen = numbers[..through]
                    .iter()
                    .filter_map(|n| phone::normalize(n).ok())
                    .map(|p| p.digits().to_string())
                    .collect();
            }
            self.plan = Some(plan);
        }
        let Some(plan) = &self.plan else {
            return Ok(Next::Wait);
        };
        let chunk = i64::from(services.config.campaign_chunk);
        let page = audience_page(services, &plan.audience, c.plan_cursor, chunk).await?;
        let done = (page.len() as i64) < chunk;
        let cursor = page.last().map_or(c.plan_cursor, |p| p.seq);
        let page = read_page(services, page).await?;
        let verdicts = check_page(plan, page, &mut self.seen, build_message);
        let mut messages = Vec::with_capacity(verdicts.len());
        let mut exclusions = Vec::new();
        for v in verdicts {
            match v {
                Verdict::Send {
                    seq,
                    recipient,
                    country,
                    message: Message { body, sender },
                } => {
                    let id = Uuid::now_v7();
                    let mut body = body;
                    crate::domain::message::tag_with_id(&mut body, &id.to_string());
                    messages.push(PlannedMessage {
                        id,
                        seq,
                        sender,
                        recipient,
                        country: country.to_string(),
                        body: body.to_string(),
                    })
                }
                Verdict::Excluded { input, reason, .. } => exclusions.push((input, reason.code())),
            }
        }
        let written =
            cstore::plan_chunk(&services.pool, c, &messages, &exclusions, cursor, done).await?;
        services.metrics.campaign_planned.inc_by(written);
        if done {
            tracing::info!(campaign = %c.id, recipients = c.recipients + written as i64, "campaign planned");
        }
        Ok(Next::Continue)
    }

    /// Hands the next planned messages to RabbitMQ, keeping at most `campaign_window` queued.
    async fn hand_over(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = self.services.clone();
        let services = &services;
        if c.fanout_claimed > c.fanout_cursor {
            // A crash between marking and confirming: publish that stretch again (same ids).
            let rows =
                cstore::handed_between(&services.pool, c.id, c.fanout_cursor, c.fanout_claimed)
                    .await?;
            tracing::info!(campaign = %c.id, rows = rows.len(), "republishing after an interrupted hand-over");
            self.publish(c, &rows).await?;
            cstore::set_fanout_cursor(&services.pool, c.id, c.fanout_claimed).await?;
            return Ok(Next::Continue);
        }
        let counts = count_map(&cstore::counts(&services.pool, c.id).await?);
        let queued = counts.get("queued").copied().unwrap_or(0);
        let room = i64::from(services.config.campaign_window) - queued;
        if room <= 0 {
            return Ok(Next::Wait);
        }
        let mut wanted = room.min(i64::from(services.config.campaign_chunk));
        if let Some(cap) = c.rate_cap {
            wanted = wanted.min(self.rate_allowance(cap, wanted as u32) as i64);
            if wanted == 0 {
                return Ok(Next::Wait);
            }
        }
        let rows = cstore::planned_after(&services.pool, c.id, c.fanout_cursor, wanted).await?;
        let Some(last) = rows.last().map(|r| r.campaign_seq) else {
            if cstore::rewind(&services.pool, c.id).await?.is_some() {
                return Ok(Next::Continue);
            }
            let open = ["planned", "queued", "deferred"]
                .iter()
                .map(|s| counts.get(*s).copied().unwrap_or(0))
                .sum::<i64>();
            if open == 0 && c.planned {
                self.change(
                    c,
                    CampaignState::Running,
                    CampaignState::Completed,
                    None,
                    &[],
                    "completed",
                )
                .await?;
                tracing::info!(campaign = %c.id, "campaign completed");
                return Ok(Next::Done);
            }
            return Ok(Next::Wait);
        };
        let quiet = c
            .quiet_hours
            .as_ref()
            .and_then(|q| {
                Some((
                    q.0.get("start")?.as_str()?.to_string(),
                    q.0.get("end")?.as_str()?.to_string(),
                ))
            })
            .and_then(|(s, e)| QuietHours::parse(&s, &e).ok());
        let now = Utc::now();
        // The same `now` for every row: recipients with one UTC offset share one `not_before`.
        let rows: Vec<Handoff> = rows
            .into_iter()
            .map(|mut r| {
                r.not_before = quiet.and_then(|q| {
                    let country = phone::normalize(&r.recipient)
                        .map(|p| p.country())
                        .unwrap_or("");
                    let wait = q.wait(now, campaign::utc_offset_minutes(country));
                    (!wait.is_zero())
                        .then(|| now + chrono::Duration::from_std(wait).unwrap_or_default())
                });
                r
            })
            .collect();
        let mut groups: BTreeMap<Option<DateTime<Utc>>, Vec<Uuid>> = BTreeMap::new();
        for r in &rows {
            groups.entry(r.not_before).or_default().push(r.id);
        }
        let groups: Vec<(Option<DateTime<Utc>>, Vec<Uuid>)> = groups.into_iter().collect();
        cstore::mark_handed(&services.pool, c.id, &groups, c.fanout_cursor, last).await?;
        self.publish(c, &rows).await?;
        cstore::set_fanout_cursor(&services.pool, c.id, last).await?;
        Ok(Next::Continue)
    }

    /// How many of `wanted` the campaign's rate cap allows now.
    fn rate_allowance(&mut self, cap: i32, wanted: u32) -> u32 {
        let cap = NonZeroU32::new(u32::try_from(cap).unwrap_or(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = self
            .limiter
            .get_or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(cap))));
        let mut n = wanted.min(cap.get());
        while n > 0 {
            match NonZeroU32::new(n).map(|n| limiter.check_n(n)) {
                Some(Ok(Ok(()))) => return n,
                _ => n /= 2,
            }
        }
        0
    }

    async fn publish(&self, c: &Campaign, rows: &[Handoff]) -> Result<(), CampaignError> {
        let services = &self.services;
        let category = c.category;
        let exchange = services.names.send_exchange();
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(body) = RawValue::from_string(r.body.clone()) else {
                tracing::error!(id = %r.id, "stored body is not JSON; skipping");
                continue;
            };
            let template = TemplateRef {
                name: c.template_name.clone(),
                language: c.template_language.clone(),
            };
            let job = SendJob::new(
                r.id,
                r.sender.clone(),
                r.recipient.clone(),
                category,
                Some(template),
                body,
                now_ms(),
            )
            .in_campaign(c.id)
            .with_attempts(u32::try_from(r.attempts).unwrap_or(0))
            .not_before(r.not_before.map_or(0, |t| t.timestamp_millis()));
            let wait = job.not_before_ms - now_ms();
            let (exchange, key) = if wait > 500 {
                // Quiet hours: park it in the delay queue closest to the wait.
                let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                crate::queue::parking(&services.names, &services.derived.delay_steps, &job, wait)
            } else {
                let key = services.names.lane_key(&job.sender, job.lane());
                (exchange.clone(), key)
            };
            items.push((exchange, key, job.encode()));
        }
        let results = services
            .publisher
            .publish_jobs(&crate::queue::borrowed(&items), services.config.job_chunk)
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        services
            .metrics
            .campaign_handed
            .inc_by((results.len() - failed) as u64);
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e.into());
        }
        Ok(())
    }
}

/// Why a running campaign must stop now: its senders' or template's health, by the send
/// decision's own hold rule, as the worker sees it.
pub(crate) async fn health_causes(
    services: &Services,
    c: &Campaign,
) -> Result<Vec<String>, CampaignError> {
    let category = c.category;
    let mut causes = Vec::new();
    let senders = services.state.sender_states(&c.senders).await?;
    for (id, sender) in c.senders.iter().zip(senders) {
        for reason in sender.holds(category) {
            causes.push(format!("{}:{id}", reason.code()));
        }
    }
    let template = services
        .state
        .template_status(&c.template_name, &c.template_language)
        .await?;
    if template.as_deref().map(TemplateStatus::parse) == Some(TemplateStatus::Paused) {
        causes.push(Reason::TemplatePaused.code().into());
    }
    Ok(causes)
}
