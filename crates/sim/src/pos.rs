//! The files LiteFS exposes in its mount besides the databases: `<db>-pos`, `.lag` and
//! `.primary`, byte for byte in LiteFS's formats, each replaced atomically (temp + rename)
//! so a reader never sees a torn or empty file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// LiteFS marks every checksum with the top bit (`ltx.ChecksumFlag`), so a real
/// post-apply checksum always starts with a hex digit of 8 or above.
const CHECKSUM_FLAG: u64 = 1 << 63;

/// Formats a position as LiteFS's `<db>-pos` file holds it: `%016x/%016x\n`
/// (TXID, then post-apply checksum), e.g. `0000000000000002/95af056ca07d8ad1\n`.
pub fn format_pos(txid: u64, checksum: u64) -> String {
    format!("{txid:016x}/{checksum:016x}\n")
}

/// Parses the content of a `<db>-pos` file (the inverse of [`format_pos`]); `None` when
/// the text is not exactly in LiteFS's format.
pub fn parse_pos(text: &str) -> Option<(u64, u64)> {
    let line = text.strip_suffix('\n')?;
    let (txid, checksum) = line.split_once('/')?;
    let hex16 = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    Some((hex16(txid)?, hex16(checksum)?))
}

/// Formats replication lag in milliseconds as LiteFS's `.lag` file holds it: `%+010d\n`.
pub fn format_lag(lag_ms: i64) -> String {
    format!("{lag_ms:+010}\n")
}

/// The path of the position file of database `db` in `mount` (no leading dot, as in LiteFS).
pub fn pos_path(mount: &Path, db: &str) -> PathBuf {
    mount.join(format!("{db}-pos"))
}

/// The path of `<mount>/<db>-counted`, the sim's own (LiteFS has none): the database
/// header's change counter (decimal) the commit watcher last accounted for on a primary, so
/// a process in front of the app can hold a response until the watcher has counted the
/// request's last commit (tests/django_app/litefs_sim_gate.py). Written after `<db>-pos`.
pub fn counted_path(mount: &Path, db: &str) -> PathBuf {
    mount.join(format!("{db}-counted"))
}

/// Writes `<mount>/<db>-pos` atomically.
pub fn write_pos(mount: &Path, db: &str, txid: u64, checksum: u64) -> io::Result<()> {
    write_atomic(&pos_path(mount, db), format_pos(txid, checksum).as_bytes())
}

/// Writes `<mount>/.lag` atomically.
pub fn write_lag(mount: &Path, lag_ms: i64) -> io::Result<()> {
    write_atomic(&mount.join(".lag"), format_lag(lag_ms).as_bytes())
}

