//! One sender's dispatch loop. It owns the sender's two lanes (a Redis lease plus RabbitMQ's
//! single active consumer guarantee no other process does), so its pacing is exact.
//!
//! A delivery carries one job or a chunk of them; its jobs join the lane's backlog and are taken
//! one at a time. Per job: pair-rate check → messages-per-second slot → snapshot from Redis →
//! decision → tier reservation and send claim → HTTP send (concurrently, bounded) →
//! classification → record in PostgreSQL → settle its share. A delivery is acknowledged only after
//! the outcome of every job it carried is durable.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::app::{Services, Shutdown};
use crate::domain::Lane;
use crate::domain::MessageStatus;
use crate::domain::decision::{self, CampaignGate, Decision, Facts, Snapshot, TemplateStatus};
use crate::domain::job::SendJob;
use crate::domain::pacing::HeldSlots;
use crate::domain::reason::Reason;
use crate::domain::tier::Tier;
use crate::queue::{self, QueueError};
use crate::state::{Reservation, ReserveItem, SnapshotQuery, StateError, now_ms};
use crate::store::{MessageUpdate, Sender, StoreError};

use super::outcomes::{
    dead_letter_undecodable, defer, exhaust, finish, mark_template, on_failure, redelay,
    settle_for_campaign,
};
use super::pacing::Pacer;
use super::share::{Share, ack};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {0} lane consumer stopped")]
    ConsumerGone(&'static str),
}

impl From<lapin::Error> for WorkerError {
    fn from(e: lapin::Error) -> Self {
        WorkerError::Queue(QueueError::Amqp(e))
    }
}

struct LaneState {
    consumer: lapin::Consumer,
    channel: lapin::Channel,
    /// Jobs taken from the queue and not decided on yet, in order: the rest of a chunk, and in
    /// front a job put back because the lane is held until `hold_until`.
    backlog: std::collections::VecDeque<(Share, SendJob)>,
    hold_until: Option<Instant>,
    /// The marketing lane's next slot is not due before this: the loop waits for it in its
    /// select, where a transactional job can still come first, rather than asleep in `admit`.
    paced_until: Option<Instant>,
    /// This lane's `pregon_lane_head_wait_seconds`, looked up once rather than per message.
    head_wait: prometheus::Gauge,
}

/// What a send task needs, shared by all of one sender's tasks.
pub(super) struct Shared {
    pub(super) services: Services,
    /// The sender's phone_number_id: fixed for the life of the loop.
    pub(super) id: String,
    /// The sender as last read from the catalog: tier, token and cap may change while it runs.
    pub(super) sender: std::sync::RwLock<Arc<Sender>>,
    pub(super) pacer: Pacer,
    pub(super) owner: String,
    /// Campaign states read recently, so a paused campaign's messages leave the lane without
    /// waiting for a pacing slot (and without a Redis read per message).
    campaign_gates:
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (CampaignGate, Instant)>>,
    /// Marketing sends' slots still to come, which a transactional job may trade its own for.
    held_slots: std::sync::Mutex<HeldSlots>,
}

impl Shared {
    fn held_slots(&self) -> std::sync::MutexGuard<'_, HeldSlots> {
        self.held_slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a send may start: at its slot, or for a marketing send whose slot a
    /// transactional job took, at the later one it was given instead.
    async fn wait_for_slot(&self, slot: SendSlot) {
        let Some(id) = slot.held else {
            tokio::time::sleep_until(Instant::from_std(slot.at)).await;
            return;
        };
        loop {
            let taken = self.held_slots().take_if_due(id, Slot::now());
            match taken {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
            }
        }
    }

