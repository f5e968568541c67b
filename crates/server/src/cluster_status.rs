//! `litefs-proxy cluster status`: one row per peer, asked through one node (`--url`: its
//! `/litefs/status` lists every peer's last answer, see [`crate::peer_view`]) or directly
//! (`--config`: each peer of the file), printed as a table or, with `--json`, a list.

use std::{fmt::Write as _, process::ExitCode};

use crate::{
    cli::{ClusterStatusArgs, ConfigArgs},
    config,
    peer_view::{PeerRow, StatusClient},
    role::{raft_source, RoleSource},
    EXIT_CONFIG,
};

pub fn main(a: ClusterStatusArgs) -> ExitCode {
    let client = || StatusClient::new(a.timeout);
    let (rows, seen_by) = match (&a.url, &a.config) {
        (Some(url), _) => {
            let prefix = a.prefix.clone();
            match crate::block_on_value(async move { via_node(&client(), url, &prefix).await }) {
                Ok(Ok(rows)) => {
                    let by = rows
                        .iter()
                        .find(|r| r.url == *url)
                        .map_or_else(|| url.clone(), |r| format!("{} ({url})", r.node));
                    (rows, format!("as {by} sees it"))
                }
                Ok(Err(e)) => {
                    eprintln!("litefs-proxy: cannot ask {url}: {e}");
                    return ExitCode::FAILURE;
                }
                Err(code) => return code,
            }
        }
        (None, Some(file)) => {
            let args = ConfigArgs {
                config: Some(file.clone()),
                ..ConfigArgs::default()
            };
            let (peers, prefix) = match peers_of(&args) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("litefs-proxy: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match crate::block_on_value(async move { directly(&client(), peers, &prefix).await }) {
                Ok(rows) => (
                    rows,
                    format!("peers of {}, each asked directly", file.display()),
                ),
                Err(code) => return code,
            }
        }
        (None, None) => {
            eprintln!("litefs-proxy: cluster status needs --url or --config");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let out = if a.json {
        let mut s = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into());
        s.push('\n');
        s
    } else {
        format!("Cluster {seen_by}:\n\n{}", table(&rows))
    };
    crate::say(&out);
    if rows.iter().any(PeerRow::is_up) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The cluster as the node at `url` sees it; that node's own row from its answer.
pub async fn via_node(
    client: &StatusClient,
    url: &str,
    prefix: &str,
) -> Result<Vec<PeerRow>, String> {
    let path = format!("{}/status", prefix.trim_end_matches('/'));
    let status = client.get_json(url, &path).await?;
    let me = PeerRow::from_status(url, &status);
    let Some(peers) = status["election"]["peers"].as_array() else {
        // Not a Raft node: it knows no peers.
        return Ok(vec![me]);
    };
    Ok(peers
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap_or_default();
            let url = p["url"].as_str().unwrap_or_default();
            if p["self"] == true {
                PeerRow {
                    url: url.to_owned(),
                    ..me.clone()
                }
            } else {
                serde_json::from_value(p.clone()).unwrap_or_else(|e| {
                    PeerRow::down(node, url, format!("unreadable row: {e}"), None)
                })
            }
        })
        .collect())
}

/// Every peer asked at once. For one that does not answer, the last contact is the
/// freshest any answering peer reports.
pub async fn directly(
    client: &StatusClient,
    peers: Vec<(String, String)>,
    prefix: &str,
) -> Vec<PeerRow> {
    let path = format!("{}/status", prefix.trim_end_matches('/'));
    let mut asks = tokio::task::JoinSet::new();
    for (k, (_, url)) in peers.iter().enumerate() {
        let (client, url, path) = (client.clone(), url.clone(), path.clone());
        asks.spawn(async move { (k, client.get_json(&url, &path).await) });
    }
    let mut answers: Vec<Option<Result<serde_json::Value, String>>> = vec![None; peers.len()];
    while let Some(done) = asks.join_next().await {
        if let Ok((k, answer)) = done {
            answers[k] = Some(answer);
        }
    }
    let heard: Vec<&serde_json::Value> = answers.iter().flatten().flatten().collect();
    peers
        .iter()
        .zip(&answers)
        .map(|((id, url), answer)| match answer {
            Some(Ok(status)) => PeerRow {
                node: id.clone(),
                ..PeerRow::from_status(url, status)
            },
            other => {
                let why = match other {
                    Some(Err(e)) => e.clone(),
                    _ => "the ask failed".into(),
                };
                let last = heard
                    .iter()
                    .filter_map(|s| s["election"]["peers"].as_array())
                    .flatten()
                    .filter(|p| p["node"] == id.as_str())
                    .filter_map(|p| p["last_contact_ms"].as_u64())
                    .min();
                PeerRow::down(id, url, why, last)
            }
        })
        .collect()
}

