//! What `--command NAME=COMMAND LINE` configures: the flag's value parsed into a name and the
//! words of the command, split as a POSIX shell splits a line (whitespace, single quotes,
//! double quotes, backslashes) without any shell running it. The worker that runs a command
//! per connection is `server::worker::commands`.
//!
//! Only quoting is understood: there are no variables, globs, pipes or redirections. So that a
//! line written for a shell does not silently mean something else, an unquoted `| & ; < > ( )
//! $` or backquote is an error; a pipeline is written `sh -c '...'`.

use std::fmt;

/// A configured command: the name in `/ws/cmd/NAME` and the words of its command line (the
/// program first).
pub type CommandSpec = (String, Vec<String>);

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// A quote was opened and never closed.
    UnclosedQuote(char),
    /// The line ends with a backslash that escapes nothing.
    TrailingBackslash,
    /// A character that only a shell gives meaning to, unquoted.
    ShellOperator(char),
    /// No words at all.
    Empty,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::UnclosedQuote(q) => write!(f, "a {q} quote is never closed"),
            SplitError::TrailingBackslash => f.write_str("the line ends with a lone backslash"),
            SplitError::ShellOperator(c) => write!(
                f,
                "'{c}' means something only to a shell and no shell runs this line: quote it, \
                 or run sh -c '...'"
            ),
            SplitError::Empty => f.write_str("the command line is empty"),
        }
    }
}

impl std::error::Error for SplitError {}

/// Characters a shell would interpret (operators, expansions), refused unquoted.
const SHELL_ONLY: &[char] = &['|', '&', ';', '<', '>', '(', ')', '$', '`'];

/// Splits a command line into words the way a POSIX shell does, quotes and backslashes
/// included; see the module documentation for what is refused.
pub fn split_words(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    // The word being built; `None` between words (so `''` still makes an empty word).
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(SplitError::UnclosedQuote('\'')),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        // Inside double quotes a backslash escapes only these; a
                        // backslash-newline disappears.
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(SplitError::UnclosedQuote('"')),
                        },
                        Some(c) => w.push(c),
                        None => return Err(SplitError::UnclosedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(SplitError::TrailingBackslash),
            },
            c if SHELL_ONLY.contains(&c) => return Err(SplitError::ShellOperator(c)),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

/// Parses the value of `--command`: `NAME=COMMAND LINE`, NAME one path segment of
/// `[A-Za-z0-9_.-]` (as a feed name).
pub fn parse_command_flag(s: &str) -> Result<CommandSpec, String> {
    let Some((name, line)) = s.split_once('=') else {
        return Err(format!(
            "'{s}' is not NAME=COMMAND LINE (try upper=sed -u 's/.*/\\U&/')"
        ));
    };
    if !crate::feeds::is_valid_feed_name(name) {
        return Err(format!(
            "'{name}' is not a command name: use 1 to 128 of A-Z a-z 0-9 _ . - (no slash)"
        ));
    }
    let words = split_words(line).map_err(|e| format!("--command {name}: {e}"))?;
    Ok((name.to_owned(), words))
}

/// Checks configured commands as [`crate::server::Server::start`] receives them: valid,
/// distinct names and a program for each.
pub fn check_commands(commands: &[CommandSpec]) -> Result<(), String> {
    for (i, (name, words)) in commands.iter().enumerate() {
        if !crate::feeds::is_valid_feed_name(name) {
            return Err(format!(
                "--command {name}=..: the name must be 1 to 128 of [A-Za-z0-9_.-] with no slash"
            ));
        }
        if words.first().is_none_or(|w| w.is_empty()) {
            return Err(format!("--command {name}=..: no program to run"));
        }
        if commands[..i].iter().any(|(n, _)| n == name) {
            return Err(format!(
                "--command {name}=..: the name {name:?} is given twice"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        let table: &[(&str, &[&str])] = &[
            ("sed -u s/a/b/", &["sed", "-u", "s/a/b/"]),
            ("  cat\t-n\n", &["cat", "-n"]),
            (
                "sh -c 'trap \"\" INT; sleep 9'",
                &["sh", "-c", "trap \"\" INT; sleep 9"],
            ),
            ("echo \"a b\" c", &["echo", "a b", "c"]),
            ("echo a\"b c\"d", &["echo", "ab cd"]),
            ("echo '' x", &["echo", "", "x"]),
            ("echo \"\"", &["echo", ""]),
            ("echo a\\ b", &["echo", "a b"]),
            ("echo \\'x", &["echo", "'x"]),
            ("echo \"\\\"q\\\" \\\\ \\n\"", &["echo", "\"q\" \\ \\n"]),
            ("echo '\\n'", &["echo", "\\n"]),
            ("echo a\\\nb", &["echo", "ab"]),
            ("echo 'é€😀'", &["echo", "é€😀"]),
            ("sed -u 's/a*/[&]/g'", &["sed", "-u", "s/a*/[&]/g"]),
            ("echo \"$HOME\"", &["echo", "$HOME"]),
            ("sed -u \"s/.*/\\U&/\"", &["sed", "-u", "s/.*/\\U&/"]),
            (
                "grep --line-buffered '|'",
                &["grep", "--line-buffered", "|"],
            ),
        ];
        for (line, want) in table {
            let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
            assert_eq!(split_words(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn refuses_what_a_shell_would_interpret() {
        let table = [
            ("echo 'x", SplitError::UnclosedQuote('\'')),
            ("echo \"x", SplitError::UnclosedQuote('"')),
            ("echo \"x\\", SplitError::UnclosedQuote('"')),
            ("echo x\\", SplitError::TrailingBackslash),
            ("ls | grep a", SplitError::ShellOperator('|')),
            ("sleep 1 &", SplitError::ShellOperator('&')),
            ("a; b", SplitError::ShellOperator(';')),
            ("cat < f", SplitError::ShellOperator('<')),
            ("echo > f", SplitError::ShellOperator('>')),
            ("echo $HOME", SplitError::ShellOperator('$')),
            ("echo `id`", SplitError::ShellOperator('`')),
            ("(x)", SplitError::ShellOperator('(')),
            ("", SplitError::Empty),
            (" \t ", SplitError::Empty),
        ];
        for (line, want) in table {
            assert_eq!(split_words(line), Err(want), "{line:?}");
        }
    }

    #[test]
    fn command_flags() {
        assert_eq!(
            parse_command_flag("upper=sed -u 's/a/b/'"),
            Ok((
                "upper".into(),
                vec!["sed".into(), "-u".into(), "s/a/b/".into()]
            ))
        );
        assert_eq!(
            parse_command_flag("eq=printf a=b"),
            Ok(("eq".into(), vec!["printf".into(), "a=b".into()]))
        );
        for bad in [
            "upper",
            "=cat",
            "a/b=cat",
            "..=cat",
            "x=",
            "x=echo 'y",
            "x=ls|wc",
        ] {
            let e = parse_command_flag(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(parse_command_flag("x=ls|wc").unwrap_err().contains("sh -c"));
        let ok = vec![("a".to_owned(), vec!["cat".to_owned()])];
        assert_eq!(check_commands(&ok), Ok(()));
        let twice = vec![ok[0].clone(), ok[0].clone()];
        assert!(check_commands(&twice).unwrap_err().contains("twice"));
        let empty = vec![("a".to_owned(), vec![])];
        assert!(check_commands(&empty).is_err());
    }
}
