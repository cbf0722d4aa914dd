//! RabbitMQ adapter: topology, a publisher with confirms, and lane consumers.
//!
//! Topology (every name starts with the namespace `ns`):
//! - `ns.send` (direct): routing key `{phone_number_id}.tx|mk` → quorum queue `ns.send.{id}.tx|mk`,
//!   single active consumer, dead-lettering to `ns.dead` past the delivery limit;
//! - `ns.wait.{ms}` (fanout) → quorum queue of the same name with a TTL that dead-letters back
//!   (at least once) to `ns.send` under the message's original routing key: retries and deferrals
//!   without a plugin;
//! - `ns.dead` (fanout) → quorum queue `ns.dead`: exhausted and undecodable jobs, kept for inspection;
//! - `ns.ingest` (topic) → quorum queue `ns.ingest.requests`: enqueue requests published by other
//!   systems, dead-lettering to `ns.dead` past the delivery limit (a request that keeps killing its
//!   consumer is kept for an operator, not redelivered forever). The queue `ns.ingest` of earlier
//!   versions had no dead-letter exchange, and RabbitMQ cannot add one in place: it is unbound,
//!   drained by the workers and deleted once empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};

use crate::domain::Lane;
use crate::domain::job::SendJob;
use crate::domain::retry::delay_step;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// Not connected, or the broker blocks publishers (flow control): nothing was tried.
    #[error("RabbitMQ is unreachable or blocks publishers")]
    Unavailable,
    #[error("not published: {0}")]
    NotPublished(String),
    /// A job no queue is bound for: returned by the broker instead of silently dropped.
    #[error("no queue is bound for this routing key")]
    Unroutable,
    #[error("the consumer ended (its channel or connection closed)")]
    ConsumerEnded,
    #[error("no RabbitMQ node answered within the connect timeout ({0})")]
    Timeout(String),
}

impl QueueError {
    /// The same failure once more, for each job a chunk carried (a broker error as its text).
    pub fn again(&self) -> QueueError {
        match self {
            QueueError::Amqp(e) => QueueError::NotPublished(e.to_string()),
            QueueError::Nacked => QueueError::Nacked,
            QueueError::ConfirmTimeout(d) => QueueError::ConfirmTimeout(*d),
            QueueError::Unavailable => QueueError::Unavailable,
            QueueError::NotPublished(s) => QueueError::NotPublished(s.clone()),
            QueueError::Unroutable => QueueError::Unroutable,
            QueueError::ConsumerEnded => QueueError::ConsumerEnded,
            QueueError::Timeout(s) => QueueError::Timeout(s.clone()),
        }
    }

    /// Nothing was tried because the broker cannot be used now.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable | QueueError::NotPublished(_))
    }
}

/// How many times a quorum queue redelivers one message (crashes, requeues) before RabbitMQ
/// dead-letters it on its own; a backstop behind [`REDELIVERY_LIMIT`].
pub const DELIVERY_LIMIT: i64 = 50;

/// Redeliveries after which the worker gives a message up itself, records it failed and moves it
/// to the dead-letter queue, so it never disappears with its row still `queued`.
pub const REDELIVERY_LIMIT: u64 = 20;

/// How often RabbitMQ has delivered this message before (quorum queues count it in the
/// `x-delivery-count` header).
pub fn redeliveries(properties: &BasicProperties) -> u64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

#[derive(Debug, Clone)]
pub struct Names {
    pub ns: String,
}

