//! Meta's webhook bodies: whatever arrives signed is parsed into updates or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pregon_fuzz::domain::webhook;

fuzz_target!(|data: &[u8]| {
    if let Ok(updates) = webhook::parse(data) {
        for update in &updates {
            if let webhook::Update::NumberQuality(u) = update {
                let _ = webhook::number_quality_change(u);
            }
            if let webhook::Update::Account(u) = update {
                let _ = webhook::account_status(u);
            }
        }
    }
});
