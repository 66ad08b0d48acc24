//! The crate's top-level modules depend on each other in one direction only.
//!
//! `agent/src/lib.rs` declares its top-level modules in the order data flows
//! through them, and a module may use only modules declared above it. This
//! test reads the sources and checks that rule, so a back-edge (and with it
//! any cycle) fails the build's tests instead of waiting for a reviewer.
//!
//! What counts as a use of module `X`: any path that starts `crate::X`
//! (in `use` declarations and inline in code, `$crate::X` in macros too),
//! each item of a group `crate::{X, Y::z}`, and a path to a name the crate
//! root re-exports (`crate::Error` counts as a use of the module whose item
//! `lib.rs` re-exports under that name). Comments, string and character
//! literals, and items compiled only for unit tests (`#[cfg(test)]` or
//! `#[cfg(all(test, ..))]` on a `mod tests { .. }` block, a function, a
//! `use`) are not code the crate ships, so they are skipped.
//!
//! Not followed: `super::` paths. Inside a top-level module they cannot
//! leave it without `super::super::..` chains, and the crate has none; a
//! module that starts using them to reach a sibling would escape this check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[test]
fn top_level_modules_use_only_modules_declared_above_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = CrateRoot::parse(&read(&src.join("lib.rs")));
    assert!(
        root.modules.len() >= 2,
        "found fewer than two `mod` declarations in lib.rs: {:?}",
        root.modules
    );
    let mut files = Vec::new();
    collect_rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src").to_owned();
        let Some(module) = top_level_module(&relative) else {
            continue; // lib.rs: the root itself
        };
        let shown = Path::new("agent/src").join(&relative);
        let Some(rank) = root.rank(&module) else {
            problems.push(format!(
                "{}: belongs to `{module}`, which lib.rs does not declare",
                shown.display()
            ));
            continue;
        };
        for reference in crate_references(&read(path)) {
            let target = match root.resolve(&reference.name) {
                Resolved::Module(target) => target,
                Resolved::RootItem => continue,
                Resolved::Unknown => {
                    problems.push(format!(
                        "{}:{}: `crate::{}` names neither a module lib.rs declares nor an item it defines or re-exports",
                        shown.display(),
                        reference.line,
                        reference.name
                    ));
                    continue;
                }
            };
            if target == module {
                continue;
            }
            *edges.entry((module.clone(), target.clone())).or_default() += 1;
            let target_rank = root.rank(&target).expect("resolved modules are declared");
            if target_rank > rank {
                problems.push(format!(
                    "{}:{}: `{module}` uses `{target}` (via `crate::{}`), but lib.rs declares `{target}` below `{module}`",
                    shown.display(),
                    reference.line,
                    reference.name
                ));
            }
        }
    }
    assert!(
        !edges.is_empty(),
        "no use of one top-level module by another was found: the scanner is broken"
    );
    if !problems.is_empty() {
        let mut message = format!(
            "lib.rs declares, in data-flow order: {}\n",
            root.modules.join(" → ")
        );
        for problem in &problems {
            let _ = writeln!(message, "  {problem}");
        }
        panic!("{message}");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
}

/// The top-level module a file under `src/` belongs to: `sampler` for
/// `sampler/unwind/mod.rs`, `stats` for `stats.rs`, `None` for `lib.rs`.
fn top_level_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_owned()),
        None => Some(first.to_owned()),
    }
}

// === The crate root ===

/// What `lib.rs` says about the crate's top level.
#[derive(Debug, Default)]
struct CrateRoot {
    /// Top-level modules, in declaration order.
    modules: Vec<String>,
    /// Names the root brings in with `use`, and the module each comes from.
    reexports: HashMap<String, String>,
    /// Items `lib.rs` itself defines (`start`, ...).
    items: HashSet<String>,
}

enum Resolved {
    Module(String),
    RootItem,
    Unknown,
}

