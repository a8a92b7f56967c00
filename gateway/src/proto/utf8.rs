//! Incremental UTF-8 validation that fails fast.
//!
//! A text message may arrive in many frames and each frame in many reads. The validator keeps at
//! most three bytes of an unfinished code point between calls and rejects the input as soon as
//! the bytes seen so far cannot begin any valid UTF-8 text (overlong forms, surrogates and code
//! points above U+10FFFF are caught at the byte that makes them impossible), as RFC 6455 section
//! 8.1 asks. The heavy lifting is `core::str::from_utf8`, whose errors already tell an invalid
//! sequence (`error_len() == Some`) from one that merely ends early (`None`).

/// The bytes fed so far are not a prefix of any valid UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Streaming validator; `Default` is the state at the start of a message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    partial: [u8; 4],
    len: u8,
}

impl Utf8Validator {
    /// Checks the next piece of text.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(input.len());
            self.partial[have..have + take].copy_from_slice(&input[..take]);
            match core::str::from_utf8(&self.partial[..have + take]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still a valid prefix; `take < need` here, so the input is used up.
                    self.len = (have + take) as u8;
                    return Ok(());
                }
            }
            input = &input[take..];
        }
        match core::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// True when the text fed so far ends on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// Forgets any unfinished code point (start of a new message).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// Length of the sequence a lead byte starts. Only called on bytes `from_utf8` accepted as the
/// start of an unfinished sequence, so ASCII and continuation bytes never reach it.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], split: usize) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::default();
        for piece in bytes.chunks(split.max(1)) {
            v.feed(piece)?;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn valid_text_in_any_split_is_accepted() {
        let text = "κόσμε, Hello-µ@ßöäüàá-UTF-8!! \u{10ffff} \u{1f600}".as_bytes();
        for split in 1..=text.len() {
            assert_eq!(feed_split(text, split), Ok(true), "split {split}");
        }
    }

    #[test]
    fn invalid_sequences_are_rejected_in_any_split() {
        let cases: &[&[u8]] = &[
            b"\xc0\xaf",             // overlong '/'
            b"\xed\xa0\x80",         // surrogate U+D800
            b"\xf4\x90\x80\x80",     // above U+10FFFF
            b"\xf8\x88\x80\x80\x80", // 5-byte form
            b"ab\x80cd",             // lone continuation
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        ];
        for case in cases {
            for split in 1..=case.len() {
                assert_eq!(
                    feed_split(case, split),
                    Err(InvalidUtf8),
                    "{case:x?} split {split}"
                );
            }
        }
    }

    #[test]
    fn fails_at_the_first_impossible_byte_not_at_the_end() {
        // 0xf4 0x90 cannot start any code point: rejected before the sequence is complete.
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"ok \xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        // A surrogate's second byte is enough as well.
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"\xed\xa0"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_text_is_incomplete_not_invalid() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"caf\xc3"), Ok(()));
        assert!(!v.is_complete());
        assert_eq!(v.feed(b"\xa9"), Ok(()));
        assert!(v.is_complete());
    }
}
