//! The Cloud API message body a caller sends: any JSON, any bytes. Validation answers or refuses,
//! never panics; an accepted body names a normalised recipient.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pregon_fuzz::domain::message;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(valid) = message::validate(&body) {
        let digits = valid.to.digits();
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits}");
    }
});
