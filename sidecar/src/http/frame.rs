//! HTTP/2 frames (RFC 9113, section 4 and 6): their header, and writing
//! the ones a connection sends into its output buffer.

/// The connection preface a client sends first (RFC 9113, section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS identifiers (RFC 9113, section 6.5.2).
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;

/// The largest frame payload either side accepts until told otherwise.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Error codes (RFC 9113, section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        match NAMES.get(self.0 as usize) {
            Some(name) => f.write_str(name),
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

/// A frame's nine-octet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub const LEN: usize = 9;

    pub fn parse(b: &[u8; 9]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn write(self, out: &mut Vec<u8>) {
        let len = (self.len as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

pub fn settings(values: &[(u16, u32)], out: &mut Vec<u8>) {
    Head { len: values.len() * 6, kind: SETTINGS, flags: 0, stream: 0 }.write(out);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn settings_ack(out: &mut Vec<u8>) {
    Head { len: 0, kind: SETTINGS, flags: ACK, stream: 0 }.write(out);
}

pub fn window_update(stream: u32, increment: u32, out: &mut Vec<u8>) {
    Head { len: 4, kind: WINDOW_UPDATE, flags: 0, stream }.write(out);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn rst_stream(stream: u32, reason: Reason, out: &mut Vec<u8>) {
    Head { len: 4, kind: RST_STREAM, flags: 0, stream }.write(out);
    out.extend_from_slice(&reason.0.to_be_bytes());
}

pub fn ping_ack(payload: &[u8], out: &mut Vec<u8>) {
    Head { len: payload.len(), kind: PING, flags: ACK, stream: 0 }.write(out);
    out.extend_from_slice(payload);
}

pub fn goaway(last_stream: u32, reason: Reason, out: &mut Vec<u8>) {
    Head { len: 8, kind: GOAWAY, flags: 0, stream: 0 }.write(out);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&reason.0.to_be_bytes());
}

pub fn data(stream: u32, payload: &[u8], end: bool, out: &mut Vec<u8>) {
    Head { len: payload.len(), kind: DATA, flags: if end { END_STREAM } else { 0 }, stream }.write(out);
    out.extend_from_slice(payload);
}

/// A header block as a HEADERS frame and as many CONTINUATION frames as
/// `max_frame` makes it need.
pub fn headers(stream: u32, block: &[u8], end: bool, max_frame: usize, out: &mut Vec<u8>) {
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = HEADERS;
    let mut flags = if end { END_STREAM } else { 0 };
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        if last {
            flags |= END_HEADERS;
        }
        Head { len: chunk.len(), kind, flags, stream }.write(out);
        out.extend_from_slice(chunk);
        if last {
            return;
        }
        kind = CONTINUATION;
        flags = 0;
    }
}

/// A frame's payload without its padding (RFC 9113, section 6.1), or
/// None when the padding is longer than the payload.
pub fn unpad(flags: u8, payload: &[u8]) -> Option<(usize, usize)> {
    if flags & PADDED == 0 {
        return Some((0, payload.len()));
    }
    let pad = usize::from(*payload.first()?);
    (pad < payload.len()).then(|| (1, payload.len() - pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips() {
        let head = Head { len: 70_000, kind: HEADERS, flags: END_HEADERS | END_STREAM, stream: 0x7fff_fffd };
        let mut out = Vec::new();
        head.write(&mut out);
        assert_eq!(Head::parse(&out[..9].try_into().unwrap()), head);
        // The reserved bit is dropped.
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out[..9].try_into().unwrap()).stream, 0x7fff_fffd);
    }

    #[test]
    fn a_large_block_continues() {
        let block = vec![7u8; 40_000];
        let mut out = Vec::new();
        headers(3, &block, true, 16_384, &mut out);
        let mut at = 0;
        let mut frames = Vec::new();
        while at < out.len() {
            let head = Head::parse(&out[at..at + 9].try_into().unwrap());
            frames.push((head.kind, head.flags, head.len));
            at += 9 + head.len;
        }
        assert_eq!(
            frames,
            vec![(HEADERS, END_STREAM, 16_384), (CONTINUATION, 0, 16_384), (CONTINUATION, END_HEADERS, 7_232)]
        );
        let mut small = Vec::new();
        headers(1, &[0x82], false, 16_384, &mut small);
        assert_eq!(small, [0, 0, 1, HEADERS, END_HEADERS, 0, 0, 0, 1, 0x82]);
    }

    #[test]
    fn padding_is_checked() {
        assert_eq!(unpad(PADDED, &[2, b'a', 0, 0]), Some((1, 2)));
        assert_eq!(unpad(PADDED, &[4, b'a', 0, 0]), None);
        assert_eq!(unpad(PADDED, &[]), None);
        assert_eq!(unpad(0, b"abc"), Some((0, 3)));
    }
}
