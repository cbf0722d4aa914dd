//! Secrets at rest: sender access tokens and subscription signing secrets are stored sealed, by
//! envelope encryption.
//!
//! Each value gets a data key of its own (AES-256-GCM) that encrypts it; the data key is stored
//! beside it, itself encrypted ("wrapped") by a master key from `PREGON_SECRET_KEY` or the file
//! `PREGON_SECRET_KEY_FILE`. The master key never touches the database. Rotating the master key
//! re-wraps the data keys and leaves the encrypted values as they are (`pregon secrets rotate`).
//!
//! A sealed value reads `pgs1.<key id>.<wrapped data key>.<ciphertext>` (hex; each with its
//! nonce in front). Both layers authenticate what the value belongs to (say, `sender:<id>`), so a
//! sealed token copied onto another row does not open. A value without the `pgs1.` prefix was
//! stored in the clear, by an earlier version or while no key was set, and is read as it is.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "pgs1.";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "a master key is 64 hex digits (32 random bytes; `openssl rand -hex 32` makes one): {0}"
    )]
    BadKey(String),
    #[error("could not read the secret key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a value is sealed under master key {0}, which is not configured (PREGON_SECRET_KEY lists the current key first, then the old ones until `pregon secrets rotate` has run)"
    )]
    UnknownKey(String),
    #[error("a sealed value of {0} is damaged or belongs to another record")]
    Corrupt(String),
    #[error("the system's random source failed")]
    Random,
}

/// One master key and the id stored with what it wraps.
struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl MasterKey {
    fn parse(hex_key: &str) -> Result<MasterKey, SealError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SealError::BadKey("not hex".into()))?;
        if bytes.len() != KEY_LEN {
            return Err(SealError::BadKey(format!("{} bytes given", bytes.len())));
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| SealError::BadKey("rejected".into()))?,
        );
        Ok(MasterKey { id, key })
    }
}

/// The configured master keys: the first seals, all of them open (old ones stay listed until
/// every value has been rotated to the first).
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<Vec<MasterKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Keys from the setting (comma-separated hex) and the file (the same, one or more lines);
    /// the setting's come first. No key at all: values are stored in the clear.
    pub fn from_settings(keys: &str, file: &str) -> Result<Keyring, SealError> {
        let mut text = keys.to_string();
        if !file.is_empty() {
            let contents = std::fs::read_to_string(file).map_err(|source| SealError::KeyFile {
                path: file.to_string(),
                source,
            })?;
            text.push(',');
            text.push_str(&contents);
        }
        let keys = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(MasterKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring {
            keys: Arc::new(keys),
        })
    }

    /// Whether values are sealed at all.
    pub fn seals(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key that seals new values.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// `plaintext`, sealed for the record `context` names (in the clear when no key is set).
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, SealError> {
        let Some(master) = self.keys.first() else {
            return Ok(plaintext.to_string());
        };
        let mut data_key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut data_key)
            .map_err(|_| SealError::Random)?;
        let sealer = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| SealError::Random)?,
        );
        let ciphertext = encrypt(&sealer, plaintext.as_bytes(), context.as_bytes())?;
        sealed_value(master, &data_key, &ciphertext, context)
    }

    /// What `stored` holds: opened when sealed, as it is when stored in the clear.
    pub fn open(&self, stored: &str, context: &str) -> Result<String, SealError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (_, data_key, ciphertext) = self.unwrap_data_key(sealed, context)?;
        let opener = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key)
                .map_err(|_| SealError::Corrupt(context.into()))?,
        );
        let plaintext = decrypt(&opener, &ciphertext, context.as_bytes())
            .ok_or_else(|| SealError::Corrupt(context.into()))?;
        String::from_utf8(plaintext).map_err(|_| SealError::Corrupt(context.into()))
    }

    /// Whether `stored` is in the clear or sealed under a key other than the current one.
    pub fn needs_rotation(&self, stored: &str) -> bool {
        let Some(current) = self.current_id() else {
            return false;
        };
        match stored.strip_prefix(PREFIX) {
            None => true,
            Some(sealed) => sealed.split('.').next() != Some(current),
        }
    }

    /// `stored` under the current key: a value in the clear is sealed; a sealed one has its data
    /// key re-wrapped, its ciphertext kept.
    pub fn rotate(&self, stored: &str, context: &str) -> Result<String, SealError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else {
            return self.seal(stored, context);
        };
        let Some(master) = self.keys.first() else {
            return Ok(stored.to_string());
        };
        let (_, data_key, ciphertext) = self.unwrap_data_key(sealed, context)?;
        sealed_value(master, &data_key, &ciphertext, context)
    }

    /// The key id, data key and ciphertext of a sealed value (without its prefix).
    fn unwrap_data_key(
        &self,
        sealed: &str,
        context: &str,
    ) -> Result<(String, Vec<u8>, Vec<u8>), SealError> {
        let corrupt = || SealError::Corrupt(context.into());
        let mut parts = sealed.split('.');
        let (Some(id), Some(wrapped), Some(ciphertext), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt());
        };
        let master = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
        let wrapped = hex::decode(wrapped).map_err(|_| corrupt())?;
        let ciphertext = hex::decode(ciphertext).map_err(|_| corrupt())?;
        let data_key =
            decrypt(&master.key, &wrapped, &wrap_aad(id, context)).ok_or_else(corrupt)?;
        if data_key.len() != KEY_LEN {
            return Err(corrupt());
        }
        Ok((id.to_string(), data_key, ciphertext))
    }
}

