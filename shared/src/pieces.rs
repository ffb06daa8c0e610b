//! An artifact in pieces: fixed-size slices, each with its SHA-256, listed in a [`PieceTable`]
//! that the cluster's release key signs. An agent checks every piece against the signed table the
//! moment it arrives, whoever sent it, so a bad piece is caught (and its sender named) without
//! waiting for the whole artifact; the whole artifact's digest is still checked before anything
//! is unpacked.
//!
//! Pieces are [`PIECE_SIZE`] bytes (1 MiB), the last one shorter. 1 MiB because: a 256 MiB
//! artifact (the cap) has at most 256 pieces, so its table (32 bytes a piece) stays around 8 KiB,
//! far inside one frame; a piece is large enough that asking for it costs little beside moving it,
//! and small enough that a bad or lost piece costs 1 MiB to fetch again and that several in flight
//! at once cost a few MiB of memory.
//!
//! The table's signature covers [`SIGNING_CONTEXT`] followed by the encoded table, so it can never
//! be taken for a release manifest's signature (or the other way round), and the table names the
//! artifact's digest and size: it is bound to the one release manifest (signed too) that names
//! the same digest.

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::codec;

/// Bytes per piece (the last piece of an artifact may be shorter).
pub const PIECE_SIZE: u32 = 1 << 20;

/// What a piece table's signature covers before the encoded table (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"fifty piece table v1\0";

/// The pieces of one artifact.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PieceTable {
    /// SHA-256 of the whole artifact, hex (as the release manifest names it).
    pub digest: String,
    /// The artifact's size in bytes.
    pub size: u64,
    /// Bytes per piece.
    pub piece_size: u32,
    /// SHA-256 of each piece, in order.
    pub hashes: Vec<[u8; 32]>,
}

/// A piece table and the cluster's ed25519 signature of [`PieceTable::signed_message`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedPieceTable {
    /// The table, encoded by the codec.
    pub table: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

/// Why a piece or a table was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The piece's bytes do not hash to the table's entry.
    #[error("piece {index} does not match the signed piece table (SHA-256 {actual}, the table says {expected})")]
    Mismatch {
        /// Which piece.
        index: u32,
        /// What its bytes hash to, hex.
        actual: String,
        /// What the table lists, hex.
        expected: String,
    },
    /// The piece has the wrong length (cut short, or too long).
    #[error("piece {index} is {got} bytes; it should be {want}")]
    Length {
        /// Which piece.
        index: u32,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The index is past the last piece.
    #[error("there is no piece {index}: the artifact has {count}")]
    NoSuchPiece {
        /// The index asked for.
        index: u32,
        /// How many pieces there are.
        count: u32,
    },
    /// The table does not describe the artifact the manifest names, or is inconsistent.
    #[error("the piece table is not the manifest's: {0}")]
    WrongTable(String),
}

impl PieceTable {
    /// Splits `bytes` into pieces of `piece_size` and hashes each one, and the whole.
    pub fn of(bytes: &[u8], piece_size: u32) -> Self {
        let mut builder = TableBuilder::new(piece_size);
        builder.update(bytes);
        builder.finish()
    }

    /// How many pieces an artifact of `size` bytes has (at least one: an empty artifact has one
    /// empty piece).
    pub fn count_for(size: u64, piece_size: u32) -> u32 {
        size.div_ceil(u64::from(piece_size)).max(1) as u32
    }

    /// How many pieces.
    pub fn count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Where piece `index` starts and how long it is.
    pub fn range(&self, index: u32) -> Result<(u64, usize), PieceError> {
        if index >= self.count() {
            return Err(PieceError::NoSuchPiece { index, count: self.count() });
        }
        let start = u64::from(index) * u64::from(self.piece_size);
        let len = (self.size - start).min(u64::from(self.piece_size)) as usize;
        Ok((start, len))
    }

    /// Checks piece `index`'s bytes against the table.
    pub fn check(&self, index: u32, bytes: &[u8]) -> Result<(), PieceError> {
        let (_, want) = self.range(index)?;
        if bytes.len() != want {
            return Err(PieceError::Length { index, got: bytes.len(), want });
        }
        let actual: [u8; 32] = Sha256::digest(bytes).into();
        let expected = self.hashes[index as usize];
        if actual != expected {
            return Err(PieceError::Mismatch { index, actual: hex::encode(actual), expected: hex::encode(expected) });
        }
        Ok(())
    }

    /// Checks that this table describes the artifact `digest` of `size` bytes and is consistent
    /// with itself (the piece count its size and piece size call for).
    pub fn describes(&self, digest: &str, size: u64) -> Result<(), PieceError> {
        if self.digest != digest || self.size != size {
            return Err(PieceError::WrongTable(format!(
                "it lists artifact {} of {} bytes, the manifest names {digest} of {size} bytes",
                self.digest, self.size
            )));
        }
        if self.piece_size == 0 || self.count() != Self::count_for(size, self.piece_size) {
            return Err(PieceError::WrongTable(format!(
                "{} pieces of {} bytes cannot make {size} bytes",
                self.count(),
                self.piece_size
            )));
        }
        Ok(())
    }

