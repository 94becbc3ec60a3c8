//! The `batchRegister/create` body, `{"userList":[RegisterUserInfo, ...]}`, encoded straight
//! into bytes and hashed in the same pass.
//!
//! This is the hot half of a 1000-user request: SPEC §9 allows building and signing at most
//! 1.5× the cost of hashing the body once, and serde_json's generic serializer alone cost
//! about as much as the hash (see `BENCHMARKS.md`). The body's shape is fixed — flat objects
//! of string fields — so the keys and punctuation are written as literals, and each string
//! that needs no escaping (nearly all of them) is checked and copied eight bytes at a time.
//! The SHA-256 the signature needs is fed each user's finished 64-byte blocks while they are
//! still in L1 cache, which also lets the CPU overlap the hash's long dependency chain with
//! the encoding work.
//!
//! The bytes must be exactly what `serde_json::to_vec(&{"userList": users})` produces,
//! because they are what gets signed and what the tests and the simulator were written
//! against: same field order, absent fields omitted, serde_json's escapes (`\"`, `\\`,
//! `\b \f \n \r \t`, other control characters as lower-case `\u00XX`, everything else
//! including non-ASCII and `/` as is). The tests compare both on random input.

use super::{RegisterUser, signer};
use sha2::{Digest, Sha256};

const OPEN: &[u8] = br#"{"userList":["#;
const CLOSE: &[u8] = b"]}";
// Each literal closes the previous string value, so one copy does the quote, the separator,
// the key and the opening quote of the next value.
const FIRST_USER: &[u8] = br#"{"firstname":""#;
const NEXT_USER: &[u8] = br#",{"firstname":""#;
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
    /// No body at all (a `GET`).
    pub fn empty() -> Self {
        Self {
            bytes: Vec::new(),
            sha256_hex: signer::EMPTY_BODY_SHA256.to_string(),
        }
    }
}

/// The JSON body of a `batchRegister/create` request for `users`, with its SHA-256, or
/// `None` when a user's firstname or phone is blank (KooDrive requires both; the caller
/// reports which). Checked here rather than in a separate pass over 1000 users because the
/// encoder reads those strings anyway, and the check is mostly one byte already in hand.
pub(super) fn encode_create_body(users: &[RegisterUser]) -> Option<HashedBody> {
    let mut body = Vec::with_capacity(unescaped_len(users));
    let mut hasher = Sha256::new();
    let mut hashed = 0;
    body.extend_from_slice(OPEN);
    for (index, user) in users.iter().enumerate() {
        if is_blank(&user.firstname) || is_blank(&user.phone) {
            return None;
        }
        body.extend_from_slice(if index == 0 { FIRST_USER } else { NEXT_USER });
        push_string_contents(&mut body, &user.firstname);
        if let Some(surname) = &user.surname {
            body.extend_from_slice(SURNAME);
            push_string_contents(&mut body, surname);
        }
        body.extend_from_slice(PHONE);
        push_string_contents(&mut body, &user.phone);
        if let Some(email) = &user.email {
            body.extend_from_slice(EMAIL);
            push_string_contents(&mut body, email);
        }
        if let Some(password) = &user.password {
            body.extend_from_slice(PASSWORD);
            push_string_contents(&mut body, password.expose());
        }
        body.extend_from_slice(END_USER);
        let whole_blocks = (body.len() - hashed) / SHA256_BLOCK * SHA256_BLOCK;
        if whole_blocks > 0 {
            hasher.update(&body[hashed..hashed + whole_blocks]);
            hashed += whole_blocks;
        }
    }
    body.extend_from_slice(CLOSE);
    hasher.update(&body[hashed..]);
    Some(HashedBody {
        sha256_hex: hex::encode(hasher.finalize()),
        bytes: body,
    })
}

/// Whether `text` is empty or only whitespace (`text.trim().is_empty()`), deciding on the
/// first byte when it is visible ASCII, which names and phone numbers start with.
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
    // `NEXT_USER` is `FIRST_USER` with a leading comma.
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
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash) & HIGH_BITS != 0
}

/// Appends `bytes` and returns `true` when none needs escaping; otherwise leaves `body` as
/// it was and returns `false`. Scanning and copying in one pass, in fixed-size words, is
/// what makes the common case cheap: a variable-length copy of a 10–20 byte string costs
/// more than the scan. A tail shorter than a word is written as the string's last word,
/// overlapping bytes already written, after trimming those bytes off `body`.
fn copy_unless_escaping(body: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let start = body.len();
    let needs_escaping = if bytes.len() >= 8 {
        let word_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            word
        };
        let mut found = false;
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let word = word_at(at);
            found |= word_needs_escape(u64::from_le_bytes(word));
            body.extend_from_slice(&word);
            at += 8;
        }
        let tail = bytes.len() - at;
        if tail > 0 {
            let word = word_at(bytes.len() - 8);
            found |= word_needs_escape(u64::from_le_bytes(word));
            body.truncate(body.len() - (8 - tail));
            body.extend_from_slice(&word);
        }
        found
    } else if bytes.len() >= 4 {
        // Two overlapping half-words cover 4–7 bytes; checked together as one word.
        let mut head = [0u8; 4];
        head.copy_from_slice(&bytes[..4]);
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&bytes[bytes.len() - 4..]);
        body.extend_from_slice(&head);
        body.truncate(start + bytes.len() - 4);
        body.extend_from_slice(&tail);
        let both = u64::from(u32::from_le_bytes(head)) | u64::from(u32::from_le_bytes(tail)) << 32;
        word_needs_escape(both)
    } else {
        body.extend_from_slice(bytes);
        bytes.iter().any(|&b| needs_escape(b))
    };
    if needs_escaping {
        body.truncate(start);
    }
    !needs_escaping
}

/// Appends `text` as the inside of a JSON string (no surrounding quotes).
fn push_string_contents(body: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if copy_unless_escaping(body, bytes) {
        return;
    }
    let mut run_start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        body.extend_from_slice(&bytes[run_start..at]);
        run_start = at + 1;
        match byte {
            b'"' => body.extend_from_slice(br#"\""#),
            b'\\' => body.extend_from_slice(br"\\"),
            0x08 => body.extend_from_slice(br"\b"),
            0x0c => body.extend_from_slice(br"\f"),
            b'\n' => body.extend_from_slice(br"\n"),
            b'\r' => body.extend_from_slice(br"\r"),
            b'\t' => body.extend_from_slice(br"\t"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                body.extend_from_slice(br"\u00");
                body.push(HEX[usize::from(control >> 4)]);
                body.push(HEX[usize::from(control & 0x0f)]);
            }
        }
    }
    body.extend_from_slice(&bytes[run_start..]);
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
