//! Simulators of the outside world, used by the tests and by `otpgate demo`: Meta's Cloud API
//! over real TLS ([`cloud_api`]), a GSM modem on a real pseudo-terminal ([`modem`]), and the
//! test certificates both need ([`tls`]); the configuration files the tests, the benches and
//! the demo run the daemon on ([`config`]).

pub mod cloud_api;
pub mod config;
pub mod modem;
pub mod tls;
