//! The `litefs` role source: follow LiteFS itself. `GET /info`, then the `/events` stream
//! (`init`, `primaryChange`) say whether this node is primary and name the primary's
//! hostname, mapped to its litefs-proxy URL: a known peer's own URL (with `role.source =
//! "raft"`, LiteFS's hostnames are the election's node ids), else `primary_url_template`.
//! While the API is down, `<mount>/.primary` is the fallback.
//!
//! It also says whether the local LiteFS is up ([`LitefsSource::up`]): up once `/info` and
//! `/events` answer, down once an attempt to connect fails (after the stream ended, or from
//! the start). A stream that ends while `/info` still answers is not down: LiteFS ends it when
//! its replication stream breaks.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use litefs_proxy::{
    litefs_api::{ApiError, Event, EventStream, LitefsApi},
    Primary,
};
use tokio::sync::watch;

/// First reconnect delay after the API fails; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often `.primary` is re-read while the API is down (FUSE: no inotify).
const FILE_POLL: Duration = Duration::from_millis(150);

/// Follows LiteFS's view of the primary and publishes it.
pub struct LitefsSource {
    api: LitefsApi,
    api_url: String,
    /// `<mount>/.primary`, read while the API is down.
    primary_file: PathBuf,
    template: String,
    /// Hostname -> litefs-proxy URL of the nodes whose URL is known (the election's peers);
    /// the template is only a guess for the others.
    known: BTreeMap<String, String>,
    /// Whether the local LiteFS is up; false until the API first answers.
    up: watch::Sender<bool>,
}

impl LitefsSource {
    pub fn new(api_url: &str, mount: &Path, template: &str) -> LitefsSource {
        LitefsSource {
            api: LitefsApi::new(api_url),
            api_url: api_url.to_owned(),
            primary_file: mount.join(".primary"),
            template: template.to_owned(),
            known: BTreeMap::new(),
            up: watch::channel(false).0,
        }
    }

    /// Whether the local LiteFS is up, kept current by [`LitefsSource::run`].
    pub fn up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    fn set_up(&self, up: bool) {
        self.up.send_if_modified(|cur| {
            if *cur == up {
                return false;
            }
            if up {
                tracing::info!(api = %self.api_url, "local LiteFS is up");
            } else {
                tracing::warn!(api = %self.api_url, "local LiteFS is down");
            }
            *cur = up;
            true
        });
    }

    /// Maps these hostnames to their own proxy URLs instead of the template.
    pub fn with_peers(mut self, peers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.known.extend(peers);
        self
    }

