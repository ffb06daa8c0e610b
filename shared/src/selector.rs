//! Series selectors, as `[immune]` in `fifty.toml` writes them: a metric name with optional label
//! matchers in PromQL's syntax, e.g. `http_requests_total{code=~"5..", job!="batch"}`. The
//! coordinator checks them when it reads a pipeline; the agent matches scraped series with them.
//! A selector names the sum of every series that matches (PromQL's `sum(...)`).

use std::fmt;

use regex::Regex;

/// How a label is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`: equal.
    Eq,
    /// `!=`: not equal.
    Ne,
    /// `=~`: the whole value matches the regular expression.
    Re,
    /// `!~`: the whole value does not match it.
    NotRe,
}

/// One label matcher.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// The label.
    pub label: String,
    /// How.
    pub op: Op,
    /// The value or expression as written.
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// Whether a series whose label has `value` (absent labels are empty, as in PromQL) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match self.op {
            Op::Eq => value == self.value,
            Op::Ne => value != self.value,
            Op::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            Op::NotRe => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// A metric name and its label matchers.
#[derive(Clone, Debug)]
pub struct Selector {
    /// The metric's name.
    pub name: String,
    /// Every matcher must match.
    pub matchers: Vec<Matcher>,
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.matchers.is_empty() {
            let parts: Vec<String> = self
                .matchers
                .iter()
                .map(|m| {
                    let op = match m.op {
                        Op::Eq => "=",
                        Op::Ne => "!=",
                        Op::Re => "=~",
                        Op::NotRe => "!~",
                    };
                    format!("{}{op}{:?}", m.label, m.value)
                })
                .collect();
            write!(f, "{{{}}}", parts.join(","))?;
        }
        Ok(())
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c == '_' || c == ':' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
}

impl Selector {
    /// Parses `name` or `name{label="value", ...}`; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let text = text.trim();
        let (name, rest) = match text.find('{') {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text, None),
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().enumerate().all(|(i, c)| is_name_char(c, i == 0)) {
            return Err(format!("{text:?}: {name:?} is not a metric name"));
        }
        let mut matchers = Vec::new();
        if let Some(rest) = rest {
            let Some(body) = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else {
                return Err(format!("{text:?}: label matchers must be closed by a final '}}'"));
            };
            let mut chars = body.chars().peekable();
            loop {
                while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    break;
                }
                let mut label = String::new();
                while let Some(&c) = chars.peek() {
                    if is_name_char(c, label.is_empty()) {
                        label.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let op = match (chars.next(), chars.peek().copied()) {
                    (Some('='), Some('~')) => {
                        chars.next();
                        Op::Re
                    }
                    (Some('!'), Some('=')) => {
                        chars.next();
                        Op::Ne
                    }
                    (Some('!'), Some('~')) => {
                        chars.next();
                        Op::NotRe
                    }
                    (Some('='), _) => Op::Eq,
                    _ => return Err(format!("{text:?}: expected =, !=, =~ or !~ after label {label:?}")),
                };
                if label.is_empty() {
                    return Err(format!("{text:?}: a matcher has no label name"));
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if chars.next() != Some('"') {
                    return Err(format!("{text:?}: the value of label {label:?} must be in double quotes"));
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => break,
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(format!("{text:?}: the value of label {label:?} has no closing quote"));
                }
                let regex = match op {
                    Op::Re | Op::NotRe => Some(
                        Regex::new(&format!("^(?:{value})$"))
                            .map_err(|e| format!("{text:?}: label {label:?}: bad regular expression: {e}"))?,
                    ),
                    _ => None,
                };
                matchers.push(Matcher { label, op, value, regex });
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                match chars.next() {
                    None => break,
                    Some(',') => {}
                    Some(c) => return Err(format!("{text:?}: unexpected {c:?} after a matcher")),
                }
            }
        }
        Ok(Selector { name: name.to_string(), matchers })
    }

    /// Whether the series `name` with labels given by `label` matches.
    pub fn matches<'a>(&self, name: &str, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        name == self.name && self.matchers.iter().all(|m| m.matches(label(m.label.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |k| pairs.iter().find(|(l, _)| *l == k).map(|(_, v)| *v)
    }

    #[test]
    fn selectors_match_like_promql() {
        let s = Selector::parse(r#"http_requests_total{code=~"5..", method!="HEAD"}"#).unwrap();
        assert!(s.matches("http_requests_total", labels(&[("code", "503"), ("method", "GET")])));
        assert!(!s.matches("http_requests_total", labels(&[("code", "200")])));
        assert!(!s.matches("http_requests_total", labels(&[("code", "5000")])), "the regex is anchored");
        assert!(!s.matches("http_requests_total", labels(&[("code", "500"), ("method", "HEAD")])));
        assert!(!s.matches("other_total", labels(&[("code", "500")])));
        let all = Selector::parse("http_requests_total").unwrap();
        assert!(all.matches("http_requests_total", labels(&[("code", "200")])));
        let not = Selector::parse(r#"x{path!~"/health|/metrics"}"#).unwrap();
        assert!(not.matches("x", labels(&[("path", "/")])));
        assert!(!not.matches("x", labels(&[("path", "/health")])));
        assert_eq!(s.to_string(), r#"http_requests_total{code=~"5..",method!="HEAD"}"#);
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        assert!(Selector::parse("").unwrap_err().contains("not a metric name"));
        assert!(Selector::parse("9x").unwrap_err().contains("not a metric name"));
        assert!(Selector::parse("x{code=5}").unwrap_err().contains("double quotes"));
        assert!(Selector::parse("x{code=\"5\"").unwrap_err().contains("closed"));
        assert!(Selector::parse("x{code=~\"(\"}").unwrap_err().contains("regular expression"));
        assert!(Selector::parse("x{code<\"5\"}").unwrap_err().contains("expected ="));
        assert!(Selector::parse("x{code=\"5}").unwrap_err().contains("closing quote"));
    }
}
