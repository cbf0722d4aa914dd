//! A job's share of the broker delivery that carried it. A delivery carries one job or a chunk of
//! jobs of one lane (`domain::job`); each job is decided on and settled on its own, and the
//! delivery is acknowledged once every job it carried is settled. If any one of them had to be
//! handed back (its outcome could not be recorded), the whole delivery goes back to the queue
//! instead: on redelivery the sent markers and send claims keep the jobs already sent from being
//! sent again, and the others are decided on afresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

struct Carrier {
    delivery: Delivery,
    unsettled: AtomicUsize,
    requeue: AtomicBool,
}

/// One job's share of a delivery; settled once, by [`ack`] or [`requeue`]. A share dropped without
/// either leaves its delivery unacknowledged until the channel closes, when RabbitMQ redelivers it.
pub(super) struct Share {
    carrier: Arc<Carrier>,
}

impl Share {
    /// The delivery, split among the `jobs` it carried (at least one).
    pub(super) fn split(delivery: Delivery, jobs: usize) -> Vec<Share> {
        let jobs = jobs.max(1);
        let carrier = Arc::new(Carrier {
            delivery,
            unsettled: AtomicUsize::new(jobs),
            requeue: AtomicBool::new(false),
        });
        (0..jobs)
            .map(|_| Share {
                carrier: carrier.clone(),
            })
            .collect()
    }

    /// A delivery carrying one job (or one that could not be read).
    pub(super) fn whole(delivery: Delivery) -> Share {
        let mut shares = Share::split(delivery, 1);
        // `split` makes exactly the number of shares asked for.
        shares.remove(0)
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.carrier.delivery.data
    }
}

/// This job is settled; the delivery is acknowledged with the last of its jobs.
pub(super) async fn ack(share: Share) {
    settle(share, false).await;
}

/// This job must come back: its delivery goes back to the queue, whole, once all its jobs are
/// settled.
pub(super) async fn requeue(share: Share) {
    settle(share, true).await;
}

async fn settle(share: Share, requeue: bool) {
    let carrier = &share.carrier;
    if requeue {
        carrier.requeue.store(true, Ordering::Release);
    }
    if carrier.unsettled.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    if carrier.requeue.load(Ordering::Acquire) {
        let _ = carrier
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    } else if let Err(e) = carrier.delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; RabbitMQ will redeliver and the send claims prevent a duplicate");
    }
}
