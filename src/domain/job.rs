//! The job that travels through RabbitMQ from enqueue to send: versioned JSON.
//!
//! The Cloud API body is carried as raw JSON so that neither the publisher nor the worker pays to
//! re-parse it; only the fields the worker reasons about are typed.
//!
//! A broker message carries one job (a JSON object) or a chunk of jobs of one lane (a JSON array
//! of them): a chunk costs RabbitMQ one publish, one confirm, one delivery and one ack however
//! many jobs it holds. A chunk is built from the jobs' encodings as they are, without re-encoding.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Category, DeliveryMode, Lane};

pub const JOB_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    pub language: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendJob {
    /// Schema version; a worker refuses versions it does not know instead of guessing.
    pub v: u16,
    pub id: Uuid,
    pub sender: String,
    pub recipient: String,
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    pub free_form: bool,
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Send attempts already made (0 for a fresh job).
    #[serde(default)]
    pub attempt: u32,
    /// Throttle answers (130429, 131056) already received; bounded separately from attempts.
    #[serde(default)]
    pub throttles: u32,
    /// Deferrals so far (tier, paused template, per-user cap); informative only.
    #[serde(default)]
    pub deferrals: u32,
    pub enqueued_at_ms: i64,
    /// Not to be sent before this instant (ms since the epoch); 0 when free to go.
    #[serde(default)]
    pub not_before_ms: i64,
    /// The campaign this message belongs to: the worker hands it back when the campaign is paused
    /// and cancels it when the campaign is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Uuid>,
    pub body: Box<RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job is not valid JSON for schema v{JOB_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("job schema version {0} is not supported by this worker")]
    UnsupportedVersion(u16),
    #[error("a chunk of jobs is empty")]
    EmptyChunk,
}

impl SendJob {
    /// How long the job has been ready to send at `now_ms`: since it was enqueued, or since its
    /// `not_before` passed (a deferral's wait is not a backlog's).
    pub fn ready_for_ms(&self, now_ms: i64) -> i64 {
        (now_ms - self.enqueued_at_ms.max(self.not_before_ms)).max(0)
    }

    /// A job as it first enters a lane: no attempt, throttle or deferral yet, due now, at most
    /// once. A job with a template is a template message; one without is free-form.
    pub fn new(
        id: Uuid,
        sender: String,
        recipient: String,
        category: Category,
        template: Option<TemplateRef>,
        body: Box<RawValue>,
        enqueued_at_ms: i64,
    ) -> SendJob {
        SendJob {
            v: JOB_VERSION,
            id,
            sender,
            recipient,
            category,
            free_form: template.is_none(),
            template,
            delivery: DeliveryMode::AtMostOnce,
            attempt: 0,
            throttles: 0,
            deferrals: 0,
            enqueued_at_ms,
            not_before_ms: 0,
            campaign: None,
            body,
        }
    }

    pub fn with_delivery(mut self, delivery: DeliveryMode) -> SendJob {
        self.delivery = delivery;
        self
    }

    /// A message of a campaign: handed back when it is paused, cancelled when it is cancelled.
    pub fn in_campaign(mut self, campaign: Uuid) -> SendJob {
        self.campaign = Some(campaign);
        self
    }

    /// A message going round again with the attempts its row already counts.
    pub fn with_attempts(mut self, attempt: u32) -> SendJob {
        self.attempt = attempt;
        self
    }

    /// Not to be sent before this instant (ms since the epoch).
    pub fn not_before(mut self, not_before_ms: i64) -> SendJob {
        self.not_before_ms = not_before_ms;
        self
    }

    pub fn lane(&self) -> Lane {
        self.category.lane()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and a RawValue cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<SendJob, JobError> {
        let job: SendJob = serde_json::from_slice(bytes)?;
        if job.v != JOB_VERSION {
            return Err(JobError::UnsupportedVersion(job.v));
        }
        Ok(job)
    }

    /// The jobs a broker message carries: one job, or a chunk of them (never empty).
    pub fn decode_many(bytes: &[u8]) -> Result<Vec<SendJob>, JobError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            return Ok(vec![SendJob::decode(bytes)?]);
        }
        let jobs: Vec<SendJob> = serde_json::from_slice(bytes)?;
        if jobs.is_empty() {
            return Err(JobError::EmptyChunk);
        }
        if let Some(job) = jobs.iter().find(|j| j.v != JOB_VERSION) {
            return Err(JobError::UnsupportedVersion(job.v));
        }
        Ok(jobs)
    }
}

