//! A coroutine's name as the stack-overflow report prints it, built without formatting.
//!
//! A server may start thousands of handlers a second; formatting `"<server>:handler_<n>"`
//! for each costs more than starting the coroutine. A [`Label`] keeps the parts instead —
//! text, a fixed infix, an optional number — and the parts are only put together when
//! somebody asks (`Display`), or, with async-signal-safe writes only, when the coroutine
//! overflows its stack.

use std::fmt;
use std::rc::Rc;

/// The text part of a [`Label`].
#[derive(Clone)]
enum Text {
    Static(&'static str),
    Shared(Rc<str>),
}

impl Text {
    fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

/// A coroutine's name: `<text><infix><number>`, for example `"web" ":handler_" 17`.
#[derive(Clone)]
pub struct Label {
    text: Text,
    infix: &'static str,
    number: Option<u64>,
}

impl Label {
    /// A label that is just `text`.
    pub fn new(text: &'static str) -> Label {
        Label {
            text: Text::Static(text),
            infix: "",
            number: None,
        }
    }

    /// A label that is just `text`, shared with its owner (no copy).
    pub fn shared(text: Rc<str>) -> Label {
        Label {
            text: Text::Shared(text),
            infix: "",
            number: None,
        }
    }

    /// This label followed by `infix` and `number`, such as `":handler_"` and `17`.
    pub fn numbered(mut self, infix: &'static str, number: u64) -> Label {
        self.infix = infix;
        self.number = Some(number);
        self
    }

    /// The parts: text, infix, number.
    pub(crate) fn parts(&self) -> (&str, &'static str, Option<u64>) {
        (self.text.as_str(), self.infix, self.number)
    }
}

impl From<&'static str> for Label {
    fn from(text: &'static str) -> Label {
        Label::new(text)
    }
}

impl From<String> for Label {
    fn from(text: String) -> Label {
        Label::shared(Rc::from(text))
    }
}

impl From<Rc<str>> for Label {
    fn from(text: Rc<str>) -> Label {
        Label::shared(text)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, infix, number) = self.parts();
        f.write_str(text)?;
        f.write_str(infix)?;
        if let Some(n) = number {
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        let (text, infix, number) = self.parts();
        let Some(rest) = other.strip_prefix(text).and_then(|r| r.strip_prefix(infix)) else {
            return false;
        };
        match number {
            Some(n) => rest == n.to_string(),
            None => rest.is_empty(),
        }
    }
}

impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_render_in_order() {
        assert_eq!(Label::new("plain").to_string(), "plain");
        let l = Label::shared(Rc::from("web")).numbered(":handler_", 17);
        assert_eq!(l.to_string(), "web:handler_17");
        assert!(l == "web:handler_17");
        assert_eq!(Label::from(String::from("owned")).to_string(), "owned");
    }
}
