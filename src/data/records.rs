//! MFTCoder's jsonl record schemas: one JSON object per line, recognised by its keys.
//!
//! Detection order (first match wins, as `UniformEncoder.encode` does): `prompt`+`answer`,
//! `prompt`+`response`, `input`+`output`, `instruction`+`output`, `instruction`+`response`,
//! `question`+`response`, `question`+`answer`, `query`+`answer`, then `chat_rounds` (non-empty), then `text`.
//! Pair schemas may carry a `system` string. Preference records `{"chosen": rounds, "rejected": rounds}`
//! (for DPO) are recognised before all of these. Other keys (`id`, `data_name`, …) are ignored.
//!
//! Parsing never panics: any byte string yields a record or a [`RecordError`] that says what is wrong.

use serde_json::{Map, Value};
use std::fmt;

/// Who speaks a chat turn. `human`/`user` are [`Role::User`]; `bot`/`assistant`/`gpt` are [`Role::Assistant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// A validated conversation: an optional leading system prompt, then turns alternating user, assistant, …
/// starting with the user (it may end with a user turn, which contributes no supervised tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<Turn>,
}

/// The eight prompt/answer key pairs, in detection order.
pub const PAIR_SCHEMAS: [(&str, &str); 8] = [
    ("prompt", "answer"),
    ("prompt", "response"),
    ("input", "output"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("question", "response"),
    ("question", "answer"),
    ("query", "answer"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `chat_rounds`.
    Chat(Conversation),
    /// One of [`PAIR_SCHEMAS`] (`schema` indexes it), with the optional `system` field.
    Pair { schema: usize, system: Option<String>, prompt: String, answer: String },
    /// `text`: pretraining-style, every token supervised.
    Text(String),
    /// `{"chosen": [...], "rejected": [...]}`: two conversations sharing a prompt, for preference training.
    Preference { chosen: Conversation, rejected: Conversation },
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Chat(_) => "chat_rounds",
            Record::Pair { .. } => "pair",
            Record::Text(_) => "text",
            Record::Preference { .. } => "preference",
        }
    }
}

/// What is wrong with one record (the reader adds file and line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError(pub String);

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

fn err<T>(msg: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(msg.into()))
}

/// Parse one jsonl line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Record, RecordError> {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => return err(format!("not valid UTF-8 (byte {})", e.valid_up_to())),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return err(format!("invalid JSON: {e}")),
    };
    match value {
        Value::Object(map) => parse_object(&map),
        other => err(format!("expected a JSON object, found {}", json_kind(&other))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Result<String, RecordError> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => err(format!("field `{key}` must be a string, found {}", json_kind(other))),
        None => err(format!("missing field `{key}`")),
    }
}

/// Interpret a parsed JSON object as one of the schemas.
pub fn parse_object(map: &Map<String, Value>) -> Result<Record, RecordError> {
    if map.contains_key("chosen") && map.contains_key("rejected") {
        let chosen = parse_rounds(map.get("chosen").unwrap_or(&Value::Null), "chosen")?;
        let rejected = parse_rounds(map.get("rejected").unwrap_or(&Value::Null), "rejected")?;
        return Ok(Record::Preference { chosen, rejected });
    }
    for (schema, (p, a)) in PAIR_SCHEMAS.iter().enumerate() {
        if map.contains_key(*p) && map.contains_key(*a) {
            let system = match map.get("system") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => return err(format!("field `system` must be a string, found {}", json_kind(other))),
            };
            return Ok(Record::Pair { schema, system, prompt: string_field(map, p)?, answer: string_field(map, a)? });
        }
    }
    match map.get("chat_rounds") {
        Some(Value::Array(a)) if a.is_empty() && !map.contains_key("text") => return err("`chat_rounds` is empty"),
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => return Ok(Record::Chat(parse_rounds(v, "chat_rounds")?)),
        None => {}
    }
    if map.contains_key("text") {
        return Ok(Record::Text(string_field(map, "text")?));
    }
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.truncate(8);
    err(format!(
        "unknown record schema (keys: [{}]); expected chat_rounds, text, chosen+rejected, or a pair such as prompt+answer, \
         input+output, instruction+output, question+answer",
        keys.join(", ")
    ))
}

