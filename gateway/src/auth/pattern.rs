//! The topic patterns of a token's `topics` and `publish` claims, as one pure function:
//! segments are separated by `/`; `*` stands for exactly one segment; `**` as the last
//! segment stands for one or more segments (any rest); every other segment matches itself.

/// Whether `pattern` covers `name` (a topic, or a command name: one segment).
///
/// `news/*` covers `news/eu` but not `news` or `news/eu/fr`; `news/**` covers `news/eu` and
/// `news/eu/fr` but not `news`; `**` alone covers every name. A `**` anywhere but at the end,
/// an empty pattern and an empty segment cover nothing (a mistyped claim grants nothing rather
/// than more than meant). A segment is never partly a wildcard: `news*` is a literal segment.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() || name.is_empty() {
        return false;
    }
    let mut want = pattern.split('/').peekable();
    let mut have = name.split('/');
    while let Some(p) = want.next() {
        if p == "**" {
            // Any rest, of at least one segment; only as the last segment of the pattern.
            return want.peek().is_none() && have.next().is_some_and(|s| !s.is_empty());
        }
        let Some(s) = have.next() else {
            return false;
        };
        if p.is_empty() || s.is_empty() || (p != "*" && p != s) {
            return false;
        }
    }
    have.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns() {
        let table = [
            // Literal patterns match themselves only.
            ("news/eu", "news/eu", true),
            ("news/eu", "news/us", false),
            ("news/eu", "news/eu/fr", false),
            ("news/eu", "news", false),
            ("news", "news", true),
            // `*` is exactly one segment.
            ("news/*", "news/eu", true),
            ("news/*", "news", false),
            ("news/*", "news/eu/fr", false),
            ("*/eu", "news/eu", true),
            ("*/eu", "sport/eu", true),
            ("*/eu", "news/us", false),
            ("*", "lobby", true),
            ("*", "chat/lobby", false),
            ("chat/*/x", "chat/a/x", true),
            ("chat/*/x", "chat/a/y", false),
            // A trailing `**` is one or more segments.
            ("news/**", "news/eu", true),
            ("news/**", "news/eu/fr", true),
            ("news/**", "news", false),
            ("news/**", "newsy/eu", false),
            ("**", "news", true),
            ("**", "news/eu/fr", true),
            ("*/**", "news/eu", true),
            ("*/**", "news", false),
            // `**` elsewhere, partial wildcards and empty parts grant nothing.
            ("**/eu", "news/eu", false),
            ("news/**/fr", "news/eu/fr", false),
            ("news*", "newsy", false),
            ("news*", "news", false),
            ("n*", "n*", true),
            ("", "news", false),
            ("news", "", false),
            ("", "", false),
            ("news//eu", "news//eu", false),
            ("news/", "news/", false),
            ("news/*", "news/", false),
            ("news/**", "news/", false),
            ("/news", "/news", false),
        ];
        for (pattern, name, want) in table {
            assert_eq!(
                pattern_matches(pattern, name),
                want,
                "{pattern:?} on {name:?}"
            );
        }
    }
}
