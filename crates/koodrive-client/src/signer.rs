//! KooDrive "app-based authentication": canonical request, string to sign, HMAC-SHA256 and
//! the `Authorization` header, exactly as `koodrive-api.md` states them.
//!
//! Pure functions with the clock passed in, so the client (signing) and the simulator
//! (verifying by recomputation) share one implementation and tests can pin every byte.

use super::SecretKey;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// The algorithm name at the start of the `Authorization` header and the string to sign.
pub const ALGORITHM: &str = "HMAC-SHA256";
/// The headers the operator signs, in canonical (sorted, lower-case) order.
pub const SIGNED_HEADERS: &str = "host;x-date;x-user-id";
/// Lower-case hex SHA-256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `X-Date` layout: `yyyyMMdd'T'HHmmss'Z'`, always UTC.
const X_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// RFC 3986 unreserved characters stay as they are; everything else becomes `%XY`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

type HmacSha256 = Hmac<Sha256>;

/// Percent-encodes one path segment or query component (upper-case hex).
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// Formats a timestamp as an `X-Date` value, e.g. `20240909T033325Z`.
pub fn format_x_date(at: Timestamp) -> String {
    at.strftime(X_DATE_FORMAT).to_string()
}

/// Parses an `X-Date` value back into a timestamp (UTC).
pub fn parse_x_date(text: &str) -> Result<Timestamp, jiff::Error> {
    jiff::civil::DateTime::strptime(X_DATE_FORMAT, text)?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|zoned| zoned.timestamp())
}

/// Canonical URI: each segment of the path (as received, percent-decoded first so that an
/// already-encoded path is not encoded twice) percent-encoded, and a `/` appended when the
/// path does not end with one.
pub fn canonical_uri(path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .map(|segment| encode(&percent_decode_str(segment).decode_utf8_lossy()))
        .collect();
    let mut uri = encoded.join("/");
    if !uri.starts_with('/') {
        uri.insert(0, '/');
    }
    if !uri.ends_with('/') {
        uri.push('/');
    }
    uri
}

/// Canonical query string from decoded `(name, value)` pairs: each side encoded, sorted by
/// encoded name in byte order (then by value, for repeated names), `=` kept for empty values.
/// Because the client sends exactly this string as its query, what is signed is what is sent.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Splits a raw (still encoded) query string into decoded pairs, as a server sees it.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (
                percent_decode_str(name).decode_utf8_lossy().into_owned(),
                percent_decode_str(value).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

/// Canonical headers and the signed-header list: names lower-cased, values trimmed, sorted
/// by name; every header line ends in `\n`.
pub fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut lines: Vec<(String, &str)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    lines.sort();
    let canonical = lines
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect::<String>();
    let signed = lines
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (canonical, signed)
}

/// The six-part canonical request, joined by `\n`, without a trailing newline.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(&str, &str)],
    body_sha256_hex: &str,
) -> String {
    let (canonical_headers, signed_headers) = canonical_headers(headers);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(path),
        canonical_query(query),
        canonical_headers,
        signed_headers,
        body_sha256_hex
    )
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// KooDrive's two-line string to sign: `HMAC-SHA256\n<hex sha256 of canonical request>`.
pub fn string_to_sign(canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{}", sha256_hex(canonical_request.as_bytes()))
}

/// Lower-case hex HMAC-SHA256 of `message` keyed with the SK.
pub fn hmac_hex(secret: &SecretKey, message: &str) -> String {
    hex::encode(keyed_mac(secret, message).finalize().into_bytes())
}

/// Checks a received hex signature against the expected one in constant time.
pub fn verify_hmac_hex(secret: &SecretKey, message: &str, signature_hex: &str) -> bool {
    match hex::decode(signature_hex) {
        Ok(bytes) => keyed_mac(secret, message).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

fn keyed_mac(secret: &SecretKey, message: &str) -> HmacSha256 {
    // HMAC is defined for keys of every length (long keys are hashed first); the trait's
    // error exists only for fixed-key-size MACs, so no SK can make this fail.
    #[allow(clippy::expect_used)]
    let mut mac =
        HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    mac
}

/// `HMAC-SHA256 AppId=<AK>,SignedHeaders=host;x-date;x-user-id,Signature=<hex>`.
pub fn authorization_header(access_key: &str, signature_hex: &str) -> String {
    format!(
        "{ALGORITHM} AppId={access_key},SignedHeaders={SIGNED_HEADERS},Signature={signature_hex}"
    )
}

/// The fields of a received `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub access_key: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses an `Authorization` header of KooDrive's shape; `None` when it is not one.
pub fn parse_authorization(value: &str) -> Option<ParsedAuthorization> {
    let rest = value.strip_prefix(ALGORITHM)?.strip_prefix(' ')?;
    let (mut access_key, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.split_once('=')?;
        match name {
            "AppId" => access_key = Some(value.to_string()),
            "SignedHeaders" => {
                signed_headers = Some(value.split(';').map(str::to_string).collect())
            }
            "Signature" => signature = Some(value.to_string()),
            _ => return None,
        }
    }
    Some(ParsedAuthorization {
        access_key: access_key?,
        signed_headers: signed_headers?,
        signature: signature?,
    })
}

/// What a KooDrive request is signed over.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    pub method: &'a str,
    /// The request path as sent (without the canonical trailing `/`).
    pub path: &'a str,
    /// Decoded query pairs.
    pub query: &'a [(String, String)],
    /// The exact `Host` header sent: `name`, or `name:port` for a non-default port.
    pub host: &'a str,
    pub user_id: &'a str,
    /// The exact body bytes sent.
    pub body: &'a [u8],
}

/// Everything signing produced. Holds no secret, so it can be shown (`submit --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub x_date: String,
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    pub authorization: String,
}

