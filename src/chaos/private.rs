//! Services of a run's own, beside the machine's, so a fault never touches them: a Redis on
//! another port and a RabbitMQ node with its own name, port and data directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::AppError;

fn free_port() -> Result<u16, AppError> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

/// A Redis that keeps nothing on disk, like the machine's: a restart brings it back empty.
pub struct PrivateRedis {
    port: u16,
    process: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> Result<PrivateRedis, AppError> {
        let mut redis = PrivateRedis {
            port: free_port()?,
            process: None,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<(), AppError> {
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(AppError::Invalid("the private Redis did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it and starts it again, empty.
    pub fn restart_empty(&mut self) -> Result<(), AppError> {
        self.stop();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
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

/// A RabbitMQ node beside the machine's (its own node name, port and data directory), stopped
/// and removed when dropped.
pub struct PrivateBroker {
    node: String,
    dir: PathBuf,
    port: u16,
}

impl PrivateBroker {
    pub fn start() -> Result<PrivateBroker, AppError> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let node = format!("pregon-{id}@localhost");
        let dir = std::env::temp_dir().join(format!("pregon-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log"))?;
        let port = free_port()?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\ndisk_free_limit.absolute = 10MB\n"),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let d = dir.display();
        std::fs::write(
            dir.join("rabbitmq-env.conf"),
            format!(
                "NODENAME={node}\nNODE_PORT={port}\nDIST_PORT={dist}\nMNESIA_BASE={d}/mnesia\n\
                 LOG_BASE={d}/log\nPID_FILE={d}/pid\nCONFIG_FILE={d}/rabbitmq.conf\n\
                 ENABLED_PLUGINS_FILE={d}/enabled_plugins\n",
                dist = free_port()?,
            ),
        )?;
        let broker = PrivateBroker { node, dir, port };
        let started = broker
            .command("rabbitmq-server")
            .arg("-detached")
            .status()?;
        if !started.success() {
            return Err(AppError::Invalid(
                "the private RabbitMQ node did not start".into(),
            ));
        }
        // A detached node registers a few seconds after the command returns.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !broker.ctl(&["await_startup", "--timeout", "10"]) {
            if Instant::now() > deadline {
                return Err(AppError::Invalid(
                    "the private RabbitMQ node did not come up".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(broker)
    }

    /// `n` nodes joined in one RabbitMQ cluster, the first being the one the others joined.
    /// They start side by side; a node joins by stopping its application, joining and starting
    /// it again.
    pub fn cluster(n: usize) -> Result<Vec<PrivateBroker>, AppError> {
        let started: Vec<Result<PrivateBroker, AppError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n).map(|_| scope.spawn(PrivateBroker::start)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(AppError::Invalid("a RabbitMQ node did not start".into()))
                    })
                })
                .collect()
        });
        let nodes: Vec<PrivateBroker> = started.into_iter().collect::<Result<_, _>>()?;
        let Some((seed, others)) = nodes.split_first() else {
            return Ok(nodes);
        };
        for node in others {
            let joined = node.ctl(&["stop_app"])
                && node.ctl(&["join_cluster", &seed.node])
                && node.ctl(&["start_app"])
                && node.ctl(&["await_startup", "--timeout", "60"]);
            if !joined {
                return Err(AppError::Invalid(format!(
                    "{} could not join the cluster of {}",
                    node.node, seed.node
                )));
            }
        }
        Ok(nodes)
    }

    /// The Erlang node name (`pregon-…@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node that leads the quorum queue holding the most messages, as `rabbitmqctl
    /// list_queues` on this node reports it.
    pub fn busiest_leader(&self) -> Option<String> {
        let output = self
            .command("rabbitmqctl")
            .args([
                "-n",
                &self.node,
                "list_queues",
                "--quiet",
                "--no-table-headers",
            ])
            .args(["messages", "leader", "type"])
            .stdout(Stdio::piped())
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let messages: u64 = fields.next()?.parse().ok()?;
                let leader = fields.next()?.to_string();
                (fields.next()? == "quorum").then_some((messages, leader))
            })
            .max_by_key(|(messages, _)| *messages)
            .map(|(_, leader)| leader)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(rabbitmq_bin(program));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Runs `rabbitmqctl -n <node> args…`; whether it succeeded.
    pub fn ctl(&self, args: &[&str]) -> bool {
        self.command("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the broker application: every client connection is closed, as in a broker restart.
    pub fn stop_app(&self) -> bool {
        self.ctl(&["stop_app"])
    }

    pub fn start_app(&self) -> bool {
        self.ctl(&["start_app"])
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