    /// What the cluster's release key signs: [`SIGNING_CONTEXT`] and the encoded table.
    pub fn signed_message(encoded: &[u8]) -> Vec<u8> {
        let mut message = SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(encoded);
        message
    }

    /// Encodes the table for signing and sending.
    pub fn encode(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::to_bytes(self)
    }
}

/// Builds a [`PieceTable`] from an artifact read in any slices (a file read in blocks), hashing
/// each piece and the whole as the bytes go by.
pub struct TableBuilder {
    piece_size: u32,
    whole: Sha256,
    piece: Sha256,
    in_piece: u32,
    size: u64,
    hashes: Vec<[u8; 32]>,
}

impl TableBuilder {
    /// A builder for pieces of `piece_size` bytes.
    pub fn new(piece_size: u32) -> Self {
        assert!(piece_size > 0, "a piece holds at least one byte");
        Self { piece_size, whole: Sha256::new(), piece: Sha256::new(), in_piece: 0, size: 0, hashes: Vec::new() }
    }

    /// The next bytes of the artifact.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min((self.piece_size - self.in_piece) as usize);
            self.piece.update(&bytes[..take]);
            self.in_piece += take as u32;
            bytes = &bytes[take..];
            if self.in_piece == self.piece_size {
                self.hashes.push(std::mem::take(&mut self.piece).finalize().into());
                self.in_piece = 0;
            }
        }
    }

    /// The table, its digest being the SHA-256 of every byte given.
    pub fn finish(mut self) -> PieceTable {
        if self.in_piece > 0 || self.hashes.is_empty() {
            self.hashes.push(self.piece.finalize().into());
        }
        PieceTable {
            digest: hex::encode(self.whole.finalize()),
            size: self.size,
            piece_size: self.piece_size,
            hashes: self.hashes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn an_artifact_splits_into_fixed_pieces_the_last_one_shorter() {
        let data = bytes(10 * 1024 + 5);
        let t = PieceTable::of(&data, 1024);
        assert_eq!(t.count(), 11);
        assert_eq!(t.size, data.len() as u64);
        assert_eq!(t.digest, hex::encode(Sha256::digest(&data)));
        assert_eq!(t.range(0).unwrap(), (0, 1024));
        assert_eq!(t.range(10).unwrap(), (10 * 1024, 5));
        assert_eq!(t.range(11).unwrap_err(), PieceError::NoSuchPiece { index: 11, count: 11 });
        for i in 0..t.count() {
            let (start, len) = t.range(i).unwrap();
            t.check(i, &data[start as usize..start as usize + len]).unwrap();
        }
        // Exact multiples have no empty last piece; an empty artifact has one empty piece.
        assert_eq!(PieceTable::of(&bytes(2048), 1024).count(), 2);
        let empty = PieceTable::of(&[], 1024);
        assert_eq!((empty.count(), empty.range(0).unwrap()), (1, (0, 0)));
        empty.check(0, &[]).unwrap();
        empty.describes(&empty.digest, 0).unwrap();
    }

    #[test]
    fn fed_in_any_slices_the_table_is_the_same() {
        let data = bytes(5000);
        let whole = PieceTable::of(&data, 1000);
        let mut b = TableBuilder::new(1000);
        for chunk in data.chunks(333) {
            b.update(chunk);
        }
        assert_eq!(b.finish(), whole);
    }

    #[test]
    fn a_bad_or_truncated_piece_is_refused_naming_it() {
        let data = bytes(3000);
        let t = PieceTable::of(&data, 1000);
        let mut bad = data[1000..2000].to_vec();
        bad[7] ^= 1;
        let e = t.check(1, &bad).unwrap_err();
        assert!(matches!(e, PieceError::Mismatch { index: 1, .. }), "{e}");
        assert!(e.to_string().starts_with("piece 1 does not match the signed piece table"), "{e}");
        assert_eq!(t.check(2, &data[2000..2999]).unwrap_err(), PieceError::Length { index: 2, got: 999, want: 1000 });
        // Piece 0's bytes are not piece 1.
        assert!(matches!(t.check(1, &data[..1000]), Err(PieceError::Mismatch { .. })));
    }

    #[test]
    fn a_table_for_another_artifact_or_inconsistent_is_refused() {
        let data = bytes(3000);
        let t = PieceTable::of(&data, 1000);
        t.describes(&t.digest, 3000).unwrap();
        assert!(t.describes(&"0".repeat(64), 3000).unwrap_err().to_string().contains("the manifest names"));
        assert!(t.describes(&t.digest, 3001).is_err());
        let mut short = t.clone();
        short.hashes.pop();
        assert!(short.describes(&t.digest, 3000).unwrap_err().to_string().contains("2 pieces of 1000 bytes"));
        let mut zero = t.clone();
        zero.piece_size = 0;
        assert!(zero.describes(&t.digest, 3000).is_err());
        // The signed message starts with the context, so it never reads as a bare manifest.
        let encoded = t.encode().unwrap();
        assert!(PieceTable::signed_message(&encoded).starts_with(SIGNING_CONTEXT));
        assert_eq!(codec::from_bytes::<PieceTable>(&encoded).unwrap(), t);
    }
}
