//! Header rewriting for a proxy hop: hop-by-hop headers out (both ways), the
//! `X-Forwarded-*` headers in (see `crate::trust` for whom they are believed from).

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// Counts litefs-proxy hops (see `handler::MAX_HOPS`).
pub const HOP_HEADER: HeaderName = HeaderName::from_static("litefs-proxy-hop");
/// Set on responses a proxy produced itself (not the app): 502/503/504.
pub const ORIGIN_HEADER: HeaderName = HeaderName::from_static("litefs-proxy-error");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the message asks to switch protocols (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the Connection header names. An upgrade
/// keeps `Connection: upgrade` and `Upgrade`, which the next hop needs to switch protocols.
/// A message that came with `Transfer-Encoding` loses its `Content-Length` too (RFC 9112
/// §6.3: the transfer coding framed it, the length is not its length): the next hop frames
/// the decoded body by itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let upgrade = is_upgrade(headers);
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| n != header::UPGRADE)
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The headers a proxy in front describes the client with; believed only from a trusted
/// proxy (see [`add_forwarded`]).
pub const FORWARDED_HEADERS: [HeaderName; 3] =
    [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
/// Other client descriptions some apps read (RFC 7239's, nginx's): dropped unless trusted.
const OTHER_CLIENT_HEADERS: [HeaderName; 2] = [header::FORWARDED, X_REAL_IP];
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The other end of a client connection: its address, and that address as an
/// `X-Forwarded-For` entry (made once per connection).
#[derive(Clone, Debug)]
pub struct Client {
    pub ip: IpAddr,
    pub value: HeaderValue,
}

impl Client {
    pub fn new(ip: IpAddr) -> Client {
        let ip = ip.to_canonical();
        Client {
            ip,
            value: HeaderValue::try_from(ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

/// Sets the `X-Forwarded-*` headers. From a `trusted` proxy (a load balancer in
/// `trusted_proxies`, or a peer proxy) the client is appended to `X-Forwarded-For` and an
/// incoming `X-Forwarded-Proto/-Host` is kept (or filled in). From anyone else, what the
/// client claims is replaced with what this proxy saw: its address, `http`, its Host; and
/// `Forwarded` / `X-Real-IP` are dropped. Host itself is left untouched.
pub fn add_forwarded(headers: &mut HeaderMap, client: &Client, trusted: bool) {
    if !trusted {
        for name in FORWARDED_HEADERS.iter().chain(&OTHER_CLIENT_HEADERS) {
            headers.remove(name);
        }
    }
    let mut xff = Vec::new();
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        if !prev.is_empty() {
            xff.extend_from_slice(prev.as_bytes());
            xff.extend_from_slice(b", ");
        }
    }
    let xff = if xff.is_empty() {
        Some(client.value.clone())
    } else {
        xff.extend_from_slice(client.value.as_bytes());
        HeaderValue::from_bytes(&xff).ok()
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// A header map from `(name, value)` pairs, for unit tests.
#[cfg(test)]
pub(crate) fn test_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn transfer_encoding_drops_content_length() {
        let mut h = map(&[("content-length", "50"), ("transfer-encoding", "chunked")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("content-length", "50")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["content-length"], "50");
    }

    #[test]
    fn upgrade_keeps_what_the_next_hop_needs() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn forwarded_headers_from_a_trusted_proxy() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        add_forwarded(&mut h, &Client::new("10.0.0.9".parse().unwrap()), true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        assert_eq!(h["host"], "example.com");
        let mut h = map(&[]);
        add_forwarded(
            &mut h,
            &Client::new("::ffff:10.0.0.9".parse().unwrap()),
            true,
        );
        assert_eq!(
            h["x-forwarded-for"], "10.0.0.9",
            "IPv4-mapped addresses are shown as IPv4"
        );
    }

    #[test]
    fn forwarded_headers_from_anyone_else_are_what_this_proxy_saw() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.internal"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        add_forwarded(&mut h, &Client::new("10.0.0.9".parse().unwrap()), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert!(
            !h.contains_key("forwarded") && !h.contains_key("x-real-ip"),
            "{h:?}"
        );
        let mut h = map(&[("x-forwarded-host", "admin.internal")]);
        add_forwarded(&mut h, &Client::new("10.0.0.9".parse().unwrap()), false);
        assert!(
            !h.contains_key("x-forwarded-host"),
            "no Host, no forwarded host"
        );
    }
}
