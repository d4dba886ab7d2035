//! Guest-controlled text on its way to the embedder's logs: control characters (ANSI escapes,
//! newlines that would forge log lines) are escaped, so what a guest writes can never pass for
//! the embedder's own output.

use std::fmt;

/// `text` for display, with control characters and backslashes escaped (`\n`, `\u{1b}`, `\\`).
pub(crate) fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// See [`escaped`].
pub(crate) struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        let hostile = "ok \u{1b}[31mred\u{1b}[0m\nINFO forged line\\ é";
        assert_eq!(
            escaped(hostile).to_string(),
            "ok \\u{1b}[31mred\\u{1b}[0m\\nINFO forged line\\\\ é"
        );
    }
}
