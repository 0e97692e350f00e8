//! Text from the network made safe to print: a registry or a peer must not
//! be able to move the cursor, ring the bell or rewrite the terminal's
//! title with the names, hosts and reasons it sends. This module must not
//! do anything but escape.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1; ESC and BEL among
/// them) written as a `\u{..}` escape; unchanged when it has none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain é"), "plain é");
        assert_eq!(printable("a\u{1b}[2Jb\u{7}"), "a\\u{1b}[2Jb\\u{7}");
        assert_eq!(printable("x\u{9b}y\r\n"), "x\\u{9b}y\\u{d}\\u{a}");
    }
}
