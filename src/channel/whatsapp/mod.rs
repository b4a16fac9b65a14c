//! WhatsApp through Meta's Cloud API (being written).