/// Signs a request at time `now`.
pub fn sign(
    input: &SigningInput<'_>,
    access_key: &str,
    secret: &SecretKey,
    now: Timestamp,
) -> Signature {
    sign_with_body_hash(input, &sha256_hex(input.body), access_key, secret, now)
}

/// [`sign`] for a caller that already has the body's lower-case hex SHA-256, so the body is
/// not hashed twice (the client hashes the create body while encoding it). The hash must
/// be of exactly `input.body`; debug builds check it.
pub fn sign_with_body_hash(
    input: &SigningInput<'_>,
    body_sha256_hex: &str,
    access_key: &str,
    secret: &SecretKey,
    now: Timestamp,
) -> Signature {
    debug_assert_eq!(
        body_sha256_hex,
        sha256_hex(input.body),
        "the body hash given to the signer is not the hash of the body"
    );
    let x_date = format_x_date(now);
    let canonical_request = canonical_request(
        input.method,
        input.path,
        input.query,
        &[
            ("host", input.host),
            ("x-date", &x_date),
            ("x-user-id", input.user_id),
        ],
        body_sha256_hex,
    );
    let string_to_sign = string_to_sign(&canonical_request);
    let signature = hmac_hex(secret, &string_to_sign);
    let authorization = authorization_header(access_key, &signature);
    Signature {
        x_date,
        canonical_request,
        string_to_sign,
        signature,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Huawei's published API-gateway signing example (koodrive-api.md).
    #[test]
    fn reproduces_huaweis_published_canonical_request_hash_and_hmac() {
        let raw = "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0";
        let canonical = canonical_request(
            "GET",
            "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
            &parse_query(raw),
            &[
                ("Content-Type", "application/json"),
                ("Host", "service.region.example.com"),
                ("X-Sdk-Date", "20191115T033655Z"),
            ],
            &sha256_hex(b""),
        );
        let expected = "GET\n\
            /v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\n\
            limit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n\
            content-type:application/json\n\
            host:service.region.example.com\n\
            x-sdk-date:20191115T033655Z\n\
            \n\
            content-type;host;x-sdk-date\n\
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(canonical, expected);
        let hash = sha256_hex(canonical.as_bytes());
        assert_eq!(
            hash,
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
        );
        // The published HMAC uses the generic gateway's 3-line string to sign; reproducing it
        // proves the HMAC step (key handling, hex output) independently of KooDrive's 2 lines.
        let sdk_string_to_sign = format!("SDK-HMAC-SHA256\n20191115T033655Z\n{hash}");
        let key = SecretKey::new("MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc".into());
        assert_eq!(
            hmac_hex(&key, &sdk_string_to_sign),
            "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        );
        assert!(verify_hmac_hex(
            &key,
            &sdk_string_to_sign,
            "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        ));
    }

    #[test]
    fn canonical_uri_appends_a_trailing_slash_only_when_missing() {
        assert_eq!(
            canonical_uri("/koodrive/ose/v1/user/batchRegister/create"),
            "/koodrive/ose/v1/user/batchRegister/create/"
        );
        assert_eq!(canonical_uri("/a/b/"), "/a/b/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri(""), "/");
    }

    #[test]
    fn canonical_uri_percent_encodes_segments_with_upper_case_hex_and_keeps_case() {
        assert_eq!(canonical_uri("/Ab c/ä~x-_."), "/Ab%20c/%C3%A4~x-_./");
        // An already-encoded path is not encoded twice.
        assert_eq!(canonical_uri("/Ab%20c/x"), "/Ab%20c/x/");
        assert_eq!(canonical_uri("/a:b@c"), "/a%3Ab%40c/");
    }

    #[test]
    fn canonical_query_sorts_case_sensitively_and_encodes() {
        let query = pairs(&[("b", "2"), ("a", "x y"), ("B", "1"), ("a", "")]);
        assert_eq!(canonical_query(&query), "B=1&a=&a=x%20y&b=2");
    }

    #[test]
    fn canonical_query_is_empty_without_a_query() {
        assert_eq!(canonical_query(&[]), "");
        assert_eq!(parse_query(""), vec![]);
        let canonical = canonical_request("get", "/x", &[], &[("host", "h")], EMPTY_BODY_SHA256);
        assert_eq!(
            canonical,
            format!("GET\n/x/\n\nhost:h\n\nhost\n{EMPTY_BODY_SHA256}")
        );
    }

    #[test]
    fn parse_query_decodes_and_keeps_empty_values() {
        assert_eq!(
            parse_query("taskId=12&cursor=&a%20b=c%2Fd&flag"),
            pairs(&[
                ("taskId", "12"),
                ("cursor", ""),
                ("a b", "c/d"),
                ("flag", "")
            ])
        );
    }

    #[test]
    fn empty_body_hashes_to_the_documented_constant() {
        assert_eq!(sha256_hex(b""), EMPTY_BODY_SHA256);
    }

    #[test]
    fn header_names_are_lowercased_values_trimmed_and_sorted() {
        let (canonical, signed) =
            canonical_headers(&[("X-User-Id", "  42 "), ("Host", "h"), ("X-Date", "\tD ")]);
        assert_eq!(canonical, "host:h\nx-date:D\nx-user-id:42\n");
        assert_eq!(signed, "host;x-date;x-user-id");
    }

    fn sign_for_host(host: &str) -> Signature {
        let now: Timestamp = "2024-09-09T03:33:25Z".parse().unwrap();
        let input = SigningInput {
            method: "POST",
            path: "/koodrive/ose/v1/user/batchRegister/create",
            query: &[],
            host,
            user_id: "1505084218764547200",
            body: br#"{"userList":[]}"#,
        };
        sign(&input, "AK", &SecretKey::new("SK".into()), now)
    }

    #[test]
    fn host_is_signed_exactly_with_or_without_a_port() {
        let default_port = sign_for_host("intl.myhuaweicloud-koodrive.com");
        assert!(
            default_port
                .canonical_request
                .contains("\nhost:intl.myhuaweicloud-koodrive.com\n")
        );
        let with_port = sign_for_host("127.0.0.1:8443");
        assert!(
            with_port
                .canonical_request
                .contains("\nhost:127.0.0.1:8443\n")
        );
        assert_ne!(default_port.signature, with_port.signature);
    }

    #[test]
    fn koodrive_signature_has_the_documented_shape() {
        let signed = sign_for_host("intl.myhuaweicloud-koodrive.com");
        assert_eq!(signed.x_date, "20240909T033325Z");
        let body_hash = sha256_hex(br#"{"userList":[]}"#);
        assert_eq!(
            signed.canonical_request,
            format!(
                "POST\n/koodrive/ose/v1/user/batchRegister/create/\n\n\
                 host:intl.myhuaweicloud-koodrive.com\nx-date:20240909T033325Z\n\
                 x-user-id:1505084218764547200\n\nhost;x-date;x-user-id\n{body_hash}"
            )
        );
        assert_eq!(
            signed.string_to_sign,
            format!(
                "HMAC-SHA256\n{}",
                sha256_hex(signed.canonical_request.as_bytes())
            )
        );
        assert_eq!(
            signed.signature,
            hmac_hex(&SecretKey::new("SK".into()), &signed.string_to_sign)
        );
        assert_eq!(
            signed.authorization,
            format!(
                "HMAC-SHA256 AppId=AK,SignedHeaders=host;x-date;x-user-id,Signature={}",
                signed.signature
            )
        );
        assert_eq!(signed.signature.len(), 64);
    }

    #[test]
    fn body_bytes_change_the_signature() {
        let now = Timestamp::UNIX_EPOCH;
        let sk = SecretKey::new("SK".into());
        let mut input = SigningInput {
            method: "POST",
            path: "/p",
            query: &[],
            host: "h",
            user_id: "u",
            body: b"{}",
        };
        let a = sign(&input, "AK", &sk, now);
        input.body = b"{} ";
        let b = sign(&input, "AK", &sk, now);
        assert_ne!(a.signature, b.signature);
    }

    #[test]
    fn x_date_round_trips() {
        let at: Timestamp = "2023-05-27T00:04:31Z".parse().unwrap();
        assert_eq!(format_x_date(at), "20230527T000431Z");
        assert_eq!(parse_x_date("20230527T000431Z").unwrap(), at);
        assert!(parse_x_date("2023-05-27").is_err());
    }

    #[test]
    fn authorization_header_round_trips() {
        let header = authorization_header("AK1", "abcd");
        assert_eq!(
            header,
            "HMAC-SHA256 AppId=AK1,SignedHeaders=host;x-date;x-user-id,Signature=abcd"
        );
        let parsed = parse_authorization(&header).unwrap();
        assert_eq!(parsed.access_key, "AK1");
        assert_eq!(parsed.signed_headers, ["host", "x-date", "x-user-id"]);
        assert_eq!(parsed.signature, "abcd");
        assert_eq!(parse_authorization("Bearer x"), None);
        assert_eq!(parse_authorization("HMAC-SHA256 AppId=a"), None);
    }
}