    async fn campaign_gate(&self, campaign: uuid::Uuid) -> CampaignGate {
        const FRESH: Duration = Duration::from_millis(200);
        if let Some((gate, at)) = self
            .campaign_gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&campaign)
            && at.elapsed() < FRESH
        {
            return *gate;
        }
        let gate = match self.services.state.campaign_state(campaign).await {
            Ok(Some(state)) => CampaignGate::from_state(Some(state)),
            Ok(None) => campaign_gate_from_store(&self.services, campaign).await,
            // The snapshot reads it again before any send.
            Err(_) => CampaignGate::Unknown,
        };
        let mut gates = self
            .campaign_gates
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if gates.len() > 10_000 {
            gates.clear();
        }
        gates.insert(campaign, (gate, Instant::now()));
        gate
    }

    pub(super) fn sender(&self) -> Arc<Sender> {
        self.sender
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_sender(&self, sender: Arc<Sender>) {
        self.pacer
            .reconfigure(u32::try_from(sender.mps).unwrap_or(80));
        *self.sender.write().unwrap_or_else(|p| p.into_inner()) = sender;
    }
}

pub async fn run(
    services: Services,
    sender: Arc<Sender>,
    owner: String,
    mut stop: Shutdown,
) -> Result<(), WorkerError> {
    let id = sender.phone_number_id.clone();
    let channel = services.amqp.connection().create_channel().await?;
    queue::declare_sender(&channel, &services.names, &id).await?;
    let _ = channel.close(200, "done".into()).await;

    let config = services.config.clone();
    let shared = Arc::new(Shared {
        pacer: Pacer::new(
            u32::try_from(sender.mps).unwrap_or(80),
            config.pair_rate_interval.0,
            config.pair_rate_burst,
            config.throttle_cooldown.0,
        ),
        services: services.clone(),
        id: id.clone(),
        sender: std::sync::RwLock::new(sender),
        owner,
        campaign_gates: std::sync::Mutex::new(std::collections::HashMap::new()),
        held_slots: std::sync::Mutex::new(HeldSlots::default()),
    });
    let mut lanes = Vec::with_capacity(2);
    for lane in Lane::ALL {
        let queue_name = services.names.lane_queue(&id, lane);
        let tag = format!("{}-{}", shared.owner, lane.suffix());
        let (channel, consumer) = queue::consume(
            &services.amqp.connection(),
            &queue_name,
            &tag,
            config.prefetch,
        )
        .await?;
        lanes.push(LaneState {
            consumer,
            channel,
            backlog: std::collections::VecDeque::new(),
            hold_until: None,
            paced_until: None,
            head_wait: services
                .metrics
                .lane_head_wait
                .with_label_values(&[id.as_str(), lane.suffix()]),
        });
    }
    let inflight = Arc::new(Semaphore::new(config.sender_concurrency));
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<(Lane, Share, SendJob)>();
    let mut last_refresh = Instant::now();
    tracing::info!(sender = %id, "dispatching");

    let outcome = loop {
        let now = Instant::now();
        if now.duration_since(last_refresh) >= config.sender_refresh.0 {
            last_refresh = now;
            shared.pacer.forget_idle_recipients();
            if let Ok(Some(current)) = services.catalog.sender(&id).await {
                shared.update_sender(current);
            }
        }
        for state in lanes.iter_mut() {
            if state.hold_until.is_some_and(|t| t <= now) {
                state.hold_until = None;
            }
            if state.paced_until.is_some_and(|t| t <= now) {
                state.paced_until = None;
            }
        }
        let next_hold = lanes
            .iter()
            .flat_map(|l| [l.hold_until, l.paced_until])
            .flatten()
            .min();
        let tx_open = lanes[0].hold_until.is_none();
        let mk_open = lanes[1].hold_until.is_none();
        // A lane's backlog goes before its queue; the transactional lane before the marketing
        // one, so an OTP waits for no more than the marketing job being decided on.
        let tx_backlog = tx_open && !lanes[0].backlog.is_empty();
        let mk_backlog = mk_open && lanes[1].paced_until.is_none() && !lanes[1].backlog.is_empty();
        let tx_take = tx_open && lanes[0].backlog.is_empty();
        let mk_take = mk_open && lanes[1].backlog.is_empty();
        let (tx_lane, mk_lane) = lanes.split_at_mut(1);
        let next = tokio::select! {
            biased;
            _ = stop.wait() => break Ok(()),
            Some((lane, share, job)) = retry_rx.recv() => Next::Job(lane, share, job),
            _ = std::future::ready(()), if tx_backlog => Next::Backlog(Lane::Transactional),
            d = tx_lane[0].consumer.next(), if tx_take => match d {
                Some(d) => Next::Delivery(Lane::Transactional, Box::new(d)),
                None => break Err(WorkerError::ConsumerGone("transactional")),
            },
            _ = std::future::ready(()), if mk_backlog => Next::Backlog(Lane::Marketing),
            d = mk_lane[0].consumer.next(), if mk_take => match d {
                Some(d) => Next::Delivery(Lane::Marketing, Box::new(d)),
                None => break Err(WorkerError::ConsumerGone("marketing")),
            },
            _ = sleep_until_opt(next_hold), if next_hold.is_some() => Next::Nothing,
        };
        match next {
            Next::Nothing => {}
            // Back from its pair-rate wait: first in its lane again.
            Next::Job(lane, share, job) => lanes[lane.index()].backlog.push_front((share, job)),
            Next::Backlog(lane) => {
                process_backlog(
                    &shared,
                    &mut lanes[lane.index()],
                    lane,
                    &inflight,
                    &retry_tx,
                )
                .await
            }
            Next::Delivery(lane, delivery) => {
                let delivery = match *delivery {
                    Ok(d) => d,
                    Err(e) => break Err(e.into()),
                };
                take_delivery(&shared, &mut lanes[lane.index()], delivery).await;
            }
        }
    };

    // Drain: wait for sends in flight so their outcomes are recorded and acknowledged.
    let grace = config.shutdown_grace.0;
    let all = u32::try_from(config.sender_concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, inflight.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(sender = %id, "sends still in flight after the grace period; RabbitMQ will redeliver them");
    }
    for lane in &mut lanes {
        hand_back(&shared, lane).await;
    }
    for lane in lanes {
        // Closing the channel returns prefetched deliveries (and any not settled) to the queue.
        let _ = lane.channel.close(200, "stopping".into()).await;
    }
    tracing::info!(sender = %id, "stopped");
    outcome
}

