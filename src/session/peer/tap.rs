//! rtcam's one kind of interceptor in the WebRTC crate's chain: a [`Tap`], parameterised by
//! what it does with the packets passing it ([`TapHandler`]), so the chain's plumbing (queues,
//! the sans-IO protocol, stream binding) is written once for the feedback taps
//! (`feedback.rs`) and the playout-delay stamp (`playout.rs`).

use rtc::interceptor::{Interceptor, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::time::Instant;

/// What a [`Tap`] does with the packets passing it: each leg's packet is passed on (perhaps
/// changed) or dropped (`None`). By default everything passes untouched.
pub(super) trait TapHandler: Send + Sync + 'static {
    /// A packet from the viewer, on its way to the application.
    fn read(&mut self, msg: TaggedPacket) -> Option<TaggedPacket> {
        Some(msg)
    }

    /// A packet to the viewer, on its way to the wire.
    fn write(&mut self, msg: TaggedPacket) -> Option<TaggedPacket> {
        Some(msg)
    }

    /// One of rtcam's streams, with what was negotiated for it (header extension ids among
    /// them), starts going through the chain.
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}

    /// That stream stops.
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
}

/// An interceptor that hands each packet to its handler and queues what the handler passes on.
pub(super) struct Tap<H> {
    handler: H,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl<H> Tap<H> {
    pub(super) fn new(handler: H) -> Self {
        Self {
            handler,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl<H: TapHandler> Protocol<TaggedPacket, TaggedPacket, ()> for Tap<H> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.extend(self.handler.read(msg));
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.extend(self.handler.write(msg));
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl<H: TapHandler> Interceptor for Tap<H> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.handler.bind_local_stream(info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.handler.unbind_local_stream(info);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