impl CrateRoot {
    fn parse(source: &str) -> CrateRoot {
        let tokens = shipped_tokens(tokenize(source));
        let mut root = CrateRoot::default();
        let mut depth = 0usize;
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i].kind {
                Kind::Punct('{') => depth += 1,
                Kind::Punct('}') => depth = depth.saturating_sub(1),
                Kind::Ident(word) if depth == 0 => match word.as_str() {
                    "mod" => {
                        if let Some(name) = ident_at(&tokens, i + 1) {
                            root.modules.push(name.to_owned());
                        }
                    }
                    "use" => {
                        let end = statement_end(&tokens, i);
                        root.add_use(&tokens[i + 1..end]);
                        i = end;
                    }
                    "fn" | "struct" | "enum" | "union" | "trait" | "type" | "const" | "static" => {
                        if let Some(name) = ident_at(&tokens, i + 1) {
                            root.items.insert(name.to_owned());
                        }
                    }
                    "macro_rules" => {
                        if let Some(name) = ident_at(&tokens, i + 2) {
                            root.items.insert(name.to_owned());
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
            i += 1;
        }
        root
    }

    /// Records the names a root `use` tree (`a::b::{C, D as E}`) brings in.
    fn add_use(&mut self, tree: &[Token]) {
        let mut path: Vec<&str> = tree
            .iter()
            .take_while(|t| !matches!(t.kind, Kind::Punct('{')))
            .filter_map(|t| t.ident())
            .collect();
        if path.first() == Some(&"crate") {
            path.remove(0);
        }
        let Some(&module) = path.first() else {
            return;
        };
        for name in names_brought_in(tree) {
            self.reexports.insert(name, module.to_owned());
        }
    }

    fn rank(&self, module: &str) -> Option<usize> {
        self.modules.iter().position(|m| m == module)
    }

    fn resolve(&self, name: &str) -> Resolved {
        if self.rank(name).is_some() {
            Resolved::Module(name.to_owned())
        } else if let Some(module) = self.reexports.get(name) {
            Resolved::Module(module.clone())
        } else if self.items.contains(name) {
            Resolved::RootItem
        } else {
            Resolved::Unknown
        }
    }
}

fn ident_at(tokens: &[Token], index: usize) -> Option<&str> {
    tokens.get(index).and_then(Token::ident)
}

/// The index of the `;` ending the statement that starts at `start`.
fn statement_end(tokens: &[Token], start: usize) -> usize {
    tokens[start..]
        .iter()
        .position(|t| t.kind == Kind::Punct(';'))
        .map_or(tokens.len(), |offset| start + offset)
}

/// The names a use tree brings in: the last segment of each leaf path, or
/// its `as` alias (`self` in a group stands for the segment before it).
fn names_brought_in(tree: &[Token]) -> Vec<String> {
    let mut names = Vec::new();
    leaf_names(tree, None, &mut names);
    names
}

fn leaf_names(tree: &[Token], parent: Option<&str>, names: &mut Vec<String>) {
    if let Some(open) = tree.iter().position(|t| t.kind == Kind::Punct('{')) {
        let close = matching(tree, open).unwrap_or(tree.len());
        let group_parent = tree[..open].iter().rev().find_map(Token::ident).or(parent);
        for item in split_top_level(&tree[open + 1..close], ',') {
            leaf_names(item, group_parent, names);
        }
        return;
    }
    let words: Vec<&str> = tree.iter().filter_map(Token::ident).collect();
    let name = match words.as_slice() {
        [.., "as", alias] => Some(*alias),
        [.., "self"] => parent,
        [.., last] => Some(*last),
        [] => None,
    };
    if let Some(name) = name.filter(|n| *n != "_") {
        names.push(name.to_owned());
    }
}

// === References to `crate::` paths ===

/// One `crate::NAME` path in a file.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    /// The path's first segment after `crate`.
    name: String,
    line: usize,
}

/// Every `crate::NAME` and `crate::{NAME, ..}` in the shipped code of a file.
fn crate_references(source: &str) -> Vec<Reference> {
    let tokens = shipped_tokens(tokenize(source));
    let mut references = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_path_start = tokens[i].ident() == Some("crate")
            && matches!(tokens.get(i + 1), Some(t) if t.kind == Kind::Punct(':'))
            && matches!(tokens.get(i + 2), Some(t) if t.kind == Kind::Punct(':'));
        if !is_path_start {
            i += 1;
            continue;
        }
        i += 3;
        match tokens.get(i) {
            Some(Token {
                kind: Kind::Ident(name),
                line,
            }) => references.push(Reference {
                name: name.clone(),
                line: *line,
            }),
            Some(Token {
                kind: Kind::Punct('{'),
                ..
            }) => i = group_references(&tokens, i, &mut references),
            _ => {}
        }
    }
    references
}

