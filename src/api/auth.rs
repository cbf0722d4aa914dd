//! Bearer API keys: stored as SHA-256 hashes, each with a role and optionally a set of senders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, ApiKey, StoreError};

use super::ApiState;
use super::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything it may see; changes nothing.
    Viewer,
    /// Other systems: send messages, record consent, subscribe to events.
    Service,
    /// Marketing teams: contacts, consent, templates sync and campaigns; not senders or keys.
    Marketing,
    Admin,
}

/// What a request needs to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Send,
    Consent,
    /// Read a person's consent and suppression.
    ReadConsent,
    Subscriptions,
    Contacts,
    /// Bulk exports of data every sender shares: contacts and the consent log.
    Export,
    Campaigns,
    SyncTemplates,
    /// Senders, template registration by hand, suppressions.
    Operate,
    ManageKeys,
}

impl Permission {
    /// Its stable name, as the API's contract lists it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Send => "send",
            Permission::Consent => "consent",
            Permission::ReadConsent => "read_consent",
            Permission::Subscriptions => "subscriptions",
            Permission::Contacts => "contacts",
            Permission::Export => "export",
            Permission::Campaigns => "campaigns",
            Permission::SyncTemplates => "sync_templates",
            Permission::Operate => "operate",
            Permission::ManageKeys => "manage_keys",
        }
    }
}

impl Role {
    pub const NAMES: &str = "admin, service, marketing or viewer";
    pub const ALL: [Role; 4] = [Role::Admin, Role::Service, Role::Marketing, Role::Viewer];

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "viewer" => Some(Role::Viewer),
            "service" => Some(Role::Service),
            "marketing" => Some(Role::Marketing),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Service => "service",
            Role::Marketing => "marketing",
            Role::Admin => "admin",
        }
    }

    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Viewer => p == Read,
            Role::Service => matches!(p, Read | Send | Consent | ReadConsent | Subscriptions),
            Role::Marketing => matches!(
                p,
                Read | Consent | ReadConsent | Contacts | Export | Campaigns | SyncTemplates
            ),
        }
    }
}

/// Who is calling: another system by its API key, or a person signed in to the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    ApiKey(Uuid),
    User { id: Uuid, email: String },
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub role: Role,
    pub senders: Option<Vec<String>>,
}

impl Principal {
    /// Who did it, as campaign events, revocations and redrives record it.
    pub fn actor(&self) -> String {
        match self {
            Principal::ApiKey(id) => format!("api_key:{id}"),
            Principal::User { email, .. } => format!("user:{email}"),
        }
    }
}

impl Caller {
    /// Who did it, as campaign events, revocations and redrives record it.
    pub fn actor(&self) -> String {
        self.principal.actor()
    }

    /// The key calling, if another system is.
    pub fn api_key_id(&self) -> Option<Uuid> {
        match self.principal {
            Principal::ApiKey(id) => Some(id),
            Principal::User { .. } => None,
        }
    }

    /// What requests are counted and scoped by (rate limits, idempotency keys).
    pub fn id(&self) -> Uuid {
        match self.principal {
            Principal::ApiKey(id) | Principal::User { id, .. } => id,
        }
    }

    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} key may not do this ({permission:?})",
                self.role.as_str()
            )))
        }
    }

    pub fn may_use_sender(&self, phone_number_id: &str) -> bool {
        self.senders
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == phone_number_id))
    }

    /// An admin key not limited to some senders: it sees everyone's subscriptions.
    pub fn is_unscoped_admin(&self) -> bool {
        self.role == Role::Admin && self.senders.is_none()
    }

    /// The senders this key is limited to; None when it may use every sender.
    pub fn sender_scope(&self) -> Option<&[String]> {
        self.senders.as_deref()
    }

    /// A resource that spans several senders (a campaign's pool) is this key's only if every one
    /// of them is: acting on it acts on each.
    pub fn may_use_all(&self, senders: &[String]) -> bool {
        senders.iter().all(|s| self.may_use_sender(s))
    }

    /// Data every sender shares in bulk (the whole consent log, every contact) is for keys that
    /// are not limited to some senders.
    pub fn require_unscoped(&self, what: &str) -> Result<(), ApiError> {
        match self.senders {
            None => Ok(()),
            Some(_) => Err(ApiError::forbidden(format!(
                "a key limited to some senders may not {what}: it spans every sender"
            ))),
        }
    }

    /// A person's consent and suppression are a key's to read and record only when one of its
    /// senders has talked to them, if it is limited to some senders. Others are answered as
    /// unknown, so a limited key learns nothing about the rest of the business's customers.
    pub async fn require_recipient(&self, pool: &PgPool, recipient: &str) -> Result<(), ApiError> {
        let Some(senders) = self.sender_scope() else {
            return Ok(());
        };
        if store::recipient_known_to(pool, recipient, senders)
            .await
            .map_err(ApiError::internal)?
        {
            Ok(())
        } else {
            Err(ApiError::not_found(
                "unknown_recipient",
                format!("none of this key's senders has talked to {recipient}"),
            ))
        }
    }

    /// A key limited to some senders may only hand out keys limited to some of the same senders:
    /// never a key wider than itself.
    pub fn require_within_scope(&self, senders: Option<&[String]>) -> Result<(), ApiError> {
        match (self.sender_scope(), senders) {
            (None, _) => Ok(()),
            (Some(_), Some(wanted)) if self.may_use_all(wanted) => Ok(()),
            (Some(_), _) => Err(ApiError::forbidden(
                "a key limited to some senders may only create keys limited to some of them".into(),
            )),
        }
    }

    pub fn require_sender(&self, phone_number_id: &str) -> Result<(), ApiError> {
        if self.may_use_sender(phone_number_id) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this key may not use sender {phone_number_id}"
            )))
        }
    }
}

