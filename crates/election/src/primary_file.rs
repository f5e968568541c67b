//! The LiteFS-style `.primary` file: the leader's name + "\n" on followers, absent on the
//! leader and while no leader is known. Replaced atomically (temp file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Failure to update `.primary`.
#[derive(Debug, thiserror::Error)]
#[error("updating {path}: {source}")]
pub struct PrimaryFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Make `path` say `leader` (Some) or disappear (None). No-op when already so.
pub fn update(path: &Path, leader: Option<&str>) -> Result<(), PrimaryFileError> {
    let wrap = |source| PrimaryFileError {
        path: path.to_path_buf(),
        source,
    };
    match leader {
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(wrap(e)),
        },
        Some(name) => {
            let content = format!("{name}\n");
            if std::fs::read(path).is_ok_and(|b| b == content.as_bytes()) {
                return Ok(());
            }
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir {
                std::fs::create_dir_all(d).map_err(wrap)?;
            }
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "primary".into());
            let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp).map_err(wrap)?;
            f.write_all(content.as_bytes()).map_err(wrap)?;
            f.sync_all().map_err(wrap)?;
            drop(f);
            std::fs::rename(&tmp, path).map_err(wrap)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join(".primary");
        update(&p, Some("node-2")).expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "node-2\n");
        update(&p, Some("node-3")).expect("replace");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "node-3\n");
        update(&p, None).expect("remove");
        assert!(!p.exists());
        update(&p, None).expect("remove twice is fine");
        // No temp files left behind.
        let left: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
