//! LiteFS transaction IDs and the `<db>-pos` position file format (`%016x/%016x\n`).

use std::fmt;

/// A LiteFS transaction ID. Printed, as LiteFS does, as 16 lower-case hex digits.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u64);

impl TxId {
    /// Parses exactly 16 hex digits (either case), LiteFS's TXID format.
    pub fn from_hex(s: &[u8]) -> Option<TxId> {
        if s.len() != 16 {
            return None;
        }
        let mut v: u64 = 0;
        for &b in s {
            let d = (b as char).to_digit(16)?;
            v = (v << 4) | u64::from(d);
        }
        Some(TxId(v))
    }

    /// The 16 lower-case hex digits, without allocating.
    pub fn to_hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The content of `<mount>/<db>-pos`: a position in one history. The post-apply checksum
/// is a function of the database content, so the same TXID with another checksum is
/// another write (TXIDs repeat across histories after a failover). The default, TXID 0
/// with checksum 0, is a database that does not exist yet.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub txid: TxId,
    pub post_apply_checksum: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed position file: expected %016x/%016x\\n, got {len} bytes")]
pub struct PositionError {
    pub len: usize,
}

impl Position {
    /// Parses `%016x/%016x` with an optional trailing newline, nothing else.
    pub fn parse(bytes: &[u8]) -> Result<Position, PositionError> {
        let err = PositionError { len: bytes.len() };
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if body.len() != 33 || body[16] != b'/' {
            return Err(err);
        }
        let txid = TxId::from_hex(&body[..16]).ok_or(err.clone())?;
        let checksum = TxId::from_hex(&body[17..]).ok_or(err)?;
        Ok(Position {
            txid,
            post_apply_checksum: checksum.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_litefs_position() {
        let p = Position::parse(b"0000000000000002/95af056ca07d8ad1\n").unwrap();
        assert_eq!(p.txid, TxId(2));
        assert_eq!(p.post_apply_checksum, 0x95af056ca07d8ad1);
    }

    #[test]
    fn rejects_garbage_positions() {
        for bad in [
            &b""[..],
            b"\n",
            b"garbage",
            b"0000000000000002",
            b"0000000000000002/95af056ca07d8ad",
            b"000000000000000g/95af056ca07d8ad1\n",
            b"0000000000000002-95af056ca07d8ad1\n",
            b"0000000000000002/95af056ca07d8ad1\n\n",
            b"+000000000000002/95af056ca07d8ad1\n",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hex_round_trip() {
        for v in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let hex = TxId(v).to_hex();
            assert_eq!(TxId::from_hex(&hex), Some(TxId(v)));
            assert_eq!(std::str::from_utf8(&hex).unwrap(), format!("{v:016x}"));
        }
        assert_eq!(TxId::from_hex(b"12"), None);
        assert_eq!(TxId::from_hex(b"+123456789abcdef"), None);
    }
}
