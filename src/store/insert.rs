//! A prepared multi-row `INSERT` whose texts SQLite reads in place.
//!
//! Why not rusqlite's binding: it hands every text to SQLite with
//! `SQLITE_TRANSIENT`, so SQLite allocates a copy of each of an event's six
//! or seven texts, copies it, and frees it at the next bind. Counted with
//! callgrind (10,000 instructions per event for the whole writer), that was
//! 3,900 instructions per event, a third of the writer's work, on the
//! thread that shares the two cores with the message path. The texts of a
//! batch live until its statements have run, so `SQLITE_STATIC` is enough:
//! [`Insert::run`] binds a chunk of rows, steps the statement once, and
//! clears the bindings before it returns, so SQLite never keeps a pointer
//! into the caller's memory past the call.
//!
//! This is the crate's only use of SQLite's C API outside rusqlite: the
//! unsafe code is this file.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rusqlite::{ffi, Connection};

/// One value of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Int(i64),
    /// `None` binds NULL.
    Text(Option<&'a str>),
}

/// A prepared statement on `conn`, finalized on drop.
pub(super) struct Insert<'c> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    params: usize,
    _conn: PhantomData<&'c Connection>,
}

impl<'c> Insert<'c> {
    /// Prepares `sql` (one statement with `?` parameters) on `conn`.
    pub(super) fn new(conn: &'c Connection, sql: &str) -> rusqlite::Result<Insert<'c>> {
        let len = c_int::try_from(sql.len()).map_err(|_| misuse("statement too long"))?;
        // SAFETY: the handle belongs to `conn`, which outlives `self` (the
        // lifetime), and is used from this thread only: `Connection` is not
        // `Sync`, and `Insert` holds a raw pointer, so it is not `Send`.
        let db = unsafe { conn.handle() };
        let mut stmt = ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes; `stmt` is a valid out
        // pointer; a null tail pointer is allowed.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| misuse("no statement in the SQL"))?;
        // SAFETY: `stmt` is a valid prepared statement.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) } as usize;
        Ok(Insert {
            stmt,
            db,
            params,
            _conn: PhantomData,
        })
    }

    /// Binds `values` to the statement's parameters in order (exactly as
    /// many as it has), runs it to completion, then resets it and clears
    /// every binding, whether it succeeded or not.
    pub(super) fn run<'v>(
        &mut self,
        values: impl IntoIterator<Item = Value<'v>>,
    ) -> rusqlite::Result<()> {
        let stepped = self.bind(values).and_then(|()| {
            // SAFETY: a valid statement; every text bound to it is borrowed
            // for the whole of this call.
            match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
                ffi::SQLITE_DONE => Ok(()),
                rc => Err(error(self.db, rc)),
            }
        });
        // SAFETY: a valid statement. After these two calls SQLite holds no
        // pointer into the texts bound above.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
        stepped
    }

    fn bind<'v>(&mut self, values: impl IntoIterator<Item = Value<'v>>) -> rusqlite::Result<()> {
        let stmt = self.stmt.as_ptr();
        let mut n = 0;
        for value in values {
            n += 1;
            if n > self.params {
                return Err(misuse("more values than parameters"));
            }
            let i = n as c_int;
            // SAFETY: a valid statement and a parameter index in range.
            // A text is bound `SQLITE_STATIC`: SQLite reads it in place
            // until the bindings are cleared, which `run` does before its
            // borrow of the text ends.
            let rc = unsafe {
                match value {
                    Value::Int(v) => ffi::sqlite3_bind_int64(stmt, i, v),
                    Value::Text(None) => ffi::sqlite3_bind_null(stmt, i),
                    Value::Text(Some(s)) => {
                        let len = c_int::try_from(s.len())
                            .map_err(|_| misuse("text longer than 2 GiB"))?;
                        // An empty `&str` may dangle; SQLite gets a real one.
                        let p = if s.is_empty() {
                            c"".as_ptr()
                        } else {
                            s.as_ptr().cast::<c_char>()
                        };
                        ffi::sqlite3_bind_text(stmt, i, p, len, ffi::SQLITE_STATIC())
                    }
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(error(self.db, rc));
            }
        }
        if n != self.params {
            return Err(misuse("fewer values than parameters"));
        }
        Ok(())
    }
}

impl Drop for Insert<'_> {
    fn drop(&mut self) {
        // SAFETY: a valid statement, finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The error SQLite reports for `rc` on `db`, as rusqlite would make it.
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a valid connection handle; the message is copied
    // before any other call on it.
    let msg = unsafe {
        let p = ffi::sqlite3_errmsg(db);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), msg)
}

fn misuse(what: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_MISUSE), Some(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{Insert, Value};
    use rusqlite::Connection;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c TEXT)")
            .unwrap();
        conn
    }

    #[test]
    fn rows_arrive_as_bound_and_the_memory_can_go() {
        let conn = db();
        {
            let mut ins = Insert::new(&conn, "INSERT INTO t VALUES (?,?,?),(?,?,?)").unwrap();
            for round in 0..3 {
                // Texts that die right after the call: SQLite must have
                // copied what it stores and kept no pointer.
                let b = format!("买家{round}");
                let c = String::new();
                ins.run([
                    Value::Int(round),
                    Value::Text(Some(&b)),
                    Value::Text(None),
                    Value::Int(-round),
                    Value::Text(Some("亲，您好")),
                    Value::Text(Some(&c)),
                ])
                .unwrap();
            }
        }
        let rows: Vec<(i64, String, Option<String>)> = conn
            .prepare("SELECT a, b, c FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[2], (1, "买家1".to_string(), None));
        assert_eq!(rows[5], (-2, "亲，您好".to_string(), Some(String::new())));
    }

    #[test]
    fn a_wrong_count_or_a_failing_row_is_an_error_and_the_statement_recovers() {
        let conn = db();
        conn.execute_batch("CREATE UNIQUE INDEX ta ON t (a)")
            .unwrap();
        let mut ins = Insert::new(&conn, "INSERT INTO t VALUES (?,?,?)").unwrap();
        let row = |a| [Value::Int(a), Value::Text(Some("x")), Value::Text(None)];
        let few = ins.run([Value::Int(1)]).unwrap_err();
        assert!(few.to_string().contains("fewer values"), "{few}");
        let many = ins
            .run(row(1).into_iter().chain([Value::Int(2)]))
            .unwrap_err();
        assert!(many.to_string().contains("more values"), "{many}");
        ins.run(row(1)).unwrap();
        let dup = ins.run(row(1)).unwrap_err();
        assert!(dup.to_string().contains("UNIQUE"), "{dup}");
        ins.run(row(2)).unwrap();
        drop(ins);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(Insert::new(&conn, "INSERT INTO nope VALUES (?)").is_err());
    }
}
