//! Frames on a QUIC stream: a 4-byte big-endian length, then the bytes.

use crate::replicate::frame::MAX_FRAME_BYTES;
use crate::replicate::{FrameSink, FrameSource, SessionError};

pub struct QuicSink(pub quinn::SendStream);
pub struct QuicSource(pub quinn::RecvStream);

impl FrameSink for QuicSink {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| SessionError::Transport("frame too large".into()))?;
        self.0
            .write_all(&len.to_be_bytes())
            .await
            .map_err(|e| SessionError::Transport(e.to_string()))?;
        self.0
            .write_all(&bytes)
            .await
            .map_err(|e| SessionError::Transport(e.to_string()))
    }
}

impl FrameSource for QuicSource {
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        let mut len = [0u8; 4];
        match self.0.read_exact(&mut len).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => return Err(SessionError::Transport(e.to_string())),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(SessionError::Protocol(format!(
                "frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
            )));
        }
        let mut buf = vec![0u8; len];
        self.0
            .read_exact(&mut buf)
            .await
            .map_err(|e| SessionError::Transport(e.to_string()))?;
        Ok(Some(buf))
    }
}
