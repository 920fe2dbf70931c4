//! The Huffman code of HPACK (RFC 7541 §5.2 and Appendix B), decoding side.
//!
//! The code is canonical: ordering the symbols by (code length, symbol) and counting up
//! gives exactly the codes of Appendix B, so the table below holds only each symbol's
//! code length and the codes are derived from it when the crate is compiled.

/// Symbol 256, which must never appear inside a string; its prefix pads the last byte.
const EOS: u16 = 256;

/// The longest code (EOS and a few control bytes).
const MAX_CODE_BITS: usize = 30;

/// Code length in bits of each symbol, 0x00..=0xff then EOS (RFC 7541 Appendix B).
const CODE_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// A string that is not valid Huffman-coded HPACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("Huffman-coded string contains the EOS symbol")]
    Eos,
    #[error(
        "Huffman-coded string ends in more than 7 bits of padding, or padding that is not all ones"
    )]
    Padding,
}

/// The canonical code, arranged for decoding one bit at a time.
#[derive(Debug)]
struct Canonical {
    /// The numerically first code of each length.
    first_code: [u32; MAX_CODE_BITS + 1],
    /// Where the symbols of each length start in `symbols`.
    first_index: [u16; MAX_CODE_BITS + 1],
    /// How many symbols have each length.
    count: [u16; MAX_CODE_BITS + 1],
    /// The symbols ordered by (code length, symbol).
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut c = Canonical {
        first_code: [0; MAX_CODE_BITS + 1],
        first_index: [0; MAX_CODE_BITS + 1],
        count: [0; MAX_CODE_BITS + 1],
        symbols: [0; 257],
    };
    let mut code: u32 = 0;
    let mut n: usize = 0;
    let mut len = 1;
    while len <= MAX_CODE_BITS {
        c.first_code[len] = code;
        c.first_index[len] = n as u16;
        let mut sym = 0;
        while sym < CODE_BITS.len() {
            if CODE_BITS[sym] as usize == len {
                c.symbols[n] = sym as u16;
                c.count[len] += 1;
                n += 1;
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    c
}

static CANONICAL: Canonical = canonical();

/// Decode the Huffman-coded `src`, appending the bytes to `out`.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let c = &CANONICAL;
    out.reserve(src.len() * 8 / 5);
    let mut code: u32 = 0;
    let mut len = 0;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(c.first_code[len]);
            if offset < u32::from(c.count[len]) {
                let sym = c.symbols[usize::from(c.first_index[len]) + offset as usize];
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_BITS {
                // Unreachable for this complete code; keeps the indexing in bounds.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

/// Huffman-code `src` (tests build client header blocks with it).
#[cfg(test)]
pub(crate) fn encode(src: &[u8], out: &mut Vec<u8>) {
    let c = &CANONICAL;
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in src {
        let len = usize::from(CODE_BITS[usize::from(b)]);
        let start = usize::from(c.first_index[len]);
        let rank = c.symbols[start..]
            .iter()
            .position(|&s| s == u16::from(b))
            .expect("every byte has a code");
        let code = c.first_code[len] + rank as u32;
        acc = (acc << len) | u64::from(code);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn dec(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    #[test]
    fn code_is_complete() {
        // Kraft's sum is exactly one: every bit string decodes or is a prefix of a code.
        let sum: u64 = CODE_BITS
            .iter()
            .map(|&l| 1u64 << (MAX_CODE_BITS - usize::from(l)))
            .sum();
        assert_eq!(sum, 1u64 << MAX_CODE_BITS);
    }

    #[test]
    fn appendix_b_codes() {
        // Spot checks against the codes printed in RFC 7541 Appendix B.
        let code_of = |sym: u16| {
            let len = usize::from(CODE_BITS[usize::from(sym)]);
            let start = usize::from(CANONICAL.first_index[len]);
            let rank = CANONICAL.symbols[start..]
                .iter()
                .position(|&s| s == sym)
                .unwrap();
            (CANONICAL.first_code[len] + rank as u32, len)
        };
        assert_eq!(code_of(u16::from(b'0')), (0x0, 5));
        assert_eq!(code_of(u16::from(b' ')), (0x14, 6));
        assert_eq!(code_of(u16::from(b'a')), (0x3, 5));
        assert_eq!(code_of(u16::from(b'/')), (0x18, 6));
        assert_eq!(code_of(u16::from(b':')), (0x5c, 7));
        assert_eq!(code_of(0), (0x1ff8, 13));
        assert_eq!(code_of(0xff), (0x3ffffee, 26));
        assert_eq!(code_of(EOS), (0x3fffffff, 30));
    }

    #[test]
    fn rfc7541_appendix_c_strings() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
        ];
        for (coded, plain) in cases {
            assert_eq!(dec(&hex(coded)).unwrap(), plain.as_bytes(), "{plain}");
            let mut out = Vec::new();
            encode(plain.as_bytes(), &mut out);
            assert_eq!(out, hex(coded), "{plain}");
        }
    }

    #[test]
    fn bad_padding_and_eos() {
        // 'a' (00011) followed by three zero bits: padding must be ones.
        assert_eq!(dec(&[0b0001_1000]), Err(HuffmanError::Padding));
        // A whole byte of ones is more than 7 bits of padding.
        assert_eq!(dec(&[0b0001_1111, 0xff]), Err(HuffmanError::Padding));
        // EOS itself (30 ones), padded with ones.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Eos));
        assert_eq!(dec(&[]), Ok(Vec::new()));
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut coded = Vec::new();
            encode(&data, &mut coded);
            prop_assert_eq!(dec(&coded).unwrap(), data);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = dec(&data);
        }
    }
}
