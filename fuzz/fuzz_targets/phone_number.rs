//! Phone numbers as people write them: normalising never panics, is idempotent, and every
//! spelling of a person comes back to the same number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pregon_fuzz::domain::phone;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(number) = phone::normalize(text) else {
        return;
    };
    let again = phone::normalize(number.digits()).expect("a normalised number normalises");
    assert_eq!(again, number);
    for spelling in phone::spellings(number.digits()) {
        let back = phone::normalize(&spelling).expect("a spelling normalises");
        assert_eq!(back.digits(), number.digits(), "{spelling}");
    }
});
