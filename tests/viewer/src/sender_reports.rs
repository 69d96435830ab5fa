//! Hands sender reports to the application (the tracks' `OnRtcpPacket`), as rtcam's own
//! keyframe-request interceptor does for PLI: the crate keeps inbound RTCP to its interceptors
//! otherwise. Everything else stops here, at the end of the chain.

use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, StreamInfo, TaggedPacket,
};
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Default)]
pub(crate) struct SenderReportsToApp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SenderReportsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            let reports: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| p.as_any().is::<SenderReport>())
                .cloned()
                .collect();
            if reports.is_empty() {
                return Ok(());
            }
            msg.message.packet = InterceptorPacket::Rtcp(reports);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for SenderReportsToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
