//! Where each field of a YAML (or JSON) policy file is: field path → line and column.
//!
//! serde's YAML values carry no positions, so the file is read a second time with
//! an event parser that reports a position for every node. Paths use the same
//! notation as diagnostics: `tools.travel.book_hotel.max_spend_cents`,
//! `spend_controls.caps[1].timezone`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column of every field path of a document.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    marks: HashMap<String, (usize, usize)>,
}

impl Locations {
    /// Reads the positions of `text`. A document the event parser cannot read
    /// yields no positions (diagnostics then carry line 0, column 0).
    pub(crate) fn of(text: &str) -> Self {
        let mut recv = Receiver::default();
        if Parser::new_from_str(text).load(&mut recv, false).is_err() {
            return Self::default();
        }
        Self { marks: recv.marks }
    }

    /// The position of `path`, else of its nearest located parent, else `(0, 0)`.
    pub(crate) fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(&at) = self.marks.get(p) {
                return at;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return self.marks.get("").copied().unwrap_or((0, 0)),
            }
        }
    }
}

/// `a.b[2]` → `a.b`; `a.b` → `a`; `a` → `` (the root); `` → none.
///
/// A dotted tool name (`tools.travel.book_hotel`) is walked up one dot at a time,
/// which passes through `tools.travel` before `tools`: a miss there just goes on up.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a mapping key onto a path.
pub(crate) fn key_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub(crate) fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next, if any.
    Map { path: String, key: Option<String> },
    /// A sequence at `path` and the index of its next element.
    Seq { path: String, next: usize },
    /// A container used as a mapping key: skipped.
    Skip,
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    marks: HashMap<String, (usize, usize)>,
}

impl Receiver {
    fn at(mark: Marker) -> (usize, usize) {
        // yaml-rust2 counts lines from 1 and columns from 0.
        (mark.line(), mark.col() + 1)
    }

    /// Handles the start of a node (scalar, alias or container): returns its path,
    /// or `None` when it is a mapping key (or inside one).
    fn node(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.marks.entry(String::new()).or_insert(Self::at(mark));
                Some(String::new())
            }
            Some(Frame::Skip) => None,
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // A key: its position is the field's position.
                    let k = scalar.unwrap_or("?").to_owned();
                    let at = Self::at(mark);
                    // A block mapping's start is reported after its first key has
                    // been scanned; a mapping cannot start after its first key.
                    if let Some(start) = self.marks.get_mut(path.as_str()) {
                        *start = (*start).min(at);
                    }
                    self.marks.entry(key_path(path, &k)).or_insert(at);
                    *key = Some(k);
                    None
                }
                Some(k) => {
                    let p = key_path(path, &k);
                    self.marks.entry(p.clone()).or_insert(Self::at(mark));
                    Some(p)
                }
            },
            Some(Frame::Seq { path, next }) => {
                let p = index_path(path, *next);
                *next += 1;
                self.marks.entry(p.clone()).or_insert(Self::at(mark));
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_seq = matches!(ev, Event::SequenceStart(..));
                // A container used as a key (rare in YAML, never in a policy) is
                // skipped; its mapping already expects the value that follows it.
                let frame = match self.node(None, mark) {
                    Some(path) if is_seq => Frame::Seq { path, next: 0 },
                    Some(path) => Frame::Map { path, key: None },
                    None => Frame::Skip,
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_items_and_nested_fields() {
        let text = "version: 1\nname: p\ntools:\n  travel.book_hotel:\n    side_effecting: true\nspend_controls:\n  caps:\n    - { scope: tenant, window: day, limit_cents: 1 }\n    - scope: tool\n      timezone: Mars/Olympus\n";
        let locs = Locations::of(text);
        assert_eq!(locs.find("version"), (1, 1));
        assert_eq!(locs.find("tools.travel.book_hotel"), (4, 3));
        assert_eq!(locs.find("tools.travel.book_hotel.side_effecting"), (5, 5));
        assert_eq!(locs.find("spend_controls.caps[0]"), (8, 7));
        assert_eq!(locs.find("spend_controls.caps[0].limit_cents"), (8, 37));
        assert_eq!(locs.find("spend_controls.caps[1].timezone"), (10, 7));
        // A missing field is placed at its nearest parent.
        assert_eq!(locs.find("tools.travel.book_hotel.evidence_preset"), (4, 3));
        assert_eq!(locs.find("spend_controls.caps[1].window"), (9, 7));
    }

    #[test]
    fn json_input_and_unreadable_input() {
        let locs = Locations::of("{\n  \"version\": 1,\n  \"name\": \"p\"\n}\n");
        assert_eq!(locs.find("name"), (3, 3));
        let none = Locations::of("a: [1, 2\n");
        assert_eq!(none.find("a"), (0, 0));
    }
}
