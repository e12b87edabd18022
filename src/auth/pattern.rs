//! Topic patterns of permissions: `*` matches any run of characters (also none and also
//! dots), `?` exactly one; everything else matches itself. `{sub}` in a personal-topic
//! rule is replaced by the token's subject before matching. Matching is iterative
//! (no backtracking blow-up).

/// True when `topic` matches `pattern`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), topic.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_grant_exactly_what_they_say() {
        for (pattern, topic, expected) in [
            ("chat.*", "chat.room1", true),
            ("chat.*", "chat.", true),
            ("chat.*", "chatroom", false),
            ("chat.*", "other.chat.x", false),
            ("*", "anything.at.all", true),
            ("user.42", "user.42", true),
            ("user.42", "user.420", false),
            ("user.?", "user.4", true),
            ("user.?", "user.42", false),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-x-c", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }
}
