//! RabbitMQ adapter: topology, a publisher with confirms, and lane consumers.
//!
//! Topology (every name starts with the namespace `ns`):
//! - `ns.send` (direct): routing key `{phone_number_id}.tx|mk` → quorum queue `ns.send.{id}.tx|mk`,
//!   single active consumer, dead-lettering to `ns.dead` past the delivery limit;
//! - `ns.delay.{ms}` (fanout) → classic queue of the same name with a TTL that dead-letters back to
//!   `ns.send` under the message's original routing key: retries and deferrals without a plugin;
//! - `ns.dead` (fanout) → quorum queue `ns.dead`: exhausted and undecodable jobs, kept for inspection;
//! - `ns.ingest` (topic) → quorum queue `ns.ingest`: enqueue requests published by other systems.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

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
}

/// How many times a quorum queue redelivers one message (crashes, requeues) before RabbitMQ
/// dead-letters it on its own; a backstop behind [`REDELIVERY_LIMIT`].
const DELIVERY_LIMIT: i64 = 50;

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
    pub fn delay(&self, step: Duration) -> String {
        format!("{}.delay.{}", self.ns, step.as_millis())
    }
    pub fn dead(&self) -> String {
        format!("{}.dead", self.ns)
    }
    pub fn ingest(&self) -> String {
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
    let quorum = [("x-queue-type", text("quorum"))];
    declare_queue(channel, &names.dead(), &table(&quorum)).await?;
    bind(channel, &names.dead(), &names.dead(), "").await?;
    declare_queue(channel, &names.ingest(), &table(&quorum)).await?;
    bind(channel, &names.ingest(), &names.ingest(), "#").await?;
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
        let args = table(&[
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(step.as_millis() as i64),
            ),
            ("x-dead-letter-exchange", text(&names.send_exchange())),
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
        let args = table(&[
            ("x-queue-type", text("quorum")),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
            ("x-dead-letter-exchange", text(&names.dead())),
        ]);
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
        Ok(q) => Ok(Some(q.message_count())),
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
    let mut queues: Vec<String> = vec![names.dead(), names.ingest()];
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

/// Publishes persistent messages and waits for the broker's confirm, spreading load over a few
/// confirm-mode channels.
#[derive(Clone)]
pub struct Publisher {
    channels: Arc<Vec<Channel>>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Publisher {
    pub async fn new(
        connection: &Connection,
        channels: usize,
        timeout: Duration,
    ) -> Result<Publisher, QueueError> {
        let mut list = Vec::with_capacity(channels);
        for _ in 0..channels.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            list.push(channel);
        }
        Ok(Publisher {
            channels: Arc::new(list),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    fn channel(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[i]
    }

    /// Publishes one persistent message and returns once RabbitMQ has confirmed it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let confirm = self
            .channel()
            .basic_publish(
                s(exchange),
                s(routing_key),
                BasicPublishOptions {
                    mandatory: false,
                    ..BasicPublishOptions::default()
                },
                payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(s("application/json")),
            )
            .await?;
        let confirmation = tokio::time::timeout(self.timeout, confirm)
            .await
            .map_err(|_| QueueError::ConfirmTimeout(self.timeout))??;
        if confirmation.is_nack() {
            return Err(QueueError::Nacked);
        }
        Ok(())
    }

    /// Publishes many messages on one channel and waits for all their confirms at once: a confirm
    /// window instead of one round trip per message.
    pub async fn publish_many(
        &self,
        items: &[(String, String, Vec<u8>)],
    ) -> Vec<Result<(), QueueError>> {
        let channel = self.channel().clone();
        let mut pending = Vec::with_capacity(items.len());
        for (exchange, key, payload) in items {
            let confirm = channel
                .basic_publish(
                    s(exchange),
                    s(key),
                    BasicPublishOptions::default(),
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
                    Ok(Ok(c)) if c.is_nack() => Err(QueueError::Nacked),
                    Ok(Ok(_)) => Ok(()),
                },
            });
        }
        results
    }
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
