//! What one query may take, and what its errors may say.
//!
//! - Memory: each query runs with its own [`QueryPool`], a budget of
//!   `query_memory_bytes` drawn from a pool all queries share (`total_memory_bytes`).
//!   Operators that buffer (sorts, joins, aggregates, windows) reserve from it; a query
//!   that needs more fails with SQLSTATE 53200 (`out_of_memory`) and frees what it held.
//!   Confined sessions do not spill to disk.
//! - Time: a statement still running at its deadline is cancelled (its stream dropped,
//!   which stops every task it started) with SQLSTATE 57014 (`query_canceled`).
//! - Errors: a role's query that fails while evaluating rows says what failed (a cast,
//!   a division by zero), never the values: [`scrub`].
//! - Nesting: parsing, planning and evaluating a statement recurse once per level of
//!   its expressions, subqueries and set operations; a statement that nests deeper than
//!   [`MAX_NESTING`] (`1+1+1+…`, thousands of `UNION`s) would overflow the stack of the
//!   thread running it and end the whole server. [`check_nesting`] refuses it from its
//!   tokens, before anything builds its syntax tree (SQLSTATE 54001).

use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::Stream;

use crate::readonly::Refusal;

/// SQLSTATE of a query over its memory: `out_of_memory`.
pub const OUT_OF_MEMORY: &str = "53200";
/// SQLSTATE of a query cancelled at its deadline: `query_canceled`.
pub const CANCELED: &str = "57014";
/// SQLSTATE of a statement nested too deeply: `statement_too_complex`.
pub const TOO_COMPLEX: &str = "54001";
/// SQLSTATE of a statement longer than the server takes: `program_limit_exceeded`.
pub const TOO_LONG: &str = "54000";

/// The deepest a statement may nest (see [`check_nesting`]). Measured on this project's
/// debug build with 8 MiB thread stacks: `select 1+1+…` with 2,000 terms, and 500
/// `UNION ALL`s, overflowed; 1,000 terms and 333 `UNION ALL`s did not.
pub const MAX_NESTING: usize = 1000;

/// An upper bound on how deep `sql` nests, from its tokens alone (no syntax tree, no
/// recursion): within each comma-separated item of each parenthesised group, every
/// operator, keyword, `.` and inner group may add a level to the tree (a chain
/// `a + b + c` is a tree as deep as it is long), plus the deepest group inside the item. `CASE` branches
/// (`WHEN`/`THEN`/`ELSE`) are lists, like commas. Identifiers and literals add nothing.
/// Statements that do not tokenize get a bound of 0 (the parser reports them).
pub fn nesting(sql: &str) -> usize {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return 0;
    };
    /// One open group: the operators of its current item, the deepest group met in
    /// that item, and its deepest item so far.
    #[derive(Default)]
    struct Group {
        operators: usize,
        inner: usize,
        deepest: usize,
    }
    impl Group {
        fn end_item(&mut self) {
            self.deepest = self.deepest.max(self.operators.saturating_add(self.inner));
            self.operators = 0;
            self.inner = 0;
        }
    }
    let mut open = vec![Group::default()];
    for token in &tokens {
        match token {
            Token::Whitespace(_) | Token::Placeholder(_) | Token::EOF => {}
            Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => {}
            Token::Word(w)
                if w.quote_style.is_some() || matches!(w.keyword, Keyword::NoKeyword) => {}
            Token::Word(w)
                if matches!(w.keyword, Keyword::WHEN | Keyword::THEN | Keyword::ELSE) =>
            {
                if let Some(g) = open.last_mut() {
                    g.end_item();
                }
            }
            Token::Comma | Token::SemiColon => {
                if let Some(g) = open.last_mut() {
                    g.end_item();
                }
            }
            Token::LParen | Token::LBracket | Token::LBrace => open.push(Group::default()),
            Token::RParen | Token::RBracket | Token::RBrace if open.len() > 1 => {
                if let Some(mut g) = open.pop() {
                    g.end_item();
                    if let Some(outer) = open.last_mut() {
                        outer.inner = outer.inner.max(g.deepest.saturating_add(1));
                        // A group may be a link of a chain too: `a[1][1]…`, `f(x)(y)…`.
                        outer.operators = outer.operators.saturating_add(1);
                    }
                }
            }
            _ => {
                if let Some(g) = open.last_mut() {
                    g.operators = g.operators.saturating_add(1);
                }
            }
        }
    }
    // Groups left open count as closed.
    let mut depth = 0;
    while let Some(mut g) = open.pop() {
        g.inner = g.inner.max(depth);
        g.end_item();
        depth = g.deepest.saturating_add(1);
    }
    depth.saturating_sub(1)
}

