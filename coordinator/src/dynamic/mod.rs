//! Dynamic prompts in the syntax of AUTOMATIC1111's sd-dynamic-prompts extension: `{a|b|c}`
//! variants, `{2$$a|b|c}` multi-picks (`{1-3$$…}` ranges, `{2$$ and $$…}` joiners), weighted
//! options `{0.5::a|b}`, nesting, and `__name__` wildcard files.
//!
//! A prompt is parsed once into a [`Template`]; wildcard files are gathered into a
//! [`Library`] (each line an option, itself a template); [`Compiled`] then counts the
//! combinations and resolves any one of them from its index alone (combinatorial mode) or
//! draws one from a seeded generator (random mode). Everything here is pure: files are read
//! by the caller.
//!
//! Text outside braces is kept as written, `|` included, so A1111's own `[a|b]` alternation
//! and the prompt matrix's `|` survive; `\{`, `\}` and `\|` stand for the literal character.

mod compile;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use compile::{cell_rng, Compiled, Resolved};

/// A prompt parsed into literal text, variants and wildcard references.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Variant(Variant),
    /// `__name__`: one option per line of the wildcard file `name`.
    Wildcard(String),
}

/// `{…}`: pick between `min` and `max` options (both 1 for a plain variant), joined by
/// `joiner`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub options: Vec<VariantOption>,
    pub min: usize,
    pub max: usize,
    pub joiner: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantOption {
    /// Relative chance in random mode (`0.5::`); combinatorial mode lists every option once.
    pub weight: f64,
    pub body: Template,
}

/// sd-dynamic-prompts' separator for multi-picks written without one.
pub const DEFAULT_JOINER: &str = ", ";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DynamicError {
    /// `at` is the 1-based character position in the text that was parsed.
    #[error("{problem} at character {at}")]
    Syntax { problem: String, at: usize },
    #[error("wildcard __{name}__ has no file: {searched}")]
    MissingWildcard { name: String, searched: String },
    #[error("wildcard file `{name}` has no options (only blank lines and # comments)")]
    EmptyWildcard { name: String },
    #[error("wildcard file `{name}` line {line}: {problem}")]
    WildcardLine {
        name: String,
        line: usize,
        problem: String,
    },
    #[error("wildcards refer to each other in a loop: {0}")]
    Cycle(String),
}

pub type Result<T, E = DynamicError> = std::result::Result<T, E>;

impl Template {
    /// Whether the text has no variant and no wildcard: it resolves to itself.
    pub fn is_plain(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Names of the wildcards the template refers to, nested ones included, in order.
    pub fn wildcards(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_wildcards(self, &mut out);
        out
    }
}

fn collect_wildcards(t: &Template, out: &mut Vec<String>) {
    for part in &t.parts {
        match part {
            Part::Text(_) => {}
            Part::Wildcard(name) => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Part::Variant(v) => {
                for o in &v.options {
                    collect_wildcards(&o.body, out);
                }
            }
        }
    }
}

/// Characters a wildcard name may hold: `__people/artists__` names `people/artists.txt`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.' | '*')
}

