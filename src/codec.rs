//! The codecs rtcam sends, named once for the config, the media pipelines, the wire protocol
//! and the sessions. A leaf: it depends on nothing else in the crate.

/// The video codec a viewer receives. H.264 whenever its browser offers it (one encoder for
/// everyone); VP8 from a second encoder only for browsers without H.264.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
}

impl VideoCodec {
    /// The name used in logs, status and the page (`H264`, `VP8`, as in SDP).
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::Vp8 => "VP8",
        }
    }
}
