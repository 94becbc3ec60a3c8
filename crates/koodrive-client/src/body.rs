//! The `batchRegister/create` body, `{"userList":[RegisterUserInfo, ...]}`, encoded straight
//! into bytes and hashed in the same pass.
//!
//! This is the hot half of a 1000-user request: SPEC §9 allows building and signing at most
//! 1.5× the cost of hashing the body once, and serde_json's generic serializer alone cost
//! about as much as the hash (see `BENCHMARKS.md`). The body's shape is fixed — flat objects
//! of string fields — so the keys and punctuation are written as literals, and each string
//! that needs no escaping (nearly all of them) is checked and copied eight bytes at a time.
//! The SHA-256 the signature needs is fed each user's finished 64-byte blocks while they are
//! still in L1 cache; on Intel (Sapphire Rapids) that also let the CPU overlap the hash's
//! long dependency chain with the encoding work, on AMD (Zen 3) it neither helps nor hurts.
//!
//! The bytes must be exactly what `serde_json::to_vec(&{"userList": users})` produces,
//! because they are what gets signed and what the tests and the simulator were written
//! against: same field order, absent fields omitted, serde_json's escapes (`\"`, `\\`,
//! `\b \f \n \r \t`, other control characters as lower-case `\u00XX`, everything else
//! including non-ASCII and `/` as is). The tests compare both on random input.

use super::{RegisterUser, signer};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::Mutex;

const OPEN: &[u8] = br#"{"userList":["#;
const CLOSE: &[u8] = b"]}";
// Each literal closes the previous string value, so one copy does the quote, the separator,
// the key and the opening quote of the next value.
const FIRST_USER: &[u8] = br#"{"firstname":""#;
const SURNAME: &[u8] = br#"","surname":""#;
const PHONE: &[u8] = br#"","phone":""#;
const EMAIL: &[u8] = br#"","email":""#;
const PASSWORD: &[u8] = br#"","password":""#;
const END_USER: &[u8] = br#""}"#;

/// SHA-256 consumes 64-byte blocks; handing it only whole ones means it never copies a
/// partial block into its own buffer.
const SHA256_BLOCK: usize = 64;

/// An encoded body and the lower-case hex SHA-256 of exactly those bytes.
pub(super) struct HashedBody {
    /// May hold users' passwords: never print it.
    pub bytes: Vec<u8>,
    pub sha256_hex: String,
}

impl HashedBody {
    /// The bytes as a body to send; once the last reference to it is dropped (the request
    /// is done), the buffer is zeroed and kept for the next body ([`SPARE`]).
    pub fn into_recycled_bytes(self) -> Bytes {
        if self.bytes.capacity() == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(Recycled(self.bytes))
    }

    /// No body at all (a `GET`).
    pub fn empty() -> Self {
        Self {
            bytes: Vec::new(),
            sha256_hex: signer::EMPTY_BODY_SHA256.to_string(),
        }
    }
}

/// Buffers of bodies already sent, kept for the next ones.
///
/// A 1000-user body is ~135 KB. Allocated afresh each time, it is a new mapping wherever
/// large allocations are mapped on their own (the operator sets that, for its memory:
/// src/main.rs), and writing it takes ~34 page faults, which cost more than encoding and
/// signing the body (BENCHMARKS.md). A few buffers, as many as requests are usually in
/// flight, avoid that without holding on to much.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const SPARE_BUFFERS: usize = 4;
/// Larger buffers (escape-heavy bodies) go back to the allocator.
const LARGEST_SPARE: usize = 1 << 20;

/// A sent body's buffer, on its way back to [`SPARE`].
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(buf) = wiped_for_reuse(std::mem::take(&mut self.0)) {
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        }
    }
}

/// `buf` with every byte zeroed (it held users' passwords: nothing of a body outlives its
/// request), or `None` when it is too large to keep.
fn wiped_for_reuse(mut buf: Vec<u8>) -> Option<Vec<u8>> {
    buf.fill(0);
    (buf.capacity() <= LARGEST_SPARE).then_some(buf)
}