/// Refuse `sql` when it may nest deeper than [`MAX_NESTING`] (see [`nesting`]).
pub fn check_nesting(sql: &str) -> Result<(), Refusal> {
    let depth = nesting(sql);
    if depth <= MAX_NESTING {
        return Ok(());
    }
    Err(Refusal {
        sqlstate: TOO_COMPLEX,
        message: format!(
            "the statement nests too deeply: up to {depth} levels of operators, subqueries or \
             set operations in one expression, more than the {MAX_NESTING} a session takes; \
             split it, or write long lists of alternatives as IN (…)"
        ),
    })
}

/// The memory one query may hold, drawn from a pool shared by all queries.
#[derive(Debug)]
pub struct QueryPool {
    limit: usize,
    used: AtomicUsize,
    shared: Option<Arc<dyn MemoryPool>>,
    /// Why the last reservation was refused: an operator that then fails otherwise (an
    /// aggregate that cannot spill says "DiskManager is disabled") loses this reason.
    refused: std::sync::Mutex<Option<String>>,
}

impl QueryPool {
    /// A budget of `limit` bytes, each of them also reserved from `shared` when given.
    pub fn new(limit: usize, shared: Option<Arc<dyn MemoryPool>>) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            shared,
            refused: std::sync::Mutex::new(None),
        }
    }

    /// Why the pool last refused a reservation, if it did.
    pub fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn refuse(&self, message: String) -> DataFusionError {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
        DataFusionError::ResourcesExhausted(message)
    }
}

