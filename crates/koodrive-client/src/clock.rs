//! KooDrive's clock, as seen from here.
//!
//! KooDrive refuses an `X-Date` more than 15 minutes old *or later than its own clock*, so a
//! node whose clock runs a second or two ahead of KooDrive's has every request refused as
//! an authentication failure. The client therefore tracks KooDrive's time from every answer
//! (the HTTP `Date` header, and the `server time:` KooDrive names when it refuses a date)
//! and signs with that offset applied, a little in the past.

use jiff::{SignedDuration, Timestamp};
use std::sync::atomic::{AtomicI64, Ordering};

/// How far in the past requests are signed. KooDrive accepts dates up to 15 minutes old,
/// so a small margin costs nothing and absorbs the `Date` header's one-second resolution
/// and the network delay.
pub const SIGNING_MARGIN: SignedDuration = SignedDuration::from_secs(2);

/// Offsets below this are within what the `Date` header can resolve: not applied.
const NOISE: SignedDuration = SignedDuration::from_millis(1500);

/// The offset between KooDrive's clock and this machine's, shared by every client of one
/// endpoint. Lock-free: read on every signature, written on every answer.
#[derive(Debug, Default)]
pub struct ServerClock {
    /// KooDrive's time minus ours, in milliseconds (0 until an answer says otherwise).
    offset_ms: AtomicI64,
}

impl ServerClock {
    pub fn new() -> ServerClock {
        ServerClock::default()
    }

    /// KooDrive's time minus this machine's, as last measured.
    pub fn offset(&self) -> SignedDuration {
        SignedDuration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The time to sign a request with: KooDrive's estimated now, minus the margin.
    pub fn signing_time(&self) -> Timestamp {
        let now = Timestamp::now();
        now.checked_add(self.offset() - SIGNING_MARGIN)
            .unwrap_or(now)
    }

    /// Learns from an answer's `Date` header (second resolution), given when the request was
    /// sent and its answer received, on this machine's clock.
    pub fn observe_date_header(&self, date: &str, sent: Timestamp, received: Timestamp) {
        let Ok(server) = jiff::fmt::rfc2822::parse(date.trim()).map(|z| z.timestamp()) else {
            return;
        };
        // The header is truncated to the second: its true value is half a second later on
        // average, and it was stamped about halfway through the exchange.
        let server = server
            .checked_add(SignedDuration::from_millis(500))
            .unwrap_or(server);
        let midpoint = sent
            .checked_add(received.duration_since(sent) / 2)
            .unwrap_or(received);
        self.set(server.duration_since(midpoint));
    }

    /// Learns from a refusal that names KooDrive's time (`server time:20230527T020608Z`).
    pub fn observe_server_time(&self, server: Timestamp, received: Timestamp) {
        self.set(server.duration_since(received));
    }

    fn set(&self, offset: SignedDuration) {
        let applied = if offset.abs() < NOISE {
            SignedDuration::ZERO
        } else {
            offset
        };
        let millis = i64::try_from(applied.as_millis()).unwrap_or(0);
        self.offset_ms.store(millis, Ordering::Relaxed);
    }
}

/// KooDrive's time in a refusal such as `signature expired, signature time:…,server
/// time:20230527T020608Z`.
pub fn server_time_in(message: &str) -> Option<Timestamp> {
    let at = message.find("server time:")? + "server time:".len();
    let value: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    crate::signer::parse_x_date(&value).ok()
}

/// The signing time in a refusal (`signature time:20230527T000431Z`).
pub fn signature_time_in(message: &str) -> Option<Timestamp> {
    let at = message.find("signature time:")? + "signature time:".len();
    let value: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    crate::signer::parse_x_date(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_are_noise_and_large_ones_are_applied() {
        let clock = ServerClock::new();
        let now = Timestamp::now();
        clock.observe_server_time(now.checked_add(SignedDuration::from_secs(90)).unwrap(), now);
        assert_eq!(clock.offset().as_secs(), 90);
        clock.observe_server_time(
            now.checked_add(SignedDuration::from_millis(400)).unwrap(),
            now,
        );
        assert_eq!(clock.offset(), SignedDuration::ZERO);
        clock.observe_server_time(now.checked_sub(SignedDuration::from_secs(3)).unwrap(), now);
        assert_eq!(clock.offset().as_secs(), -3);
    }

    #[test]
    fn signs_in_the_past_of_koodrives_clock() {
        let clock = ServerClock::new();
        let before = Timestamp::now();
        let signed = clock.signing_time();
        assert!(signed < before);
        assert!(before.duration_since(signed) <= SIGNING_MARGIN + SignedDuration::from_secs(1));
    }

    #[test]
    fn reads_the_date_header_and_refusal_times() {
        let clock = ServerClock::new();
        let sent = Timestamp::from_second(1_700_000_000).unwrap();
        let received = sent.checked_add(SignedDuration::from_millis(200)).unwrap();
        // KooDrive is 10 s behind us.
        clock.observe_date_header("Tue, 14 Nov 2023 22:13:10 GMT", sent, received);
        assert_eq!(clock.offset().as_secs(), -9);
        assert!(clock.offset() < SignedDuration::from_secs(-9));
        let msg = "Incorrect app authentication information: signature expired, signature time:20230527T000431Z,server time:20230527T020608Z";
        assert_eq!(
            server_time_in(msg).map(|t| t.to_string()),
            Some("2023-05-27T02:06:08Z".to_string())
        );
        assert_eq!(
            signature_time_in(msg).map(|t| t.to_string()),
            Some("2023-05-27T00:04:31Z".to_string())
        );
        assert_eq!(server_time_in("no time here"), None);
    }
}
