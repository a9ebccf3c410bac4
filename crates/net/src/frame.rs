use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAGIC: u32 = 0x454d_4252; // "EMBR"
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Request = 0,
    Response = 1,
}

/// Largest body and payload a peer may announce. Checked before allocation.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    pub max_body: u32,
    pub max_payload: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        // 64 MiB chunks plus room for a batch read's framing.
        FrameLimits { max_body: 8 << 20, max_payload: (64 << 20) + (1 << 20) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub method: u16,
    pub request_id: u64,
    /// Remaining deadline budget in milliseconds; 0 = none.
    pub timeout_ms: u32,
    /// `StatusCode` of a response; 0 for requests and successes.
    pub status: u16,
    pub body_len: u32,
    pub payload_len: u32,
    pub body_crc: u32,
    pub payload_crc: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge { header: FrameHeader, what: &'static str, len: u32, max: u32 },
    /// The frame was read whole, so the stream is still in sync; only this request is bad.
    #[error("{what} checksum mismatch")]
    DataChecksum { header: FrameHeader, what: &'static str },
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[6..8].copy_from_slice(&self.method.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.timeout_ms.to_le_bytes());
        b[20..22].copy_from_slice(&self.status.to_le_bytes());
        // b[22..24] reserved, zero.
        b[24..28].copy_from_slice(&self.body_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.payload_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        b[36..40].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if crc32c::crc32c(&b[..40]) != u32_at(40) {
            return Err(FrameError::HeaderChecksum);
        }
        if b[4] != VERSION {
            return Err(FrameError::BadVersion(b[4]));
        }
        let kind = match b[5] {
            0 => FrameKind::Request,
            1 => FrameKind::Response,
            k => return Err(FrameError::BadKind(k)),
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Ok(FrameHeader {
            kind,
            method: u16_at(6),
            request_id: u64::from_le_bytes(id),
            timeout_ms: u32_at(16),
            status: u16_at(20),
            body_len: u32_at(24),
            payload_len: u32_at(28),
            body_crc: u32_at(32),
            payload_crc: u32_at(36),
        })
    }

    /// Builds a header for `body` and `payload`, computing both checksums.
    pub fn for_data(kind: FrameKind, method: u16, request_id: u64, body: &[u8], payload: &[u8]) -> Self {
        FrameHeader {
            kind,
            method,
            request_id,
            timeout_ms: 0,
            status: 0,
            body_len: body.len() as u32,
            payload_len: payload.len() as u32,
            body_crc: crc32c::crc32c(body),
            payload_crc: crc32c::crc32c(payload),
        }
    }

    pub(crate) fn check_limits(&self, limits: &FrameLimits) -> Result<(), FrameError> {
        let too_large = |what, len, max| FrameError::TooLarge { header: *self, what, len, max };
        if self.body_len > limits.max_body {
            return Err(too_large("body", self.body_len, limits.max_body));
        }
        if self.payload_len > limits.max_payload {
            return Err(too_large("payload", self.payload_len, limits.max_payload));
        }
        Ok(())
    }

    /// Checks the body and payload read after this header against its checksums.
    pub(crate) fn check_data(&self, body: &[u8], payload: &[u8]) -> Result<(), FrameError> {
        if crc32c::crc32c(body) != self.body_crc {
            return Err(FrameError::DataChecksum { header: *self, what: "body" });
        }
        if crc32c::crc32c(payload) != self.payload_crc {
            return Err(FrameError::DataChecksum { header: *self, what: "payload" });
        }
        Ok(())
    }
}

/// A whole frame as read from the wire.
pub(crate) struct Frame {
    pub header: FrameHeader,
    pub body: Bytes,
    pub payload: Bytes,
}

/// Reads one frame. Limits are enforced on the header before any body buffer exists.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<Frame, FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    match r.read_exact(&mut hb).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let header = FrameHeader::decode(&hb)?;
    header.check_limits(limits)?;
    let body = read_exact_bytes(r, header.body_len as usize).await?;
    let payload = read_exact_bytes(r, header.payload_len as usize).await?;
    header.check_data(&body, &payload)?;
    Ok(Frame { header, body, payload })
}

async fn read_exact_bytes<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Bytes, FrameError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut buf = BytesMut::zeroed(len);
    match r.read_exact(&mut buf).await {
        Ok(_) => Ok(buf.freeze()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FrameHeader {
        let mut h = FrameHeader::for_data(FrameKind::Request, 0x0301, 42, b"body", b"payload");
        h.timeout_ms = 1500;
        h
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn any_flipped_header_bit_is_rejected() {
        let enc = sample().encode();
        for byte in 0..HEADER_LEN {
            let mut bad = enc;
            bad[byte] ^= 0x10;
            assert!(FrameHeader::decode(&bad).is_err(), "byte {byte} flip accepted");
        }
    }

    #[tokio::test]
    async fn oversized_announcement_is_refused_before_reading_the_body() {
        let mut h = sample();
        h.payload_len = u32::MAX;
        let bytes = h.encode().to_vec();
        let err = read_frame(&mut bytes.as_slice(), &FrameLimits::default()).await.err().unwrap();
        assert!(matches!(err, FrameError::TooLarge { what: "payload", .. }), "{err}");
    }

    #[tokio::test]
    async fn payload_corruption_keeps_the_header_for_the_reply() {
        let h = sample();
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(b"body");
        bytes.extend_from_slice(b"pAyload");
        let err = read_frame(&mut bytes.as_slice(), &FrameLimits::default()).await.err().unwrap();
        match err {
            FrameError::DataChecksum { header, what } => {
                assert_eq!(header.request_id, 42);
                assert_eq!(what, "payload");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn truncated_frame_reports_closed() {
        let mut bytes = sample().encode().to_vec();
        bytes.extend_from_slice(b"bo");
        let err = read_frame(&mut bytes.as_slice(), &FrameLimits::default()).await.err().unwrap();
        assert!(matches!(err, FrameError::Closed));
    }
}
