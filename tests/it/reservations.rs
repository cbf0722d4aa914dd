//! The batch forms of the two Redis round trips on the send path, against a real Redis: one
//! reservation script for many messages counts exactly as one message at a time would, and one
//! snapshot read answers each message in order.

use pregon::config::Config;
use pregon::domain::decision::ConsentAction;
use pregon::state::{Reservation, ReserveItem, SnapshotQuery, State, now_ms};
use uuid::Uuid;

async fn state() -> State {
    let url = std::env::var("PREGON_REDIS_URL").unwrap_or_else(|_| Config::default().redis_url);
    let prefix = format!("it-res-{}", Uuid::now_v7().simple());
    State::connect(&url, &prefix).await.unwrap()
}

/// Declares the copy of PostgreSQL's state whole, as a finished rebuild does.
async fn copy_complete(state: &State) {
    assert!(
        state
            .claim_rebuild("t", std::time::Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(state.finish_rebuild("t", now_ms()).await.unwrap());
}

fn item(recipient: &str, message_id: Uuid, counts_against_tier: bool) -> ReserveItem<'_> {
    ReserveItem {
        recipient,
        message_id,
        attempt: 0,
        counts_against_tier,
    }
}

#[tokio::test]
async fn one_reservation_script_counts_a_batch_as_one_at_a_time_would() {
    let state = state().await;
    copy_complete(&state).await;
    let ids: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    // Limit 3: a, b and c fill it; a again is already counted; d finds it full; a
    // service message (not counted) still goes; b's message is claimed twice in one batch.
    let batch = [
        item("521550000001", ids[0], true),
        item("521550000002", ids[1], true),
        item("521550000003", ids[2], true),
        item("521550000001", ids[3], true),
        item("521550000004", ids[4], true),
        item("521550000005", ids[5], false),
        item("521550000002", ids[1], true),
    ];
    let answers = state.reserve_many("pn:t", 3, "me", &batch).await.unwrap();
    assert_eq!(answers.len(), batch.len());
    assert_eq!(answers[..4], [Reservation::Granted; 4]);
    match answers[4] {
        Reservation::TierFull { frees_at_ms } => {
            assert!(frees_at_ms > now_ms() + 23 * 3_600_000, "{frees_at_ms}")
        }
        ref other => panic!("expected the tier full, got {other:?}"),
    }
    assert_eq!(answers[5], Reservation::Granted);
    assert_eq!(answers[6], Reservation::AlreadyClaimed);
    assert_eq!(state.tier_usage("pn:t").await.unwrap(), 3);

    // The same messages one at a time on another counter: the same answers, the same count.
    let again: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    let mut one_by_one = Vec::new();
    for (i, b) in batch.iter().enumerate() {
        let id = if i == 6 { again[1] } else { again[i] };
        let single = item(b.recipient, id, b.counts_against_tier);
        one_by_one.push(state.reserve("pn:u", 3, "me", single).await.unwrap());
    }
    assert_eq!(
        one_by_one
            .iter()
            .map(std::mem::discriminant)
            .collect::<Vec<_>>(),
        answers
            .iter()
            .map(std::mem::discriminant)
            .collect::<Vec<_>>()
    );
    assert_eq!(state.tier_usage("pn:u").await.unwrap(), 3);

    // Nothing at all to reserve is no round trip and no answer.
    assert!(
        state
            .reserve_many("pn:t", 3, "me", &[])
            .await
            .unwrap()
            .is_empty()
    );
    state.delete_all().await.unwrap();
}

/// Without a limit every counted recipient is counted (once, however often it comes), and the
/// counter lives for the moving window from the last count.
#[tokio::test]
async fn without_a_limit_a_batch_counts_each_recipient_once() {
    let url = std::env::var("PREGON_REDIS_URL").unwrap_or_else(|_| Config::default().redis_url);
    let prefix = format!("it-res-{}", Uuid::now_v7().simple());
    let state = State::connect(&url, &prefix).await.unwrap();
    copy_complete(&state).await;
    let batch = [
        item("521550000031", Uuid::now_v7(), true),
        item("521550000032", Uuid::now_v7(), true),
        item("521550000031", Uuid::now_v7(), true),
        item("521550000033", Uuid::now_v7(), false),
    ];
    let answers = state.reserve_many("pn:v", -1, "me", &batch).await.unwrap();
    assert_eq!(answers, [Reservation::Granted; 4]);
    assert_eq!(state.tier_usage("pn:v").await.unwrap(), 2);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("{{{prefix}}}:tier:pn:v"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let window = 24 * 3_600_000;
    assert!(
        ttl_ms > window - 60_000 && ttl_ms <= window,
        "the counter expires in {ttl_ms} ms"
    );
    // Only service messages: nothing counted, the counter untouched.
    let service = [item("521550000034", Uuid::now_v7(), false)];
    let answers = state
        .reserve_many("pn:w", -1, "me", &service)
        .await
        .unwrap();
    assert_eq!(answers, [Reservation::Granted]);
    assert_eq!(state.tier_usage("pn:w").await.unwrap(), 0);
    state.delete_all().await.unwrap();
}

#[tokio::test]
async fn without_the_copy_marker_a_batch_takes_nothing() {
    let state = state().await;
    let batch = [
        item("521550000011", Uuid::now_v7(), true),
        item("521550000012", Uuid::now_v7(), false),
    ];
    let answers = state.reserve_many("pn:t", -1, "me", &batch).await.unwrap();
    assert_eq!(answers, [Reservation::CopyMissing; 2]);
    assert_eq!(state.tier_usage("pn:t").await.unwrap(), 0);
    // Not claimed either: once the copy is back, both are granted.
    copy_complete(&state).await;
    let answers = state.reserve_many("pn:t", -1, "me", &batch).await.unwrap();
    assert_eq!(answers, [Reservation::Granted; 2]);
    assert_eq!(state.tier_usage("pn:t").await.unwrap(), 1);
    state.delete_all().await.unwrap();
}

#[tokio::test]
async fn one_snapshot_read_answers_each_message_of_a_batch_in_order() {
    let state = state().await;
    copy_complete(&state).await;
    let (opted_in, sent, plain) = ("521550000021", "521550000022", "521550000023");
    state
        .mirror_consent(&[(opted_in.into(), "marketing".into(), ConsentAction::OptIn)])
        .await
        .unwrap();
    let (sent_id, plain_id, opted_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    state.mark_sent(sent_id, "wamid.SENT").await.unwrap();
    let query = |message_id, recipient| SnapshotQuery {
        message_id,
        attempt: 0,
        recipient,
        template: None,
        campaign: None,
    };
    let queries = [
        query(opted_id, opted_in),
        query(sent_id, sent),
        query(plain_id, plain),
    ];
    let snapshots = state.snapshots("1065550000100", &queries).await.unwrap();
    assert_eq!(snapshots.len(), 3);
    assert_eq!(snapshots[0].consent.marketing, Some(ConsentAction::OptIn));
    assert_eq!(snapshots[0].sent_wamid, None);
    assert_eq!(snapshots[1].consent.marketing, None);
    assert_eq!(snapshots[1].sent_wamid.as_deref(), Some("wamid.SENT"));
    assert_eq!(snapshots[2].consent.marketing, None);
    assert_eq!(snapshots[2].sent_wamid, None);
    assert!(snapshots.iter().all(|s| s.copy_since_ms.is_some()));
    // Each one alone reads the same.
    for (q, batch) in queries.iter().zip(&snapshots) {
        let alone = state.snapshot("1065550000100", *q).await.unwrap();
        assert_eq!(alone.consent.marketing, batch.consent.marketing);
        assert_eq!(alone.sent_wamid, batch.sent_wamid);
    }
    state.delete_all().await.unwrap();
}

/// A batch reads each of its templates and campaigns once; each message still gets its own
/// template's and campaign's state, in order, including one Redis does not know.
#[tokio::test]
async fn a_snapshot_batch_gives_each_message_its_own_template_and_campaign() {
    use pregon::domain::campaign::CampaignState;
    use pregon::domain::decision::{CampaignGate, TemplateStatus};
    use pregon::domain::job::TemplateRef;
    let state = state().await;
    copy_complete(&state).await;
    state
        .mirror_template("promo", "es_MX", "APPROVED")
        .await
        .unwrap();
    state
        .mirror_template("otp", "es_MX", "PAUSED")
        .await
        .unwrap();
    let (running, paused, unknown) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    state
        .mirror_campaign(running, CampaignState::Running)
        .await
        .unwrap();
    state
        .mirror_campaign(paused, CampaignState::Paused)
        .await
        .unwrap();
    let template = |name: &str| TemplateRef {
        name: name.into(),
        language: "es_MX".into(),
    };
    let (promo, otp, gone) = (template("promo"), template("otp"), template("gone"));
    let query = |recipient, template, campaign| SnapshotQuery {
        message_id: Uuid::now_v7(),
        attempt: 0,
        recipient,
        template,
        campaign,
    };
    let queries = [
        query("521550000041", Some(&promo), Some(running)),
        query("521550000042", Some(&otp), None),
        query("521550000043", Some(&promo), Some(paused)),
        query("521550000044", None, Some(running)),
        query("521550000045", Some(&gone), Some(unknown)),
        query("521550000046", Some(&otp), Some(paused)),
    ];
    let snapshots = state.snapshots("1065550000101", &queries).await.unwrap();
    let seen: Vec<(Option<TemplateStatus>, CampaignGate)> = snapshots
        .iter()
        .map(|s| (s.template.clone(), s.campaign))
        .collect();
    let expected = [
        (Some(TemplateStatus::Approved), CampaignGate::Open),
        (Some(TemplateStatus::Paused), CampaignGate::Open),
        (Some(TemplateStatus::Approved), CampaignGate::Paused),
        (None, CampaignGate::Open),
        (Some(TemplateStatus::Unknown), CampaignGate::Unknown),
        (Some(TemplateStatus::Paused), CampaignGate::Paused),
    ];
    assert_eq!(seen, expected);
    // Each one alone reads the same.
    for (q, batch) in queries.iter().zip(&snapshots) {
        let alone = state.snapshot("1065550000101", *q).await.unwrap();
        assert_eq!(alone.template, batch.template);
        assert_eq!(alone.campaign, batch.campaign);
    }
    state.delete_all().await.unwrap();
}

#[tokio::test]
async fn mirroring_no_consent_events_is_nothing_to_do() {
    // Redis refuses an empty pipeline; the mirror must not pass that on to its callers.
    let state = state().await;
    state.mirror_consent(&[]).await.unwrap();
}