/// Adds the first segment of each item of the group opening at `open`;
/// returns the index after its closing `}`.
fn group_references(tokens: &[Token], open: usize, references: &mut Vec<Reference>) -> usize {
    let mut depth = 0usize;
    let mut at_item_start = true;
    for (offset, token) in tokens[open..].iter().enumerate() {
        match &token.kind {
            Kind::Punct('{') => {
                depth += 1;
                if depth > 1 {
                    at_item_start = false;
                }
            }
            Kind::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return open + offset + 1;
                }
            }
            Kind::Punct(',') if depth == 1 => at_item_start = true,
            Kind::Ident(name) if depth == 1 && at_item_start => {
                if name != "self" {
                    references.push(Reference {
                        name: name.clone(),
                        line: token.line,
                    });
                }
                at_item_start = false;
            }
            _ => at_item_start = false,
        }
    }
    tokens.len()
}

// === Skipping test-only items ===

/// The tokens of the code that ships: items behind a test-only `cfg` are
/// dropped (the whole file, for an inner `#![cfg(test)]`).
fn shipped_tokens(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if let Some((attribute_end, inner)) = test_only_attribute(&tokens, i) {
            if inner {
                return Vec::new();
            }
            i = item_end(&tokens, skip_attributes(&tokens, attribute_end));
            continue;
        }
        kept.push(tokens[i].clone());
        i += 1;
    }
    kept
}

/// If a `#[cfg(..)]` (or `#![cfg(..)]`) that holds only in test builds
/// starts at `i`: the index after it, and whether it is an inner attribute.
fn test_only_attribute(tokens: &[Token], i: usize) -> Option<(usize, bool)> {
    if tokens[i].kind != Kind::Punct('#') {
        return None;
    }
    let inner = tokens.get(i + 1)?.kind == Kind::Punct('!');
    let open = if inner { i + 2 } else { i + 1 };
    if tokens.get(open)?.kind != Kind::Punct('[') || tokens.get(open + 1)?.ident() != Some("cfg") {
        return None;
    }
    let close = matching(tokens, open)?;
    let predicate = &tokens[open + 2..close];
    // `(` predicate `)`
    let predicate = predicate.get(1..predicate.len().checked_sub(1)?)?;
    is_test_only(predicate).then_some((close + 1, inner))
}

/// `test`, or `all(..)` with `test` among its conditions.
fn is_test_only(predicate: &[Token]) -> bool {
    match predicate {
        [only] => only.ident() == Some("test"),
        [first, open, conditions @ .., close]
            if first.ident() == Some("all")
                && open.kind == Kind::Punct('(')
                && close.kind == Kind::Punct(')') =>
        {
            split_top_level(conditions, ',')
                .iter()
                .any(|condition| is_test_only(condition))
        }
        _ => false,
    }
}

/// Splits on `separator` outside any brackets.
fn split_top_level(tokens: &[Token], separator: char) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token.kind {
            Kind::Punct('(' | '[' | '{') => depth += 1,
            Kind::Punct(')' | ']' | '}') => depth -= 1,
            Kind::Punct(c) if c == separator && depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tokens[start..]);
    parts
}

/// Skips the outer attributes starting at `i`.
fn skip_attributes(tokens: &[Token], mut i: usize) -> usize {
    while tokens.get(i).is_some_and(|t| t.kind == Kind::Punct('#'))
        && tokens
            .get(i + 1)
            .is_some_and(|t| t.kind == Kind::Punct('['))
    {
        match matching(tokens, i + 1) {
            Some(close) => i = close + 1,
            None => return tokens.len(),
        }
    }
    i
}

/// The index after the item starting at `i`: after the `;` that ends it, or
/// after the `}` closing its body, whichever comes first outside brackets.
fn item_end(tokens: &[Token], i: usize) -> usize {
    let mut depth = 0usize;
    for (offset, token) in tokens[i..].iter().enumerate() {
        match token.kind {
            Kind::Punct('(' | '[') => depth += 1,
            Kind::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Kind::Punct(';') if depth == 0 => return i + offset + 1,
            Kind::Punct('{') if depth == 0 => {
                return matching(tokens, i + offset).map_or(tokens.len(), |close| close + 1);
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The index of the bracket closing the one at `open`.
fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (offset, token) in tokens[open..].iter().enumerate() {
        match token.kind {
            Kind::Punct('(' | '[' | '{') => depth += 1,
            Kind::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + offset);
                }
            }
            _ => {}
        }
    }
    None
}

