//! HPACK (RFC 7541) as a proxy needs it.
//!
//! Decoding keeps the dynamic table the peer's encoder drives, and hands
//! each field out once, its value sliced from the frame when it is not
//! Huffman-coded. Encoding uses the static table for the common pseudo
//! headers and sends everything else as a literal that is not indexed: no
//! search, no table to keep, and nothing a peer's table size can break.

pub mod huffman;

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::{Buf as _, Bytes};
use hyper::header::{HeaderName, HeaderValue};

/// A field's name: a pseudo-header, or a header already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Authority,
    Method,
    Path,
    Scheme,
    Status,
    /// `:protocol` (RFC 8441's extended CONNECT).
    Protocol,
    Header(HeaderName),
}

impl Name {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Authority => ":authority",
            Self::Method => ":method",
            Self::Path => ":path",
            Self::Scheme => ":scheme",
            Self::Status => ":status",
            Self::Protocol => ":protocol",
            Self::Header(h) => h.as_str(),
        }
    }

    fn parse(raw: &[u8]) -> Result<Self, Error> {
        Ok(match raw {
            b":authority" => Self::Authority,
            b":method" => Self::Method,
            b":path" => Self::Path,
            b":scheme" => Self::Scheme,
            b":status" => Self::Status,
            b":protocol" => Self::Protocol,
            // HTTP/2 names are lowercase; `HeaderName` would fold an
            // uppercase one instead of refusing it.
            _ if raw.iter().any(u8::is_ascii_uppercase) => return Err(Error::Name),
            _ => Self::Header(HeaderName::from_bytes(raw).map_err(|_| Error::Name)?),
        })
    }
}

/// Why a header block cannot be decoded: each is a COMPRESSION_ERROR for
/// the whole connection, since the two tables no longer agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a header block ends inside a field")]
    Truncated,
    #[error("an HPACK integer is larger than 2^28")]
    Integer,
    #[error("an HPACK index names no entry")]
    Index,
    #[error("a dynamic table size update is above the size allowed, or not at the block's start")]
    SizeUpdate,
    #[error("a header name is empty, uppercase or not a token")]
    Name,
    #[error(transparent)]
    Huffman(#[from] huffman::Error),
}

#[derive(Debug, Clone)]
struct Entry {
    name: Name,
    value: Bytes,
}

impl Entry {
    /// An entry's size in the dynamic table (RFC 7541, section 4.1).
    fn size(&self) -> usize {
        self.name.as_str().len() + self.value.len() + 32
    }
}

/// RFC 7541, Appendix A.
fn static_table() -> &'static [Entry; 61] {
    static TABLE: OnceLock<[Entry; 61]> = OnceLock::new();
    TABLE.get_or_init(|| {
        const FIELDS: [(&str, &str); 61] = [
            (":authority", ""),
            (":method", "GET"),
            (":method", "POST"),
            (":path", "/"),
            (":path", "/index.html"),
            (":scheme", "http"),
            (":scheme", "https"),
            (":status", "200"),
            (":status", "204"),
            (":status", "206"),
            (":status", "304"),
            (":status", "400"),
            (":status", "404"),
            (":status", "500"),
            ("accept-charset", ""),
            ("accept-encoding", "gzip, deflate"),
            ("accept-language", ""),
            ("accept-ranges", ""),
            ("accept", ""),
            ("access-control-allow-origin", ""),
            ("age", ""),
            ("allow", ""),
            ("authorization", ""),
            ("cache-control", ""),
            ("content-disposition", ""),
            ("content-encoding", ""),
            ("content-language", ""),
            ("content-length", ""),
            ("content-location", ""),
            ("content-range", ""),
            ("content-type", ""),
            ("cookie", ""),
            ("date", ""),
            ("etag", ""),
            ("expect", ""),
            ("expires", ""),
            ("from", ""),
            ("host", ""),
            ("if-match", ""),
            ("if-modified-since", ""),
            ("if-none-match", ""),
            ("if-range", ""),
            ("if-unmodified-since", ""),
            ("last-modified", ""),
            ("link", ""),
            ("location", ""),
            ("max-forwards", ""),
            ("proxy-authenticate", ""),
            ("proxy-authorization", ""),
            ("range", ""),
            ("referer", ""),
            ("refresh", ""),
            ("retry-after", ""),
            ("server", ""),
            ("set-cookie", ""),
            ("strict-transport-security", ""),
            ("transfer-encoding", ""),
            ("user-agent", ""),
            ("vary", ""),
            ("via", ""),
            ("www-authenticate", ""),
        ];
        FIELDS.map(|(name, value)| Entry {
            name: match name {
                ":authority" => Name::Authority,
                ":method" => Name::Method,
                ":path" => Name::Path,
                ":scheme" => Name::Scheme,
                ":status" => Name::Status,
                _ => Name::Header(HeaderName::from_static(name)),
            },
            value: Bytes::from_static(value.as_bytes()),
        })
    })
}

