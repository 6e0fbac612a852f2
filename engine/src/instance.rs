//! Who this process is among the processes that share a store: an instance id the
//! operator chooses (`--instance-id`; by default the host name, which in Kubernetes is the
//! pod name) and an incarnation that is new each time a process starts. A lease's owner
//! is both (`ID/INCARNATION`): two processes on one host, or a process and its restarted
//! self, never renew each other's leases, and the id alone says which pod held a job.
//!
//! An id given explicitly is unique among live processes: `turnstile run` registers it in
//! the store ([`crate::store::InstanceStore`]) and a second live process with that id is
//! refused. The default id is not registered: several processes on one host (two local
//! workers) share it, as their lease owners still differ by incarnation.

use std::time::{SystemTime, UNIX_EPOCH};

/// The longest instance id accepted.
pub const MAX_LEN: usize = 128;

/// This process's identity among the processes sharing a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    id: String,
    incarnation: String,
    /// The id was given (`--instance-id`, `TURNSTILE_INSTANCE_ID`), not the host name.
    chosen: bool,
}

impl Instance {
    /// `id`, or the host name when `None`; a fresh incarnation. An id that is empty, longer
    /// than [`MAX_LEN`], or holds `/`, whitespace or control characters is refused (it
    /// appears in lease owners, logs and span attributes).
    pub fn new(id: Option<&str>) -> Result<Self, String> {
        let chosen = id.is_some();
        let id = match id {
            Some(id) => id.to_owned(),
            None => host_name(),
        };
        if id.is_empty() || id.len() > MAX_LEN {
            return Err(format!(
                "instance id `{id}` must be 1 to {MAX_LEN} bytes long"
            ));
        }
        if let Some(c) = id
            .chars()
            .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "instance id `{}` holds {c:?}: use letters, digits and `-_.:@`",
                id.escape_debug()
            ));
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            id,
            incarnation: format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff),
            chosen,
        })
    }

    /// The id (`--instance-id` or the host name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True when the id was given rather than defaulted to the host name. Only a given id
    /// is registered as live in the store (one process per id): processes on one host
    /// share the default id.
    pub fn chosen(&self) -> bool {
        self.chosen
    }

    /// This start of the process: `PID-NONCE`.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The owner written on leases: `ID/INCARNATION`.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.id, self.incarnation)
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owners_name_the_instance_and_differ_per_start() {
        let a = Instance::new(Some("pod-a")).unwrap();
        assert!(a.owner().starts_with("pod-a/"), "{}", a.owner());
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = Instance::new(Some("pod-a")).unwrap();
        assert_ne!(a.owner(), b.owner(), "a restarted process is another owner");
        assert!(a.chosen());
        let default = Instance::new(None).unwrap();
        assert_eq!(default.id(), host_name());
        assert!(!default.chosen());
    }

    #[test]
    fn ids_that_would_corrupt_owners_or_logs_are_refused() {
        for bad in ["", "a/b", "a b", "a\nb", &"x".repeat(MAX_LEN + 1)] {
            assert!(Instance::new(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(Instance::new(Some("worker-7.ns:1@x")).is_ok());
    }
}
