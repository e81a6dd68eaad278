//! HPACK's Huffman code (RFC 7541, Appendix B), decoded four bits at a time.
//!
//! The decoder walks a state machine built once from the code table: a
//! state is an inner node of the code's tree, and each (state, nibble)
//! entry says the next state and the symbol completed on the way, if any
//! (no code is shorter than five bits, so a nibble completes at most one).

use std::sync::OnceLock;

/// Why a Huffman string is refused (RFC 7541, section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a Huffman string contains the EOS symbol")]
    Eos,
    #[error("a Huffman string's padding is longer than 7 bits or not the EOS prefix")]
    Padding,
}

/// (code, length in bits) of each symbol; 256 is EOS.
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// One (state, nibble) transition: the next state in the low byte, the
/// symbol completed in the next byte, and flags above.
#[derive(Clone, Copy, Default)]
struct Step(u32);

const EMITS: u32 = 1 << 16;
/// The next state is a valid place to end: the bits since the last symbol
/// are fewer than eight and all ones (a prefix of EOS).
const ACCEPTS: u32 = 1 << 17;
const FAILS: u32 = 1 << 18;

impl Step {
    fn next(self) -> usize {
        (self.0 & 0xff) as usize
    }
    fn symbol(self) -> Option<u8> {
        (self.0 & EMITS != 0).then_some((self.0 >> 8) as u8)
    }
}

struct Machine {
    steps: Vec<[Step; 16]>,
}

/// The code's tree: inner nodes are numbered from 0 (the root), in the
/// order they are created; a child is either an inner node or a symbol.
#[derive(Clone, Copy)]
enum Child {
    None,
    Node(usize),
    Leaf(u16),
}

fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(|| {
        let mut tree: Vec<[Child; 2]> = vec![[Child::None; 2]];
        // How deep each inner node is, and whether its path is all ones.
        let mut ones: Vec<Option<u8>> = vec![Some(0)];
        for (symbol, &(code, len)) in CODES.iter().enumerate() {
            let mut node = 0;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    tree[node][bit] = Child::Leaf(symbol as u16);
                    break;
                }
                node = match tree[node][bit] {
                    Child::Node(n) => n,
                    _ => {
                        let n = tree.len();
                        tree.push([Child::None; 2]);
                        ones.push(ones[node].filter(|_| bit == 1).map(|d| d + 1));
                        tree[node][bit] = Child::Node(n);
                        n
                    }
                };
            }
        }
        // 256 inner nodes for 257 symbols: a state fits in a byte.
        debug_assert_eq!(tree.len(), 256);
        let steps = (0..tree.len())
            .map(|state| {
                let mut row = [Step::default(); 16];
                for (nibble, step) in row.iter_mut().enumerate() {
                    let mut node = state;
                    let mut out = 0;
                    for i in (0..4).rev() {
                        match tree[node][(nibble >> i) & 1] {
                            Child::Node(n) => node = n,
                            Child::Leaf(256) | Child::None => {
                                out = FAILS;
                                break;
                            }
                            Child::Leaf(s) => {
                                out |= EMITS | (u32::from(s) << 8);
                                node = 0;
                            }
                        }
                    }
                    if ones[node].is_some_and(|d| d < 8) {
                        out |= ACCEPTS;
                    }
                    *step = Step(out | node as u32);
                }
                row
            })
            .collect();
        Machine { steps }
    })
}

/// Appends the decoding of `input` to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let steps = &machine().steps;
    out.reserve(input.len() * 8 / 5);
    let mut state = 0;
    let mut accepts = true;
    for &byte in input {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = steps[state][nibble as usize];
            if step.0 & FAILS != 0 {
                return Err(Error::Eos);
            }
            if let Some(symbol) = step.symbol() {
                out.push(symbol);
            }
            state = step.next();
            accepts = step.0 & ACCEPTS != 0;
        }
    }
    if accepts { Ok(()) } else { Err(Error::Padding) }
}

/// The length of `input` Huffman-coded, in bytes. Only tests encode: the
/// encoder sends strings raw ([`super::encode`]).
#[cfg(test)]
fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input.iter().map(|&b| usize::from(CODES[b as usize].1)).sum();
    bits.div_ceil(8)
}

/// Appends `input` Huffman-coded to `out`, padded with EOS's leading ones.
#[cfg(test)]
fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in input {
        let (code, len) = CODES[b as usize];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 7541, Appendix C.4 and C.6: strings as Huffman-coded there.
    const VECTORS: [(&str, &str); 8] = [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        ("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
        ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
    ];

    #[test]
    fn decodes_and_encodes_the_rfc_vectors() {
        for (plain, coded) in VECTORS {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            let mut again = Vec::new();
            encode(plain.as_bytes(), &mut again);
            assert_eq!(again, hex(coded), "{plain}");
            assert_eq!(encoded_len(plain.as_bytes()), again.len());
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn refuses_bad_padding_and_eos() {
        // 'a' is 00011 (5 bits); padding 000 is not EOS's prefix.
        assert_eq!(decode(&[0b0001_1000], &mut Vec::new()), Err(Error::Padding));
        // A whole byte of ones after a symbol is padding of 8 bits.
        assert_eq!(decode(&[0b0001_1111, 0xff], &mut Vec::new()), Err(Error::Padding));
        // EOS itself: 30 ones.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()), Err(Error::Eos));
        assert_eq!(decode(&[0b0001_1111], &mut Vec::new()), Ok(()));
        assert_eq!(decode(&[], &mut Vec::new()), Ok(()));
    }
}
