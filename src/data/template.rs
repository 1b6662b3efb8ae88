//! The MFTCoder training template: role markers, `content_format`, and the text segments a record becomes.
//!
//! A record is rendered as a list of [`Segment`]s. Each segment is tokenized **on its own** (segment
//! boundaries change what BPE and SentencePiece produce, so a port must cut exactly where MFTCoder cuts) and
//! carries the loss-mask value of its tokens and whether an EOS id follows it. For a chat record with the
//! default markers the text reads
//! `"<s>system\n{S}\n<s>human\n{Q1}\n<s>bot\n{A1}\n</s>\n<s>human\n{Q2}\n<s>bot\n{A2}\n</s>\n"`,
//! with the loss on `{A}\n</s>` only.

use super::records::{Conversation, Record, Role};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The three strings that open a system, user and assistant turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMarkers {
    pub system: String,
    pub user: String,
    pub assistant: String,
}

impl Default for RoleMarkers {
    // ANCHOR: default_markers
    fn default() -> Self {
        RoleMarkers { system: "<s>system\n".into(), user: "<s>human\n".into(), assistant: "<s>bot\n".into() }
    }
    // ANCHOR_END: default_markers
}

impl RoleMarkers {
    /// Parse a `role_markers` override: `{"system": "...", "user": "...", "assistant": "..."}`.
    pub fn from_json(json: &str) -> Result<Self> {
        match serde_json::from_str(json) {
            Ok(m) => Ok(m),
            Err(e) => bail!("role_markers: {e} (expected {{\"system\": ..., \"user\": ..., \"assistant\": ...}})"),
        }
    }

    /// `tokenize_mode = "pretrain"`: no markers at all.
    pub fn empty() -> Self {
        RoleMarkers { system: String::new(), user: String::new(), assistant: String::new() }
    }
}

/// `sft` supervises the assistant turns; `pretrain` drops the markers and supervises every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizeMode {
    Sft,
    Pretrain,
}

impl std::str::FromStr for TokenizeMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sft" => Ok(TokenizeMode::Sft),
            "pretrain" => Ok(TokenizeMode::Pretrain),
            other => bail!("tokenize_mode: `{other}` is not one of sft, pretrain"),
        }
    }
}

// ANCHOR: content_format
/// MFTCoder's `content_format`: narrow and plain no-break spaces become spaces, and a newline is always
/// appended (even when the text already ends with one).
pub fn content_format(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c == '\u{202f}' || c == '\u{a0}' { ' ' } else { c }).collect();
    out.push('\n');
    out
}
// ANCHOR_END: content_format

/// One separately tokenized piece of a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// The loss-mask value of every token of this segment (and of the EOS after it).
    pub loss: bool,
    /// An EOS id follows the segment's tokens.
    pub eos: bool,
}

impl Segment {
    fn new(text: String, loss: bool, eos: bool) -> Self {
        Segment { text, loss, eos }
    }
}

// ANCHOR: segments
/// The segments of a training record (`UniformEncoder._tokenize_fields`). In pretrain mode the markers are
/// empty and every segment is supervised.
pub fn segments(record: &Record, markers: &RoleMarkers, mode: TokenizeMode) -> Result<Vec<Segment>> {
    let empty = RoleMarkers::empty();
    let m = if mode == TokenizeMode::Pretrain { &empty } else { markers };
    let all = mode == TokenizeMode::Pretrain;
    let segs = match record {
        Record::Chat(conversation) => chat_segments(conversation, m, all),
        Record::Pair { system, prompt, answer, .. } => {
            let sys_part = match system {
                Some(s) if !s.is_empty() => content_format(&format!("{}{s}", m.system)),
                _ => String::new(),
            };
            let prompt = format!("{sys_part}{}{}{}", m.user, content_format(prompt), m.assistant);
            // No "\n" segment after the EOS here, unlike chat_rounds.
            vec![Segment::new(prompt, all, false), Segment::new(content_format(answer), true, true)]
        }
        Record::Text(text) => vec![Segment::new(content_format(text), true, true)],
        Record::Preference { .. } => {
            bail!("a preference record (chosen/rejected) is for DPO, not for SFT or pretraining data")
        }
    };
    Ok(segs)
}

