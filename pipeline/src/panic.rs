//! Panics contained at the boundaries where hostile input is handled.
//!
//! A decoder or transform that panics on some message is a bug, but one a producer can
//! trigger at will: left alone it would end `sluice run`, and a restart would panic again
//! on the same offset, stopping the partition for good. So the places that handle input
//! run third-party and own code under [`guard`], which turns a panic into an error; the
//! caller then bisects its batch down to the messages that cause it and makes them dead
//! letters, and the rest lands.
//!
//! The default panic hook prints the panic's message, and messages quote values (a slice
//! out of bounds prints the string it cut): [`install_hook`] replaces it with one that
//! logs where the panic happened, never what it said, and remembers the place so
//! [`guard`] can name it in the dead letter's error.
//!
//! ```
//! use sluice_pipeline::panic::guard;
//!
//! let ok = guard(|| 1 + 1);
//! assert_eq!(ok.ok(), Some(2));
//! let caught = guard(|| -> u8 { panic!("a value that must not be logged") });
//! assert!(caught.is_err());
//! ```

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// Where the last panic on this thread happened (`file:line`).
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set while [`guard_known`] runs: its panics are expected and not logged.
    static KNOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic caught by [`guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    /// `file:line` of the panic, when the hook saw it.
    pub location: Option<String>,
}

impl std::error::Error for Panicked {}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(at) => write!(f, "internal error (a panic at {at}; please report it)"),
            None => write!(f, "internal error (a panic; please report it)"),
        }
    }
}

/// Run `f`, turning a panic into [`Panicked`]. State `f` mutated may be half-updated
/// after a panic: callers only guard work whose inputs they can rebuild or discard.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    LAST.with(|l| l.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked {
        location: LAST.with(|l| l.borrow_mut().take()),
    })
}

/// [`guard`] for a panic known to happen on some input, in code sluice does not own (e.g.
/// a client library's accessor that unwraps): the caller turns it into a dead letter with
/// its own error, so the hook does not log it (a producer could flood the log otherwise).
pub fn guard_known<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    let outer = KNOWN.with(|k| k.replace(true));
    let result = guard(f);
    KNOWN.with(|k| k.set(outer));
    result
}

/// Replace the process's panic hook by one that logs the panic's location (never its
/// message, which may quote payload values) and records it for [`guard`].
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        if KNOWN.with(std::cell::Cell::get) {
            return;
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(
            location = location.as_deref().unwrap_or("unknown"),
            thread = %thread,
            "Panic (message withheld: it may quote payload values)."
        );
        LAST.with(|l| *l.borrow_mut() = location);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_panic_is_an_error_that_quotes_nothing() {
        // (The hook is not installed here: it would withhold the messages of failing
        // tests in this binary too.)
        let text = String::from("££");
        let caught = guard(|| text.get(..1).map(str::len).expect("cuts a character"));
        let err = caught.expect_err("a panic");
        assert!(!err.to_string().contains('£'), "{err}");
        assert_eq!(guard(|| 7).ok(), Some(7), "no panic, no error");
    }
}
