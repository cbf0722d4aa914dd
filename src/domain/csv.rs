//! CSV in and out, streaming: records are cut from chunks of bytes as they arrive (quoted fields may
//! span chunks and lines), so a file of any size is read with memory bounded by one record.

use std::borrow::Cow;

use csv_core::{ReadFieldResult, Reader};

/// A field longer than this is refused rather than buffered without bound.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
pub const MAX_COLUMNS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("record {record}: a field is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong { record: u64 },
    #[error("record {record}: more than {MAX_COLUMNS} columns")]
    TooManyColumns { record: u64 },
}

/// Cuts records out of a byte stream fed in chunks of any size.
pub struct RecordReader {
    reader: Reader,
    field: Vec<u8>,
    len: usize,
    record: Vec<String>,
    /// Records completed so far (the header is record 1).
    records: u64,
}

impl Default for RecordReader {
    fn default() -> Self {
        RecordReader {
            reader: Reader::new(),
            field: vec![0; 1024],
            len: 0,
            record: Vec::new(),
            records: 0,
        }
    }
}

impl RecordReader {
    /// Feeds a chunk; complete records are pushed to `out`. An empty chunk ends the input.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        let end = input.is_empty();
        loop {
            // csv_core takes an empty input as the end of the file: only pass one at the end.
            if input.is_empty() && !end {
                return Ok(());
            }
            let (result, read, written) =
                self.reader.read_field(input, &mut self.field[self.len..]);
            input = &input[read..];
            self.len += written;
            match result {
                ReadFieldResult::InputEmpty => {
                    if !end {
                        return Ok(());
                    }
                }
                ReadFieldResult::OutputFull => {
                    if self.field.len() >= MAX_FIELD_BYTES {
                        return Err(CsvError::FieldTooLong {
                            record: self.records + 1,
                        });
                    }
                    let grown = (self.field.len() * 2).min(MAX_FIELD_BYTES);
                    self.field.resize(grown, 0);
                }
                ReadFieldResult::Field { record_end } => {
                    let text = String::from_utf8_lossy(&self.field[..self.len]).into_owned();
                    self.len = 0;
                    if self.record.len() >= MAX_COLUMNS {
                        return Err(CsvError::TooManyColumns {
                            record: self.records + 1,
                        });
                    }
                    self.record.push(text);
                    if record_end {
                        self.records += 1;
                        let record = std::mem::take(&mut self.record);
                        // A blank line is one empty field: not a record.
                        if !(record.len() == 1 && record[0].is_empty()) {
                            out.push(record);
                        }
                    }
                }
                ReadFieldResult::End => return Ok(()),
            }
        }
    }
}

/// One CSV field, quoted when it needs to be. A value a spreadsheet would run as a formula (it
/// begins with `=`, `+`, `-`, `@`, a tab or a carriage return: CSV injection) is written with a
/// leading `'`, which spreadsheets show as text; exports hold what customers typed.
pub fn field(value: &str) -> Cow<'_, str> {
    let value: Cow<'_, str> = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{value}"))
    } else {
        Cow::Borrowed(value)
    };
    if value.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        value
    }
}

/// One CSV line (with its newline) from fields.
pub fn line<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field(f));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_spreadsheets_would_run_are_written_as_text() {
        let cases = [
            ("Ana", "Ana"),
            ("5215512345678", "5215512345678"),
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("+52 55", "'+52 55"),
            ("-1+2", "'-1+2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("\r=1", "\"'\r=1\""),
            ("a=b", "a=b"),
            ("", ""),
        ];
        for (value, written) in cases {
            assert_eq!(field(value), written, "{value:?}");
        }
    }

    fn read_all(chunks: &[&[u8]]) -> Vec<Vec<String>> {
        let mut reader = RecordReader::default();
        let mut out = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, &mut out).unwrap();
        }
        reader.feed(b"", &mut out).unwrap();
        out
    }

    #[test]
    fn records_survive_any_chunking_and_quoting() {
        let text = b"phone,name\r\n+52 55 1234 5678,\"P\xc3\xa9rez, Ana\"\n\n5215500000001,\"say \"\"hi\"\"\nthere\"\n5215500000002,last";
        let whole = read_all(&[text]);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[1], vec!["+52 55 1234 5678", "Pérez, Ana"]);
        assert_eq!(whole[2][1], "say \"hi\"\nthere");
        assert_eq!(whole[3], vec!["5215500000002", "last"]);
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(read_all(&bytes), whole);
        let threes: Vec<&[u8]> = text.chunks(3).collect();
        assert_eq!(read_all(&threes), whole);
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut reader = RecordReader::default();
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_FIELD_BYTES + 10];
        assert!(matches!(
            reader.feed(&big, &mut out),
            Err(CsvError::FieldTooLong { record: 1 })
        ));
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(
            line(["a", "b,c", "say \"x\""]),
            "a,\"b,c\",\"say \"\"x\"\"\"\n"
        );
        assert_eq!(field("plain"), "plain");
    }
}