impl Names {
    pub fn send_exchange(&self) -> String {
        format!("{}.send", self.ns)
    }
    pub fn lane_key(&self, phone_number_id: &str, lane: Lane) -> String {
        format!("{phone_number_id}.{}", lane.suffix())
    }
    pub fn lane_queue(&self, phone_number_id: &str, lane: Lane) -> String {
        format!("{}.send.{phone_number_id}.{}", self.ns, lane.suffix())
    }
    /// The delay queue (and its exchange) of a step. Quorum queues, named `wait`: the classic
    /// `{ns}.delay.{ms}` queues of earlier versions cannot change type in place, and drain by
    /// themselves into `ns.send` once nothing is parked in them any more.
    pub fn delay(&self, step: Duration) -> String {
        format!("{}.wait.{}", self.ns, step.as_millis())
    }
    pub fn dead(&self) -> String {
        format!("{}.dead", self.ns)
    }
    /// The ingest exchange.
    pub fn ingest(&self) -> String {
        format!("{}.ingest", self.ns)
    }
    /// The queue bound to the ingest exchange, with a dead-letter exchange.
    pub fn ingest_queue(&self) -> String {
        format!("{}.ingest.requests", self.ns)
    }
    /// The ingest queue of earlier versions (no dead-letter exchange): drained, then deleted.
    pub fn legacy_ingest_queue(&self) -> String {
        format!("{}.ingest", self.ns)
    }
    pub fn events(&self) -> String {
        format!("{}.events", self.ns)
    }
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, QueueError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
}

/// The broker's addresses: `amqp_url` names one node, or every node of a RabbitMQ cluster
/// separated by commas (a process connects to one of them at random, and after losing it, to
/// the next that answers).
pub fn broker_urls(raw: &str) -> Vec<String> {
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        vec![raw.to_string()]
    } else {
        urls
    }
}

/// Connects to the first node that answers, trying them in turn from `start`; answers the
/// connection and which node it is on. With several nodes each gets `CONNECT_TIMEOUT`, so one
/// that swallows packets does not keep the others from being tried; a single node is waited
/// for as long as it takes (a busy broker can take seconds to accept a connection).
async fn connect_any(
    urls: &[String],
    start: usize,
    name: &str,
) -> Result<(Connection, usize), QueueError> {
    if let [only] = urls {
        return Ok((connect(only, name).await?, 0));
    }
    let mut last = None;
    for i in 0..urls.len() {
        let at = (start + i) % urls.len();
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&urls[at], name)).await {
            Ok(Ok(connection)) => {
                return Ok((connection, at));
            }
            Ok(Err(e)) => last = Some(e),
            // The node's position, not its URL: the URL holds the password.
            Err(_) => last = Some(QueueError::Timeout(format!("node {}", at + 1))),
        }
    }
    Err(last.unwrap_or(QueueError::Timeout("no node given".into())))
}

fn s(v: &str) -> ShortString {
    v.into()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(s(k), v.clone());
    }
    t
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares everything that does not depend on the senders. Idempotent.
pub async fn declare_base(
    channel: &Channel,
    names: &Names,
    delay_steps: &[Duration],
) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            s(&names.send_exchange()),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            s(&names.dead()),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            s(&names.ingest()),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            s(&names.events()),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    declare_plain_quorum(channel, &names.dead()).await?;
    bind(channel, &names.dead(), &names.dead(), "").await?;
    declare_queue(
        channel,
        &names.ingest_queue(),
        &dead_lettering_quorum(names),
    )
    .await?;
    bind(channel, &names.ingest_queue(), &names.ingest(), "#").await?;
    for step in delay_steps {
        let name = names.delay(*step);
        channel
            .exchange_declare(
                s(&name),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
        // Replicated with the cluster, and dead-lettered back at least once: a waiting job
        // survives the loss of a node and is never dropped on its way back to its lane.
        let args = table(&[
            ("x-queue-type", text("quorum")),
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(step.as_millis() as i64),
            ),
            ("x-dead-letter-exchange", text(&names.send_exchange())),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]);
        declare_queue(channel, &name, &args).await?;
        bind(channel, &name, &name, "").await?;
    }
    Ok(())
}

/// Declares a sender's two lanes. Idempotent; called when a sender is registered and when a
/// worker takes it over.
pub async fn declare_sender(
    channel: &Channel,
    names: &Names,
    phone_number_id: &str,
) -> Result<(), QueueError> {
    for lane in Lane::ALL {
        let queue = names.lane_queue(phone_number_id, lane);
        let mut args = dead_lettering_quorum(names);
        args.insert(s("x-single-active-consumer"), AMQPValue::Boolean(true));
        declare_queue(channel, &queue, &args).await?;
        bind(
            channel,
            &queue,
            &names.send_exchange(),
            &names.lane_key(phone_number_id, lane),
        )
        .await?;
    }
    Ok(())
}