/// `chat_rounds` (or `chosen`/`rejected`): a list of `{"role", "content"}`. Only the first may be `system`;
/// the rest must alternate user/assistant starting with the user.
pub fn parse_rounds(value: &Value, field: &str) -> Result<Conversation, RecordError> {
    let rounds = match value {
        Value::Array(a) => a,
        other => {
            return err(format!("`{field}` must be an array of {{role, content}} objects, found {}", json_kind(other)));
        }
    };
    if rounds.is_empty() {
        return err(format!("`{field}` is empty"));
    }
    let mut system = None;
    let mut turns = Vec::with_capacity(rounds.len());
    for (i, round) in rounds.iter().enumerate() {
        let obj = match round {
            Value::Object(o) => o,
            other => return err(format!("{field}[{i}] must be an object, found {}", json_kind(other))),
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return err(format!("{field}[{i}].role must be a string, found {}", json_kind(other))),
            None => return err(format!("{field}[{i}] has no `role`")),
        };
        let content = match obj.get("content") {
            Some(Value::String(c)) => c.clone(),
            Some(other) => return err(format!("{field}[{i}].content must be a string, found {}", json_kind(other))),
            None => return err(format!("{field}[{i}] has no `content`")),
        };
        let role = match role {
            "system" if i == 0 => {
                system = Some(content);
                continue;
            }
            "system" => return err(format!("{field}[{i}]: role `system` is only allowed as the first round")),
            "human" | "user" => Role::User,
            "bot" | "assistant" | "gpt" => Role::Assistant,
            other => {
                let other: String = other.chars().take(40).collect();
                return err(format!(
                    "{field}[{i}]: unknown role `{other}` (expected system, human|user, bot|assistant|gpt)"
                ));
            }
        };
        let expected = if turns.len() % 2 == 0 { Role::User } else { Role::Assistant };
        if role != expected {
            return err(format!(
                "{field}[{i}]: conversation roles must alternate user/assistant starting with the user (found {} where {} was expected)",
                if role == Role::User { "a user turn" } else { "an assistant turn" },
                if expected == Role::User { "a user turn" } else { "an assistant turn" }
            ));
        }
        turns.push(Turn { role, content });
    }
    if turns.is_empty() {
        return err(format!("`{field}` has a system prompt but no turns"));
    }
    Ok(Conversation { system, turns })
}