/// The peers a config names, with their proxy URLs, and its endpoint prefix. Without an
/// election, the node itself (at its listen address).
fn peers_of(args: &ConfigArgs) -> Result<(Vec<(String, String)>, String), String> {
    let cfg = config::load(args).map_err(|e| e.to_string())?;
    let addr = cfg.proxy.listen_addr().map_err(|e| e.to_string())?;
    let prefix = cfg.proxy.endpoint_prefix.clone();
    if cfg.role.source != RoleSource::Raft {
        let mut local = addr;
        if local.ip().is_unspecified() {
            local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        return Ok((
            vec![(cfg.proxy.node_name.clone(), format!("http://{local}"))],
            prefix,
        ));
    }
    let election = raft_source::election_config(cfg.election.as_ref())
        .map_err(|e| config::InvalidConfig::from(e).to_string())?;
    let peers = election
        .resolve_peers(addr.port())
        .into_iter()
        .map(|p| (p.id, p.proxy))
        .collect();
    Ok((peers, prefix))
}

/// The rows as an aligned table, then why each node that is down is.
pub fn table(rows: &[PeerRow]) -> String {
    let dash = || "-".to_owned();
    let head = [
        "NODE",
        "ROLE",
        "RAFT",
        "LITEFS",
        "TXID",
        "LAG",
        "TERM",
        "LEADER",
        "LAST CONTACT",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let litefs = match (&r.litefs_role, &r.litefs) {
                (Some(role), Some(up)) => format!("{role}, {up}"),
                (Some(role), None) => role.clone(),
                (None, Some(up)) => up.clone(),
                (None, None) => dash(),
            };
            let contact = match r.last_contact_ms {
                Some(0) => "now".to_owned(),
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "never".to_owned(),
            };
            [
                r.node.clone(),
                r.role.clone(),
                r.raft_role.clone().unwrap_or_else(dash),
                litefs,
                r.txid.clone().unwrap_or_else(dash),
                r.lag_ms.map_or_else(dash, |l| format!("{l}ms")),
                r.term.map_or_else(dash, |t| t.to_string()),
                r.leader.clone().unwrap_or_else(dash),
                contact,
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let mut l = String::new();
        for (k, (c, w)) in cols.iter().zip(widths).enumerate() {
            if k + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    for r in rows.iter().filter(|r| !r.is_up()) {
        let _ = writeln!(
            out,
            "{} ({}) is down: {}",
            r.node,
            r.url,
            r.error.as_deref().unwrap_or("no answer")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_why_a_node_is_down() {
        let up = PeerRow {
            node: "node-1".into(),
            url: "http://a".into(),
            role: "primary".into(),
            raft_role: Some("leader".into()),
            litefs_role: Some("primary".into()),
            litefs: Some("up".into()),
            txid: Some("0000000000000002".into()),
            lag_ms: Some(0),
            term: Some(3),
            leader: Some("node-1".into()),
            last_contact_ms: Some(1234),
            error: None,
        };
        let down = PeerRow::down("node-2", "http://b", "connection refused".into(), None);
        let t = table(&[up, down]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NODE    ROLE     RAFT    LITEFS       TXID              LAG  TERM  LEADER  LAST CONTACT"
        );
        assert_eq!(
            lines[1],
            "node-1  primary  leader  primary, up  0000000000000002  0ms  3     node-1  1.2s ago"
        );
        assert_eq!(
            lines[2],
            "node-2  down     -       -            -                 -    -     -       never"
        );
        assert_eq!(lines[3], "node-2 (http://b) is down: connection refused");
    }
}