/// The JSON body of a `batchRegister/create` request for `users`, with its SHA-256, or
/// `None` when a user's firstname or phone is blank (KooDrive requires both; the caller
/// reports which). Checked here rather than in a separate pass over 1000 users because the
/// encoder reads those strings anyway, and the check is mostly one byte already in hand.
///
/// Written into a buffer kept from an earlier body when there is one (bodies go back
/// through [`HashedBody::into_recycled_bytes`]).
pub(super) fn encode_create_body_reusing(users: &[RegisterUser]) -> Option<HashedBody> {
    let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner()).pop();
    encode_into(
        Writer::reusing(spare.unwrap_or_default(), unescaped_len(users)),
        users,
    )
}

/// [`encode_create_body_reusing`] into a new buffer of exactly the body's size.
#[cfg(test)]
pub(super) fn encode_create_body(users: &[RegisterUser]) -> Option<HashedBody> {
    encode_into(Writer::with_len(unescaped_len(users)), users)
}

fn encode_into(mut out: Writer, users: &[RegisterUser]) -> Option<HashedBody> {
    let mut hasher = Sha256::new();
    let mut hashed = 0;
    out.put(OPEN);
    for (index, user) in users.iter().enumerate() {
        if is_blank(&user.firstname) || is_blank(&user.phone) {
            return None;
        }
        // Two fixed-size copies rather than one copy of either of two lengths, which would
        // be a call to memcpy per user.
        if index > 0 {
            out.put(b",");
        }
        out.put(FIRST_USER);
        out.string(&user.firstname);
        if let Some(surname) = &user.surname {
            out.put(SURNAME);
            out.string(surname);
        }
        out.put(PHONE);
        out.string(&user.phone);
        if let Some(email) = &user.email {
            out.put(EMAIL);
            out.string(email);
        }
        if let Some(password) = &user.password {
            out.put(PASSWORD);
            out.string(password.expose());
        }
        out.put(END_USER);
        let whole_blocks = (out.at - hashed) / SHA256_BLOCK * SHA256_BLOCK;
        if whole_blocks > 0 {
            hasher.update(&out.buf[hashed..hashed + whole_blocks]);
            hashed += whole_blocks;
        }
    }
    out.put(CLOSE);
    let bytes = out.finish();
    hasher.update(&bytes[hashed..]);
    Some(HashedBody {
        sha256_hex: hex::encode(hasher.finalize()),
        bytes,
    })
}

/// Whether `text` is empty or only whitespace (`text.trim().is_empty()`), deciding on the
/// first byte when it is visible ASCII, which names and phone numbers start with.
#[inline]
pub(super) fn is_blank(text: &str) -> bool {
    match text.as_bytes().first() {
        Some(&first) if first > b' ' && first < 0x7f => false,
        _ => text.chars().all(char::is_whitespace),
    }
}

/// The body's exact length when no string needs escaping, so the buffer is allocated once
/// in the common case (escapes only make it grow).
fn unescaped_len(users: &[RegisterUser]) -> usize {
    let optional = |value: Option<&str>, key: &[u8]| value.map_or(0, |v| key.len() + v.len());
    let users_len: usize = users
        .iter()
        .map(|user| {
            FIRST_USER.len()
                + user.firstname.len()
                + optional(user.surname.as_deref(), SURNAME)
                + PHONE.len()
                + user.phone.len()
                + optional(user.email.as_deref(), EMAIL)
                + optional(user.password.as_ref().map(|p| p.expose()), PASSWORD)
                + END_USER.len()
        })
        .sum();
    // A comma between users.
    OPEN.len() + users_len + users.len().saturating_sub(1) + CLOSE.len()
}