/// What the dispatch loop does next.
enum Next {
    Nothing,
    /// A job back from its pair-rate wait.
    Job(Lane, Share, SendJob),
    /// The next job of a lane's backlog.
    Backlog(Lane),
    Delivery(Lane, Box<Result<lapin::message::Delivery, lapin::Error>>),
}

/// A delivery from a lane's queue: its jobs join the lane's backlog, each with its share of the
/// delivery. One that cannot be read, or that keeps coming back, is dealt with here.
async fn take_delivery(shared: &Shared, lane: &mut LaneState, delivery: lapin::message::Delivery) {
    let jobs = match SendJob::decode_many(&delivery.data) {
        Ok(jobs) => jobs,
        Err(e) => {
            dead_letter_undecodable(shared, Share::whole(delivery), &e.to_string()).await;
            return;
        }
    };
    let too_often = queue::redeliveries(&delivery.properties) >= queue::REDELIVERY_LIMIT;
    let shares = Share::split(delivery, jobs.len());
    for (share, job) in shares.into_iter().zip(jobs) {
        if too_often {
            // Processes keep dying with this message in hand: stop the cycle, keep the evidence.
            tracing::error!(id = %job.id, "message redelivered too often; dead-lettering it");
            let update = MessageUpdate::new(job.id, MessageStatus::Failed, job.attempt)
                .because(Reason::RedeliveredTooOften);
            exhaust(shared, share, &job, update).await;
        } else {
            lane.backlog.push_back((share, job));
        }
    }
}

