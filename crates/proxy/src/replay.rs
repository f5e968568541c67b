//! The app's signal that a read must be served by the primary (it would write: a session
//! saved on GET, a replica's read-only database): `litefs-replay: primary`, or a
//! `fly-replay` naming the primary. Both are read and removed from every app answer here;
//! the handler replays the request once, on the primary (see README, "Replay").
//!
//! The rule for `fly-replay` (Fly's `key=value` directives, `;` or `,` between them): it
//! asks for the primary when one directive is `instance=<the primary's node name>`, or the
//! bare `leader` or `primary`. Anything else (`region=`, `app=`, `elsewhere=`, another
//! instance) names nothing this proxy can route to: it is removed and not acted on.

use std::time::Duration;

use bytes::Buf;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use http_body_util::BodyExt;

use crate::{primary::Primary, ProxyBody};

/// The app's answer header asking for a replay on the primary (value `primary`).
pub const LITEFS_REPLAY: HeaderName = HeaderName::from_static("litefs-replay");
/// Fly.io's replay header, which LiteFS's own proxy and Fly-aware libraries send.
pub const FLY_REPLAY: HeaderName = HeaderName::from_static("fly-replay");
/// On a replayed request between proxies: the primary treats the read as a write (mints
/// the token, waits for `sync_replicas`). Believed only with a peer's hop header (and
/// covered by its signature), never passed to an app.
pub const REPLAY_MARK: HeaderName = HeaderName::from_static("litefs-proxy-replay");
pub const REPLAY_MARK_VALUE: HeaderValue = HeaderValue::from_static("1");

/// What an answer's replay headers asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// No replay header.
    None,
    /// Serve this request on the primary.
    Primary,
    /// A replay header that names nothing this proxy routes to (removed, not acted on).
    Elsewhere,
}

/// Removes the replay headers from an app's answer and says what they asked for, given
/// who the primary is (`fly-replay: instance=<name>` must name it).
pub fn take(headers: &mut HeaderMap, primary: &Primary) -> Ask {
    if !headers.contains_key(&LITEFS_REPLAY) && !headers.contains_key(&FLY_REPLAY) {
        return Ask::None;
    }
    let primary_name = match primary {
        Primary::Remote { node, .. } => Some(node.as_str()),
        _ => None,
    };
    let litefs = headers
        .get_all(&LITEFS_REPLAY)
        .iter()
        .any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"primary"));
    let fly = headers
        .get_all(&FLY_REPLAY)
        .iter()
        .any(|v| fly_names_primary(v.as_bytes(), primary_name));
    headers.remove(&LITEFS_REPLAY);
    headers.remove(&FLY_REPLAY);
    if litefs || fly {
        Ask::Primary
    } else {
        Ask::Elsewhere
    }
}

/// Whether a `fly-replay` value asks for the primary (see the module's rule).
fn fly_names_primary(value: &[u8], primary: Option<&str>) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split([';', ','])
        .map(str::trim)
        .any(|d| match d.split_once('=') {
            None => d.eq_ignore_ascii_case("leader") || d.eq_ignore_ascii_case("primary"),
            Some((k, v)) => {
                k.trim().eq_ignore_ascii_case("instance")
                    && primary.is_some_and(|p| !p.is_empty() && v.trim() == p)
            }
        })
}

/// How much of a dropped answer's body is read so its pooled connection can be reused.
const DRAIN_MAX: usize = 64 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(1);

/// Discards the app's answer that asked for a replay, without holding up the replay: its
/// body is drained in the background (up to 64 KiB within 1 s, so the app's connection
/// returns to the pool), else dropped, which closes that connection.
pub fn discard(body: ProxyBody) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(DRAIN_FOR, async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.remaining());
                }
                if read > DRAIN_MAX {
                    break;
                }
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::headers::test_map as headers;

    fn remote(node: &str) -> Primary {
        Primary::remote(node, "http://127.0.0.1:1").unwrap()
    }

    #[test]
    fn litefs_replay_primary_asks_and_is_removed() {
        for v in ["primary", " Primary ", "PRIMARY"] {
            let mut h = headers(&[("litefs-replay", v), ("x-other", "1")]);
            assert_eq!(take(&mut h, &remote("node-a")), Ask::Primary, "{v}");
            assert!(!h.contains_key("litefs-replay"));
            assert_eq!(h["x-other"], "1");
        }
        // Whoever the primary is (even unknown: the replay waits for one, as a write does).
        let mut h = headers(&[("litefs-replay", "primary")]);
        assert_eq!(take(&mut h, &Primary::Unknown), Ask::Primary);
        let mut h = headers(&[("litefs-replay", "replica")]);
        assert_eq!(take(&mut h, &remote("node-a")), Ask::Elsewhere);
        assert!(h.is_empty());
        let mut h = headers(&[("x-other", "1")]);
        assert_eq!(take(&mut h, &remote("node-a")), Ask::None);
    }

    #[test]
    fn fly_replay_asks_only_when_it_names_the_primary() {
        let p = remote("node-a");
        for v in [
            "leader",
            "primary",
            "instance=node-a",
            " instance = node-a ",
            "region=ord;instance=node-a",
            "state=x, leader",
        ] {
            let mut h = headers(&[("fly-replay", v)]);
            assert_eq!(take(&mut h, &p), Ask::Primary, "{v}");
            assert!(h.is_empty(), "{v}: removed");
        }
        for v in [
            "instance=node-b",
            "instance=",
            "instance=NODE-A",
            "region=ord",
            "app=other",
            "elsewhere=true",
            "",
            "leaderish",
        ] {
            let mut h = headers(&[("fly-replay", v)]);
            assert_eq!(take(&mut h, &p), Ask::Elsewhere, "{v}");
            assert!(h.is_empty(), "{v}: removed all the same");
        }
        // `instance=` cannot name a primary nobody knows.
        let mut h = headers(&[("fly-replay", "instance=node-a")]);
        assert_eq!(take(&mut h, &Primary::Unknown), Ask::Elsewhere);
        let mut h = headers(&[("fly-replay", "instance=node-a")]);
        assert_eq!(take(&mut h, &Primary::Local), Ask::Elsewhere);
    }

    #[test]
    fn non_utf8_values_never_panic() {
        let mut h = HeaderMap::new();
        h.insert(
            FLY_REPLAY,
            HeaderValue::from_bytes(b"instance=\xff").unwrap(),
        );
        assert_eq!(take(&mut h, &remote("node-a")), Ask::Elsewhere);
    }
}