/// Whether serde_json escapes this byte. Bytes of multi-byte UTF-8 sequences are all
/// ≥ 0x80, so working on bytes never splits a character.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether any of the eight bytes packed in `word` needs escaping. Classic SWAR tests
/// ("Bit Twiddling Hacks": `hasless`, `haszero`): a byte's high bit ends up set when it is
/// below 0x20 or equal to `"` or `\`. A borrow can set bits above a true hit, never
/// without one, so the yes/no answer is exact.
#[inline(always)]
fn word_needs_escape(word: u64) -> bool {
    escape_bits(word) != 0
}

/// The high bits [`word_needs_escape`] tests, so that a string's words can be tested once,
/// together. `haszero(v)` is `(v - 0x01…) & !v & 0x80…`; for `v = word ^ c` with `c`
/// below 0x80 the high bits of `!v` are those of `!word`, so the three tests share one
/// mask (the answer is the same, in fewer instructions).
#[inline(always)]
fn escape_bits(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20);
    let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
    let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    (below_space | quote | backslash) & !word & HIGH_BITS
}

/// The bytes at `at..at + N` (in bounds: callers check).
#[inline(always)]
fn chunk<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The body being written: a buffer already as long as the body will be when nothing needs
/// escaping, and the position written up to.
///
/// Each store is a bounds-checked write into that buffer at a position the encoder keeps in
/// a register. Appending with `Vec::extend_from_slice` instead re-read the vector's length
/// and capacity from memory and stored the length back for every 8-byte word, and that
/// bookkeeping, not the copying, was most of the encoder's cost on AMD Zen 3 (BENCHMARKS.md).
/// Zero-filling the buffer up front costs less than it saves.
struct Writer {
    buf: Vec<u8>,
    at: usize,
}

impl Writer {
    #[cfg(test)]
    fn with_len(len: usize) -> Writer {
        Writer {
            buf: vec![0; len],
            at: 0,
        }
    }

    /// [`Writer::with_len`] in `buf`'s memory (reallocated only if it is too small).
    fn reusing(mut buf: Vec<u8>, len: usize) -> Writer {
        buf.clear();
        buf.resize(len, 0);
        Writer { buf, at: 0 }
    }

    /// The body: exactly what was written.
    fn finish(mut self) -> Vec<u8> {
        self.buf.truncate(self.at);
        self.buf
    }

