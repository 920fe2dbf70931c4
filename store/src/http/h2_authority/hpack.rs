//! HPACK (RFC 7541), as much as the authority fix needs: a [`Decoder`] that follows a
//! peer's encoder through its dynamic table, and [`encode_literal`], which writes a
//! header list using only representations that leave the receiver's dynamic table as
//! it was (indexed static entries and literals without indexing, no Huffman).

use super::huffman::{self, HuffmanError};
use bytes::Bytes;
use std::collections::VecDeque;

/// Bytes an entry costs in the dynamic table on top of its name and value (§4.1).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// The static table (RFC 7541 Appendix A); index `i` is `STATIC_TABLE[i - 1]`.
const STATIC_TABLE: [(&str, &str); 61] = [
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

/// A header block the decoder cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field representation")]
    Truncated,
    #[error("integer in header block is too large")]
    IntegerOverflow,
    #[error("index {0} is in neither the static nor the dynamic table")]
    BadIndex(usize),
    #[error("dynamic table size update to {size} bytes exceeds the allowed {limit}")]
    TableSizeTooLarge { size: usize, limit: usize },
    #[error("dynamic table size update after the first field of a header block")]
    LateTableSizeUpdate,
    #[error("decoded header list exceeds {0} bytes")]
    ListTooLarge(usize),
    #[error("bad Huffman-coded string")]
    Huffman(#[from] HuffmanError),
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
    /// Sent as "never indexed" (§6.2.3): intermediaries must keep it a literal.
    pub never_indexed: bool,
}

impl Field {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Decodes a connection's header blocks in order, keeping the dynamic table that the
/// peer's encoder keeps.
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first: dynamic index 62 is `table[0]`.
    table: VecDeque<(Bytes, Bytes)>,
    /// Sum of the entries' sizes (§4.1).
    size: usize,
    /// Current maximum size, as last set by the peer (starts at `size_limit`).
    max_size: usize,
    /// The largest maximum the peer may set: our SETTINGS_HEADER_TABLE_SIZE.
    size_limit: usize,
    /// A block whose decoded list (§4.1 sizes) grows past this is refused.
    list_limit: usize,
}

impl Decoder {
    /// A decoder for a peer allowed a dynamic table of `size_limit` bytes, refusing
    /// blocks whose header list exceeds `list_limit` bytes.
    pub fn new(size_limit: usize, list_limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: size_limit,
            size_limit,
            list_limit,
        }
    }

    /// Decode one complete header block. After an error the table is not to be trusted.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut fields = Vec::new();
        let mut list_size = 0;
        let mut may_resize = true;
        while let Some(&first) = r.buf.get(r.pos) {
            let field = if first & 0x80 != 0 {
                // §6.1 indexed field.
                let (name, value) = self.get(r.integer(7)?)?;
                Field {
                    name,
                    value,
                    never_indexed: false,
                }
            } else if first & 0x40 != 0 {
                // §6.2.1 literal with incremental indexing.
                let field = self.literal(&mut r, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if first & 0x20 != 0 {
                // §6.3 dynamic table size update, only before the first field.
                if !may_resize {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let size = r.integer(5)?;
                if size > self.size_limit {
                    return Err(HpackError::TableSizeTooLarge {
                        size,
                        limit: self.size_limit,
                    });
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // §6.2.2 without indexing (0000), §6.2.3 never indexed (0001).
                self.literal(&mut r, 4, first & 0x10 != 0)?
            };
            may_resize = false;
            list_size += field.size();
            if list_size > self.list_limit {
                return Err(HpackError::ListTooLarge(self.list_limit));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    /// A literal field whose name index has a `prefix`-bit prefix.
    fn literal(
        &self,
        r: &mut Reader<'_>,
        prefix: u8,
        never_indexed: bool,
    ) -> Result<Field, HpackError> {
        let index = r.integer(prefix)?;
        let name = if index == 0 {
            r.string()?
        } else {
            self.get(index)?.0
        };
        let value = r.string()?;
        Ok(Field {
            name,
            value,
            never_indexed,
        })
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), HpackError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((
                Bytes::from_static(name.as_bytes()),
                Bytes::from_static(value.as_bytes()),
            ));
        }
        index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.table.get(i))
            .cloned()
            .ok_or(HpackError::BadIndex(index))
    }

    /// §4.4: make room, then add the entry unless it alone is larger than the table.
    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evict the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        }
    }
}

/// A cursor over a header block.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// §5.1 integer with an N-bit prefix, starting at the current byte.
    fn integer(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let max_prefix = (1usize << prefix) - 1;
        let first = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        let mut value = usize::from(first) & max_prefix;
        if value < max_prefix {
            return Ok(value);
        }
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
            self.pos += 1;
            // Five continuation bytes carry 35 bits, far past any length or index here.
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value = (usize::from(b & 0x7f) << shift)
                .checked_add(value)
                .ok_or(HpackError::IntegerOverflow)?;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// §5.2 string literal, Huffman-coded or not.
    fn string(&mut self) -> Result<Bytes, HpackError> {
        let huffman = self.buf.get(self.pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            let mut out = Vec::new();
            huffman::decode(raw, &mut out)?;
            Ok(Bytes::from(out))
        } else {
            Ok(Bytes::copy_from_slice(raw))
        }
    }
}

/// Append `fields` to `out` as a header block that neither reads nor changes the
/// receiver's dynamic table: a field equal to a static entry is indexed, any other is a
/// literal without indexing (never indexed when it came so), its name indexed from the
/// static table where it is there.
pub fn encode_literal(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        let mut name_index = None;
        let mut full_index = None;
        for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
            if name.as_bytes() == f.name.as_ref() {
                name_index.get_or_insert(i + 1);
                if value.as_bytes() == f.value.as_ref() {
                    full_index = Some(i + 1);
                    break;
                }
            }
        }
        let kind = if f.never_indexed { 0x10 } else { 0x00 };
        match (full_index, name_index) {
            (Some(i), _) if !f.never_indexed => integer(out, 0x80, 7, i),
            (_, Some(i)) => {
                integer(out, kind, 4, i);
                string(out, &f.value);
            }
            (_, None) => {
                out.push(kind);
                string(out, &f.name);
                string(out, &f.value);
            }
        }
    }
}

