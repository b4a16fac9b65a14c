//! WhatsApp through Meta's Cloud API: an authentication-template message carries the code.
//!
//! | concern | module |
//! |---|---|
//! | the channel: request building, retries inside the budget, rate cap, health, reload | [`client`] |
//! | success/error bodies and the error-code -> action table | [`errors`] |
//! | circuit breaker (pure, time passed in) and the 131057 pause | [`circuit`] |
//! | status webhooks: handshake, signature, statuses, fraud signals (pure) | [`webhook`] |
//! | template preflight: read the template back, check it per language | [`templates`] |
//! | when the access token expires (Meta's token debugger), for the alert | [`token`] |

pub mod circuit;
pub mod client;
pub mod errors;
pub mod templates;
pub mod token;
pub mod webhook;

pub use client::{WhatsAppChannel, WhatsAppError};
