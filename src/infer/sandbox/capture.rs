//! A bounded record of an output stream: what a sandboxed program writes is read as it comes (so a full
//! pipe never blocks it) and only its two ends are kept.

/// A bounded record of one output stream: its first and last bytes, its length, and whether a needle
/// (the harness's pass token) appeared anywhere in it.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    limit: usize,
    pub total: u64,
    needle: Vec<u8>,
    carry: Vec<u8>,
    pub found: bool,
}

impl Capture {
    pub fn new(limit: usize, needle: Option<&[u8]>) -> Self {
        Capture { limit, needle: needle.unwrap_or_default().to_vec(), ..Default::default() }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if !self.needle.is_empty() && !self.found {
            let mut window = std::mem::take(&mut self.carry);
            window.extend_from_slice(chunk);
            self.found = window.windows(self.needle.len()).any(|w| w == self.needle.as_slice());
            let keep = (self.needle.len() - 1).min(window.len());
            self.carry = window.split_off(window.len() - keep);
        }
        let half = self.limit / 2;
        let room = half.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..room]);
        self.tail.extend(&chunk[room..]);
        let excess = self.tail.len().saturating_sub(half);
        self.tail.drain(..excess);
    }

    /// The kept bytes as text, with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let dropped = self.total - (self.head.len() + tail.len()) as u64;
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if dropped > 0 {
            s += &format!("\n[… {dropped} bytes …]\n");
        }
        s + &String::from_utf8_lossy(&tail)
    }

    /// The last line that is not blank.
    pub fn last_line(&self) -> Option<String> {
        self.text().lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_keeps_both_ends_and_finds_a_needle_across_chunks() {
        let mut c = Capture::new(8, Some(b"TOKEN"));
        for chunk in [&b"abcdefTO"[..], b"KEN", b"xyz0123"] {
            c.push(chunk);
        }
        assert!(c.found);
        assert_eq!(c.total, 18);
        let text = c.text();
        assert!(text.starts_with("abcd") && text.ends_with("0123") && text.contains("[… 10 bytes …]"), "{text}");
        let mut c = Capture::new(100, Some(b"TOKEN"));
        c.push(b"TOK");
        c.push(b"EX TOKE");
        assert!(!c.found);
        assert_eq!(c.last_line().as_deref(), Some("TOKEX TOKE"));
    }
}