/// On the way out: the jobs of a backlog go back to their lane's queue as new messages, so the
/// deliveries that carried them (part of whose jobs are settled) need not be redelivered whole.
/// If RabbitMQ does not confirm them, closing the channel returns those deliveries instead.
async fn hand_back(shared: &Shared, lane: &mut LaneState) {
    if lane.backlog.is_empty() {
        return;
    }
    let services = &shared.services;
    let exchange = services.names.send_exchange();
    let items: Vec<(String, String, Vec<u8>)> = lane
        .backlog
        .iter()
        .map(|(_, job)| {
            let key = services.names.lane_key(&job.sender, job.lane());
            (exchange.clone(), key, job.encode())
        })
        .collect();
    let published = services
        .publisher
        .publish_jobs(&queue::borrowed(&items), services.config.job_chunk)
        .await;
    let handed = published.iter().all(Result::is_ok);
    if !handed {
        tracing::warn!(sender = %shared.id, "could not hand the backlog back; RabbitMQ will redeliver it");
        return;
    }
    for (share, _) in lane.backlog.drain(..) {
        ack(share).await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The most jobs of one lane decided together: one snapshot read and one reservation script
/// for all of them, instead of two Redis round trips each.
const DECIDE_AT_ONCE: usize = 32;

/// How far past the first job's slot a batch reserves slots for the others. Each send waits on
/// its own task for its slot, so a lane paced below its burst (80 messages a second: a slot every
/// 14 ms) still decides on several jobs with one pair of Redis round trips. A transactional job
/// does not queue behind the slots a marketing batch reserved: it trades for the earliest
/// (`HeldSlots`).
const LOOKAHEAD: Duration = Duration::from_millis(50);

/// A moment on the messages-per-second schedule.
type Slot = std::time::Instant;

/// When a send's HTTP request may start. A marketing send's slot still to come is `held` in the
/// sender's `HeldSlots`, so a transactional job may take it (the send then gets the later one).
#[derive(Debug, Clone, Copy)]
struct SendSlot {
    at: Slot,
    held: Option<u64>,
}

/// Why a lane stops taking jobs for a while, the jobs it was deciding on back at its front.
enum Pause {
    /// Until the state the decision needs is back (`hold_recheck`).
    Hold(Reason),
    /// Until the tier spread lets the next recipient be counted.
    Spread(Duration),
}

/// Decides on the jobs at the front of a lane's backlog, as many at once as have a
/// messages-per-second slot free now (at least one, waited for), and carries the decisions out.
async fn process_backlog(
    shared: &Arc<Shared>,
    state: &mut LaneState,
    lane: Lane,
    inflight: &Arc<Semaphore>,
    retry_tx: &mpsc::UnboundedSender<(Lane, Share, SendJob)>,
) {
    let services = &shared.services;
    if services.writer.is_failing() {
        // No send whose outcome could not be recorded.
        pause(
            shared,
            state,
            Vec::new(),
            Pause::Hold(Reason::StoreUnavailable),
        );
        return;
    }
    let batch = admit(shared, state, lane, retry_tx).await;
    if batch.is_empty() {
        return;
    }
    let sender = shared.sender();
    let sender_id = &sender.phone_number_id;
    let snapshots = {
        let queries: Vec<SnapshotQuery> = batch
            .iter()
            .map(|(_, job, _)| SnapshotQuery {
                message_id: job.id,
                attempt: job.attempt,
                recipient: &job.recipient,
                template: job.template.as_ref(),
                campaign: job.campaign,
            })
            .collect();
        services.state.snapshots(sender_id, &queries).await
    };
    let snapshots = match snapshots {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Redis unavailable; holding the lane");
            let jobs = batch
                .into_iter()
                .map(|(share, job, _)| (share, job))
                .collect();
            pause(shared, state, jobs, Pause::Hold(Reason::StateUnavailable));
            return;
        }
    };

    // Decide in order; what needs no slot is carried out at once, what may be sent is reserved
    // below in one script. A job that must wait stops the batch: it and the rest go back.
    let (tier_counter, tier) = services.tier_counter(&sender);
    let mut to_reserve: Vec<(Share, SendJob, bool, bool, SendSlot)> = Vec::new();
    let mut stopped: Option<(Vec<(Share, SendJob)>, Pause)> = None;
    let mut decided = batch.into_iter().zip(snapshots);
    while let Some(((share, job, slot), mut snapshot)) = decided.next() {
        let decision = decide(services, &job, &mut snapshot).await;
        let probe = snapshot.template_probe;
        let wait = match decision {
            Decision::Hold(reason) => Pause::Hold(reason),
            Decision::Send {
                counts_against_tier,
            } => match counts_against_tier
                .then(|| tier_spread_wait(shared, &sender, tier))
                .flatten()
            {
                Some(wait) => Pause::Spread(wait),
                None => {
                    to_reserve.push((share, job, counts_against_tier, probe, slot));
                    continue;
                }
            },
            Decision::AlreadySent(wamid) => {
                let mut update =
                    MessageUpdate::new(job.id, MessageStatus::Sent, job.attempt.max(1));
                update.wamid = Some(wamid);
                finish(shared, share, &job, update, "sent").await;
                continue;
            }
            Decision::Skip(reason) => {
                let update =
                    MessageUpdate::new(job.id, MessageStatus::Skipped, job.attempt).because(reason);
                finish(shared, share, &job, update, "skipped").await;
                continue;
            }
            Decision::Fail { reason, detail } => {
                let mut update =
                    MessageUpdate::new(job.id, MessageStatus::Failed, job.attempt).because(reason);
                update.error = detail;
                services
                    .metrics
                    .failures
                    .with_label_values(&[reason.code()])
                    .inc();
                finish(shared, share, &job, update, "failed").await;
                continue;
            }
            Decision::ReturnToCampaign => {
                settle_for_campaign(shared, share, &job, CampaignGate::Paused).await;
                continue;
            }
            Decision::Cancel => {
                settle_for_campaign(shared, share, &job, CampaignGate::Stopped).await;
                continue;
            }
            Decision::TemplatePaused => {
                let wait = services.derived.post_send.template_pause_recheck;
                defer(shared, share, job, Reason::TemplatePaused, wait, None).await;
                continue;
            }
        };
        let rest = std::iter::once((share, job))
            .chain(decided.by_ref().map(|((share, job, _), _)| (share, job)))
            .collect();
        stopped = Some((rest, wait));
        break;
    }

    let mut back: Vec<(Share, SendJob)> = Vec::new();
    let mut reserve_pause = None;
    if !to_reserve.is_empty() {
        let reserved = {
            let items: Vec<ReserveItem> = to_reserve
                .iter()
                .map(|(_, job, counts, _, _)| ReserveItem {
                    recipient: &job.recipient,
                    message_id: job.id,
                    attempt: job.attempt,
                    counts_against_tier: *counts,
                })
                .collect();
            services
                .state
                .reserve_many(&tier_counter, tier.limit(), &shared.owner, &items)
                .await
        };
        match reserved {
            Ok(reservations) => {
                for ((share, job, _, probe, slot), reservation) in
                    to_reserve.into_iter().zip(reservations)
                {
                    match reservation {
                        Reservation::Granted => {
                            let Ok(permit) = inflight.clone().acquire_owned().await else {
                                return;
                            };
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                shared.wait_for_slot(slot).await;
                                send(&shared, share, job, probe).await;
                                drop(permit);
                            });
                        }
                        Reservation::TierFull { frees_at_ms } => {
                            let wait = Duration::from_millis(
                                u64::try_from(frees_at_ms - now_ms()).unwrap_or(0),
                            );
                            defer(
                                shared,
                                share,
                                job,
                                Reason::MessagingLimitReached,
                                wait,
                                None,
                            )
                            .await;
                        }
                        Reservation::CopyMissing => {
                            back.push((share, job));
                            reserve_pause = Some(Pause::Hold(Reason::StateRebuilding));
                        }
                        Reservation::AlreadyClaimed => {
                            tracing::warn!(id = %job.id, "send already claimed by another delivery; dropping this copy");
                            ack(share).await;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; holding the lane");
                back.extend(
                    to_reserve
                        .into_iter()
                        .map(|(share, job, _, _, _)| (share, job)),
                );
                reserve_pause = Some(Pause::Hold(Reason::StateUnavailable));
            }
        }
    }
    // The jobs that were to be reserved came before those the decisions stopped at.
    let (rest, decision_pause) = stopped.unzip();
    back.extend(rest.into_iter().flatten());
    if let Some(why) = reserve_pause.or(decision_pause) {
        pause(shared, state, back, why);
    }
}

/// How long a send that counts against the tier must wait so the sender's tier is spread over
/// its configured period rather than spent in a burst; `None` when it may go now.
fn tier_spread_wait(shared: &Shared, sender: &Sender, tier: Tier) -> Option<Duration> {
    let period = sender.tier_spread_seconds?;
    let budget = tier_budget(tier.limit())?;
    let wait = shared.pacer.spread_wait(
        budget,
        Duration::from_secs(u64::try_from(period).unwrap_or(1)),
    )?;
    shared
        .services
        .metrics
        .pacing_wait_seconds
        .with_label_values(&[sender.phone_number_id.as_str(), "spread"])
        .inc_by(wait.as_secs_f64());
    Some(wait)
}

/// Takes the jobs to decide on from the front of a lane's backlog, each with the
/// messages-per-second slot it is to be sent at: the first one's slot is due (the transactional
/// lane waits here for it; the marketing lane, none taken, is marked `paced_until` it and waits in
/// the dispatch loop), and the others join while theirs come within `LOOKAHEAD` of it. On the way,
/// a job whose time has not come, whose campaign is paused or stopped, or whose recipient must wait
/// for the pair rate is dealt with without one.
async fn admit(
    shared: &Arc<Shared>,
    state: &mut LaneState,
    lane: Lane,
    retry_tx: &mpsc::UnboundedSender<(Lane, Share, SendJob)>,
) -> Vec<(Share, SendJob, SendSlot)> {
    let services = &shared.services;
    let sender_id = shared.id.as_str();
    let mut batch = Vec::new();
    // Set once the first job's slot is due: how far ahead the others' may be.
    let mut horizon = Slot::now();
    while batch.len() < DECIDE_AT_ONCE {
        let Some((share, job)) = state.backlog.pop_front() else {
            break;
        };
        if batch.is_empty() {
            state
                .head_wait
                .set(job.ready_for_ms(chrono::Utc::now().timestamp_millis()) as f64 / 1000.0);
        }
        let remaining = job.not_before_ms - now_ms();
        if remaining > 500 {
            // Back early from a delay step shorter than the wait: go round again.
            let wait = Duration::from_millis(u64::try_from(remaining).unwrap_or(0));
            redelay(shared, share, job, wait, None).await;
            continue;
        }
        if let Some(campaign) = job.campaign {
            let gate = shared.campaign_gate(campaign).await;
            if matches!(gate, CampaignGate::Paused | CampaignGate::Stopped) {
                settle_for_campaign(shared, share, &job, gate).await;
                continue;
            }
        }
        // The slot is looked at before the pair-rate check, so a job left for later has not
        // spent its recipient's pair allowance. Later jobs join only with a slot within the
        // lookahead. A marketing lane whose next slot is not due waits for it in the dispatch
        // loop's select, where a transactional job may come first; it holds no slot it cannot
        // use soon.
        let next = shared.pacer.next_slot(Slot::now());
        if !batch.is_empty() && next > horizon {
            state.backlog.push_front((share, job));
            break;
        }
        if batch.is_empty() && lane == Lane::Marketing {
            let wait = next.saturating_duration_since(Slot::now());
            if !wait.is_zero() {
                services
                    .metrics
                    .pacing_wait_seconds
                    .with_label_values(&[sender_id, "mps"])
                    .inc_by(wait.as_secs_f64());
                state.backlog.push_front((share, job));
                state.paced_until = Some(Instant::now() + wait);
                break;
            }
        }
        if let Some(wait) = shared.pacer.pair_wait(&job.recipient) {
            services
                .metrics
                .pacing_wait_seconds
                .with_label_values(&[sender_id, "pair"])
                .inc_by(wait.as_secs_f64());
            if wait > Duration::from_secs(30) {
                let mut job = job;
                job.not_before_ms = now_ms() + wait.as_millis() as i64;
                redelay(shared, share, job, wait, Some(Reason::PairRate)).await;
            } else {
                let tx = retry_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send((lane, share, job));
                });
            }
            continue;
        }
        let now = Slot::now();
        if batch.is_empty() {
            // The first job takes the next slot (a transactional one trades it for the earliest
            // a marketing send holds) and the lane waits until it is due.
            let Some(slot) = shared.pacer.reserve(now, now + Duration::from_secs(3600)) else {
                state.backlog.push_front((share, job));
                break;
            };
            let at = match lane {
                Lane::Transactional => shared.held_slots().trade(slot, now),
                Lane::Marketing => slot,
            };
            let waited = at.saturating_duration_since(now);
            if !waited.is_zero() {
                tokio::time::sleep_until(Instant::from_std(at)).await;
                services
                    .metrics
                    .pacing_wait_seconds
                    .with_label_values(&[sender_id, "mps"])
                    .inc_by(waited.as_secs_f64());
            }
            horizon = Slot::now() + LOOKAHEAD;
            batch.push((share, job, SendSlot { at, held: None }));
            continue;
        }
        let Some(slot) = shared.pacer.reserve(now, horizon) else {
            state.backlog.push_front((share, job));
            break;
        };
        let send_slot = match lane {
            Lane::Transactional => SendSlot {
                at: shared.held_slots().trade(slot, now),
                held: None,
            },
            Lane::Marketing => SendSlot {
                at: slot,
                held: (slot > now).then(|| shared.held_slots().hold(slot, now)),
            },
        };
        batch.push((share, job, send_slot));
    }
    batch
}

