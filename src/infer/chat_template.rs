//! MFTCoder's chat template (`MFTCoder_template`, reference §1.10), rendered without a Jinja engine.
//!
//! A leading system message is folded in front of the first user turn; a user turn is
//! `<s>human\n{text}\n`, an assistant turn `<s>bot\n{text}\n{eos}\n`, and the generation prompt `<s>bot\n`.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

// ANCHOR: chat_template
/// Render a conversation; `add_generation_prompt` appends the bot marker the model continues from.
pub fn render(messages: &[(Role, &str)], eos_token: &str, add_generation_prompt: bool) -> Result<String> {
    let (system, turns) = match messages.split_first() {
        Some(((Role::System, text), rest)) => (Some(*text), rest),
        _ => (None, messages),
    };
    let mut out = String::new();
    if let Some(system) = system {
        out.push_str(&format!("<s>system\n{system}\n"));
    }
    for (i, (role, text)) in turns.iter().enumerate() {
        match (role, i % 2) {
            (Role::User, 0) => out.push_str(&format!("<s>human\n{text}\n")),
            (Role::Assistant, 1) => out.push_str(&format!("<s>bot\n{text}\n{eos_token}\n")),
            _ => bail!("conversation roles must alternate user/assistant after an optional system message (turn {i})"),
        }
    }
    if add_generation_prompt {
        out.push_str("<s>bot\n");
    }
    Ok(out)
}
// ANCHOR_END: chat_template

/// The single-turn prompt `mftcoder generate --chat` sends.
pub fn single_turn_prompt(prompt: &str) -> String {
    render(&[(Role::User, prompt)], "", true).expect("one user turn is always valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_reference_layout() {
        assert_eq!(single_turn_prompt("hi"), "<s>human\nhi\n<s>bot\n");
        let text = render(
            &[(Role::System, "S"), (Role::User, "Q1"), (Role::Assistant, "A1"), (Role::User, "Q2")],
            "</s>",
            true,
        )
        .unwrap();
        assert_eq!(text, "<s>system\nS\n<s>human\nQ1\n<s>bot\nA1\n</s>\n<s>human\nQ2\n<s>bot\n");
    }

    #[test]
    fn rejects_broken_alternation() {
        assert!(render(&[(Role::User, "a"), (Role::User, "b")], "</s>", false).is_err());
        assert!(render(&[(Role::Assistant, "a")], "</s>", false).is_err());
    }
}