/// One broker message's body for encoded jobs of one lane: the job itself when there is one, a
/// chunk (a JSON array of them) when there are more.
pub fn chunk<'a>(encoded: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let encoded: Vec<&[u8]> = encoded.into_iter().collect();
    if let [one] = encoded.as_slice() {
        return one.to_vec();
    }
    let size = encoded.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    for (i, job) in encoded.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(job);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u128) -> SendJob {
        SendJob::new(
            Uuid::from_u128(n),
            "100".into(),
            format!("52155{n:08}"),
            Category::Marketing,
            None,
            RawValue::from_string(format!(r#"{{"to":"{n}"}}"#)).unwrap(),
            n as i64,
        )
    }

    #[test]
    fn a_message_carries_one_job_or_a_chunk() {
        let jobs: Vec<SendJob> = (1..=3).map(job).collect();
        let encoded: Vec<Vec<u8>> = jobs.iter().map(SendJob::encode).collect();
        // (jobs chunked, ids decoded)
        let cases: [(usize, Vec<u128>); 3] = [(1, vec![1]), (2, vec![1, 2]), (3, vec![1, 2, 3])];
        for (n, expected) in cases {
            let body = chunk(encoded[..n].iter().map(Vec::as_slice));
            assert_eq!(body.first() == Some(&b'['), n > 1, "{n} jobs");
            let ids: Vec<u128> = SendJob::decode_many(&body)
                .unwrap()
                .iter()
                .map(|j| j.id.as_u128())
                .collect();
            assert_eq!(ids, expected);
        }
    }

    #[test]
    fn a_chunk_keeps_each_body_byte_for_byte_and_refuses_what_it_cannot_carry() {
        let body = chunk([job(7).encode().as_slice(), job(8).encode().as_slice()]);
        let jobs = SendJob::decode_many(&body).unwrap();
        assert_eq!(jobs[1].body.get(), r#"{"to":"8"}"#);
        assert!(matches!(
            SendJob::decode_many(b" []"),
            Err(JobError::EmptyChunk)
        ));
        let mut future = job(9);
        future.v = 2;
        let body = chunk([job(1).encode().as_slice(), future.encode().as_slice()]);
        assert!(matches!(
            SendJob::decode_many(&body),
            Err(JobError::UnsupportedVersion(2))
        ));
        assert!(SendJob::decode_many(b"[{").is_err());
    }

    #[test]
    fn ready_for_counts_from_enqueue_or_from_the_end_of_a_deferral() {
        // (enqueued_at_ms, not_before_ms, now_ms, expected)
        let cases = [
            (1_000, 0, 4_000, 3_000),
            (1_000, 10_000, 12_500, 2_500),
            (1_000, 10_000, 9_000, 0),
            (5_000, 0, 4_000, 0),
        ];
        for (enqueued, not_before, now, expected) in cases {
            let mut job = sample();
            job.enqueued_at_ms = enqueued;
            job.not_before_ms = not_before;
            assert_eq!(
                job.ready_for_ms(now),
                expected,
                "{enqueued} {not_before} {now}"
            );
        }
    }

    pub(crate) fn sample() -> SendJob {
        SendJob::new(
            Uuid::now_v7(),
            "1065550001".into(),
            "5215512345678".into(),
            Category::Marketing,
            Some(TemplateRef { name: "promo".into(), language: "es_MX".into() }),
            RawValue::from_string(r#"{"messaging_product":"whatsapp","to":"5215512345678","type":"template","template":{"name":"promo","language":{"code":"es_MX"}}}"#.into()).unwrap(),
            1_700_000_000_000,
        )
    }

    #[test]
    fn round_trips_and_keeps_the_body_verbatim() {
        let job = sample();
        let back = SendJob::decode(&job.encode()).unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.body.get(), job.body.get());
        assert_eq!(back.lane(), Lane::Marketing);
        assert!(!back.free_form);
        assert_eq!(
            (back.attempt, back.not_before_ms, back.campaign),
            (0, 0, None)
        );
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let mut job = sample();
        job.v = 2;
        assert!(matches!(
            SendJob::decode(&job.encode()),
            Err(JobError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            SendJob::decode(b"{nope"),
            Err(JobError::Malformed(_))
        ));
    }
}