/// The send decision about one job, from its snapshot completed from PostgreSQL where Redis's
/// copy lacks something; a paused template lets one probe through per recheck interval.
async fn decide(services: &Services, job: &SendJob, snapshot: &mut Snapshot) -> Decision {
    let facts = Facts {
        category: job.category,
        free_form: job.free_form,
        delivery: job.delivery,
    };
    complete_from_store(services, job, snapshot).await;
    let decision = decision::decide(snapshot, &facts);
    if decision == Decision::TemplatePaused
        && let Some(template) = &job.template
    {
        // One message per recheck interval, across all workers, finds out whether Meta still
        // refuses the template; the others wait without being sent.
        let every = services.config.template_pause_recheck.0;
        match services
            .state
            .claim_template_probe(&template.name, &template.language, every)
            .await
        {
            Ok(true) => {
                snapshot.template_probe = true;
                return decision::decide(snapshot, &facts);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not claim the template probe"),
        }
    }
    decision
}

/// Fills in from PostgreSQL, the source of truth, what Redis's copy may lack for this message,
/// so a key lost with Redis never turns into a final state:
/// - a job queued before the copy was rebuilt may have been sent before Redis lost its "sent"
///   marker: the row says so;
/// - a template missing from Redis is looked up in the registry (and mirrored again);
/// - a campaign whose state is missing is read from its row (and mirrored again).
///
/// A lookup that fails leaves the snapshot as it was: the decision then holds or fails as before.
async fn complete_from_store(services: &Services, job: &SendJob, snapshot: &mut Snapshot) {
    if let Some(since) = snapshot.copy_since_ms
        && job.enqueued_at_ms < since
        && snapshot.sent_wamid.is_none()
    {
        match crate::store::get_message(&services.pool, job.id).await {
            Ok(Some(row)) if row.status.is_sent() => snapshot.sent_wamid = row.wamid,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = %job.id, error = %e, "could not read the row; holding");
                snapshot.copy_since_ms = None;
            }
        }
    }
    if let (Some(TemplateStatus::Unknown), Some(template)) = (&snapshot.template, &job.template) {
        match services
            .catalog
            .template(&template.name, &template.language)
            .await
        {
            Ok(Some(known)) => {
                if let Err(e) = services
                    .state
                    .mirror_template(&known.name, &known.language, known.status.as_str())
                    .await
                {
                    tracing::warn!(error = %e, "could not mirror a template again");
                }
                snapshot.template = Some(known.status.clone());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the template registry; holding");
                snapshot.copy_since_ms = None;
            }
        }
    }
    if snapshot.campaign == CampaignGate::Unknown
        && let Some(campaign) = job.campaign
    {
        snapshot.campaign = campaign_gate_from_store(services, campaign).await;
    }
}

