//! An in-process cache of senders and templates, loaded from PostgreSQL and refreshed on a miss
//! or when older than a few seconds, so enqueue does not hit the database for them per message.
//! Reloads are single-flight and a miss reloads at most once a second, however many requests name
//! an unknown sender or template: a batch of a thousand unknown templates costs one reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::sealing::Keyring;
use crate::store::{self, Sender, StoreError, Template};

#[derive(Default)]
struct Snapshot {
    senders: HashMap<String, Arc<Sender>>,
    templates: HashMap<(String, String), Template>,
    loaded: Option<Instant>,
    /// Registrations put in by this process, with when: a reload whose reads began before one
    /// of them keeps it, instead of putting back the older rows it read.
    puts: Vec<(Instant, Put)>,
}

enum Put {
    Sender(Arc<Sender>),
    Template(Template),
}

impl Snapshot {
    fn apply(&mut self, put: &Put) {
        match put {
            Put::Sender(s) => {
                self.senders.insert(s.phone_number_id.clone(), s.clone());
            }
            Put::Template(t) => {
                self.templates
                    .insert((t.name.clone(), t.language.clone()), t.clone());
            }
        }
    }

    /// Makes a registration visible now, and remembered until a reload that began after it.
    fn put(&mut self, put: Put) {
        self.apply(&put);
        self.puts.push((Instant::now(), put));
    }
}

/// How often a miss may reload the catalogue.
const MISS_RELOAD: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    /// Opens the senders' access tokens.
    keys: Keyring,
    max_age: Duration,
    inner: Arc<RwLock<Snapshot>>,
    /// Held while reloading: whoever waited for it finds the catalogue fresh and does not reload.
    reloading: Arc<tokio::sync::Mutex<()>>,
    reloads: Arc<AtomicU64>,
}

impl Catalog {
    pub fn new(pool: PgPool, keys: Keyring, max_age: Duration) -> Catalog {
        Catalog {
            pool,
            keys,
            max_age,
            inner: Arc::new(RwLock::new(Snapshot::default())),
            reloading: Arc::new(tokio::sync::Mutex::new(())),
            reloads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many times this catalogue was loaded from PostgreSQL.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads unless the catalogue was loaded within `fresh` (by this caller or one it waited
    /// for).
    async fn reload_unless_loaded_within(&self, fresh: Duration) -> Result<(), StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        if !self.older_than(fresh) {
            return Ok(());
        }
        self.refresh().await
    }

    pub async fn refresh(&self) -> Result<(), StoreError> {
        let began = Instant::now();
        let senders = store::list_senders(&self.pool, &self.keys).await?;
        let templates = store::list_templates(&self.pool).await?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.senders = senders
            .into_iter()
            .map(|s| (s.phone_number_id.clone(), Arc::new(s)))
            .collect();
        inner.templates = templates
            .into_iter()
            .map(|t| ((t.name.clone(), t.language.clone()), t))
            .collect();
        // What was put in while the reads ran may be newer than what they read.
        let newer: Vec<(Instant, Put)> = std::mem::take(&mut inner.puts)
            .into_iter()
            .filter(|(at, _)| *at >= began)
            .collect();
        for (_, put) in &newer {
            inner.apply(put);
        }
        inner.puts = newer;
        inner.loaded = Some(Instant::now());
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn older_than(&self, age: Duration) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.loaded.is_none_or(|t| t.elapsed() > age)
    }

    /// Reloads when the catalogue is older than its maximum age.
    async fn keep_fresh(&self) -> Result<(), StoreError> {
        if self.older_than(self.max_age) {
            self.reload_unless_loaded_within(self.max_age).await?;
        }
        Ok(())
    }

    /// After a miss: something registered moments ago by another process shows up, at the cost
    /// of at most one reload a second.
    async fn reload_after_miss(&self) -> Result<(), StoreError> {
        if self.older_than(MISS_RELOAD) {
            self.reload_unless_loaded_within(MISS_RELOAD).await?;
        }
        Ok(())
    }

    pub async fn sender(&self, phone_number_id: &str) -> Result<Option<Arc<Sender>>, StoreError> {
        self.keep_fresh().await?;
        if let Some(s) = self.cached_sender(phone_number_id) {
            return Ok(Some(s));
        }
        self.reload_after_miss().await?;
        Ok(self.cached_sender(phone_number_id))
    }

    fn cached_sender(&self, phone_number_id: &str) -> Option<Arc<Sender>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.senders.get(phone_number_id).cloned()
    }

    pub async fn template(
        &self,
        name: &str,
        language: &str,
    ) -> Result<Option<Template>, StoreError> {
        self.keep_fresh().await?;
        let key = (name.to_string(), language.to_string());
        let cached = || {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            inner.templates.get(&key).cloned()
        };
        if let Some(found) = cached() {
            return Ok(Some(found));
        }
        self.reload_after_miss().await?;
        Ok(cached())
    }

    pub fn senders(&self) -> Vec<Arc<Sender>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.senders.values().cloned().collect()
    }

    /// Makes a registration visible in this process at once.
    pub fn put_sender(&self, sender: Sender) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.put(Put::Sender(Arc::new(sender)));
    }

    pub fn put_template(&self, template: Template) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.put(Put::Template(template));
    }
}
