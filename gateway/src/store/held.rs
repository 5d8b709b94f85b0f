//! Held-back writes ([`super::sql::Sql::execute_later`]) sent together: a group's
//! writes of one kind as one statement.
//!
//! A group of operations holds its writes back until it next reads, or commits,
//! and then sends them in order. Before they are sent, [`coalesce`] merges them:
//!
//! - **inserts** of the same statement become one multi-row `INSERT … VALUES
//!   (…), (…)`, in chunks of 1, 2, 4, 8, 16 or 32 rows, so that a store prepares a
//!   few shapes of each and never one per group size;
//! - **additive updates** of the same statement and row (`SET c = c + ?2 WHERE
//!   id = ?1`, any number of `c = c ± ?n`) become one, with their amounts summed.
//!
//! A write moves ahead of later ones to join its kind's statement only past
//! writes it commutes with: those of other tables, and, for an additive update,
//! other additive updates (additions commute, and their conditions read none of
//! the columns they add to, which [`Shape`] checks). Anything else (another
//! insert into its table, an update that sets a value) keeps its place, so the
//! database ends in the state the writes in order would have left. A statement
//! this module cannot read is sent as it is, and orders every write around it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use super::Value;

/// A held-back write: its SQL (`?N` placeholders) and its arguments, with what
/// is known of the statement (read once per statement, looked up once per write).
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) sql: &'static str,
    pub(crate) args: Vec<Value>,
    known: Arc<Known>,
}

impl Held {
    pub(crate) fn new(sql: &'static str, args: Vec<Value>) -> Self {
        Self {
            sql,
            args,
            known: known(sql),
        }
    }

    /// Whether it may write to `table`: it names it, or which table it writes
    /// could not be read.
    pub(crate) fn may_write(&self, table: &str) -> bool {
        self.known.shape.table().is_none_or(|t| t == table)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.sql == other.sql && self.args == other.args
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("sql", &self.sql)
            .field("args", &self.args)
            .finish()
    }
}

/// A statement to send: one held-back write, or several merged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Merged {
    pub(crate) sql: Sql,
    pub(crate) args: Vec<Value>,
}

/// A statement's text: one of the engine's, or a multi-row insert built from one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sql {
    Static(&'static str),
    Built(Arc<str>),
}

impl Sql {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Built(s) => s,
        }
    }
}

/// What is known of a statement: its shape, and its multi-row forms as built.
struct Known {
    shape: Shape,
    /// The multi-row insert of 2^(i+1) rows.
    rows: [OnceLock<Arc<str>>; 5],
}

/// Every statement read so far, by the address of its (static) text.
static KNOWN: LazyLock<RwLock<HashMap<usize, Arc<Known>>>> = LazyLock::new(Default::default);

fn known(sql: &'static str) -> Arc<Known> {
    let key = sql.as_ptr() as usize;
    if let Some(k) = KNOWN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return k.clone();
    }
    let k = Arc::new(Known {
        shape: Shape::of(sql),
        rows: Default::default(),
    });
    KNOWN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_insert(k)
        .clone()
}

impl Known {
    /// The statement inserting `rows` (a power of two, at most [`MAX_ROWS`]) rows.
    fn rows(&self, sql: &'static str, rows: usize) -> Sql {
        let Shape::Insert {
            head,
            tuple,
            params,
            ..
        } = &self.shape
        else {
            return Sql::Static(sql);
        };
        if rows < 2 {
            return Sql::Static(sql);
        }
        let slot = &self.rows[(rows.ilog2() as usize - 1).min(4)];
        Sql::Built(
            slot.get_or_init(|| {
                let mut text = String::with_capacity(head.len() + rows * (tuple.len() + 4));
                text.push_str(head);
                for r in 0..rows {
                    text.push_str(if r == 0 { " " } else { ", " });
                    shifted(tuple, r * params, &mut text);
                }
                text.into()
            })
            .clone(),
        )
    }
}

/// The largest number of rows one multi-row insert carries.
const MAX_ROWS: usize = 32;