/// A campaign's gate read from its row, mirrored to Redis again; `Unknown` when it cannot be read.
async fn campaign_gate_from_store(services: &Services, campaign: uuid::Uuid) -> CampaignGate {
    match crate::store::campaigns::get_campaign(&services.pool, campaign).await {
        Ok(Some(row)) => {
            if let Err(e) = services.state.mirror_campaign(campaign, row.state).await {
                tracing::warn!(error = %e, "could not mirror a campaign again");
            }
            CampaignGate::from_state(Some(row.state))
        }
        // No such campaign: its messages have nothing to wait for.
        Ok(None) => CampaignGate::Stopped,
        Err(e) => {
            tracing::warn!(error = %e, "could not read a campaign");
            CampaignGate::Unknown
        }
    }
}

fn tier_budget(limit: i64) -> Option<u64> {
    u64::try_from(limit).ok().filter(|b| *b > 0)
}

/// Puts jobs back at the front of a lane's backlog, in order, and stops taking from it for a
/// while: no job is taken out of order, and the lane's next look is when the pause ends.
fn pause(shared: &Shared, state: &mut LaneState, jobs: Vec<(Share, SendJob)>, why: Pause) {
    let until = match why {
        Pause::Hold(reason) => {
            shared
                .services
                .metrics
                .holds
                .with_label_values(&[shared.id.as_str(), reason.code()])
                .inc();
            Instant::now() + shared.services.config.hold_recheck.0
        }
        Pause::Spread(wait) => Instant::now() + wait,
    };
    for job in jobs.into_iter().rev() {
        state.backlog.push_front(job);
    }
    state.hold_until = Some(state.hold_until.map_or(until, |t| t.max(until)));
}