/// §5.1: `value` with an N-bit prefix, the first byte's high bits set to `flags`.
fn integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max_prefix = (1usize << prefix) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// §5.2: a string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// Client-side encoding helpers for tests: literals with incremental indexing and
/// Huffman-coded strings, as real clients send them.
#[cfg(test)]
pub(crate) mod test_encode {
    use super::integer;

    /// §5.2 string, Huffman-coded when `huffman`.
    pub(crate) fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let mut coded = Vec::new();
            super::huffman::encode(s, &mut coded);
            integer(out, 0x80, 7, coded.len());
            out.extend_from_slice(&coded);
        } else {
            super::string(out, s);
        }
    }

    /// §6.1 indexed field.
    pub(crate) fn indexed(out: &mut Vec<u8>, index: usize) {
        integer(out, 0x80, 7, index);
    }

    /// §6.2.1 literal with incremental indexing, name by `name_index` or literal.
    pub(crate) fn incremental(
        out: &mut Vec<u8>,
        name_index: Option<usize>,
        name: &str,
        value: &str,
        huffman: bool,
    ) {
        match name_index {
            Some(i) => integer(out, 0x40, 6, i),
            None => {
                out.push(0x40);
                string(out, name.as_bytes(), huffman);
            }
        }
        string(out, value.as_bytes(), huffman);
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

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.name).into_owned(),
                    String::from_utf8_lossy(&f.value).into_owned(),
                )
            })
            .collect()
    }

    fn table(d: &Decoder) -> (Vec<(String, String)>, usize) {
        let entries = d
            .table
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        (entries, d.size)
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    const LIST_LIMIT_BYTES: usize = 1 << 20;

    #[test]
    fn rfc7541_c2_single_fields() {
        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        let f = d
            .decode(&hex(
                "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            ))
            .unwrap();
        assert_eq!(pairs(&f), owned(&[("custom-key", "custom-header")]));
        assert_eq!(table(&d), (owned(&[("custom-key", "custom-header")]), 55));

        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        let f = d
            .decode(&hex("040c 2f73 616d 706c 652f 7061 7468"))
            .unwrap();
        assert_eq!(pairs(&f), owned(&[(":path", "/sample/path")]));
        assert_eq!(table(&d), (vec![], 0));

        let f = d
            .decode(&hex("1008 7061 7373 776f 7264 0673 6563 7265 74"))
            .unwrap();
        assert_eq!(pairs(&f), owned(&[("password", "secret")]));
        assert!(f[0].never_indexed);
        assert_eq!(table(&d), (vec![], 0));

        let f = d.decode(&hex("82")).unwrap();
        assert_eq!(pairs(&f), owned(&[(":method", "GET")]));
    }

    /// C.3 (plain) and C.4 (Huffman): three requests on one connection.
    #[test]
    fn rfc7541_c3_c4_requests() {
        let blocks = [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ];
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        for set in blocks {
            let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
            let f = d.decode(&hex(set[0])).unwrap();
            assert_eq!(pairs(&f), owned(&base));
            assert_eq!(table(&d), (owned(&[(":authority", "www.example.com")]), 57));

            let f = d.decode(&hex(set[1])).unwrap();
            let mut want = base.to_vec();
            want.push(("cache-control", "no-cache"));
            assert_eq!(pairs(&f), owned(&want));
            assert_eq!(
                table(&d),
                (
                    owned(&[
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com")
                    ]),
                    110
                )
            );

            let f = d.decode(&hex(set[2])).unwrap();
            assert_eq!(
                pairs(&f),
                owned(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(
                table(&d),
                (
                    owned(&[
                        ("custom-key", "custom-value"),
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com")
                    ]),
                    164
                )
            );
        }
    }

    /// C.5 (plain) and C.6 (Huffman): three responses with a 256-byte table, so
    /// entries are evicted.
    #[test]
    fn rfc7541_c5_c6_responses_with_eviction() {
        let blocks = [
            [
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                 3d31",
            ],
            [
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ],
        ];
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let loc = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        for set in blocks {
            let mut d = Decoder::new(256, LIST_LIMIT_BYTES);
            let f = d.decode(&hex(set[0])).unwrap();
            assert_eq!(
                pairs(&f),
                owned(&[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc)
                ])
            );
            assert_eq!(table(&d).1, 222);

            let f = d.decode(&hex(set[1])).unwrap();
            assert_eq!(
                pairs(&f),
                owned(&[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc)
                ])
            );
            assert_eq!(
                table(&d),
                (
                    owned(&[
                        (":status", "307"),
                        ("location", loc),
                        ("date", date1),
                        ("cache-control", "private")
                    ]),
                    222
                )
            );

            let f = d.decode(&hex(set[2])).unwrap();
            assert_eq!(
                pairs(&f),
                owned(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", date2),
                    ("location", loc),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ])
            );
            assert_eq!(
                table(&d),
                (
                    owned(&[
                        ("set-cookie", cookie),
                        ("content-encoding", "gzip"),
                        ("date", date2)
                    ]),
                    215
                )
            );
        }
    }

    #[test]
    fn table_size_updates() {
        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        d.decode(&hex(
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        ))
        .unwrap();
        // Size 0 empties the table, then back to 4096 (0x3f e1 1f), then a field.
        let f = d.decode(&hex("20 3fe1 1f 82")).unwrap();
        assert_eq!(pairs(&f), owned(&[(":method", "GET")]));
        assert_eq!(table(&d), (vec![], 0));
        assert_eq!(d.max_size, 4096);
        assert_eq!(d.decode(&hex("be")), Err(HpackError::BadIndex(62)));

        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        assert_eq!(
            d.decode(&hex("3fe2 1f")),
            Err(HpackError::TableSizeTooLarge {
                size: 4097,
                limit: 4096
            })
        );
        assert_eq!(
            d.decode(&hex("82 20")),
            Err(HpackError::LateTableSizeUpdate)
        );
    }

    #[test]
    fn malformed_blocks() {
        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        assert_eq!(d.decode(&hex("80")), Err(HpackError::BadIndex(0)));
        assert_eq!(d.decode(&hex("40 05 61")), Err(HpackError::Truncated));
        assert_eq!(d.decode(&hex("ff")), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&hex("ff ff ff ff ff ff 01")),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(
            d.decode(&hex("04 81 00")),
            Err(HpackError::Huffman(HuffmanError::Padding))
        );
        // An indexed reference repeated past the list limit.
        let mut d = Decoder::new(4096, 100);
        assert_eq!(
            d.decode(&hex("82 82 82 82")),
            Err(HpackError::ListTooLarge(100))
        );
    }

    #[test]
    fn literal_encoding_leaves_the_table_alone() {
        let fields = [
            (":method", "POST", false),
            (":authority", "127.0.0.1:2379", false),
            ("content-type", "application/grpc", false),
            ("authorization", "token", true),
            (":method", "GET", true),
            ("x-custom", "v", false),
            ("x-long", &"y".repeat(300), false),
        ]
        .map(|(n, v, s)| Field {
            name: Bytes::copy_from_slice(n.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            never_indexed: s,
        });
        let mut block = Vec::new();
        encode_literal(&fields, &mut block);
        // `:method: POST` is static entry 3; `:authority` keeps static name 1.
        assert_eq!(&block[..2], &[0x83, 0x01]);
        let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
        assert_eq!(d.decode(&block).unwrap(), fields.to_vec());
        assert_eq!(table(&d), (vec![], 0));
    }

    fn field() -> impl Strategy<Value = Field> {
        let name = prop_oneof![
            Just(":authority".to_string()),
            Just(":method".to_string()),
            Just("content-type".to_string()),
            "[a-z-]{1,12}",
        ];
        let value = prop_oneof![Just(String::new()), Just("GET".to_string()), "[ -~]{0,200}"];
        (name, value, any::<bool>()).prop_map(|(n, v, s)| Field {
            name: Bytes::from(n),
            value: Bytes::from(v),
            never_indexed: s,
        })
    }

    proptest! {
        #[test]
        fn literal_roundtrip(fields in proptest::collection::vec(field(), 0..20)) {
            let mut block = Vec::new();
            encode_literal(&fields, &mut block);
            let mut d = Decoder::new(4096, LIST_LIMIT_BYTES);
            prop_assert_eq!(d.decode(&block).unwrap(), fields);
            prop_assert_eq!(d.size, 0);
        }

        #[test]
        fn decode_never_panics(blocks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..4)) {
            let mut d = Decoder::new(4096, 4096);
            for b in blocks {
                let _ = d.decode(&b);
                prop_assert!(d.size <= d.max_size);
            }
        }
    }
}
