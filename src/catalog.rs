//! An in-process cache of senders and templates, loaded from PostgreSQL and refreshed on a miss
//! or when older than a few seconds, so enqueue does not hit the database for them per message.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::store::{self, Sender, StoreError, Template};

#[derive(Default)]
struct Snapshot {
    senders: HashMap<String, Arc<Sender>>,
    templates: HashMap<(String, String), Template>,
    loaded: Option<Instant>,
}

#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    max_age: Duration,
    inner: Arc<RwLock<Snapshot>>,
}

impl Catalog {
    pub fn new(pool: PgPool, max_age: Duration) -> Catalog {
        Catalog {
            pool,
            max_age,
            inner: Arc::new(RwLock::new(Snapshot::default())),
        }
    }

    pub async fn refresh(&self) -> Result<(), StoreError> {
        let senders = store::list_senders(&self.pool).await?;
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
        inner.loaded = Some(Instant::now());
        Ok(())
    }

    fn stale(&self) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.loaded.is_none_or(|t| t.elapsed() > self.max_age)
    }

    pub async fn sender(&self, phone_number_id: &str) -> Result<Option<Arc<Sender>>, StoreError> {
        let refreshed = self.stale();
        if refreshed {
            self.refresh().await?;
        }
        if let Some(s) = self.cached_sender(phone_number_id) {
            return Ok(Some(s));
        }
        if !refreshed {
            // A sender registered moments ago by another process.
            self.refresh().await?;
        }
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
        let refreshed = self.stale();
        if refreshed {
            self.refresh().await?;
        }
        let key = (name.to_string(), language.to_string());
        let found = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            inner.templates.get(&key).cloned()
        };
        if found.is_some() || refreshed {
            return Ok(found);
        }
        self.refresh().await?;
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok(inner.templates.get(&key).cloned())
    }

    pub fn senders(&self) -> Vec<Arc<Sender>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.senders.values().cloned().collect()
    }

    /// Makes a registration visible in this process at once.
    pub fn put_sender(&self, sender: Sender) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner
            .senders
            .insert(sender.phone_number_id.clone(), Arc::new(sender));
    }

    pub fn put_template(&self, template: Template) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner
            .templates
            .insert((template.name.clone(), template.language.clone()), template);
    }
}