/// The lines of a jsonl file: `(line number from 1, bytes without the newline)`. A trailing `\r` is dropped;
/// lines holding only whitespace are skipped (a blank line is not a record).
pub fn jsonl_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes.split(|&b| b == b'\n').enumerate().filter_map(|(i, line)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) { None } else { Some((i + 1, line)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Record, RecordError> {
        parse_line(s.as_bytes())
    }

    #[test]
    fn every_pair_schema_is_recognised_in_order() {
        for (i, (p, a)) in PAIR_SCHEMAS.iter().enumerate() {
            let line = format!(r#"{{"{p}": "P", "{a}": "A", "id": 3}}"#);
            match parse(&line).unwrap() {
                Record::Pair { schema, system, prompt, answer } => {
                    assert_eq!((schema, system, prompt.as_str(), answer.as_str()), (i, None, "P", "A"))
                }
                r => panic!("{r:?}"),
            }
        }
        // prompt+answer wins over input+output and over chat_rounds/text when both are present.
        let r = parse(r#"{"input":"i","output":"o","prompt":"p","answer":"a","text":"t"}"#).unwrap();
        assert!(matches!(r, Record::Pair { schema: 0, .. }));
        let r = parse(r#"{"instruction":"i","output":"o","system":"S"}"#).unwrap();
        assert_eq!(r, Record::Pair { schema: 3, system: Some("S".into()), prompt: "i".into(), answer: "o".into() });
    }

    #[test]
    fn chat_rounds_roles_and_alternation() {
        let r = parse(
            r#"{"chat_rounds":[{"role":"system","content":"S"},{"role":"user","content":"q"},{"role":"gpt","content":"a"},{"role":"human","content":"q2"}]}"#,
        )
        .unwrap();
        let Record::Chat(c) = r else { panic!() };
        assert_eq!(c.system.as_deref(), Some("S"));
        assert_eq!(c.turns.iter().map(|t| t.role).collect::<Vec<_>>(), vec![Role::User, Role::Assistant, Role::User]);

        let bad = [
            (r#"{"chat_rounds":[{"role":"bot","content":"a"}]}"#, "must alternate"),
            (r#"{"chat_rounds":[{"role":"human","content":"q"},{"role":"human","content":"q"}]}"#, "must alternate"),
            (
                r#"{"chat_rounds":[{"role":"human","content":"q"},{"role":"system","content":"s"}]}"#,
                "only allowed as the first",
            ),
            (r#"{"chat_rounds":[{"role":"robot","content":"q"}]}"#, "unknown role `robot`"),
            (r#"{"chat_rounds":[{"role":"human","content":3}]}"#, "content must be a string"),
            (r#"{"chat_rounds":[{"role":"human"}]}"#, "has no `content`"),
            (r#"{"chat_rounds":[]}"#, "`chat_rounds` is empty"),
            (r#"{"chat_rounds":[{"role":"system","content":"s"}]}"#, "no turns"),
            (r#"{"chat_rounds":"hi"}"#, "must be an array"),
        ];
        for (line, want) in bad {
            let e = parse(line).unwrap_err().0;
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn text_preference_and_errors() {
        assert_eq!(parse(r#"{"text":"hello"}"#).unwrap(), Record::Text("hello".into()));
        // An empty chat_rounds beside a text field falls through to text, as in MFTCoder.
        assert_eq!(parse(r#"{"chat_rounds":[],"text":"t"}"#).unwrap(), Record::Text("t".into()));
        let r = parse(
            r#"{"chosen":[{"role":"human","content":"q"},{"role":"bot","content":"good"}],"rejected":[{"role":"human","content":"q"},{"role":"bot","content":"bad"}]}"#,
        )
        .unwrap();
        assert_eq!(r.kind(), "preference");
        for (line, want) in [
            ("", "invalid JSON"),
            ("[1,2]", "expected a JSON object, found an array"),
            (r#"{"id":1}"#, "unknown record schema (keys: [id])"),
            (r#"{"prompt":"p","answer":null}"#, "field `answer` must be a string, found null"),
            (r#"{"text":"t""#, "invalid JSON"),
            (r#"{"prompt":"p","answer":"a","system":1}"#, "`system` must be a string"),
        ] {
            let e = parse(line).unwrap_err().0;
            assert!(e.contains(want), "{line:?}: {e}");
        }
        assert!(parse_line(b"{\"text\":\"\xff\"}").unwrap_err().0.contains("not valid UTF-8"));
    }

    #[test]
    fn lines_are_numbered_from_one_and_blank_lines_skipped() {
        let lines: Vec<(usize, &[u8])> = jsonl_lines(b"a\r\n\n  \nb\nc").collect();
        assert_eq!(lines, vec![(1, &b"a"[..]), (4, &b"b"[..]), (5, &b"c"[..])]);
    }

    /// JSON values built from the words the parser looks at, nested a few levels.
    fn arb_json() -> impl Strategy<Value = Value> {
        const WORDS: [&str; 16] = [
            "chat_rounds",
            "role",
            "content",
            "text",
            "prompt",
            "answer",
            "system",
            "chosen",
            "rejected",
            "human",
            "user",
            "bot",
            "assistant",
            "gpt",
            "input",
            "output",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z \\n\u{a0}\u{202f}]{0,6}".prop_map(Value::String),
            proptest::sample::select(&WORDS[..]).prop_map(|w| Value::String(w.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(&WORDS[..]), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn no_byte_string_makes_the_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn no_json_value_makes_the_parser_panic(v in arb_json()) {
            let line = serde_json::to_string(&v).unwrap();
            let _ = parse_line(line.as_bytes());
        }
    }
}
