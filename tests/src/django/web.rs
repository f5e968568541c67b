//! HTTP helpers of the Django tests: a cookie jar and a streamed multipart upload.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::Path,
    pin::Pin,
    process::Command,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;

use crate::client::{self, Answer};

/// A minimal cookie jar: keeps what `Set-Cookie` says, sends it back in `Cookie`.
#[derive(Default, Debug, Clone)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    pub fn store(&mut self, a: &Answer) {
        for v in a.headers.get_all("set-cookie") {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let expired = parts.any(|a| {
                a.split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("max-age")
                        && v.trim().parse::<i64>().is_ok_and(|s| s <= 0)
                })
            });
            if expired {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The `Cookie` header value, if there is anything to send.
    pub fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// A request body fed chunk by chunk from a channel (streams a large upload).
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A multipart/form-data body with the file at `path` as field `file`, streamed from disk
/// in 256 KiB chunks; returns the body, its exact length and the content type.
pub fn multipart_file(path: &Path) -> (client::ReqBody, u64, String) {
    let boundary = "litefs-proxy-test-boundary-7d1f0c";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let size = std::fs::metadata(path).expect("upload file").len();
    let len = head.len() as u64 + size + tail.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        if tx.blocking_send(Bytes::from(head)).is_err() {
            return;
        }
        let mut f = std::fs::File::open(&path).expect("open upload file");
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = f.read(&mut buf).expect("read upload file");
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if tx.blocking_send(Bytes::from(buf)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Bytes::from(tail));
    });
    (
        ChannelBody { rx }.boxed(),
        len,
        format!("multipart/form-data; boundary={boundary}"),
    )
}

/// `sha256sum` of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
