//! One commit's transaction on PostgreSQL: its reads (read ahead, `BEGIN` pipelined with the
//! first), and its writes, `COMMIT` and durability barrier in one round trip; and prefix
//! scans in pages.

use std::sync::Arc;

use deadpool_postgres::Object;
use futures_util::future;

use super::{Postgres, db_failure};
use crate::storage::Result;
use crate::storage::backend::{Batch, Reader};

pub(super) const GET: &str = "SELECT value FROM kv WHERE space = $1 AND key = $2";
/// Rows fetched per round trip of a prefix scan.
const PAGE: i64 = 512;

/// Reads inside a commit's transaction. Nothing else writes the space while the
/// transaction holds its lock, so what was read ahead stays true until the commit. The
/// transaction's `BEGIN` goes out with the first read (or with the writes), in the same round
/// trip.
pub(super) struct TxReader<'a> {
    pub(super) pg: &'a Postgres,
    pub(super) client: &'a Arc<Object>,
    pub(super) space: &'a str,
    pub(super) begin: std::cell::RefCell<Option<String>>,
    pub(super) ahead: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Reader for TxReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.ahead.borrow().get(key) {
            return Ok(value.clone());
        }
        let (client, space, key, begin) =
            (self.client.clone(), self.space.to_owned(), key.to_vec(), self.begin.borrow_mut().take());
        self.pg
            .run(async move {
                let statement = client.prepare_cached(GET).await?;
                let (begun, row) =
                    future::join(begin_first(&client, &begin), client.query_opt(&statement, &[&space, &key])).await;
                begun?;
                Ok::<_, tokio_postgres::Error>(row?.map(|r| r.get::<_, Vec<u8>>(0)))
            })?
            .map_err(db_failure)
    }

    fn prefetch(&self, keys: &[Vec<u8>]) -> Result<()> {
        let (client, space, wanted, begin) =
            (self.client.clone(), self.space.to_owned(), keys.to_vec(), self.begin.borrow_mut().take());
        let rows = self
            .pg
            .run(async move {
                let statement =
                    client.prepare_cached("SELECT key, value FROM kv WHERE space = $1 AND key = ANY($2)").await?;
                let (begun, rows) =
                    future::join(begin_first(&client, &begin), client.query(&statement, &[&space, &wanted])).await;
                begun?;
                rows
            })?
            .map_err(db_failure)?;
        let mut ahead = self.ahead.borrow_mut();
        for key in keys {
            ahead.insert(key.clone(), None);
        }
        for row in rows {
            ahead.insert(row.get(0), Some(row.get(1)));
        }
        Ok(())
    }

    fn scan(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let begin = self.begin.borrow_mut().take();
        scan(self.pg, self.client, self.space, prefix, begin, visit)
    }
}

/// Send the transaction's `BEGIN`, if it has not gone out yet (polled first, so it goes out
/// before the query it is joined with).
async fn begin_first(client: &Object, begin: &Option<String>) -> std::result::Result<(), tokio_postgres::Error> {
    match begin {
        Some(begin) => client.batch_execute(begin).await,
        None => Ok(()),
    }
}

/// The first key after every key starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(super) fn scan(
    pg: &Postgres,
    client: &Arc<Object>,
    space: &str,
    prefix: &[u8],
    mut begin: Option<String>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut from: (Vec<u8>, bool) = (prefix.to_vec(), true);
    loop {
        let (client, space, end, (start, inclusive)) = (client.clone(), space.to_owned(), end.clone(), from.clone());
        let begin = begin.take();
        let rows = pg
            .run(async move {
                let statement = client
                    .prepare_cached(
                        "SELECT key, value FROM kv WHERE space = $1
                           AND (key > $2 OR ($3 AND key = $2))
                           AND ($4::bytea IS NULL OR key < $4)
                         ORDER BY key LIMIT $5",
                    )
                    .await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&space, &start, &inclusive, &end, &PAGE];
                let (begun, rows) = future::join(begin_first(&client, &begin), client.query(&statement, &params)).await;
                begun?;
                rows
            })?
            .map_err(db_failure)?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            let (key, value): (&[u8], &[u8]) = (row.get(0), row.get(1));
            if !visit(key, value) {
                return Ok(());
            }
        }
        match rows.last() {
            Some(last) if full => from = (last.get::<_, Vec<u8>>(0), false),
            _ => return Ok(()),
        }
    }
}

/// Write a commit's batch, commit its transaction, and wait until it is durable: one round
/// trip, the statements pipelined. Every statement is prepared first, so that each goes out
/// when its future is first polled, in order; a failed write aborts the transaction, its
/// `COMMIT` then rolls back, and the write's error is returned.
pub(super) async fn apply(
    client: &Object,
    space: &str,
    begin: Option<String>,
    batch: Batch,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (mut keys, mut values, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in batch.writes {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => removed.push(key),
        }
    }
    let upsert = client
        .prepare_cached(
            "INSERT INTO kv (space, key, value) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
             ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?;
    let delete = client.prepare_cached("DELETE FROM kv WHERE space = $1 AND key = ANY($2)").await?;
    let wrote = !keys.is_empty() || !removed.is_empty();
    let (begun, upserted, deleted, committed, durable) = future::join5(
        begin_first(client, &begin),
        async { if keys.is_empty() { Ok(0) } else { client.execute(&upsert, &[&space, &keys, &values]).await } },
        async { if removed.is_empty() { Ok(0) } else { client.execute(&delete, &[&space, &removed]).await } },
        client.batch_execute("COMMIT"),
        async { if wrote { client.batch_execute(DURABLE).await } else { Ok(()) } },
    )
    .await;
    begun?;
    upserted?;
    deleted?;
    committed?;
    durable
}

/// A commit that does not wait for the disk: the space's lock is held only while the batch
/// is applied, so commits to one add-on follow each other at the database's pace rather than
/// the disk's.
pub(super) const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off;";

/// The barrier after an asynchronous commit: a synchronous commit that writes to the WAL (a
/// transactional logical message, which touches no table) returns once the WAL is flushed
/// up to it, so every commit before it is durable too. Concurrent barriers share a flush,
/// which makes this the database's own group commit.
pub(super) const DURABLE: &str = "BEGIN; SELECT pg_logical_emit_message(true, 'addon_host', ''); COMMIT";

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_before_the_next_prefix() {
        assert_eq!(prefix_end(b"k/"), Some(b"k0".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
