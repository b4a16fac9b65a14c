//! SMS through GSM/LTE modems: alphabets and PDUs ([`gsm7`], [`pdu`]), the validity period's
//! formats ([`vp`]), AT parsing ([`at`]), one owner task per modem ([`modem`]) and the [`pool`]
//! that is the SMS [`crate::channel::Channel`].

pub mod at;
pub mod gsm7;
pub mod modem;
pub mod pdu;
pub mod pool;
pub mod vp;
