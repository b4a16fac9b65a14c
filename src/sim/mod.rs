//! Simulators of the outside world, used by the tests and by `otpgate demo`: Meta's Cloud API
//! over real TLS ([`cloud_api`]), a GSM modem on a real pseudo-terminal ([`modem`]), and the
//! test certificates both need ([`tls`]).

pub mod cloud_api;
pub mod modem;
pub mod tls;