/// What a statement is, as far as merging goes.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// `INSERT INTO table (…) VALUES (…)` and nothing after: `head` is the text up
    /// to and including `VALUES`, `tuple` the parenthesized values, which use
    /// placeholders `?1` to `?params`.
    Insert {
        table: String,
        head: String,
        tuple: String,
        params: usize,
    },
    /// `UPDATE table SET c = c + ?n, … WHERE …` whose condition names none of the
    /// added columns: the (1-based) placeholders of the amounts.
    Add { table: String, amounts: Vec<usize> },
    /// Any other write of `table`, or, without a table, of anything.
    Other { table: Option<String> },
}

impl Shape {
    fn of(sql: &str) -> Self {
        let spaced = words(sql).collect::<Vec<_>>().join(" ");
        insert_shape(sql)
            .or_else(|| add_shape(&spaced))
            .unwrap_or_else(|| Self::Other {
                table: written_table(sql),
            })
    }

    fn table(&self) -> Option<&str> {
        match self {
            Self::Insert { table, .. } | Self::Add { table, .. } => Some(table),
            Self::Other { table } => table.as_deref(),
        }
    }

    /// Whether a write of this shape may move past one of `other`'s (either way).
    fn commutes_with(&self, other: &Self) -> bool {
        match (self.table(), other.table()) {
            (Some(a), Some(b)) if a != b => true,
            (Some(_), Some(_)) => matches!((self, other), (Self::Add { .. }, Self::Add { .. })),
            _ => false,
        }
    }
}

/// The words of `sql`, split on whitespace.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split_whitespace()
}

/// A table name as written after `INSERT INTO`, `UPDATE` or `DELETE FROM`
/// (letters, digits and `_`).
fn table_name(word: Option<&str>) -> Option<String> {
    let word = word?;
    let name: &str = word.split('(').next()?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| name.to_owned())
}

/// The table a write changes, if it is one of the three simple forms.
fn written_table(sql: &str) -> Option<String> {
    let mut w = words(sql);
    match (w.next(), w.next()) {
        (Some("INSERT"), Some("INTO")) | (Some("DELETE"), Some("FROM")) => table_name(w.next()),
        (Some("UPDATE"), table) => table_name(table),
        _ => None,
    }
}

fn insert_shape(sql: &str) -> Option<Shape> {
    let table = match words(sql).take(3).collect::<Vec<_>>().as_slice() {
        ["INSERT", "INTO", table] => table_name(Some(table))?,
        _ => return None,
    };
    let at = sql.rfind("VALUES")? + "VALUES".len();
    let tuple = sql[at..].trim();
    // One parenthesized tuple and nothing after it (no `ON CONFLICT`, `RETURNING`).
    if !tuple.starts_with('(') || closing_paren(tuple)? != tuple.len() - 1 {
        return None;
    }
    let params = placeholders(tuple)?.into_iter().max()?;
    Some(Shape::Insert {
        table,
        head: sql[..at].trim().to_owned(),
        tuple: tuple.to_owned(),
        params,
    })
}

fn add_shape(sql: &str) -> Option<Shape> {
    let mut w = words(sql);
    if w.next()? != "UPDATE" {
        return None;
    }
    let table = table_name(w.next())?;
    let set_at = sql.find(" SET ")? + " SET ".len();
    let (set, condition) = sql[set_at..].split_once(" WHERE ")?;
    if condition.contains(" WHERE ") || condition.contains('(') {
        return None;
    }
    let mut amounts = Vec::new();
    let mut columns = Vec::new();
    for assignment in set.split(',') {
        let parts: Vec<&str> = words(assignment).collect();
        let [column, "=", same, "+" | "-", amount] = parts.as_slice() else {
            return None;
        };
        if column != same {
            return None;
        }
        amounts.push(amount.strip_prefix('?')?.parse::<usize>().ok()?);
        columns.push(*column);
    }
    // The condition must not read what the updates add to.
    let reads_added = words(condition)
        .flat_map(|w| w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .any(|w| columns.contains(&w));
    if reads_added || amounts.contains(&0) {
        return None;
    }
    Some(Shape::Add { table, amounts })
}

/// Where the parenthesis opening `s` closes (quotes skipped).
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The numbers of the `?N` placeholders of `s`, outside quotes; `None` for a
/// bare `?`.
fn placeholders(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted => {
                let digits: String =
                    std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).collect();
                out.push(digits.parse::<usize>().ok().filter(|n| *n > 0)?);
            }
            _ => {}
        }
    }
    Some(out)
}