/// The decoding side of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The size the peer's encoder chose, at most `limit`.
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as this side advertised it.
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Self { table: VecDeque::new(), size: 0, max_size: limit, limit }
    }

    /// Decodes a whole header block, handing each field to `field` in order.
    pub fn decode(&mut self, mut block: Bytes, mut field: impl FnMut(Name, Bytes)) -> Result<(), Error> {
        let mut first = true;
        while let Some(&byte) = block.first() {
            if byte & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let entry = self.get(index)?;
                field(entry.name.clone(), entry.value.clone());
            } else if byte & 0xe0 == 0x20 {
                // A size update comes only before the block's first field.
                let size = integer(&mut block, 5)?;
                if !first || size > self.limit {
                    return Err(Error::SizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                let indexing = byte & 0xc0 == 0x40;
                let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                let name = if index == 0 { Name::parse(&string(&mut block)?)? } else { self.get(index)?.name.clone() };
                let value = string(&mut block)?;
                if indexing {
                    self.insert(Entry { name: name.clone(), value: value.clone() });
                }
                field(name, value);
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<&Entry, Error> {
        match index {
            0 => Err(Error::Index),
            1..=61 => Ok(&static_table()[index - 1]),
            _ => self.table.get(index - 62).ok_or(Error::Index),
        }
    }

    /// Adds an entry, evicting the oldest to make room; an entry larger than
    /// the table empties it (RFC 7541, section 4.4).
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541, section 5.1).
fn integer(block: &mut Bytes, n: u32) -> Result<usize, Error> {
    let mask = (1u8 << n) - 1;
    let first = block.first().ok_or(Error::Truncated)? & mask;
    block.advance(1);
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0;
    loop {
        let &byte = block.first().ok_or(Error::Truncated)?;
        block.advance(1);
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(Error::Integer);
        }
    }
}

/// A string literal (RFC 7541, section 5.2): sliced from the block, or
/// Huffman-decoded into a buffer of its own.
fn string(block: &mut Bytes) -> Result<Bytes, Error> {
    let huffman = block.first().ok_or(Error::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(Error::Truncated);
    }
    let raw = block.split_to(len);
    if !huffman {
        return Ok(raw);
    }
    let mut out = Vec::new();
    huffman::decode(&raw, &mut out)?;
    Ok(out.into())
}

/// Appends a field to a header block. Common pseudo-header values are one
/// byte from the static table; the rest are literals that are not indexed.
pub fn encode(name: &Name, value: &[u8], out: &mut Vec<u8>) {
    let (index, full) = match (name, value) {
        (Name::Authority, _) => (1, None),
        (Name::Method, b"GET") => (2, Some(2)),
        (Name::Method, b"POST") => (3, Some(3)),
        (Name::Method, _) => (2, None),
        (Name::Path, b"/") => (4, Some(4)),
        (Name::Path, _) => (4, None),
        (Name::Scheme, b"http") => (6, Some(6)),
        (Name::Scheme, b"https") => (7, Some(7)),
        (Name::Scheme, _) => (6, None),
        (Name::Status, b"200") => (8, Some(8)),
        (Name::Status, b"204") => (8, Some(9)),
        (Name::Status, b"304") => (8, Some(11)),
        (Name::Status, b"404") => (8, Some(13)),
        (Name::Status, b"500") => (8, Some(14)),
        (Name::Status, _) => (8, None),
        (Name::Protocol, _) => (0, None),
        (Name::Header(_), _) => (0, None),
    };
    if let Some(full) = full {
        out.push(0x80 | full);
        return;
    }
    // Literal without indexing, with a static name (4-bit prefix) or a new one.
    put_integer(index, 4, 0, out);
    match name {
        Name::Header(h) => put_string(h.as_str().as_bytes(), out),
        Name::Protocol => put_string(b":protocol", out),
        _ => {}
    }
    put_string(value, out);
}

/// Appends a regular header as a literal that is not indexed.
pub fn encode_header(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.push(0);
    put_string(name.as_str().as_bytes(), out);
    put_string(value.as_bytes(), out);
}

fn put_integer(value: usize, n: u32, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string, raw: Huffman coding costs more time than the bytes it saves
/// on a loopback or a data-center link.
fn put_string(s: &[u8], out: &mut Vec<u8>) {
    put_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>().into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(hex(block), |n, v| out.push((n.as_str().to_owned(), String::from_utf8(v.to_vec()).unwrap()))).unwrap();
        out
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table.iter().map(|e| (e.name.as_str().to_owned(), String::from_utf8(e.value.to_vec()).unwrap())).collect()
    }

    #[test]
    fn rfc_c3_requests_without_huffman() {
        let mut d = Decoder::new(4096);
        let first = decode(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(
            first,
            fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.size, 57);
        let second = decode(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865");
        assert_eq!(second[4], ("cache-control".to_owned(), "no-cache".to_owned()));
        assert_eq!(d.size, 110);
        let third = decode(&mut d, "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
        assert_eq!(
            third,
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(
            table(&d),
            fields(&[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")])
        );
    }

    #[test]
    fn rfc_c6_responses_with_huffman_and_eviction() {
        // A 256-octet table, as in the RFC's example.
        let mut d = Decoder::new(256);
        let first = decode(
            &mut d,
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        );
        assert_eq!(
            first,
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        let second = decode(&mut d, "4883 640e ffc1 c0bf");
        assert_eq!(second[0], (":status".to_owned(), "307".to_owned()));
        assert_eq!(d.size, 222);
        let third = decode(
            &mut d,
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        );
        assert_eq!(
            third[5],
            ("set-cookie".to_owned(), "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".to_owned())
        );
        assert_eq!(d.size, 215);
        assert_eq!(
            table(&d),
            fields(&[
                ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ])
        );
    }

    #[test]
    fn refuses_what_rfc_7541_refuses() {
        let mut d = Decoder::new(4096);
        let mut run = |b: &str| d.decode(hex(b), |_, _| {});
        assert_eq!(run("be"), Err(Error::Index), "index 62 with an empty table");
        assert_eq!(run("80"), Err(Error::Index), "index 0");
        assert_eq!(run("3fe1 3f"), Err(Error::SizeUpdate), "8,192 above the 4,096 advertised");
        assert_eq!(run("82 20"), Err(Error::SizeUpdate), "an update after a field");
        assert_eq!(run("ff ffff ffff 0f"), Err(Error::Integer));
        assert_eq!(run("0003 6162"), Err(Error::Truncated), "a name longer than the block");
        assert_eq!(run("0003 4142 4303 787978"), Err(Error::Name), "an uppercase name");
        assert_eq!(run("0081 ff01 61"), Err(Error::Huffman(huffman::Error::Padding)));
    }

    #[test]
    fn a_size_update_evicts() {
        let mut d = Decoder::new(4096);
        decode(&mut d, "4003 6162 6303 7879 7a");
        assert_eq!(d.size, 38);
        decode(&mut d, "20");
        assert_eq!(d.size, 0);
        assert!(d.table.is_empty());
    }

    #[test]
    fn what_is_encoded_decodes() {
        let mut out = Vec::new();
        encode(&Name::Method, b"GET", &mut out);
        encode(&Name::Method, b"PATCH", &mut out);
        encode(&Name::Scheme, b"http", &mut out);
        encode(&Name::Path, b"/echo.Echo/Say", &mut out);
        encode(&Name::Authority, b"backend:8080", &mut out);
        encode(&Name::Status, b"503", &mut out);
        encode(&Name::Status, b"200", &mut out);
        encode(&Name::Protocol, b"websocket", &mut out);
        let long = "x".repeat(300);
        encode_header(&HeaderName::from_static("te"), &HeaderValue::from_static("trailers"), &mut out);
        encode_header(&HeaderName::from_static("x-long"), &HeaderValue::from_str(&long).unwrap(), &mut out);
        let mut d = Decoder::new(4096);
        let mut got = Vec::new();
        d.decode(out.into(), |n, v| got.push((n.as_str().to_owned(), String::from_utf8(v.to_vec()).unwrap()))).unwrap();
        assert_eq!(
            got,
            fields(&[
                (":method", "GET"),
                (":method", "PATCH"),
                (":scheme", "http"),
                (":path", "/echo.Echo/Say"),
                (":authority", "backend:8080"),
                (":status", "503"),
                (":status", "200"),
                (":protocol", "websocket"),
                ("te", "trailers"),
                ("x-long", &long),
            ])
        );
        assert!(d.table.is_empty(), "nothing encoded is indexed");
    }
}
