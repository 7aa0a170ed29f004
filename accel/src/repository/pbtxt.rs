//! Lenient reading of protobuf text format: Triton's config.pbtxt files may set fields that Accel's
//! ModelConfig subset does not declare (optimization, warmup, sequence batching...). prost-reflect's
//! parser rejects unknown fields, so this module walks the text with the message descriptor, blanks out
//! every field the descriptor does not know (keeping newlines, so error positions stay true), and
//! reports their paths so that the caller can log them. It also writes the colon that prost-reflect
//! requires before a list of messages (`input [ {...} ]` is valid text format, and how Triton's
//! configs are written, but prost-reflect only reads `input: [ {...} ]`). The result is then parsed
//! strictly.

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor};

/// How deeply messages and lists may nest. Triton's configs nest a handful of levels; the limit keeps
/// a hostile file from exhausting the loading thread's stack (here and in prost-reflect's parser).
pub(super) const MAX_DEPTH: usize = 64;

/// The result of a lenient parse: the message, and the paths of the fields that were ignored.
#[derive(Debug)]
pub(super) struct Parsed {
    pub message: DynamicMessage,
    pub ignored: Vec<String>,
}

/// Parses `text` as a `desc` message, ignoring fields `desc` does not declare.
pub(super) fn parse_lenient(desc: &MessageDescriptor, text: &str) -> Result<Parsed, String> {
    let tokens = tokenize(text)?;
    let mut walker = Walker {
        text,
        tokens: &tokens,
        pos: 0,
        removed: Vec::new(),
        colons: Vec::new(),
        ignored: Vec::new(),
        depth: 0,
    };
    walker.message(Some(desc), "", None)?;
    let mut blanked: Vec<u8> = text.as_bytes().to_vec();
    for (start, end) in &walker.removed {
        for byte in &mut blanked[*start..*end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }
    let mut filtered = Vec::with_capacity(blanked.len() + walker.colons.len());
    let mut colons = walker.colons.iter().peekable();
    for (i, byte) in blanked.into_iter().enumerate() {
        while colons.next_if(|&&c| c == i).is_some() {
            filtered.push(b':');
        }
        filtered.push(byte);
    }
    // Blanking replaces whole UTF-8 sequences inside removed spans, so the text stays valid UTF-8.
    let filtered = String::from_utf8(filtered).map_err(|e| e.to_string())?;
    let message = DynamicMessage::parse_text_format(desc.clone(), &filtered)
        .map_err(|e| describe_parse_error(text, &walker.colons, &e))?;
    Ok(Parsed {
        message,
        ignored: walker.ignored,
    })
}

fn describe_parse_error(text: &str, colons: &[usize], error: &prost_reflect::text_format::ParseError) -> String {
    use miette::Diagnostic;
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    // Back to an offset in the original text: drop the colons inserted before it.
    let offset = offset.map(|o| o - colons.iter().enumerate().filter(|(k, c)| *c + k < o).count());
    match offset {
        Some(offset) => {
            let (line, column) = line_column(text, offset);
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}, column {column} (`{source}`): {error}")
        }
        None => error.to_string(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// `{ } [ ] < > : ; ,`
    Punct(u8),
    /// An identifier or a number (including signs, exponents, `inf`).
    Word,
    /// A quoted string.
    Str,
}

#[derive(Clone, Copy, Debug)]
struct Spanned {
    token: Token,
    start: usize,
    end: usize,
}

fn tokenize(text: &str) -> Result<Vec<Spanned>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' | b'}' | b'[' | b']' | b'<' | b'>' | b':' | b';' | b',' => {
                tokens.push(Spanned {
                    token: Token::Punct(c),
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            b'"' | b'\'' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            let (line, column) = line_column(text, start);
                            return Err(format!("line {line}, column {column}: unterminated string"));
                        }
                        Some(b'\\') => i += 2,
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                tokens.push(Spanned {
                    token: Token::Str,
                    start,
                    end: i.min(bytes.len()),
                });
            }
            c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+') => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b'-' | b'+'))
                {
                    i += 1;
                }
                tokens.push(Spanned {
                    token: Token::Word,
                    start,
                    end: i,
                });
            }
            _ => {
                let (line, column) = line_column(text, i);
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(format!("line {line}, column {column}: unexpected character '{ch}'"));
            }
        }
    }
    Ok(tokens)
}

struct Walker<'a> {
    text: &'a str,
    tokens: &'a [Spanned],
    pos: usize,
    removed: Vec<(usize, usize)>,
    /// Offsets where a ':' must be inserted (before a message list given without one).
    colons: Vec<usize>,
    ignored: Vec<String>,
    /// Messages and lists open at the current token.
    depth: usize,
}