/// `tuple` with every placeholder `?N` renumbered `?(N + by)`.
fn shifted(tuple: &str, by: usize, out: &mut String) {
    let mut quoted = false;
    let mut chars = tuple.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted => {
                let digits: String =
                    std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).collect();
                // `insert_shape` read every placeholder as a number.
                let n = digits.parse::<usize>().unwrap_or(0);
                out.push_str(&(n + by).to_string());
            }
            _ => {}
        }
    }
}

/// One statement being built from merged writes.
struct Building {
    sql: &'static str,
    known: Arc<Known>,
    /// Others may join it: its arguments fit its shape.
    open: bool,
    /// One argument list per row (inserts); one list otherwise.
    rows: Vec<Vec<Value>>,
}

/// `writes`, in order, as the statements to send (see the module docs).
pub(crate) fn coalesce(writes: Vec<Held>) -> Vec<Merged> {
    if writes.len() < 2 {
        return writes
            .into_iter()
            .map(|w| Merged {
                sql: Sql::Static(w.sql),
                args: w.args,
            })
            .collect();
    }
    let mut building: Vec<Building> = Vec::new();
    for w in writes {
        let known = w.known.clone();
        let open = match &known.shape {
            Shape::Insert { params, .. } => w.args.len() == *params,
            Shape::Add { amounts, .. } => amounts_of(&w.args, amounts).is_some(),
            Shape::Other { .. } => false,
        };
        let mut args = Some(w.args);
        if open {
            for b in building.iter_mut().rev() {
                if b.open && Arc::ptr_eq(&b.known, &known) {
                    match (&known.shape, args.take()) {
                        (Shape::Insert { .. }, Some(a)) => b.rows.push(a),
                        (Shape::Add { amounts, .. }, Some(a)) => {
                            if !add_to(&mut b.rows[0], &a, amounts) {
                                args = Some(a);
                            }
                        }
                        (_, a) => args = a,
                    }
                    if args.is_none() {
                        break;
                    }
                }
                if !known.shape.commutes_with(&b.known.shape) {
                    break;
                }
            }
        }
        if let Some(args) = args {
            building.push(Building {
                sql: w.sql,
                known,
                open,
                rows: vec![args],
            });
        }
    }
    let mut out = Vec::with_capacity(building.len());
    for b in building {
        if let Shape::Insert { .. } = b.known.shape
            && b.rows.len() > 1
        {
            let mut rows = b.rows.into_iter();
            let mut left = rows.len();
            while left > 0 {
                // The largest power of two that fits: a handful of shapes.
                let take = MAX_ROWS.min(1 << left.ilog2());
                out.push(Merged {
                    sql: b.known.rows(b.sql, take),
                    args: rows.by_ref().take(take).flatten().collect(),
                });
                left -= take;
            }
        } else {
            out.extend(b.rows.into_iter().map(|args| Merged {
                sql: Sql::Static(b.sql),
                args,
            }));
        }
    }
    out
}

/// The amounts of an additive update's arguments, if each is an integer.
fn amounts_of(args: &[Value], amounts: &[usize]) -> Option<Vec<i64>> {
    amounts
        .iter()
        .map(|n| match args.get(n - 1) {
            Some(Value::Int(x)) => Some(*x),
            _ => None,
        })
        .collect()
}

