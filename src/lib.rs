//! otpgate: an on-premises OTP delivery gateway. Identity servers hand it a phone number and a
//! one-time code over HTTP; it delivers the code over WhatsApp (Meta's Cloud API) and falls back
//! to SMS through a GSM/LTE modem.
//!
//! # Module map: where each behaviour lives
//!
//! | concern | module |
//! |---|---|
//! | "now" for all logic | [`clock`] |
//! | the vocabulary: channel, content, message kind and state, attempt end, receipt, E.164, ids | [`domain`] |
//! | config files, layering, validation, `check-config` summary | [`config`] |
//! | secrets from files / systemd credentials, masked Debug | [`secret`] |
//! | phone numbers to E.164, country of a number, libphonenumber validity | [`phone`] |
//! | SMS text of a code, code found in a text, code length limit, locale fallback | [`content`] |
//! | SQLite outbox: schema and migrations | [`store::schema`] |
//! | single writer with group commit, checkpointer thread, limit counting; reads | [`store`] |
//! | `[limits]` counting: recent sends per key in the writer's memory (`src/store/recent.rs`) | `store::recent` |
//! | HTTP listener: hyper, rustls, mTLS, connection limits, timeouts | [`api::listener`] |
//! | routing of requests to front doors | [`api`] |
//! | client authentication (Bearer, X-API-Key, Basic, IP allow list) | [`api::auth`] |
//! | JSON errors with stable codes | [`api::error`] |
//! | native API `POST /v1/messages`, `GET /v1/messages/{id}` | [`api::v1`] |
//! | `/healthz`, `/readyz`, `/metrics` | [`api::health`] |
//! | the Channel trait, outcome classes, receipts | [`channel`] |
//! | WhatsApp Cloud API client, error classes, circuit breaker, webhook | [`channel::whatsapp`] |
//! | GSM 7-bit / UCS-2 alphabets and SMS PDUs | [`channel::sms::gsm7`], [`channel::sms::pdu`] |
//! | AT command parsing on bytes | [`channel::sms::at`] |
//! | one modem's owner task: init, health, send, recovery | [`channel::sms::modem`] |
//! | the modem pool (round robin over ready modems) | [`channel::sms::pool`] |
//! | worker: claims due messages, runs attempts, records outcomes | [`dispatch`] |
//! | routing policy (pure function) | [`dispatch::policy`] |
//! | Cloud API simulator, pty modem simulator, test configs (feature `simulators`) | [`sim`] |
//! | wiring it all together, signals, shutdown | [`daemon`] |
//! | `otpgate demo`: the daemon on the simulators (feature `simulators`) | [`demo`] |
//! | metrics counters | [`metrics`] |
//!
//! Rules kept throughout: time comes from a [`clock::Clock`]; protocol parsing works on byte
//! slices apart from I/O; one owner per mutable resource (the store writer, each modem); codes
//! never reach a log line, error, metric or panic message.

pub mod api;
pub mod channel;
pub mod clock;
pub mod config;
pub mod content;
pub mod daemon;
#[cfg(feature = "simulators")]
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod metrics;
pub mod phone;
pub mod secret;
#[cfg(feature = "simulators")]
pub mod sim;
pub mod store;
