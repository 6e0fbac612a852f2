//! Basic auth against bcrypt hashes at a bounded cost.
//!
//! A bcrypt check is deliberately slow (2^cost rounds: about 50 ms at cost 10 on one core
//! here), and Prometheus sends the same credentials with every scrape. So:
//! - results are cached, keyed by a SHA-256 of user, hash and password (the password itself
//!   is not kept), at most [`CACHE_ENTRIES`], the oldest dropped first; a changed hash in
//!   the web config misses the cache;
//! - at most one check runs at a time, on a blocking thread: a flood of wrong passwords
//!   costs one core at most and never blocks the async workers that answer probes;
//! - an unknown user is checked against a fixed hash too, so the answer takes as long as
//!   for a known user with a wrong password.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Results kept.
pub const CACHE_ENTRIES: usize = 1024;

/// Checks `Authorization: Basic` credentials.
#[derive(Debug)]
pub struct BasicAuth {
    cache: Mutex<Cache>,
    one_at_a_time: Semaphore,
}

#[derive(Debug, Default)]
struct Cache {
    results: HashMap<[u8; 32], bool>,
    order: VecDeque<[u8; 32]>,
}

impl Default for BasicAuth {
    fn default() -> Self {
        Self {
            cache: Mutex::default(),
            one_at_a_time: Semaphore::new(1),
        }
    }
}

/// User and password of a `Basic` authorization header.
pub fn credentials(header: Option<&[u8]>) -> Option<(String, String)> {
    let h = header?;
    let (scheme, rest) = h.split_at(h.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    /// Whether `user`/`password` match `users`.
    pub async fn check(
        &self,
        users: &BTreeMap<String, String>,
        user: &str,
        password: &str,
    ) -> bool {
        let known = users.get(user);
        let hash = known.map_or_else(|| dummy_hash().to_owned(), String::clone);
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(&ok) = self.cache().results.get(&key) {
            return ok && known.is_some();
        }
        let ok = {
            let Ok(_permit) = self.one_at_a_time.acquire().await else {
                return false;
            };
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        let mut cache = self.cache();
        if cache.results.insert(key, ok).is_none() {
            cache.order.push_back(key);
        }
        while cache.order.len() > CACHE_ENTRIES {
            if let Some(old) = cache.order.pop_front() {
                cache.results.remove(&old);
            }
        }
        ok && known.is_some()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cached results (for tests).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache().results.len()
    }
}

/// A hash checked for unknown users (cost 10, like a typical `htpasswd -B` hash).
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash("turnstile: no such user", 10).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("al:pw:x")
        );
        assert_eq!(
            credentials(Some(h.as_bytes())),
            Some(("al".into(), "pw:x".into()))
        );
        assert_eq!(credentials(Some(b"Bearer abc")), None);
        assert_eq!(credentials(Some(b"Basic !!!")), None);
        assert_eq!(credentials(Some(b"Basic")), None);
        assert_eq!(credentials(None), None);
    }

    #[tokio::test]
    async fn checks_are_cached_and_unknown_users_fail() {
        let users = BTreeMap::from([("al".to_owned(), bcrypt::hash("pw", 4).unwrap())]);
        let auth = BasicAuth::default();
        assert!(auth.check(&users, "al", "pw").await);
        assert!(!auth.check(&users, "al", "nope").await);
        assert!(!auth.check(&users, "bob", "pw").await);
        assert_eq!(auth.cached(), 3);
        assert!(auth.check(&users, "al", "pw").await);
        assert_eq!(auth.cached(), 3);
        // A new hash for the user: the cached result does not apply.
        let changed = BTreeMap::from([("al".to_owned(), bcrypt::hash("new", 4).unwrap())]);
        assert!(!auth.check(&changed, "al", "pw").await);
        assert!(auth.check(&changed, "al", "new").await);
    }
}
