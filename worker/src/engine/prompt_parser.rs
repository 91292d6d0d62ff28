//! A1111's prompt syntax (`modules/prompt_parser.py`, v1.10.1), reimplemented:
//! attention weights (`(x)`, `(x:1.3)`, `[x]`, escapes, `BREAK`) and the per-step schedule of
//! prompt editing (`[a:b:when]`, `[a:when]`, `[a::when]`) and alternation (`[a|b]`).
//!
//! A1111 parses schedules with a lark grammar and returns a prompt verbatim when that grammar
//! rejects it; the recursive-descent parser here accepts the same language for the prompts
//! people write (structured brackets inside, stray `[`, `]`, `(`, `)`, `:` only at the top
//! level, `|` only inside an alternation).

/// A fragment of prompt text and its attention weight; `BREAK` is `("BREAK", -1.0)`.
pub type Weighted = (String, f64);

/// `parse_prompt_attention`: splits a prompt into runs of equal weight.
pub fn parse_prompt_attention(text: &str) -> Vec<Weighted> {
    let mut res: Vec<Weighted> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Weighted>, from: usize, k: f64| {
        for entry in &mut res[from..] {
            entry.1 *= k;
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // The alternatives of A1111's `re_attention`, tried in its order.
        if c == '\\' {
            match next {
                Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                    res.push((n.to_string(), 1.0));
                    i += 2;
                }
                _ => {
                    // A lone backslash: `text[1:]` of a one-character match is empty.
                    res.push((String::new(), 1.0));
                    i += 1;
                }
            }
            continue;
        }
        match c {
            '(' => {
                round.push(res.len());
                i += 1;
            }
            '[' => {
                square.push(res.len());
                i += 1;
            }
            ':' => {
                if let Some((weight, len)) = weight_close(&chars[i..]) {
                    if let Some(start) = round.pop() {
                        multiply(&mut res, start, weight);
                        i += len;
                        continue;
                    }
                }
                // A colon that is not `:weight)` inside round brackets is text.
                push_text(&mut res, ":");
                i += 1;
            }
            ')' | ']' => {
                let stack = if c == ')' { &mut round } else { &mut square };
                match stack.pop() {
                    Some(start) => {
                        let k = if c == ')' { 1.1 } else { 1.0 / 1.1 };
                        multiply(&mut res, start, k);
                    }
                    None => push_text(&mut res, &c.to_string()),
                }
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], '\\' | '(' | ')' | '[' | ']' | ':') {
                    i += 1;
                }
                let run: String = chars[start..i].iter().collect();
                push_text(&mut res, &run);
            }
        }
    }
    for start in round {
        multiply(&mut res, start, 1.1);
    }
    for start in square {
        multiply(&mut res, start, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    // Merge neighbours of identical weight.
    let mut merged: Vec<Weighted> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    merged
}

/// Matches `:\s*([+-]?[.\d]+)\s*\)` at the start of `chars`: the weight and the match length.
/// A malformed number ("1.2.3") makes A1111 raise; here the colon is then plain text.
fn weight_close(chars: &[char]) -> Option<(f64, usize)> {
    let mut i = 1;
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    if i < chars.len() && matches!(chars[i], '+' | '-') {
        i += 1;
    }
    let digits = i;
    while i < chars.len() && (chars[i] == '.' || chars[i].is_ascii_digit()) {
        i += 1;
    }
    if i == digits {
        return None;
    }
    let number: String = chars[start..i].iter().collect();
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    if chars.get(i) != Some(&')') {
        return None;
    }
    number.parse::<f64>().ok().map(|w| (w, i + 1))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Appends plain text, splitting it at `\s*\bBREAK\b\s*` as A1111's `re_break` does.
fn push_text(res: &mut Vec<Weighted>, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    let mut part_start = 0;
    let mut i = 0;
    let mut first = true;
    while i + 5 <= chars.len() {
        let is_break = chars[i..i + 5].iter().collect::<String>() == "BREAK"
            && (i == 0 || !is_word(chars[i - 1]))
            && chars.get(i + 5).is_none_or(|&c| !is_word(c));
        if !is_break {
            i += 1;
            continue;
        }
        let mut before = i;
        while before > part_start && chars[before - 1].is_whitespace() {
            before -= 1;
        }
        let mut after = i + 5;
        while after < chars.len() && chars[after].is_whitespace() {
            after += 1;
        }
        if !first {
            res.push(("BREAK".into(), -1.0));
        }
        res.push((chars[part_start..before].iter().collect(), 1.0));
        first = false;
        part_start = after;
        i = after;
    }
    if !first {
        res.push(("BREAK".into(), -1.0));
    }
    res.push((chars[part_start..].iter().collect(), 1.0));
}

/// A parsed schedule prompt.
#[derive(Debug, Clone)]
enum Node {
    /// Plain text, whitespace, and the brackets of emphasis, kept verbatim.
    Text(String),
    /// `[before:after:when]`; `when` is the number as written.
    Scheduled {
        before: Vec<Node>,
        after: Vec<Node>,
        when: String,
    },
    /// `[a|b|...]`.
    Alternate(Vec<Vec<Node>>),
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// `prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*`. Stops before a
    /// character that cannot start one of those; fails on a bracket that opens nothing valid.
    fn prompt(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        loop {
            match self.peek() {
                None | Some(']' | ')' | ':' | '|') => return Some(nodes),
                Some('[') => nodes.extend(self.square()?),
                Some('(') => nodes.extend(self.round()?),
                Some(_) => nodes.push(Node::Text(self.plain()?)),
            }
        }
    }

    /// `plain: /([^\\\[\]():|]|\\.)+/`, escapes kept as written.
    fn plain(&mut self) -> Option<String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            match c {
                '[' | ']' | '(' | ')' | ':' | '|' => break,
                '\\' => {
                    if self.pos + 1 >= self.chars.len() {
                        return None;
                    }
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    /// Runs a bracket rule, rewinding to where it started when it does not match.
    fn attempt(&mut self, rule: fn(&mut Self) -> Option<Vec<Node>>) -> Option<Vec<Node>> {
        let start = self.pos;
        let parsed = rule(self);
        if parsed.is_none() {
            self.pos = start;
        }
        parsed
    }

    fn round(&mut self) -> Option<Vec<Node>> {
        self.attempt(Self::round_rule)
    }

    fn square(&mut self) -> Option<Vec<Node>> {
        self.attempt(Self::square_rule)
    }

    /// `(prompt)` or `(prompt:prompt)`, kept verbatim with their structure inside.
    fn round_rule(&mut self) -> Option<Vec<Node>> {
        let start = self.pos;
        self.pos += 1;
        let mut nodes = vec![Node::Text("(".into())];
        nodes.extend(self.prompt()?);
        if self.peek() == Some(':') {
            self.pos += 1;
            nodes.push(Node::Text(":".into()));
            nodes.extend(self.prompt()?);
        }
        if self.peek() == Some(')') {
            self.pos += 1;
            nodes.push(Node::Text(")".into()));
            Some(nodes)
        } else {
            self.pos = start;
            None
        }
    }

    /// `[...]`: scheduled, alternate or emphasized, in that order of preference.
    fn square_rule(&mut self) -> Option<Vec<Node>> {
        let start = self.pos;
        self.pos += 1;
        let first = self.prompt()?;
        match self.peek() {
            Some(']') => {
                self.pos += 1;
                let mut nodes = vec![Node::Text("[".into())];
                nodes.extend(first);
                nodes.push(Node::Text("]".into()));
                Some(nodes)
            }
            Some('|') => {
                let mut options = vec![first];
                while self.peek() == Some('|') {
                    self.pos += 1;
                    options.push(self.prompt()?);
                }
                if self.peek() != Some(']') {
                    self.pos = start;
                    return None;
                }
                self.pos += 1;
                Some(vec![Node::Alternate(options)])
            }
            Some(':') => {
                self.pos += 1;
                // `[after:when]`
                if let Some(when) = self.number_close() {
                    return Some(vec![Node::Scheduled {
                        before: Vec::new(),
                        after: first,
                        when,
                    }]);
                }
                let second = self.prompt()?;
                if self.peek() == Some(':') {
                    self.pos += 1;
                    if let Some(when) = self.number_close() {
                        return Some(vec![Node::Scheduled {
                            before: first,
                            after: second,
                            when,
                        }]);
                    }
                }
                self.pos = start;
                None
            }
            _ => {
                self.pos = start;
                None
            }
        }
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"` with lark's `SIGNED_NUMBER`; the number text.
    fn number_close(&mut self) -> Option<String> {
        let start = self.pos;
        let mut i = self.pos;
        let c = self.chars;
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let num_start = i;
        if i < c.len() && matches!(c[i], '+' | '-') {
            i += 1;
        }
        let int_start = i;
        while i < c.len() && c[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = i - int_start;
        let mut frac_digits = 0;
        if i < c.len() && c[i] == '.' {
            i += 1;
            let f = i;
            while i < c.len() && c[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = i - f;
        }
        if int_digits == 0 && frac_digits == 0 {
            self.pos = start;
            return None;
        }
        if i < c.len() && matches!(c[i], 'e' | 'E') {
            let mut j = i + 1;
            if j < c.len() && matches!(c[j], '+' | '-') {
                j += 1;
            }
            let e = j;
            while j < c.len() && c[j].is_ascii_digit() {
                j += 1;
            }
            if j > e {
                i = j;
            }
        }
        let number: String = c[num_start..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        if c.get(i) != Some(&']') {
            self.pos = start;
            return None;
        }
        self.pos = i + 1;
        Some(number)
    }

    /// `start: (prompt | /[][():]/+)*`: stray brackets and colons are text at the top level.
    fn start(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            let structured = match c {
                '[' => self.square(),
                '(' => self.round(),
                ']' | ')' | ':' => None,
                '|' => return None,
                _ => {
                    nodes.push(Node::Text(self.plain()?));
                    continue;
                }
            };
            match structured {
                Some(parsed) => nodes.extend(parsed),
                None => {
                    nodes.push(Node::Text(c.to_string()));
                    self.pos += 1;
                }
            }
        }
        Some(nodes)
    }
}

/// How `when` numbers become steps: A1111's offsets for the hires pass, or its old rule.
struct StepRule {
    steps: i64,
    int_offset: f64,
    flt_offset: f64,
    old: bool,
}

impl StepRule {
    fn resolve(&self, when: &str) -> i64 {
        let v: f64 = when.parse().unwrap_or(0.0);
        let v = if self.old {
            if v < 1.0 {
                v * self.steps as f64
            } else {
                v
            }
        } else if when.contains('.') {
            (v - self.flt_offset) * self.steps as f64
        } else {
            v - self.int_offset
        };
        // Python's int() truncates toward zero.
        self.steps.min(v.trunc() as i64)
    }
}

fn collect_steps(nodes: &[Node], rule: &StepRule, out: &mut Vec<i64>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                let step = rule.resolve(when);
                if step >= 1 {
                    out.push(step);
                }
                collect_steps(before, rule, out);
                collect_steps(after, rule, out);
            }
            Node::Alternate(options) => {
                out.extend(1..=rule.steps);
                for option in options {
                    collect_steps(option, rule, out);
                }
            }
        }
    }
}

fn text_at(nodes: &[Node], step: i64, rule: &StepRule, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                let branch = if step <= rule.resolve(when) {
                    before
                } else {
                    after
                };
                text_at(branch, step, rule, out);
            }
            Node::Alternate(options) => {
                let index = (step - 1).rem_euclid(options.len() as i64) as usize;
                text_at(&options[index], step, rule, out);
            }
        }
    }
}

/// `get_learned_conditioning_prompt_schedules` for one prompt: `(until_step, prompt)` pairs,
/// ascending. With `hires_steps`, numbers refer to the whole two-pass run (integers past the
/// first pass's `base_steps`, fractions past 1.0) unless `use_old_scheduling`.
pub fn prompt_schedule(
    prompt: &str,
    base_steps: usize,
    hires_steps: Option<usize>,
    use_old_scheduling: bool,
) -> Vec<(usize, String)> {
    let rule = match hires_steps {
        Some(h) if !use_old_scheduling => StepRule {
            steps: h as i64,
            int_offset: base_steps as f64,
            flt_offset: 1.0,
            old: false,
        },
        _ => StepRule {
            steps: base_steps as i64,
            int_offset: 0.0,
            flt_offset: 0.0,
            old: use_old_scheduling,
        },
    };
    let chars: Vec<char> = prompt.chars().collect();
    let tree = Parser {
        chars: &chars,
        pos: 0,
    }
    .start();
    let Some(tree) = tree else {
        return vec![(rule.steps.max(0) as usize, prompt.to_string())];
    };
    let mut steps = vec![rule.steps];
    collect_steps(&tree, &rule, &mut steps);
    steps.sort_unstable();
    steps.dedup();
    steps
        .into_iter()
        .map(|step| {
            let mut text = String::new();
            text_at(&tree, step, &rule, &mut text);
            (step.max(0) as usize, text)
        })
        .collect()
}
