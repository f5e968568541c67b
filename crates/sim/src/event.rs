//! The events of LiteFS's `GET /events` stream and their JSON encoding, field for field as
//! LiteFS (store.go `Event`, `InitEventData`, `TxEventData`, `PrimaryChangeEventData`)
//! writes them: one compact JSON object per line.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One event a node publishes to its `/events` subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// First event of every stream. `hostname` is the *primary's* hostname as this node
    /// knows it: `None` on the primary itself and on a replica not connected to a primary
    /// (LiteFS then omits the field).
    Init {
        is_primary: bool,
        hostname: Option<String>,
    },
    /// A transaction was applied to `db` (a commit on the primary, a replicated one on a
    /// replica).
    Tx {
        db: String,
        txid: u64,
        post_apply_checksum: u64,
        page_size: u32,
        /// Database size in pages after the transaction (LTX header `Commit`).
        commit: u32,
        /// Milliseconds since the Unix epoch (LTX header timestamp).
        timestamp_ms: i64,
    },
    /// The node's role or its view of the primary changed; `hostname` as in `Init`.
    PrimaryChange {
        is_primary: bool,
        hostname: Option<String>,
    },
}

#[derive(Serialize)]
struct Wire<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<&'a str>,
    data: D,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleData<'a> {
    is_primary: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TxData {
    #[serde(rename = "txID")]
    txid: String,
    post_apply_checksum: String,
    page_size: u32,
    commit: u32,
    timestamp: String,
}

impl Event {
    /// The event as LiteFS's `json.Encoder` writes it: compact JSON and a newline.
    pub fn to_json_line(&self) -> String {
        let mut line = match self {
            Event::Init {
                is_primary,
                hostname,
            }
            | Event::PrimaryChange {
                is_primary,
                hostname,
            } => {
                let kind = if matches!(self, Event::Init { .. }) {
                    "init"
                } else {
                    "primaryChange"
                };
                serde_json::to_string(&Wire {
                    kind,
                    db: None,
                    data: RoleData {
                        is_primary: *is_primary,
                        // Go's omitempty drops an empty string as well.
                        hostname: hostname.as_deref().filter(|h| !h.is_empty()),
                    },
                })
            }
            Event::Tx {
                db,
                txid,
                post_apply_checksum,
                page_size,
                commit,
                timestamp_ms,
            } => serde_json::to_string(&Wire {
                kind: "tx",
                db: Some(db),
                data: TxData {
                    txid: format!("{txid:016x}"),
                    post_apply_checksum: format!("{post_apply_checksum:016x}"),
                    page_size: *page_size,
                    commit: *commit,
                    timestamp: rfc3339_millis(*timestamp_ms),
                },
            }),
        }
        .unwrap_or_default();
        line.push('\n');
        line
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats a UTC timestamp as Go's `time.Time` JSON does (RFC 3339 with nanoseconds,
/// trailing zeros of the fraction trimmed): `2024-01-02T03:04:05.12Z`, `…:05Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if millis != 0 {
        let frac = format!(".{millis:03}");
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_go() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(1_704_164_645_120), "2024-01-02T03:04:05.12Z");
        assert_eq!(
            rfc3339_millis(1_709_210_096_001),
            "2024-02-29T12:34:56.001Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn events_encode_like_litefs() {
        let init = Event::Init {
            is_primary: false,
            hostname: Some("node-1".into()),
        };
        assert_eq!(
            init.to_json_line(),
            "{\"type\":\"init\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-1\"}}\n"
        );
        let change = Event::PrimaryChange {
            is_primary: true,
            hostname: None,
        };
        assert_eq!(
            change.to_json_line(),
            "{\"type\":\"primaryChange\",\"data\":{\"isPrimary\":true}}\n"
        );
        let tx = Event::Tx {
            db: "db.sqlite3".into(),
            txid: 2,
            post_apply_checksum: 0x95af_056c_a07d_8ad1,
            page_size: 4096,
            commit: 3,
            timestamp_ms: 1_704_164_645_120,
        };
        assert_eq!(
            tx.to_json_line(),
            "{\"type\":\"tx\",\"db\":\"db.sqlite3\",\"data\":{\"txID\":\"0000000000000002\",\
             \"postApplyChecksum\":\"95af056ca07d8ad1\",\"pageSize\":4096,\"commit\":3,\
             \"timestamp\":\"2024-01-02T03:04:05.12Z\"}}\n"
        );
    }
}