impl Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueryPool({} of {} bytes)", self.reserved(), self.limit)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "QueryPool"
    }

    fn register(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        if let Some(s) = &self.shared {
            s.register(consumer);
        }
    }

    fn unregister(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        if let Some(s) = &self.shared {
            s.unregister(consumer);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::SeqCst);
        if let Some(s) = &self.shared {
            s.grow(reservation, additional);
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::SeqCst);
        if let Some(s) = &self.shared {
            s.shrink(reservation, shrink);
        }
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let over = |used: usize| {
            self.refuse(format!(
                "the query needs more memory than its {} bytes (query_memory_bytes): {} \
                 asked for {additional} more with {used} in use",
                self.limit,
                reservation.consumer().name()
            ))
        };
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            let next = used
                .checked_add(additional)
                .filter(|n| *n <= self.limit)
                .ok_or_else(|| over(used))?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        if let Some(s) = &self.shared
            && let Err(e) = s.try_grow(reservation, additional)
        {
            self.used.fetch_sub(additional, Ordering::SeqCst);
            return Err(self.refuse(format!(
                "the server's queries together hold all of total_memory_bytes: {}",
                e.find_root()
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// A statement cancelled at its deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("canceling statement due to statement timeout ({0} ms)")]
pub struct TimedOut(pub u128);

/// An error of a role's query, said without the values it could quote.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Scrubbed {
    pub sqlstate: Option<&'static str>,
    pub message: String,
}

/// The first error of type `T` in `e`'s chain of sources.
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        at = err.source();
    }
    None
}

/// The SQLSTATE `e` stands for, when it is one of sluice's: a refusal, a query over its
/// memory or past its deadline.
pub fn sqlstate(e: &DataFusionError) -> Option<&'static str> {
    if let Some(r) = find::<Refusal>(e) {
        return Some(r.sqlstate);
    }
    if find::<TimedOut>(e).is_some() {
        return Some(CANCELED);
    }
    if let Some(s) = find::<Scrubbed>(e) {
        return s.sqlstate;
    }
    let mut at = Some(e as &(dyn std::error::Error + 'static));
    while let Some(err) = at {
        if let Some(DataFusionError::ResourcesExhausted(_)) = err.downcast_ref::<DataFusionError>()
        {
            return Some(OUT_OF_MEMORY);
        }
        at = err.source();
    }
    None
}

/// The message of one of sluice's errors in `e` (a refusal, a timeout, a scrubbed
/// error), else of the innermost DataFusion error.
pub fn message(e: &DataFusionError) -> String {
    find::<Refusal>(e)
        .map(ToString::to_string)
        .or_else(|| find::<TimedOut>(e).map(ToString::to_string))
        .or_else(|| find::<Scrubbed>(e).map(ToString::to_string))
        .unwrap_or_else(|| e.find_root().to_string())
}

/// What `e` (raised while a query of `role` evaluated rows) may say: the kind of
/// failure, never a value. Refusals, memory and deadline errors say nothing of the
/// data and are kept.
pub fn scrub(e: &DataFusionError, role: &str) -> Scrubbed {
    if let Some(code) = sqlstate(e) {
        return Scrubbed {
            sqlstate: Some(code),
            message: message(e),
        };
    }
    let (code, what) = match e.find_root() {
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::DivideByZero => ("22012", "division by zero"),
            ArrowError::CastError(_) => ("22P02", "a value could not be cast"),
            ArrowError::ParseError(_) => ("22P02", "a value could not be parsed"),
            ArrowError::ArithmeticOverflow(_) => ("22003", "a number overflowed"),
            _ => ("22000", "a function failed on a value"),
        },
        DataFusionError::Execution(_) => ("22000", "a function failed on a value"),
        _ => ("XX000", "the query failed"),
    };
    Scrubbed {
        sqlstate: Some(code),
        message: format!(
            "{what} while evaluating the query (details are not shown to role '{role}': they could quote values)"
        ),
    }
}

/// A query's stream, cancelled at its deadline, its errors scrubbed for a role.
pub struct Guarded {
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    role: Option<String>,
    memory: Option<Arc<QueryPool>>,
}

impl Guarded {
    /// `inner`, failing with [`TimedOut`] once `deadline` (an instant and the timeout it
    /// came from) passes; errors scrubbed when `role` is given.
    pub fn new(
        inner: SendableRecordBatchStream,
        deadline: Option<(tokio::time::Instant, Duration)>,
        role: Option<String>,
    ) -> Self {
        Self {
            schema: inner.schema(),
            inner: Some(inner),
            deadline: deadline.map(|(at, d)| (Box::pin(tokio::time::sleep_until(at)), d)),
            role,
            memory: None,
        }
    }

    /// A query over its memory fails saying which budget `pool` ran out of, whatever
    /// operator reports it.
    pub fn with_memory(mut self, pool: Option<Arc<QueryPool>>) -> Self {
        self.memory = pool;
        self
    }
}

impl Stream for Guarded {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some((sleep, after)) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let after = after.as_millis();
            // Dropping the stream stops the query's tasks.
            this.inner = None;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(TimedOut(
                after,
            ))))));
        }
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                let budget = this.memory.as_ref().and_then(|p| p.refusal());
                let e = match budget {
                    Some(why)
                        if sqlstate(&e) == Some(OUT_OF_MEMORY) && !e.to_string().contains(&why) =>
                    {
                        DataFusionError::ResourcesExhausted(why)
                    }
                    _ => e,
                };
                let e = match &this.role {
                    Some(role) => DataFusionError::External(Box::new(scrub(&e, role))),
                    None => e,
                };
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for Guarded {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer};

    #[test]
    fn a_query_has_its_budget_and_all_share_the_total() {
        let total: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(150));
        let a: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(100, Some(total.clone())));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(100, Some(total.clone())));
        let ra = MemoryConsumer::new("sort").register(&a);
        let rb = MemoryConsumer::new("join").register(&b);
        ra.try_grow(80).expect("within its budget");
        let e = ra.try_grow(30).expect_err("over its budget");
        assert_eq!(sqlstate(&e), Some(OUT_OF_MEMORY));
        assert!(e.to_string().contains("query_memory_bytes"), "{e}");
        assert_eq!(a.reserved(), 80);
        let e = rb.try_grow(90).expect_err("over the total");
        assert!(e.to_string().contains("total_memory_bytes"), "{e}");
        assert_eq!(b.reserved(), 0, "a refused reservation holds nothing");
        rb.try_grow(70).expect("what the total has left");
        assert!(rb.try_grow(10).is_err(), "the total is full");
        drop(ra);
        assert_eq!(total.reserved(), 70);
        rb.try_grow(30).expect("freed by the first query");
    }

    #[tokio::test]
    async fn a_query_over_its_memory_names_the_budget_whatever_operator_says_so() {
        use futures::StreamExt;
        let pool = Arc::new(QueryPool::new(100, None));
        let as_pool: Arc<dyn MemoryPool> = pool.clone();
        let r = MemoryConsumer::new("aggregate").register(&as_pool);
        assert!(r.try_grow(200).is_err());
        // The operator reports its own failure to spill, not the pool's refusal.
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let failing = futures::stream::iter(vec![Err::<RecordBatch, _>(
            DataFusionError::ResourcesExhausted(
                "Memory Exhausted while SpillPool (DiskManager is disabled)".into(),
            ),
        )]);
        let inner: SendableRecordBatchStream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, failing),
        );
        let mut s = Guarded::new(inner, None, Some("analyst".into())).with_memory(Some(pool));
        let e = s.next().await.expect("an item").expect_err("over memory");
        assert_eq!(sqlstate(&e), Some(OUT_OF_MEMORY));
        assert!(
            message(&e).contains("query_memory_bytes"),
            "{}",
            message(&e)
        );
    }

    #[test]
    fn errors_of_a_role_say_what_failed_not_the_value() {
        let cast = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'hidden-value-7' to value of Int32 type".into(),
            )),
            None,
        );
        let s = scrub(&cast.context("evaluating"), "analyst");
        assert!(!s.message.contains("hidden-value-7"), "{}", s.message);
        assert!(s.message.contains("could not be cast"), "{}", s.message);
        let e = DataFusionError::Execution("bad value 'hidden-value-7'".into());
        assert!(!scrub(&e, "analyst").message.contains("hidden"));
        let memory = DataFusionError::ResourcesExhausted("the query needs more".into());
        assert_eq!(scrub(&memory, "analyst").sqlstate, Some(OUT_OF_MEMORY));
        let late = DataFusionError::External(Box::new(TimedOut(10)));
        let s = scrub(&late, "analyst");
        assert_eq!(s.sqlstate, Some(CANCELED));
        assert!(s.message.contains("statement timeout"), "{}", s.message);
    }

    #[test]
    fn statements_nesting_deeper_than_a_stack_holds_are_refused_from_their_tokens() {
        let chain = |n: usize, link: &str| format!("select 1{}", link.repeat(n));
        for deep in [
            chain(2_000, "+1"),
            chain(200_000, "+1"),
            chain(1_000, " || 'é'"),
            format!("select 1 as x{}", " union all select 1".repeat(500)),
            format!("select (1{}) from t", " * 2".repeat(1_100)),
            format!("select f({})", chain(1_100, "-1")),
            // Left open: still counted.
            format!("select (((1{}", " and 1".repeat(1_100)),
            format!("select make_array(1){}", "[1]".repeat(2_000)),
            format!("select s{}", ".f".repeat(2_000)),
        ] {
            let head: String = deep.chars().take(40).collect();
            let e = check_nesting(&deep).expect_err(&head);
            assert_eq!(e.sqlstate, TOO_COMPLEX);
            assert!(e.message.contains("nests too deeply"), "{}", e.message);
        }
        // Groups add up: two nested chains of 600.
        let nested = format!("select 1 {} + ({})", "+ 1 ".repeat(600), chain(600, "+1"));
        assert!(nesting(&nested) > 1_200, "{}", nesting(&nested));
        assert!(nesting("select ((((1))))") >= 4);
        // Long lists are not deep: IN lists, CASE branches, wide selects, many tables.
        let values: Vec<String> = (0..20_000).map(|i| format!("'v{i}'")).collect();
        let when: String = (0..3_000)
            .map(|i| format!(" when product = 'p{i}' then {i}"))
            .collect();
        let or: Vec<String> = (0..300).map(|i| format!("product = 'p{i}'")).collect();
        let columns: Vec<String> = (0..2_000)
            .map(|i| format!("c{i} + 1 as \"é{i}\""))
            .collect();
        for wide in [
            format!("select * from t where product in ({})", values.join(",")),
            format!("select case{when} else 0 end from t"),
            format!("select count(*) from t where {}", or.join(" or ")),
            format!("select {} from t", columns.join(", ")),
            "select a.x, sum(b.y) from s.a a join s.b b on a.k = b.k where a.z > 0 \
             group by a.x order by 2 desc limit 10"
                .to_string(),
            "select 'it''s ((((' || \"col ((\" from t".to_string(),
        ] {
            let head: String = wide.chars().take(60).collect();
            assert_eq!(check_nesting(&wide), Ok(()), "{head}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_fails_and_stops() {
        use futures::StreamExt;
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let never = futures::stream::pending::<datafusion::error::Result<RecordBatch>>();
        let inner: SendableRecordBatchStream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema.clone(), never),
        );
        let at = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut s = Guarded::new(inner, Some((at, Duration::from_millis(50))), None);
        let e = s.next().await.expect("an item").expect_err("timed out");
        assert_eq!(sqlstate(&e), Some(CANCELED));
        assert!(s.next().await.is_none());
    }
}