    /// Makes room for `extra` bytes beyond what the buffer was sized for (escapes).
    #[cold]
    fn grow(&mut self, extra: usize) {
        self.buf.resize(self.buf.len() + extra, 0);
    }

    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        self.buf[self.at..end].copy_from_slice(bytes);
        self.at = end;
    }

    /// Appends `text` as the inside of a JSON string (no surrounding quotes).
    #[inline(always)]
    fn string(&mut self, text: &str) {
        if !self.copy_unless_escaping(text.as_bytes()) {
            self.escaped(text.as_bytes());
        }
    }

    /// Writes `bytes` and returns `true` when none needs escaping; otherwise leaves the
    /// position where it was (what was written past it gets overwritten) and returns
    /// `false`. Checking and copying in one pass, in fixed-size words, is what makes the
    /// common case cheap: a variable-length copy of a 10–20 byte string costs more than the
    /// scan. A tail shorter than a word is written as the string's last word, overlapping
    /// bytes already written; strings of 4–7 bytes as two overlapping half-words.
    #[inline(always)]
    fn copy_unless_escaping(&mut self, bytes: &[u8]) -> bool {
        let len = bytes.len();
        // In bounds: the buffer has room for every string unescaped.
        let out = &mut self.buf[self.at..self.at + len];
        let needs_escaping = if len >= 8 {
            // Whole words, then the last word ending at `len` (overlapping the one before;
            // written again when `len` is a multiple of 8). Exact-size chunks leave no bounds
            // to check inside the loop.
            let mut found = 0;
            let (words, _) = bytes.as_chunks::<8>();
            let (slots, _) = out.as_chunks_mut::<8>();
            for (word, slot) in words.iter().zip(slots) {
                found |= escape_bits(u64::from_le_bytes(*word));
                *slot = *word;
            }
            if let (Some(word), Some(slot)) = (bytes.last_chunk::<8>(), out.last_chunk_mut::<8>()) {
                found |= escape_bits(u64::from_le_bytes(*word));
                *slot = *word;
            }
            found != 0
        } else if len >= 4 {
            let head = chunk::<4>(bytes, 0);
            let tail = chunk::<4>(bytes, len - 4);
            out[..4].copy_from_slice(&head);
            out[len - 4..].copy_from_slice(&tail);
            let both =
                u64::from(u32::from_le_bytes(head)) | u64::from(u32::from_le_bytes(tail)) << 32;
            word_needs_escape(both)
        } else {
            out.copy_from_slice(bytes);
            bytes.iter().any(|&b| needs_escape(b))
        };
        if !needs_escaping {
            self.at += len;
        }
        !needs_escaping
    }

    /// The slow path: `bytes` with serde_json's escapes, growing the buffer by what the
    /// escapes add.
    #[cold]
    #[inline(never)]
    fn escaped(&mut self, bytes: &[u8]) {
        let escaped_len: usize = bytes
            .iter()
            .map(|&byte| match byte {
                b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
                byte if byte < 0x20 => 6,
                _ => 1,
            })
            .sum();
        // The buffer has room for this string unescaped and everything after it.
        self.grow(escaped_len - bytes.len());
        let mut run_start = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            if !needs_escape(byte) {
                continue;
            }
            self.put(&bytes[run_start..at]);
            run_start = at + 1;
            match byte {
                b'"' => self.put(br#"\""#),
                b'\\' => self.put(br"\\"),
                0x08 => self.put(br"\b"),
                0x0c => self.put(br"\f"),
                b'\n' => self.put(br"\n"),
                b'\r' => self.put(br"\r"),
                b'\t' => self.put(br"\t"),
                control => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.put(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(control >> 4)],
                        HEX[usize::from(control & 0x0f)],
                    ]);
                }
            }
        }
        self.put(&bytes[run_start..]);
    }
}

