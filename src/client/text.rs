//! Text from a node, made safe to print on a terminal.
//!
//! Everything the CLI prints that a node sent — customer fields, node names, error messages,
//! events — is data, and a terminal obeys control characters in data: `ESC ] 0 ; … BEL` sets
//! the window title, `ESC [ 2 J` clears the screen, a carriage return or newline forges a
//! line, and a right-to-left override (U+202E) makes text read differently from what it is.
//! The node refuses such characters at its edge and in its Database actor, but a node can be
//! older, or impersonated, and data can predate the rule; so the CLI never trusts it.
//!
//! * Human output: [`shown`] replaces each such character in a field by its Rust escape
//!   (`\u{1b}`), so it is visible and inert. Fields are escaped one by one, so a newline inside
//!   a field cannot start a line of its own.
//! * JSON output (`--json`): [`json_shown`] replaces each such character in the node's JSON
//!   text by its JSON escape (`\u001b`). Inside a string that is the same JSON value; the
//!   output stays valid JSON for scripts and inert on a terminal.
//!
//! Deliberately not escaped: zero-width joiners and non-joiners (U+200C, U+200D), which
//! Persian, Indic scripts and emoji sequences need, and a backslash (so `\u{1b}` typed as
//! text reads the same as an escaped ESC; telling them apart is not worth noisier output).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::customer::is_bidi_control;

/// Whether `c` can change what a terminal shows beyond its own glyph: C0 and C1 controls and
/// DEL (escape sequences, line breaks, carriage returns), bidirectional embeddings, overrides,
/// isolates and marks (they reorder the text around them), and the Unicode line and paragraph
/// separators.
pub fn is_unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || is_bidi_control(c)
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{2028}' | '\u{2029}'
        )
}

/// `text` for human output: each character of [`is_unsafe_on_terminal`] as its Rust escape
/// (`\u{1b}`, `\u{202e}`); borrowed unchanged when there is none.
pub fn shown(text: &str) -> Cow<'_, str> {
    escaped(text, is_unsafe_on_terminal, |out, c| {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    })
}

/// A node's JSON text for `--json` output: each character of [`is_unsafe_on_terminal`] but
/// newline and tab (JSON whitespace between values, harmless on a terminal) as its JSON escape
/// (`\u001b`). The value is unchanged where the character was inside a string, which is the
/// only place JSON allows it.
pub fn json_shown(text: &str) -> Cow<'_, str> {
    escaped(
        text,
        |c| is_unsafe_on_terminal(c) && c != '\n' && c != '\t',
        |out, c| {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        },
    )
}

fn escaped(
    text: &str,
    unsafe_char: impl Fn(char) -> bool,
    escape: impl Fn(&mut String, char),
) -> Cow<'_, str> {
    if !text.chars().any(&unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_bidi_controls_are_shown_as_escapes() {
        assert_eq!(
            shown("\u{1b}]0;pwned\u{7}\u{1b}[31mAlice\u{202E}cba"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[31mAlice\\u{202e}cba"
        );
        assert_eq!(
            shown("a\r\nforged\u{9b}2J\u{2028}"),
            "a\\u{d}\\u{a}forged\\u{9b}2J\\u{2028}"
        );
        assert_eq!(
            shown("\u{2066}x\u{2069}\u{200F}"),
            "\\u{2066}x\\u{2069}\\u{200f}"
        );
    }

    #[test]
    fn ordinary_names_in_any_script_are_printed_as_they_are() {
        for name in [
            "Zoë Ångström",
            "محمد",
            "שלום",
            "李小龙",
            "می\u{200C}خواهم",
            "👩\u{200D}💻",
        ] {
            assert!(
                matches!(shown(name), Cow::Borrowed(n) if n == name),
                "{name}"
            );
            assert!(matches!(json_shown(name), Cow::Borrowed(_)), "{name}");
        }
    }

    #[test]
    fn json_output_keeps_its_value_and_loses_its_raw_controls() {
        // serde_json escapes C0 controls itself but leaves C1 controls and bidi controls raw.
        let value = serde_json::json!({"name": "\u{9b}2J\u{202E}evil\u{1b}", "n": [1, 2]});
        let text = value.to_string();
        assert!(text.contains('\u{9b}') && text.contains('\u{202E}'));
        let safe = json_shown(&text);
        assert!(!safe.chars().any(is_unsafe_on_terminal), "{safe}");
        assert!(safe.contains("\\u009b2J\\u202eevil\\u001b"), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
        assert_eq!(json_shown("{\n\t\"a\": 1\n}"), "{\n\t\"a\": 1\n}");
    }
}
