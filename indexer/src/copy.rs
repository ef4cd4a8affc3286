//! Postgres binary `COPY ... FROM STDIN (FORMAT binary)` encoding for the backfill's bulk writes: rows go to the
//! server in its own wire format, so it parses no text (no decimal amounts to NUMERIC, no `\x..` literals to
//! BYTEA, no array literals).

use crate::IndexerError;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const BYTEA_OID: i32 = 17;
const INT4_OID: i32 = 23;

/// A binary COPY stream being built in memory.
#[derive(Debug)]
pub struct CopyBuffer {
    buf: Vec<u8>,
}

impl Default for CopyBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBuffer {
    /// The header: signature, no flags, no extension.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Self { buf }
    }

    /// Starts a row of `fields` columns.
    pub fn row(&mut self, fields: usize) {
        self.buf.extend_from_slice(&(fields as i16).to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// SQL NULL.
    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// BIGINT.
    pub fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    /// INTEGER.
    pub fn int4(&mut self, v: i32) {
        self.field(&v.to_be_bytes());
    }

    /// BOOLEAN.
    pub fn bool(&mut self, v: bool) {
        self.field(&[u8::from(v)]);
    }

    /// BYTEA.
    pub fn bytea(&mut self, v: &[u8]) {
        self.field(v);
    }

    /// TEXT.
    pub fn text(&mut self, v: &str) {
        self.field(v.as_bytes());
    }

    /// BYTEA[] (one dimension).
    pub fn bytea_array(&mut self, items: &[Vec<u8>]) {
        let body: usize = items.iter().map(|i| 4 + i.len()).sum();
        self.array_header(items.len(), BYTEA_OID, body);
        for item in items {
            self.field(item);
        }
    }

    /// INTEGER[] (one dimension).
    pub fn int4_array(&mut self, items: &[i32]) {
        self.array_header(items.len(), INT4_OID, items.len() * 8);
        for item in items {
            self.int4(*item);
        }
    }

    fn array_header(&mut self, len: usize, oid: i32, body: usize) {
        let dims = if len == 0 { 0 } else { 1 };
        let total = 12 + dims * 8 + body;
        self.buf.extend_from_slice(&(total as i32).to_be_bytes());
        self.buf.extend_from_slice(&(dims as i32).to_be_bytes());
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // no NULL elements
        self.buf.extend_from_slice(&oid.to_be_bytes());
        if len > 0 {
            self.buf.extend_from_slice(&(len as i32).to_be_bytes());
            self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        }
    }

    /// NUMERIC from a non-negative decimal integer (a uint256 as decimal text), in base-10000 digit groups.
    pub fn numeric(&mut self, decimal: &str) -> Result<(), IndexerError> {
        let digits = decimal.trim_start_matches('0');
        if !decimal.bytes().all(|b| b.is_ascii_digit()) || decimal.is_empty() {
            return Err(IndexerError::Schema(format!("`{decimal}` is not a non-negative integer")));
        }
        // Groups of four decimal digits, most significant first, the first group padded on the left.
        let pad = (4 - digits.len() % 4) % 4;
        let padded: Vec<u8> = std::iter::repeat_n(b'0', pad).chain(digits.bytes()).collect();
        let mut groups: Vec<i16> = padded
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
            .collect();
        let weight = groups.len() as i16 - 1;
        while groups.last() == Some(&0) {
            groups.pop(); // Postgres stores no trailing zero groups; the weight keeps the magnitude
        }
        self.buf.extend_from_slice(&((8 + 2 * groups.len()) as i32).to_be_bytes());
        self.buf.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        self.buf.extend_from_slice(&(if groups.is_empty() { 0 } else { weight }).to_be_bytes());
        self.buf.extend_from_slice(&0u16.to_be_bytes()); // positive
        self.buf.extend_from_slice(&0i16.to_be_bytes()); // no decimal places
        for group in groups {
            self.buf.extend_from_slice(&group.to_be_bytes());
        }
        Ok(())
    }

    /// The stream with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::CopyBuffer;

    fn numeric_bytes(text: &str) -> Vec<u8> {
        let mut copy = CopyBuffer::new();
        copy.numeric(text).unwrap();
        copy.buf[19..].to_vec()
    }

    #[test]
    fn numerics_are_base_10000_groups_without_trailing_zeros() {
        // 79000000 = 7900 0000 -> one group 7900 at weight 1.
        assert_eq!(numeric_bytes("79000000"), [0, 0, 0, 10, 0, 1, 0, 1, 0, 0, 0, 0, 0x1e, 0xdc]);
        // 0 -> no groups.
        assert_eq!(numeric_bytes("0"), [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        // 12345 = 1 2345 -> groups 1, 2345 at weight 1.
        assert_eq!(numeric_bytes("12345"), [0, 0, 0, 12, 0, 2, 0, 1, 0, 0, 0, 0, 0, 1, 0x09, 0x29]);
        assert!(CopyBuffer::new().numeric("-1").is_err());
        assert!(CopyBuffer::new().numeric("").is_err());
    }
}
