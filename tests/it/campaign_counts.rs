//! The progress counters kept by the triggers on `messages`: after every kind of statement a
//! campaign's messages go through (planning, hand-over, sends, failures, a detail-only change,
//! a statement that changes no status, replies, several campaigns and plain messages in one
//! statement), `campaign_counts` says exactly what counting the rows says.

use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{Env, Options};

type Counts = Vec<(Uuid, String, String, i64)>;

async fn kept(pool: &PgPool) -> Counts {
    sqlx::query_as(
        "SELECT campaign_id, status, detail, n FROM campaign_counts WHERE n <> 0
         ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn recounted(pool: &PgPool) -> Counts {
    sqlx::query_as(
        "SELECT * FROM (
             SELECT campaign_id, status,
                    campaign_count_detail(status, status_reason, last_error_code) AS detail,
                    count(*) AS n
             FROM messages WHERE campaign_id IS NOT NULL GROUP BY 1, 2, 3
             UNION ALL
             SELECT campaign_id, 'replied', '', count(*)
             FROM messages WHERE campaign_id IS NOT NULL AND replied_at IS NOT NULL GROUP BY 1
         ) c ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn step(pool: &PgPool, what: &str, sql: &'static str, a: Uuid, b: Uuid) {
    sqlx::query(sql)
        .bind(a)
        .bind(b)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(kept(pool).await, recounted(pool).await, "after {what}");
}

#[tokio::test]
async fn the_counters_match_a_recount_after_every_kind_of_change() {
    let env = Env::start(Options::default()).await;
    let pool = &env.services.pool;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let steps = [
        (
            "planning two campaigns and writing plain messages in one statement",
            "INSERT INTO messages (id, sender, recipient, category, message_type, status,
                 campaign_id, campaign_seq)
             SELECT gen_random_uuid(), 's1', '52155' || i, 'marketing', 'template',
                    CASE WHEN i <= 600 THEN 'planned' ELSE 'queued' END,
                    CASE WHEN i <= 500 THEN $1 WHEN i <= 600 THEN $2 END, i
             FROM generate_series(1, 620) i",
        ),
        (
            "a hand-over, some deferred by quiet hours",
            "UPDATE messages SET
                 status = CASE WHEN campaign_id = $1 THEN 'queued' ELSE 'deferred' END,
                 status_reason = CASE WHEN campaign_id = $1 THEN NULL ELSE 'quiet_hours' END
             WHERE status = 'planned' AND campaign_seq <= 560",
        ),
        (
            "sends and two kinds of failure in one statement",
            "UPDATE messages SET
                 status = CASE WHEN campaign_seq % 5 = 0 THEN 'failed' ELSE 'sent' END,
                 last_error_code = CASE WHEN campaign_seq % 5 <> 0 THEN NULL
                                        WHEN campaign_seq % 2 = 0 THEN 131026 ELSE 131049 END
             WHERE campaign_id = $1 AND status = 'queued' AND campaign_seq <= 300",
        ),
        (
            "a failure's detail changing under the same status",
            "UPDATE messages SET last_error_code = 131049
             WHERE campaign_id = $1 AND status = 'failed' AND last_error_code = 131026
               AND campaign_seq <= 100",
        ),
        (
            "a statement that changes no status",
            "UPDATE messages SET updated_at = now(), attempts = attempts + 1",
        ),
        (
            "replies",
            "UPDATE messages SET replied_at = now()
             WHERE campaign_id = $1 AND status = 'sent' AND campaign_seq <= 150",
        ),
        (
            "replies seen again (kept, as the webhook fold keeps them)",
            "UPDATE messages SET replied_at = COALESCE(replied_at, now())
             WHERE campaign_id = $1 AND campaign_seq <= 200",
        ),
        (
            "both campaigns and plain messages moving in one statement",
            "UPDATE messages SET status = CASE
                 WHEN campaign_id = $1 AND status = 'sent' THEN 'delivered'
                 WHEN campaign_id = $2 AND status = 'deferred' THEN 'queued'
                 WHEN campaign_id IS NULL THEN 'sent'
                 ELSE status END,
                 status_reason = CASE WHEN campaign_id = $2 AND status = 'deferred' THEN NULL
                                      ELSE status_reason END",
        ),
        (
            "skipped with a reason, and cancellation of what was never handed over",
            "UPDATE messages SET
                 status = CASE WHEN status = 'queued' THEN 'skipped' ELSE 'cancelled' END,
                 status_reason = CASE WHEN status = 'queued' THEN 'opted_out'
                                      ELSE 'campaign_cancelled' END
             WHERE campaign_id IN ($1, $2) AND status IN ('planned', 'queued')
               AND campaign_seq % 3 = 0",
        ),
    ];
    for (what, sql) in steps {
        step(pool, what, sql, a, b).await;
    }
    // The steps reached every kind of counter they meant to.
    let statuses: std::collections::HashSet<String> =
        kept(pool).await.into_iter().map(|c| c.1).collect();
    for status in [
        "planned",
        "queued",
        "failed",
        "delivered",
        "replied",
        "skipped",
        "cancelled",
    ] {
        assert!(
            statuses.contains(status),
            "no {status} counter: {statuses:?}"
        );
    }
}
