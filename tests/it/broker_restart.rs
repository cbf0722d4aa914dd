//! RabbitMQ goes away and comes back. The test runs a RabbitMQ node of its own (its own node name,
//! port and data directory), never the machine's, and stops and starts it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pregon::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Env, Options, recipients, template_body};

/// A RabbitMQ node beside the machine's, stopped and removed when dropped.
struct PrivateBroker {
    node: String,
    dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// RabbitMQ's own scripts, not the packaged wrappers (which switch to the `rabbitmq` user and
/// read the machine's node settings).
fn rabbitmq_bin(program: &str) -> PathBuf {
    let packaged = PathBuf::from("/usr/lib/rabbitmq/bin").join(program);
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from(program)
    }
}

impl PrivateBroker {
    fn start() -> PrivateBroker {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let node = format!("pregon-it-{id}@localhost");
        let dir = std::env::temp_dir().join(format!("pregon-it-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\ndisk_free_limit.absolute = 10MB\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("rabbitmq-env.conf"),
            format!(
                "NODENAME={node}\nNODE_PORT={port}\nDIST_PORT={dist}\nMNESIA_BASE={d}/mnesia\n\
                 LOG_BASE={d}/log\nPID_FILE={d}/pid\nCONFIG_FILE={d}/rabbitmq.conf\n\
                 ENABLED_PLUGINS_FILE={d}/enabled_plugins\n",
                dist = free_port(),
            ),
        )
        .unwrap();
        let broker = PrivateBroker { node, dir, port };
        let started = broker
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server runs");
        assert!(started.success(), "the private RabbitMQ node starts");
        // A detached node registers a few seconds after the command returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !broker.try_ctl(&["await_startup", "--timeout", "10"]) {
            assert!(
                std::time::Instant::now() < deadline,
                "the private RabbitMQ node did not come up"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        broker
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(rabbitmq_bin(program));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = self.command("rabbitmqctl");
        c.arg("-n").arg(&self.node).args(args);
        c
    }

    fn try_ctl(&self, args: &[&str]) -> bool {
        self.ctl_command(args).status().is_ok_and(|s| s.success())
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.ctl_command(&["stop"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn enqueue(env: &Env, sender: &str, to: &str, key: &str) -> reqwest::Response {
    env.http
        .post(format!("{}/v1/{sender}/messages", env.api_url))
        .bearer_auth(&env.admin_key)
        .header("Idempotency-Key", key)
        .json(&template_body(to, "order_update"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_broker_restart_is_survived_without_a_restart_of_pregon() {
    let broker = tokio::task::spawn_blocking(PrivateBroker::start)
        .await
        .unwrap();
    let sender = "1065550950";
    let mut env = Env::start(Options {
        sim: SimConfig {
            latency: Duration::from_millis(20),
            ..SimConfig::default()
        },
        amqp_url: Some(broker.url()),
        ..Options::default()
    })
    .await;
    env.sender(sender, json!("unlimited"), 40).await;
    env.template("order_update", "utility").await;
    let before = recipients(200, 95);
    for (i, r) in before.iter().enumerate() {
        let answer = enqueue(&env, sender, r, &format!("before-{i}")).await;
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent").is_some_and(|n| *n >= 40)
    })
    .await;

    // The broker goes away.
    let mut stop = broker.ctl_command(&["stop_app"]);
    let stopped = tokio::task::spawn_blocking(move || stop.status().unwrap())
        .await
        .unwrap();
    assert!(stopped.success());
    // Enqueues are refused at once, with Retry-After, and nothing is written.
    let refused = env
        .eventually(
            "a 503 while the broker is away",
            Duration::from_secs(10),
            async || {
                let answer = enqueue(&env, sender, &before[0], "during-outage").await;
                (answer.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
            },
        )
        .await;
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    let (ready, _) = env.get("/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        env.counts(sender).await.values().sum::<i64>(),
        200,
        "nothing half-done"
    );

    // It comes back: pregon reconnects by itself; the queued messages go out, new ones are taken.
    let mut start = broker.ctl_command(&["start_app"]);
    let started = tokio::task::spawn_blocking(move || start.status().unwrap())
        .await
        .unwrap();
    assert!(started.success());
    let after = recipients(20, 96);
    let back = tokio::time::Instant::now();
    for (i, r) in after.iter().enumerate() {
        let key = format!("after-{i}");
        env.eventually(
            "enqueue after the restart",
            Duration::from_secs(30),
            async || {
                (enqueue(&env, sender, r, &key).await.status() == StatusCode::ACCEPTED)
                    .then_some(())
            },
        )
        .await;
    }
    env.wait_counts(sender, Duration::from_secs(90), |c| {
        c.get("sent") == Some(&220)
    })
    .await;
    eprintln!("recovered and drained in {:?}", back.elapsed());
    let mut times: HashMap<String, usize> = HashMap::new();
    for m in env.received(sender).await {
        *times.entry(m.to).or_default() += 1;
    }
    assert_eq!(times.len(), 220, "every recipient reached");
    assert!(times.values().all(|n| *n == 1), "nobody reached twice");
    let (ready, _) = env.get("/readyz").await;
    assert_eq!(ready, StatusCode::OK);
    env.cleanup().await;
    drop(broker);
}
