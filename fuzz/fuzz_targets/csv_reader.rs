//! Uploaded contact files: any bytes, cut into chunks anywhere. The records read never depend on
//! where the chunks were cut, and reading never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pregon_fuzz::domain::csv::RecordReader;

fn read(chunks: &[&[u8]]) -> Result<Vec<Vec<String>>, String> {
    let mut reader = RecordReader::default();
    let mut out = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        reader.feed(chunk, &mut out).map_err(|e| e.to_string())?;
    }
    reader.feed(b"", &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let whole = read(&[input]);
    let size = usize::from(cut).max(1);
    let chunks: Vec<&[u8]> = input.chunks(size).collect();
    let chunked = read(&chunks);
    assert_eq!(whole.is_ok(), chunked.is_ok());
    if let (Ok(a), Ok(b)) = (whole, chunked) {
        assert_eq!(a, b);
    }
});