    /// Publishes the primary into `tx` until the task is dropped. Starts by trying the API
    /// at once; until it answers, the `.primary` fallback decides.
    pub async fn run(self, tx: watch::Sender<Primary>) {
        let mut delay = Duration::ZERO;
        let mut backoff = MIN_BACKOFF;
        let mut warned = false;
        loop {
            let attempt = async {
                tokio::time::sleep(delay).await;
                self.connect().await
            };
            // Connecting (and any wait before it) runs alongside the fallback poll, so a
            // slow or black-holed API never freezes the role.
            let connected = tokio::select! {
                r = attempt => r,
                never = self.follow_file(&tx) => match never {},
            };
            match connected {
                Ok((first, mut stream)) => {
                    publish(&tx, first);
                    self.set_up(true);
                    tracing::info!(api = %self.api_url, "following LiteFS primary changes");
                    warned = false;
                    backoff = MIN_BACKOFF;
                    let why = self.follow_events(&mut stream, &tx).await;
                    tracing::warn!(api = %self.api_url, error = %why, "LiteFS event stream ended; falling back to .primary");
                    delay = MIN_BACKOFF;
                }
                Err(e) => {
                    self.set_up(false);
                    if warned {
                        tracing::debug!(api = %self.api_url, error = %e, "LiteFS API still unreachable");
                    } else {
                        tracing::warn!(api = %self.api_url, error = %e, "LiteFS API unreachable; following .primary until it returns");
                        warned = true;
                    }
                    delay = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// `/info`, then the `/events` stream. The primary `/info` names is published by the
    /// caller once the fallback poll has stopped, so the two never interleave.
    async fn connect(&self) -> Result<(Primary, EventStream), ApiError> {
        let info = self.api.info().await?;
        let stream = self.api.events().await?;
        let primary = self.role_from_litefs(
            info.is_primary,
            info.primary_hostname.as_deref().unwrap_or(""),
        );
        Ok((primary, stream))
    }

    /// Applies `init` and `primaryChange` until the stream ends; returns why it ended.
    async fn follow_events(
        &self,
        stream: &mut EventStream,
        tx: &watch::Sender<Primary>,
    ) -> ApiError {
        loop {
            match stream.next().await {
                Some(Ok(Event::Init {
                    is_primary,
                    hostname,
                }))
                | Some(Ok(Event::PrimaryChange {
                    is_primary,
                    hostname,
                })) => publish(tx, self.role_from_litefs(is_primary, &hostname)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => return ApiError::Malformed("stream closed by LiteFS".into()),
            }
        }
    }

    /// While the API is down: re-reads `.primary` forever.
    async fn follow_file(&self, tx: &watch::Sender<Primary>) -> Infallible {
        loop {
            publish(tx, self.role_from_file());
            tokio::time::sleep(FILE_POLL).await;
        }
    }

    /// LiteFS's role report: primary → `Local`; a named primary → `Remote`; none → `Unknown`.
    fn role_from_litefs(&self, is_primary: bool, hostname: &str) -> Primary {
        if is_primary {
            Primary::Local
        } else {
            self.remote(hostname)
        }
    }

    /// The fallback while the API is down. `.primary` present: a replica connected to the
    /// primary it names. Absent: LiteFS writes it on neither the primary nor a disconnected
    /// replica, and without the API we cannot tell which. We choose `Unknown` (writes are
    /// held, then 503) over `Local`: wrongly taking writes on a replica is unsafe, while
    /// holding them on a primary whose API is down only delays them.
    fn role_from_file(&self) -> Primary {
        match std::fs::read_to_string(&self.primary_file) {
            Ok(text) => self.remote(text.trim()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Primary::Unknown,
            Err(e) => {
                tracing::debug!(path = %self.primary_file.display(), error = %e, "reading .primary");
                Primary::Unknown
            }
        }
    }

    fn remote(&self, hostname: &str) -> Primary {
        if hostname.is_empty() {
            return Primary::Unknown;
        }
        let url = match self.known.get(hostname) {
            Some(url) => url.clone(),
            None => self.template.replace("{hostname}", hostname),
        };
        match super::proxy_url(&url) {
            Ok(url) => Primary::Remote {
                node: hostname.to_owned(),
                url,
            },
            Err(why) => {
                tracing::warn!(
                    hostname,
                    url,
                    why,
                    "primary hostname gives no usable proxy URL"
                );
                Primary::Unknown
            }
        }
    }
}

/// Sends only real changes, so the proxy's held writes wake once per change.
fn publish(tx: &watch::Sender<Primary>, new: Primary) {
    tx.send_if_modified(|cur| {
        if *cur == new {
            return false;
        }
        tracing::info!(from = %cur, to = %new, "primary changed");
        *cur = new;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| panic!("LiteFS never {}", if want { "up" } else { "down" }))
            .expect("source running");
    }

    /// Up while the API answers; down once it is gone (its stream ends, `/info` is refused);
    /// up again when it returns on the same address.
    #[tokio::test]
    async fn litefs_is_up_while_its_api_answers() {
        let dir = tempfile::tempdir().unwrap();
        let node = litefs_sim::Node::new(litefs_sim::NodeConfig {
            mount: dir.path().join("mount"),
            db: "db.sqlite3".into(),
            hostname: "node-1".into(),
            is_primary: true,
            primary_hostname: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(litefs_sim::serve_api(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        let src = LitefsSource::new(
            &format!("http://{addr}"),
            &dir.path().join("mount"),
            "http://{hostname}:8080",
        );
        let mut up = src.up();
        assert!(!*up.borrow(), "not up before the API answered");
        let (tx, _rx) = watch::channel(Primary::Unknown);
        let _run = AbortOnDrop(tokio::spawn(src.run(tx)));
        until(&mut up, true).await;

        let _ = stop.send(());
        api.await.unwrap();
        until(&mut up, false).await;

        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let _api = AbortOnDrop(tokio::spawn(litefs_sim::serve_api(
            node,
            listener,
            std::future::pending(),
        )));
        until(&mut up, true).await;
    }

    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// With the raft source, LiteFS's hostnames are node ids: the primary is a peer at its own
    /// proxy URL (the one in the "primary changed" line), not the template's guess.
    #[test]
    fn a_peer_primary_gets_its_own_proxy_url() {
        let src = LitefsSource::new(
            "http://127.0.0.1:20202",
            Path::new("/nonexistent"),
            "http://{hostname}:8080",
        )
        .with_peers([("node-2".to_string(), "http://10.0.0.2:8082".to_string())]);
        assert_eq!(
            src.role_from_litefs(false, "node-2"),
            Primary::remote("node-2", "http://10.0.0.2:8082").unwrap()
        );
        assert_eq!(
            src.role_from_litefs(false, "other"),
            Primary::remote("other", "http://other:8080").unwrap(),
            "not a peer: the template"
        );
        assert_eq!(src.role_from_litefs(true, "node-2"), Primary::Local);
    }
}
