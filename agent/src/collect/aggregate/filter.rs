//! Which samples a query keeps: by thread name now, by trace and span later.

use super::stacks::ThreadInfo;

/// A shell-style pattern: `*` matches any run of characters, `?` any one,
/// everything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob(String);

impl Glob {
    pub(crate) fn new(pattern: &str) -> Self {
        Glob(pattern.to_owned())
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = text.chars().collect();
        // Classic two-pointer wildcard match with backtracking to the last
        // `*`: linear in practice, never exponential.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == '?' || c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == '*')
    }
}

/// Conditions a sample must meet to be part of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Thread names to keep.
    pub(crate) thread: Option<Glob>,
}

impl Filter {
    pub(crate) fn admits_thread(&self, thread: &ThreadInfo) -> bool {
        self.thread
            .as_ref()
            .is_none_or(|glob| glob.matches(&thread.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        let cases = [
            ("tokio-*", "tokio-runtime-w", true),
            ("tokio-*", "main", false),
            ("*", "", true),
            ("busy-?", "busy-1", true),
            ("busy-?", "busy-10", false),
            ("*worker*", "http-worker-3", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("exact", "exact", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Glob::new(pattern).matches(text),
                expected,
                "{pattern} vs {text}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The obvious exponential matcher, as the reference.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some((&p, rest)) => text
                .split_first()
                .is_some_and(|(&t, text)| (p == '?' || p == t) && reference(rest, text)),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(pattern in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(Glob::new(&pattern).matches(&text), reference(&p, &t));
        }

        #[test]
        fn any_glob_on_any_name_terminates(pattern in ".{0,64}", text in ".{0,64}") {
            let _ = Glob::new(&pattern).matches(&text);
        }
    }
}
