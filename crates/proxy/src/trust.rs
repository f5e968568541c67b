//! Whom a request's own claims are believed from: the hop header only from a peer proxy
//! (signed with the cluster secret, or, without one, from a peer address), `X-Forwarded-*`
//! only from a trusted proxy, the admin endpoints only from `admin_allow`.
//!
//! With a secret the hop header is `<hops>.<unix ms>.<mac>`, the MAC (HMAC-SHA256, 128 bits
//! in hex) over the hop count, the timestamp, the method, the path and query and the
//! `X-Forwarded-For/-Proto/-Host` values as sent, so a client can neither forge one nor reuse
//! a captured one for another request or with other forwarded headers; it is refused outside
//! ±[`MAX_SKEW`]. Replaying a captured one unchanged within that window gets the same
//! request the same treatment, nothing more.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use http::{request::Parts, HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::Sha256;

use crate::{config::ConfigError, headers::HOP_HEADER, replay::REPLAY_MARK};

/// How far a signed hop header's timestamp may be from this node's clock (as for Raft RPCs).
pub const MAX_SKEW_MS: u64 = 30_000;
/// [`MAX_SKEW_MS`] as a duration, for docs and logs.
pub const MAX_SKEW: std::time::Duration = std::time::Duration::from_millis(MAX_SKEW_MS);
/// Bytes of the MAC kept in the header.
const MAC_LEN: usize = 16;

/// A list of networks, parsed from config (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    /// Parses `list`; the error names `key` and the entry that is not a network.
    pub fn parse(key: &str, list: &[String]) -> Result<Cidrs, ConfigError> {
        list.iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            key,
                            s,
                            "expected a network such as 10.0.0.0/8 or an address",
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Cidrs)
    }

    /// `127.0.0.0/8` and `::1`.
    pub fn loopback() -> Cidrs {
        Cidrs(vec![
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        ])
    }

    /// Every address (the `admin_allow` default).
    pub fn any() -> Cidrs {
        Cidrs(vec![
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
        ])
    }

    /// Adds single addresses (e.g. the peers').
    pub fn with_addrs(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Cidrs {
        self.0.extend(addrs.into_iter().map(IpNet::from));
        self
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Who is a peer proxy, for the hop header. Without a secret: a connection from one of
/// `addrs`; with one: a valid signature, wherever it comes from.
#[derive(Clone)]
pub struct PeerAuth {
    key: Option<Vec<u8>>,
    addrs: Cidrs,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("signed", &self.key.is_some())
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Default for PeerAuth {
    /// No secret; peers are on loopback (a single machine, the tests, the demo).
    fn default() -> Self {
        PeerAuth::new(None, Cidrs::loopback())
    }
}

/// What a request's hop header says, once judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// No hop header: a client's request.
    None,
    /// From a peer proxy, which forwarded it this many times (garbage counts as the limit).
    Peer(u8),
    /// A hop header nobody trusted sent: ignored (the request is a client's).
    Untrusted,
}

impl PeerAuth {
    /// `secret` is the cluster secret (signed hop headers); `addrs` are where unsigned ones
    /// are believed from when there is none.
    pub fn new(secret: Option<&str>, addrs: Cidrs) -> Self {
        PeerAuth {
            key: secret.map(|s| s.as_bytes().to_vec()),
            addrs,
        }
    }

    /// Judges the hop header of a request that arrived from `ip`.
    pub fn verify(&self, ip: IpAddr, head: &Parts) -> Hop {
        self.verify_at(ip, head, now_ms())
    }

    pub fn verify_at(&self, ip: IpAddr, head: &Parts, now_ms: u64) -> Hop {
        let mut values = head.headers.get_all(&HOP_HEADER).iter();
        let Some(value) = values.next() else {
            return Hop::None;
        };
        if values.next().is_some() {
            // Two hop headers: not what a proxy sends.
            return match &self.key {
                Some(_) => Hop::Untrusted,
                None if self.addrs.contains(ip) => Hop::Peer(u8::MAX),
                None => Hop::Untrusted,
            };
        }
        let Some(key) = &self.key else {
            if !self.addrs.contains(ip) {
                return Hop::Untrusted;
            }
            return Hop::Peer(
                value
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(u8::MAX),
            );
        };
        let Some((hops, ts, mac)) = split_signed(value.as_bytes()) else {
            return Hop::Untrusted;
        };
        if now_ms.abs_diff(ts) > MAX_SKEW_MS {
            return Hop::Untrusted;
        }
        let m = mac_for(key, hops, ts, head);
        let Ok(given) = hex::decode(mac) else {
            return Hop::Untrusted;
        };
        if given.len() != MAC_LEN {
            return Hop::Untrusted;
        }
        // Compared in constant time.
        match m.verify_truncated_left(&given) {
            Ok(()) => Hop::Peer(hops),
            Err(_) => Hop::Untrusted,
        }
    }

    /// The hop header for a request this proxy sends to a peer as its `hops`th hop. `head`
    /// must already carry the `X-Forwarded-*` values it will be sent with.
    pub fn hop_value(&self, hops: u8, head: &Parts) -> HeaderValue {
        self.hop_value_at(hops, head, now_ms())
    }

    pub fn hop_value_at(&self, hops: u8, head: &Parts, now_ms: u64) -> HeaderValue {
        let Some(key) = &self.key else {
            return HeaderValue::from(u16::from(hops));
        };
        let mac = mac_for(key, hops, now_ms, head).finalize().into_bytes();
        let text = format!("{hops}.{now_ms}.{}", hex::encode(&mac[..MAC_LEN]));
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from(u16::from(hops)))
    }
}

/// `<hops>.<ts>.<mac hex>`.
fn split_signed(v: &[u8]) -> Option<(u8, u64, &[u8])> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.trim().splitn(3, '.');
    let hops = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((hops, ts, it.next()?.as_bytes()))
}

