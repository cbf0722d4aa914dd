//! The group-commit writer: concurrent writes share statements, a batch holds at most
//! `batch_size` rows (a larger write goes alone), and a caller whose row cannot be written is the
//! only one to hear it.

use std::time::Duration;

use pregon::store::{MessageWriter, NewMessage, WriterConfig};

use crate::harness::{Env, Options};

const SENDER: &str = "1065550177";

fn row(n: usize, key: Option<&str>) -> NewMessage {
    NewMessage {
        id: uuid::Uuid::now_v7(),
        idempotency_key: key.map(str::to_string),
        api_key_id: None,
        sender: SENDER.into(),
        recipient: format!("5215500{n:06}"),
        category: "utility".into(),
        message_type: "text".into(),
        template_name: None,
        template_language: None,
        delivery: "at_most_once".into(),
        body: format!(r#"{{"n":{n}}}"#),
        job: None,
    }
}

#[tokio::test]
async fn writes_larger_and_smaller_than_a_batch_land_and_a_refused_row_fails_alone() {
    let env = Env::start(Options::default()).await;
    let (writer, handle) = MessageWriter::spawn(
        env.services.pool.clone(),
        WriterConfig {
            batch_size: 5,
            linger: Duration::from_millis(50),
        },
    );
    let first = row(0, Some("taken"));
    let first_id = first.id;
    assert_eq!(writer.insert(vec![first]).await.unwrap(), vec![true]);

    // Sizes around the batch's five rows, one of them carrying the key already taken, all at
    // once so the writer has to split them into batches.
    let sizes = [1usize, 3, 7, 2, 4, 1, 5, 6];
    let mut next = 1;
    let mut calls = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let rows: Vec<NewMessage> = (0..*size)
            .map(|k| {
                next += 1;
                // The third row of the write of four asks for the taken key.
                row(next, (i == 4 && k == 2).then_some("taken"))
            })
            .collect();
        let writer = writer.clone();
        calls.push(tokio::spawn(async move { writer.insert(rows).await }));
    }
    // A row whose id is already used breaks its statement; the writer then writes its batch
    // one by one, so only this caller hears of it.
    let reused = NewMessage {
        id: first_id,
        ..row(99, None)
    };
    let clashing = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.insert(vec![reused]).await })
    };
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap());
    }
    for (i, (size, answer)) in sizes.iter().zip(&answers).enumerate() {
        let expected: Vec<bool> = (0..*size).map(|k| !(i == 4 && k == 2)).collect();
        assert_eq!(answer, &expected, "write {i} of {size} rows");
    }

    assert!(
        clashing.await.unwrap().is_err(),
        "a row whose id is taken is refused"
    );

    let written: usize = sizes.iter().sum();
    let counts = pregon::store::count_by_status(&env.services.pool, Some(SENDER))
        .await
        .unwrap();
    assert_eq!(
        counts.get("queued").copied(),
        Some(i64::try_from(written).unwrap()),
        "every row but the one whose key was taken, plus the first: {counts:?}"
    );
    drop(writer);
    handle.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_sent_message_records_when_the_cloud_api_accepted_it_not_when_the_row_was_written() {
    use pregon::domain::MessageStatus;
    use pregon::store::MessageUpdate;

    let env = Env::start(Options::default()).await;
    let (writer, handle) = MessageWriter::spawn(
        env.services.pool.clone(),
        WriterConfig {
            batch_size: 5,
            linger: Duration::from_millis(5),
        },
    );
    let accepted_late = row(1, None);
    let written_at_once = row(2, None);
    let (late_id, at_once_id) = (accepted_late.id, written_at_once.id);
    writer
        .insert(vec![accepted_late, written_at_once])
        .await
        .unwrap();

    // Accepted three seconds before the write reaches PostgreSQL (a batch queued behind others).
    let accepted_at = chrono::Utc::now() - chrono::Duration::seconds(3);
    let mut sent = MessageUpdate::new(late_id, MessageStatus::Sent, 1);
    sent.accepted_at = Some(accepted_at);
    writer.update(sent.clone()).await.unwrap();
    // A redelivered job's second answer does not move the first acceptance.
    sent.accepted_at = Some(chrono::Utc::now());
    sent.attempts = 2;
    writer.update(sent).await.unwrap();
    // Without an acceptance time, the write's own time.
    let before_write = chrono::Utc::now();
    writer
        .update(MessageUpdate::new(at_once_id, MessageStatus::Sent, 1))
        .await
        .unwrap();

    let late = pregon::store::get_message(&env.services.pool, late_id)
        .await
        .unwrap()
        .unwrap();
    let sent_at = late.sent_at.expect("sent");
    assert!(
        (sent_at - accepted_at).num_microseconds().unwrap().abs() <= 1,
        "sent_at {sent_at} is the acceptance {accepted_at}"
    );
    assert!(late.updated_at > sent_at + chrono::Duration::seconds(2));
    let at_once = pregon::store::get_message(&env.services.pool, at_once_id)
        .await
        .unwrap()
        .unwrap();
    let written = at_once.sent_at.expect("sent");
    assert!(
        written >= before_write - chrono::Duration::seconds(1),
        "{written} is the write's time"
    );
    drop(writer);
    handle.close().await;
    env.cleanup().await;
}
