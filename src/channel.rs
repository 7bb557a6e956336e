//! Channels as every module names them: valid names, patterns and the
//! per-channel sequence number, one rule of the contract (spec §2, §4)
//! shared by token permissions (`auth`), `[[retention]]` rules (`config`),
//! message parsing (`wire`) and the store. A leaf: it uses nothing of the
//! crate.

/// A sequence number inside one channel: 1, 2, 3, … without gaps.
pub type Seq = u64;

/// The longest channel name, in bytes (spec §4).
pub const MAX_CHANNEL_BYTES: usize = 164;

/// Channel names: 1 to 164 bytes of `A-Z a-z 0-9 _ - = @ , . ; : /`, the
/// union of roostd's first rule and the Pusher protocol's, so every Pusher
/// channel name is a roostd channel name.
pub fn valid_name(ch: &str) -> bool {
    !ch.is_empty()
        && ch.len() <= MAX_CHANNEL_BYTES
        && ch.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;:/".contains(&b))
}

/// The longest message key, in bytes (spec §8).
pub const MAX_KEY_BYTES: usize = 128;

/// Message keys (spec §8): 1 to 128 bytes, the characters of channel names.
pub fn valid_key(key: &str) -> bool {
    key.len() <= MAX_KEY_BYTES && valid_name(key)
}

/// A channel pattern: an exact name, a `prefix*`, or `*` (every channel).
pub fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_1_to_164_bytes_of_the_pusher_union() {
        assert!(valid_name(&"x".repeat(164)));
        assert!(!valid_name(&"x".repeat(165)));
        assert!(!valid_name(""));
        for ok in ["room:1", "private-chat.42", "presence-room=1", "a,b;c@d/e_f-g", "Z9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["é", "a b", "a*", "a#b", "a?b", "a\"b", "a\\b", "a%b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys_are_1_to_128_bytes_of_channel_characters() {
        assert!(valid_key(&"k".repeat(128)));
        assert!(!valid_key(&"k".repeat(129)));
        assert!(!valid_key(""));
        assert!(valid_key("temp:kitchen"));
        assert!(!valid_key("temp kitchen"));
    }

    #[test]
    fn patterns_are_exact_prefix_or_everything() {
        assert!(matches("room:1", "room:1"));
        assert!(!matches("room:1", "room:10"));
        assert!(matches("room:*", "room:10"));
        assert!(!matches("room:*", "lobby"));
        assert!(matches("*", "anything"));
    }
}
