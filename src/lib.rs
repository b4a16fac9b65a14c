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
//! | typed config and `Live` (the config in force) | [`config`] |
//! | config files, drop-ins and `OTPGATE__` variables layered, with each key's origin | `config::load` |
//! | validation, one function per section (`validate/` holds store, channels, directory); `check-config` summary | `config::validate`, `config::summary` |
//! | what a reload changes: every key applied or needs-restart | [`config::diff`] |
//! | secrets from files / systemd credentials, masked Debug | [`secret`] |
//! | phone numbers to E.164, country of a number, libphonenumber validity | [`phone`] |
//! | SMS text of a code, code found in a text, code length limit, locale fallback | [`content`] |
//! | the store handle, opening, reads, errors | [`store`] |
//! | one interface, two backends: the `Store` enum dispatch (SQLite / PostgreSQL) | `store::backend` |
//! | the writer thread: group commit, checkpointer | `store::writer` |
//! | outbox rows: accept, claim, attempts, receipts, recipients, housekeeping | `store::messages` |
//! | an attempt's end and its message's move in one commit | `store::settle` |
//! | Verify rows; limit counting in the writer's memory; schema and migrations | `store::verify`, `store::recent`, [`store::schema`] |
//! | the PostgreSQL backend of a pair: pool, `sslmode` TLS, migrations under a lock, shared limits, leased claims, heartbeats | [`store::postgres`] |
//! | HTTP listener: hyper, rustls, mTLS, connection limits, timeouts | [`api::listener`] |
//! | routing of requests to front doors, one config snapshot per request | [`api`] |
//! | client authentication (Bearer, X-API-Key, Basic, IP allow list) | [`api::auth`] |
//! | the one accept pipeline every door shares: validate, admit, store, wake | [`api::submit`] |
//! | native API `POST /v1/messages`, `GET /v1/messages/{id}` | [`api::v1`], [`api::views`] |
//! | Verify API; Kannel and generic HTTP-SMS doors | [`api::verify`], [`api::compat`] |
//! | JSON errors with stable codes; body decoding | [`api::error`], [`api::decode`] |
//! | `/healthz`, `/readyz`, `/metrics` | [`api::health`] |
//! | the Channel trait (who owns the deadline), outcome classes, receipts | [`channel`] |
//! | WhatsApp Cloud API client, error classes, circuit breaker, webhook | [`channel::whatsapp`] |
//! | GSM 7-bit / UCS-2 alphabets and SMS PDUs | [`channel::sms::gsm7`], [`channel::sms::pdu`] |
//! | AT command parsing on bytes | [`channel::sms::at`] |
//! | one modem: handle, serial port, owner task (init, health, send, recovery), `modem probe` | [`channel::sms::modem`] |
//! | the modem pool (round robin over ready modems, the SMS budget) | [`channel::sms::pool`] |
//! | worker: claims due messages, runs attempts, carries out the policy's verdicts | [`dispatch`] |
//! | receipts applied to their attempt, the fallback they start; the one-time pre-notice | `dispatch::receipts`, `dispatch::prenotice` |
//! | every routing decision (plan, after an attempt, after a receipt), pure | [`dispatch::policy`] |
//! | Cloud API simulator, pty modem simulator, test configs (feature `simulators`) | `sim` |
//! | wiring it all together, signals, reload, shutdown | [`daemon`] |
//! | `otpgate demo`: the daemon on the simulators (feature `simulators`) | `demo` |
//! | metrics counters | [`metrics`] |
//! | when the loaded certificates expire (the WhatsApp token's: `channel::whatsapp::token`) | [`expiry`] |
//! | `otpgate status`: the one screen from /readyz, /metrics and the outbox's last hour | [`status`] |
//! | SMS pumping: velocity by number block, end user and address; the conversion breaker | [`abuse`] |
//! | verification core shared by the Verify API and RADIUS: make, store as HMAC, check, resend | [`verify`] |
//! | RADIUS packets on bytes (RFC 2865/2869), the UDP server, challenge state | [`radius`] |
//! | the directory (LDAP over rustls): user search, password bind, phone attribute | [`ldap`] |
//!
//! The path of one code through these modules, and where each kind of change goes, is in
//! `docs/architecture.md`.
//!
//! Rules kept throughout: time comes from a [`clock::Clock`]; protocol parsing works on byte
//! slices apart from I/O; one owner per mutable resource (the store writer, each modem); codes
//! never reach a log line, error, metric or panic message.

pub mod abuse;
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
pub mod expiry;
pub mod ldap;
pub mod metrics;
pub mod phone;
pub mod radius;
pub mod secret;
#[cfg(feature = "simulators")]
pub mod sim;
pub mod status;
pub mod store;
pub mod verify;