fn chat_segments(c: &Conversation, m: &RoleMarkers, all: bool) -> Vec<Segment> {
    let mut segs = Vec::with_capacity(2 * c.turns.len() + 1);
    if let Some(system) = &c.system {
        segs.push(Segment::new(format!("{}{}", m.system, content_format(system)), all, false));
    }
    for turn in &c.turns {
        match turn.role {
            Role::User => segs.push(Segment::new(
                format!("{}{}{}", m.user, content_format(&turn.content), m.assistant),
                all,
                false,
            )),
            Role::Assistant => {
                segs.push(Segment::new(content_format(&turn.content), true, true));
                segs.push(Segment::new("\n".into(), all, false));
            }
        }
    }
    segs
}
// ANCHOR_END: segments

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::parse_line;

    fn texts(line: &str, mode: TokenizeMode) -> Vec<(String, bool, bool)> {
        let r = parse_line(line.as_bytes()).unwrap();
        segments(&r, &RoleMarkers::default(), mode).unwrap().into_iter().map(|s| (s.text, s.loss, s.eos)).collect()
    }

    #[test]
    fn content_format_replaces_no_break_spaces_and_always_appends_a_newline() {
        assert_eq!(content_format("a\u{a0}b\u{202f}c"), "a b c\n");
        assert_eq!(content_format("x\n"), "x\n\n");
        assert_eq!(content_format(""), "\n");
    }

    #[test]
    fn chat_layout_matches_the_reference_worked_example() {
        let line = r#"{"chat_rounds":[{"role":"system","content":"Be brief"},{"role":"human","content":"2+2?"},{"role":"bot","content":"4"}]}"#;
        let t = texts(line, TokenizeMode::Sft);
        let want = [
            ("<s>system\nBe brief\n", false, false),
            ("<s>human\n2+2?\n<s>bot\n", false, false),
            ("4\n", true, true),
            ("\n", false, false),
        ];
        assert_eq!(t, want.map(|(a, b, c)| (a.to_string(), b, c)).to_vec());
        let p = texts(line, TokenizeMode::Pretrain);
        let want = [("Be brief\n", true, false), ("2+2?\n", true, false), ("4\n", true, true), ("\n", true, false)];
        assert_eq!(p, want.map(|(a, b, c)| (a.to_string(), b, c)).to_vec());
    }

    #[test]
    fn pair_system_part_is_formatted_with_its_marker_and_has_no_trailing_newline_segment() {
        let t = texts(r#"{"question":"Q","answer":"A","system":"S\u00a0s"}"#, TokenizeMode::Sft);
        assert_eq!(t, vec![("<s>system\nS s\n<s>human\nQ\n<s>bot\n".into(), false, false), ("A\n".into(), true, true)]);
        let t = texts(r#"{"question":"Q","answer":"A","system":""}"#, TokenizeMode::Sft);
        assert_eq!(t[0].0, "<s>human\nQ\n<s>bot\n");
        assert_eq!(texts(r#"{"text":"T"}"#, TokenizeMode::Sft), vec![("T\n".into(), true, true)]);
    }

    #[test]
    fn markers_override_and_modes_parse() {
        let m = RoleMarkers::from_json(
            r####"{"system":"### System:\n","user":"### Instruction:\n","assistant":"### Response:\n"}"####,
        )
        .unwrap();
        let r = parse_line(br#"{"prompt":"P","answer":"A"}"#).unwrap();
        let s = segments(&r, &m, TokenizeMode::Sft).unwrap();
        assert_eq!(s[0].text, "### Instruction:\nP\n### Response:\n");
        assert!(RoleMarkers::from_json(r#"{"system":"s","user":"u"}"#).unwrap_err().to_string().contains("assistant"));
        assert!("sst".parse::<TokenizeMode>().is_err());
        let pref =
            parse_line(br#"{"chosen":[{"role":"user","content":"q"}],"rejected":[{"role":"user","content":"q"}]}"#)
                .unwrap();
        assert!(segments(&pref, &m, TokenizeMode::Sft).unwrap_err().to_string().contains("DPO"));
    }
}
