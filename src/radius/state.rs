//! The server's two memories, plain data driven by the clock: pending challenges keyed by
//! their State, and recent replies keyed by (client address, identifier, authenticator).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::Timestamp;

/// How long a reply is kept for a retransmission (radclient and most NASes retry for less).
pub const REPLY_CACHE_FOR: Duration = Duration::from_secs(30);
/// Pending challenges at most: a flood cannot grow memory without bound.
pub const MAX_PENDING: usize = 100_000;

/// A challenge waiting for its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The verification the code belongs to.
    pub verification: String,
    /// The User-Name that started it.
    pub user: String,
    /// The RADIUS client (NAS) that started it.
    pub nas: String,
    /// When the code (and so the challenge) expires.
    pub expires_at: Timestamp,
}

/// Pending challenges by State. A State is taken out when presented: it is single use.
#[derive(Debug, Default)]
pub struct Challenges {
    by_state: HashMap<[u8; 16], Pending>,
}

impl Challenges {
    /// Stores `p` under a fresh random State and returns the State; `None` when full.
    pub fn open(&mut self, p: Pending, now: Timestamp) -> Option<[u8; 16]> {
        if self.by_state.len() >= MAX_PENDING {
            self.by_state.retain(|_, v| v.expires_at > now);
            if self.by_state.len() >= MAX_PENDING {
                return None;
            }
        }
        let state: [u8; 16] = rand::random();
        self.by_state.insert(state, p);
        Some(state)
    }

    /// Takes the challenge a State names, whatever its age (the caller tells expired apart).
    pub fn take(&mut self, state: &[u8]) -> Option<Pending> {
        let key: [u8; 16] = state.try_into().ok()?;
        self.by_state.remove(&key)
    }

    /// Challenges held.
    pub fn len(&self) -> usize {
        self.by_state.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.by_state.is_empty()
    }
}

/// The key of a request for retransmission detection (RFC 5080 2.2.2).
pub type RequestKey = (SocketAddr, u8, [u8; 16]);

/// What the cache knows of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: the caller must answer it and then [`Replies::finish`] it.
    New,
    /// Still being answered: a retransmission to drop (the answer is coming).
    InFlight,
    /// Answered: send these bytes again.
    Answered(Vec<u8>),
}

/// Recent replies by request.
#[derive(Debug, Default)]
pub struct Replies {
    entries: HashMap<RequestKey, (Timestamp, Option<Vec<u8>>)>,
}

impl Replies {
    /// Looks `key` up; a new key is marked in flight.
    pub fn seen(&mut self, key: RequestKey, now: Timestamp) -> Seen {
        let cutoff = now.0 - i64::try_from(REPLY_CACHE_FOR.as_millis()).unwrap_or(i64::MAX);
        self.entries.retain(|_, (at, _)| at.0 > cutoff);
        match self.entries.get(&key) {
            Some((_, Some(reply))) => Seen::Answered(reply.clone()),
            Some((_, None)) => Seen::InFlight,
            None => {
                self.entries.insert(key, (now, None));
                Seen::New
            }
        }
    }

    /// Records the reply to `key` (`None`: nothing was sent; forget the request).
    pub fn finish(&mut self, key: RequestKey, reply: Option<Vec<u8>>, now: Timestamp) {
        match reply {
            Some(r) => {
                self.entries.insert(key, (now, Some(r)));
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(user: &str) -> Pending {
        Pending {
            verification: "ver_1".into(),
            user: user.into(),
            nas: "vpn".into(),
            expires_at: Timestamp(10_000),
        }
    }

    #[test]
    fn states_are_random_and_single_use() {
        let mut c = Challenges::default();
        let a = c.open(pending("alice"), Timestamp(0)).unwrap();
        let b = c.open(pending("bob"), Timestamp(0)).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.take(&a).unwrap().user, "alice");
        assert_eq!(c.take(&a), None, "a State works once");
        assert_eq!(c.take(&b[..15]), None, "a short State names nothing");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn retransmissions_get_the_same_reply_until_it_ages_out() {
        let mut r = Replies::default();
        let key: RequestKey = ("127.0.0.1:5000".parse().unwrap(), 7, [1; 16]);
        assert_eq!(r.seen(key, Timestamp(0)), Seen::New);
        assert_eq!(r.seen(key, Timestamp(10)), Seen::InFlight);
        r.finish(key, Some(vec![2, 3]), Timestamp(20));
        assert_eq!(r.seen(key, Timestamp(1_000)), Seen::Answered(vec![2, 3]));
        // Another identifier or port is another request.
        let other: RequestKey = ("127.0.0.1:5001".parse().unwrap(), 7, [1; 16]);
        assert_eq!(r.seen(other, Timestamp(1_000)), Seen::New);
        assert_eq!(r.seen(key, Timestamp(40_000)), Seen::New, "aged out");
        // A request that got no answer is forgotten, so its retry is answered.
        r.finish(other, None, Timestamp(1_000));
        assert_eq!(r.seen(other, Timestamp(1_001)), Seen::New);
    }
}