/// Sets `<mount>/.primary` with LiteFS's semantics: `Some(hostname)` writes `<hostname>\n`
/// (a replica connected to that primary); `None` removes the file (the primary itself, or a
/// replica that is not connected to any primary).
pub fn write_primary(mount: &Path, primary_hostname: Option<&str>) -> io::Result<()> {
    let path = mount.join(".primary");
    match primary_hostname {
        Some(host) => write_atomic(&path, format!("{host}\n").as_bytes()),
        None => match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// A deterministic stand-in for LiteFS's post-apply checksum of `db` at `txid`: the same
/// inputs always give the same value on every node, and the top bit is set as in LiteFS.
/// It models "the same history on every node": the checksum of the test-driven position
/// moves ([`crate::Node::set_txid`], [`crate::Node::commit`]), not of a commit an app made
/// to the database (see [`content_checksum`]).
pub fn fake_checksum(db: &str, txid: u64) -> u64 {
    // FNV-1a over the name, then a splitmix64 finalizer with the TXID mixed in.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in db.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ txid.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | CHECKSUM_FLAG
}

/// A stand-in for LiteFS's post-apply checksum of a database whose content is these files
/// (the database file, then its `-wal` when there is one; a missing file counts as empty):
/// a 64-bit hash of their bytes with the top bit set as LiteFS's `ltx.ChecksumFlag`. Like
/// LiteFS's, it is a function of the content only, so two histories that reach the same
/// TXID with different writes get different checksums. Read in 64 KiB pieces.
pub fn content_checksum(files: &[&Path]) -> u64 {
    use std::io::Read;
    let mut hash = WordHash::default();
    let mut buf = vec![0u8; 64 * 1024];
    for path in files {
        let mut len = 0u64;
        if let Ok(mut f) = fs::File::open(path) {
            loop {
                // Fill the buffer so that only a file's last piece is short.
                let mut n = 0;
                while n < buf.len() {
                    match f.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                hash.update(&buf[..n]);
                len += n as u64;
                if n < buf.len() {
                    break;
                }
            }
        }
        hash.word(len);
    }
    hash.finish() | CHECKSUM_FLAG
}

/// A fast 64-bit hash over 8-byte words (not cryptographic; a stand-in for LiteFS's CRC64s).
struct WordHash(u64);

impl Default for WordHash {
    fn default() -> Self {
        WordHash(0xcbf2_9ce4_8422_2325)
    }
}

impl WordHash {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Replaces `path` with `data` through a temp file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Distinguishes temp files of concurrent writers (threads of this process and others).
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_format_is_litefs_exact() {
        assert_eq!(
            format_pos(2, 0x95af_056c_a07d_8ad1),
            "0000000000000002/95af056ca07d8ad1\n"
        );
        assert_eq!(
            format_pos(u64::MAX, 0),
            "ffffffffffffffff/0000000000000000\n"
        );
        assert_eq!(format_pos(0, 0).len(), 34);
    }

    #[test]
    fn pos_parse_round_trips_and_rejects_junk() {
        assert_eq!(
            parse_pos("0000000000000002/95af056ca07d8ad1\n"),
            Some((2, 0x95af_056c_a07d_8ad1))
        );
        for bad in [
            "",
            "0000000000000002/95af056ca07d8ad1",
            "2/95af056ca07d8ad1\n",
            "0000000000000002/95AF056CA07D8AD1\n",
            "000000000000000g/95af056ca07d8ad1\n",
            "0000000000000002 95af056ca07d8ad1\n",
        ] {
            assert_eq!(parse_pos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lag_format_is_litefs_exact() {
        assert_eq!(format_lag(0), "+000000000\n");
        assert_eq!(format_lag(150), "+000000150\n");
        assert_eq!(format_lag(-5), "-000000005\n");
        assert_eq!(format_lag(i64::from(i32::MAX)), "+2147483647\n");
        assert_eq!(format_lag(42).len(), 11);
    }

    #[test]
    fn content_checksum_follows_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wal) = (dir.path().join("db"), dir.path().join("db-wal"));
        let sum = || content_checksum(&[&db, &wal]);
        let empty = sum();
        assert!(empty & CHECKSUM_FLAG != 0);
        fs::write(&db, vec![7u8; 200_000]).unwrap();
        let a = sum();
        assert_eq!(a, sum(), "a function of the content");
        let mut other = vec![7u8; 200_000];
        other[150_001] = 8;
        fs::write(&db, &other).unwrap();
        assert_ne!(sum(), a, "one byte differs");
        fs::write(&db, vec![7u8; 200_001]).unwrap();
        assert_ne!(sum(), a, "one byte longer");
        fs::write(&db, vec![7u8; 200_000]).unwrap();
        fs::write(&wal, b"frame").unwrap();
        assert_ne!(sum(), a, "the WAL is content too");
        assert!(a & CHECKSUM_FLAG != 0);
    }

    #[test]
    fn checksum_is_deterministic_and_flagged() {
        assert_eq!(fake_checksum("db", 7), fake_checksum("db", 7));
        assert_ne!(fake_checksum("db", 7), fake_checksum("db", 8));
        assert_ne!(fake_checksum("db", 7), fake_checksum("other", 7));
        assert!(fake_checksum("db", 0) & CHECKSUM_FLAG != 0);
    }

    #[test]
    fn files_are_written_exactly_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        write_pos(dir.path(), "db.sqlite3", 2, 0x95af_056c_a07d_8ad1).unwrap();
        assert_eq!(
            fs::read(dir.path().join("db.sqlite3-pos")).unwrap(),
            b"0000000000000002/95af056ca07d8ad1\n"
        );
        write_lag(dir.path(), 20).unwrap();
        assert_eq!(fs::read(dir.path().join(".lag")).unwrap(), b"+000000020\n");
        write_primary(dir.path(), Some("node-1")).unwrap();
        assert_eq!(fs::read(dir.path().join(".primary")).unwrap(), b"node-1\n");
        write_primary(dir.path(), None).unwrap();
        assert!(!dir.path().join(".primary").exists());
        write_primary(dir.path(), None).unwrap();
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }
}