/// Sends one message and acts on the answer. Runs concurrently, bounded per sender. A `probe`
/// is the one message let through to a paused template: accepted, it shows the pause is over.
async fn send(shared: &Shared, share: Share, job: SendJob, probe: bool) {
    let services = &shared.services;
    let started = std::time::Instant::now();
    let sender = shared.sender();
    let result = services
        .cloud
        .send(&sender.phone_number_id, &sender.access_token, &job.body)
        .await;
    let attempts = job.attempt + 1;
    match result {
        Ok(accepted) => {
            let accepted_at = chrono::Utc::now();
            services
                .metrics
                .cloud_api_duration
                .with_label_values(&["accepted"])
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = services.state.mark_sent(job.id, &accepted.wamid).await {
                tracing::warn!(id = %job.id, error = %e, "could not mark the message sent in Redis");
            }
            if probe {
                mark_template(
                    shared,
                    &job,
                    &TemplateStatus::Approved,
                    "a probe was accepted",
                )
                .await;
            }
            let latency =
                (accepted_at.timestamp_millis() - job.enqueued_at_ms).max(0) as f64 / 1000.0;
            services.metrics.enqueue_to_accepted.observe(latency);
            let mut update = MessageUpdate::new(job.id, MessageStatus::Sent, attempts);
            update.accepted_at = Some(accepted_at);
            update.wamid = Some(accepted.wamid);
            update.wa_id = accepted.wa_id;
            finish(shared, share, &job, update, "sent").await;
        }
        Err(failure) => {
            services
                .metrics
                .cloud_api_duration
                .with_label_values(&["error"])
                .observe(started.elapsed().as_secs_f64());
            on_failure(shared, share, job, failure).await;
        }
    }
}