// === A small Rust lexer ===

/// Enough of Rust's lexical grammar to see code as tokens: comments
/// (nested block comments too), string, raw string, byte and character
/// literals, and lifetimes are recognised so their contents never look
/// like paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Ident(String),
    Punct(char),
    /// A literal or lifetime; its text does not matter here.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// 1-based.
    line: usize,
}

impl Token {
    fn ident(&self) -> Option<&str> {
        match &self.kind {
            Kind::Ident(word) => Some(word),
            _ => None,
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: usize,
}

fn tokenize(source: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: source.chars().collect(),
        at: 0,
        line: 1,
    };
    let mut tokens = Vec::new();
    while let Some(token) = lexer.next_token() {
        tokens.push(token);
    }
    tokens
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn next_token(&mut self) -> Option<Token> {
        loop {
            let c = self.peek(0)?;
            if c.is_whitespace() {
                self.bump();
            } else if c == '/' && self.peek(1) == Some('/') {
                while self.peek(0).is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c == '/' && self.peek(1) == Some('*') {
                self.skip_block_comment();
            } else {
                break;
            }
        }
        let line = self.line;
        let c = self.peek(0)?;
        let kind = if c == '"' {
            self.skip_quoted('"');
            Kind::Other
        } else if c == '\'' {
            self.skip_char_or_lifetime();
            Kind::Other
        } else if c.is_ascii_digit() {
            self.skip_number();
            Kind::Other
        } else if is_ident_start(c) {
            self.word()
        } else {
            self.bump();
            Kind::Punct(c)
        };
        Some(Token { kind, line })
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                depth += 1;
                self.bump();
            } else if c == '*' && self.peek(1) == Some('/') {
                depth -= 1;
                self.bump();
                if depth == 0 {
                    self.bump();
                    return;
                }
            }
            self.bump();
        }
    }

    /// A `"` or `'` delimited literal with backslash escapes.
    fn skip_quoted(&mut self, quote: char) {
        self.bump();
        while let Some(c) = self.bump() {
            if c == '\\' {
                self.bump();
            } else if c == quote {
                return;
            }
        }
    }

    /// `'x'`, `'\n'`, `'\u{1F600}'`, or a lifetime or label `'a`.
    fn skip_char_or_lifetime(&mut self) {
        if self.peek(1) == Some('\\') || self.peek(2) == Some('\'') {
            self.skip_quoted('\'');
        } else {
            self.bump();
            while self.peek(0).is_some_and(is_ident_continue) {
                self.bump();
            }
        }
    }

