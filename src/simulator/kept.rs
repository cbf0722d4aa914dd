//! What the simulator keeps of every send it saw, compactly: a million-recipient campaign is a
//! million records, and as `Received` (eight strings each) they held about 480 MiB. Numbers,
//! message types and template names are kept once each (`Names`), a wamid as the number it was
//! made from, pregon's message id as 16 bytes. `Received` and `Attempt`, the shapes the
//! simulator answers with, are built when asked for.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Attempt, Received};

/// Strings that repeat across records, each kept once and referred to by its index.
#[derive(Debug, Default)]
pub(super) struct Names {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Names {
    pub(super) fn intern(&mut self, name: &str) -> u32 {
        if let Some(at) = self.index.get(name) {
            return *at;
        }
        let at = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push(name.to_string());
        self.index.insert(name.to_string(), at);
        at
    }

    pub(super) fn get(&self, at: u32) -> &str {
        self.list.get(at as usize).map_or("", String::as_str)
    }

    /// The index of a name already kept, without keeping it.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub(super) fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
    }
}

/// A new wamid, as the number it is written from.
pub(super) fn new_wamid() -> u128 {
    Uuid::new_v4().as_u128()
}

/// How a wamid reads: `wamid.SIM` and 32 upper-case hex digits.
pub(super) fn wamid_text(wamid: u128) -> String {
    format!("wamid.SIM{wamid:032X}")
}

/// `biz_opaque_callback_data` as sent: pregon's message id (a UUID, kept as 16 bytes), or any
/// other text a caller chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum CallbackData {
    Id(Uuid),
    Text(Box<str>),
}

impl CallbackData {
    pub(super) fn read(text: &str) -> CallbackData {
        match Uuid::try_parse(text) {
            // Only what reads back exactly as it came (the hyphenated lower-case form pregon sends).
            Ok(id) if id.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text => {
                CallbackData::Id(id)
            }
            _ => CallbackData::Text(text.into()),
        }
    }

    pub(super) fn text(&self) -> String {
        match self {
            CallbackData::Id(id) => id.to_string(),
            CallbackData::Text(text) => text.to_string(),
        }
    }
}

/// An accepted message.
#[derive(Debug)]
pub(super) struct KeptMessage {
    pub(super) seq: u64,
    pub(super) at_us: u64,
    pub(super) number: u32,
    pub(super) kind: u32,
    pub(super) template: Option<u32>,
    pub(super) to: Box<str>,
    pub(super) wamid: u128,
    pub(super) callback_data: Option<CallbackData>,
}

impl KeptMessage {
    pub(super) fn received(&self, names: &Names) -> Received {
        Received {
            seq: self.seq,
            at_us: self.at_us,
            phone_number_id: names.get(self.number).to_string(),
            to: self.to.to_string(),
            kind: names.get(self.kind).to_string(),
            template: self.template.map(|t| names.get(t).to_string()),
            wamid: wamid_text(self.wamid),
            callback_data: self.callback_data.as_ref().map(CallbackData::text),
        }
    }
}

/// A send the simulator answered, accepted or not.
#[derive(Debug)]
pub(super) struct KeptAttempt {
    pub(super) at_us: u64,
    pub(super) number: u32,
    pub(super) to: Box<str>,
    pub(super) code: i64,
}

impl KeptAttempt {
    pub(super) fn attempt(&self, names: &Names) -> Attempt {
        Attempt {
            at_us: self.at_us,
            phone_number_id: names.get(self.number).to_string(),
            to: self.to.to_string(),
            code: self.code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_once_and_read_back() {
        let mut names = Names::default();
        let a = names.intern("1065550001");
        let b = names.intern("template");
        assert_eq!(names.intern("1065550001"), a);
        assert_ne!(a, b);
        assert_eq!(names.get(a), "1065550001");
        assert_eq!(names.get(b), "template");
        assert_eq!(names.find("template"), Some(b));
        assert_eq!(names.find("text"), None);
        assert_eq!(names.get(99), "");
    }

    #[test]
    fn callback_data_reads_back_as_it_came() {
        let id = Uuid::now_v7().to_string();
        for (sent, kept_as_id) in [
            (id.as_str(), true),
            // A UUID in another spelling, or any other text, is kept as text.
            (&id.to_uppercase() as &str, false),
            (&id.replace('-', "") as &str, false),
            ("order-123", false),
            ("", false),
        ] {
            let kept = CallbackData::read(sent);
            assert_eq!(matches!(kept, CallbackData::Id(_)), kept_as_id, "{sent}");
            assert_eq!(kept.text(), sent);
        }
    }

    #[test]
    fn a_record_reads_back_as_the_message_it_kept() {
        let mut names = Names::default();
        let wamid = new_wamid();
        let id = Uuid::now_v7();
        let kept = KeptMessage {
            seq: 7,
            at_us: 1_234,
            number: names.intern("1065550001"),
            kind: names.intern("template"),
            template: Some(names.intern("promo")),
            to: "5215512345678".into(),
            wamid,
            callback_data: Some(CallbackData::read(&id.to_string())),
        };
        let received = kept.received(&names);
        assert_eq!(received.seq, 7);
        assert_eq!(received.at_us, 1_234);
        assert_eq!(received.phone_number_id, "1065550001");
        assert_eq!(received.kind, "template");
        assert_eq!(received.template.as_deref(), Some("promo"));
        assert_eq!(received.to, "5215512345678");
        assert_eq!(received.callback_data, Some(id.to_string()));
        assert_eq!(received.wamid, wamid_text(wamid));
        assert!(received.wamid.starts_with("wamid.SIM"));
        assert_eq!(received.wamid.len(), "wamid.SIM".len() + 32);
        assert!(
            received.wamid[9..]
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        let attempt = KeptAttempt {
            at_us: 5,
            number: names.intern("1065550001"),
            to: "5215512345678".into(),
            code: 130429,
        }
        .attempt(&names);
        assert_eq!(
            (
                attempt.at_us,
                attempt.phone_number_id.as_str(),
                attempt.code
            ),
            (5, "1065550001", 130429)
        );
    }
}
