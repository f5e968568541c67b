//! The `static` role source: the primary is fixed by config, like LiteFS's static lease.

use litefs_proxy::{ConfigError, Primary};

use super::{proxy_url, RoleConfig};

/// The fixed primary: `Local`, or `Remote` at `primary_url` (named `primary_name`, else
/// the URL's host).
pub fn initial(cfg: &RoleConfig) -> Result<Primary, ConfigError> {
    if cfg.is_primary {
        return Ok(Primary::Local);
    }
    let Some(url) = &cfg.primary_url else {
        return Err(ConfigError::new(
            "role.primary_url",
            "",
            "a static replica (role.is_primary = false) needs the primary's proxy URL, e.g. http://10.0.0.1:8080",
        ));
    };
    let uri = proxy_url(url).map_err(|why| ConfigError::new("role.primary_url", url, why))?;
    let node = match &cfg.primary_name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => uri.host().unwrap_or_default().to_owned(),
    };
    Ok(Primary::Remote { node, url: uri })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_or_remote() {
        assert_eq!(initial(&RoleConfig::default()).unwrap(), Primary::Local);
        let replica = RoleConfig {
            is_primary: false,
            primary_url: Some("http://10.0.0.1:8080".into()),
            ..Default::default()
        };
        assert_eq!(
            initial(&replica).unwrap(),
            Primary::remote("10.0.0.1", "http://10.0.0.1:8080").unwrap()
        );
        let named = RoleConfig {
            primary_name: Some("node-1".into()),
            ..replica.clone()
        };
        assert_eq!(
            initial(&named).unwrap(),
            Primary::remote("node-1", "http://10.0.0.1:8080").unwrap()
        );
        for bad in [
            None,
            Some("10.0.0.1:8080"),
            Some("https://x:1"),
            Some("http://x:1/app"),
        ] {
            let cfg = RoleConfig {
                primary_url: bad.map(str::to_owned),
                ..replica.clone()
            };
            assert_eq!(
                initial(&cfg).unwrap_err().key,
                "role.primary_url",
                "{bad:?}"
            );
        }
    }
}
