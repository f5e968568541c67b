//! LiteFS's consul leaser (consul/consul.go), the requests it makes and how it reads the
//! answers: a session per acquisition (`Behavior: delete`, its `TTL` and `LockDelay`), the
//! primary key acquired with it holding `{"hostname","advertise-url"}` as JSON, renewals
//! (404 = the session is gone), and on close a release of the key, then the session's
//! destruction. The lease loop ([`crate::lease`]) drives it through [`Leaser`].

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client;

/// What a primary advertises in the lease key (LiteFS's `PrimaryInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryInfo {
    pub hostname: String,
    #[serde(rename = "advertise-url")]
    pub advertise_url: String,
}

/// A lease call that failed (LiteFS logs it and retries after its reconnect delay).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Nobody holds the key.
    #[error("no primary")]
    NoPrimary,
    /// Another session holds the key (`Acquire` answered `false`).
    #[error("primary exists")]
    PrimaryExists,
    /// A renew answered 404: the session is gone.
    #[error("lease expired")]
    Expired,
    /// Connection refused, EOF, a 5xx...
    #[error("{0}")]
    Transport(String),
}

/// The leaser calls of LiteFS's `Leaser` and `Lease` interfaces that its lease loop makes.
pub trait Leaser: Send + Sync + 'static {
    fn cluster_id(&self) -> impl Future<Output = Result<String, LeaseError>> + Send;
    fn set_cluster_id(&self, id: &str) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// The current primary; [`LeaseError::NoPrimary`] when none.
    fn primary_info(&self) -> impl Future<Output = Result<PrimaryInfo, LeaseError>> + Send;
    /// Creates a session and acquires the key with it; its ID. The session is released
    /// and destroyed again when the acquire fails.
    fn acquire(&self) -> impl Future<Output = Result<String, LeaseError>> + Send;
    /// Takes over a session handed off by the old primary: renew it, then acquire with it.
    fn acquire_existing(&self, id: &str) -> impl Future<Output = Result<(), LeaseError>> + Send;
    fn renew(&self, id: &str) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Releases the key, then destroys the session (errors are only logged by LiteFS).
    fn close(&self, id: &str) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// The session TTL (also the renew cadence: TTL/2).
    fn ttl(&self) -> Duration;
}

/// How a node's LiteFS talks to Consul (here: the node's litefs-proxy lease endpoint).
#[derive(Clone, Debug)]
pub struct ConsulConfig {
    /// e.g. `http://127.0.0.1:8500`.
    pub url: String,
    /// The primary key (LiteFS's `lease.key`, default `litefs/primary`).
    pub key: String,
    pub hostname: String,
    pub advertise_url: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
}

/// The Consul leaser over HTTP.
pub struct Consul {
    cfg: ConsulConfig,
}

/// LiteFS's Go HTTP client has no timeout: a frozen endpoint hangs the call. The sim
/// bounds it only so a test's process cannot hang forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

impl Consul {
    pub fn new(cfg: ConsulConfig) -> Consul {
        Consul { cfg }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), LeaseError> {
        let url = format!("{}{path}", self.cfg.url.trim_end_matches('/'));
        let (status, body) = client::request(method, &url, body, CALL_TIMEOUT)
            .await
            .map_err(|e| LeaseError::Transport(format!("{url}: {e}")))?;
        if status.is_server_error() || status == StatusCode::BAD_REQUEST {
            return Err(LeaseError::Transport(format!(
                "Unexpected response code: {} ({})",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            )));
        }
        Ok((status, body))
    }

    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>, LeaseError> {
        let (status, body) = self
            .call(Method::GET, &format!("/v1/kv/{key}"), Bytes::new())
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&body)
            .map_err(|e| LeaseError::Transport(format!("decode kv: {e}")))?;
        let Some(v) = entries.into_iter().next().and_then(|e| e.value) else {
            return Ok(Some(Vec::new()));
        };
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map(Some)
            .map_err(|e| LeaseError::Transport(format!("decode kv value: {e}")))
    }

    async fn put_bool(&self, path: &str, body: Bytes) -> Result<bool, LeaseError> {
        let (_, body) = self.call(Method::PUT, path, body).await?;
        Ok(String::from_utf8_lossy(&body).trim() == "true")
    }

    fn value(&self) -> Bytes {
        let info = PrimaryInfo {
            hostname: self.cfg.hostname.clone(),
            advertise_url: self.cfg.advertise_url.clone(),
        };
        Bytes::from(serde_json::to_vec(&info).unwrap_or_default())
    }

    fn cluster_id_key(&self) -> String {
        format!("{}/clusterid", self.cfg.key)
    }
}

