//! Preference pairs: MFTCoder's `{"chosen": [rounds], "rejected": [rounds]}` records as token ids.
//!
//! The prompt is the chosen conversation without its last turn, in MFTCoder's chat template with the
//! generation prompt (`…<s>human\n{q}\n<s>bot\n`); each answer is its text and the tokenizer's EOS (MFTCoder's
//! `chatml_to_dpo_format`). Texts are tokenized without added special tokens, as MFTCoder's SFT data is.

use super::PreferenceConfig;
use crate::data::dataset::LongRecords;
use crate::data::records::{Conversation, Record, Role, jsonl_lines, parse_line};
use crate::infer::chat_template::{self, Role as ChatRole};
use crate::io::tokenizer::Tokenizer;
use anyhow::{Context, Result, anyhow, bail};

/// One preference example as token ids: the prompt and the two answers (each ending with EOS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairIds {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

// ANCHOR: pair_ids
/// The prompt text and the two answers of a preference record, as MFTCoder's `chatml_to_dpo_format` builds
/// them (the rejected conversation's earlier turns are not read).
pub fn pair_texts(chosen: &Conversation, rejected: &Conversation) -> Result<(String, String, String)> {
    let last_answer = |c: &Conversation, which: &str| match c.turns.last() {
        Some(turn) if turn.role == Role::Assistant => Ok(turn.content.clone()),
        _ => bail!("`{which}` must end with the bot's answer"),
    };
    let (chosen_answer, rejected_answer) = (last_answer(chosen, "chosen")?, last_answer(rejected, "rejected")?);
    let mut messages: Vec<(ChatRole, &str)> = Vec::new();
    if let Some(system) = &chosen.system {
        messages.push((ChatRole::System, system));
    }
    for turn in &chosen.turns[..chosen.turns.len() - 1] {
        let role = if turn.role == Role::User { ChatRole::User } else { ChatRole::Assistant };
        messages.push((role, &turn.content));
    }
    // earlier answers close with EOS inside the prompt text; the tokenizer turns it into the EOS id
    Ok((chat_template::render(&messages, "</s>", true)?, chosen_answer, rejected_answer))
}

/// Tokenize a pair and fit it into `max_length`: the prompt keeps its last `max_prompt_length` tokens, then
/// both answers are cut to what is left (TRL's `truncation_mode="keep_end"`).
pub fn pair_ids(
    tok: &Tokenizer,
    eos: u32,
    texts: &(String, String, String),
    max_prompt: usize,
    max_len: usize,
) -> Result<PairIds> {
    let prompt_text = texts.0.replace("</s>", &tok.id_to_token(eos).unwrap_or_else(|| "</s>".into()));
    let mut prompt = tok.encode(&prompt_text, false)?;
    let answer = |text: &str| -> Result<Vec<u32>> {
        let mut ids = tok.encode(text, false)?;
        ids.push(eos);
        Ok(ids)
    };
    let (mut chosen, mut rejected) = (answer(&texts.1)?, answer(&texts.2)?);
    if prompt.len() + chosen.len().max(rejected.len()) > max_len {
        if prompt.len() > max_prompt {
            prompt.drain(..prompt.len() - max_prompt);
        }
        let room = max_len - prompt.len();
        chosen.truncate(room);
        rejected.truncate(room);
    }
    Ok(PairIds { prompt, chosen, rejected })
}
// ANCHOR_END: pair_ids

/// Cut texts far longer than any pair can be before they are tokenized: the prompt keeps its last `limit`
/// bytes, each answer its first (what `pair_ids` keeps of them lies well inside). Whether anything was cut.
fn cut_far_beyond(texts: &mut (String, String, String), limit: usize) -> bool {
    let mut cut = false;
    if texts.0.len() > limit {
        let mut start = texts.0.len() - limit;
        while !texts.0.is_char_boundary(start) {
            start += 1;
        }
        texts.0.drain(..start);
        cut = true;
    }
    for answer in [&mut texts.1, &mut texts.2] {
        if answer.len() > limit {
            let mut end = limit;
            while !answer.is_char_boundary(end) {
                end -= 1;
            }
            answer.truncate(end);
            cut = true;
        }
    }
    cut
}

/// Every pair of the config's files, tokenized; a record that is not a preference pair names its file and line.
pub fn load_pairs(cfg: &PreferenceConfig, tok: &Tokenizer, eos: u32) -> Result<Vec<PairIds>> {
    let mut pairs = Vec::new();
    for path in &cfg.data_paths {
        let bytes = std::fs::read(path).with_context(|| format!("{path}: cannot read"))?;
        for (line_no, line) in jsonl_lines(&bytes) {
            let record = parse_line(line).map_err(|e| anyhow!("{path}:{line_no}: {e}"))?;
            let Record::Preference { chosen, rejected } = record else {
                bail!(
                    "{path}:{line_no}: a {} record; preference training needs {{\"chosen\", \"rejected\"}}",
                    record.kind()
                );
            };
            let mut texts = pair_texts(&chosen, &rejected).map_err(|e| anyhow!("{path}:{line_no}: {e}"))?;
            if cut_far_beyond(&mut texts, LongRecords::for_tokens(cfg.max_length + 1, true).limit) {
                eprintln!(
                    "warning: {path}:{line_no}: a pair far beyond max_length; its texts are cut before tokenizing"
                );
            }
            pairs.push(pair_ids(tok, eos, &texts, cfg.max_prompt_length, cfg.max_length)?);
        }
    }
    if pairs.is_empty() {
        bail!("no preference pairs in {}", cfg.data_paths.join(", "));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn long_pairs_keep_the_end_of_the_prompt_and_cut_the_answers() {
        let tok = Tokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/gqa_tied")).unwrap();
        let texts = (
            "<s>human\\nsome long question text here\\n<s>bot\\n".replace("\\n", "\n"),
            "a long answer".repeat(4),
            "no".into(),
        );
        let full = pair_ids(&tok, 2, &texts, 1000, 2000).unwrap();
        let cut = pair_ids(&tok, 2, &texts, 6, 12).unwrap();
        assert_eq!(cut.prompt, full.prompt[full.prompt.len() - 6..], "the prompt keeps its last tokens");
        assert_eq!(cut.chosen, full.chosen[..6], "the answer is cut to what is left");
        assert_eq!(cut.rejected, full.rejected, "a short answer is left whole");
        assert_eq!(*full.chosen.last().unwrap(), 2, "answers end with EOS");
    }

    #[test]
    fn texts_far_beyond_max_length_are_cut_before_tokenizing_keeping_what_pair_ids_keeps() {
        let tok = Tokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/gqa_tied")).unwrap();
        let texts = ("é question ".repeat(20_000), "answer é ".repeat(20_000), "no".to_string());
        let mut cut = texts.clone();
        assert!(cut_far_beyond(&mut cut, 1000));
        assert!(cut.0.len() <= 1000 && texts.0.ends_with(&cut.0) && texts.1.starts_with(&cut.1) && cut.2 == "no");
        let whole = pair_ids(&tok, 2, &texts, 8, 16).unwrap();
        assert_eq!(pair_ids(&tok, 2, &cut, 8, 16).unwrap(), whole, "the same ids as from the whole texts");
    }
}
