//! The RADIUS front door (RFC 2865, 2869, 5080) for VPNs, Windows NPS and network gear.
//!
//! - [`packet`]: the codec on byte slices (no I/O): decode, encode, User-Password hiding,
//!   Response Authenticator, Message-Authenticator.
//! - [`server`]: the UDP loop: client lookup by address, the BlastRADIUS checks, the
//!   retransmission cache (a repeated request gets the same reply and never a second code),
//!   and the challenge flow over the directory ([`crate::ldap`]) and the verification core
//!   ([`crate::verify`]).
//! - [`state`]: the pending challenges (random, single-use State bound to user and client)
//!   and the reply cache, both plain data structures driven by the clock.

pub mod packet;
pub mod server;
pub mod state;

pub use server::{Radius, start};
