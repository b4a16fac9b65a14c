//! WhatsApp through Meta's Cloud API (being written).

pub mod circuit;
pub mod client;
pub mod errors;
pub mod webhook;
