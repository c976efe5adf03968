//! Tube names: beanstalkd's rules, and the queue each tube is stored in.
//!
//! beanstalkd accepts 1 to 200 bytes of `A-Z a-z 0-9 - + / ; . $ _ ( )`,
//! not starting with `-`. Queue names allow only `[A-Za-z0-9._-]` and 128
//! bytes, so a tube is stored in the queue `bt.` + its name with `_`
//! escaped as `__` and `+ / ; $ ( )` as `_p _s _c _d _l _r`; a name whose
//! escaped form would pass 128 bytes is stored in `btn.<tube number>`
//! instead (the tube registry keeps the name). Both forms are reversible
//! given the registry, and neither can collide with the registry queue
//! [`REGISTRY_QUEUE`].

/// The longest tube name, in bytes.
pub const TUBE_NAME_BYTES_MAX: usize = 200;

/// The queue holding the tube registry: message `n + 1` is the name of
/// tube number `n`.
pub const REGISTRY_QUEUE: &str = "beanstalkd-tubes";

/// Whether `b` may appear in a tube name.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'+' | b'/' | b';' | b'.' | b'$' | b'_' | b'(' | b')'
        )
}

/// beanstalkd's `is_valid_tube`: 1 to 200 name bytes, no leading `-`.
pub fn is_valid_tube(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= TUBE_NAME_BYTES_MAX
        && name.iter().all(|&b| is_name_byte(b))
        && name[0] != b'-'
}

/// The queue that stores tube `name` (valid) with number `number`.
pub fn queue_name(name: &str, number: u32) -> String {
    let mut q = String::with_capacity(3 + name.len());
    q.push_str("bt.");
    for b in name.bytes() {
        match b {
            b'_' => q.push_str("__"),
            b'+' => q.push_str("_p"),
            b'/' => q.push_str("_s"),
            b';' => q.push_str("_c"),
            b'$' => q.push_str("_d"),
            b'(' => q.push_str("_l"),
            b')' => q.push_str("_r"),
            _ => q.push(char::from(b)),
        }
    }
    if q.len() > millpond::NAME_BYTES_MAX {
        return format!("btn.{number}");
    }
    q
}

/// The tube name a `bt.` queue name stands for (the inverse of
/// [`queue_name`] for names that fit); `None` for other names.
pub fn tube_name(queue: &str) -> Option<String> {
    let rest = queue.strip_prefix("bt.")?;
    let mut out = String::with_capacity(rest.len());
    let mut bytes = rest.bytes();
    while let Some(b) = bytes.next() {
        if b != b'_' {
            out.push(char::from(b));
            continue;
        }
        out.push(match bytes.next()? {
            b'_' => '_',
            b'p' => '+',
            b's' => '/',
            b'c' => ';',
            b'd' => '$',
            b'l' => '(',
            b'r' => ')',
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tube_name_rules_match_beanstalkd() {
        assert!(is_valid_tube(b"default"));
        assert!(is_valid_tube(b"a-+/;.$_()Z9"));
        assert!(!is_valid_tube(b""));
        assert!(!is_valid_tube(b"-leading"));
        assert!(!is_valid_tube(b"sp ace"));
        assert!(!is_valid_tube(b"star*"));
        assert!(is_valid_tube(&[b'x'; 200]));
        assert!(!is_valid_tube(&[b'x'; 201]));
    }

    #[test]
    fn queue_names_are_valid_and_reversible() {
        for name in ["default", "a_b", "x+y/z;w$(v)", "__", "a.b-c", "_p"] {
            let q = queue_name(name, 3);
            millpond::validate_name(&q).unwrap();
            assert_eq!(tube_name(&q).as_deref(), Some(name), "{q}");
        }
        assert_eq!(queue_name("default", 0), "bt.default");
        let long = "(".repeat(200);
        assert_eq!(queue_name(&long, 77), "btn.77");
        assert_eq!(tube_name("btn.77"), None);
        assert_eq!(tube_name("bt.bad_x"), None);
        assert_ne!(queue_name("beanstalkd-tubes", 1), REGISTRY_QUEUE);
    }
}