/// Adds update `b` into update `a` if both change the same row (equal but for
/// their amounts) and no sum overflows; whether it did.
fn add_to(a: &mut [Value], b: &[Value], amounts: &[usize]) -> bool {
    let same_row = a.len() == b.len()
        && a.iter()
            .zip(b)
            .enumerate()
            .all(|(i, (x, y))| amounts.contains(&(i + 1)) || x == y);
    let (Some(xs), Some(ys)) = (amounts_of(a, amounts), amounts_of(b, amounts)) else {
        return false;
    };
    let Some(sums) = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| x.checked_add(*y))
        .collect::<Option<Vec<i64>>>()
    else {
        return false;
    };
    if !same_row {
        return false;
    }
    for (n, sum) in amounts.iter().zip(sums) {
        a[n - 1] = Value::Int(sum);
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Arg;
    use proptest::prelude::*;

    fn held(sql: &'static str, args: &[Value]) -> Held {
        Held::new(sql, args.to_vec())
    }

    /// What a write or merged statement is sent as.
    fn sent(m: &Merged) -> Held {
        Held::new(
            Box::leak(m.sql.as_str().to_owned().into_boxed_str()),
            m.args.clone(),
        )
    }

    const INSERT_A: &str = "INSERT INTO a (id, kind, n)\n     VALUES (?1, 'open', ?2)";
    const INSERT_B: &str = "INSERT INTO b (id, note) VALUES (?1, ?2)";
    const ADD_A: &str = "UPDATE a SET n = n + ?2\n     WHERE id = ?1";
    const MOVE_A: &str = "UPDATE a SET n = n - ?2, m = m + ?3 WHERE id = ?1";
    const SET_A: &str = "UPDATE a SET kind = ?2 WHERE id = ?1";
    const ADD_B_BY_NOTE: &str = "UPDATE b SET hits = hits + ?2 WHERE note = ?1";
    const DELETE_B: &str = "DELETE FROM b WHERE id = ?1";

    #[test]
    fn a_write_may_write_the_table_it_names_or_any_if_unread() {
        let insert = held("INSERT INTO t (a) VALUES (?1)", &[Value::Int(1)]);
        assert!(insert.may_write("t") && !insert.may_write("u"));
        let add = held("UPDATE u SET c = c + ?2 WHERE id = ?1", &[]);
        assert!(add.may_write("u") && !add.may_write("t"));
        let unread = held("REPLACE INTO t SELECT * FROM u", &[]);
        assert!(unread.may_write("t") && unread.may_write("v"));
    }

    #[test]
    fn statements_are_read_as_inserts_additive_updates_or_neither() {
        assert!(matches!(
            Shape::of(INSERT_A),
            Shape::Insert { ref table, params: 2, .. } if table == "a"
        ));
        assert_eq!(
            Shape::of(MOVE_A),
            Shape::Add {
                table: "a".into(),
                amounts: vec![2, 3]
            }
        );
        for other in [
            SET_A,
            DELETE_B,
            "INSERT INTO a (id) VALUES (?1) ON CONFLICT (id) DO NOTHING",
            "INSERT INTO a (id) VALUES (?1) RETURNING id",
            "INSERT INTO a (id) SELECT id FROM b",
            // The condition reads what the update adds to.
            "UPDATE a SET n = n + ?2 WHERE id = ?1 AND n < 10",
            "UPDATE a SET n = m + ?2 WHERE id = ?1",
            "UPDATE a SET n = n + 1 WHERE id = ?1",
            "UPDATE a SET n = n + ?2 WHERE id IN (SELECT id FROM b)",
        ] {
            assert!(matches!(Shape::of(other), Shape::Other { .. }), "{other}");
        }
        assert_eq!(Shape::of(DELETE_B).table(), Some("b"));
        assert_eq!(Shape::of("PRAGMA x").table(), None);
    }

    #[test]
    fn inserts_of_one_statement_become_multi_row_statements_in_few_shapes() {
        let writes: Vec<Held> = (0..45)
            .map(|i| held(INSERT_A, &[Value::Int(i), Value::Int(i * 10)]))
            .collect();
        let out = coalesce(writes);
        let rows: Vec<usize> = out.iter().map(|h| h.args.len() / 2).collect();
        assert_eq!(rows, [32, 8, 4, 1]);
        assert!(
            out[2].sql.as_str().ends_with(
                "VALUES (?1, 'open', ?2), (?3, 'open', ?4), (?5, 'open', ?6), (?7, 'open', ?8)"
            ),
            "{}",
            out[2].sql.as_str()
        );
        assert_eq!(out[3].sql, Sql::Static(INSERT_A));
        assert_eq!(out[3].args, [Value::Int(44), Value::Int(440)]);
    }

    #[test]
    fn additive_updates_of_one_row_are_summed_and_order_is_kept_where_it_matters() {
        let out = coalesce(vec![
            held(INSERT_A, &[Value::Int(1), Value::Int(0)]),
            held(ADD_A, &[Value::Int(1), Value::Int(5)]),
            held(INSERT_B, &[Value::Int(1), Value::Text("x".into())]),
            held(ADD_A, &[Value::Int(2), Value::Int(7)]),
            held(ADD_A, &[Value::Int(1), Value::Int(-2)]),
            held(SET_A, &[Value::Int(1), Value::Text("done".into())]),
            held(ADD_A, &[Value::Int(1), Value::Int(100)]),
            held(INSERT_B, &[Value::Int(2), Value::Text("y".into())]),
        ]);
        let shown: Vec<(&str, &[Value])> =
            out.iter().map(|h| (h.sql.as_str(), &h.args[..])).collect();
        assert_eq!(
            shown,
            [
                (INSERT_A, &[Value::Int(1), Value::Int(0)][..]),
                (ADD_A, &[Value::Int(1), Value::Int(3)][..]),
                (
                    "INSERT INTO b (id, note) VALUES (?1, ?2), (?3, ?4)",
                    &[
                        Value::Int(1),
                        Value::Text("x".into()),
                        Value::Int(2),
                        Value::Text("y".into())
                    ][..]
                ),
                (ADD_A, &[Value::Int(2), Value::Int(7)][..]),
                // Not past the update that sets a value of the table.
                (SET_A, &[Value::Int(1), Value::Text("done".into())][..]),
                (ADD_A, &[Value::Int(1), Value::Int(100)][..]),
            ]
        );
    }

    fn database() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a (id INTEGER PRIMARY KEY, kind TEXT, n INTEGER DEFAULT 0,
                 m INTEGER DEFAULT 0);
             CREATE TABLE b (id INTEGER PRIMARY KEY, note TEXT, hits INTEGER DEFAULT 0);",
        )
        .unwrap();
        conn
    }

    /// Runs `writes` in order; whether every one succeeded.
    fn run(conn: &rusqlite::Connection, writes: &[Held]) -> bool {
        writes.iter().all(|w| {
            let args: Vec<Arg<'_>> = w.args.iter().map(Value::as_arg).collect();
            crate::store::sql::Sql::execute(conn, w.sql, &args).is_ok()
        })
    }

    /// `writes` without the inserts of an id its table already had: writes that
    /// all succeed, as a group's must.
    fn succeeding(writes: Vec<Held>) -> Vec<Held> {
        let mut seen = std::collections::HashSet::new();
        writes
            .into_iter()
            .filter(|w| {
                !w.sql.starts_with("INSERT") || seen.insert((w.sql, format!("{:?}", w.args[0])))
            })
            .collect()
    }

    fn contents(conn: &rusqlite::Connection) -> Vec<String> {
        let mut out = Vec::new();
        for table in ["a", "b"] {
            let mut st = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
                .unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for r in rows {
                out.push(format!("{table}: {}", r.unwrap().join(", ")));
            }
        }
        out
    }

    fn a_write() -> impl Strategy<Value = Held> {
        let id = 0i64..6;
        let note = prop_oneof![Just("x"), Just("y")];
        prop_oneof![
            3 => (id.clone(), -5i64..5).prop_map(|(i, n)| held(INSERT_A, &[Value::Int(i), Value::Int(n)])),
            2 => (id.clone(), note.clone()).prop_map(|(i, s)| held(INSERT_B, &[Value::Int(i), Value::Text(s.into())])),
            4 => (id.clone(), -9i64..9).prop_map(|(i, n)| held(ADD_A, &[Value::Int(i), Value::Int(n)])),
            2 => (id.clone(), -9i64..9, 0i64..9).prop_map(|(i, n, m)| held(MOVE_A, &[Value::Int(i), Value::Int(n), Value::Int(m)])),
            1 => (id.clone(), note.clone()).prop_map(|(i, s)| held(SET_A, &[Value::Int(i), Value::Text(s.into())])),
            2 => (note, 0i64..3).prop_map(|(s, n)| held(ADD_B_BY_NOTE, &[Value::Text(s.into()), Value::Int(n)])),
            1 => id.prop_map(|i| held(DELETE_B, &[Value::Int(i)])),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the writes, sending them coalesced leaves the database as
        /// sending them one by one, in order, does.
        #[test]
        fn coalesced_writes_leave_what_the_writes_in_order_leave(
            writes in proptest::collection::vec(a_write(), 0..80).prop_map(succeeding)
        ) {
            let (one_by_one, together) = (database(), database());
            prop_assert!(run(&one_by_one, &writes));
            let out: Vec<Held> = coalesce(writes.clone()).iter().map(sent).collect();
            prop_assert!(out.len() <= writes.len());
            prop_assert!(run(&together, &out));
            prop_assert_eq!(contents(&one_by_one), contents(&together));
        }
    }
}