/// The stored form: the data key wrapped by `master`, beside the value's ciphertext.
fn sealed_value(
    master: &MasterKey,
    data_key: &[u8],
    ciphertext: &[u8],
    context: &str,
) -> Result<String, SealError> {
    let wrapped = encrypt(&master.key, data_key, &wrap_aad(&master.id, context))?;
    Ok(format!(
        "{PREFIX}{}.{}.{}",
        master.id,
        hex::encode(wrapped),
        hex::encode(ciphertext)
    ))
}

fn wrap_aad(key_id: &str, context: &str) -> Vec<u8> {
    format!("{key_id}|{context}").into_bytes()
}

/// nonce ‖ ciphertext ‖ tag, with a fresh random nonce.
fn encrypt(key: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buffer,
    )
    .map_err(|_| SealError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buffer);
    Ok(out)
}

fn decrypt(key: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = rest.to_vec();
    let plaintext = key.open_in_place(nonce, Aad::from(aad), &mut buffer).ok()?;
    Some(plaintext.to_vec())
}

/// A new master key, as hex.
pub fn generate_key() -> Result<String, SealError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError::Random)?;
    Ok(hex::encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn ring(keys: &str) -> Keyring {
        Keyring::from_settings(keys, "").unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_record_and_never_shows_the_secret() {
        let keys = ring(A);
        let sealed = keys.seal("EAAG-token", "sender:1").unwrap();
        assert!(sealed.starts_with("pgs1."), "{sealed}");
        assert!(!sealed.contains("EAAG"));
        assert_ne!(sealed, keys.seal("EAAG-token", "sender:1").unwrap());
        assert_eq!(keys.open(&sealed, "sender:1").unwrap(), "EAAG-token");
        assert!(matches!(
            keys.open(&sealed, "sender:2"),
            Err(SealError::Corrupt(_))
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert!(keys.open(&tampered, "sender:1").is_err());
    }

    #[test]
    fn values_in_the_clear_read_as_they_are_and_no_key_seals_nothing() {
        let keys = ring(A);
        assert_eq!(
            keys.open("legacy-token", "sender:1").unwrap(),
            "legacy-token"
        );
        assert!(keys.needs_rotation("legacy-token"));
        let none = Keyring::default();
        assert!(!none.seals());
        assert_eq!(none.seal("t", "sender:1").unwrap(), "t");
        assert!(!none.needs_rotation("t"));
        let sealed = keys.seal("t", "sender:1").unwrap();
        assert!(matches!(
            none.open(&sealed, "sender:1"),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn rotation_rewraps_under_the_new_key_and_keeps_the_ciphertext() {
        let old = ring(A);
        let sealed = old.seal("secret", "subscription:9").unwrap();
        let both = ring(&format!("{B},{A}"));
        assert!(both.needs_rotation(&sealed));
        let rotated = both.rotate(&sealed, "subscription:9").unwrap();
        assert!(!both.needs_rotation(&rotated));
        assert_eq!(
            rotated.rsplit('.').next(),
            sealed.rsplit('.').next(),
            "the value's own ciphertext is kept"
        );
        let new_only = ring(B);
        assert_eq!(new_only.open(&rotated, "subscription:9").unwrap(), "secret");
        assert!(matches!(
            new_only.open(&sealed, "subscription:9"),
            Err(SealError::UnknownKey(_))
        ));
        let clear = both.rotate("plain", "subscription:9").unwrap();
        assert_eq!(new_only.open(&clear, "subscription:9").unwrap(), "plain");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for bad in ["nothex", "abcd", &A[..62]] {
            assert!(
                matches!(Keyring::from_settings(bad, ""), Err(SealError::BadKey(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Keyring::from_settings("", "/no/such/file"),
            Err(SealError::KeyFile { .. })
        ));
        assert_eq!(generate_key().unwrap().len(), 64);
        let keys = ring(&format!("{A}\n{B}\n"));
        assert!(format!("{keys:?}").contains("key_ids"));
        assert!(!format!("{keys:?}").contains(A));
    }
}