/// A permission a handler needs, as a type: a handler that takes `Authorized<RunCampaigns>` says in
/// its signature what a caller must be allowed, and cannot run without it.
pub trait Need: Send + Sync + 'static {
    /// `None`: any valid key.
    const PERMISSION: Option<Permission>;
}

macro_rules! needs {
    ($($(#[$doc:meta])* $name:ident => $permission:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Need for $name {
            const PERMISSION: Option<Permission> = $permission;
        }
    )*};
}

needs! {
    /// Any valid key, whatever its role.
    AnyKey => None;
    Read => Some(Permission::Read);
    SendMessages => Some(Permission::Send);
    WriteConsent => Some(Permission::Consent);
    ReadConsent => Some(Permission::ReadConsent);
    Export => Some(Permission::Export);
    ManageSubscriptions => Some(Permission::Subscriptions);
    ManageContacts => Some(Permission::Contacts);
    RunCampaigns => Some(Permission::Campaigns);
    SyncTemplates => Some(Permission::SyncTemplates);
    Operate => Some(Permission::Operate);
    ManageKeys => Some(Permission::ManageKeys);
}

/// The caller of a request, authenticated by its API key and allowed what `N` needs. Extracting
/// it answers 401 for a missing or unknown key and 403 for a role without the permission.
pub struct Authorized<N: Need> {
    caller: Caller,
    key_id: Uuid,
    need: PhantomData<N>,
}

impl<N: Need> Authorized<N> {
    /// The API key calling (the HTTP API is called with keys only; people use the console).
    pub fn key_id(&self) -> Uuid {
        self.key_id
    }
}

impl<N: Need> std::ops::Deref for Authorized<N> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<N: Need> FromRequestParts<ApiState> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = state
            .keys
            .authenticate(&state.services.pool, &parts.headers)
            .await?;
        state.key_rate.check(caller.id())?;
        if let Some(permission) = N::PERMISSION {
            caller.require(permission)?;
        }
        let key_id = caller.id();
        Ok(Authorized {
            caller,
            key_id,
            need: PhantomData,
        })
    }
}

