//! `--litefs-config`: reads an existing LiteFS config (litefs.yml) so a setup that used
//! LiteFS's built-in proxy swaps over unchanged. Its `proxy:` section (LiteFS key names),
//! `fuse.dir` (the mount) and `http.addr` (the LiteFS API) become `[proxy]` values.

use std::{path::Path, time::Duration};

use figment::{
    providers::{Format, Yaml},
    value::{Dict, Value},
    Figment,
};
use serde::Deserialize;

use crate::config::InvalidConfig;

/// The parts of litefs.yml we read; everything else in it is LiteFS's business.
#[derive(Deserialize, Default)]
struct LitefsYml {
    #[serde(default)]
    fuse: Option<Dict>,
    #[serde(default)]
    http: Option<Dict>,
    #[serde(default)]
    proxy: Option<Dict>,
}

/// What a LiteFS `proxy:` key becomes.
enum Map {
    Text(&'static str),
    List(&'static str),
    /// A Go duration (`"1m30s"`) → our humantime string.
    Duration(&'static str),
    /// A LiteFS setting with no equivalent here.
    Ignored,
}

fn mapping(litefs_key: &str) -> Option<Map> {
    Some(match litefs_key {
        "addr" => Map::Text("addr"),
        "target" => Map::Text("target"),
        "db" => Map::Text("db"),
        "passthrough" => Map::List("passthrough"),
        "always-forward" => Map::List("always_forward"),
        "primary-redirect-timeout" => Map::Duration("primary_redirect_timeout"),
        "max-lag" => Map::Duration("max_lag"),
        "read-header-timeout" => Map::Duration("header_read_timeout"),
        "idle-timeout" => Map::Duration("idle_timeout"),
        "debug" | "read-timeout" | "write-timeout" => Map::Ignored,
        _ => return None,
    })
}

/// The `[proxy]` values found in the LiteFS config at `path`.
pub fn read(path: &Path) -> Result<toml::Table, InvalidConfig> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| InvalidConfig::new("--litefs-config", format!("{shown:?}"), e.to_string()))?;
    // LiteFS expands environment variables in its config by default; so do we.
    let text = expand_env(&text, |name| std::env::var(name).ok());
    let yml: LitefsYml = Figment::from(Yaml::string(&text))
        .extract()
        .map_err(|e| InvalidConfig::new("--litefs-config", format!("{shown:?}"), e.to_string()))?;
    let bad = |key: &str, v: &Value, why: &str| {
        InvalidConfig::new(
            key,
            format!("{v:?}"),
            format!("{why} (from --litefs-config {shown})"),
        )
    };
    let mut out = toml::Table::new();
    for (key, value) in yml.proxy.unwrap_or_default() {
        let litefs_key = format!("proxy.{key}");
        match mapping(&key) {
            Some(Map::Text(ours)) => {
                let s = value
                    .as_str()
                    .ok_or_else(|| bad(&litefs_key, &value, "expected a string"))?;
                out.insert(ours.into(), s.into());
            }
            Some(Map::List(ours)) => {
                let list = value
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|v| v.as_str().map(toml::Value::from))
                            .collect()
                    })
                    .ok_or_else(|| bad(&litefs_key, &value, "expected a list of strings"))?;
                out.insert(ours.into(), toml::Value::Array(list));
            }
            Some(Map::Duration(ours)) => {
                let d = value.as_str().and_then(parse_go_duration).ok_or_else(|| {
                    bad(&litefs_key, &value, "expected a duration such as \"10s\"")
                })?;
                out.insert(
                    ours.into(),
                    humantime::format_duration(d).to_string().into(),
                );
            }
            Some(Map::Ignored) => {
                tracing::debug!(key = %litefs_key, "LiteFS proxy setting has no litefs-proxy equivalent; ignored");
            }
            None => {
                tracing::warn!(key = %litefs_key, file = %shown, "unknown LiteFS proxy setting; ignored");
            }
        }
    }
    if let Some(dir) = yml.fuse.as_ref().and_then(|f| f.get("dir")) {
        let s = dir
            .as_str()
            .ok_or_else(|| bad("fuse.dir", dir, "expected a directory"))?;
        out.insert("mount".into(), s.into());
    }
    if let Some(addr) = yml.http.as_ref().and_then(|h| h.get("addr")) {
        let s = addr
            .as_str()
            .ok_or_else(|| bad("http.addr", addr, "expected host:port"))?;
        out.insert("litefs_api".into(), api_url(s).into());
    }
    Ok(out)
}

/// LiteFS's API listen address (`:20202`, `0.0.0.0:20202`) as a URL to reach it locally.
fn api_url(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "[::]", port)) => format!("http://127.0.0.1:{port}"),
        _ => format!("http://{addr}"),
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units, e.g. `1m30s`,
/// `1.5s`, `300ms`; `0` alone is allowed. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * nanos_per;
    }
    (total.is_finite() && total < u64::MAX as f64)
        .then(|| Duration::from_nanos(total.round() as u64))
}

/// Go's `os.ExpandEnv` for `${NAME}` and `$NAME`; unset names become empty. A `$` not
/// followed by a name is kept.
fn expand_env(text: &str, var: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&var(name).unwrap_or_default());
            rest = &after[consumed..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("10s"), Some(ms(10_000)));
        assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_go_duration("300ms"), Some(ms(300)));
        assert_eq!(parse_go_duration("2h"), Some(ms(7_200_000)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "-1s", "1d", "s", "1..2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn env_expansion() {
        let var = |n: &str| (n == "HOST").then(|| "node-1".to_owned());
        assert_eq!(
            expand_env("a ${HOST} $HOST:8 $NOPE.", var),
            "a node-1 node-1:8 ."
        );
        assert_eq!(expand_env("cost $5 and ${", var), "cost  and ${");
        assert_eq!(expand_env("$ alone", var), "$ alone");
    }

    #[test]
    fn api_addresses() {
        assert_eq!(api_url(":20202"), "http://127.0.0.1:20202");
        assert_eq!(api_url("0.0.0.0:20202"), "http://127.0.0.1:20202");
        assert_eq!(api_url("10.0.0.2:20202"), "http://10.0.0.2:20202");
    }
}