fn mac_for(key: &[u8], hops: u8, ts: u64, head: &Parts) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    for part in [
        b"litefs-proxy-hop".as_slice(),
        hops.to_string().as_bytes(),
        ts.to_string().as_bytes(),
        head.method.as_str().as_bytes(),
        pq.as_bytes(),
    ] {
        m.update(part);
        m.update(b"\n");
    }
    for name in &crate::headers::FORWARDED_HEADERS {
        signed_values(&mut m, &head.headers, name);
    }
    // A replay's mark (the primary mints for it) is signed too, when present; without it the
    // MAC is what it always was.
    if head.headers.contains_key(&REPLAY_MARK) {
        m.update(b"litefs-proxy-replay\n");
        signed_values(&mut m, &head.headers, &REPLAY_MARK);
    }
    m
}

/// Every value of `name`, in order, length-prefixed so values cannot run into each other.
fn signed_values(m: &mut Hmac<Sha256>, headers: &HeaderMap, name: &http::HeaderName) {
    for v in headers.get_all(name) {
        m.update(&(v.len() as u64).to_be_bytes());
        m.update(v.as_bytes());
    }
    m.update(b"\n");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PEER: &str = "10.0.0.2";
    const T: u64 = 1_700_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidrs::parse("k", &["10.0.0.0/8".into(), " 192.168.1.7 ".into()]).unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(
            c.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(c.contains(ip("192.168.1.7")));
        assert!(!c.contains(ip("192.168.1.8")));
        let e = Cidrs::parse("proxy.trusted_proxies", &["10.0.0.0/33".into()]).unwrap_err();
        assert_eq!(e.key, "proxy.trusted_proxies");
        assert_eq!(e.value, "10.0.0.0/33");
        let lo = Cidrs::loopback();
        assert!(lo.contains(ip("127.0.0.1")) && lo.contains(ip("127.9.9.9")));
        assert!(lo.contains(ip("::1")) && !lo.contains(ip("10.0.0.1")));
    }

    #[test]
    fn unsigned_hops_are_believed_only_from_peer_addresses() {
        let auth = PeerAuth::new(None, Cidrs::default().with_addrs([ip(PEER)]));
        let h = head("POST", "/x", &[("litefs-proxy-hop", "2")]);
        assert_eq!(auth.verify_at(ip(PEER), &h, T), Hop::Peer(2));
        assert_eq!(auth.verify_at(ip("10.0.0.3"), &h, T), Hop::Untrusted);
        let junk = head("POST", "/x", &[("litefs-proxy-hop", "lots")]);
        assert_eq!(auth.verify_at(ip(PEER), &junk, T), Hop::Peer(u8::MAX));
        assert_eq!(
            auth.verify_at(ip(PEER), &head("GET", "/", &[]), T),
            Hop::None
        );
        assert_eq!(auth.hop_value_at(1, &h, T), "1");
    }

    #[test]
    fn signed_hops_round_trip_and_bind_the_request() {
        let auth = PeerAuth::new(Some("0123456789abcdef"), Cidrs::default());
        let xff = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ];
        let sent = head("POST", "/items?a=1", &xff);
        let v = auth.hop_value_at(1, &sent, T);
        let with = |method: &str, uri: &str, extra: &[(&str, &str)], v: &HeaderValue| {
            let mut h = head(method, uri, extra);
            h.headers.insert(HOP_HEADER, v.clone());
            h
        };
        let got = with("POST", "/items?a=1", &xff, &v);
        // Any address: the signature is what counts.
        assert_eq!(
            auth.verify_at(ip("203.0.113.1"), &got, T + 1000),
            Hop::Peer(1)
        );
        assert_eq!(auth.verify_at(ip(PEER), &got, T - 1000), Hop::Peer(1));
        for (why, h, at) in [
            ("stale", got.clone(), T + MAX_SKEW_MS + 1),
            ("early", got.clone(), T - MAX_SKEW_MS - 1),
            ("other path", with("POST", "/items?a=2", &xff, &v), T),
            ("other method", with("PUT", "/items?a=1", &xff, &v), T),
            (
                "other forwarded-for",
                with(
                    "POST",
                    "/items?a=1",
                    &[("x-forwarded-for", "6.6.6.6"), xff[1]],
                    &v,
                ),
                T,
            ),
            (
                "replay mark added",
                with(
                    "POST",
                    "/items?a=1",
                    &[xff[0], xff[1], ("litefs-proxy-replay", "1")],
                    &v,
                ),
                T,
            ),
            (
                "forwarded-host added",
                with(
                    "POST",
                    "/items?a=1",
                    &[xff[0], xff[1], ("x-forwarded-host", "h")],
                    &v,
                ),
                T,
            ),
        ] {
            assert_eq!(auth.verify_at(ip(PEER), &h, at), Hop::Untrusted, "{why}");
        }
        let s = v.to_str().unwrap();
        let (hop, rest) = s.split_once('.').unwrap();
        assert_eq!(hop, "1");
        for forged in [
            format!("2.{rest}"),
            "2".to_owned(),
            format!("1.{T}.00000000000000000000000000000000"),
            format!("1.{T}.zz"),
            format!("1.{T}."),
            String::new(),
        ] {
            let h = with(
                "POST",
                "/items?a=1",
                &xff,
                &HeaderValue::try_from(forged.as_str()).unwrap(),
            );
            assert_eq!(auth.verify_at(ip(PEER), &h, T), Hop::Untrusted, "{forged}");
        }
        // A proxy with another secret is no peer.
        let other = PeerAuth::new(Some("fedcba9876543210"), Cidrs::loopback());
        assert_eq!(other.verify_at(ip("127.0.0.1"), &got, T), Hop::Untrusted);
    }

    #[test]
    fn a_signed_replay_mark_verifies_and_cannot_be_stripped() {
        let auth = PeerAuth::new(Some("0123456789abcdef"), Cidrs::default());
        let sent = head("GET", "/p", &[("litefs-proxy-replay", "1")]);
        let v = auth.hop_value_at(1, &sent, T);
        let mut got = sent.clone();
        got.headers.insert(HOP_HEADER, v.clone());
        assert_eq!(auth.verify_at(ip(PEER), &got, T), Hop::Peer(1));
        got.headers.remove("litefs-proxy-replay");
        assert_eq!(auth.verify_at(ip(PEER), &got, T), Hop::Untrusted);
    }

    #[test]
    fn two_hop_headers_are_never_a_signed_peer() {
        let auth = PeerAuth::new(Some("0123456789abcdef"), Cidrs::loopback());
        let sent = head("POST", "/", &[]);
        let v = auth.hop_value_at(1, &sent, T);
        let mut h = head("POST", "/", &[]);
        h.headers.append(HOP_HEADER, v.clone());
        h.headers.append(HOP_HEADER, v);
        assert_eq!(auth.verify_at(ip("127.0.0.1"), &h, T), Hop::Untrusted);
    }
}