pub fn hash_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new secret: 256 random bits, prefixed so leaked keys are easy to grep for.
pub fn generate_secret() -> String {
    format!("pgn_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

pub async fn create_key(
    pool: &PgPool,
    name: &str,
    role: Role,
    senders: Option<Vec<String>>,
) -> Result<(ApiKey, String), StoreError> {
    create_expiring_key(pool, name, role, senders, None).await
}

/// A key that stops working at `expires_at` (never, when None).
pub async fn create_expiring_key(
    pool: &PgPool,
    name: &str,
    role: Role,
    senders: Option<Vec<String>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(ApiKey, String), StoreError> {
    let secret = generate_secret();
    let key = ApiKey {
        id: Uuid::now_v7(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        senders,
        expires_at,
    };
    store::insert_api_key(pool, &key, &hash_key(&secret)).await?;
    Ok((key, secret))
}

/// Verified callers by key hash, with when they were verified; and hashes found to be no key,
/// with when.
#[derive(Default)]
struct Cached {
    verified: HashMap<Vec<u8>, (Caller, Instant)>,
    unknown: HashMap<Vec<u8>, Instant>,
}

/// Verified keys, cached for a second so a request does not cost a database round trip while a
/// revocation or an expiry still takes effect within a second in every process; unknown tokens
/// are remembered longer, so a flood of made-up keys costs no query each (secrets are 256 random
/// bits: a token unknown now is not going to become a key).
#[derive(Clone, Default)]
pub struct KeyCache {
    inner: Arc<Mutex<Cached>>,
}

const VERIFIED_TTL: Duration = Duration::from_secs(1);
const UNKNOWN_TTL: Duration = Duration::from_secs(60);
/// Beyond this many remembered unknown tokens the list starts again, so memory stays bounded.
const UNKNOWN_MAX: usize = 100_000;

impl KeyCache {
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer <api key>")
            })?;
        let hash = hash_key(secret);
        {
            let cached = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((caller, at)) = cached.verified.get(&hash)
                && at.elapsed() < VERIFIED_TTL
            {
                return Ok(caller.clone());
            }
            if cached
                .unknown
                .get(&hash)
                .is_some_and(|at| at.elapsed() < UNKNOWN_TTL)
            {
                return Err(ApiError::unauthorized(
                    "unknown, expired or revoked API key",
                ));
            }
        }
        let Some(key) = store::find_api_key(pool, &hash)
            .await
            .map_err(ApiError::internal)?
        else {
            let mut cached = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            cached.verified.remove(&hash);
            if cached.unknown.len() >= UNKNOWN_MAX {
                cached.unknown.clear();
            }
            cached.unknown.insert(hash, Instant::now());
            return Err(ApiError::unauthorized(
                "unknown, expired or revoked API key",
            ));
        };
        let caller = Caller {
            principal: Principal::ApiKey(key.id),
            role: Role::parse(&key.role).unwrap_or(Role::Viewer),
            senders: key.senders,
        };
        // Last use is bookkeeping: it never holds the request up.
        let touch_pool = pool.clone();
        tokio::spawn(async move {
            if let Err(e) = store::touch_api_key(&touch_pool, key.id).await {
                tracing::debug!(error = %e, "could not record an API key's last use");
            }
        });
        let mut cached = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .verified
            .retain(|_, (_, at)| at.elapsed() < VERIFIED_TTL);
        cached
            .verified
            .insert(hash, (caller.clone(), Instant::now()));
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_senders_limit() {
        let caller = Caller {
            principal: Principal::ApiKey(Uuid::nil()),
            role: Role::Service,
            senders: Some(vec!["1".into()]),
        };
        assert!(caller.require(Permission::Read).is_ok());
        assert!(caller.require(Permission::Send).is_ok());
        assert!(caller.require(Permission::Operate).is_err());
        assert!(caller.require(Permission::Campaigns).is_err());
        let marketing = Caller {
            role: Role::Marketing,
            ..caller.clone()
        };
        for allowed in [
            Permission::Contacts,
            Permission::Consent,
            Permission::Campaigns,
            Permission::SyncTemplates,
        ] {
            assert!(marketing.require(allowed).is_ok());
        }
        for refused in [
            Permission::Operate,
            Permission::ManageKeys,
            Permission::Send,
        ] {
            assert!(marketing.require(refused).is_err());
        }
        assert!(Role::parse("marketing") == Some(Role::Marketing));
        assert!(caller.may_use_sender("1"));
        assert!(!caller.may_use_sender("2"));
        assert!(caller.may_use_all(&["1".into()]));
        assert!(!caller.may_use_all(&["1".into(), "2".into()]));
        assert!(caller.require_unscoped("export").is_err());
        let unscoped = Caller {
            senders: None,
            ..caller.clone()
        };
        assert!(unscoped.require_unscoped("export").is_ok());
        for (wanted, allowed) in [
            (Some(vec!["1".to_string()]), true),
            (Some(vec![]), true),
            (Some(vec!["1".to_string(), "2".to_string()]), false),
            (None, false),
        ] {
            assert_eq!(
                caller.require_within_scope(wanted.as_deref()).is_ok(),
                allowed,
                "{wanted:?}"
            );
            assert!(unscoped.require_within_scope(wanted.as_deref()).is_ok());
        }
        let secret = generate_secret();
        assert!(secret.starts_with("pgn_") && secret.len() == 68);
        assert_eq!(hash_key(&secret).len(), 32);
    }
}