/// Appends `bytes` to `body` and returns `true` when none needs escaping; otherwise leaves
/// `body` as it was and returns `false` ([`Writer::copy_unless_escaping`] on a vector).
#[cfg(test)]
fn copy_unless_escaping(body: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let at = body.len();
    let mut out = Writer {
        buf: std::mem::take(body),
        at,
    };
    out.buf.resize(at + bytes.len(), 0);
    let copied = out.copy_unless_escaping(bytes);
    *body = out.finish();
    copied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Password;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// What the client sent before this encoder existed, and what it must keep sending.
    #[derive(serde::Serialize)]
    struct SerdeBody<'a> {
        #[serde(rename = "userList")]
        user_list: &'a [RegisterUser],
    }

    fn serde_json_bytes(users: &[RegisterUser]) -> Vec<u8> {
        serde_json::to_vec(&SerdeBody { user_list: users }).unwrap()
    }

    fn user(firstname: &str) -> RegisterUser {
        RegisterUser {
            firstname: firstname.into(),
            surname: None,
            phone: "8613800000001".into(),
            email: None,
            password: None,
        }
    }

    /// Characters chosen to hit every escaping rule and the multi-byte cases.
    const TRICKY: &[char] = &[
        '"',
        '\\',
        '/',
        '\u{0}',
        '\u{1}',
        '\u{8}',
        '\t',
        '\n',
        '\u{b}',
        '\u{c}',
        '\r',
        '\u{1f}',
        '\u{7f}',
        ' ',
        'a',
        'Z',
        '0',
        '{',
        '}',
        ',',
        ':',
        'é',
        'ß',
        '中',
        '文',
        '😀',
        '\u{2028}',
        '\u{2029}',
        '\u{feff}',
        '\u{ffff}',
        '\u{10ffff}',
    ];

    fn random_text(rng: &mut StdRng) -> String {
        let len = rng.random_range(0..40);
        (0..len)
            .map(|_| match rng.random_range(0..4) {
                0 => TRICKY[rng.random_range(0..TRICKY.len())],
                1 => char::from(rng.random_range(0u8..0x80)),
                // Any scalar value; surrogates are not `char`s, so fall back to ASCII.
                2 => char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('x'),
                _ => char::from(rng.random_range(b'a'..=b'z')),
            })
            .collect()
    }

    fn random_user(rng: &mut StdRng) -> RegisterUser {
        let maybe = |rng: &mut StdRng| rng.random_bool(0.6).then(|| random_text(rng));
        // Blank required fields make the encoder refuse the list (tested separately).
        let required = |rng: &mut StdRng| loop {
            let text = random_text(rng);
            if !text.trim().is_empty() {
                return text;
            }
        };
        RegisterUser {
            firstname: required(rng),
            surname: maybe(rng),
            phone: required(rng),
            email: maybe(rng),
            password: maybe(rng).map(Password::new),
        }
    }

    #[test]
    fn matches_serde_json_on_random_users_with_escapes_and_unicode() {
        let mut rng = StdRng::seed_from_u64(0x6b6f_6f64);
        for round in 0..500 {
            let count = rng.random_range(0..12);
            let users: Vec<RegisterUser> = (0..count).map(|_| random_user(&mut rng)).collect();
            let HashedBody {
                bytes: ours,
                sha256_hex,
            } = encode_create_body(&users).unwrap();
            let expected = serde_json_bytes(&users);
            assert_eq!(sha256_hex, signer::sha256_hex(&expected), "round {round}");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&expected),
                "round {round}: {users:?}"
            );
            assert_eq!(ours, expected, "round {round}");
        }
    }

    #[test]
    fn reused_buffers_give_the_same_bodies_as_new_ones() {
        let mut rng = StdRng::seed_from_u64(0x7265_7573);
        for round in 0..200 {
            // Bodies of other sizes are sent and dropped in between, so their buffers
            // (larger, smaller) are what the next body is written into.
            let count = rng.random_range(0..40);
            let users: Vec<RegisterUser> = (0..count).map(|_| random_user(&mut rng)).collect();
            let fresh = encode_create_body(&users).unwrap();
            let reused = encode_create_body_reusing(&users).unwrap();
            assert_eq!(reused.bytes, fresh.bytes, "round {round}");
            assert_eq!(reused.sha256_hex, fresh.sha256_hex, "round {round}");
            let sent = reused.into_recycled_bytes();
            assert_eq!(&sent[..], &fresh.bytes[..], "round {round}");
            drop(sent);
        }
    }

    #[test]
    fn a_buffer_is_kept_for_reuse_only_wiped_and_only_when_small() {
        let body = br#"{"userList":[{"firstname":"A","phone":"1","password":"Initial-Passw0rd"}]}"#;
        let buf = body.to_vec();
        let pointer = buf.as_ptr();
        let kept = wiped_for_reuse(buf).expect("a small buffer is kept");
        assert_eq!(kept.as_ptr(), pointer, "the same memory, not a copy");
        assert_eq!(kept.len(), body.len());
        assert!(kept.iter().all(|&b| b == 0), "{kept:?}");
        assert!(wiped_for_reuse(vec![1; LARGEST_SPARE + 1]).is_none());
    }

    #[test]
    fn escapes_every_ascii_character_like_serde_json() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let mut users = vec![user(&every_ascii)];
        users[0].password = Some(Password::new(every_ascii.clone()));
        let ours = encode_create_body(&users).unwrap().bytes;
        assert_eq!(ours, serde_json_bytes(&users));
        let text = String::from_utf8(ours).unwrap();
        assert!(text.contains(r#"\u0000\u0001"#), "{text}");
        assert!(text.contains(r#"\b\t\n\u000b\f\r"#), "{text}");
        assert!(text.contains(r##"!\"#"##), "{text}");
        assert!(text.contains(r#"[\\]"#), "{text}");
    }

    #[test]
    fn omits_absent_fields_and_keeps_the_field_order() {
        let mut full = user("Ada");
        full.surname = Some("Lovelace".into());
        full.email = Some("ada@example.com".into());
        full.password = Some(Password::new("pw".into()));
        let users = [user("Bob"), full];
        let ours = encode_create_body(&users).unwrap().bytes;
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            concat!(
                r#"{"userList":[{"firstname":"Bob","phone":"8613800000001"},"#,
                r#"{"firstname":"Ada","surname":"Lovelace","phone":"8613800000001","#,
                r#""email":"ada@example.com","password":"pw"}]}"#
            )
        );
        let empty = encode_create_body(&[]).unwrap();
        assert_eq!(empty.bytes, br#"{"userList":[]}"#);
        assert_eq!(empty.sha256_hex, signer::sha256_hex(br#"{"userList":[]}"#));
    }

    #[test]
    fn allocates_exactly_once_when_nothing_needs_escaping() {
        let users: Vec<RegisterUser> = (0..50)
            .map(|i| {
                let mut u = user(&format!("First{i}"));
                u.email = (i % 2 == 0).then(|| format!("user{i}@example.com"));
                u.password = (i % 3 == 0).then(|| Password::new(format!("Passw0rd-{i}")));
                u
            })
            .collect();
        let body = encode_create_body(&users).unwrap().bytes;
        assert_eq!(body.len(), unescaped_len(&users));
        assert_eq!(body.capacity(), body.len());
    }

    #[test]
    fn word_copy_finds_every_byte_that_needs_escaping_at_every_position() {
        for len in 0..=24 {
            for at in 0..len.max(1) {
                for byte in 0..=u8::MAX {
                    // Fillers next to the thresholds must not hide or fake a hit.
                    for filler in [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff] {
                        let mut bytes = vec![filler; len];
                        if len > 0 {
                            bytes[at] = byte;
                        }
                        let clean = !bytes.iter().any(|&b| needs_escape(b));
                        let mut body = b"prefix".to_vec();
                        let copied = copy_unless_escaping(&mut body, &bytes);
                        let case = format!("byte {byte:#04x} at {at} of {len} among {filler:#04x}");
                        assert_eq!(copied, clean, "{case}");
                        let expected = if clean {
                            [&b"prefix"[..], &bytes].concat()
                        } else {
                            b"prefix".to_vec()
                        };
                        assert_eq!(body, expected, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn hashes_bodies_that_span_many_blocks_and_grow_while_escaping() {
        // Every user escapes, so the buffer is reallocated while blocks are being hashed.
        let users: Vec<RegisterUser> = (0..300)
            .map(|i| user(&format!("\"First\\{i}\n\u{1}{}", "x".repeat(i % 70))))
            .collect();
        let encoded = encode_create_body(&users).unwrap();
        assert_eq!(encoded.bytes, serde_json_bytes(&users));
        assert!(encoded.bytes.len() > 100 * SHA256_BLOCK);
        assert_eq!(encoded.sha256_hex, signer::sha256_hex(&encoded.bytes));
    }

    #[test]
    fn refuses_blank_firstnames_and_phones_exactly_like_trim() {
        for text in [
            "",
            " ",
            "\t\n",
            "\u{3000}",
            "\u{a0} ",
            "a",
            " a",
            "\u{7f}",
            "Émile",
            "\u{3000}x",
        ] {
            assert_eq!(is_blank(text), text.trim().is_empty(), "{text:?}");
            let mut blank_name = user(text);
            assert_eq!(
                encode_create_body(std::slice::from_ref(&blank_name)).is_none(),
                text.trim().is_empty(),
                "firstname {text:?}"
            );
            blank_name.firstname = "Ada".into();
            blank_name.phone = text.into();
            let users = [user("Bob"), blank_name];
            assert_eq!(
                encode_create_body(&users).is_none(),
                text.trim().is_empty(),
                "phone {text:?}"
            );
        }
    }
}
