//! The iSCSI wire layer (RFC 7143), shared by Pollux's target and its
//! initiator: the basic header segment and framing rules ([`pdu`]), text
//! key=value segments ([`text`]) and CHAP ([`chap`]).

#![forbid(unsafe_code)]

pub mod chap;
pub mod pdu;
pub mod text;
