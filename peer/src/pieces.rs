//! Pieces and the `/pieces` document: defined in the wire vocabulary
//! (`p2p_proto::pieces`, the document is a wire format shared by the file
//! server and the downloader) and re-exported here so the peer's modules
//! keep one path for it. Nothing may be added here: change
//! `proto/src/pieces.rs`.

pub use p2p_proto::pieces::*;