/// A durable quorum queue with no other argument.
pub async fn declare_plain_quorum(channel: &Channel, name: &str) -> Result<(), QueueError> {
    declare_queue(channel, name, &table(&[("x-queue-type", text("quorum"))])).await
}

/// A quorum queue that dead-letters to `ns.dead` once a message was delivered
/// [`DELIVERY_LIMIT`] times.
fn dead_lettering_quorum(names: &Names) -> FieldTable {
    table(&[
        ("x-queue-type", text("quorum")),
        ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ("x-dead-letter-exchange", text(&names.dead())),
    ])
}

/// Unbinds the ingest queue of earlier versions from the ingest exchange, so nothing new reaches
/// it while the workers drain it. True when it still exists.
pub async fn retire_legacy_ingest(
    connection: &Connection,
    names: &Names,
) -> Result<bool, QueueError> {
    if depth(connection, &names.legacy_ingest_queue())
        .await?
        .is_none()
    {
        return Ok(false);
    }
    let channel = connection.create_channel().await?;
    channel
        .queue_unbind(
            s(&names.legacy_ingest_queue()),
            s(&names.ingest()),
            s("#"),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, s("done")).await;
    Ok(true)
}

/// Deletes a queue (whatever it holds: callers check first).
pub async fn delete_queue(connection: &Connection, queue: &str) -> Result<(), QueueError> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(s(queue), QueueDeleteOptions::default())
        .await?;
    let _ = channel.close(200, s("done")).await;
    Ok(())
}

