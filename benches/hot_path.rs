//! Hot-path pieces: the send decision, message validation, job encode/decode, and the Redis
//! round trips every send makes (snapshot read, tier reservation + claim) against the local Redis.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pregon::domain::decision::{
    self, Consent, ConsentAction, Facts, Quality, SenderState, Snapshot, TemplateStatus,
};
use pregon::domain::job::{SendJob, TemplateRef};
use pregon::domain::{Category, DeliveryMode, message};
use serde_json::json;

fn job() -> SendJob {
    let body = json!({"messaging_product":"whatsapp","to":"5215512345678","type":"template",
        "template":{"name":"order_update","language":{"code":"es_MX"},
          "components":[{"type":"body","parameters":[{"type":"text","text":"A-1234"}]}]}});
    SendJob::new(
        uuid::Uuid::now_v7(),
        "1065550000100".into(),
        "5215512345678".into(),
        Category::Utility,
        Some(TemplateRef {
            name: "order_update".into(),
            language: "es_MX".into(),
        }),
        serde_json::value::RawValue::from_string(body.to_string()).unwrap(),
        1_700_000_000_000,
    )
}

fn pure(c: &mut Criterion) {
    let snapshot = Snapshot {
        sender: SenderState {
            connected: true,
            quality: Quality::Green,
            paused: false,
            marketing_paused: false,
        },
        template: Some(TemplateStatus::Approved),
        consent: Consent {
            marketing: Some(ConsentAction::OptIn),
            utility: None,
        },
        window_open: false,
        suppressed: false,
        sent_wamid: None,
        claimed: false,
        campaign: pregon::domain::decision::CampaignGate::Open,
        template_probe: false,
        copy_since_ms: Some(0),
    };
    let facts = Facts {
        category: Category::Marketing,
        free_form: false,
        delivery: DeliveryMode::AtMostOnce,
    };
    c.bench_function("send decision", |b| {
        b.iter(|| decision::decide(black_box(&snapshot), black_box(&facts)))
    });

    let body = json!({"messaging_product":"whatsapp","to":"+52 1 55 1234 5678","type":"template",
        "template":{"name":"order_update","language":{"code":"es_MX"},
          "components":[{"type":"body","parameters":[{"type":"text","text":"A-1234"}]}]}});
    c.bench_function("validate template message", |b| {
        b.iter(|| message::validate(black_box(&body)))
    });

    let job = job();
    let encoded = job.encode();
    c.bench_function("job encode", |b| b.iter(|| black_box(&job).encode()));
    c.bench_function("job decode", |b| {
        b.iter(|| SendJob::decode(black_box(&encoded)))
    });
}

/// The receiver's work per webhook POST (signature check, JSON validity) and the processor's
/// parse, for a full batch of 1,000 statuses.
fn webhook_parsing(c: &mut Criterion) {
    let statuses: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            serde_json::json!({"id": format!("wamid.{i}"), "status": "delivered", "timestamp": "1700000000",
                "recipient_id": "5215512345678", "pricing": {"billable": true, "pricing_model": "PMP",
                "category": "utility", "type": "regular"}})
        })
        .collect();
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "W",
        "changes": [{"field": "messages", "value": {"metadata": {"phone_number_id": "PN"},
        "statuses": statuses}}]}]})
    .to_string()
    .into_bytes();
    let secrets = vec![b"secret".to_vec()];
    let signature = pregon::whatsapp::sign(b"secret", &body);
    c.bench_function("webhook receive check (1,000 statuses)", |b| {
        b.iter(|| {
            assert!(pregon::whatsapp::verify(
                &secrets,
                black_box(&body),
                &signature
            ));
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok()
        })
    });
    c.bench_function("webhook parse (1,000 statuses)", |b| {
        b.iter(|| pregon::domain::webhook::parse(black_box(&body)).map(|u| u.len()))
    });
}

fn redis_round_trips(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url =
        std::env::var("PREGON_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let Ok(state) = runtime.block_on(pregon::state::State::connect(&url, &prefix)) else {
        eprintln!("Redis is not reachable at {url}; skipping the round-trip benchmarks");
        return;
    };
    let template = TemplateRef {
        name: "order_update".into(),
        language: "es_MX".into(),
    };
    let id = uuid::Uuid::now_v7();
    c.bench_function("redis snapshot read", |b| {
        b.iter(|| {
            runtime
                .block_on(state.snapshot(
                    "1065550000100",
                    pregon::state::SnapshotQuery {
                        message_id: id,
                        attempt: 0,
                        recipient: "5215512345678",
                        template: Some(&template),
                        campaign: None,
                    },
                ))
                .unwrap()
        })
    });
    let mut n: u64 = 0;
    c.bench_function("redis tier reservation + claim", |b| {
        b.iter(|| {
            n += 1;
            let recipient = format!("52155{:08}", n % 100_000);
            runtime
                .block_on(state.reserve(
                    "pn:bench",
                    -1,
                    "bench",
                    pregon::state::ReserveItem {
                        recipient: &recipient,
                        message_id: uuid::Uuid::now_v7(),
                        attempt: 0,
                        counts_against_tier: true,
                    },
                ))
                .unwrap()
        })
    });
    runtime.block_on(state.delete_all()).unwrap();
}

criterion_group!(benches, pure, webhook_parsing, redis_round_trips);
criterion_main!(benches);
