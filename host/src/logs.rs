//! The text log's one rule: one event, one line. Some of a line's text comes from partners'
//! plugins (their log lines, what they print, their panics and refusals) and from callers
//! (emails, titles, ids); a newline or a terminal escape in it could make it pass for a line
//! of the host's own. So every control character in an event is escaped on its way to
//! stderr — except the line's own end, and the colours the formatter itself writes on a
//! terminal. (The JSON format escapes them already.)

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Stderr for the text format, escaping as the module says. `colour`: the formatter writes
/// ANSI colours, whose escape character passes.
pub(crate) struct EscapedStderr {
    pub colour: bool,
}

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping { inner: io::stderr(), colour: self.colour }
    }
}

/// A writer that is handed one whole formatted event per `write` (as tracing-subscriber's
/// formatter does) and escapes it.
pub(crate) struct Escaping<W> {
    inner: W,
    colour: bool,
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(escape(&String::from_utf8_lossy(buf), self.colour).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `event` with every control character but a final newline (and, with `colour`, the escape
/// character) written as `\n`, `\r`, `\t` or `\u{..}`; Unicode's line and paragraph
/// separators too.
pub(crate) fn escape(event: &str, colour: bool) -> String {
    let (body, end) = match event.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (event, ""),
    };
    let mut out = String::with_capacity(event.len() + 8);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' if colour => out.push(c),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        let forged = "2030-01-01T00:00:00Z  INFO addon_host::admin: forged";
        let event = format!("WARN plugin: innocent\n{forged}\r\n{forged}\u{1b}[2K\u{85}\u{2028}x\n");
        let escaped = escape(&event, false);
        assert_eq!(escaped.lines().count(), 1, "{escaped}");
        assert!(escaped.ends_with("x\n") && escaped.contains("innocent\\n2030"), "{escaped}");
        assert!(escaped.contains("\\u{1b}[2K\\u{85}\\u{2028}"), "{escaped}");
        // The formatter's own colours pass on a terminal.
        assert!(escape("\u{1b}[32mINFO\u{1b}[0m a\n", true).starts_with("\u{1b}[32m"));
    }
}
