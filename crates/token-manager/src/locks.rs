//! Per-address locks: the single-flight mechanism for refreshes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use vault_types::SecretAddress;

/// One async mutex per address, created on demand and dropped when no one
/// holds or waits for it.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<SecretAddress, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock of `address`.
    pub(crate) fn get(&self, address: &SecretAddress) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(address).and_then(Weak::upgrade) {
            return lock;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(address.clone(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_same_lock_and_cleanup() {
        let locks = KeyedLocks::default();
        let a = SecretAddress::new("prod", "p", "slack").unwrap();
        let b = SecretAddress::new("prod", "p", "notion").unwrap();
        let l1 = locks.get(&a);
        assert!(Arc::ptr_eq(&l1, &locks.get(&a)));
        assert!(!Arc::ptr_eq(&l1, &locks.get(&b)));
        drop(l1);
        for i in 0..2000 {
            drop(locks.get(&SecretAddress::new("prod", &format!("p{i}"), "x").unwrap()));
        }
        assert!(locks.map.lock().unwrap().len() <= 1024);
    }
}