impl Walker<'_> {
    /// Enters a message or list, refusing more than [`MAX_DEPTH`] levels.
    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("messages and lists nest more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }

    fn peek(&self) -> Option<Spanned> {
        self.tokens.get(self.pos).copied()
    }

    fn error(&self, what: &str) -> String {
        match self.peek() {
            Some(t) => {
                let (line, column) = line_column(self.text, t.start);
                format!(
                    "line {line}, column {column}: {what}, found '{}'",
                    &self.text[t.start..t.end]
                )
            }
            None => format!("{what}, but reached the end of the file"),
        }
    }

    /// Walks the fields of one message until `close` (or the end of input for the top level).
    fn message(&mut self, desc: Option<&MessageDescriptor>, path: &str, close: Option<u8>) -> Result<(), String> {
        loop {
            let Some(t) = self.peek() else {
                return match close {
                    None => Ok(()),
                    Some(c) => Err(self.error(&format!("expected '{}'", c as char))),
                };
            };
            if let (Token::Punct(c), Some(want)) = (t.token, close)
                && c == want
            {
                self.pos += 1;
                return Ok(());
            }
            self.field(desc, path)?;
        }
    }

    fn field(&mut self, desc: Option<&MessageDescriptor>, path: &str) -> Result<(), String> {
        let Some(name_token) = self.peek() else {
            return Err(self.error("expected a field name"));
        };
        let start = name_token.start;
        let name = match name_token.token {
            Token::Word => {
                self.pos += 1;
                &self.text[name_token.start..name_token.end]
            }
            Token::Punct(b'[') => {
                // An extension or Any type URL: `[name] { ... }`. Accel declares none.
                while let Some(t) = self.peek() {
                    self.pos += 1;
                    if t.token == Token::Punct(b']') {
                        break;
                    }
                }
                &self.text[name_token.start..self.tokens[self.pos - 1].end]
            }
            _ => return Err(self.error("expected a field name")),
        };
        let field_path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        let field = desc.and_then(|d| d.get_field_by_name(name));
        let child = field.as_ref().and_then(|f| match f.kind() {
            Kind::Message(m) => Some(m),
            _ => None,
        });
        match self.peek() {
            Some(t) if t.token == Token::Punct(b':') => self.pos += 1,
            Some(t) if t.token == Token::Punct(b'[') && child.is_some() => self.colons.push(t.start),
            _ => {}
        }
        let known = field.is_some();
        let sub = if known { child.as_ref() } else { None };
        self.value(sub, &field_path)?;
        if let Some(Token::Punct(b';' | b',')) = self.peek().map(|t| t.token) {
            self.pos += 1;
        }
        // Inside an ignored field (`desc` is None) nothing more is recorded: the outer span covers it.
        if !known && desc.is_some() {
            let end = self.tokens[self.pos - 1].end;
            self.removed.push((start, end));
            self.ignored.push(field_path);
        }
        Ok(())
    }

    /// One value: a message block, a list, strings, or a word.
    fn value(&mut self, child: Option<&MessageDescriptor>, path: &str) -> Result<(), String> {
        let Some(t) = self.peek() else {
            return Err(self.error("expected a value"));
        };
        match t.token {
            Token::Punct(open @ (b'{' | b'<')) => {
                self.enter()?;
                self.pos += 1;
                self.message(child, path, Some(if open == b'{' { b'}' } else { b'>' }))?;
                self.depth -= 1;
                Ok(())
            }
            Token::Punct(b'[') => {
                self.enter()?;
                self.pos += 1;
                loop {
                    match self.peek().map(|t| t.token) {
                        Some(Token::Punct(b']')) => {
                            self.pos += 1;
                            self.depth -= 1;
                            return Ok(());
                        }
                        Some(Token::Punct(b',')) => self.pos += 1,
                        Some(_) => self.value(child, path)?,
                        None => return Err(self.error("expected ']'")),
                    }
                }
            }
            Token::Str => {
                while self.peek().map(|t| t.token) == Some(Token::Str) {
                    self.pos += 1;
                }
                Ok(())
            }
            Token::Word => {
                self.pos += 1;
                Ok(())
            }
            Token::Punct(_) => Err(self.error("expected a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_config() -> MessageDescriptor {
        accel_proto::descriptor_pool()
            .unwrap()
            .get_message_by_name(accel_proto::MODEL_CONFIG_MESSAGE)
            .unwrap()
    }

    #[test]
    fn unknown_fields_at_any_depth_are_ignored_and_reported() {
        let text = r#"
            name: "m"   # a comment
            max_batch_size: 8
            optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
            input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] is_non_linear_format_io: false } ]
            model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: 4 zero_data: true } } }]
            dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [ 4, 8 ] }
        "#;
        let parsed = parse_lenient(&model_config(), text).unwrap();
        assert_eq!(
            parsed.ignored,
            vec!["optimization", "input.is_non_linear_format_io", "model_warmup"]
        );
        let config: accel_proto::inference::ModelConfig = parsed.message.transcode_to().unwrap();
        assert_eq!(config.name, "m");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input[0].dims, vec![-1, 4]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for (open, close) in [("a { ", "} "), ("a [ ", "] "), ("a < ", "> ")] {
            let text = format!("{}{}", open.repeat(100_000), close.repeat(100_000));
            let err = parse_lenient(&model_config(), &text).unwrap_err();
            assert!(err.contains("nest more than"), "{err}");
        }
        // A list of lists inside a known field, too.
        let text = format!("input {}", "[ ".repeat(100_000));
        assert!(
            parse_lenient(&model_config(), &text)
                .unwrap_err()
                .contains("nest more than")
        );
    }

    #[test]
    fn errors_carry_a_position() {
        let err = parse_lenient(&model_config(), "name: \"m\"\nmax_batch_size: \"eight\"\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
        let err = parse_lenient(&model_config(), "input [ { name: \"x\" ").unwrap_err();
        assert!(err.contains("expected"), "{err}");
        let err = parse_lenient(&model_config(), "name: \"unterminated").unwrap_err();
        assert!(err.contains("unterminated"), "{err}");
    }
}