/// Go's `time.Duration.String()` for the whole-millisecond durations the sim uses.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

impl Leaser for Consul {
    async fn cluster_id(&self) -> Result<String, LeaseError> {
        let v = self.get_value(&self.cluster_id_key()).await?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    async fn set_cluster_id(&self, id: &str) -> Result<(), LeaseError> {
        if !self.cluster_id().await?.is_empty() {
            return Err(LeaseError::Transport(
                "cluster already initialized, cannot set cluster id".into(),
            ));
        }
        let path = format!("/v1/kv/{}", self.cluster_id_key());
        self.put_bool(&path, Bytes::from(id.to_owned())).await?;
        Ok(())
    }

    async fn primary_info(&self) -> Result<PrimaryInfo, LeaseError> {
        match self.get_value(&self.cfg.key).await? {
            None => Err(LeaseError::NoPrimary),
            Some(v) if v.is_empty() => Err(LeaseError::NoPrimary),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| LeaseError::Transport(format!("decode primary info: {e}"))),
        }
    }

    async fn acquire(&self) -> Result<String, LeaseError> {
        let create = serde_json::json!({
            "Name": "litefs",
            "Behavior": "delete",
            "LockDelay": u64::try_from(self.cfg.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            "TTL": go_duration(self.cfg.ttl),
            "NodeChecks": [],
        });
        let (_, body) = self
            .call(
                Method::PUT,
                "/v1/session/create",
                Bytes::from(create.to_string()),
            )
            .await
            .map_err(|e| LeaseError::Transport(format!("create consul session: {e}")))?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let id = serde_json::from_slice::<Created>(&body)
            .map_err(|e| LeaseError::Transport(format!("create consul session: {e}")))?
            .id;
        let path = format!("/v1/kv/{}?acquire={id}", self.cfg.key);
        let acquired = self.put_bool(&path, self.value()).await;
        match acquired {
            Ok(true) => Ok(id),
            other => {
                let _ = self.close(&id).await;
                match other {
                    Err(e) => Err(LeaseError::Transport(format!("put consul key/value: {e}"))),
                    _ => Err(LeaseError::PrimaryExists),
                }
            }
        }
    }

    async fn acquire_existing(&self, id: &str) -> Result<(), LeaseError> {
        self.renew(id).await?;
        let path = format!("/v1/kv/{}?acquire={id}", self.cfg.key);
        match self.put_bool(&path, self.value()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(LeaseError::PrimaryExists),
            Err(e) => Err(LeaseError::Transport(format!(
                "replace consul key/value: {e}"
            ))),
        }
    }

    async fn renew(&self, id: &str) -> Result<(), LeaseError> {
        let (status, _) = self
            .call(
                Method::PUT,
                &format!("/v1/session/renew/{id}"),
                Bytes::new(),
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(LeaseError::Expired);
        }
        Ok(())
    }

    async fn close(&self, id: &str) -> Result<(), LeaseError> {
        let path = format!("/v1/kv/{}?release={id}", self.cfg.key);
        match self.put_bool(&path, Bytes::new()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(key = %self.cfg.key, session = id, "litefs-sim: cannot release consul key")
            }
            Err(e) => {
                tracing::info!(key = %self.cfg.key, session = id, error = %e, "litefs-sim: consul key release error")
            }
        }
        self.call(
            Method::PUT,
            &format!("/v1/session/destroy/{id}"),
            Bytes::new(),
        )
        .await
        .map(|_| ())
    }

    fn ttl(&self) -> Duration {
        self.cfg.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn primary_info_is_litefs_json() {
        let info = PrimaryInfo {
            hostname: "node-1".into(),
            advertise_url: "http://127.0.0.1:20202".into(),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"hostname":"node-1","advertise-url":"http://127.0.0.1:20202"}"#
        );
    }
}