    fn skip_number(&mut self) {
        while let Some(c) = self.peek(0) {
            let fraction = c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit());
            if is_ident_continue(c) || fraction {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// An identifier or keyword, or a literal that starts like one: byte and
    /// C strings (`b"..."`, `c"..."`), raw strings (`r#"..."#`, `br".."`),
    /// byte characters (`b'x'`); `r#ident` is the identifier `ident`.
    fn word(&mut self) -> Kind {
        let start = self.at;
        while self.peek(0).is_some_and(is_ident_continue) {
            self.bump();
        }
        let word: String = self.chars[start..self.at].iter().collect();
        let next = self.peek(0);
        match (word.as_str(), next) {
            ("b" | "c", Some('"')) => {
                self.skip_quoted('"');
                Kind::Other
            }
            ("b", Some('\'')) => {
                self.skip_quoted('\'');
                Kind::Other
            }
            ("r" | "br" | "cr", Some('"' | '#')) => self.raw_string_or_ident(word),
            _ => Kind::Ident(word),
        }
    }

    fn raw_string_or_ident(&mut self, prefix: String) -> Kind {
        let mut hashes = 0;
        while self.peek(hashes) == Some('#') {
            hashes += 1;
        }
        if self.peek(hashes) != Some('"') {
            if prefix == "r" && hashes == 1 && self.peek(1).is_some_and(is_ident_start) {
                self.bump();
                let start = self.at;
                while self.peek(0).is_some_and(is_ident_continue) {
                    self.bump();
                }
                return Kind::Ident(self.chars[start..self.at].iter().collect());
            }
            return Kind::Ident(prefix);
        }
        for _ in 0..=hashes {
            self.bump();
        }
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|k| self.peek(k) == Some('#')) {
                for _ in 0..hashes {
                    self.bump();
                }
                break;
            }
        }
        Kind::Other
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

// === The scanner's own checks ===

fn names(source: &str) -> Vec<(String, usize)> {
    crate_references(source)
        .into_iter()
        .map(|r| (r.name, r.line))
        .collect()
}

#[test]
fn scanner_finds_use_lines_inline_paths_and_groups() {
    let source = "use crate::config::Config;\n\
                  use crate::{sampler, stats::Stats};\n\
                  fn f() { let _ = crate::render::folded(); }\n\
                  use crate::{\n    wire::Wire,\n    self,\n};\n\
                  macro_rules! m { () => { $crate::sync::lock() } }\n";
    assert_eq!(
        names(source),
        [
            ("config".to_owned(), 1),
            ("sampler".to_owned(), 2),
            ("stats".to_owned(), 2),
            ("render".to_owned(), 3),
            ("wire".to_owned(), 5),
            ("sync".to_owned(), 8),
        ]
    );
}

#[test]
fn scanner_ignores_comments_literals_and_visibility() {
    let source = "// use crate::agent;\n\
                  /* crate::agent /* nested */ crate::agent */\n\
                  /// [`crate::agent`]\n\
                  const A: &str = \"crate::agent // not a comment\"; use crate::wire;\n\
                  const B: &str = r#\"crate::agent \" still raw\"#;\n\
                  const C: char = '\"'; const D: &[u8] = b\"crate::agent\";\n\
                  pub(crate) fn f<'a>(x: &'a str) -> &'a str { x }\n\
                  pub(in crate::sampler) struct S;\n";
    assert_eq!(
        names(source),
        [("wire".to_owned(), 4), ("sampler".to_owned(), 8)]
    );
}

#[test]
fn scanner_skips_items_compiled_only_for_tests() {
    let source = "use crate::stats;\n\
                  #[cfg(test)]\nmod tests {\n    use crate::agent;\n    fn f() { crate::agent::x(); }\n}\n\
                  #[cfg(all(test, not(smolder_loom)))]\n#[allow(unused)]\nmod more { use crate::agent; }\n\
                  #[cfg(test)]\nfn helper() -> [u8; 2] { crate::agent::y() }\n\
                  #[cfg(test)]\nuse crate::agent::Z;\n\
                  #[cfg(not(test))]\nuse crate::wire;\n\
                  #[cfg(any(test, feature = \"x\"))]\nuse crate::sync;\n";
    assert_eq!(
        names(source),
        [
            ("stats".to_owned(), 1),
            ("wire".to_owned(), 15),
            ("sync".to_owned(), 17),
        ]
    );
}

#[test]
fn crate_root_lists_modules_in_order_and_resolves_reexports() {
    let root = CrateRoot::parse(
        "//! docs mention mod fake;\n\
         mod sync;\n#[cfg(x)]\npub(crate) mod config;\nmod spans;\n\
         pub use config::{Builder, Engine as Motor};\n\
         pub use spans::layer::{self as layer_module, SpanLayer, tracing_layer};\n\
         pub use crate::sync::lock;\n\
         pub fn start() {}\n\
         #[cfg(test)]\nmod tests { pub struct Hidden; }\n",
    );
    assert_eq!(root.modules, ["sync", "config", "spans"]);
    let module = |name: &str| match root.resolve(name) {
        Resolved::Module(m) => m,
        Resolved::RootItem => "<root>".to_owned(),
        Resolved::Unknown => "<unknown>".to_owned(),
    };
    assert_eq!(module("Builder"), "config");
    assert_eq!(module("Motor"), "config");
    assert_eq!(module("Engine"), "<unknown>");
    assert_eq!(module("layer_module"), "spans");
    assert_eq!(module("SpanLayer"), "spans");
    assert_eq!(module("tracing_layer"), "spans");
    assert_eq!(module("lock"), "sync");
    assert_eq!(module("spans"), "spans");
    assert_eq!(module("start"), "<root>");
    assert_eq!(module("tests"), "<unknown>");
    assert_eq!(module("Hidden"), "<unknown>");
}
