//! The event message parser (HTTP body and Unix socket datagram): no panic; a message
//! passes its checks; the size limits hold; both limits give one answer below them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnstile_engine::ingress::{self, IngressError, Limits};

fuzz_target!(|data: &[u8]| {
    let socket = ingress::parse(data, &Limits::SOCKET);
    match &socket {
        Ok(m) => {
            assert!(ingress::check_event_type(&m.event).is_ok());
            assert!(m
                .job_id
                .as_deref()
                .is_none_or(|j| ingress::check_job_id(j).is_ok()));
        }
        Err(e) => {
            if data.len() > Limits::SOCKET.max_bytes {
                assert!(matches!(e, IngressError::TooLarge { .. }));
            }
        }
    }
    if data.len() <= Limits::SOCKET.max_bytes {
        let http = Limits {
            max_bytes: 1024 * 1024,
            max_parsed_bytes: ingress::DEFAULT_MAX_PARSED_BYTES,
        };
        assert_eq!(socket, ingress::parse(data, &http));
    }
    // A tight parsed-size budget refuses with the size error, never a panic.
    let tight = Limits {
        max_bytes: Limits::SOCKET.max_bytes,
        max_parsed_bytes: data.len(),
    };
    let _ = ingress::parse(data, &tight);
});
