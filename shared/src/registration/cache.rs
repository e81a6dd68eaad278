//! A small expiring map for lookups that outlive one invocation.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::vip::UnixSeconds;

/// Entries expire at a given second; when full, the map is cleared rather
/// than tracking recency, since a refill costs one lookup per key.
#[derive(Debug)]
pub struct TtlCache<V> {
    // A std mutex: lookups are short and never held across an await.
    entries: Mutex<HashMap<String, (V, UnixSeconds)>>,
    capacity: usize,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    pub fn get(&self, key: &str, now: UnixSeconds) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).filter(|(_, until)| *until > now).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: &str, value: V, until: UnixSeconds) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key.to_owned(), (value, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_bounds() {
        let c = TtlCache::new(2);
        c.insert("a", 1, 10);
        assert_eq!(c.get("a", 9), Some(1));
        assert_eq!(c.get("a", 10), None);
        c.insert("b", 2, 10);
        c.insert("c", 3, 10);
        assert_eq!(c.get("a", 0), None, "cleared when full");
        assert_eq!(c.get("c", 0), Some(3));
    }
}
