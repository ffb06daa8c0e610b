//! The one framed codec. Every message that crosses a network in Fifty, and every record Fifty
//! stores, is encoded and decoded here and nowhere else.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode 2. The length is
//! checked against [`MAX_FRAME`] before anything is allocated, and bincode decodes with the same
//! limit, so hostile input can neither allocate past the cap nor panic: it gets a [`CodecError`].

use bincode::config::{self, Config};
use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame body accepted, in bytes (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

fn bincode_config() -> impl Config {
    config::standard().with_limit::<MAX_FRAME>()
}

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announced more than the cap; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected message.
    #[error("frame does not decode: {0}")]
    Decode(String),
    /// A frame decoded but left bytes over: a sender bug or a hostile peer.
    #[error("frame has {0} trailing bytes after the message")]
    Trailing(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The message could not be encoded (too large for the cap, usually).
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as a message body (no prefix), e.g. for storage.
pub fn to_bytes<T: Encode>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::encode_to_vec(msg, bincode_config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge { len: body.len(), max: MAX_FRAME });
    }
    Ok(body)
}

/// Decodes a message body (no prefix). Every byte must belong to the message.
pub fn from_bytes<T: Decode<()>>(body: &[u8]) -> Result<T, CodecError> {
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge { len: body.len(), max: MAX_FRAME });
    }
    let (msg, used) =
        bincode::decode_from_slice(body, bincode_config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// Encodes `msg` as a whole frame: length prefix, then body.
pub fn encode_frame<T: Encode>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = to_bytes(msg)?;
    let mut frame = Vec::with_capacity(PREFIX + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes the first frame in `buf`. Returns `Ok(None)` when `buf` does not yet hold a whole
/// frame, otherwise the message and the number of bytes it took.
pub fn decode_frame<T: Decode<()>>(buf: &[u8]) -> Result<Option<(T, usize)>, CodecError> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    let len = announced_len(prefix)?;
    match buf.get(PREFIX..PREFIX + len) {
        Some(body) => Ok(Some((from_bytes(body)?, PREFIX + len))),
        None => Ok(None),
    }
}

fn announced_len(prefix: &[u8]) -> Result<usize, CodecError> {
    let bytes: [u8; PREFIX] = prefix.try_into().expect("caller passes exactly PREFIX bytes");
    let len = u32::from_be_bytes(bytes) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge { len, max: MAX_FRAME });
    }
    Ok(len)
}

/// Reads one frame from `r`. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<T, R>(r: &mut R) -> Result<Option<T>, CodecError>
where
    T: Decode<()>,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(CodecError::Truncated) };
        }
        got += n;
    }
    let len = announced_len(&prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => CodecError::Truncated,
        _ => CodecError::Io(e),
    })?;
    from_bytes(&body).map(Some)
}

/// Writes `msg` to `w` as one frame.
pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), CodecError>
where
    T: Encode,
    W: AsyncWrite + Unpin,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AgentMsg, Health, Heartbeat};
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    fn sample() -> AgentMsg {
        AgentMsg::Heartbeat(Heartbeat {
            seq: 7,
            health: Health {
                cpu_percent: 12.5,
                load: [0.1, 0.2, 0.3],
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 4 << 30,
                disk_free_bytes: 10 << 30,
                disk_total_bytes: 100 << 30,
                uptime: Duration::from_secs(5),
            },
            jobs: vec![crate::wire::JobRef { job: 3, attempt: 1 }],
            release: crate::wire::ReleaseReport { current: Some(2), healthy: true, applying: None, failed: None },
        })
    }

    #[test]
    fn a_frame_round_trips() {
        let frame = encode_frame(&sample()).unwrap();
        let (msg, used): (AgentMsg, usize) = decode_frame(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(msg, sample());
        // Every strict prefix is "not yet a frame", never an error or a panic.
        for cut in 0..frame.len() {
            assert!(decode_frame::<AgentMsg>(&frame[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_allocation() {
        let mut frame = (u32::MAX).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        let err = decode_frame::<AgentMsg>(&frame).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_truncated_not_eof() {
        let frame = encode_frame(&sample()).unwrap();
        let mut cut = &frame[..frame.len() - 1];
        let err = read_frame::<AgentMsg, _>(&mut cut).await.unwrap_err();
        assert!(matches!(err, CodecError::Truncated), "{err}");
        let mut empty: &[u8] = &[];
        assert!(read_frame::<AgentMsg, _>(&mut empty).await.unwrap().is_none());
    }

    /// Property test: arbitrary bytes, and valid frames with bytes flipped, cut or appended,
    /// decode to a message or an error — never a panic — for every wire type.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f1f7);
        let valid = encode_frame(&sample()).unwrap();
        for round in 0..20_000 {
            let bytes: Vec<u8> = match round % 3 {
                0 => {
                    let len = rng.random_range(0..256);
                    (0..len).map(|_| rng.random()).collect()
                }
                1 => {
                    let mut b = valid.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                    b
                }
                _ => {
                    // A plausible prefix followed by random body bytes.
                    let len = rng.random_range(0..512u32);
                    let mut b = len.to_be_bytes().to_vec();
                    b.extend((0..len).map(|_| rng.random::<u8>()));
                    b
                }
            };
            crate::wire::decode_any_for_fuzzing(&bytes);
        }
    }
}