/// Parses a prompt. Errors name what is wrong and the character where it is.
pub fn parse(text: &str) -> Result<Template> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    let t = p.sequence(false)?;
    if p.i < chars.len() {
        // Only a `}` or `|` can stop the top-level sequence early, and `|` never does.
        return Err(p.error("`}` has no matching `{`", p.i));
    }
    Ok(t)
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn error(&self, problem: &str, at: usize) -> DynamicError {
        DynamicError::Syntax {
            problem: problem.to_string(),
            at: at + 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    /// Text, variants and wildcards up to (not including) a `}` or, inside a variant, a `|`.
    fn sequence(&mut self, in_variant: bool) -> Result<Template> {
        let mut parts = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            match c {
                '\\' if matches!(self.s.get(self.i + 1), Some('{' | '}' | '|')) => {
                    text.push(self.s[self.i + 1]);
                    self.i += 2;
                }
                '{' => {
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Variant(self.variant()?));
                }
                '}' => break,
                '|' if in_variant => break,
                '_' if self.s.get(self.i + 1) == Some(&'_') => match self.wildcard_name() {
                    Some(name) => {
                        if !text.is_empty() {
                            parts.push(Part::Text(std::mem::take(&mut text)));
                        }
                        self.i += name.chars().count() + 4;
                        parts.push(Part::Wildcard(name));
                    }
                    None => {
                        text.push_str("__");
                        self.i += 2;
                    }
                },
                c => {
                    text.push(c);
                    self.i += 1;
                }
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The name of a `__name__` starting at the cursor, if one is written there.
    fn wildcard_name(&self) -> Option<String> {
        let start = self.i + 2;
        let mut j = start;
        while j + 1 < self.s.len() {
            if self.s[j] == '_' && self.s[j + 1] == '_' && j > start {
                let name: String = self.s[start..j].iter().collect();
                return name.chars().all(is_name_char).then_some(name);
            }
            if !is_name_char(self.s[j]) {
                return None;
            }
            j += 1;
        }
        None
    }

    /// `{` [count `$$` [joiner `$$`]] option (`|` option)* `}`.
    fn variant(&mut self) -> Result<Variant> {
        let open = self.i;
        self.i += 1;
        let (min, max, joiner) = self.header(open)?;
        let mut options = Vec::new();
        loop {
            let weight = self.weight();
            let body = self.sequence(true)?;
            options.push(VariantOption { weight, body });
            match self.peek() {
                Some('|') => self.i += 1,
                Some('}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("`{` is never closed by a `}`", open)),
            }
        }
        if options.len() == 1 && options[0].body.parts.is_empty() && min.is_none() {
            return Err(self.error("`{}` has no options", open));
        }
        let n = options.len();
        let (min, max) = match (min, max) {
            (None, _) => (1, 1),
            (Some(lo), hi) => {
                let hi = hi.unwrap_or(n);
                if lo > hi {
                    return Err(self.error(
                        &format!("the pick count range {lo}-{hi} runs backwards"),
                        open,
                    ));
                }
                (lo.min(n), hi.min(n))
            }
        };
        Ok(Variant {
            options,
            min,
            max,
            joiner: joiner.unwrap_or_else(|| DEFAULT_JOINER.to_string()),
        })
    }

    /// The text up to the next `$$` if it comes before any `|`, `{` or `}`.
    fn until_dollars(&self) -> Option<String> {
        let mut j = self.i;
        while j + 1 < self.s.len() {
            match self.s[j] {
                '$' if self.s[j + 1] == '$' => return Some(self.s[self.i..j].iter().collect()),
                '|' | '{' | '}' => return None,
                _ => j += 1,
            }
        }
        None
    }

    /// `N$$`, `N-M$$`, `-M$$`, `N-$$`, each optionally followed by `joiner$$`. Returns the
    /// bounds (`None` minimum: no header) and the joiner.
    #[allow(clippy::type_complexity)]
    fn header(&mut self, open: usize) -> Result<(Option<usize>, Option<usize>, Option<String>)> {
        let Some(count) = self.until_dollars() else {
            return Ok((None, None, None));
        };
        let at = self.i;
        let bad = |p: &Self| {
            p.error(
                &format!(
                    "`{{{count}$$` is not a pick count (accepted: N$$, N-M$$, -M$$ or N-$$, \
                     e.g. {{2$$a|b|c}})"
                ),
                at,
            )
        };
        let number = |s: &str| -> Option<usize> {
            let s = s.trim();
            (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (lo, hi) = match count.split_once('-') {
            None => {
                let n = number(&count).ok_or_else(|| bad(self))?;
                (n, Some(n))
            }
            Some((a, b)) => {
                let lo = if a.trim().is_empty() {
                    1
                } else {
                    number(a).ok_or_else(|| bad(self))?
                };
                let hi = if b.trim().is_empty() {
                    None
                } else {
                    Some(number(b).ok_or_else(|| bad(self))?)
                };
                (lo, hi)
            }
        };
        let _ = open;
        self.i += count.chars().count() + 2;
        let joiner = self.until_dollars().inspect(|j| {
            self.i += j.chars().count() + 2;
        });
        Ok((Some(lo), hi, joiner))
    }

    /// An option's `weight::` prefix, when it has one; 1 otherwise.
    fn weight(&mut self) -> f64 {
        let mut j = self.i;
        while j < self.s.len() && (self.s[j].is_ascii_digit() || self.s[j] == '.') {
            j += 1;
        }
        if j > self.i && self.s.get(j) == Some(&':') && self.s.get(j + 1) == Some(&':') {
            let text: String = self.s[self.i..j].iter().collect();
            if let Ok(w) = text.parse::<f64>() {
                self.i = j + 2;
                return w;
            }
        }
        1.0
    }
}

/// Wildcard files by name, each line parsed: what `__name__` chooses from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Library {
    pub files: BTreeMap<String, Vec<Template>>,
}

/// Whether a wildcard name is a glob pattern rather than one file's name.
pub fn is_glob(name: &str) -> bool {
    name.contains('*')
}

/// `fnmatch` with only `*`, the one pattern character a wildcard name may hold: any run of
/// characters, `/` included (so `__people*__` reaches into `people/…` as the extension does).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The options of a wildcard file: one per line, `#` comments and blank lines ignored,
/// surrounding whitespace trimmed.
pub fn wildcard_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

impl Library {
    /// Gathers every wildcard `templates` refer to, and those their files refer to, reading
    /// each file's text through `read` (`None`: no such file). `searched` describes where
    /// `read` looked, for the error naming a missing file.
    ///
    /// A name with `*` (`__colors*__`, `__people/*__`) is a glob, as in sd-dynamic-prompts:
    /// it matches the files `names` lists (`*` matching any run of characters, `/` included)
    /// and its options are all of theirs, file after file in sorted name order.
    pub fn gather(
        templates: &[&Template],
        names: &dyn Fn() -> Vec<String>,
        read: &mut dyn FnMut(&str) -> Option<String>,
        searched: &dyn Fn(&str) -> String,
    ) -> Result<Library> {
        let mut lib = Library::default();
        let mut todo: Vec<String> = Vec::new();
        for t in templates {
            for name in t.wildcards() {
                if !todo.contains(&name) {
                    todo.push(name);
                }
            }
        }
        let mut listed: Option<Vec<String>> = None;
        while let Some(name) = todo.pop() {
            if lib.files.contains_key(&name) {
                continue;
            }
            let files = if is_glob(&name) {
                let all = listed.get_or_insert_with(|| {
                    let mut all = names();
                    all.sort();
                    all.dedup();
                    all
                });
                let matched: Vec<String> = all
                    .iter()
                    .filter(|n| !is_glob(n) && glob_matches(&name, n))
                    .cloned()
                    .collect();
                if matched.is_empty() {
                    return Err(DynamicError::MissingWildcard {
                        name: name.clone(),
                        searched: format!("no wildcard file matches it ({})", searched(&name)),
                    });
                }
                matched
            } else {
                vec![name.clone()]
            };
            let mut options = Vec::new();
            for file in files {
                let text = read(&file).ok_or_else(|| DynamicError::MissingWildcard {
                    name: file.clone(),
                    searched: searched(&file),
                })?;
                let before = options.len();
                for (line, option) in wildcard_lines(&text) {
                    let t = parse(option).map_err(|e| DynamicError::WildcardLine {
                        name: file.clone(),
                        line,
                        problem: e.to_string(),
                    })?;
                    todo.extend(t.wildcards());
                    options.push(t);
                }
                if options.len() == before {
                    return Err(DynamicError::EmptyWildcard { name: file });
                }
            }
            lib.files.insert(name, options);
        }
        lib.check_cycles()?;
        Ok(lib)
    }

    /// A wildcard whose options lead back to itself would expand forever.
    fn check_cycles(&self) -> Result<()> {
        fn visit(
            lib: &Library,
            name: &str,
            path: &mut Vec<String>,
            done: &mut Vec<String>,
        ) -> Result<()> {
            if done.iter().any(|d| d == name) {
                return Ok(());
            }
            if let Some(start) = path.iter().position(|p| p == name) {
                let mut names: Vec<String> =
                    path[start..].iter().map(|n| format!("__{n}__")).collect();
                names.push(format!("__{name}__"));
                return Err(DynamicError::Cycle(names.join(" → ")));
            }
            path.push(name.to_string());
            for t in lib.files.get(name).into_iter().flatten() {
                for next in t.wildcards() {
                    visit(lib, &next, path, done)?;
                }
            }
            path.pop();
            done.push(name.to_string());
            Ok(())
        }
        let mut done = Vec::new();
        for name in self.files.keys() {
            visit(self, name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}
