//! Cloud API adapter: the send request over one shared reqwest client, the response shapes, and
//! the webhook signature both the simulator and the receiver use.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::domain::errors::SendFailure;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_version: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
}

#[derive(Clone)]
pub struct CloudApi {
    http: reqwest::Client,
    base: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub wamid: String,
    pub message_status: Option<String>,
    /// The person's WhatsApp id, as Meta answered it.
    pub wa_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub messaging_product: String,
    #[serde(default)]
    pub contacts: Vec<ContactOut>,
    pub messages: Vec<MessageOut>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContactOut {
    pub input: String,
    pub wa_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MessageOut {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

impl CloudApi {
    pub fn new(config: &ClientConfig) -> Result<CloudApi, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(CloudApi {
            http,
            base: format!(
                "{}/{}",
                config.base_url.trim_end_matches('/'),
                config.api_version
            ),
        })
    }

    /// Sends one message. 200 means accepted (not delivered); anything else is a [`SendFailure`]
    /// for [`crate::domain::errors::classify`].
    pub async fn send(
        &self,
        phone_number_id: &str,
        token: &str,
        body: &RawValue,
    ) -> Result<Accepted, SendFailure> {
        let response = self
            .http
            .post(format!("{}/{phone_number_id}/messages", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.get().to_string())
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| match transport_failure(e) {
                // The status line came: the request certainly reached Meta.
                SendFailure::Connect(why) => SendFailure::AnswerLost(why),
                other => other,
            })?;
        if status == 200 {
            // Meta accepted it; without its wamid the outcome is still unknown to pregon.
            let unreadable = || SendFailure::AnswerLost("a 200 without a message id".into());
            let parsed: SendResponse = serde_json::from_slice(&bytes).map_err(|_| unreadable())?;
            let wa_id = parsed.contacts.into_iter().next().map(|c| c.wa_id);
            let message = parsed.messages.into_iter().next().ok_or_else(unreadable)?;
            return Ok(Accepted {
                wamid: message.id,
                message_status: message.message_status,
                wa_id,
            });
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(envelope) => Err(SendFailure::Api {
                http_status: status,
                code: envelope.error.code,
                message: envelope.error.message,
            }),
            Err(_) => Err(SendFailure::Http(status)),
        }
    }

    /// One page of a business account's message templates (`GET /{waba-id}/message_templates`):
    /// the templates and the cursor of the next page, if any.
    pub async fn list_templates(
        &self,
        waba_id: &str,
        token: &str,
        after: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, Option<String>), SendFailure> {
        let mut url = format!(
            "{}/{waba_id}/message_templates?limit=100&fields=name,language,status,category,components,quality_score",
            self.base
        );
        if let Some(after) = after {
            url.push_str("&after=");
            url.push_str(&percent_encode(after));
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_failure)?;
        if status != 200 {
            return Err(match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
                Ok(envelope) => SendFailure::Api {
                    http_status: status,
                    code: envelope.error.code,
                    message: envelope.error.message,
                },
                Err(_) => SendFailure::Http(status),
            });
        }
        let page: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| SendFailure::Http(status))?;
        let data = page
            .get("data")
            .and_then(|d| d.as_array())
            .cloned()
            .unwrap_or_default();
        let next = page
            .pointer("/paging/next")
            .and_then(|_| page.pointer("/paging/cursors/after"))
            .and_then(|a| a.as_str())
            .map(str::to_string);
        Ok((data, next))
    }
}

/// Percent-encodes a query value (cursors are base64 and may hold `=`, `+` or `/`; the CLI's
/// column names and evidence texts anything at all).
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a transport error says about whether the request reached Meta: a failed connection
/// (connect timeouts included) means it did not; anything later means it may have.
fn transport_failure(e: reqwest::Error) -> SendFailure {
    if e.is_connect() {
        SendFailure::Connect(e.to_string())
    } else if e.is_timeout() {
        SendFailure::Timeout
    } else {
        SendFailure::AnswerLost(e.to_string())
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Hub-Signature-256` header of a webhook.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a webhook signature in constant time against any of the configured secrets.
pub fn verify(secrets: &[Vec<u8>], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    secrets.iter().any(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_any_current_secret() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let header = sign(b"old", body);
        assert!(header.starts_with("sha256="));
        assert!(verify(&[b"new".to_vec(), b"old".to_vec()], body, &header));
        assert!(!verify(&[b"new".to_vec()], body, &header));
        assert!(!verify(&[b"old".to_vec()], b"tampered", &header));
        assert!(!verify(&[b"old".to_vec()], body, "sha1=abc"));
    }
}