/// The queue a dead-lettered message was dead-lettered from (RabbitMQ's `x-first-death-queue`);
/// None for a message published to `ns.dead` by pregon itself.
pub fn first_death_queue(properties: &BasicProperties) -> Option<String> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-first-death-queue")?
    {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

async fn declare_queue(channel: &Channel, name: &str, args: &FieldTable) -> Result<(), QueueError> {
    channel
        .queue_declare(
            s(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args.clone(),
        )
        .await?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), QueueError> {
    channel
        .queue_bind(
            s(queue),
            s(exchange),
            s(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Messages ready in a queue, or None if it does not exist.
pub async fn depth(connection: &Connection, queue: &str) -> Result<Option<u32>, QueueError> {
    Ok(stats(connection, queue).await?.map(|s| s.ready))
}

/// What a queue holds and who reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not those delivered and not yet acknowledged).
    pub ready: u32,
    pub consumers: u32,
}

/// A queue's [`QueueStats`], or None if it does not exist.
pub async fn stats(connection: &Connection, queue: &str) -> Result<Option<QueueStats>, QueueError> {
    // A passive declare of a missing queue closes the channel, so use a throwaway one.
    let channel = connection.create_channel().await?;
    let result = channel
        .queue_declare(
            s(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, s("done")).await;
    match result {
        Ok(q) => Ok(Some(QueueStats {
            ready: q.message_count(),
            consumers: q.consumer_count(),
        })),
        Err(_) => Ok(None),
    }
}

/// Deletes a namespace's queues and exchanges (tests and demo resets).
pub async fn delete_namespace(
    connection: &Connection,
    names: &Names,
    senders: &[String],
    delay_steps: &[Duration],
) -> Result<(), QueueError> {
    let channel = connection.create_channel().await?;
    let mut queues: Vec<String> = vec![
        names.dead(),
        names.ingest_queue(),
        names.legacy_ingest_queue(),
    ];
    for sender in senders {
        for lane in Lane::ALL {
            queues.push(names.lane_queue(sender, lane));
        }
    }
    for step in delay_steps {
        queues.push(names.delay(*step));
    }
    for q in &queues {
        channel
            .queue_delete(s(q), QueueDeleteOptions::default())
            .await?;
    }
    let mut exchanges = vec![
        names.send_exchange(),
        names.dead(),
        names.ingest(),
        names.events(),
    ];
    exchanges.extend(delay_steps.iter().map(|d| names.delay(*d)));
    for e in &exchanges {
        channel.exchange_delete(s(e), Default::default()).await?;
    }
    let _ = channel.close(200, s("done")).await;
    Ok(())
}

/// A RabbitMQ connection that comes back. A background task watches it and, once the broker is
/// gone, reconnects with backoff and jitter and declares the base topology again; users take
/// [`Broker::connection`] each time they open a channel, so what they open after a reconnect is
/// on the new connection. Consumers whose channel died end, and their owners start them again.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    /// The nodes to try, in order from `next`: one URL, or every node of a cluster.
    urls: Vec<String>,
    /// Where the next reconnect starts: the node after the one that was lost.
    next: std::sync::atomic::AtomicUsize,
    name: String,
    topology: Option<(Names, Vec<Duration>)>,
    current: std::sync::RwLock<Arc<Connection>>,
    /// Bumped at every reconnect, so channels opened on an older connection are known stale.
    generation: AtomicU64,
    /// Closed by its owner: not to be reconnected.
    closed: std::sync::atomic::AtomicBool,
}

/// How often the keeper looks at the connection, and the bounds of its reconnect backoff.
const WATCH_EVERY: Duration = Duration::from_millis(250);
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Broker {
    /// Connects (and declares the base topology, when given) and starts the keeper. The keeper
    /// ends once the last clone of the broker is dropped.
    pub async fn connect(
        url: &str,
        name: &str,
        topology: Option<(Names, Vec<Duration>)>,
    ) -> Result<Broker, QueueError> {
        let urls = broker_urls(url);
        // Each process starts at a node of its own choosing, so connections (and the leaders
        // of the queues they declare) spread over a cluster's nodes.
        let (connection, at) = connect_any(&urls, fastrand::usize(..urls.len()), name).await?;
        if let Some((names, steps)) = &topology {
            declare_base_on(&connection, names, steps).await?;
        }
        let broker = Broker {
            inner: Arc::new(BrokerInner {
                next: std::sync::atomic::AtomicUsize::new((at + 1) % urls.len()),
                urls,
                name: name.to_string(),
                topology,
                current: std::sync::RwLock::new(Arc::new(connection)),
                generation: AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        tokio::spawn(keep_connected(Arc::downgrade(&broker.inner)));
        Ok(broker)
    }

    /// The current connection (possibly broken, until the keeper replaced it).
    pub fn connection(&self) -> Arc<Connection> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub fn is_connected(&self) -> bool {
        self.connection().status().connected()
    }

    /// Connected, and not blocked by the broker's flow control (`connection.blocked`).
    pub fn is_ready(&self) -> bool {
        let connection = self.connection();
        let status = connection.status();
        status.connected() && !status.blocked()
    }

    /// Closes the connection for good (tests and shutdown): the keeper does not reconnect it.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let _ = self.connection().close(200, s("closing")).await;
    }
}

async fn declare_base_on(
    connection: &Connection,
    names: &Names,
    delay_steps: &[Duration],
) -> Result<(), QueueError> {
    let channel = connection.create_channel().await?;
    declare_base(&channel, names, delay_steps).await?;
    let _ = channel.close(200, s("done")).await;
    Ok(())
}

async fn keep_connected(inner: std::sync::Weak<BrokerInner>) {
    let mut backoff = RECONNECT_FIRST;
    let mut lost = false;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let connected = inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .status()
            .connected();
        if connected {
            backoff = RECONNECT_FIRST;
            continue;
        }
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if !lost {
            tracing::warn!(connection = %inner.name, "RabbitMQ connection lost; reconnecting");
            lost = true;
        }
        let start = inner.next.load(Ordering::Acquire);
        let attempt = async {
            let (connection, at) = connect_any(&inner.urls, start, &inner.name).await?;
            if let Some((names, steps)) = &inner.topology {
                declare_base_on(&connection, names, steps).await?;
            }
            Ok::<_, QueueError>((connection, at))
        };
        let within = CONNECT_TIMEOUT * inner.urls.len() as u32;
        match tokio::time::timeout(within, attempt).await {
            Ok(Ok((connection, at))) => {
                inner
                    .next
                    .store((at + 1) % inner.urls.len(), Ordering::Release);
                *inner.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(connection);
                inner.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(connection = %inner.name, "RabbitMQ connection back");
                lost = false;
                backoff = RECONNECT_FIRST;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reconnect failed");
                drop(inner);
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
            Err(_) => {
                drop(inner);
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// A wait between half and the whole of `wait`, so processes that lost one broker together do
/// not all knock at the same instant.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Whether a publish must reach a queue. Jobs must: an unroutable job is an error (the publish
/// is `mandatory`, and a returned message fails it), never a silent loss. Lifecycle events may
/// have no subscriber bound yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Required,
    Optional,
}

/// Publishes persistent messages and waits for the broker's confirm, spreading load over a few
/// confirm-mode channels on its own connection (so a publisher blocked by flow control never
/// stalls the acks of consumers). It answers at once, without trying, while the broker is
/// unreachable or blocks publishers.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    size: usize,
    channels: Arc<tokio::sync::RwLock<(u64, Vec<Channel>)>>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Publisher {
    pub async fn new(
        broker: Broker,
        channels: usize,
        timeout: Duration,
    ) -> Result<Publisher, QueueError> {
        let size = channels.max(1);
        let list = open_confirm_channels(&broker.connection(), size).await?;
        let generation = broker.generation();
        Ok(Publisher {
            broker,
            size,
            channels: Arc::new(tokio::sync::RwLock::new((generation, list))),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    /// Whether a publish may be tried now: the broker is connected and not blocking publishers.
    pub fn is_ready(&self) -> bool {
        self.broker.is_ready()
    }

    /// Closes the publishing connection for good.
    pub async fn close(&self) {
        self.broker.close().await;
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        if !self.broker.is_ready() {
            return Err(QueueError::Unavailable);
        }
        let generation = self.broker.generation();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.size;
        {
            let current = self.channels.read().await;
            if current.0 == generation
                && let Some(channel) = current.1.get(i)
                && channel.status().connected()
            {
                return Ok(channel.clone());
            }
        }
        // A reconnect, or a channel the broker closed: open a fresh set (once, for everyone).
        let mut current = self.channels.write().await;
        let stale = current.0 != generation || current.1.iter().any(|c| !c.status().connected());
        if stale {
            *current = (
                generation,
                open_confirm_channels(&self.broker.connection(), self.size).await?,
            );
        }
        current.1.get(i).cloned().ok_or(QueueError::Unavailable)
    }

    /// Publishes one persistent message that must reach a queue, and returns once RabbitMQ has
    /// confirmed it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let items = [(
            exchange.to_string(),
            routing_key.to_string(),
            payload.to_vec(),
        )];
        self.publish_many_with(&items, Routing::Required)
            .await
            .pop()
            .unwrap_or(Err(QueueError::Unavailable))
    }

    /// Publishes jobs (which must reach a queue) on one channel and waits for all their confirms
    /// at once: a confirm window instead of one round trip per message.
    pub async fn publish_many(
        &self,
        items: &[(String, String, Vec<u8>)],
    ) -> Vec<Result<(), QueueError>> {
        self.publish_many_with(items, Routing::Required).await
    }

    /// Publishes send jobs, those bound for the same exchange and routing key (one lane, or one
    /// delay step on the way back to one lane) together in chunks of at most `chunk_max`: one
    /// broker message, one confirm, one delivery and one ack per chunk. Answers per job: the
    /// outcome of the chunk that carried it.
    pub async fn publish_jobs(
        &self,
        items: &[(&str, &str, &[u8])],
        chunk_max: usize,
    ) -> Vec<Result<(), QueueError>> {
        let chunk_max = chunk_max.max(1);
        let mut lanes: Vec<(&str, &str, Vec<usize>)> = Vec::new();
        for (i, (exchange, key, _)) in items.iter().enumerate() {
            match lanes
                .iter_mut()
                .find(|(e, k, members)| e == exchange && k == key && members.len() < chunk_max)
            {
                Some((_, _, members)) => members.push(i),
                None => lanes.push((exchange, key, vec![i])),
            }
        }
        let messages: Vec<(String, String, Vec<u8>)> = lanes
            .iter()
            .map(|(exchange, key, members)| {
                let body = crate::domain::job::chunk(members.iter().map(|&i| items[i].2));
                (exchange.to_string(), key.to_string(), body)
            })
            .collect();
        let published = self.publish_many(&messages).await;
        let mut results: Vec<Option<Result<(), QueueError>>> = items.iter().map(|_| None).collect();
        for ((_, _, members), outcome) in lanes.iter().zip(published) {
            for &i in members {
                results[i] = Some(match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.again()),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(QueueError::NotPublished("not published".into()))))
            .collect()
    }

    pub async fn publish_many_with(
        &self,
        items: &[(String, String, Vec<u8>)],
        routing: Routing,
    ) -> Vec<Result<(), QueueError>> {
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                return items
                    .iter()
                    .map(|_| Err(QueueError::NotPublished(message.clone())))
                    .collect();
            }
        };
        let mut pending = Vec::with_capacity(items.len());
        for (exchange, key, payload) in items {
            let confirm = channel
                .basic_publish(
                    s(exchange),
                    s(key),
                    BasicPublishOptions {
                        mandatory: routing == Routing::Required,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type(s("application/json")),
                )
                .await;
            pending.push(confirm);
        }
        let mut results = Vec::with_capacity(items.len());
        let deadline = tokio::time::Instant::now() + self.timeout;
        for p in pending {
            results.push(match p {
                Err(e) => Err(QueueError::from(e)),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(QueueError::ConfirmTimeout(self.timeout)),
                    Ok(Err(e)) => Err(e.into()),
                    Ok(Ok(Confirmation::Ack(Some(_)))) => Err(QueueError::Unroutable),
                    Ok(Ok(c)) if c.is_nack() => Err(QueueError::Nacked),
                    Ok(Ok(_)) => Ok(()),
                },
            });
        }
        results
    }
}

/// Owned (exchange, routing key, body) items as [`Publisher::publish_jobs`] reads them.
pub fn borrowed(items: &[(String, String, Vec<u8>)]) -> Vec<(&str, &str, &[u8])> {
    items
        .iter()
        .map(|(exchange, key, body)| (exchange.as_str(), key.as_str(), body.as_slice()))
        .collect()
}

async fn open_confirm_channels(
    connection: &Connection,
    count: usize,
) -> Result<Vec<Channel>, QueueError> {
    let mut list = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        list.push(channel);
    }
    Ok(list)
}

/// Parks a job in the delay queue closest to `wait`; it comes back to its sender's lane when the
/// step's TTL expires (and goes round again if released before its `not_before_ms`).
pub async fn park(
    publisher: &Publisher,
    names: &Names,
    delay_steps: &[Duration],
    job: &SendJob,
    wait: Duration,
) -> Result<(), QueueError> {
    let (exchange, key) = parking(names, delay_steps, job, wait);
    publisher.publish(&exchange, &key, &job.encode()).await
}

/// Where a job waiting `wait` is published: the exchange of the delay step closest to the wait,
/// and its lane's routing key for the way back (for batches published with `publish_many`).
pub fn parking(
    names: &Names,
    delay_steps: &[Duration],
    job: &SendJob,
    wait: Duration,
) -> (String, String) {
    let step = delay_step(delay_steps, wait);
    (names.delay(step), names.lane_key(&job.sender, job.lane()))
}

/// A consumer with manual acks and a bounded prefetch on its own channel.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), QueueError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            s(queue),
            s(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_every_node_of_a_cluster() {
        let cases: [(&str, &[&str]); 4] = [
            ("amqp://a:5672/%2f", &["amqp://a:5672/%2f"]),
            (
                "amqp://a:5672/%2f, amqp://b:5672/%2f,amqp://c:5672/%2f",
                &[
                    "amqp://a:5672/%2f",
                    "amqp://b:5672/%2f",
                    "amqp://c:5672/%2f",
                ],
            ),
            ("amqp://a/%2f,", &["amqp://a/%2f"]),
            ("", &[""]),
        ];
        for (raw, expected) in cases {
            assert_eq!(broker_urls(raw), expected, "{raw}");
        }
    }
}
