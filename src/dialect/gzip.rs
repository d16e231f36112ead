//! gzip for seed 004's binary frames and request bodies. RHTMX's clients
//! (`rusty-sync.js`, `rusty-field-sync.js`) gzip every message of 1 KiB or
//! more and send it as a binary frame, and decompress binary frames they
//! receive; the real server compresses its messages of 1 KiB or more.
//! Pure functions, no IO.

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{Read, Write};

/// Messages at least this long are sent compressed to clients that
/// compress (the real server's and clients' threshold).
pub const THRESHOLD: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GzipError {
    #[error("not valid gzip: {0}")]
    Invalid(String),
    #[error("decompresses to more than the {0}-byte limit")]
    TooLarge(usize),
    #[error("decompressed message is not UTF-8")]
    NotUtf8,
}

/// Decompress a gzip message into text, reading at most `max` bytes of
/// output: a gzip bomb stops at the limit instead of filling memory.
pub fn gunzip_text(data: &[u8], max: usize) -> Result<String, GzipError> {
    let mut out = Vec::new();
    GzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| GzipError::Invalid(e.to_string()))?;
    if out.len() > max {
        return Err(GzipError::TooLarge(max));
    }
    String::from_utf8(out).map_err(|_| GzipError::NotUtf8)
}

/// gzip `text` (default level), as the clients' `DecompressionStream`
/// reads it.
pub fn gzip(text: &str) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(text.as_bytes());
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let text = "{\"type\":\"push\"}".repeat(200);
        assert_eq!(gunzip_text(&gzip(&text), 1 << 20).unwrap(), text);
        // A bomb: 8 MiB of zeros compress to ~8 KiB; refused at the cap.
        let bomb = gzip(&"0".repeat(8 << 20));
        assert!(bomb.len() < 1 << 17);
        assert_eq!(
            gunzip_text(&bomb, 1 << 20),
            Err(GzipError::TooLarge(1 << 20))
        );
        assert!(matches!(
            gunzip_text(b"not gzip", 100),
            Err(GzipError::Invalid(_))
        ));
    }
}
